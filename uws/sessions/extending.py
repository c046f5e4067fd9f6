"""Extending a running session's time limit in place (PUT /jobs/<id>/extend/). Part of
JobService (uws.sessions.service), kept apart for its size.

The new limit is checked against the job type's maximum and the owner's core-hour quota, then
given to whoever enforces it: the scheduler for Slurm sessions (the spawner), the session's own
helper for local and sudo sessions. Only once that has succeeded is it recorded and announced.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import orm
from ..auth.tokens import CurrentUser
from ..errors import APIError
from ..models import job_model
from ..spawners.base import LaunchError
from .jobtypes import seconds_limit, settings_for
from .servicebase import JobServiceBase
from .status import JobStatus

log = logging.getLogger("uws.jobs")

NOT_RUNNING = "Job is not running."


def requested_minutes(body: dict[str, Any]) -> int:
    """The body's `minutes`: a positive whole number (JSON true is not one)."""
    minutes = body.get("minutes")
    if isinstance(minutes, bool) or not isinstance(minutes, int) or minutes <= 0:
        raise APIError(400, "minutes must be a positive whole number of minutes to add.")
    if minutes > 10**6:
        raise APIError(422, "minutes is too large.")
    return minutes


def max_time_limit_minutes(job_type: dict[str, Any], parameters: list[Any]) -> int | None:
    """A job type's longest time limit: its `max_time_limit_min`, else the `time_limit_min`
    parameter's maximum; None when neither is set."""
    own = job_type.get("max_time_limit_min")
    if isinstance(own, str) and own.strip().isdigit():  # config.json writes numbers as text
        own = int(own)
    if isinstance(own, int) and not isinstance(own, bool) and own > 0:
        return own
    for param in parameters:
        if isinstance(param, dict) and param.get("variable_name") == "time_limit_min":
            bound = (param.get("validation") or {}).get("max")
            if isinstance(bound, int | float) and not isinstance(bound, bool) and bound > 0:
                return int(bound)
    return None


class Extending(JobServiceBase):
    """A part of JobService: it uses the service's database, channel, live records, settings
    and quotas, and publishes the job's new state as a job event."""

    async def extend(self, user: CurrentUser, job_id: int, body: dict[str, Any]) -> dict[str, Any]:
        minutes = requested_minutes(body)

        def _load(session: Any) -> orm.Job | None:
            job = session.get(orm.Job, job_id)
            if job is None:
                return None
            ws = session.get(orm.Workspace, job.workspace_id)
            return job if ws is not None and ws.user_id == user.id else None

        job = await self.db.run(_load)
        if job is None:
            raise APIError(404, f"Job {job_id} not found for user.")
        if job.status != JobStatus.RUNNING:
            raise APIError(409, NOT_RUNNING)
        state = dict(job.spawner_state or {})
        settings = self.settings
        job_type = settings.job_types.get(job.job_type) or {}
        limit_seconds = current_limit_seconds(state, job_type, settings.main_resource_key)
        if limit_seconds is None:
            raise APIError(409, "This session has no time limit to extend.")
        new_minutes = -(-limit_seconds // 60) + minutes
        maximum = max_time_limit_minutes(job_type, settings.parameters)
        if maximum is not None and new_minutes > maximum:
            raise APIError(
                422,
                f"The time limit would become {new_minutes} minutes; the maximum for this job type "
                f"is {maximum} minutes.",
            )
        cpus = state["cpus"] if isinstance(state.get("cpus"), int) else 1
        # As at the start: the session's whole reservation must fit in what is left.
        await self.parts.quotas.check_core_hours(user.id, cpus * new_minutes / 60, status=403)
        new_seconds = limit_seconds + minutes * 60
        async with self.lock(job_id):
            await self._apply_limit(job_id, new_seconds)
            model = await self.db.run(lambda s: record_limit(s, job_id, new_seconds, self._time_left))
        if model is None:
            raise APIError(409, NOT_RUNNING)
        log.info("Job %s extended by %d minutes by its owner", job_id, minutes)
        self.publish(user.id, model)
        return model

    async def _apply_limit(self, job_id: int, new_seconds: int) -> None:
        """Move the limit where it is enforced; nothing is recorded when this fails."""
        spawner = await self._spawner(job_id)
        if spawner is None:
            raise APIError(409, NOT_RUNNING)
        try:
            handled = await spawner.set_time_limit(new_seconds)
        except LaunchError as e:
            raise APIError(503, f"The resource did not extend the session: {e}") from None
        if handled:
            return
        record = self.live.get(job_id)
        if record is not None:
            record.time_limit_seconds = new_seconds
        await self.send_time_limit(job_id, new_seconds)

    async def send_time_limit(self, job_id: int, seconds: int) -> None:
        """Tell the session's helper its new limit. Repeated from heartbeats that still report
        the old one (tracker.py), so a lost message only delays it."""
        secret = await self.secret_for(job_id)
        if secret:
            await self.channel.send(job_id, secret, {"type": "extend", "time_limit_seconds": seconds})


def current_limit_seconds(state: dict[str, Any], job_type: dict[str, Any], resource: str) -> int | None:
    """The session's time limit now: the last extension's, else what it was started with."""
    seconds = state.get("time_limit_seconds")
    if isinstance(seconds, int) and seconds > 0:
        return seconds
    settings = settings_for(job_type, resource) or {}
    minutes = state.get("time_limit_minutes")
    return seconds_limit(settings, minutes if isinstance(minutes, int) else None)


def record_limit(session: Any, job_id: int, seconds: int, time_left: Any) -> dict[str, Any] | None:
    """Write the new limit and time left; the job's model, or None if it is no longer running."""
    job = session.get(orm.Job, job_id)
    if job is None or job.status != JobStatus.RUNNING:
        return None
    job.spawner_state = {
        **(job.spawner_state or {}),
        "time_limit_seconds": seconds,
        "time_limit_minutes": -(-seconds // 60),
    }
    current = dict((job.job_details or {}).get("current_job_details") or {})
    left = time_left(job)
    if left is not None:
        current["time_left"] = left
        warned = job.spawner_state.get("ending_warned")
        if isinstance(warned, list):  # the warnings before the new end are due again
            job.spawner_state = {**job.spawner_state, "ending_warned": [t for t in warned if t >= left]}
    job.job_details = {**(job.job_details or {}), "current_job_details": current}
    return job_model(job)
