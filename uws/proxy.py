"""Passthrough: who may reach a session through /passthrough/<job id>/, and where it is.

The target host and port always come from the job record, never from the request (S5): the host
is the session's node as the server knows it and the port one the server checked (see
JobService.ready_target). A request gets through when it carries the job owner's
UWS-Authorization header, the job's access cookie, or the job's token in ?token= (the link in
connection_details): the token is then exchanged for an HttpOnly cookie scoped to the job's
path, so later requests (assets, XHR, websockets) need nothing more. The token is derived by the
server (uws.keys.SessionTokens), never read from the job record.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from dataclasses import dataclass, field
from typing import Any

from . import orm
from .keys import read_key

COOKIE_SECONDS = 12 * 3600


@dataclass
class Target:
    job_id: int
    user_id: int
    host: str
    port: int
    token: str
    strip_prefix: bool
    job_type: str
    last_activity: float = field(default_factory=time.time)
    bytes_in: int = 0
    bytes_out: int = 0


def cookie_name(job_id: int) -> str:
    return f"uws-session-{job_id}"


class ProxyService:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.db = app.db
        self.targets: dict[int, Target] = {}
        self.secret = self._load_secret()

    def _load_secret(self) -> bytes:
        """Cookie signing key, kept in the data directory so cookies survive restarts."""
        return read_key(os.path.join(self.app.data_dir, "cookie_secret"))

    # ---- targets ---------------------------------------------------------------------------
    async def target(self, job_id: int) -> Target | None:
        target = self.targets.get(job_id)
        if target is not None:
            return target
        token = self.app.session_tokens.token(job_id)

        def _load(session: Any) -> Target | None:
            job = session.get(orm.Job, job_id)
            if job is None or job.status != "running":
                return None
            current = (job.job_details or {}).get("current_job_details") or {}
            proxy = current.get("proxy_details") or {}
            state = job.spawner_state or {}
            ready = state.get("ready") or {}
            if not proxy or not ready.get("port"):
                return None
            return Target(
                job.id,
                job.user_id,
                ready.get("host") or "127.0.0.1",
                int(ready["port"]),
                token,
                bool(state.get("proxy_strip_prefix")),
                job.job_type,
            )

        target = await self.db.run(_load)
        if target is not None:
            self.targets[job_id] = target
        return target

    def forget(self, job_id: int) -> None:
        self.targets.pop(job_id, None)

    # ---- cookies ---------------------------------------------------------------------------
    def _sign(self, text: str) -> str:
        return hmac.new(self.secret, text.encode(), hashlib.sha256).hexdigest()

    def make_cookie(self, job_id: int, user_id: int) -> str:
        payload = f"{job_id}.{user_id}.{int(time.time()) + COOKIE_SECONDS}"
        return f"{payload}.{self._sign(payload)}"

    def cookie_user(self, job_id: int, value: str | None) -> int | None:
        if not value:
            return None
        payload, _, signature = value.rpartition(".")
        if not hmac.compare_digest(self._sign(payload), signature):
            return None
        parts = payload.split(".")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            return None
        cookie_job, user_id, expires = (int(p) for p in parts)
        if cookie_job != job_id or expires < time.time():
            return None
        return user_id

    # ---- activity --------------------------------------------------------------------------
    def touch(self, target: Target, bytes_in: int = 0, bytes_out: int = 0) -> None:
        target.last_activity = time.time()
        target.bytes_in += bytes_in
        target.bytes_out += bytes_out
