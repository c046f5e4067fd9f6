"""Passthrough: who may reach a session, where it is, and which browser origin it lives on.

The target host and port always come from the job record, never from the request (S5): the host
is the session's node as the server knows it and the port one the server checked (see
JobService.ready_target). A request gets through when it carries the job owner's
UWS-Authorization header, the job's access cookie, or the job's token in ?token= (the link in
connection_details): the token is then exchanged for an HttpOnly cookie, so later requests
(assets, XHR, websockets) need nothing more. The token is derived by the server
(uws.keys.SessionTokens), never read from the job record.

Two ways to reach a session (UWSApp.passthrough_mode; SessionURLs makes the links):
- "origin" (the default): each session has a host name of its own, j<id>-<label>.<session_host>,
  so the browser's same-origin policy keeps one session's pages out of every other session.
  The label is random per job, so a session's origin cannot be guessed from its id.
- "path": /passthrough/<id>/ on the server's own origin. Every session shares one origin there,
  so any session's page can script any other the same browser has open: for single-user or
  trusted installations only.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from traitlets import Float, Integer
from traitlets.config import LoggingConfigurable

from . import orm
from .keys import read_key

if TYPE_CHECKING:
    from .db import Database
    from .keys import SessionTokens

COOKIE_SECONDS = 12 * 3600
# A user's deactivation is seen by passthrough cookies within this long (as by login tokens).
USER_CACHE_SECONDS = 2.0
# j<id>-<label>: ids as the API's routes take them (no job has an id past 64 bits), labels as
# new_host_label makes them.
_SESSION_LABEL = re.compile(r"j([0-9]{1,18})-([a-z0-9]{1,40})")


def new_host_label() -> str:
    """The random part of a new job's host name (64 bits, lower-case hex: valid in DNS)."""
    return secrets.token_hex(8)


@dataclass
class Target:
    job_id: int
    user_id: int
    host: str
    port: int
    token: str
    strip_prefix: bool
    job_type: str
    label: str = ""
    # /passthrough/<id> when sessions share the server's origin (path mode); None on their own.
    path_prefix: str | None = None
    # Cookies issued before this (microseconds since the epoch) no longer let anyone in: the
    # owner logged out or revoked tokens since.
    cookies_not_before: int = 0
    last_activity: float = field(default_factory=time.time)
    bytes_in: int = 0
    bytes_out: int = 0


def cookie_name(job_id: int) -> str:
    return f"uws-session-{job_id}"


class SessionHosts:
    """Host names of sessions: j<id>-<label>.<domain>, any port."""

    def __init__(self, domain: str) -> None:
        self.suffix = "." + domain.lower().strip(".")

    def is_session_host(self, host: str) -> bool:
        """Whether a Host header names something under the session domain (a session, or a
        name that only looks like one): such requests never reach the API."""
        return host_name(host).endswith(self.suffix)

    def job(self, host: str) -> tuple[int, str] | None:
        """(job id, label) of a session's Host header, or None."""
        name = host_name(host)
        if not name.endswith(self.suffix):
            return None
        match = _SESSION_LABEL.fullmatch(name[: -len(self.suffix)])
        return (int(match.group(1)), match.group(2)) if match else None

    def name(self, job_id: int, label: str) -> str:
        return f"j{job_id}-{label}{self.suffix}"


class SessionURLs:
    """Where browsers find sessions: the links connection_details carries, and the origin each
    session's app is told it serves from."""

    def __init__(self, mode: str, public_origin: str, passthrough_url: str, session_host: str) -> None:
        self.mode = mode  # UWSApp.passthrough_mode: "origin" or "path"
        self.public_origin = public_origin
        self.passthrough_url = passthrough_url
        self.hosts = SessionHosts(session_host)

    def base(self) -> str:
        """scheme://host[:port] that session links start from, before origin mode swaps the host."""
        return (self.passthrough_url or self.public_origin).rstrip("/")

    def origin(self, job_id: int, label: str) -> str:
        """A session's own origin: the scheme and port of passthrough_url (or public_url, or the
        server's own), the host name j<id>-<label>.<session_host>."""
        scheme, _, rest = self.base().partition("://")
        authority = rest.split("/", 1)[0]
        port = ""
        if not authority.endswith("]") and ":" in authority:
            port = ":" + authority.rsplit(":", 1)[1]
        return f"{scheme}://{self.hosts.name(job_id, label)}{port}"

    def app_origin(self, job_id: int, label: str) -> str:
        """The origin a session's app serves pages from (its own, or the server's in path mode)."""
        return self.origin(job_id, label) if self.mode == "origin" else self.public_origin

    def connection_url(self, job_id: int, ready: dict[str, Any], label: str) -> tuple[str, str]:
        """url_domain and url_path of a ready session, through this server's passthrough.

        url_domain is an origin (no path, no trailing slash); url_path starts with '/' and has
        at most one '?', so clients can insert /tree/<path> before the query. Stored without
        the token: models.job_model adds it when the job is shown to its owner."""
        from .models import link_with_token

        path = ready.get("path") or "/"
        if not path.startswith("/"):
            path = "/" + path
        if self.mode == "origin":
            return self.origin(job_id, label), link_with_token(path, "")
        prefix = f"/passthrough/{job_id}"
        if not path.startswith(prefix + "/"):
            path = prefix + path
        return self.base(), link_with_token(path, "")


