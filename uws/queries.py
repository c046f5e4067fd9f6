"""Read-only queries the API answers from the database alone, as API models.

Each takes a SQLAlchemy session (run them through Database.run, off the event loop) so
handlers hold no SQL of their own.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from . import orm
from .models import job_model, user_model, workspace_model
from .workspaces import unaccepted_share_clause


def owned_jobs_query(user_id: int) -> Any:
    """The caller's jobs: those whose workspace the caller owns (a deleted workspace's jobs drop
    out, as in the original), in id order."""
    return (
        select(orm.Job)
        .join(orm.Workspace, orm.Workspace.id == orm.Job.workspace_id)
        .where(orm.Workspace.user_id == user_id)
        .order_by(orm.Job.id)
    )


def owned_jobs(
    session: Session, user_id: int, job_id: int | None = None, filters: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The caller's jobs (one, with `job_id`), each column in `filters` equal to its value."""
    stmt = owned_jobs_query(user_id)
    if job_id is not None:
        stmt = stmt.where(orm.Job.id == job_id)
    for key, value in (filters or {}).items():
        stmt = stmt.where(getattr(orm.Job, key) == value)
    return [job_model(j) for j in session.scalars(stmt)]


def owned_job_status(session: Session, user_id: int, job_id: int) -> tuple[str, Any] | None:
    """(status, datetime_end) of one of the caller's jobs; None when it is not one."""
    job = session.scalars(owned_jobs_query(user_id).where(orm.Job.id == job_id)).first()
    return (str(job.status), job.datetime_end) if job is not None else None


def shareable_users(session: Session, caller: int, search: str) -> list[dict[str, Any]]:
    """Active users other than the caller and admin, whose full name or email holds `search`
    (any case; LIKE's wildcards in it match only themselves), in id order."""
    stmt = (
        select(orm.User)
        .where(orm.User.id != caller, orm.User.username != "admin", orm.User.is_active.is_(True))
        .order_by(orm.User.id)
    )
    if search:
        pattern = "%" + search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        full_name = func.lower(orm.User.first_name + " " + orm.User.last_name)
        stmt = stmt.where(
            or_(
                full_name.like(pattern, escape="\\"),
                func.lower(orm.User.email).like(pattern, escape="\\"),
            )
        )
    return [user_model(u) for u in session.scalars(stmt)]


def user_snapshot(session: Session, user_id: int) -> dict[str, Any]:
    """Everything the events stream reports on for a user: their jobs, and their workspaces but
    those shared with them and not yet accepted."""
    jobs = session.scalars(owned_jobs_query(user_id))
    workspaces = session.scalars(
        select(orm.Workspace)
        .where(orm.Workspace.user_id == user_id, ~unaccepted_share_clause())
        .order_by(orm.Workspace.id)
    )
    return {
        "jobs": [job_model(j) for j in jobs],
        "workspaces": [workspace_model(w) for w in workspaces],
    }
