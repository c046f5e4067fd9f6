"""What admins do through /admin/: list users (with quota, usage and running sessions) and
jobs, stop another user's session, change a user (active, admin, quota maximums) and revoke a
user's tokens. Each action is one method of AdminService, so each happens in one place.

An admin action never makes the admin the owner of anything: a stop goes through the owner's
stop path (JobService.stop) and is reported to the owner; quota changes go through
uws.quotas.set_quota; job links shown to admins carry no session token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from . import orm
from .auth.scopes import CurrentUser
from .auth.tokens import is_admin
from .errors import APIError
from .models import job_model, job_view, user_model
from .quotas import quota_model, set_quota
from .sessions.status import JobStatus
from .utils import isoformat

if TYPE_CHECKING:
    from .auth.tokens import TokenService
    from .db import Database
    from .events import EventBus
    from .passthrough import ProxyService
    from .sessions.service import JobService

ACTIVE_STATUSES = (JobStatus.PENDING, JobStatus.RUNNING, JobStatus.STOPPING)
# The fields PUT /admin/users/<name>/ takes, and what each must be.
USER_FIELDS = ("is_active", "is_admin", "max_disk_bytes", "max_core_hours")


async def end_access(auth: TokenService, proxy: ProxyService, events: EventBus, user_id: int) -> None:
    """A user's access ends now (logout, revocation, deactivation): this process forgets their
    cached tokens, their session cookies stop counting, and their open websockets re-check
    their token (and close with 4401 when it no longer holds)."""
    auth.forget_user(user_id)
    await proxy.end_cookies(user_id)
    events.publish(user_id, "token_revoked", {})


def admin_user_model(
    user: orm.User,
    admin_users: frozenset[str],
    quota: orm.Quota | None,
    disk_bytes_used: int,
    sessions: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        **user_model(user),
        "is_active": bool(user.is_active),
        "is_admin": is_admin(user, admin_users),
        "datetime_created": isoformat(user.datetime_created),
        "quota": quota_model(quota, disk_bytes_used),
        "running_sessions": sessions,
    }


def users_query(
    session: Any, admin_users: frozenset[str], username: str | None = None
) -> list[dict[str, Any]]:
    """Every user (or one), each with their quota, disk use and active sessions: four queries
    however many users there are."""
    stmt = select(orm.User).order_by(orm.User.id)
    if username is not None:
        stmt = stmt.where(orm.User.username == username)
    users = list(session.scalars(stmt))
    ids = [u.id for u in users]
    quotas = {q.user_id: q for q in session.scalars(select(orm.Quota).where(orm.Quota.user_id.in_(ids)))}
    disk = dict(
        session.execute(
            select(orm.Workspace.user_id, func.coalesce(func.sum(orm.Workspace.disk_space), 0))
            .where(orm.Workspace.user_id.in_(ids))
            .group_by(orm.Workspace.user_id)
        ).all()
    )
    sessions: dict[int, list[dict[str, Any]]] = {}
    active = select(orm.Job).where(orm.Job.user_id.in_(ids), orm.Job.status.in_(ACTIVE_STATUSES))
    for job in session.scalars(active.order_by(orm.Job.id)):
        sessions.setdefault(job.user_id, []).append(
            {
                "id": job.id,
                "workspace_id": job.workspace_id,
                "job_type": job.job_type,
                "status": str(job.status),
            }
        )
    return [
        admin_user_model(
            u, admin_users, quotas.get(u.id), int(disk.get(u.id, 0) or 0), sessions.get(u.id, [])
        )
        for u in users
    ]


def parse_user_changes(body: dict[str, Any]) -> dict[str, Any]:
    """The fields of PUT /admin/users/<name>/, every one checked before anything changes."""
    unknown = sorted(set(body) - set(USER_FIELDS))
    if unknown:
        raise APIError(400, f"Unknown field(s): {', '.join(unknown)}. Known: {', '.join(USER_FIELDS)}.")
    if not body:
        raise APIError(400, f"Nothing to change: give at least one of {', '.join(USER_FIELDS)}.")
    for key in ("is_active", "is_admin"):
        if key in body and not isinstance(body[key], bool):
            raise APIError(400, f"{key} must be true or false.")
    disk = body.get("max_disk_bytes")
    if disk is not None and (isinstance(disk, bool) or not isinstance(disk, int) or not 0 <= disk < 2**63):
        raise APIError(400, "max_disk_bytes must be a whole number of bytes, at least 0 (null: no maximum).")
    hours = body.get("max_core_hours")
    if hours is not None and (
        isinstance(hours, bool) or not isinstance(hours, int | float) or not 0 <= hours < 1e15
    ):
        raise APIError(400, "max_core_hours must be a number of core hours, at least 0 (null: no maximum).")
    return body


class AdminService:
    """The /admin/ endpoints' work. Every method takes the acting admin, so that each action
    can be recorded where it happens."""

    def __init__(
        self,
        db: Database,
        auth: TokenService,
        proxy: ProxyService,
        events: EventBus,
        jobs: JobService,
    ) -> None:
        self.db = db
        self.auth = auth
        self.proxy = proxy
        self.events = events
        self.jobs = jobs

    @property
    def admin_users(self) -> frozenset[str]:
        return self.auth.admin_users

    async def list_users(self, admin: CurrentUser) -> list[dict[str, Any]]:
        return await self.db.run(lambda session: users_query(session, self.admin_users))

    async def list_jobs(
        self, admin: CurrentUser, status: str | None, username: str | None
    ) -> list[dict[str, Any]]:
        """Every user's jobs, filtered by status and owner; links without the session's token."""
        if status is not None and status not in set(JobStatus):
            known = ", ".join(s.value for s in JobStatus)
            raise APIError(400, f"Invalid value for query parameter status: {status} (one of {known}).")

        def _list(session: Any) -> list[dict[str, Any]]:
            stmt = select(orm.Job, orm.User.username).join(orm.User, orm.User.id == orm.Job.user_id)
            if username is not None:
                if session.scalar(select(orm.User.id).where(orm.User.username == username)) is None:
                    raise APIError(400, f"Invalid value for query parameter user: no user named {username}.")
                stmt = stmt.where(orm.User.username == username)
            if status is not None:
                stmt = stmt.where(orm.Job.status == status)
            rows = session.execute(stmt.order_by(orm.Job.id)).all()
            return [
                {"user": name, "job": job_view(job_model(job), with_link_token=False)} for job, name in rows
            ]

        return await self.db.run(_list)

    async def stop_job(self, admin: CurrentUser, job_id: int) -> str:
        return await self.jobs.stop(admin, job_id, "stop", as_admin=True)

    async def update_user(self, admin: CurrentUser, username: str, body: dict[str, Any]) -> dict[str, Any]:
        changes = parse_user_changes(body)
        if changes.get("is_admin") is False and username in self.admin_users:
            raise APIError(
                400, f"{username} is an admin through c.UWSApp.admin_users: remove the name there to demote."
            )

        def _update(session: Any) -> tuple[int, bool]:
            user = session.scalar(select(orm.User).where(orm.User.username == username))
            if user is None:
                raise APIError(404, f"User {username} not found.")
            was_active = bool(user.is_active)
            if "is_active" in changes:
                user.is_active = changes["is_active"]
            if "is_admin" in changes:
                user.is_admin = changes["is_admin"]
            if "max_disk_bytes" in changes or "max_core_hours" in changes:
                disk, hours = changes.get("max_disk_bytes"), changes.get("max_core_hours")
                set_quota(
                    session,
                    username,
                    disk,
                    None if hours is None else float(hours),
                    clear_disk="max_disk_bytes" in changes and disk is None,
                    clear_core_hours="max_core_hours" in changes and hours is None,
                )
            return user.id, was_active and not user.is_active

        user_id, deactivated = await self.db.run(_update)
        if deactivated:
            await end_access(self.auth, self.proxy, self.events, user_id)
        else:
            self.auth.forget_user(user_id)  # a demotion counts from the next request on
        (model,) = await self.db.run(lambda session: users_query(session, self.admin_users, username))
        return model

    async def revoke_tokens(self, admin: CurrentUser, username: str) -> int:
        """Every token of the user (login and API tokens); their session cookies end too."""
        user_id = await self.db.run(
            lambda session: session.scalar(select(orm.User.id).where(orm.User.username == username))
        )
        if user_id is None:
            raise APIError(404, f"User {username} not found.")
        count = await self.auth.revoke_all(user_id)
        await end_access(self.auth, self.proxy, self.events, user_id)
        return count
