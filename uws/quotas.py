"""Per-user quotas: disk bytes and core hours. A missing row or a null maximum is unlimited."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, select

from . import orm
from .errors import APIError


def disk_used(session: Any, user_id: int) -> int:
    return int(
        session.scalar(
            select(func.coalesce(func.sum(orm.Workspace.disk_space), 0)).where(
                orm.Workspace.user_id == user_id
            )
        )
        or 0
    )


def disk_limit(session: Any, user_id: int, lock: bool = False) -> tuple[int | None, int]:
    """(maximum or None, bytes used). lock=True holds the quota row for the transaction, so
    two writes charged to the same user are checked one after the other."""
    quota = session.get(orm.Quota, user_id, with_for_update=lock)
    if quota is None or quota.max_disk_bytes is None:
        return None, 0
    return quota.max_disk_bytes, disk_used(session, user_id)


def check_disk(maximum: int | None, used: int, requested: int, whose: str = "") -> None:
    """Raise the 400 for a write of `requested` bytes that would pass the maximum."""
    if maximum is not None and used + requested > maximum:
        raise APIError(
            400,
            f"Disk quota {whose}exceeded: used {used} bytes, requested {requested} bytes, "
            f"maximum {maximum} bytes.",
        )


class QuotaService:
    """Maximums are set by `uws quota set` in another process, so they are cached only briefly."""

    CACHE_SECONDS = 2.0

    def __init__(self, db: Any) -> None:
        self.db = db
        self._unlimited_disk: dict[int, float] = {}  # user id -> when we last saw no disk maximum

    async def check_disk_write(self, user_id: int, requested: int) -> bool:
        """Refuse a write that would take the user's workspaces past their disk maximum.
        Returns whether the user has a disk maximum at all (then warnings are worth checking)."""
        seen = self._unlimited_disk.get(user_id)
        if seen is not None and time.monotonic() - seen < self.CACHE_SECONDS:
            return False  # most users have no maximum: no query on their every write

        maximum, used = await self.db.run(lambda session: disk_limit(session, user_id))
        if maximum is None:
            self._unlimited_disk[user_id] = time.monotonic()
        else:
            self._unlimited_disk.pop(user_id, None)
        check_disk(maximum, used, requested)
        return maximum is not None

    async def check_core_hours(self, user_id: int, requested: float, status: int = 400) -> None:
        """A start reserves cpus x time limit; refuse it (with `status`: the original API's
        starts answer 400) when that would pass the maximum."""

        def _check(session: Any) -> tuple[float | None, float]:
            quota = session.get(orm.Quota, user_id)
            if quota is None or quota.max_core_hours is None:
                return None, 0.0
            return quota.max_core_hours, quota.used_core_hours or 0.0

        maximum, used = await self.db.run(_check)
        if maximum is not None and used + requested > maximum:
            raise APIError(
                status,
                f"Core hour quota exceeded: used {used:.5f} core hours, requested {requested:.5f} "
                f"core hours, maximum {maximum:.5f} core hours.",
            )

    async def warn_if_near(self, user_id: int, events: Any) -> None:
        """Warning events when a user passes 80% and 90% of a maximum."""
        model = await self.quota_model(user_id)
        for kind, unit in (("disk_bytes", "bytes"), ("core_hours", "core hours")):
            used, maximum = model[kind]["used"], model[kind]["maximum"]
            if maximum in (None, 0):
                continue
            share = float(used) / float(maximum)
            for level in (0.9, 0.8):
                if share >= level:
                    events.publish(
                        user_id,
                        "quota_warning",
                        {
                            "quota": kind,
                            "used": used,
                            "maximum": maximum,
                            "percent": int(level * 100),
                            "message": f"You have used {share:.0%} of your {unit} quota.",
                        },
                    )
                    break

    async def quota_model(self, user_id: int) -> dict[str, Any]:
        return await self.db.run(
            lambda session: quota_model(session.get(orm.Quota, user_id), disk_used(session, user_id))
        )


def quota_model(quota: orm.Quota | None, disk_bytes_used: int) -> dict[str, Any]:
    """A user's quota as GET /quota/ (and the admin's user list) show it."""
    return {
        "disk_bytes": {
            "used": disk_bytes_used,
            "maximum": quota.max_disk_bytes if quota else None,
        },
        "core_hours": {
            "used": f"{(quota.used_core_hours if quota else 0.0):.5f}",
            "maximum": None
            if quota is None or quota.max_core_hours is None
            else f"{quota.max_core_hours:.5f}",
        },
    }


def set_quota(
    session: Any,
    username: str,
    max_disk_bytes: int | None,
    max_core_hours: float | None,
    clear_disk: bool = False,
    clear_core_hours: bool = False,
) -> orm.Quota:
    user = session.scalar(select(orm.User).where(orm.User.username == username))
    if user is None:
        raise LookupError(f"no user named {username!r}")
    quota = session.get(orm.Quota, user.id)
    if quota is None:
        quota = orm.Quota(user_id=user.id, used_disk_bytes=0, used_core_hours=0.0)
        session.add(quota)
    if max_disk_bytes is not None or clear_disk:
        quota.max_disk_bytes = max_disk_bytes
    if max_core_hours is not None or clear_core_hours:
        quota.max_core_hours = max_core_hours
    return quota
