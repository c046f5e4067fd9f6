"""Jobs: launching sessions, tracking them through their helpers, and stopping them.

State changes arrive pushed from each session's helper over the session channel; nothing polls
the sessions in a loop. A reconciliation pass (at start-up and every `reconcile_seconds`) asks
the spawner about any job whose helper has gone silent, and marks a job finished only on
evidence (exit.json, or the helper process provably gone), never because a check failed (B6).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from typing import Any

from sqlalchemy import select

from . import orm
from .auth.tokens import CurrentUser
from .errors import APIError
from .jobtypes import JobTypeError, build_spec, job_type_minutes, minutes, settings_for
from .models import job_model
from .params import DefaultValueError, translate, validate_resource_options, with_defaults
from .proxy import new_host_label
from .spawners.base import LaunchError, Spawner
from .utils import utcnow
from .workspaces import ACTIVE_JOB_STATUSES, DIR_FAILURE_JOBS

log = logging.getLogger("uws.jobs")

# Ports a session app may be reached at: unprivileged ones only (the others are the host's services).
SESSION_PORTS = range(1024, 65536)

FAILED_MESSAGE = "This job has failed. Support team has been notified and will investigate the error."
IMPROPER = "Job Type improperly configured. Please contact a system administrator to resolve this."
PARAMETERS_IMPROPER = (
    "Resource option defaults improperly configured. Please contact a system administrator to resolve this."
)
EXIT_MESSAGES = {
    "completed": "Job finished.",
    "stopped": "Job stopped.",
    "time_limit": "The job reached its time limit and was stopped.",
    "failed": FAILED_MESSAGE,
    "launch_failed": "The application could not be started, or did not answer in time.",
}
LAUNCH_INTERRUPTED = "Launch interrupted by a server restart; the session was ended."


def owned_jobs_query(user_id: int) -> Any:
    """The caller's jobs: those whose workspace the caller owns (a deleted workspace's jobs drop
    out, as in the original), in id order."""
    return (
        select(orm.Job)
        .join(orm.Workspace, orm.Workspace.id == orm.Job.workspace_id)
        .where(orm.Workspace.user_id == user_id)
        .order_by(orm.Job.id)
    )


def _job_event_fields(job: dict[str, Any]) -> tuple[Any, Any]:
    return job["status"], job["job_details"]["current_job_details"]


def _core_seconds(job: orm.Job, allocated: float | None) -> float:
    """The resource's own figure, else requested CPUs × (end − start) by the server's clock."""
    if allocated is not None:
        return allocated
    cpus = (job.spawner_state or {}).get("cpus")
    cpus = cpus if isinstance(cpus, int) and cpus > 0 else 1
    if job.datetime_start is None or job.datetime_end is None:
        return 0.0
    return cpus * max(0.0, (job.datetime_end - job.datetime_start).total_seconds())


class JobService:
    def __init__(self, app: Any) -> None:
        from .sessions.channel import SessionChannel

        self.app = app
        self.db = app.db
        self.events = app.events
        self.channel = SessionChannel(
            app.session_channel_url,
            self.secret_for,
            self.on_message,
            group=app.session_group,
            key_file=os.path.join(app.data_dir, "session_channel.key"),
        )
        self.secrets: dict[int, str] = {}
        self.spawners: dict[int, Spawner] = {}
        self.last_seen: dict[int, float] = {}
        self.metrics: dict[int, dict[str, Any]] = {}
        self.launching: set[int] = set()
        self.inflight: dict[tuple[Any, ...], asyncio.Future[dict[str, Any]]] = {}
        self.starts_in_progress = 0
        self.reserved: dict[int, int] = {}  # user id -> starts in progress (see check_limits)
        self._reconcile_task: asyncio.Task[None] | None = None
        self._locks: dict[int, asyncio.Lock] = {}
        self.owners: dict[int, int] = {}  # active job id -> user id
        # job id -> (phase in the database, when it was written)
        self.recorded: dict[int, tuple[str, float]] = {}
        self.stop_messages: dict[int, str] = {}  # why the server stopped a job (idle culling)
        self.stop_requested: set[int] = set()  # jobs the server asked to stop
        self.unanswered: dict[int, float] = {}  # job id -> when checking it first failed

    # ---- life cycle --------------------------------------------------------------------------
    async def begin(self) -> None:
        self.channel.bind()
        await self.reconcile(startup=True)
        self._reconcile_task = asyncio.ensure_future(self._reconcile_loop())

    def close(self) -> None:
        if self._reconcile_task:
            self._reconcile_task.cancel()
        self.channel.close()

    def lock(self, job_id: int) -> asyncio.Lock:
        return self._locks.setdefault(job_id, asyncio.Lock())

    async def secret_for(self, job_id: int) -> str | None:
        secret = self.secrets.get(job_id)
        if secret is not None:
            return secret
        state = await self.db.run(lambda s: (row := s.get(orm.Job, job_id)) and row.spawner_state)
        if state and state.get("secret"):
            self.secrets[job_id] = state["secret"]
            return state["secret"]
        return None

    # ---- start (contract 2.5) ----------------------------------------------------------------
    async def start(
        self, user: CurrentUser, ws_id: int, parse_body: Any, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Start a session. A retry carrying the same Idempotency-Key header (while the first is
        in flight, or within 10 minutes of its success) returns the first one's job."""
        if not idempotency_key:
            return await self._start(user, ws_id, parse_body)
        key = (user.id, ws_id, idempotency_key)
        existing = self.inflight.get(key)
        if existing is not None:
            return await asyncio.shield(existing)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.inflight[key] = future
        try:
            job = await self._start(user, ws_id, parse_body)
        except BaseException as e:
            self.inflight.pop(key, None)  # a failed start may be retried for real
            future.set_exception(e)
            future.exception()  # the first caller reports it; waiters get it too
            raise
        future.set_result(job)
        asyncio.get_running_loop().call_later(600, self.inflight.pop, key, None)
        return job

    async def _start(self, user: CurrentUser, ws_id: int, parse_body: Any) -> dict[str, Any]:
        app = self.app
        account, ws = await app.workspaces.owned_for_put(user, ws_id, "start")
        if not app.storage.valid_workspace_dir(ws.file_path):
            raise APIError(500, DIR_FAILURE_JOBS)
        body = parse_body()
        job_type_id = body.get("job_type") or ws.default_job_type
        if not job_type_id:
            raise APIError(400, "Missing job_type and no default job type set on workspace.")
        if not isinstance(job_type_id, str) or job_type_id not in app.job_types:
            raise APIError(400, f"{job_type_id} is not in the list of available job types.")
        job_details = body.get("job_details", {})
        if not isinstance(job_details, dict):
            raise APIError(400, "Job details not JSON.")
        options = body.get("resource_options", {})
        if not isinstance(options, dict):
            raise APIError(400, "Resource options not JSON.")
        valid, errors = validate_resource_options(app.parameters, options)
        if errors:
            raise APIError(422, f"Invalid resource options found: {errors!r}")
        job_type = app.job_types[job_type_id]
        settings = settings_for(job_type, app.main_resource_key)
        if settings is None or job_type.get("job_type") not in app.job_templates:
            raise APIError(400, IMPROPER)
        try:
            valid = with_defaults(app.parameters, valid, {"time_limit_min": job_type_minutes(settings)})
        except DefaultValueError as e:
            log.error("Refused to start a session: %s", e)
            raise APIError(400, PARAMETERS_IMPROPER) from None
        resource = app.resources.get(app.main_resource_key, {})
        translated = translate(valid, resource.get("parameter_mapping") or {})
        limit = minutes(valid.get("time_limit_min"))
        cpus = valid.get("num_cpus") if isinstance(valid.get("num_cpus"), int) else 1
        await app.quotas.check_core_hours(user.id, cpus * (limit or 0) / 60)
        # From the check until the job is in self.owners, the start counts as one of the user's
        # sessions: starts that arrive together must not all see the count from before them.
        self.check_limits(user)
        self.reserved[user.id] = self.reserved.get(user.id, 0) + 1
        request_details = dict(job_details)
        if "resource_options" in body and "resource_options" not in request_details:
            request_details["resource_options"] = options
        self.starts_in_progress += 1
        try:
            return await self._launch(
                user, account, ws, job_type_id, job_type, settings, request_details, translated, limit, cpus
            )
        finally:
            self.starts_in_progress -= 1
            self._release(user.id)

    def check_limits(self, user: CurrentUser) -> None:
        app = self.app
        if app.max_concurrent_starts and self.starts_in_progress >= app.max_concurrent_starts:
            raise APIError(
                429, "Too many sessions are starting right now; try again shortly.", {"Retry-After": "2"}
            )
        if app.max_running_jobs_per_user:
            # A start in progress counts through its reservation, launched or not yet.
            running = self.reserved.get(user.id, 0) + sum(
                1 for j, uid in self.owners.items() if uid == user.id and j not in self.launching
            )
            if running >= app.max_running_jobs_per_user:
                raise APIError(
                    429,
                    f"You already have {running} sessions running (maximum "
                    f"{app.max_running_jobs_per_user}). Stop one and try again.",
                    {"Retry-After": "30"},
                )

    def _release(self, user_id: int) -> None:
        left = self.reserved.get(user_id, 0) - 1
        if left > 0:
            self.reserved[user_id] = left
        else:
            self.reserved.pop(user_id, None)

    async def _launch(
        self,
        user: CurrentUser,
        account: Any,
        ws: orm.Workspace,
        job_type_id: str,
        job_type: dict[str, Any],
        settings: dict[str, Any],
        request_details: dict[str, Any],
        translated: dict[str, Any],
        limit: int | None,
        cpus: int,
    ) -> dict[str, Any]:
        app = self.app
        secret = secrets.token_hex(32)
        label = new_host_label()

        def _create(session: Any) -> int:
            job = orm.Job(
                workspace_id=ws.id,
                user_id=user.id,
                job_type=job_type_id,
                resource=app.main_resource_key,
                resource_job_id=-1,
                status="pending",
                job_details={
                    "metrics": {},
                    "request_job_details": request_details,
                    "current_job_details": {"message": "Launching the session."},
                },
                spawner_state={
                    "secret": secret,
                    "cpus": cpus,
                    "time_limit_minutes": limit,
                    "resource_options": translated,
                    "host_label": label,
                },
            )
            session.add(job)
            session.flush()
            return job.id

        job_id = await self.db.run(_create)
        self.secrets[job_id] = secret
        self.owners[job_id] = user.id
        self.launching.add(job_id)
        spawner = app.spawner_factory.make(job_id, account, ws.file_path)
        # On an origin of its own, a session's app serves from "/".
        by_origin = app.passthrough_mode == "origin"
        base_url = "/" if by_origin else f"/passthrough/{job_id}/"
        try:
            spec = build_spec(
                app.job_templates,
                job_type,
                settings,
                job_id=job_id,
                workspace_dir=ws.file_path,
                job_dir=spawner.job_dir,
                base_url=base_url,
                time_limit_minutes=limit,
                origin=app.session_urls.app_origin(job_id, label),
            )
            spec["heartbeat_seconds"] = app.heartbeat_seconds
            # One grace period for every way a session ends: the helper's own ends use it too.
            spec["grace_seconds"] = app.spawner_factory.grace_seconds(spawner)
            spec["resource_options"] = translated
            spec["cpus"] = cpus
            spec["gpu"] = (request_details.get("resource_options") or {}).get("gpu_enabled") is True
            # Apps that cannot serve under /passthrough/<id>/ get the prefix stripped.
            strip = not any("{base_url}" in part for part in spec["command"])
            pid = await spawner.start(spec, f"{secret}\n{app.session_tokens.token(job_id)}")
        except Exception as e:
            self.launching.discard(job_id)
            self.owners.pop(job_id, None)
            message = (
                str(e) if isinstance(e, JobTypeError | OSError | LaunchError) else "A server error occurred."
            )
            log.exception("Launching job %s failed", job_id)
            await self._finish(job_id, "failed", f"Launch failed: {message}")
            raise APIError(500, f"Launch failed: {message}") from None
        if os.environ.get("UWS_TEST_DIE_AFTER_SPAWN") == "1":
            # Tests only: die in the window between starting a helper and recording it, which a
            # restart must recover from (the variable is never set outside the test suite).
            os._exit(70)
        self.spawners[job_id] = spawner
        state = {
            **spawner.get_state(),
            "secret": secret,
            "cpus": cpus,
            "time_limit_minutes": limit,
            "spawner": type(spawner).__name__,
            "proxy_strip_prefix": strip,
            "host_label": label,
            "base_url": base_url,
            "idle_timeout_seconds": settings.get("idle_timeout_seconds"),
        }

        def _submitted(session: Any) -> tuple[dict[str, Any], str]:
            job = session.get(orm.Job, job_id)
            job.resource_job_id = pid
            job.spawner_state = state
            if job.status == "pending":
                details = dict(job.job_details)
                details["current_job_details"] = {"message": "Session submitted; starting the application."}
                job.job_details = details
            row = session.get(orm.Workspace, ws.id)
            if row is not None:
                if row.status in ("idle", "active"):
                    row.status = "active"
                row.datetime_last_job_launch = utcnow()
            return job_model(job), job.status

        try:
            model, status = await self.db.run(_submitted)
        except Exception:
            # Unrecorded, the helper would run on unsupervised: end the job, then the helper
            # (in that order, so that its exit report cannot turn the job into a completed one).
            self.launching.discard(job_id)
            log.exception("Recording the launch of job %s failed; stopping it", job_id)
            try:
                await self._finish(job_id, "failed", "Launch failed: the session could not be recorded.")
            except Exception:  # still unrecorded: the next start-up fails it
                log.exception("Marking job %s failed failed too", job_id)
                self._forget(job_id)
            await self._cancel_quietly(job_id, spawner)
            raise APIError(500, "Launch failed: the session could not be recorded.") from None
        self.launching.discard(job_id)
        self.last_seen[job_id] = time.monotonic()
        app.workspaces.invalidate(user.id)
        self.publish(user.id, model)
        if status != "pending":
            # Stopped while it was being submitted: cancel it now that it exists.
            asyncio.ensure_future(self._terminate(job_id))
        return model

    # ---- stop (contract 2.10) ----------------------------------------------------------------
    async def stop(self, user: CurrentUser, job_id: int, put_type: str) -> str:
        def _load(session: Any) -> orm.Job | None:
            job = session.get(orm.Job, job_id)
            if job is None:
                return None
            ws = session.get(orm.Workspace, job.workspace_id)
            return job if ws is not None and ws.user_id == user.id else None

        job = await self.db.run(_load)
        if job is None:
            raise APIError(404, f"Job {job_id} not found for user.")
        if put_type.lower() != "stop":
            raise APIError(400, "Invalid PUT type passed.")
        if job.status == "pending" and job.resource_job_id == -1:
            await self._finish(job_id, "complete", "Job stopped before it was submitted.")
            return "Successful stop."
        if job.status in ("complete", "failed", "stopping"):
            raise APIError(400, "This job is not running or pending.")
        if not await self.request_stop(job_id, user.id):
            raise APIError(400, "This job is not running or pending.")
        return "Job queued to stop."

    async def request_stop(self, job_id: int, user_id: int, final_message: str | None = None) -> bool:
        """Move a pending or running job to `stopping` and end it in the background."""

        def _stopping(session: Any) -> dict[str, Any] | None:
            row = session.get(orm.Job, job_id)
            if row.status not in ("pending", "running"):
                return None
            row.status = "stopping"
            details = dict(row.job_details)
            details["current_job_details"] = {
                **details.get("current_job_details", {}),
                "message": "Stopping the session.",
            }
            details["current_job_details"].pop("connection_details", None)
            row.job_details = details
            return job_model(row)

        model = await self.db.run(_stopping)
        if model is None:
            return False
        if final_message:
            self.stop_messages[job_id] = final_message
        self.stop_requested.add(job_id)
        self.publish(user_id, model)
        asyncio.ensure_future(self._terminate(job_id))
        return True

    async def _terminate(self, job_id: int) -> None:
        """Ask the helper to stop; fall back to the spawner when the helper does not answer."""
        spawner = await self._spawner(job_id)
        await self._send_stop(job_id)
        deadline = time.monotonic() + self.app.spawner_factory.grace_seconds(spawner) + 10
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
            await self._finish(job_id, "failed", "Failed to stop job.")

    async def _send_stop(self, job_id: int) -> None:
        secret = await self.secret_for(job_id)
        if secret:
            grace = self.app.spawner_factory.grace_seconds(self.spawners.get(job_id))
            await self.channel.send(job_id, secret, {"type": "stop", "grace_seconds": grace})

    async def owner_of(self, job_id: int) -> int | None:
        owner = self.owners.get(job_id)
        if owner is not None:
            return owner
        return await self.db.run(lambda s: (row := s.get(orm.Job, job_id)) and row.user_id)

    async def _is_terminal(self, job_id: int) -> bool:
        status = await self.db.run(lambda s: (row := s.get(orm.Job, job_id)) and row.status)
        return status in ("complete", "failed", None)

    # ---- messages from helpers ---------------------------------------------------------------
    async def on_message(self, job_id: int, message: dict[str, Any]) -> None:
        if job_id not in self.owners and await self._is_terminal(job_id):
            # Its job has ended here (given up on, or launched by a server that died before
            # recording it): a helper that still speaks must not run on unsupervised.
            if message["type"] != "exited":
                await self._send_stop(job_id)
            return
        self.last_seen[job_id] = time.monotonic()
        seen = message.get("time") if isinstance(message.get("time"), int | float) else None
        kind = message["type"]
        state = message.get("state") or {}
        if kind == "progress":
            await self._update(job_id, message=str(message.get("message", ""))[:500], source_time=seen)
            return
        if kind == "heartbeat":
            self.metrics[job_id] = message.get("metrics") or {}
        if state.get("phase") == "exited" or kind == "exited":
            ended = state.get("exit") or {"reason": "failed"}
            spawner = await self._spawner(job_id)
            if ended.get("reason") in ("stopped", "failed") and job_id not in self.stop_requested and spawner:
                # Ended, but not by us: the resource may know why (time limit, scancel, memory).
                # Asking takes a moment; other sessions' messages must not wait for it.
                asyncio.ensure_future(self._exit_with_resource_reason(job_id, spawner, ended, seen))
            else:
                await self.apply_exit(job_id, ended, source_time=seen)
            return
        phase = state.get("phase")
        # A heartbeat that reports what is already recorded costs no database work; time_left
        # is refreshed once a minute.
        now = time.monotonic()
        known = self.recorded.get(job_id)
        if known is None or known[0] != phase or now - known[1] >= 60:
            settled = True
            if phase == "ready" and isinstance(state.get("ready"), dict):
                settled = await self._on_ready(job_id, state["ready"], seen)
            elif phase in ("running", "ready"):
                await self._update(job_id, running=True, source_time=seen)
            if phase in ("running", "ready") and settled:
                self.recorded[job_id] = (phase, now)
        if kind == "heartbeat":
            await self._heartbeat(job_id, seen)

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
        knows it, and the port must be unprivileged and (where the spawner can tell) listened
        on by the session's own processes."""
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
        path = claim.get("path")
        return {"host": host, "port": port, "path": path[:2000] if isinstance(path, str) else ""}

    async def _spawner(self, job_id: int) -> Spawner | None:
        spawner = self.spawners.get(job_id)
        if spawner is not None:
            return spawner

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
            account = await self.app.accounts.get(user.username)
        except APIError:
            return None
        workspace_dir = ws.file_path if ws is not None else (state.get("job_dir") or "").rsplit("/.", 1)[0]
        spawner = self.app.spawner_factory.make(job_id, account, workspace_dir, state.get("spawner"))
        spawner.load_state(state)
        self.spawners[job_id] = spawner
        return spawner

    async def _update(
        self,
        job_id: int,
        *,
        message: str | None = None,
        ready: dict[str, Any] | None = None,
        running: bool = False,
        source_time: float | None = None,
    ) -> None:
        app = self.app

        def _apply(session: Any) -> tuple[int, dict[str, Any]] | None:
            job = session.get(orm.Job, job_id)
            if job is None or job.status in ("complete", "failed"):
                return None
            details = dict(job.job_details or {})
            current = dict(details.get("current_job_details") or {})
            metrics = dict(details.get("metrics") or {})
            before = (job.status, dict(current))
            if running and job.status == "pending":
                job.status = "running"
                job.datetime_start = utcnow()
                metrics["time_pending"] = round(
                    (job.datetime_start - job.datetime_created).total_seconds(), 6
                )
                current["message"] = "Session running."
            recorded = (job.spawner_state or {}).get("ready")
            if ready and job.status in ("pending", "running") and not recorded:
                if job.status == "pending":
                    job.status = "running"
                    job.datetime_start = utcnow()
                    metrics["time_pending"] = round(
                        (job.datetime_start - job.datetime_created).total_seconds(), 6
                    )
                label = str((job.spawner_state or {}).get("host_label") or "")
                url_domain, url_path = app.session_urls.connection_url(job_id, ready, label)
                job.spawner_state = {**(job.spawner_state or {}), "ready": ready}
                current["message"] = "Webserver ready."
                current["proxy_details"] = {
                    "hostname": ready.get("host", ""),
                    "port": str(ready.get("port", "")),
                    "path": url_path,
                }
                current["connection_details"] = {"url_domain": url_domain, "url_path": url_path}
                if job.datetime_start is not None:
                    metrics["time_init"] = round((utcnow() - job.datetime_start).total_seconds(), 6)
            if message is not None and job.status in ("pending", "running"):
                current["message"] = message
            left = self._time_left(job)
            # Refreshed once a minute (the portal shows minutes): idle heartbeats write nothing.
            if left is not None and (
                abs(current.get("time_left", -999) - left) >= 60 or "time_left" not in current
            ):
                current["time_left"] = left
            if (job.status, current) == before and metrics == details.get("metrics"):
                return None
            details["current_job_details"] = current
            details["metrics"] = metrics
            job.job_details = details
            return job.user_id, job_model(job)

        async with self.lock(job_id):
            result = await self.db.run(_apply)
        if result is not None:
            self.publish(*result, source_time=source_time)

    def _time_left(self, job: orm.Job) -> int | None:
        """Seconds a running job has left: the resource's own figure where it has one (Slurm),
        else its time limit less the time since it started."""
        if job.status != "running":
            return None
        spawner = self.spawners.get(job.id)
        left = getattr(spawner, "time_left", None)
        if left is not None:
            return left
        limit = (job.spawner_state or {}).get("time_limit_minutes")
        if not limit or job.datetime_start is None:
            return None
        return max(0, int(limit * 60 - (utcnow() - job.datetime_start).total_seconds()))

    async def _heartbeat(self, job_id: int, source_time: float | None) -> None:
        """Metrics go out as events only; the database sees them when the job ends."""
        metrics = self.metrics.get(job_id)
        user_id = self.owners.get(job_id)
        if metrics and user_id is not None:
            self.events.publish(
                user_id, "metrics", {"job_id": job_id, **metrics}, job_id=job_id, source_time=source_time
            )

    async def _exit_with_resource_reason(
        self, job_id: int, spawner: Spawner, ended: dict[str, Any], source_time: float | None
    ) -> None:
        try:
            ended = await spawner.end_state(ended)
        except Exception:
            log.exception("Asking the resource how job %s ended failed", job_id)
        await self.apply_exit(job_id, ended, source_time=source_time)

    async def apply_exit(self, job_id: int, ended: dict[str, Any], source_time: float | None = None) -> None:
        reason = ended.get("reason", "failed")
        tail = ended.get("log_tail") or ""
        if reason == "disappeared":
            status, message = "failed", "Job process disappeared; exit status unknown."
        elif reason in ("completed", "stopped", "time_limit"):
            status, message = "complete", ended.get("message") or EXIT_MESSAGES[reason]
            if job_id in self.stop_requested:  # however it ended, it ended because we asked
                message = self.stop_messages.pop(job_id, EXIT_MESSAGES["stopped"])
        else:
            status = "failed"
            message = ended.get("message") or EXIT_MESSAGES.get(reason, FAILED_MESSAGE)
            if ended.get("exit_code") is not None:
                message = f"{message} (exit code {ended['exit_code']})"
        await self._finish(
            job_id, status, message, log_tail=tail, stopping_completes=True, source_time=source_time
        )

    async def _finish(
        self,
        job_id: int,
        status: str,
        message: str,
        log_tail: str = "",
        stopping_completes: bool = False,
        source_time: float | None = None,
    ) -> None:
        """Move a job to a terminal status: end time, core hours, workspace back to idle."""
        # Core hours: what the resource allocated (a batch scheduler's CPUs × elapsed), else the
        # same measured here: requested CPUs × wall clock from running to now. Never a figure the
        # helper reports: it runs as the session's owner, who could make it say anything.
        core_seconds = None
        spawner = self.spawners.get(job_id)
        if spawner is not None:
            try:
                core_seconds = await spawner.usage()
            except Exception:
                log.exception("Reading job %s's allocation failed; using CPUs × elapsed", job_id)

        def _apply(session: Any) -> tuple[int, dict[str, Any], int] | None:
            job = session.get(orm.Job, job_id)
            if job is None or job.status in ("complete", "failed"):
                return None
            # A session the user asked to stop ends `complete`, however its process ended.
            job.status = "complete" if stopping_completes and job.status == "stopping" else status
            job.datetime_end = utcnow()
            job.core_hours = (
                round(_core_seconds(job, core_seconds) / 3600.0, 5) if job.datetime_start else 0.0
            )
            details = dict(job.job_details or {})
            current = {"message": message}
            if log_tail:
                current["log_tail"] = log_tail[-2000:]
            details["current_job_details"] = current
            job.job_details = details
            if job.core_hours:
                quota = session.get(orm.Quota, job.user_id)
                if quota is None:
                    quota = orm.Quota(user_id=job.user_id, used_disk_bytes=0, used_core_hours=0.0)
                    session.add(quota)
                quota.used_core_hours = (quota.used_core_hours or 0.0) + job.core_hours
            ws = session.get(orm.Workspace, job.workspace_id)
            if ws is not None and ws.status == "active":
                others = session.scalar(
                    select(orm.Job.id).where(
                        orm.Job.workspace_id == ws.id,
                        orm.Job.id != job_id,
                        orm.Job.status.in_(ACTIVE_JOB_STATUSES),
                    )
                )
                if others is None:
                    ws.status = "idle"
            return job.user_id, job_model(job), job.workspace_id

        async with self.lock(job_id):
            result = await self.db.run(_apply)
        self._forget(job_id)
        if result is None:
            return
        user_id, model, ws_id = result
        self.publish(user_id, model, source_time=source_time)
        await self.app.workspaces.rescan(ws_id, user_id)
        await self.app.quotas.warn_if_near(user_id, self.events)

    def _forget(self, job_id: int) -> None:
        self.app.proxy.forget(job_id)
        self.owners.pop(job_id, None)
        spawner = self.spawners.pop(job_id, None)
        if spawner is not None:
            asyncio.ensure_future(spawner.reap())
        self.last_seen.pop(job_id, None)
        self.metrics.pop(job_id, None)
        self.recorded.pop(job_id, None)
        self.stop_requested.discard(job_id)
        self.unanswered.pop(job_id, None)
        self.channel.forget(job_id)
        self._locks.pop(job_id, None)

    def publish(self, user_id: int, model: dict[str, Any], source_time: float | None = None) -> None:
        self.events.publish(user_id, "job", model, job_id=model["id"], source_time=source_time)

    # ---- reconciliation ----------------------------------------------------------------------
    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.app.reconcile_seconds)
            try:
                await self.reconcile()
            except Exception:
                log.exception("Reconciliation failed; retrying later")

    async def _unanswered(self, job_id: int, status: str, helper_alive: bool, error: Exception) -> None:
        """Unknown is not finished (B6): keep the status, say so, and try again. Only a job whose
        helper is silent too, for lost_contact_seconds on end, is given up as failed."""
        log.warning("Checking job %s failed (%s); keeping its status", job_id, error)
        since = self.unanswered.setdefault(job_id, time.monotonic())
        # A queued job has no helper yet: it waits for the scheduler to come back, however long.
        gone = not helper_alive and status != "pending"
        if gone and time.monotonic() - since > self.app.lost_contact_seconds:
            spawner = self.spawners.get(job_id)
            await self._finish(job_id, "failed", "Lost contact with the job on the resource.")
            if spawner is not None:  # so it cannot run on unowned, should it come back
                asyncio.ensure_future(self._cancel_quietly(job_id, spawner))
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

    async def reconcile(self, startup: bool = False) -> None:
        rows = await self.db.run(
            lambda s: [
                (j.id, j.user_id, j.status, j.resource_job_id)
                for j in s.scalars(select(orm.Job).where(orm.Job.status.in_(ACTIVE_JOB_STATUSES)))
            ]
        )
        silent_after = self.app.heartbeat_seconds * 3
        now = time.monotonic()
        for job_id, user_id, status, resource_job_id in rows:
            self.owners.setdefault(job_id, user_id)
            if job_id in self.launching:
                continue
            if resource_job_id == -1:
                if startup:  # the server died while launching it: its helper may have started
                    spawner = await self._spawner(job_id)
                    await self._finish(job_id, "failed", LAUNCH_INTERRUPTED)
                    if spawner is not None:
                        asyncio.ensure_future(self._stop_unrecorded(job_id, spawner))
                continue
            if startup:
                secret = await self.secret_for(job_id)
                if secret:
                    await self.channel.send(job_id, secret, {"type": "report"})
                    if status == "stopping":
                        self.stop_requested.add(job_id)
                        asyncio.ensure_future(self._terminate(job_id))
                continue
            # Pending jobs (waiting in a queue, no helper yet) are checked every pass, so the
            # queue's reason reaches the user, and so are those of resources that answer for all
            # sessions at once (Slurm: time left); the others once their helper goes silent.
            helper_alive = now - self.last_seen.get(job_id, 0) < silent_after
            try:
                # Loaded (once, then cached) even for a live helper: after a restart, whether
                # its resource answers for all sessions at once is known only from the spawner.
                spawner = await self._spawner(job_id)
                if status != "pending" and helper_alive and not (spawner and spawner.poll_while_alive):
                    continue
                ended = await spawner.poll() if spawner is not None else None
            except Exception as e:
                await self._unanswered(job_id, status, helper_alive, e)
                continue
            if self.unanswered.pop(job_id, None) is not None and ended is None:
                await self._update(job_id, message="The resource is answering again.")
            if ended is not None:
                await self.apply_exit(job_id, ended)
            else:
                waiting = getattr(spawner, "status_message", None)
                if waiting:
                    await self._update(job_id, message=waiting)
                elif getattr(spawner, "time_left", None) is not None:
                    await self._update(job_id)  # time_left, from the resource
                secret = await self.secret_for(job_id)
                if secret:
                    await self.channel.send(job_id, secret, {"type": "report"})
        if startup:
            # Give reconnecting helpers a moment, then check the silent ones for evidence.
            asyncio.get_running_loop().call_later(
                self.app.heartbeat_seconds * 3 + 1, lambda: asyncio.ensure_future(self.reconcile())
            )
