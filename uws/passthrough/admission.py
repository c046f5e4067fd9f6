"""Who is let into a session, and to which one: the passthrough's one admission decision.

Every entry point asks `admit` (the front door, connections already handed to Tornado, the full
handlers for bodies, token exchanges and websockets), so they cannot disagree. A request gets
through when it carries the job owner's UWS-Authorization header (of a token with the
`sessions` scope), the job's access cookie, or the job's token in ?token= (the link in
connection_details). The token is then exchanged for an HttpOnly cookie, so later requests
(assets, XHR, websockets) need nothing more.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tornado import httputil

from ..errors import APIError
from .service import Target, cookie_name
from .urls import host_name

if TYPE_CHECKING:
    from ..auth.tokens import CurrentUser
    from ..handlers.components import Components

PREFIX = "/passthrough/"
Route = tuple[int, str | None]  # job id and, on a session's own host, the host name's label
NO_ACCESS = "You do not have access to this session."


def session_route(parts: Components, path: str, host: str) -> Route | None:
    """The job a request is for, and the label its host name carries: from the Host header in
    origin mode (label checked against the job's), from /passthrough/<id>/ in path mode (None)."""
    if parts.config.passthrough_mode == "origin":
        return parts.session_hosts.job(host)
    if not path.startswith(PREFIX):
        return None
    job_part = path[len(PREFIX) :].split("/", 1)[0].split("?", 1)[0]
    if not (job_part.isascii() and job_part.isdigit()) or len(job_part) > 18:
        return None  # (no job has an id past 64 bits; the full handlers answer such a path)
    return int(job_part), None


def fast_route(parts: Components, method: str, path: str, headers: Any) -> tuple[Route, bool] | None:
    """The session of a request the fast paths may relay, and whether it opens a websocket: a
    bodyless GET or HEAD, or a websocket upgrade, without a token to exchange and with one Host
    (as Tornado's full path insists). Anything else goes to the full handlers, and so does every
    request to a standby (uws.leadership): its 503 is theirs to give."""
    if (
        not parts.leadership.leading
        or "Content-Length" in headers
        or "Transfer-Encoding" in headers
        or "token=" in path
        or "," in headers.get("Host", ",")
    ):
        return None
    upgrade = headers.get("Upgrade")
    if upgrade is None:
        if method != "GET" and method != "HEAD":
            return None
        websocket = False
    elif method == "GET" and upgrade.lower() == "websocket":
        if "upgrade" not in headers.get("Connection", "").lower():
            return None
        websocket = True
    else:
        return None
    route = session_route(parts, path, headers.get("Host", ""))
    return None if route is None else (route, websocket)


def cookie_counts(method: str, headers: Any) -> bool:
    """Whether the session cookie may vouch for a request. Browsers attach it to requests other
    pages make too (sibling session hosts are the same site for SameSite), and some of those
    act without the page reading the answer: websockets and form posts. Those count only from
    the session's own origin (or from no browser page at all: no Origin header). Host names
    are compared without ports: a TLS proxy in front may drop the port from Host, and sessions
    differ by host name."""
    origin = headers.get("Origin")
    if origin is None or (method in ("GET", "HEAD") and "Upgrade" not in headers):
        return True
    origin_host = host_name(origin.partition("://")[2])
    return bool(origin_host) and origin_host == host_name(headers.get("Host", ""))


def label_matches(target: Target, label: str | None) -> bool:
    return label is None or (bool(target.label) and hmac.compare_digest(target.label, label))


@dataclass(slots=True)
class Admission:
    """The answer to one request: its session, or the refusal it gets."""

    target: Target | None = None
    refusal: APIError | None = None
    # Whom a refused request's UWS-Authorization header named, if it named anyone (the audit
    # line's actor: a user knocking at another's session).
    user: CurrentUser | None = None
    # Let in by the link's ?token=: the answer carries the access cookie.
    set_cookie: bool = False


def _session_cookie(job_id: int, method: str, headers: Any) -> str | None:
    cookies = headers.get("Cookie")
    if not cookies or not cookie_counts(method, headers):
        return None
    return cookie_value(cookies, cookie_name(job_id))


def cookie_value(cookies: str, name: str) -> str | None:
    """What httputil.parse_cookie(cookies).get(name) is, without parsing every other cookie a
    browser sends with each request (the last one of that name counts, as there)."""
    if name not in cookies:
        return None
    value = None
    for chunk in cookies.split(";"):
        key, equals, rest = chunk.partition("=")
        if equals and key.strip() == name:
            value = rest.strip()
    if value is not None and len(value) >= 2 and value[0] == value[-1] == '"':
        try:  # a quoted value: Tornado's own unquoting
            return httputil.parse_cookie(cookies).get(name)
        except Exception:  # as Tornado's own cookie parsing: a garbled header is no cookie
            return None
    return value


async def _header_user(parts: Components, header: str | None) -> CurrentUser | None:
    """Whose UWS-Authorization header this is (None: none, or not a valid token). Only a token
    with the `sessions` scope may reach into a session (see may_enter)."""
    if not header:
        return None
    try:
        return await parts.auth.authenticate(header)
    except APIError:
        return None


def may_enter(user: CurrentUser | None) -> int | None:
    """The user id a header lets into its owner's sessions: a read-only API token opens none."""
    return user.id if user is not None and user.may("sessions") else None


async def admit(
    parts: Components, route: Route | None, method: str, headers: Any, token: str | None = None
) -> Admission:
    """Whether a request reaches its session. `headers` is the request's (Head or Tornado's
    HTTPHeaders); `token` the link's ?token=, if the request has one."""
    if route is None:
        return Admission(refusal=APIError(404, "No session has this address."))
    job_id, label = route
    # Cached; the first request after a restart loads it.
    target = parts.proxy.targets.get(job_id) or await parts.proxy.target(job_id)
    if target is None:
        # No cookie opens a session that is not running; its owner is told it is not ready.
        user = await _header_user(parts, headers.get("UWS-Authorization"))
        if may_enter(user) is not None and await parts.jobs.owner_of(job_id) == may_enter(user):
            return Admission(refusal=APIError(503, "The session is not running or not ready yet."))
        return Admission(refusal=APIError(403, NO_ACCESS), user=user)
    if not label_matches(target, label):
        return Admission(refusal=APIError(403, NO_ACCESS))
    cookie = _session_cookie(job_id, method, headers)
    user_id = await parts.proxy.cookie_user(target, cookie) if cookie else None
    user = None
    if user_id is None:
        user = await _header_user(parts, headers.get("UWS-Authorization"))
        user_id = may_enter(user)
    if user_id == target.user_id:
        return Admission(target)
    if token and target.token and hmac.compare_digest(token.encode(), target.token.encode()):
        return Admission(target, set_cookie=True)
    return Admission(refusal=APIError(403, NO_ACCESS), user=user)
