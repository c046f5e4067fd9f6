"""uws/sessions/transitions.py against SQLite in memory: each named change of a job's status,
what it writes, and what it refuses."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from uws import orm
from uws.sessions import transitions
from uws.sessions.status import ACTIVE, TERMINAL, JobStatus, WorkspaceStatus


@pytest.fixture(scope="session")
def remove_test_os_accounts() -> Iterator[None]:
    """Overrides tests/conftest.py's: in-process tests create no OS accounts."""
    yield


@pytest.fixture
def session() -> Iterator[Session]:
    engine = create_engine("sqlite://")
    orm.Base.metadata.create_all(engine)
    with Session(engine, expire_on_commit=False) as s:
        yield s
    engine.dispose()


def seed(s: Session, ws_status: str = "idle") -> orm.Workspace:
    user = orm.User(username="alice")
    s.add(user)
    s.flush()
    ws = orm.Workspace(user_id=user.id, name="w", file_path="/w", status=ws_status)
    s.add(ws)
    s.flush()
    return ws


def new(s: Session, ws: orm.Workspace, **state: Any) -> orm.Job:
    return transitions.new_job(
        s,
        workspace_id=ws.id,
        user_id=ws.user_id,
        job_type="local_test_job",
        resource="main_resource",
        request_details={"resource_options": {}},
        state={"secret": "s", **state},
    )


def current(job: orm.Job) -> dict[str, Any]:
    return job.job_details["current_job_details"]


def test_statuses_are_the_api_strings() -> None:
    assert JobStatus.RUNNING == "running" and f"{JobStatus.COMPLETE}" == "complete"
    assert WorkspaceStatus.IDLE == "idle"
    assert ACTIVE == {"pending", "running", "stopping"} and TERMINAL == {"complete", "failed"}


def test_new_job_is_pending_and_unsubmitted(session: Session) -> None:
    job = new(session, seed(session))
    session.commit()
    session.expire_all()
    row = session.get(orm.Job, job.id)
    assert row.status == "pending" and row.resource_job_id == -1
    assert current(row) == {"message": "Launching the session."}
    assert row.job_details["request_job_details"] == {"resource_options": {}}


def test_submitted_makes_the_workspace_active(session: Session) -> None:
    ws = seed(session)
    job = new(session, ws)
    transitions.mark_submitted(session, job, 4242, {"secret": "s", "pid": 4242})
    assert job.resource_job_id == 4242 and job.spawner_state["pid"] == 4242
    assert current(job)["message"] == "Session submitted; starting the application."
    assert ws.status == WorkspaceStatus.ACTIVE and ws.datetime_last_job_launch is not None


def test_submitted_leaves_a_deleting_workspace_alone(session: Session) -> None:
    ws = seed(session, "deleting")
    transitions.mark_submitted(session, new(session, ws), 1, {})
    assert ws.status == "deleting"


def test_running_once(session: Session) -> None:
    job = new(session, seed(session))
    assert transitions.mark_running(job)
    assert job.status == "running" and job.datetime_start is not None
    assert job.job_details["metrics"]["time_pending"] >= 0
    assert current(job)["message"] == "Session running."
    started = job.datetime_start
    assert not transitions.mark_running(job)  # already running: nothing moves
    assert job.datetime_start == started


def test_ready_records_the_target_once(session: Session) -> None:
    job = new(session, seed(session))
    target = {"host": "127.0.0.1", "port": 8888, "path": "/lab"}
    assert transitions.mark_ready(job, target, "http://h", "/passthrough/1/lab")
    assert job.status == "running"  # straight from pending
    assert job.spawner_state["ready"] == target and job.spawner_state["secret"] == "s"
    assert current(job)["message"] == "Webserver ready."
    assert current(job)["proxy_details"] == {
        "hostname": "127.0.0.1",
        "port": "8888",
        "path": "/passthrough/1/lab",
    }
    assert current(job)["connection_details"] == {"url_domain": "http://h", "url_path": "/passthrough/1/lab"}
    assert "time_init" in job.job_details["metrics"]
    # A recorded target never moves.
    assert not transitions.mark_ready(job, {"host": "10.0.0.9", "port": 9999}, "x", "y")
    assert job.spawner_state["ready"] == target


def test_stopping_hides_the_connection(session: Session) -> None:
    job = new(session, seed(session))
    transitions.mark_ready(job, {"host": "127.0.0.1", "port": 8888}, "http://h", "/p")
    assert transitions.mark_stopping(job)
    assert job.status == "stopping"
    assert current(job)["message"] == "Stopping the session."
    assert "connection_details" not in current(job)
    assert not transitions.mark_stopping(job)


