"""GET /jobs/ and /jobs/<id>/: served from the database only (the portal polls every second)."""

from __future__ import annotations

from typing import Any

from .. import orm
from ..models import job_model
from ..sessions.service import owned_jobs_query
from .base import BaseHandler


class JobsHandler(BaseHandler):
    async def get(self, job_id: str | None = None) -> None:
        filters: dict[str, Any] = {}
        if job_id is None:
            for key in ("workspace_id", "resource_job_id"):
                value = self.query_int(key)
                if value is not None:
                    filters[key] = value
            for key in ("job_type", "status"):
                value = self.query_value(key)
                if value is not None:
                    filters[key] = value
        caller = self.user.id

        def _list(session: Any) -> list[dict[str, Any]]:
            stmt = owned_jobs_query(caller)
            if job_id is not None:
                stmt = stmt.where(orm.Job.id == int(job_id))
            for key, value in filters.items():
                stmt = stmt.where(getattr(orm.Job, key) == value)
            return [job_model(j) for j in session.scalars(stmt)]

        jobs = await self.uws.db.run(_list)
        message = "Successful." if jobs else "Job matching given parameters could not be found."
        self.ok(message, {"jobs": jobs})


class JobActionHandler(BaseHandler):
    """PUT /jobs/<id>/stop/."""

    async def put(self, job_id: str, put_type: str) -> None:
        message = await self.uws.jobs.stop(self.user, int(job_id), put_type)
        self.ok(message)
