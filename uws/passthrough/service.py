"""The passthrough's state: which sessions it may reach and where, their access cookies, their
activity, and the pool of connections to them.

The target host and port always come from the job record, never from the request: the host is
the session's node as the server knows it and the port one the server checked (see
JobService.ready_target). The session token is derived by the server (uws.keys.SessionTokens),
never read from the job record.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from tornado import httputil
from traitlets import Float, Integer, observe
from traitlets.config import LoggingConfigurable

from .. import orm
from ..keys import read_key
from ..sessions.status import JobStatus
from .upstream import UpstreamPool

if TYPE_CHECKING:
    from ..db import Database
    from ..keys import SessionTokens

COOKIE_SECONDS = 12 * 3600
# A user's deactivation, or a logout on another server process, is seen by passthrough cookies
# within this long (as by login tokens).
USER_CACHE_SECONDS = 2.0
CLAIMS_KEPT = 10_000  # cookie values whose checked signature is remembered (then forgotten at once)


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
    # Cookies issued before this (microseconds since the epoch) no longer let anyone in: as
    # stamped on the job by versions before users.cookies_not_before (which now says it).
    cookies_not_before: int = 0
    last_activity: float = field(default_factory=time.time)
    bytes_in: int = 0
    bytes_out: int = 0


class PassthroughCounts:
    """What the passthrough has relayed since the server started, as plain integers: every
    entry point adds to them on its hot path, and /metrics reads them (uws.metrics)."""

    STATUS_CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")

    def __init__(self) -> None:
        # Requests by the class of the status answered (index status // 100; 0: none answered).
        self.requests = [0] * len(self.STATUS_CLASSES)
        self.bytes_in = 0  # browser to session
        self.bytes_out = 0  # session to browser
        self.upstream_failed = 0
        self.upstream_timeouts = 0

    def answered(self, status: int) -> None:
        index = status // 100
        self.requests[index if 0 < index < 6 else 0] += 1

    def upstream_error(self, timeout: bool) -> None:
        if timeout:
            self.upstream_timeouts += 1
        else:
            self.upstream_failed += 1


def cookie_name(job_id: int) -> str:
    return f"uws-session-{job_id}"


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
        0,
        help="""No longer used: session websockets are relayed as bytes, with back-pressure both
        ways, so the server never holds a whole message and there is nothing to cap. Setting it
        only logs a warning.""",
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
        self._timeouts_changed()
        self.secret = self._load_secret()
        # Cookie values whose signature checked out, and what they claim.
        self._claims: dict[str, tuple[int, int, int]] = {}
        # user id -> (when loaded, active, users.cookies_not_before)
        self._users: dict[int, tuple[float, bool, int]] = {}
        self.counts = PassthroughCounts()
        # Idle keep-alive connections to the sessions' apps, shared by every relay.
        self.pool = UpstreamPool()
        if self.websocket_max_message_size:
            self.log.warning(
                "ProxyService.websocket_max_message_size (proxy_websocket_max_message_size) has "
                "no effect: session websockets are relayed as bytes, never as whole messages."
            )

    @observe("connect_timeout", "request_timeout")
    def _timeouts_changed(self, change: Any = None) -> None:
        # Read by every relayed request: a plain attribute is several times cheaper than a trait.
        self.timeouts = (self.connect_timeout, self.request_timeout)

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
            if job is None or job.status != JobStatus.RUNNING:
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

    def forget_cache(self) -> None:
        """Every cached target and user: a target stays cached while its job runs, and another
        process may have ended the job meanwhile (its port may be another app's by now)."""
        self.targets.clear()
        self._users.clear()

    # ---- cookies ---------------------------------------------------------------------------
    def access_cookie(self, target: Target, secure: bool) -> str:
        """The Set-Cookie value that lets the browser in after a link's token: HttpOnly, and
        host-only (no Domain) on a session's own origin, so no other session's host gets it."""
        path = "/" if target.path_prefix is None else target.path_prefix + "/"
        expires = httputil.format_timestamp(time.time() + COOKIE_SECONDS)
        value = self.make_cookie(target.job_id, target.user_id)
        cookie = (
            f"{cookie_name(target.job_id)}={value}; expires={expires}; HttpOnly; Path={path}; SameSite=Lax"
        )
        return cookie + "; Secure" if secure else cookie

    def _sign(self, text: str) -> str:
        return hmac.new(self.secret, text.encode(), hashlib.sha256).hexdigest()

    def make_cookie(self, job_id: int, user_id: int) -> str:
        """job.user.issued (microseconds).signature: the issue time lets a logout end it."""
        payload = f"{job_id}.{user_id}.{time.time_ns() // 1000}"
        return f"{payload}.{self._sign(payload)}"

    async def cookie_user(self, target: Target, value: str | None) -> int | None:
        """The user a job's cookie lets in: signed with the shared cookie secret for this job,
        under 12 hours old, issued after the owner's last logout (on any process), and the owner
        still active."""
        if not value:
            return None
        claim = self._claims.get(value)
        if claim is None:
            # A browser sends the same cookie with every request: its signature is checked once
            # (the secret never changes while the server runs). What can change (the job, a
            # logout, the age, the owner's deactivation) is checked below on every request.
            checked = self._claim(value)
            if not checked:
                return None  # (not remembered: anyone can send any number of forgeries)
            if len(self._claims) >= CLAIMS_KEPT:
                self._claims.clear()
            self._claims[value] = claim = checked
        cookie_job, user_id, issued = claim
        if cookie_job != target.job_id or issued <= target.cookies_not_before:
            return None
        if issued / 1e6 + COOKIE_SECONDS < time.time():
            return None
        active, not_before = await self.user_state(user_id)
        if not active or issued <= not_before:
            return None
        return user_id

    def _claim(self, value: str) -> tuple[int, int, int] | tuple[()]:
        """(job, user, issued) of a cookie value signed by this server; () if it is not one."""
        if not value.isascii():
            return ()  # (what is not ASCII was never ours, and compare_digest refuses it)
        payload, _, signature = value.rpartition(".")
        if not hmac.compare_digest(self._sign(payload), signature):
            return ()
        parts = payload.split(".")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            return ()
        cookie_job, user_id, issued = (int(p) for p in parts)
        return cookie_job, user_id, issued

    async def user_state(self, user_id: int) -> tuple[bool, int]:
        """Whether the user is active, and since when their cookies count (users.
        cookies_not_before), as the database said at most USER_CACHE_SECONDS ago."""
        cached = self._users.get(user_id)
        now = time.monotonic()
        if cached is None or now - cached[0] > USER_CACHE_SECONDS:

            def _load(session: Any) -> tuple[bool, int]:
                row = session.execute(
                    select(orm.User.is_active, orm.User.cookies_not_before).where(orm.User.id == user_id)
                ).first()
                return (False, 0) if row is None else (bool(row[0]), int(row[1] or 0))

            active, not_before = await self.db.run(_load)
            cached = (now, active, not_before)
            if len(self._users) > 100_000:
                self._users.clear()
            self._users[user_id] = cached
        return cached[1], cached[2]

    async def end_cookies(self, user_id: int) -> None:
        """Refuse every passthrough cookie issued so far for the user's sessions (logout, token
        revocation): at once on this process, within USER_CACHE_SECONDS on any other sharing
        the database, and across restarts."""
        now = time.time_ns() // 1000

        def _stamp(session: Any) -> None:
            session.execute(
                update(orm.User)
                .where(orm.User.id == user_id, orm.User.cookies_not_before < now)
                .values(cookies_not_before=now)
            )

        await self.db.run(_stamp)
        self._users.pop(user_id, None)

    # ---- activity --------------------------------------------------------------------------
    def touch(self, target: Target, bytes_in: int = 0, bytes_out: int = 0) -> None:
        target.last_activity = time.time()
        target.bytes_in += bytes_in
        target.bytes_out += bytes_out
        counts = self.counts
        counts.bytes_in += bytes_in
        counts.bytes_out += bytes_out
