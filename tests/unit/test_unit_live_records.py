"""The job service in process: 1,000 sessions started and ended by every path a job can end by,
after which the server holds nothing keyed by their ids.

Real here: JobService, its launcher, tracker and reconciler, the live records, the transitions,
the quota service and the database (SQLite in memory). Replaced, because a unit test starts no
processes: the spawner (MockSpawner answers as a helper's spawner would) and the channel
(FakeChannel plays the helper: a `stop` sent to it comes back as the helper's `exited`). The
workspace service and the app's URL helpers are stubs that keep no per-job state.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import StaticPool

from uws import orm
from uws.audit import AuditLog
from uws.auth.tokens import CurrentUser
from uws.db import Database
from uws.errors import APIError
from uws.quotas import QuotaService
from uws.sessions.service import JobService
from uws.sessions.servicebase import JobParts, JobSettings
from uws.sessions.status import TERMINAL, JobStatus, WorkspaceStatus
from uws.spawners.base import LaunchError

HERE = os.path.dirname(os.path.abspath(__file__))
CYCLES = 1000
PATHS = 9  # the ways a session ends, in one_cycle
BATCH = 50  # started together, so the stop's polling intervals overlap


@pytest.fixture(scope="session")
def remove_test_os_accounts() -> Iterator[None]:
    """Overrides tests/conftest.py's: in-process tests create no OS accounts."""
    yield


class MemoryDatabase(Database):
    """uws.db.Database on one in-memory SQLite connection, run inline (its own call())."""

    def __init__(self) -> None:
        engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
        orm.Base.metadata.create_all(engine)
        self.sessionmaker = sessionmaker(engine, expire_on_commit=False)

    async def run(self, fn: Any) -> Any:  # type: ignore[override]
        return self.call(fn)


class MockSpawner:
    """A spawner whose session is a flag: `start` fails when the app says so, `poll` reports
    an exit once the session has been told to end, `start_failure` a helper that ended before
    it reported once a test says so."""

    poll_while_alive = False
    watches_start = True

    def __init__(self, app: FakeApp, job_id: int) -> None:
        self.app, self.job_id = app, job_id
        self.job_dir = f"/nonexistent/.uws/jobs/{job_id}"
        self.ended: dict[str, Any] | None = None
        self.ended_before_report: dict[str, Any] | None = None
        self.credentials = ""

    async def start(self, spec: dict[str, Any], secret: str) -> int:
        if self.app.launch_failures_wanted:
            self.app.launch_failures_wanted -= 1
            raise LaunchError("the resource refused it")
        self.credentials = secret
        return 10_000 + self.job_id

    async def start_failure(self) -> dict[str, Any] | None:
        return self.ended_before_report

    async def session_host(self, port: int) -> str | None:
        return "127.0.0.1"

    async def poll(self) -> dict[str, Any] | None:
        return self.ended

    async def stop(self) -> None:
        self.ended = {"reason": "stopped"}

    async def usage(self) -> float | None:
        return None

    async def end_state(self, helper_exit: dict[str, Any]) -> dict[str, Any]:
        return helper_exit

    async def stop_unrecorded(self) -> bool:
        return False

    async def reap(self) -> None:
        self.app.reaped += 1

    def get_state(self) -> dict[str, Any]:
        return {"pid": 10_000 + self.job_id}

    def load_state(self, state: dict[str, Any]) -> None:
        pass


class FakeChannel:
    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs
        self.forgotten: set[int] = set()

    async def send(self, job_id: int, secret: str, message: dict[str, Any]) -> bool:
        if message["type"] == "stop":  # the helper ends its app and says so
            exited = {"type": "exited", "state": {"phase": "exited", "exit": {"reason": "stopped"}}}
            asyncio.get_running_loop().call_soon(
                lambda: asyncio.ensure_future(self.jobs.on_message(job_id, exited))
            )
        return True

    def forget(self, job_id: int) -> None:
        self.forgotten.add(job_id)

    def bind(self) -> None:
        pass

    def close(self) -> None:
        pass


