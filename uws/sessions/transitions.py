"""A job's changes of status in the database, one named function each.

Each works on rows of an open SQLAlchemy session (the caller commits) and returns whether it
changed anything, so they can be tested against SQLite in memory with nothing else running.
JSON columns are reassigned, never mutated in place: SQLAlchemy sees only reassignment.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import orm
from ..utils import utcnow
from .status import ACTIVE, TERMINAL, JobStatus, WorkspaceStatus


def _write(
    job: orm.Job, current: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None
) -> None:
    details = dict(job.job_details or {})
    if current is not None:
        details["current_job_details"] = current
    if metrics is not None:
        details["metrics"] = metrics
    job.job_details = details


def _current(job: orm.Job) -> dict[str, Any]:
    return dict((job.job_details or {}).get("current_job_details") or {})


def new_job(
    session: Session,
    *,
    workspace_id: int,
    user_id: int,
    job_type: str,
    resource: str,
    request_details: dict[str, Any],
    state: dict[str, Any],
) -> orm.Job:
    """A pending job, not yet submitted (resource_job_id -1 until the helper is started)."""
    job = orm.Job(
        workspace_id=workspace_id,
        user_id=user_id,
        job_type=job_type,
        resource=resource,
        resource_job_id=-1,
        status=JobStatus.PENDING,
        job_details={
            "metrics": {},
            "request_job_details": request_details,
            "current_job_details": {"message": "Launching the session."},
        },
        spawner_state=state,
    )
    session.add(job)
    session.flush()
    return job


def mark_submitted(session: Session, job: orm.Job, resource_job_id: int, state: dict[str, Any]) -> None:
    """The helper was started: record where, and the workspace now has a session."""
    job.resource_job_id = resource_job_id
    job.spawner_state = state
    if job.status == JobStatus.PENDING:
        _write(job, current={"message": "Session submitted; starting the application."})
    ws = session.get(orm.Workspace, job.workspace_id)
    if ws is not None:
        if ws.status in (WorkspaceStatus.IDLE, WorkspaceStatus.ACTIVE):
            ws.status = WorkspaceStatus.ACTIVE
        ws.datetime_last_job_launch = utcnow()


def spawner_name(job: orm.Job) -> str:
    """The class name of the job's spawner, as recorded when it was submitted ("" before)."""
    return str((job.spawner_state or {}).get("spawner") or "")


def mark_running(job: orm.Job) -> bool:
    """pending -> running: the start time, and how long it waited. What would have started
    sooner (`suggestions`) no longer applies."""
    if job.status != JobStatus.PENDING:
        return False
    job.status = JobStatus.RUNNING
    job.datetime_start = utcnow()
    metrics = dict((job.job_details or {}).get("metrics") or {})
    metrics["time_pending"] = round((job.datetime_start - job.datetime_created).total_seconds(), 6)
    current = {**_current(job), "message": "Session running."}
    current.pop("suggestions", None)
    _write(job, current=current, metrics=metrics)
    return True


def mark_ready(job: orm.Job, ready: dict[str, Any], url_domain: str, url_path: str) -> bool:
    """The session's app answers at `ready` (a verified target): recorded once, never moved."""
    if job.status not in (JobStatus.PENDING, JobStatus.RUNNING) or (job.spawner_state or {}).get("ready"):
        return False
    mark_running(job)
    job.spawner_state = {**(job.spawner_state or {}), "ready": ready}
    current = _current(job)
    current["message"] = "Webserver ready."
    current["proxy_details"] = {
        "hostname": ready.get("host", ""),
        "port": str(ready.get("port", "")),
        "path": url_path,
    }
    current["connection_details"] = {"url_domain": url_domain, "url_path": url_path}
    metrics = dict((job.job_details or {}).get("metrics") or {})
    if job.datetime_start is not None:
        metrics["time_init"] = round((utcnow() - job.datetime_start).total_seconds(), 6)
    _write(job, current=current, metrics=metrics)
    return True


def mark_stopping(job: orm.Job) -> bool:
    """pending or running -> stopping: it can no longer be reached."""
    if job.status not in (JobStatus.PENDING, JobStatus.RUNNING):
        return False
    job.status = JobStatus.STOPPING
    current = {**_current(job), "message": "Stopping the session."}
    current.pop("connection_details", None)
    _write(job, current=current)
    return True


def core_seconds(job: orm.Job, allocated: float | None) -> float:
    """The resource's own figure, else requested CPUs × (end − start) by the server's clock."""
    if allocated is not None:
        return allocated
    cpus = (job.spawner_state or {}).get("cpus")
    cpus = cpus if isinstance(cpus, int) and cpus > 0 else 1
    if job.datetime_start is None or job.datetime_end is None:
        return 0.0
    return cpus * max(0.0, (job.datetime_end - job.datetime_start).total_seconds())


def mark_finished(
    session: Session,
    job: orm.Job,
    status: JobStatus,
    message: str,
    *,
    log_tail: str = "",
    allocated_core_seconds: float | None = None,
    ended_at: datetime | None = None,
    stopping_completes: bool = False,
) -> bool:
    """To a terminal status: end time, core hours charged to the quota, and the workspace back
    to idle when no other session holds it. A session the user asked to stop (`stopping`) ends
    `complete` with stopping_completes, however its process ended. `ended_at` is when the
    resource says it ended (a scheduler's accounting, for a session that ended while the server
    was down); the end time is now without it, and never before the start nor after now."""
    if job.status in TERMINAL:
        return False
    job.status = JobStatus.COMPLETE if stopping_completes and job.status == JobStatus.STOPPING else status
    now = utcnow()
    end = now if ended_at is None else min(now, ended_at)
    job.datetime_end = max(end, job.datetime_start) if job.datetime_start else end
    job.core_hours = (
        round(core_seconds(job, allocated_core_seconds) / 3600.0, 5) if job.datetime_start else 0.0
    )
    current = {"message": message}
    if log_tail:
        current["log_tail"] = log_tail[-2000:]
    _write(job, current=current)
    if job.core_hours:
        quota = session.get(orm.Quota, job.user_id)
        if quota is None:
            quota = orm.Quota(user_id=job.user_id, used_disk_bytes=0, used_core_hours=0.0)
            session.add(quota)
        quota.used_core_hours = (quota.used_core_hours or 0.0) + job.core_hours
    ws = session.get(orm.Workspace, job.workspace_id)
    if ws is not None and ws.status == WorkspaceStatus.ACTIVE:
        others = session.scalar(
            select(orm.Job.id).where(
                orm.Job.workspace_id == ws.id,
                orm.Job.id != job.id,
                orm.Job.status.in_(ACTIVE),
            )
        )
        if others is None:
            ws.status = WorkspaceStatus.IDLE
    return True


def mark_failed(session: Session, job: orm.Job, message: str, **kwargs: Any) -> bool:
    return mark_finished(session, job, JobStatus.FAILED, message, **kwargs)


def mark_complete(session: Session, job: orm.Job, message: str, **kwargs: Any) -> bool:
    return mark_finished(session, job, JobStatus.COMPLETE, message, **kwargs)
