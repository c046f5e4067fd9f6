"""GET /jobs/<id>/log/?offset=N: a session's output from byte N, for the job's owner (see
uws.sessions.logs for where it comes from and how much is kept)."""

from __future__ import annotations

from ..errors import APIError
from ..queries import owned_job_status
from .base import ID, BaseHandler


class JobLogHandler(BaseHandler):
    async def get(self, job_id: str) -> None:
        raw = self.query_value("offset")
        offset = self.query_int("offset") or 0
        if offset < 0:
            raise APIError(
                400, f"Invalid value for query parameter offset: {raw} (a byte offset, 0 or more)."
            )
        caller, one = self.user.id, int(job_id)
        found = await self.db.run(lambda session: owned_job_status(session, caller, one))
        if found is None:
            raise APIError(404, f"Job {one} not found for user.")
        self.ok("Successful.", self.jobs.logs.answer(one, offset, *found))


default_handlers = [
    (rf"/jobs/{ID}/log/?", JobLogHandler),
]