class Stub:
    """Any attribute is a callable returning None (sync or async as the caller awaits)."""

    def __getattr__(self, name: str) -> Any:
        async def _async(*args: Any, **kwargs: Any) -> None:
            return None

        return _async


class FakeWorkspaces:
    def __init__(self, ws: orm.Workspace) -> None:
        self.ws = ws

    async def owned_for_put(self, user: CurrentUser, ws_id: int, put_type: str) -> tuple[Any, orm.Workspace]:
        return object(), self.ws

    def invalidate(self, *user_ids: int) -> None:
        pass

    def changed(self, user_id: int, *ws_ids: int) -> None:
        pass

    async def rescan(self, ws_id: int, user_id: int, modified: bool = False) -> None:
        pass


class FakeProxy:
    def __init__(self) -> None:
        self.forgotten: set[int] = set()

    def forget(self, job_id: int) -> None:
        self.forgotten.add(job_id)

    def forget_cache(self) -> None:
        self.forgotten.add(0)


class FakeApp:
    main_resource_key = "main_resource"
    passthrough_mode = "path"
    session_group = ""
    session_channel_url = "ipc:///nonexistent/sessions.sock"
    data_dir = "/nonexistent"
    parameters: list[Any] = []
    resources: dict[str, Any] = {}
    job_types = {
        "local_test_job": {
            "name": "Local Test Job",
            "job_type": "LocalTestJob",
            "environment_details": {"main_resource": {}},
        }
    }

    def __init__(self) -> None:
        with open(os.path.join(HERE, "..", "..", "share", "uws", "job_templates.json")) as f:
            self.job_templates = json.load(f)
        self.db = MemoryDatabase()
        self.events = Stub()
        self.events.publish = lambda *a, **k: None  # type: ignore[method-assign]
        self.quotas = QuotaService(self.db)
        self.proxy = FakeProxy()
        self.session_tokens = Stub()
        self.session_tokens.token = lambda job_id: f"token-{job_id}"  # type: ignore[method-assign]
        self.storage = Stub()
        self.storage.valid_workspace_dir = lambda path: True  # type: ignore[method-assign]
        # Starts that fail in the spawner. Nothing here suspends between setting this and the
        # spawner's start (the database runs inline), so the failure is the intended cycle's.
        self.launch_failures_wanted = 0
        self.reaped = 0
        self.spawned: dict[int, MockSpawner] = {}

        def _seed(s: Any) -> orm.Workspace:
            user = orm.User(username="alice")
            s.add(user)
            s.flush()
            ws = orm.Workspace(user_id=user.id, name="w", file_path="/nonexistent/w", status="idle")
            s.add(ws)
            s.flush()
            return ws

        self.ws = self.db.call(_seed)
        self.user = CurrentUser(self.ws.user_id, "alice", "", "", "")
        self.workspaces = FakeWorkspaces(self.ws)

    def make_spawner(self, job_id: int, account: Any, workspace_dir: str, name: str | None = None) -> Any:
        spawner = self.spawned.setdefault(job_id, MockSpawner(self, job_id))
        return spawner

    @property
    def spawner_factory(self) -> Any:
        factory = Stub()
        factory.make = self.make_spawner  # type: ignore[attr-defined]
        factory.grace_seconds = lambda spawner: 0  # type: ignore[attr-defined]
        return factory

    @property
    def session_urls(self) -> Any:
        urls = Stub()
        urls.app_origin = lambda job_id, label: "http://127.0.0.1"  # type: ignore[attr-defined]
        urls.connection_url = lambda job_id, ready, label: (  # type: ignore[attr-defined]
            "http://127.0.0.1",
            f"/passthrough/{job_id}/",
        )
        return urls

    @property
    def accounts(self) -> Any:
        accounts = Stub()

        async def get(username: str) -> Any:
            return object()

        accounts.get = get  # type: ignore[attr-defined]
        return accounts


