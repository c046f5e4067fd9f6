"""Messages from session helpers (progress, heartbeats, ready, exited) turned into the job's
transitions and events. Part of JobService (uws.sessions.service), kept apart for its size."""

from __future__ import annotations

import logging
import time
from typing import Any

from .. import orm
from ..spawners.base import Spawner
from .servicebase import JobServiceBase
from .status import TERMINAL

log = logging.getLogger("uws.jobs")

# Ports a session app may be reached at: unprivileged ones only (the others are the host's services).
SESSION_PORTS = range(1024, 65536)


def state_limit_differs(message: dict[str, Any], seconds: int) -> bool:
    """True when a helper's report shows a time limit other than `seconds` (an extension it
    has not yet heard of). Helpers whose limit the scheduler keeps report none."""
    state = message.get("state")
    if not isinstance(state, dict) or state.get("phase") not in ("running", "ready", "starting"):
        return False
    reported = state.get("time_limit_seconds")
    return reported is not None and reported != seconds


class HelperMessages(JobServiceBase):
    """A part of JobService: it uses the service's database, events, live records and
    transitions (_update, apply_exit, _spawner, _send_stop)."""

    async def on_message(self, job_id: int, message: dict[str, Any]) -> None:
        record = self.live.get(job_id)
        if record is None:
            row = await self.db.run(
                lambda s: (
                    (job := s.get(orm.Job, job_id))
                    and (job.status, job.user_id, (job.spawner_state or {}).get("time_limit_seconds"))
                )
            )
            if not row or row[0] in TERMINAL:
                # Its job has ended here (given up on, or launched by a server that died before
                # recording it): a helper that still speaks must not run on unsupervised.
                if message["type"] != "exited":
                    await self._send_stop(job_id)
                return
            record = self.live.add(job_id, row[1])
            if isinstance(row[2], int) and state_limit_differs(message, row[2]):
                record.time_limit_seconds = row[2]
        record.last_seen = time.monotonic()
        record.heard = True
        seen = message.get("time") if isinstance(message.get("time"), int | float) else None
        kind = message["type"]
        if kind == "log":
            self.logs.receive(record, message)
            return
        state = message.get("state") or {}
        if kind == "progress":
            await self._update(job_id, message=str(message.get("message", ""))[:500], source_time=seen)
            return
        if kind == "heartbeat":
            record.metrics = message.get("metrics") or {}
            if seen is not None:
                self.observer.heartbeat(seen)
        if state.get("phase") == "exited" or kind == "exited":
            ended = state.get("exit") or {"reason": "failed"}
            spawner = await self._spawner(job_id)
            if ended.get("reason") in ("stopped", "failed") and not record.stop_requested and spawner:
                # Ended, but not by us: the resource may know why (time limit, scancel, memory).
                # Asking takes a moment; other sessions' messages must not wait for it.
                self.background(self._exit_with_resource_reason(job_id, spawner, ended, seen))
            else:
                await self.apply_exit(job_id, ended, source_time=seen)
            return
        phase = state.get("phase")
        # A heartbeat that reports what is already recorded costs no database work; time_left
        # is refreshed once a minute.
        now = time.monotonic()
        known = record.recorded
        if known is None or known[0] != phase or now - known[1] >= 60:
            settled = True
            if phase == "ready" and isinstance(state.get("ready"), dict):
                settled = await self._on_ready(job_id, state["ready"], seen)
            elif phase in ("running", "ready"):
                await self._update(job_id, running=True, source_time=seen)
            if phase in ("running", "ready") and settled:
                record.recorded = (phase, now)
        if kind == "heartbeat":
            await self._heartbeat(job_id, seen)
        if record.time_limit_seconds is not None and state_limit_differs(message, record.time_limit_seconds):
            await self.send_time_limit(job_id, record.time_limit_seconds)

    async def _on_ready(self, job_id: int, claim: dict[str, Any], seen: float | None) -> bool:
        """Record the session's passthrough target from its helper's `ready`, once: a recorded
        target never moves. False when the claim was refused (a genuine one may follow)."""

        def _recorded(session: Any) -> bool:
            row = session.get(orm.Job, job_id)
            return bool(row is not None and (row.spawner_state or {}).get("ready"))

        if await self.db.run(_recorded):
            await self._update(job_id, running=True, source_time=seen)
            return True
        target = await self.ready_target(job_id, claim)
        if target is None:
            await self._update(
                job_id,
                running=True,
                message="The session's app could not be verified; it cannot be reached yet.",
                source_time=seen,
            )
            return False
        await self._update(job_id, ready=target, running=True, source_time=seen)
        return True

    async def ready_target(self, job_id: int, claim: dict[str, Any]) -> dict[str, Any] | None:
        """Where the passthrough may connect for a helper's `ready`, or None (logged) to refuse.

        The helper runs as the session's owner, who can read its secret and sign anything, so
        its `ready` is only the owner's claim: the host is the session's node as the spawner
        knows it (a claim naming another is refused), and the port must be unprivileged and
        (where the spawner can tell) listened on by the session's own processes."""
        port = claim.get("port")
        if isinstance(port, bool) or not isinstance(port, int) or port not in SESSION_PORTS:
            log.warning("Job %s: refused a ready naming port %.20r (not an unprivileged port)", job_id, port)
            return None
        host = None
        spawner = await self._spawner(job_id)
        if spawner is not None:
            try:
                host = await spawner.session_host(port)
            except Exception as e:
                log.warning("Job %s: could not tell where the session runs: %s", job_id, e)
        if not host:
            log.warning("Job %s: refused a ready naming port %d: not the session's", job_id, port)
            return None
        claimed = claim.get("host", host)  # (older helpers do not say)
        if claimed != host:
            log.warning(
                "Job %s: refused a ready naming host %.100r; the session's node is at %s",
                job_id,
                claimed,
                host,
            )
            return None
        path = claim.get("path")
        return {"host": host, "port": port, "path": path[:2000] if isinstance(path, str) else ""}

    async def _heartbeat(self, job_id: int, source_time: float | None) -> None:
        """Metrics go out as events only; the database sees them when the job ends."""
        record = self.live.get(job_id)
        if record is not None and record.metrics:
            self.events.publish(
                record.owner,
                "metrics",
                {"job_id": job_id, **record.metrics},
                job_id=job_id,
                source_time=source_time,
                stored=False,
            )

    async def _exit_with_resource_reason(
        self, job_id: int, spawner: Spawner, ended: dict[str, Any], source_time: float | None
    ) -> None:
        try:
            ended = await spawner.end_state(ended)
        except Exception:
            log.exception("Asking the resource how job %s ended failed", job_id)
        await self.apply_exit(job_id, ended, source_time=source_time)
