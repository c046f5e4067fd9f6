"""Reconciliation: at start-up and every `reconcile_seconds`, the active jobs in the database
checked against their helpers and resources. A job is marked finished only on evidence
(exit.json, or the helper process provably gone), never because a check failed. Part of
JobService (uws.sessions.service), kept apart for its size."""

from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy import select

from .. import orm
from ..periodic import every
from ..spawners.base import Spawner
from .servicebase import JobServiceBase
from .status import ACTIVE, JobStatus

log = logging.getLogger("uws.jobs")

LAUNCH_INTERRUPTED = "Launch interrupted by a server restart; the session was ended."


class Reconciler(JobServiceBase):
    """A part of JobService: it uses the service's database, channel, live records and
    transitions (_finish, _update, apply_exit, _spawner, _terminate)."""

    async def _reconcile_loop(self) -> None:
        await every(lambda: self.reconcile_seconds, self.reconcile, "Reconciliation", log)

    async def _unanswered(self, job_id: int, status: str, helper_alive: bool, error: Exception) -> None:
        """Unknown is not finished: keep the status, say so, and try again. Only a job whose
        helper is silent too, for lost_contact_seconds on end, is given up as failed."""
        log.warning("Checking job %s failed (%s); keeping its status", job_id, error)
        record = self.live.get(job_id)
        now = time.monotonic()
        since = now
        if record is not None:
            if record.unanswered_since is None:
                record.unanswered_since = now
            since = record.unanswered_since
        # A queued job has no helper yet: it waits for the scheduler to come back, however long.
        gone = not helper_alive and status != JobStatus.PENDING
        if gone and time.monotonic() - since > self.lost_contact_seconds:
            spawner = record.spawner if record is not None else None
            await self._finish(job_id, JobStatus.FAILED, "Lost contact with the job on the resource.")
            if spawner is not None:  # so it cannot run on unowned, should it come back
                self.background(self._cancel_quietly(job_id, spawner))
            return
        await self._update(
            job_id, message=f"The resource is not answering; the session keeps its status. ({error})"
        )

    @staticmethod
    async def _cancel_quietly(job_id: int, spawner: Spawner) -> None:
        try:
            await spawner.stop()
        except Exception as e:
            log.warning("Cancelling job %s, given up on, failed too: %s", job_id, e)

    @staticmethod
    async def _stop_unrecorded(job_id: int, spawner: Spawner) -> None:
        try:
            if await spawner.stop_unrecorded():
                log.warning("Stopped the session of job %s, launched but never recorded", job_id)
        except Exception:
            log.exception("Looking for an unrecorded session of job %s failed", job_id)

    async def reconcile(self, startup: bool = False) -> None:  # one pass, one branch per case: kept whole
        rows = await self.db.run(
            lambda s: [
                (j.id, j.user_id, j.status, j.resource_job_id)
                for j in s.scalars(select(orm.Job).where(orm.Job.status.in_(ACTIVE)))
            ]
        )
        silent_after = self.heartbeat_seconds * 3
        now = time.monotonic()
        for job_id, user_id, status, resource_job_id in rows:
            # Every active job gets its record at launch or here at start-up; one without a
            # record later has ended since the rows were read, and must not get one back.
            record = self.live.add(job_id, user_id) if startup else self.live.get(job_id)
            if record is None or record.launching:
                continue
            if resource_job_id == -1:
                if startup:  # the server died while launching it: its helper may have started
                    spawner = await self._spawner(job_id)
                    await self._finish(job_id, JobStatus.FAILED, LAUNCH_INTERRUPTED)
                    if spawner is not None:
                        self.background(self._stop_unrecorded(job_id, spawner))
                continue
            if startup:
                secret = await self.secret_for(job_id)
                if secret:
                    await self.channel.send(job_id, secret, {"type": "report"})
                    if status == JobStatus.STOPPING:
                        record.stop_requested = True
                        self.background(self._terminate(job_id))
                continue
            # Pending jobs (waiting in a queue, no helper yet) are checked every pass, so the
            # queue's reason reaches the user, and so are those of resources that answer for all
            # sessions at once (Slurm: time left); the others once their helper goes silent.
            helper_alive = now - record.last_seen < silent_after
            try:
                # Loaded (once, then cached) even for a live helper: after a restart, whether
                # its resource answers for all sessions at once is known only from the spawner.
                spawner = await self._spawner(job_id)
                if (
                    status != JobStatus.PENDING
                    and helper_alive
                    and not (spawner and spawner.poll_while_alive)
                ):
                    continue
                ended = await spawner.poll() if spawner is not None else None
            except Exception as e:
                await self._unanswered(job_id, status, helper_alive, e)
                continue
            was_unanswered = record.unanswered_since is not None
            record.unanswered_since = None
            if was_unanswered and ended is None:
                await self._update(job_id, message="The resource is answering again.")
            if ended is not None:
                await self.apply_exit(job_id, ended)
            else:
                waiting = getattr(spawner, "status_message", None)
                if waiting:
                    await self._update(
                        job_id, message=waiting, suggestions=getattr(spawner, "suggestions", None)
                    )
                elif getattr(spawner, "time_left", None) is not None:
                    await self._update(job_id)  # time_left, from the resource
                secret = await self.secret_for(job_id)
                if secret:
                    await self.channel.send(job_id, secret, {"type": "report"})
        if startup:
            # Give reconnecting helpers a moment, then check the silent ones for evidence.
            self.background(self._reconcile_after(self.heartbeat_seconds * 3 + 1))

    async def _reconcile_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self.reconcile()
