"""Idle culling: stop sessions nobody has used for a while, with a warning event first.

Activity is what the passthrough saw (bytes either way), except for JupyterLab, where the app's
own API decides: a busy kernel counts as activity and the last kernel activity is used, while an
open browser tab (which polls the server) alone does not. Activity is kept in memory: after a
restart every session counts as active from that moment, so nothing is ever culled early.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from tornado.httpclient import AsyncHTTPClient
from traitlets import Float
from traitlets.config import LoggingConfigurable

from .. import orm
from ..audit import SYSTEM
from ..periodic import every
from .status import JobStatus

if TYPE_CHECKING:
    from ..db import Database
    from ..events import EventBus
    from ..keys import SessionTokens
    from ..passthrough import ProxyService
    from .service import JobService

log = logging.getLogger("uws.culler")


class IdleCuller(LoggingConfigurable):
    timeout_seconds = Float(
        0,
        help="""Stop sessions idle for longer than this many seconds (0: never). A job type's
        environment_details may set its own `idle_timeout_seconds`. For JupyterLab a busy
        kernel counts as activity and an open browser tab alone does not; for other apps,
        traffic through the passthrough counts.""",
    ).tag(config=True)
    warning_seconds = Float(
        300,
        help="A warning event goes out this many seconds before an idle session is stopped.",
    ).tag(config=True)
    interval_seconds = Float(30, help="Seconds between idle-session checks.").tag(config=True)

    def __init__(
        self,
        db: Database,
        events: EventBus,
        jobs: JobService,
        proxy: ProxyService,
        job_types: dict[str, Any],
        session_tokens: SessionTokens,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.db = db
        self.events = events
        self.jobs = jobs
        self.proxy = proxy
        self.job_types = job_types
        self.session_tokens = session_tokens
        self.warned: set[int] = set()
        self.started: dict[int, float] = {}  # first time this process saw the session running
        self._task: asyncio.Task[None] | None = None

    def begin(self) -> None:
        """Start checking (again, after close(): the leader's work stops and starts with the
        lead, uws.leadership); already checking, nothing more."""
        if self._task is not None:
            return
        self._task = asyncio.ensure_future(
            every(lambda: self.interval_seconds, self.check, "Idle check", log)
        )

    def close(self) -> None:
        if self._task:
            self._task.cancel()
            self._task = None

    async def check(self) -> None:
        rows = await self.db.run(
            lambda s: [
                (j.id, j.user_id, j.job_type, j.spawner_state or {})
                for j in s.scalars(select(orm.Job).where(orm.Job.status == JobStatus.RUNNING))
            ]
        )
        now = time.time()
        running = set()
        for job_id, user_id, job_type_id, state in rows:
            running.add(job_id)
            timeout = state.get("idle_timeout_seconds") or self.timeout_seconds
            try:
                timeout = float(timeout)
            except (TypeError, ValueError):
                continue
            if timeout <= 0 or not state.get("ready"):
                continue
            last = await self.last_activity(job_id, job_type_id, state)
            idle = now - max(last, self.started.setdefault(job_id, now))
            if idle >= timeout:
                span = f"{int(timeout)} seconds" if timeout < 120 else f"{round(timeout / 60)} minutes"
                log.info("Stopping job %s: idle for %.0f s", job_id, idle)
                self.warned.discard(job_id)
                if await self.jobs.request_stop(job_id, user_id, f"Stopped after {span} without activity."):
                    self.jobs.parts.audit_log.record(
                        "session.stop", SYSTEM, f"job:{job_id}", reason="idle", owner_id=user_id
                    )
            elif idle >= timeout - self.warning_seconds and job_id not in self.warned:
                self.warned.add(job_id)
                warning = {
                    "job_id": job_id,
                    "seconds_left": int(timeout - idle),
                    "message": f"This session will be stopped in {int(timeout - idle)} seconds "
                    "unless it is used.",
                }
                self.events.publish(user_id, "idle_warning", warning, job_id=job_id)
                # The same, as the warning every session end gets (clients need watch one type).
                self.events.publish(user_id, "ending_soon", {**warning, "reason": "idle"}, job_id=job_id)
            elif idle < timeout - self.warning_seconds:
                self.warned.discard(job_id)
        for job_id in list(self.started):
            if job_id not in running:
                self.started.pop(job_id, None)
                self.warned.discard(job_id)

    async def last_activity(self, job_id: int, job_type_id: str, state: dict[str, Any]) -> float:
        job_type = self.job_types.get(job_type_id, {})
        if job_type.get("job_type") == "JupyterLabJob":
            return await self.jupyter_activity(job_id, state["ready"], state.get("base_url"))
        target = self.proxy.targets.get(job_id)
        return target.last_activity if target is not None else 0.0

    async def jupyter_activity(
        self, job_id: int, ready: dict[str, Any], base_url: str | None = None
    ) -> float:
        """Busy kernel: now. Otherwise the newest kernel activity (0 without kernels)."""
        # (Jobs started before base_url was recorded all served under /passthrough/<id>/.)
        base = base_url or f"/passthrough/{job_id}/"
        url = f"http://{ready.get('host', '127.0.0.1')}:{ready['port']}{base}api/kernels"
        try:
            response = await AsyncHTTPClient().fetch(
                url,
                headers={"Authorization": f"token {self.session_tokens.token(job_id)}"},
                connect_timeout=5,
                request_timeout=10,
            )
            kernels = json.loads(response.body)
        except Exception as e:
            log.warning("Could not ask job %s for its kernels: %r; counting it as active", job_id, e)
            return time.time()
        latest = 0.0
        for kernel in kernels:
            if kernel.get("execution_state") == "busy":
                return time.time()
            stamp = kernel.get("last_activity")
            if stamp:
                try:
                    latest = max(latest, _dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
                except ValueError:
                    pass
        return latest