def job_service(app: FakeApp) -> JobService:
    """Assembled from the fakes as UWSApp.init_services assembles it."""
    parts = JobParts(
        db=app.db,
        events=app.events,  # type: ignore[arg-type]
        accounts=app.accounts,
        workspaces=app.workspaces,  # type: ignore[arg-type]
        quotas=app.quotas,
        storage=app.storage,  # type: ignore[arg-type]
        spawner_factory=app.spawner_factory,
        session_urls=app.session_urls,
        session_tokens=app.session_tokens,  # type: ignore[arg-type]
        audit_log=AuditLog(enabled=False),
    )
    settings = JobSettings(
        job_types=app.job_types,
        job_templates=app.job_templates,
        parameters=app.parameters,
        resources=app.resources,
        main_resource_key=app.main_resource_key,
        passthrough_mode=app.passthrough_mode,
        session_channel_url=app.session_channel_url,
        session_group=app.session_group,
        channel_key_file=os.path.join(app.data_dir, "session_channel.key"),
        log_dir=os.path.join(app.data_dir, "session-logs"),
    )
    jobs = JobService(
        parts,
        settings,
        heartbeat_seconds=0,  # every helper counts as silent: each reconcile pass polls
        reconcile_seconds=3600,
        lost_contact_seconds=0,
        max_concurrent_starts=0,
        max_running_jobs_per_user=0,
    )
    jobs.proxy = app.proxy  # type: ignore[assignment]
    return jobs


CULLED = "Stopped after 1 minute without activity."
READY = {"type": "heartbeat", "metrics": {"cpu": 1}, "state": {"phase": "ready", "ready": {"port": 8888}}}


def ended_by(reason: str, **extra: Any) -> dict[str, Any]:
    return {"type": "exited", "state": {"phase": "exited", "exit": {"reason": reason, **extra}}}


def message_of(s: Any, job_id: int) -> str:
    return s.get(orm.Job, job_id).job_details["current_job_details"]["message"]


async def start(jobs: JobService, app: FakeApp) -> int:
    model = await jobs.start(app.user, app.ws.id, lambda: {"job_type": "local_test_job"})
    return int(model["id"])


async def wait_terminal(jobs: JobService, job_id: int) -> None:
    for _ in range(500):  # bounded: the stop's own loop checks every 0.2 s
        if await jobs._is_terminal(job_id) and job_id not in jobs.live:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} did not end")


async def one_cycle(jobs: JobService, app: FakeApp, n: int) -> str:
    """One session, ended by path n % PATHS. Returns the path's name."""
    path = n % PATHS
    if path == 7:  # the resource refused the launch
        app.launch_failures_wanted += 1
        with pytest.raises(APIError, match="Launch failed: the resource refused it"):
            await start(jobs, app)
        return "launch failed"
    job_id = await start(jobs, app)
    assert job_id in jobs.live
    if path == 8:  # the helper ended before it reported, its credentials in its output
        spawner = app.spawned[job_id]
        secret, token = spawner.credentials.split("\n")
        spawner.ended_before_report = {
            "reason": "launch_failed",
            "message": f"The session helper could not start: {secret} {token}.",
            "exit_code": 1,
            "log_tail": f"{secret}\n{token}",
        }
        await wait_terminal(jobs, job_id)
        current = app.db.call(lambda s: s.get(orm.Job, job_id).job_details["current_job_details"])
        assert current["message"] == "The session helper could not start: [hidden] [hidden]. (exit code 1)"
        assert current["log_tail"] == "[hidden]\n[hidden]"
        return "ended before reporting"
    await jobs.on_message(job_id, READY)
    if path == 0:  # stopped by its user: the helper answers the stop with `exited`
        assert await jobs.stop(app.user, job_id, "stop") == "Job queued to stop."
        await wait_terminal(jobs, job_id)
        return "user stop"
    if path == 1:  # the app finished by itself
        await jobs.on_message(job_id, ended_by("completed"))
        return "completed"
    if path == 2:  # the app failed; the resource is asked why
        await jobs.on_message(job_id, ended_by("failed", exit_code=3))
        await wait_terminal(jobs, job_id)
        return "failed"
    if path == 3:  # stopped by the server (the idle culler's call)
        assert await jobs.request_stop(job_id, app.user.id, CULLED)
        await wait_terminal(jobs, job_id)
        assert app.db.call(lambda s: message_of(s, job_id)) == CULLED
        return "culled"
    if path == 4:  # the helper fell silent; reconciliation finds the exit on the resource
        app.spawned[job_id].ended = {"reason": "completed"}
        await jobs.reconcile()
        return "reconciled"
    if path == 5:  # the resource stops answering and the helper is silent: given up on

        async def broken() -> None:
            raise LaunchError("the resource does not answer")

        app.spawned[job_id].poll = broken  # type: ignore[method-assign]
        await jobs.reconcile()
        await wait_terminal(jobs, job_id)
        return "lost contact"
    # path 6: the app reached its time limit, and then its helper speaks on
    await jobs.on_message(job_id, ended_by("time_limit"))
    await jobs.on_message(job_id, READY)  # a late message for an ended job creates nothing
    return "time limit"


