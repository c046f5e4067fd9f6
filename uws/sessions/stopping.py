"""Stopping a session (contract 2.10): the job moved to `stopping`, its helper asked to stop,
then the spawner if the helper does not answer in time, and the job failed if neither ends it.
Part of JobService (uws.sessions.service), kept apart for its size."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from .. import orm
from ..auth.tokens import CurrentUser
from ..errors import APIError, not_found_for_user
from ..models import job_model
from ..spawners.base import LaunchError
from . import transitions
from .servicebase import JobServiceBase
from .status import TERMINAL, JobStatus

log = logging.getLogger("uws.jobs")


class Stopping(JobServiceBase):
    """A part of JobService: it uses the service's spawner factory, database, channel, live records and
    transitions (_finish, apply_exit, _spawner, publish)."""

    async def stop(self, user: CurrentUser, job_id: int, put_type: str, as_admin: bool = False) -> str:
        """PUT /jobs/<id>/stop/ by the owner, or (as_admin) PUT /admin/jobs/<id>/stop/ by an
        admin: the same stop, reported to the owner; the admin owns nothing by it."""
        if as_admin and not user.may("admin"):
            raise APIError(403, "Only administrators may do this.")

        def _load(session: Any) -> tuple[orm.Job, int] | None:
            job = session.get(orm.Job, job_id)
            if job is None:
                return None
            ws = session.get(orm.Workspace, job.workspace_id)
            if as_admin:
                return job, ws.user_id if ws is not None else job.user_id
            return (job, ws.user_id) if ws is not None and ws.user_id == user.id else None

        found = await self.db.run(_load)
        if found is None:
            if as_admin:
                raise APIError(404, f"Job {job_id} not found.")
            raise not_found_for_user(f"Job {job_id} not found for user.")
        job, owner_id = found
        if put_type.lower() != "stop":
            raise APIError(400, "Invalid PUT type passed.")
        if job.status == JobStatus.PENDING and job.resource_job_id == -1:
            await self._finish(job_id, JobStatus.COMPLETE, "Job stopped before it was submitted.")
            return "Successful stop."
        if job.status in TERMINAL or job.status == JobStatus.STOPPING:
            raise APIError(400, "This job is not running or pending.")
        if not await self.request_stop(job_id, owner_id):
            raise APIError(400, "This job is not running or pending.")
        return "Job queued to stop."

    async def request_stop(self, job_id: int, user_id: int, final_message: str | None = None) -> bool:
        """Move a pending or running job to `stopping` and end it in the background."""

        def _stopping(session: Any) -> dict[str, Any] | None:
            row = session.get(orm.Job, job_id)
            return job_model(row) if transitions.mark_stopping(row) else None

        model = await self.db.run(_stopping)
        if model is None:
            return False
        record = self.live.get(job_id)
        if record is not None:
            record.stop_requested = True
            record.stop_message = final_message or record.stop_message
        self.publish(user_id, model)
        self.background(self._terminate(job_id))
        return True

    async def _terminate(self, job_id: int) -> None:
        """Ask the helper to stop; fall back to the spawner when the helper does not answer."""
        spawner = await self._spawner(job_id)
        await self._send_stop(job_id)
        deadline = time.monotonic() + self.parts.spawner_factory.grace_seconds(spawner) + 10
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            if await self._is_terminal(job_id):
                return
        try:
            if spawner is not None:
                await spawner.stop()
                # A scheduler takes a moment to record the cancellation.
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    try:
                        ended = await spawner.poll()
                    except LaunchError:  # the scheduler is slow to answer: not yet known
                        ended = None
                    if ended is not None:
                        await self.apply_exit(job_id, ended)
                        return
                    await asyncio.sleep(0.5)
        except Exception:
            log.exception("Stopping job %s through its spawner failed", job_id)
        if not await self._is_terminal(job_id):
            await self._finish(job_id, JobStatus.FAILED, "Failed to stop job.")

    async def _send_stop(self, job_id: int) -> None:
        secret = await self.secret_for(job_id)
        if secret:
            record = self.live.get(job_id)
            grace = self.parts.spawner_factory.grace_seconds(record.spawner if record is not None else None)
            await self.channel.send(job_id, secret, {"type": "stop", "grace_seconds": grace})

    async def _is_terminal(self, job_id: int) -> bool:
        status = await self.db.run(lambda s: (row := s.get(orm.Job, job_id)) and row.status)
        return status is None or status in TERMINAL
