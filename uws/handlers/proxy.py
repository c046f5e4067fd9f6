"""The authenticated proxy from the browser to a running session: every path on a session's
own host name (passthrough_mode "origin"), or /passthrough/<job id>/... on the server's (path).

HTTP bodies stream both ways with back-pressure (a multi-GB download or upload never sits in
memory); websockets relay text and binary frames, pings and close codes. Requests that are not
the owner's get 403 before anything reaches the session.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from typing import Any

from tornado import httpclient, httputil, web, websocket
from tornado.iostream import StreamClosedError

from ..errors import APIError, not_authenticated
from ..http_head import Head
from ..proxy import Target, cookie_name, host_name
from ..upstream import UpstreamError, UpstreamPool
from .base import BaseHandler
from .ws import open_counted, release_counted

log = logging.getLogger("uws.proxy")

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
# On the server's own origin (path mode), the browser's Authorization belongs to that origin
# (basic auth in front of the server, say), not to the session.
STRIP_TO_UPSTREAM_BY_PATH = STRIP_TO_UPSTREAM | {"authorization"}
# On the shared origin (path mode) these would let one session act on every other: a service
# worker scoped to "/" sees later navigations to other sessions; Clear-Site-Data wipes their
# cookies and storage.
ORIGIN_WIDE_ANSWERS = frozenset({"service-worker-allowed", "clear-site-data"})
QUEUE_CHUNKS = 8
WEBSOCKET_REFUSED = "The session did not accept the websocket."
PREFIX = "/passthrough/"

_pool: UpstreamPool | None = None


def upstream_pool() -> UpstreamPool:
    global _pool
    if _pool is None:
        _pool = UpstreamPool()
    return _pool


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
            c.strip() for c in cookie.split(";") if c.strip() and not c.strip().startswith("uws-session-")
        ]
        if cookies:
            headers.add("Cookie", "; ".join(cookies))
    if "Content-Length" in request_headers:
        headers.add("Content-Length", request_headers["Content-Length"])
    headers.add("Host", host)
    headers["X-Forwarded-For"] = remote_ip
    headers["X-Forwarded-Proto"] = protocol
    headers["X-Forwarded-Host"] = host
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


def upstream_uri(target: Target, uri: str) -> str:
    """The request's path and query as the session gets them (without the prefix, for apps
    that cannot serve under /passthrough/<id>/)."""
    path = uri or "/"
    if target.strip_prefix and target.path_prefix is not None:
        path = path[len(target.path_prefix) :] or "/"
        if not path.startswith("/"):
            path = "/" + path
    return path


async def credential_user(uws: Any, target: Target, cookie: str | None, header: str | None) -> int | None:
    """The user a request's job cookie names or, failing that, its UWS-Authorization header."""
    user_id = await uws.proxy.cookie_user(target, cookie)
    if user_id is not None or not header:
        return user_id
    try:
        return (await uws.auth_service.authenticate(header)).id
    except APIError:
        return None


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


def session_route(uws: Any, path: str, host: str) -> tuple[int, str | None] | None:
    """The job a request is for, and the label its host name carries: from the Host header in
    origin mode (label checked against the job's), from /passthrough/<id>/ in path mode (None)."""
    if uws.passthrough_mode == "origin":
        return uws.session_urls.hosts.job(host)
    if not path.startswith(PREFIX):
        return None
    job_part = path[len(PREFIX) :].split("/", 1)[0].split("?", 1)[0]
    if not (job_part.isascii() and job_part.isdigit()) or len(job_part) > 18:
        return None  # (no job has an id past 64 bits; the full handlers answer such a path)
    return int(job_part), None


def label_matches(target: Target, label: str | None) -> bool:
    return label is None or (bool(target.label) and hmac.compare_digest(target.label, label))


