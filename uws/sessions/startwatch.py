"""The watch on a session helper from its start until it first reports: one that ends before
that fails its job at once, with the cause it left (Spawner.start_failure), instead of staying
pending until the reconciler finds it silent. Each watch ends by itself: when the helper
reports, the job ends or is being stopped, START_WATCH_SECONDS pass, or the server shuts down."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from ..spawners.base import Spawner
from .record import LiveSession

if TYPE_CHECKING:
    from ..keys import SessionTokens
    from .service import JobService

log = logging.getLogger("uws.jobs")

# A helper that ends before it first reports is found within this many seconds of ending, for
# this long after its start (a helper that lives longer is past what can fail on its start).
START_WATCH_INTERVAL = 0.2
START_WATCH_SECONDS = 30.0
HIDDEN = "[hidden]"


class StartWatches:
    """The watches in progress, kept only so that shutdown can end them."""

    def __init__(self, jobs: JobService, session_tokens: SessionTokens) -> None:
        self.jobs = jobs
        self.session_tokens = session_tokens
        self.tasks: set[asyncio.Task[None]] = set()

    def watch(self, job_id: int, record: LiveSession, spawner: Spawner) -> None:
        task = asyncio.ensure_future(self._watch(job_id, record, spawner))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    async def _watch(self, job_id: int, record: LiveSession, spawner: Spawner) -> None:
        def watched() -> bool:
            return self.jobs.live.get(job_id) is record and not record.heard and not record.stop_requested

        deadline = time.monotonic() + START_WATCH_SECONDS
        ended = None
        try:
            while ended is None and time.monotonic() < deadline:
                await asyncio.sleep(START_WATCH_INTERVAL)
                if not watched():
                    return
                ended = await spawner.start_failure()
        except Exception:
            log.exception("Watching the start of job %s failed; the reconciler checks it", job_id)
            return
        if ended is None or not watched():
            return
        ended = self._without_secrets(job_id, record, ended)
        log.warning("Job %s: its session helper ended before reporting: %s", job_id, ended.get("message"))
        await self.jobs.apply_exit(job_id, ended)

    def _without_secrets(self, job_id: int, record: LiveSession, ended: dict[str, Any]) -> dict[str, Any]:
        """The helper's own output goes to the job: never with the job's secret or session token
        in it, whatever wrote them there."""
        hidden = [value for value in (record.secret, self.session_tokens.token(job_id)) if value]
        cleaned = dict(ended)
        for key in ("message", "log_tail"):
            text = cleaned.get(key)
            if isinstance(text, str):
                for value in hidden:
                    text = text.replace(value, HIDDEN)
                cleaned[key] = text
        return cleaned
