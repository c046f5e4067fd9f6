"""GET /quota/: the caller's disk and core-hour use and maximums (set with `uws quota set`)."""

from __future__ import annotations

from .base import BaseHandler


class QuotaHandler(BaseHandler):
    async def get(self) -> None:
        self.ok("Successful.", {"quota": await self.quotas.quota_model(self.user.id)})


default_handlers = [(r"/quota/?", QuotaHandler)]
