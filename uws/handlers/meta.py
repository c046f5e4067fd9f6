"""Open endpoints: /job_types/, /parameters/, /status/ and /openapi.yaml."""

from __future__ import annotations

import os

from .base import BaseHandler


class JobTypesHandler(BaseHandler):
    auth_required = False

    def get(self) -> None:
        job_types = {
            key: {"id": key, "name": entry.get("name", key)} for key, entry in self.uws.job_types.items()
        }
        self.ok("Successful.", {"job_types": job_types})


class ParametersHandler(BaseHandler):
    auth_required = False

    def get(self) -> None:
        self.ok("Successful.", {"parameters": self.uws.parameters})


class StatusHandler(BaseHandler):
    auth_required = False

    async def get(self) -> None:
        self.send_json(await self.uws.health.report())


class OpenAPIHandler(BaseHandler):
    auth_required = False

    def get(self) -> None:
        path = os.path.join(self.uws.share_dir, "openapi.yaml")
        with open(path, "rb") as f:
            data = f.read()
        self.set_header("Content-Type", "application/yaml")
        self.finish(data)
