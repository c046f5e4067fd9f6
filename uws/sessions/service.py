"""Jobs: the service handlers call to start, stop and look up sessions, and what it keeps on
each active one (a live record, uws.sessions.record).

State changes arrive pushed from each session's helper over the session channel (tracker.py);
nothing polls the sessions in a loop. A reconciliation pass (reconcile.py) asks the spawner
about any job whose helper has gone silent, and marks a job finished only on evidence. Starting
a session is launch.py's, stopping one stopping.py's; the database transitions are
transitions.py's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from datetime import datetime
from typing import TYPE_CHECKING, Any

from traitlets import Float, Integer
from traitlets.config import LoggingConfigurable

from .. import orm
from ..audit import SYSTEM
from ..auth.tokens import CurrentUser
from ..errors import APIError
from ..models import job_model
from ..spawners.base import Spawner
from ..utils import UTC, utcnow
from . import transitions
from .channel import SessionChannel
from .extending import Extending
from .launch import Launcher
from .logs import SessionLogs
from .reconcile import Reconciler
from .record import LiveSessions
from .servicebase import JobParts, JobSettings, SessionObserver
from .status import TERMINAL, JobStatus
from .stopping import Stopping
from .tracker import HelperMessages

if TYPE_CHECKING:
    from ..passthrough import ProxyService

log = logging.getLogger("uws.jobs")

FAILED_MESSAGE = "This job has failed. Support team has been notified and will investigate the error."
EXIT_MESSAGES = {
    "completed": "Job finished.",
    "stopped": "Job stopped.",
    "time_limit": "The job reached its time limit and was stopped.",
    "failed": FAILED_MESSAGE,
    "launch_failed": "The application could not be started, or did not answer in time.",
}


class JobService(HelperMessages, Reconciler, Stopping, Extending, LoggingConfigurable):
    max_concurrent_starts = Integer(
        20,
        help="Sessions that may be starting at once; more get 429 with Retry-After (0: no limit).",
    ).tag(config=True)
    max_running_jobs_per_user = Integer(
        10,
        help="Active sessions one user may have; more get 429 with Retry-After (0: no limit).",
    ).tag(config=True)
    heartbeat_seconds = Float(5.0, help="Seconds between session helper heartbeats.").tag(config=True)
    reconcile_seconds = Float(
        10.0, help="Seconds between checks of sessions whose helper has gone silent."
    ).tag(config=True)
    lost_contact_seconds = Float(
        900.0,
        help="""A session whose helper is silent and whose resource (the Slurm scheduler, say)
        does not answer keeps its status, and is checked again with backoff; after this many
        seconds of that it is marked failed ("Lost contact with the job on the resource.").""",
    ).tag(config=True)

    # Set by UWSApp.init_services once built: the passthrough is built after the jobs.
    proxy: ProxyService
    # Told of starts, ends and heartbeats: the server's metrics, when they are on.
    observer: SessionObserver = SessionObserver()

    def __init__(self, parts: JobParts, settings: JobSettings, **kw: Any) -> None:
        super().__init__(**kw)
        self.parts = parts
        self.db = parts.db
        self.events = parts.events
        self.settings = settings
        self.channel = SessionChannel(
            settings.session_channel_url,
            self.secret_for,
            self.on_message,
            group=settings.session_group,
            key_file=settings.channel_key_file,
        )
        self.logs = SessionLogs(parts.db, settings.log_dir, parent=self)
        # Everything held about an active job, in one record per job: removed when it ends.
        self.live = LiveSessions()
        self.launcher = Launcher(self, parts, settings)
        # The work this server does for sessions because it leads (reconciliation, stops under
        # way, ...): ended by end(), so a server that stands by acts on no session.
        self._tasks: set[asyncio.Task[Any]] = set()
        self.leading = False

    # ---- life cycle --------------------------------------------------------------------------
    async def begin(self) -> None:
        """Start leading: bind the session channel (a new term: helpers say "hello" to it as
        their connections come up) and re-attach every active session from the database
        (reconcile.py), then reconcile periodically. May follow end(), any number of times
        (the caller runs one of begin() and end() at a time)."""
        await self.channel.bind_when_free()
        self.leading = True
        self.logs.begin()
        await self.reconcile(startup=True)
        if not self.leading:  # end() came while the sessions were being re-attached
            self._cancel_tasks()
            return
        self.background(self._reconcile_loop())

    async def end(self) -> None:
        """Stop leading, so that another server can: unbind the channel, stop reconciling,
        stopping and watching sessions, and sweeping logs, and forget what this process held
        about each session (the next leader, maybe this one again, rebuilds it from the
        database). Sessions themselves go on: their helpers wait for the next leader."""
        self.leading = False
        tasks = self._cancel_tasks()
        self.channel.close()
        self.logs.close()
        for record in self.live:
            if not record.launching:  # a start under way holds its record; it ends soon
                self.live.forget(record.job_id)
        self.proxy.forget_cache()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _cancel_tasks(self) -> list[asyncio.Task[Any]]:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        self.launcher.start_watches.close()
        return tasks

    def background(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run leader's work for sessions in the background; end() cancels it."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def lock(self, job_id: int) -> asyncio.Lock:
        return self.live.lock(job_id)

    async def secret_for(self, job_id: int) -> str | None:
        record = self.live.get(job_id)
        if record is not None and record.secret is not None:
            return record.secret
        state = await self.db.run(lambda s: (row := s.get(orm.Job, job_id)) and row.spawner_state)
        secret = state.get("secret") if state else None
        if secret and record is not None:  # kept only while the job is live
            record.secret = secret
        return secret or None

    async def start(
        self, user: CurrentUser, ws_id: int, parse_body: Any, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        return await self.launcher.start(user, ws_id, parse_body, idempotency_key)

    async def owner_of(self, job_id: int) -> int | None:
        record = self.live.get(job_id)
        if record is not None:
            return record.owner
        return await self.db.run(lambda s: row.user_id if (row := s.get(orm.Job, job_id)) else None)

    async def _spawner(self, job_id: int) -> Spawner | None:
        record = self.live.get(job_id)
        if record is not None and record.spawner is not None:
            return record.spawner

        def _load(session: Any) -> tuple[orm.Job, orm.Workspace | None, orm.User] | None:
            job = session.get(orm.Job, job_id)
            if job is None:
                return None
            return job, session.get(orm.Workspace, job.workspace_id), session.get(orm.User, job.user_id)

        loaded = await self.db.run(_load)
        if loaded is None:
            return None
        job, ws, user = loaded
        state = job.spawner_state or {}
        try:
            account = await self.parts.accounts.get(user.username)
        except APIError:
            return None
        workspace_dir = ws.file_path if ws is not None else (state.get("job_dir") or "").rsplit("/.", 1)[0]
        spawner = self.parts.spawner_factory.make(job_id, account, workspace_dir, state.get("spawner"))
        spawner.load_state(state)
        record = self.live.get(job_id)
        if record is not None:  # kept only while the job is live: an ended job's is not reused
            record.spawner = record.spawner or spawner
            return record.spawner
        return spawner

    async def _update(
        self,
        job_id: int,
        *,
        message: str | None = None,
        ready: dict[str, Any] | None = None,
        running: bool = False,
        suggestions: list[dict[str, Any]] | None = None,
        source_time: float | None = None,
    ) -> None:
        """Record and announce what changed about an active job. `suggestions`: the shapes that
        would start sooner, for a pending job (an empty list removes them; None leaves them)."""
        urls = self.parts.session_urls
        started: list[tuple[str, float]] = []  # (spawner, seconds) when it reaches running now

        def _apply(session: Any) -> tuple[int, dict[str, Any]] | None:
            job = session.get(orm.Job, job_id)
            if job is None or job.status in TERMINAL:
                return None
            was_pending = job.status == JobStatus.PENDING
            details = job.job_details or {}
            before = (job.status, dict(details.get("current_job_details") or {}), details.get("metrics"))
            if ready:
                label = str((job.spawner_state or {}).get("host_label") or "")
                transitions.mark_ready(job, ready, *urls.connection_url(job_id, ready, label))
            if running:
                transitions.mark_running(job)
            if was_pending and job.status == JobStatus.RUNNING:
                pending = ((job.job_details or {}).get("metrics") or {}).get("time_pending")
                started.append((transitions.spawner_name(job), float(pending or 0.0)))
            current = dict((job.job_details or {}).get("current_job_details") or {})
            if message is not None and job.status in (JobStatus.PENDING, JobStatus.RUNNING):
                current["message"] = message
            if suggestions is not None and job.status == JobStatus.PENDING:
                if suggestions:
                    current["suggestions"] = suggestions
                else:
                    current.pop("suggestions", None)
            left = self._time_left(job)
            # Refreshed once a minute (the portal shows minutes): idle heartbeats write nothing.
            if left is not None and (
                abs(current.get("time_left", -999) - left) >= 60 or "time_left" not in current
            ):
                current["time_left"] = left
            if (job.status, current, (job.job_details or {}).get("metrics")) == before:
                return None
            job.job_details = {**(job.job_details or {}), "current_job_details": current}
            return job.user_id, job_model(job)

        async with self.lock(job_id):
            result = await self.db.run(_apply)
        for spawner, seconds in started:
            self.observer.started(spawner, seconds)
        if result is not None:
            self.publish(*result, source_time=source_time)

    def _time_left(self, job: orm.Job) -> int | None:
        """Seconds a running job has left: the resource's own figure where it has one (Slurm),
        else its time limit less the time since it started."""
        if job.status != JobStatus.RUNNING:
            return None
        record = self.live.get(job.id)
        spawner = record.spawner if record is not None else None
        left = getattr(spawner, "time_left", None)
        if left is not None:
            return left
        state = job.spawner_state or {}
        limit = state.get("time_limit_seconds") or (state.get("time_limit_minutes") or 0) * 60
        if not limit or job.datetime_start is None:
            return None
        return max(0, int(limit - (utcnow() - job.datetime_start).total_seconds()))

    async def apply_exit(self, job_id: int, ended: dict[str, Any], source_time: float | None = None) -> None:
        reason = ended.get("reason", "failed")
        tail = ended.get("log_tail") or ""
        # The helper stopped it at its time limit: the server's own stop, audited as the culler's.
        by_time_limit = reason == "time_limit"
        if reason == "disappeared":
            status, message = JobStatus.FAILED, "Job process disappeared; exit status unknown."
        elif reason in ("completed", "stopped", "time_limit"):
            status, message = JobStatus.COMPLETE, ended.get("message") or EXIT_MESSAGES[reason]
            record = self.live.get(job_id)
            if record is not None and record.stop_requested:  # however it ended, we asked
                message = record.stop_message or EXIT_MESSAGES["stopped"]
                by_time_limit = False  # (its stop is audited where it was asked for)
        else:
            status = JobStatus.FAILED
            message = ended.get("message") or EXIT_MESSAGES.get(reason, FAILED_MESSAGE)
            if ended.get("exit_code") is not None:
                message = f"{message} (exit code {ended['exit_code']})"
        owner = await self._finish(
            job_id, status, message, log_tail=tail, stopping_completes=True, source_time=source_time
        )
        if owner is not None and by_time_limit:
            self.parts.audit_log.record(
                "session.stop", SYSTEM, f"job:{job_id}", reason="time_limit", owner_id=owner
            )

    async def _finish(
        self,
        job_id: int,
        status: JobStatus,
        message: str,
        log_tail: str = "",
        stopping_completes: bool = False,
        source_time: float | None = None,
    ) -> int | None:
        """Move a job to a terminal status (transitions.mark_finished), and forget it here. The
        job's owner when this call ended it; None when it had ended already."""
        # Core hours: what the resource allocated (a batch scheduler's CPUs × elapsed), else the
        # same measured here: requested CPUs × wall clock from running to now. Never a figure the
        # helper reports: it runs as the session's owner, who could make it say anything.
        allocated = ended_at = None
        record = self.live.get(job_id)
        if record is not None and record.spawner is not None:
            try:
                allocated = await record.spawner.usage()
                ended_at = record.spawner.ended_at()
            except Exception:
                log.exception("Reading job %s's allocation failed; using CPUs × elapsed", job_id)

        def _apply(session: Any) -> tuple[int, dict[str, Any], int, str] | None:
            job = session.get(orm.Job, job_id)
            if job is None or not transitions.mark_finished(
                session,
                job,
                status,
                message,
                log_tail=log_tail,
                allocated_core_seconds=allocated,
                ended_at=datetime.fromtimestamp(ended_at, UTC) if ended_at else None,
                stopping_completes=stopping_completes,
            ):
                return None
            return job.user_id, job_model(job), job.workspace_id, transitions.spawner_name(job)

        async with self.lock(job_id):
            result = await self.db.run(_apply)
        self._forget(job_id)
        if result is None:
            return None
        user_id, model, ws_id, spawner = result
        self.observer.ended(spawner, str(model["status"]))
        self.publish(user_id, model, source_time=source_time)
        await self.parts.workspaces.rescan(ws_id, user_id)
        await self.parts.quotas.warn_if_near(user_id, self.events)
        return user_id

    def _forget(self, job_id: int) -> None:
        """Drop everything held about a job: its live record, and what others keep by its id."""
        self.proxy.forget(job_id)
        self.channel.forget(job_id)
        record = self.live.forget(job_id)
        if record is not None and record.spawner is not None:
            asyncio.ensure_future(record.spawner.reap())

    def publish(self, user_id: int, model: dict[str, Any], source_time: float | None = None) -> None:
        self.events.publish(user_id, "job", model, job_id=model["id"], source_time=source_time)