def test_finished_charges_core_hours_and_frees_the_workspace(session: Session) -> None:
    ws = seed(session, "active")
    job = new(session, ws, cpus=4)
    transitions.mark_running(job)
    job.datetime_start = job.datetime_start - dt.timedelta(hours=1)
    assert transitions.mark_finished(session, job, JobStatus.COMPLETE, "Job finished.", log_tail="x" * 3000)
    assert job.status == "complete" and job.datetime_end is not None
    assert job.core_hours == pytest.approx(4.0, abs=0.01)  # 4 CPUs × 1 hour, by the server's clock
    assert current(job) == {"message": "Job finished.", "log_tail": "x" * 2000}
    assert session.get(orm.Quota, ws.user_id).used_core_hours == pytest.approx(4.0, abs=0.01)
    assert ws.status == "idle"
    # Terminal is terminal.
    assert not transitions.mark_failed(session, job, "late")
    assert job.status == "complete"


def test_finished_prefers_the_resource_allocation(session: Session) -> None:
    ws = seed(session, "active")
    job = new(session, ws)
    transitions.mark_running(job)
    transitions.mark_complete(session, job, "done", allocated_core_seconds=7200.0)
    assert job.core_hours == 2.0


def test_finished_at_the_resource_end_time(session: Session) -> None:
    """A session found ended after the fact (Slurm's accounting, after the server was down)
    ends when the resource says, neither before it started nor after now, and CPUs × elapsed
    counts up to then."""
    ws = seed(session, "active")
    job = new(session, ws, cpus=2)
    transitions.mark_running(job)
    started = job.datetime_start = job.datetime_start - dt.timedelta(hours=2)
    ended = started + dt.timedelta(minutes=30)
    assert transitions.mark_complete(session, job, "done", ended_at=ended)
    assert job.datetime_end == ended
    assert job.core_hours == pytest.approx(1.0)  # 2 CPUs × 30 minutes, not × 2 hours
    early, late = new(session, ws), new(session, ws)
    for row in (early, late):
        transitions.mark_running(row)
    transitions.mark_complete(session, early, "done", ended_at=early.datetime_start - dt.timedelta(hours=1))
    assert early.datetime_end == early.datetime_start
    transitions.mark_complete(session, late, "done", ended_at=late.datetime_start + dt.timedelta(days=1))
    assert late.datetime_end <= dt.datetime.now(dt.UTC)


def test_running_drops_the_suggestions(session: Session) -> None:
    """What would have started sooner no longer applies once the session runs."""
    job = new(session, seed(session))
    suggestion = {"resource_options": {"num_cpus": 1}, "expected_start": "2026-12-01T10:00:00.000Z"}
    job.job_details = {
        **job.job_details,
        "current_job_details": {"message": "m", "suggestions": [suggestion]},
    }
    transitions.mark_running(job)
    assert current(job) == {"message": "Session running."}


def test_never_started_costs_nothing(session: Session) -> None:
    ws = seed(session, "active")
    job = new(session, ws)
    assert transitions.mark_failed(session, job, "Launch failed: no.")
    assert job.status == "failed" and job.core_hours == 0.0
    assert session.get(orm.Quota, ws.user_id) is None


def test_workspace_stays_active_while_another_session_holds_it(session: Session) -> None:
    ws = seed(session, "active")
    first, second = new(session, ws), new(session, ws)
    transitions.mark_running(second)
    transitions.mark_failed(session, first, "no")
    assert ws.status == "active"
    transitions.mark_complete(session, second, "done")
    assert ws.status == "idle"


def test_stopping_completes_however_it_ended(session: Session) -> None:
    job = new(session, seed(session, "active"))
    transitions.mark_running(job)
    transitions.mark_stopping(job)
    transitions.mark_finished(session, job, JobStatus.FAILED, "killed", stopping_completes=True)
    assert job.status == "complete"
    other = new(session, seed_second(session))
    transitions.mark_finished(session, other, JobStatus.FAILED, "killed", stopping_completes=True)
    assert other.status == "failed"  # it was not stopping: the status given stands


def seed_second(s: Session) -> orm.Workspace:
    ws = orm.Workspace(user_id=s.get(orm.User, 1).id, name="v", file_path="/v", status="idle")
    s.add(ws)
    s.flush()
    return ws
