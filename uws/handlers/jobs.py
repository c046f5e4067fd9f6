"""GET /jobs/ and /jobs/<id>/: served from the database only (the portal polls every second)."""

from __future__ import annotations

from typing import Any

from ..models import job_view
from ..queries import owned_jobs
from .base import ID, BaseHandler


class JobsHandler(BaseHandler):
    async def get(self, job_id: str | None = None) -> None:
        filters: dict[str, Any] = {}
        if job_id is None:
            for key in ("workspace_id", "resource_job_id"):
                number = self.query_int(key)
                if number is not None:
                    filters[key] = number
            for key in ("job_type", "status"):
                text = self.query_value(key)
                if text is not None:
                    filters[key] = text
        caller = self.user.id
        one = int(job_id) if job_id is not None else None
        found = await self.db.run(lambda session: owned_jobs(session, caller, one, filters))
        jobs = [job_view(job, self.user.may("sessions")) for job in found]
        message = "Successful." if jobs else "Job matching given parameters could not be found."
        self.ok(message, {"jobs": jobs})


class JobActionHandler(BaseHandler):
    """PUT /jobs/<id>/stop/ and PUT /jobs/<id>/extend/."""

    required_scopes = {"PUT": "sessions"}

    async def put(self, job_id: str, put_type: str) -> None:
        if put_type.lower() == "extend":
            minutes = self.json_body()
            self.audit("session.extend", f"job:{job_id}", minutes=minutes.get("minutes"))
            model = await self.jobs.extend(self.user, int(job_id), minutes)
            self.ok("Job time limit extended.", {"job": model})
            return
        if put_type.lower() == "stop":
            self.audit("session.stop", f"job:{job_id}", reason="requested")
        message = await self.jobs.stop(self.user, int(job_id), put_type)
        self.ok(message)


# (With Upgrade: websocket, /jobs/ and /jobs/<id>/ are the job stream: see ws.py.)
default_handlers = [
    (r"/jobs/?", JobsHandler),
    (rf"/jobs/{ID}/?", JobsHandler),
    (rf"/jobs/{ID}/([^/]+)/?", JobActionHandler),
]
