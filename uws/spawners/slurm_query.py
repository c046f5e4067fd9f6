"""The batched status query of a kind of Slurm spawner: one query for all of the server's jobs,
shared by their sessions, with backoff when the scheduler does not answer."""

from __future__ import annotations

import asyncio
import math
import time
from typing import TYPE_CHECKING, Any

from .base import LaunchError

if TYPE_CHECKING:
    from .slurm import SlurmJob


class SchedulerUnavailable(LaunchError):
    """The scheduler did not answer, or refused; the message says what it said."""


class SchedulerStatus:
    """The batched status query of one kind of Slurm spawner, shared by all its sessions: at most
    one query runs at a time, a fresh enough answer is reused, and failures back off."""

    def __init__(self) -> None:
        self.tracked: set[int] = set()
        self.results: dict[int, SlurmJob] = {}
        self.covered: set[int] = set()  # the ids the last answer asked about
        self.started_at = -math.inf  # monotonic start of the last answered query
        self.failures = 0
        self.retry_at = 0.0
        self.last_error = ""
        self._lock: asyncio.Lock | None = None

    async def get(
        self, fetch: Any, job_id: int, newer_than: float, interval: float, max_backoff: float
    ) -> dict[int, SlurmJob]:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.started_at >= newer_than and job_id in self.covered:
                return self.results
            started = time.monotonic()
            if started < self.retry_at:
                wait = math.ceil(self.retry_at - started)
                raise SchedulerUnavailable(f"{self.last_error} (retrying in {wait} s)")
            asked = set(self.tracked) | {job_id}
            try:
                results = await fetch(sorted(asked))
            except SchedulerUnavailable as e:
                self.failures += 1
                delay = min(max_backoff, interval * 2 ** (self.failures - 1))
                self.retry_at = time.monotonic() + delay
                self.last_error = str(e)
                raise SchedulerUnavailable(
                    f"{e} (attempt {self.failures}; retrying in {math.ceil(delay)} s)"
                ) from None
            self.failures, self.retry_at = 0, 0.0
            self.results, self.covered, self.started_at = results, asked, started
            return results
