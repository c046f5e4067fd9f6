"""Starting a session: the request checked, limits and idempotency, the launch spec, the helper
started and recorded. What goes on after that is the service's (uws.sessions.service)."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError

from .. import orm
from ..auth.accounts import Account
from ..auth.tokens import CurrentUser
from ..errors import DIR_FAILURE_JOBS, APIError
from ..models import job_model
from ..passthrough.urls import new_host_label
from ..spawners.base import LaunchError, Spawner
from . import start_keys, transitions
from .jobtypes import JobTypeError, build_spec, job_type_minutes, minutes, seconds_limit, settings_for
from .params import DefaultValueError, translate, validate_resource_options, with_defaults
from .record import LiveSession
from .startwatch import StartWatches
from .status import JobStatus

if TYPE_CHECKING:
    from .service import JobService
    from .servicebase import JobParts, JobSettings

log = logging.getLogger("uws.jobs")

IMPROPER = "Job Type improperly configured. Please contact a system administrator to resolve this."
PARAMETERS_IMPROPER = (
    "Resource option defaults improperly configured. Please contact a system administrator to resolve this."
)


@dataclass
class StartRequest:
    """A start request checked against the configuration: everything the launch needs."""

    user: CurrentUser
    account: Account
    ws: orm.Workspace
    job_type_id: str
    job_type: dict[str, Any]
    settings: dict[str, Any]  # the job type's settings for the main resource
    request_details: dict[str, Any]  # recorded on the job as asked for
    translated: dict[str, Any]  # the resource options under the resource's own names
    limit: int | None  # minutes
    cpus: int
    idempotency_key: str | None = None


class Launcher:
    """Starts sessions for the JobService. Its own state is about starts, not jobs: the
    idempotency keys in flight, the starts in progress (overall and per user), and the watches
    on started helpers that have not reported yet (uws.sessions.startwatch)."""

    def __init__(self, jobs: JobService, parts: JobParts, settings: JobSettings) -> None:
        self.jobs = jobs
        self.parts = parts
        self.settings = settings
        self.inflight: dict[tuple[Any, ...], asyncio.Future[dict[str, Any]]] = {}
        self.starts_in_progress = 0
        self.reserved: dict[int, int] = {}  # user id -> starts in progress (see check_limits)
        self.start_watches = StartWatches(jobs, parts.session_tokens)

    # ---- start (contract 2.5) ----------------------------------------------------------------
    async def start(
        self, user: CurrentUser, ws_id: int, parse_body: Any, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Start a session. A retry carrying the same Idempotency-Key header (while the first is
        in flight, or within 10 minutes of its start, on this process or on another sharing the
        database) returns the first one's job."""
        if not idempotency_key:
            return await self._start(user, ws_id, parse_body)
        key = (user.id, ws_id, idempotency_key)
        existing = self.inflight.get(key)
        if existing is not None:
            return await asyncio.shield(existing)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.inflight[key] = future
        try:
            job = await self._stored_start(user.id, ws_id, idempotency_key)
            if job is None:
                try:
                    job = await self._start(user, ws_id, parse_body, idempotency_key)
                except start_keys.KeyTaken:
                    # Another process began the same start a moment earlier: its job it is.
                    job = await self._stored_start(user.id, ws_id, idempotency_key)
                    if job is None:
                        raise APIError(409, "A start with this Idempotency-Key is in progress.") from None
        except BaseException as e:
            self.inflight.pop(key, None)  # a failed start may be retried for real
            future.set_exception(e)
            future.exception()  # the first caller reports it; waiters get it too
            raise
        future.set_result(job)
        asyncio.get_running_loop().call_later(600, self.inflight.pop, key, None)
        return job

    async def _stored_start(self, user_id: int, ws_id: int, key: str) -> dict[str, Any] | None:
        return await self.jobs.db.run(lambda session: start_keys.lookup(session, user_id, ws_id, key))

    async def _start(
        self, user: CurrentUser, ws_id: int, parse_body: Any, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        parts, config = self.parts, self.settings
        account, ws = await parts.workspaces.owned_for_put(user, ws_id, "start")
        if not parts.storage.valid_workspace_dir(ws.file_path):
            raise APIError(500, DIR_FAILURE_JOBS)
        body = parse_body()
        job_type_id = body.get("job_type") or ws.default_job_type
        if not job_type_id:
            raise APIError(400, "Missing job_type and no default job type set on workspace.")
        if not isinstance(job_type_id, str) or job_type_id not in config.job_types:
            raise APIError(400, f"{job_type_id} is not in the list of available job types.")
        job_details = body.get("job_details", {})
        if not isinstance(job_details, dict):
            raise APIError(400, "Job details not JSON.")
        options = body.get("resource_options", {})
        if not isinstance(options, dict):
            raise APIError(400, "Resource options not JSON.")
        valid, errors = validate_resource_options(config.parameters, options)
        if errors:
            raise APIError(422, f"Invalid resource options found: {errors!r}")
        job_type = config.job_types[job_type_id]
        settings = settings_for(job_type, config.main_resource_key)
        if settings is None or job_type.get("job_type") not in config.job_templates:
            raise APIError(400, IMPROPER)
        try:
            valid = with_defaults(config.parameters, valid, {"time_limit_min": job_type_minutes(settings)})
        except DefaultValueError as e:
            log.error("Refused to start a session: %s", e)
            raise APIError(400, PARAMETERS_IMPROPER) from None
        resource = config.resources.get(config.main_resource_key, {})
        translated = translate(valid, resource.get("parameter_mapping") or {})
        limit = minutes(valid.get("time_limit_min"))
        num_cpus = valid.get("num_cpus")
        cpus = num_cpus if isinstance(num_cpus, int) else 1
        await parts.quotas.check_core_hours(user.id, cpus * (limit or 0) / 60)
        # From the check until the job has a live record, the start counts as one of the user's
        # sessions: starts that arrive together must not all see the count from before them.
        self.check_limits(user)
        self.reserved[user.id] = self.reserved.get(user.id, 0) + 1
        request_details = dict(job_details)
        if "resource_options" in body and "resource_options" not in request_details:
            request_details["resource_options"] = options
        self.starts_in_progress += 1
        try:
            return await self._launch(
                StartRequest(
                    user=user,
                    account=account,
                    ws=ws,
                    job_type_id=job_type_id,
                    job_type=job_type,
                    settings=settings,
                    request_details=request_details,
                    translated=translated,
                    limit=limit,
                    cpus=cpus,
                    idempotency_key=idempotency_key,
                )
            )
        finally:
            self.starts_in_progress -= 1
            self._release(user.id)

    def check_limits(self, user: CurrentUser) -> None:
        jobs = self.jobs
        if jobs.max_concurrent_starts and self.starts_in_progress >= jobs.max_concurrent_starts:
            raise APIError(
                429, "Too many sessions are starting right now; try again shortly.", {"Retry-After": "2"}
            )
        if jobs.max_running_jobs_per_user:
            # A start in progress counts through its reservation, launched or not yet.
            running = self.reserved.get(user.id, 0) + sum(
                1 for r in self.jobs.live if r.owner == user.id and not r.launching
            )
            if running >= jobs.max_running_jobs_per_user:
                raise APIError(
                    429,
                    f"You already have {running} sessions running (maximum "
                    f"{jobs.max_running_jobs_per_user}). Stop one and try again.",
                    {"Retry-After": "30"},
                )

    def _release(self, user_id: int) -> None:
        left = self.reserved.get(user_id, 0) - 1
        if left > 0:
            self.reserved[user_id] = left
        else:
            self.reserved.pop(user_id, None)

    async def _launch(self, req: StartRequest) -> dict[str, Any]:
        """The launch's steps, each undone if a later one fails: the job created, its helper
        started, the start recorded."""
        secret = secrets.token_hex(32)
        label = new_host_label()
        job_id = await self._create_job(req, secret, label)
        try:
            return await self._launch_job(req, job_id, secret, label)
        except BaseException:
            if req.idempotency_key is not None:
                await self._forget_key(req, job_id)
            raise

    async def _forget_key(self, req: StartRequest, job_id: int) -> None:
        user_id, ws_id, key = req.user.id, req.ws.id, req.idempotency_key or ""
        try:
            await self.jobs.db.run(lambda session: start_keys.forget(session, user_id, ws_id, key, job_id))
        except Exception:  # (then a retry gets the failed job, as after a crash)
            log.exception("Forgetting the Idempotency-Key of failed job %s failed", job_id)

    async def _launch_job(self, req: StartRequest, job_id: int, secret: str, label: str) -> dict[str, Any]:
        parts, jobs = self.parts, self.jobs
        record = jobs.live.add(job_id, req.user.id, secret=secret, launching=True)
        spawner = parts.spawner_factory.make(job_id, req.account, req.ws.file_path)
        # On an origin of its own, a session's app serves from "/".
        by_origin = self.settings.passthrough_mode == "origin"
        base_url = "/" if by_origin else f"/passthrough/{job_id}/"
        pid, strip = await self._spawn(req, job_id, spawner, secret, label, base_url)
        if os.environ.get("UWS_TEST_DIE_AFTER_SPAWN") == "1":
            # Tests only: die in the window between starting a helper and recording it, which a
            # restart must recover from (the variable is never set outside the test suite).
            os._exit(70)
        record.spawner = spawner
        state = {
            **spawner.get_state(),
            "secret": secret,
            "cpus": req.cpus,
            "time_limit_minutes": req.limit,
            "time_limit_seconds": seconds_limit(req.settings, req.limit),
            "spawner": type(spawner).__name__,
            "proxy_strip_prefix": strip,
            "host_label": label,
            "base_url": base_url,
            "idle_timeout_seconds": req.settings.get("idle_timeout_seconds"),
        }
        model, status = await self._record_launch(job_id, pid, state, record, spawner)
        record.launching = False
        record.last_seen = time.monotonic()
        parts.workspaces.changed(req.user.id, req.ws.id)
        jobs.publish(req.user.id, model)
        if spawner.watches_start:
            self.start_watches.watch(job_id, record, spawner)
        if status != JobStatus.PENDING:
            # Stopped while it was being submitted: cancel it now that it exists.
            jobs.background(jobs._terminate(job_id))
        return model

    async def _create_job(self, req: StartRequest, secret: str, label: str) -> int:
        initial = {
            "secret": secret,
            "cpus": req.cpus,
            "time_limit_minutes": req.limit,
            "resource_options": req.translated,
            "host_label": label,
        }

        def _create(session: Any) -> int:
            job_id = transitions.new_job(
                session,
                workspace_id=req.ws.id,
                user_id=req.user.id,
                job_type=req.job_type_id,
                resource=self.settings.main_resource_key,
                request_details=req.request_details,
                state=initial,
            ).id
            if req.idempotency_key is not None:
                start_keys.record(session, req.user.id, req.ws.id, req.idempotency_key, job_id)
            return job_id

        try:
            return await self.jobs.db.run(_create)
        except IntegrityError:
            if req.idempotency_key is None:
                raise
            raise start_keys.KeyTaken() from None

    async def _spawn(
        self, req: StartRequest, job_id: int, spawner: Spawner, secret: str, label: str, base_url: str
    ) -> tuple[int, bool]:
        """Build the launch spec and start the helper; returns its pid and whether the proxy
        strips the /passthrough/<id>/ prefix. A failure fails the job."""
        parts = self.parts
        try:
            spec = build_spec(
                self.settings.job_templates,
                req.job_type,
                req.settings,
                job_id=job_id,
                workspace_dir=req.ws.file_path,
                job_dir=spawner.job_dir,
                base_url=base_url,
                time_limit_minutes=req.limit,
                origin=parts.session_urls.app_origin(job_id, label),
            )
            spec["heartbeat_seconds"] = self.jobs.heartbeat_seconds
            spec["grace_seconds"] = parts.spawner_factory.grace_seconds(spawner)
            spec["resource_options"] = req.translated
            spec["cpus"] = req.cpus
            spec["gpu"] = (req.request_details.get("resource_options") or {}).get("gpu_enabled") is True
            # Apps that cannot serve under /passthrough/<id>/ get the prefix stripped.
            strip = not any("{base_url}" in part for part in spec["command"])
            pid = await spawner.start(spec, f"{secret}\n{parts.session_tokens.token(job_id)}")
        except Exception as e:
            message = (
                str(e) if isinstance(e, JobTypeError | OSError | LaunchError) else "A server error occurred."
            )
            log.exception("Launching job %s failed", job_id)
            await self.jobs._finish(job_id, JobStatus.FAILED, f"Launch failed: {message}")
            raise APIError(500, f"Launch failed: {message}") from None
        return pid, strip

    async def _record_launch(
        self, job_id: int, pid: int, state: dict[str, Any], record: LiveSession, spawner: Spawner
    ) -> tuple[dict[str, Any], str]:
        """Mark the job submitted; returns its model and the status it has now."""
        jobs = self.jobs

        def _submitted(session: Any) -> tuple[dict[str, Any], str]:
            job = session.get(orm.Job, job_id)
            transitions.mark_submitted(session, job, pid, state)
            return job_model(job), job.status

        try:
            return await jobs.db.run(_submitted)
        except Exception:
            # Unrecorded, the helper would run on unsupervised: end the job, then the helper
            # (in that order, so that its exit report cannot turn the job into a completed one).
            record.launching = False
            log.exception("Recording the launch of job %s failed; stopping it", job_id)
            try:
                await jobs._finish(
                    job_id, JobStatus.FAILED, "Launch failed: the session could not be recorded."
                )
            except Exception:  # still unrecorded: the next start-up fails it
                log.exception("Marking job %s failed failed too", job_id)
                jobs._forget(job_id)
            await jobs._cancel_quietly(job_id, spawner)
            raise APIError(500, "Launch failed: the session could not be recorded.") from None