class PassthroughMixin:
    """Authentication and target resolution shared by the HTTP and websocket handlers."""

    request: httputil.HTTPServerRequest

    @property
    def uws(self) -> Any:
        return self.application.settings["uws"]  # type: ignore[attr-defined]

    async def resolve(self) -> Target:
        """The session this request may reach, or APIError 403/404/503."""
        uws = self.uws
        path_args = self.path_args  # type: ignore[attr-defined]
        if path_args:
            route: tuple[int, str | None] | None = (int(path_args[0]), None)
        else:
            route = uws.session_urls.hosts.job(self.request.host or "")
        if route is None:
            raise APIError(404, "No session has this address.")
        jid, label = route
        target = await uws.proxy.target(jid)
        if target is not None and not label_matches(target, label):
            raise APIError(403, "You do not have access to this session.")
        user_id = await self.credential_user(jid, target)
        if target is None:
            owner = await uws.jobs.owner_of(jid)
            if user_id is not None and owner == user_id:
                raise APIError(503, "The session is not running or not ready yet.")
            raise APIError(403, "You do not have access to this session.")
        if user_id != target.user_id:
            token = self.get_query_argument("token", None)  # type: ignore[attr-defined]
            if not token or not target.token or not _same(token, target.token):
                raise APIError(403, "You do not have access to this session.")
            self.set_access_cookie(target)
        return target

    async def credential_user(self, job_id: int, target: Target | None) -> int | None:
        header = self.request.headers.get("UWS-Authorization")
        if target is None:  # (no cookie opens a session that is not running)
            try:
                return (await self.uws.auth_service.authenticate(header)).id if header else None
            except APIError:
                return None
        cookie = None
        if cookie_counts(self.request.method or "", self.request.headers):
            cookie = self.get_cookie(cookie_name(job_id))  # type: ignore[attr-defined]
        return await credential_user(self.uws, target, cookie, header)

    def set_access_cookie(self, target: Target) -> None:
        """HttpOnly, and host-only (no Domain) on a session's own origin: no other session's
        host gets it."""
        self.set_cookie(  # type: ignore[attr-defined]
            cookie_name(target.job_id),
            self.uws.proxy.make_cookie(target.job_id, target.user_id),
            path="/" if target.path_prefix is None else target.path_prefix + "/",
            httponly=True,
            secure=self.uws.session_urls.base().startswith("https://"),
            samesite="Lax",
            expires_days=0.5,
        )

    def upstream_url(self, target: Target, scheme: str) -> str:
        return f"{scheme}://{target.host}:{target.port}{upstream_uri(target, self.request.uri or '/')}"

    def upstream_headers(self, target: Target) -> Head:
        request = self.request
        return forward_headers(
            request.headers, request.host, request.remote_ip or "", request.protocol, target
        )


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class SessionElsewhereHandler(BaseHandler):
    """/passthrough/... in origin mode: sessions are not on the API's origin."""

    auth_required = False

    async def prepare(self) -> None:
        if self.request.method == "OPTIONS":
            return
        raise APIError(
            404,
            "Sessions are served from their own host names: use url_domain and url_path from the "
            "job's connection_details.",
        )

    async def get(self, *args: Any) -> None:  # (prepare has answered every method)
        pass

    post = put = patch = delete = head = get  # type: ignore[assignment]