def test_thousand_sessions_leave_no_per_job_state() -> None:
    async def main() -> None:
        app = FakeApp()
        jobs = job_service(app)
        jobs.channel = FakeChannel(jobs)  # type: ignore[assignment]
        await jobs.reconcile(startup=True)
        paths: dict[str, int] = {}
        for first in range(0, CYCLES, BATCH):
            names = await asyncio.gather(*(one_cycle(jobs, app, n) for n in range(first, first + BATCH)))
            for name in names:
                paths[name] = paths.get(name, 0) + 1
        await asyncio.sleep(0.05)  # the reaps scheduled by the last endings
        assert len(paths) == PATHS and sum(paths.values()) == CYCLES, paths

        assert len(jobs.live) == 0
        for _ in range(50):  # each start's watch ends at its next look (every 0.2 s)
            if not jobs.launcher.start_watches.tasks:
                break
            await asyncio.sleep(0.02)
        assert jobs.launcher.start_watches.tasks == set()
        assert jobs.launcher.reserved == {} and jobs.launcher.starts_in_progress == 0

        def _rows(s: Any) -> tuple[list[str], str]:
            statuses = list(s.scalars(select(orm.Job.status)))
            return statuses, s.get(orm.Workspace, app.ws.id).status

        statuses, ws_status = app.db.call(_rows)
        assert len(statuses) == CYCLES
        assert all(status in TERMINAL for status in statuses)
        assert ws_status == WorkspaceStatus.IDLE
        # Every job was forgotten by the channel and the passthrough too, and every spawner reaped.
        ended = set(range(1, CYCLES + 1))  # launch failures included: they had ids too
        assert jobs.channel.forgotten >= ended and app.proxy.forgotten >= ended
        assert app.reaped == CYCLES - paths["launch failed"]
        assert statuses.count(JobStatus.FAILED) > 0 and statuses.count(JobStatus.COMPLETE) > 0

    asyncio.run(asyncio.wait_for(main(), 120))


def test_reconcile_passes_on_what_the_resource_says() -> None:
    """A queued job shows the queue's reason; a running one the resource's time left (Slurm's
    own figures, here from the mock spawner)."""

    async def main() -> None:
        app = FakeApp()
        jobs = job_service(app)
        jobs.channel = FakeChannel(jobs)  # type: ignore[assignment]
        queued, running = await start(jobs, app), await start(jobs, app)
        app.spawned[queued].status_message = "Slurm queue (Resources)"  # type: ignore[attr-defined]
        await jobs.on_message(running, READY)
        app.spawned[running].time_left = 120  # type: ignore[attr-defined]
        await jobs.reconcile()

        def _current(s: Any, job_id: int) -> dict[str, Any]:
            return s.get(orm.Job, job_id).job_details["current_job_details"]

        assert app.db.call(lambda s: _current(s, queued))["message"] == "Slurm queue (Resources)"
        assert app.db.call(lambda s: _current(s, running))["time_left"] == 120
        assert app.db.call(lambda s: s.get(orm.Job, queued).status) == "pending"
        assert len(jobs.live) == 2

    asyncio.run(asyncio.wait_for(main(), 30))