def host_name(host: str) -> str:
    """A Host header without its port, lower case (host names are case-blind)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class ProxyService(LoggingConfigurable):
    """Who may reach a session and where it is; its options are the passthrough's."""

    connect_timeout = Float(
        5.0, help="Seconds the passthrough waits to connect to a session (then 502)."
    ).tag(config=True)
    request_timeout = Float(
        3600.0,
        help="Seconds one proxied HTTP request may take in all, for long downloads (then 504).",
    ).tag(config=True)
    websocket_max_message_size = Integer(
        64 << 20,
        help="""Largest websocket message (bytes) the passthrough relays when it relays whole
        messages (websockets opened with a link's ?token=); a larger one ends the websocket.""",
    ).tag(config=True)

    def __init__(
        self, db: Database, data_dir: str, passthrough_mode: str, session_tokens: SessionTokens, **kw: Any
    ) -> None:
        super().__init__(**kw)
        self.db = db
        self.data_dir = data_dir
        self.passthrough_mode = passthrough_mode
        self.session_tokens = session_tokens
        self.targets: dict[int, Target] = {}
        self.secret = self._load_secret()
        self._active: dict[int, tuple[float, bool]] = {}

    def _load_secret(self) -> bytes:
        """Cookie signing key, kept in the data directory so cookies survive restarts."""
        return read_key(os.path.join(self.data_dir, "cookie_secret"))

    # ---- targets ---------------------------------------------------------------------------
    async def target(self, job_id: int) -> Target | None:
        target = self.targets.get(job_id)
        if target is not None:
            return target
        # Prefixes are only ever stripped from /passthrough/<id>/ paths: a session on an origin of
        # its own gets every path as the browser sent it.
        path_mode = self.passthrough_mode == "path"
        token = self.session_tokens.token(job_id)

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
                path_mode and bool(state.get("proxy_strip_prefix")),
                job.job_type,
                str(state.get("host_label") or ""),
                f"/passthrough/{job.id}" if path_mode else None,
                int(state.get("cookies_not_before") or 0),
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
        """job.user.issued (microseconds).signature: the issue time lets a logout end it."""
        payload = f"{job_id}.{user_id}.{time.time_ns() // 1000}"
        return f"{payload}.{self._sign(payload)}"

    async def cookie_user(self, target: Target, value: str | None) -> int | None:
        """The user a job's cookie lets in: signed by us for this job, under 12 hours old, issued
        after the owner's last logout, and the owner still active."""
        if not value or not value.isascii():
            return None  # (what is not ASCII was never ours, and compare_digest refuses it)
        payload, _, signature = value.rpartition(".")
        if not hmac.compare_digest(self._sign(payload), signature):
            return None
        parts = payload.split(".")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            return None
        cookie_job, user_id, issued = (int(p) for p in parts)
        if cookie_job != target.job_id or issued <= target.cookies_not_before:
            return None
        if issued / 1e6 + COOKIE_SECONDS < time.time():
            return None
        if not await self.user_active(user_id):
            return None
        return user_id

    async def user_active(self, user_id: int) -> bool:
        cached = self._active.get(user_id)
        now = time.monotonic()
        if cached is None or now - cached[0] > USER_CACHE_SECONDS:

            def _load(session: Any) -> bool:
                return bool(session.scalar(select(orm.User.is_active).where(orm.User.id == user_id)))

            cached = (now, await self.db.run(_load))
            if len(self._active) > 100_000:
                self._active.clear()
            self._active[user_id] = cached
        return cached[1]

    async def end_cookies(self, user_id: int) -> None:
        """Refuse every passthrough cookie issued so far for the user's sessions (logout, token
        revocation). Kept with each job, so it holds across restarts."""
        now = time.time_ns() // 1000

        def _stamp(session: Any) -> list[int]:
            jobs = session.scalars(
                select(orm.Job).where(orm.Job.user_id == user_id, orm.Job.status.in_(("pending", "running")))
            ).all()
            for job in jobs:
                job.spawner_state = {**(job.spawner_state or {}), "cookies_not_before": now}
            return [job.id for job in jobs]

        for job_id in await self.db.run(_stamp):
            target = self.targets.get(job_id)
            if target is not None:
                target.cookies_not_before = now

    # ---- activity --------------------------------------------------------------------------
    def touch(self, target: Target, bytes_in: int = 0, bytes_out: int = 0) -> None:
        target.last_activity = time.time()
        target.bytes_in += bytes_in
        target.bytes_out += bytes_out