@web.stream_request_body
class PassthroughHandler(PassthroughMixin, web.RequestHandler):
    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")

    def initialize(self) -> None:
        self.body_queue: asyncio.Queue[bytes | None] | None = None
        self.upstream: asyncio.Future[Any] | None = None
        self.target: Target | None = None
        self.headers_sent = False
        self.forward_done = False

    def set_default_headers(self) -> None:
        self.clear_header("Content-Type")
        self.clear_header("Server")

    def compute_etag(self) -> None:
        return None

    def fail(self, error: APIError) -> None:
        self.clear()
        self.set_status(error.status)
        self.set_header("Content-Type", "application/json")
        for name, value in error.headers.items():
            self.set_header(name, value)
        self.finish(json.dumps({"success": False, "message": error.message}))

    async def prepare(self) -> None:
        try:
            self.target = await self.resolve()
        except APIError as e:
            self.fail(e)
            return
        has_body = "Content-Length" in self.request.headers or "Transfer-Encoding" in self.request.headers
        if has_body:
            # The body streams to the session while it arrives: forward from now on.
            self.body_queue = asyncio.Queue(QUEUE_CHUNKS)
            self.upstream = asyncio.ensure_future(self.forward(self.target))

    def data_received(self, chunk: bytes) -> Any:
        if self.body_queue is None or self._finished or self.forward_done:
            return None
        assert self.target is not None
        self.uws.proxy.touch(self.target, bytes_in=len(chunk))
        return self.body_queue.put(chunk)  # awaited by Tornado: back-pressure on uploads

    async def forward(self, target: Target) -> None:
        async def body() -> Any:
            assert self.body_queue is not None
            while True:
                chunk = await self.body_queue.get()
                if chunk is None:
                    return
                yield chunk

        url = self.upstream_url(target, "http")
        uri = url[url.index("/", len("http://")) :]
        try:
            await self._forward(target, uri, body)
        finally:
            # Uploads still arriving have nowhere to go: let a blocked data_received return.
            self.forward_done = True
            while self.body_queue is not None and not self.body_queue.empty():
                self.body_queue.get_nowait()

    async def _forward(self, target: Target, uri: str, body: Any) -> None:
        try:
            await upstream_pool().fetch(
                target.host,
                target.port,
                self.request.method or "GET",
                uri,
                self.upstream_headers(target),
                body() if self.body_queue is not None else None,
                self.send_upstream_headers,
                self.on_chunk,
                self.uws.proxy.connect_timeout,
                self.uws.proxy.request_timeout,
            )
        except UpstreamError as e:
            log.debug("Passthrough to job %s failed: %s", target.job_id, e)
            if self._finished:
                return
            if self._headers_written:
                # Part of the answer went out: finishing would pass a truncated body off as whole.
                self.request.connection.close()  # type: ignore[union-attr]
                self._finished = True
                return
            if e.timeout:
                self.fail(APIError(504, "The session did not answer in time."))
            else:
                self.fail(APIError(502, "The session did not answer."))

    def send_upstream_headers(self, start: httputil.ResponseStartLine, headers: Head) -> None:
        if self._finished:
            return
        self.set_status(start.code, start.reason)
        assert self.target is not None
        answer = response_headers(headers, self.request.method != "HEAD", self.target, self.request.uri or "")
        for name, value in answer.get_all():
            self.add_header(name, value)
        self.headers_sent = True

    def on_chunk(self, chunk: bytes) -> Any:
        if self._finished or self.request.connection.stream.closed():  # type: ignore[union-attr]
            raise StreamClosedError()  # the client went away: stop reading from the app
        assert self.target is not None
        self.uws.proxy.touch(self.target, bytes_out=len(chunk))
        self.write(chunk)
        return self.flush()  # awaited by the client: back-pressure on downloads

    async def relay(self) -> None:
        if self._finished or self.target is None:
            return
        if self.upstream is None:  # no body: a task of its own, so a client leaving cancels it
            self.upstream = asyncio.ensure_future(self.forward(self.target))
        else:
            assert self.body_queue is not None
            await self.body_queue.put(None)
        try:
            await self.upstream
        except asyncio.CancelledError:
            return  # the client went away
        if self._finished:
            return
        if not self.headers_sent:
            self.fail(APIError(502, "The session did not answer."))
            return
        if not self._finished:
            self.finish()

    async def get(self, *args: Any) -> None:
        await self.relay()

    post = put = patch = delete = head = options = get  # type: ignore[assignment]

    def on_connection_close(self) -> None:
        if self.upstream is not None and not self.upstream.done():
            self.upstream.cancel()
        if self.body_queue is not None:
            try:
                self.body_queue.put_nowait(None)
            except asyncio.QueueFull:
                pass

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, httpclient.HTTPClientError | asyncio.CancelledError):
            return
        super().log_exception(typ, value, tb)


