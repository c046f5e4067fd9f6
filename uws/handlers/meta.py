"""Open endpoints: /job_types/, /parameters/, /status/, /status/leader and /openapi.yaml; and
the answer of a standby to everything else."""

from __future__ import annotations

import os

from ..errors import APIError, retry_later
from ..leadership import STANDBY_MESSAGE
from .base import BaseHandler


def standby_refusal() -> APIError:
    """A standby's answer: the load balancer (or the client) tries again, by then at the leader."""
    return retry_later(STANDBY_MESSAGE)


class JobTypesHandler(BaseHandler):
    auth_required = False

    def get(self) -> None:
        job_types = {
            key: {"id": key, "name": entry.get("name", key)} for key, entry in self.config.job_types.items()
        }
        self.ok("Successful.", {"job_types": job_types})


class ParametersHandler(BaseHandler):
    auth_required = False

    def get(self) -> None:
        self.ok("Successful.", {"parameters": self.config.parameters})


class StatusHandler(BaseHandler):
    auth_required = False

    async def get(self) -> None:
        self.send_json({**await self.status_report(), "role": self.leadership.role})


class LeaderHandler(BaseHandler):
    """200 on the leader, 503 on a standby: the load balancer's health check (README, "High
    availability")."""

    auth_required = False

    def get(self) -> None:
        if not self.leadership.leading:
            raise standby_refusal()
        self.ok("This server leads.", {"role": self.leadership.role})


class StandbyHandler(BaseHandler):
    """Every request a standby does not serve (uws.passthrough.handed_off routes them here):
    503 with Retry-After, whatever the method, route or credentials."""

    auth_required = False

    async def prepare(self) -> None:
        raise standby_refusal()


class OpenAPIHandler(BaseHandler):
    auth_required = False

    def get(self) -> None:
        path = os.path.join(self.config.share_dir, "openapi.yaml")
        with open(path, "rb") as f:
            data = f.read()
        self.set_header("Content-Type", "application/yaml")
        self.finish(data)


default_handlers = [
    (r"/job_types/?", JobTypesHandler),
    (r"/parameters/?", ParametersHandler),
    (r"/status/?", StatusHandler),
    (r"/status/leader/?", LeaderHandler),
    (r"/openapi.yaml", OpenAPIHandler),
]
