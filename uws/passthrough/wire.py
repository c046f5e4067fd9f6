"""What the passthrough changes in requests and answers on their way through, on every path
(the front door, connections handed to Tornado, the full handlers): which headers pass each way, which
cookies a session may set, the path the session sees, and the answer when it does not answer.
"""

from __future__ import annotations

from typing import Any

from ..errors import APIError
from ..webui import BROWSER_COOKIE, OAUTH_STATE_COOKIE
from .head import Head
from .service import Target

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
}
# Never forwarded: UWS's own credentials, and what the client says about where the request came
# from (the passthrough says that itself; apps that trust X-Forwarded-* must not be lied to).
STRIP_TO_UPSTREAM = frozenset(
    {
        "uws-authorization",
        "host",
        "cookie",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-real-ip",
        "x-scheme",
    }
)
# Cookies that are UWS's credentials, never the session's: the passthrough's access cookies
# (uws-session-<id>), and in path mode, where sessions share the server's origin, the web
# interface's browser session and sign-in state.
UWS_COOKIES = ("uws-session-", f"{BROWSER_COOKIE}=", f"{OAUTH_STATE_COOKIE}=")
# On the server's own origin (path mode), the browser's Authorization belongs to that origin
# (basic auth in front of the server, say), not to the session.
STRIP_TO_UPSTREAM_BY_PATH = STRIP_TO_UPSTREAM | {"authorization"}
# On the shared origin (path mode) these would let one session act on every other: a service
# worker scoped to "/" sees later navigations to other sessions; Clear-Site-Data wipes their
# cookies and storage.
ORIGIN_WIDE_ANSWERS = frozenset({"service-worker-allowed", "clear-site-data"})
# What the browser is told when the session will not or does not answer, on every path.
WEBSOCKET_REFUSED = "The session did not accept the websocket."
NO_ANSWER = "The session did not answer."
NO_ANSWER_IN_TIME = "The session did not answer in time."


def forward_headers(request_headers: Any, host: str, remote_ip: str, protocol: str, target: Target) -> Head:
    """The request's headers (HTTPHeaders or Head) as the session gets them: no hop-by-hop
    headers, no UWS credentials (header or cookie), no Authorization of the shared origin in
    path mode, and X-Forwarded-* saying where the request came from."""
    headers = Head()
    strip = STRIP_TO_UPSTREAM if target.path_prefix is None else STRIP_TO_UPSTREAM_BY_PATH
    connection = request_headers.get("Connection")
    connection_tokens = {t.strip().lower() for t in connection.split(",")} if connection else set()
    for name, value in request_headers.get_all():
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in strip or lname in connection_tokens:
            continue
        headers.add(name, value)
    cookie = request_headers.get("Cookie")
    if cookie:
        cookies = [
            c.strip() for c in cookie.split(";") if c.strip() and not c.strip().startswith(UWS_COOKIES)
        ]
        if cookies:
            headers.add("Cookie", "; ".join(cookies))
    if "Content-Length" in request_headers:
        headers.add("Content-Length", request_headers["Content-Length"])
    # (The client's own Host and X-Forwarded-* were all stripped above: nothing to replace.)
    headers.add("Host", host)
    headers.add("X-Forwarded-For", remote_ip)
    headers.add("X-Forwarded-Proto", protocol)
    headers.add("X-Forwarded-Host", host)
    return headers


def response_headers(upstream: Any, keep_length: bool, target: Target, request_path: str) -> Head:
    """The session's response headers (HTTPHeaders or Head) as the browser gets them: no
    hop-by-hop headers (but Content-Length when `keep_length`), no Date (the server adds its
    own), no cookie that would reach beyond the session, and in path mode nothing that acts
    on the whole shared origin."""
    headers = Head()
    prefix = target.path_prefix
    connection = upstream.get("Connection")
    connection_tokens = {t.strip().lower() for t in connection.split(",")} if connection else set()
    for name, value in upstream.get_all():
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in connection_tokens or lname == "date":
            continue
        if lname == "set-cookie" and not cookie_stays_in_session(value, prefix, request_path):
            continue
        if prefix is not None and lname in ORIGIN_WIDE_ANSWERS:
            continue
        headers.add(name, value)
    if keep_length and "Content-Length" in upstream:
        headers.add("Content-Length", upstream["Content-Length"])
    return headers


def cookie_stays_in_session(set_cookie: str, prefix: str | None, request_path: str) -> bool:
    """Whether a session's Set-Cookie reaches only that session: never with a Domain attribute
    (sibling session hosts would get it), and in path mode (`prefix` /passthrough/<id>) only
    with a path inside the session's, as the browser works it out (RFC 6265 5.2.4, 5.1.4)."""
    path = ""
    for attribute in set_cookie.split(";")[1:]:
        name, _, value = attribute.partition("=")
        name = name.strip().lower()
        if name == "domain":
            return False
        if name == "path":
            path = value.strip()  # the last one counts
    if prefix is None:
        return True
    if not path.startswith("/"):
        uri_path = request_path.split("?", 1)[0]
        path = uri_path[: uri_path.rfind("/")] if uri_path.startswith("/") else ""
        path = path or "/"
    return path == prefix or path.startswith(prefix + "/")


def upstream_failure(timeout: bool) -> APIError:
    """The answer when the session cannot be reached (502) or is too slow (504), on every path."""
    return APIError(504, NO_ANSWER_IN_TIME) if timeout else APIError(502, NO_ANSWER)


def upstream_uri(target: Target, uri: str) -> str:
    """The request's path and query as the session gets them (without the prefix, for apps
    that cannot serve under /passthrough/<id>/)."""
    path = uri or "/"
    if target.strip_prefix and target.path_prefix is not None:
        path = path[len(target.path_prefix) :] or "/"
        if not path.startswith("/"):
            path = "/" + path
    return path