class PassthroughWebSocket(PassthroughMixin, websocket.WebSocketHandler):
    """Relays a websocket to the session: frames, pings and close codes. Each direction waits
    for a message to be written before it reads the next, so a fast sender and a slow receiver
    hold one message in the server, not an unbounded queue; messages over
    ProxyService.websocket_max_message_size end the websocket."""

    upstream: websocket.WebSocketClientConnection | None = None
    _pump: asyncio.Future[None] | None = None

    def check_origin(self, origin: str) -> bool:
        return True  # access needs the job's cookie, header or token; the app checks origins itself

    @property
    def max_message_size(self) -> int:
        return self.uws.proxy.websocket_max_message_size

    async def get(self, *args: Any, **kwargs: Any) -> None:
        try:
            self.target = await self.resolve()
        except APIError as e:
            self.set_status(e.status)
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"success": False, "message": e.message}))
            return
        # The session's websockets count against its owner, whoever holds the link.
        await open_counted(self, self.target.user_id, self._open, *args, **kwargs)

    async def _open(self, *args: Any, **kwargs: Any) -> None:
        headers = self.upstream_headers(self.target).to_tornado()
        for name in (
            "Sec-Websocket-Key",
            "Sec-Websocket-Version",
            "Sec-Websocket-Extensions",
            "Sec-Websocket-Protocol",
        ):
            headers.pop(name, None)
        protocols = [
            p.strip() for p in self.request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()
        ]
        request = httpclient.HTTPRequest(
            self.upstream_url(self.target, "ws"),
            headers=headers,
            connect_timeout=self.uws.proxy.connect_timeout,
            request_timeout=self.uws.proxy.connect_timeout,
        )
        try:
            self.upstream = await websocket.websocket_connect(
                request,
                subprotocols=protocols or None,
                ping_interval=None,
                max_message_size=self.max_message_size,
            )
        except Exception as e:
            status = e.code if isinstance(e, httpclient.HTTPClientError) and e.code < 599 else 502
            self.set_status(status)
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"success": False, "message": WEBSOCKET_REFUSED}))
            return
        # The session's pings reach the browser too (Tornado's client has already answered them).
        self.upstream.on_ping = self.forward_ping  # type: ignore[method-assign]
        # (Returns once the websocket has closed: Tornado reads the browser's frames in it.)
        await websocket.WebSocketHandler.get(self, *args, **kwargs)
        if self._pump is None:
            self.upstream.close()  # the browser's handshake failed

    def open(self, *args: Any, **kwargs: Any) -> None:
        assert self.upstream is not None
        self._pump = asyncio.ensure_future(self.from_upstream(self.upstream))

    def forward_ping(self, data: bytes) -> None:
        if self.ws_connection is not None:
            try:
                self.ping(data)
            except websocket.WebSocketClosedError:
                pass

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return self.upstream.selected_subprotocol if self.upstream is not None else None

    async def from_upstream(self, upstream: websocket.WebSocketClientConnection) -> None:
        """The session's messages to the browser, each written before the next is read (the
        client reads no further frames from the app while one waits in its queue)."""
        while True:
            message = await upstream.read_message()
            if message is None:
                if self.ws_connection is not None:
                    self.close(upstream.close_code, upstream.close_reason)
                return
            self.uws.proxy.touch(self.target, bytes_out=len(message))
            try:
                await self.write_message(message, binary=isinstance(message, bytes))
            except websocket.WebSocketClosedError:
                upstream.close(1001, "The browser went away.")
                return

    async def on_message(self, message: str | bytes) -> None:
        # Awaited by Tornado before it reads the browser's next frame: back-pressure this way.
        self.uws.proxy.touch(self.target, bytes_in=len(message))
        if self.upstream is not None:
            try:
                await self.upstream.write_message(message, binary=isinstance(message, bytes))
            except websocket.WebSocketClosedError:
                self.close(1011, "The session closed the connection.")

    def on_ping(self, data: bytes) -> None:
        if self.upstream is not None:
            try:
                self.upstream.ping(data)
            except websocket.WebSocketClosedError:
                pass

    def on_close(self) -> None:
        release_counted(self)
        if self.upstream is not None:
            self.upstream.close(self.close_code or 1000, self.close_reason)


__all__ = ["PassthroughHandler", "PassthroughWebSocket", "not_authenticated"]
