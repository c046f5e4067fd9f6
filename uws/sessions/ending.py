"""Warnings before a session reaches its time limit: an `ending_soon` job event at each
configured threshold (by default 15 and 5 minutes before the end).

Each threshold is sent once. What has been sent is kept with the job (in its spawner state), so
a restarted server does not repeat it; a threshold is armed again once the session has clearly
more time than it (an extension, or a limit raised on the scheduler), so it is sent again when
the new end comes near; an extension re-arms at once those below the session's new time left.
A session that starts with less time than a threshold never gets that
one: a warning at the start says nothing its owner did not choose.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from traitlets import Float, List
from traitlets.config import LoggingConfigurable

from .. import orm
from ..periodic import every
from .status import JobStatus

if TYPE_CHECKING:
    from ..db import Database
    from ..events import EventBus
    from .service import JobService

log = logging.getLogger("uws.jobs")

# Seconds of slack above a threshold before it is armed again (time_left moves in steps), at
# most half the threshold.
REARM_MARGIN = 60


def span(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} seconds"
    return f"{round(seconds / 60)} minutes"


def due_thresholds(left: int, thresholds: list[int], sent: list[int] | None) -> tuple[list[int], int | None]:
    """(the thresholds now counted as sent, the one to announce or None) for a session with
    `left` seconds, given those sent before (None: never looked at yet)."""
    if sent is None:
        # First look: thresholds already passed are the session's starting point, not news.
        return sorted(t for t in thresholds if left <= t), None
    kept = [t for t in sent if t in thresholds and left <= t + min(REARM_MARGIN, t // 2)]
    crossed = [t for t in thresholds if left <= t and t not in kept]
    if not crossed:
        return sorted(kept), None
    # Several at once (a long pause, a limit lowered): one warning, for the nearest end.
    return sorted(set(kept) | set(crossed)), min(crossed)


class EndingWarnings(LoggingConfigurable):
    thresholds_minutes = List(
        Float(),
        [15.0, 5.0],
        help="""Minutes before a session's time limit at which its owner gets an `ending_soon`
        event ({"job_id", "seconds_left", "message"}) on /ws/events and the job's websocket.
        Each is sent once, and again after an extension moves the limit past it. Empty: none.""",
    ).tag(config=True)
    interval_seconds = Float(
        10.0, help="Seconds between checks of running sessions' time left for these warnings."
    ).tag(config=True)

    def __init__(self, db: Database, events: EventBus, jobs: JobService, **kw: Any) -> None:
        super().__init__(**kw)
        self.db = db
        self.events = events
        self.jobs = jobs
        self._task: asyncio.Task[None] | None = None

    @property
    def thresholds(self) -> list[int]:
        return sorted({round(m * 60) for m in self.thresholds_minutes if m > 0})

    def begin(self) -> None:
        """Start checking (again, after close(): see IdleCuller.begin)."""
        if self.thresholds and self._task is None:
            self._task = asyncio.ensure_future(
                every(lambda: self.interval_seconds, self.check, "Checking sessions' time left", log)
            )

    def close(self) -> None:
        if self._task:
            self._task.cancel()
            self._task = None

    async def check(self) -> None:
        thresholds = self.thresholds
        time_left = self.jobs._time_left

        def _read(session: Any) -> list[tuple[int, int, int, Any]]:
            jobs = session.scalars(select(orm.Job).where(orm.Job.status == JobStatus.RUNNING))
            return [
                (job.id, job.user_id, left, (job.spawner_state or {}).get("ending_warned"))
                for job in jobs
                if (left := time_left(job)) is not None
            ]

        for job_id, user_id, left, sent in await self.db.run(_read):
            previous = sent if isinstance(sent, list) else None
            now_sent, announce = due_thresholds(left, thresholds, previous)
            if now_sent != previous:
                if not await self._record(job_id, now_sent):
                    continue
            if announce is not None:
                self.events.publish(
                    user_id,
                    "ending_soon",
                    {
                        "job_id": job_id,
                        "seconds_left": left,
                        "reason": "time_limit",
                        "message": f"This session reaches its time limit in {span(left)}; "
                        "extend it to keep working.",
                    },
                    job_id=job_id,
                )

    async def _record(self, job_id: int, sent: list[int]) -> bool:
        """Keep what has been sent with the job; False when it is no longer running."""

        def _write(session: Any) -> bool:
            job = session.get(orm.Job, job_id)
            if job is None or job.status != JobStatus.RUNNING:
                return False
            job.spawner_state = {**(job.spawner_state or {}), "ending_warned": sent}
            return True

        async with self.jobs.lock(job_id):
            return bool(await self.db.run(_write))
