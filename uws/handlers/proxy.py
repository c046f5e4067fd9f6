"""The authenticated proxy from the browser to a running session: every path on a session's
own host name (passthrough_mode "origin"), or /passthrough/<job id>/... on the server's (path).

HTTP bodies stream both ways with back-pressure (a multi-GB download or upload never sits in
memory); websockets relay text and binary frames, pings and close codes. Requests that are not
the owner's get 403 before anything reaches the session.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

from tornado import httpclient, httputil, web, websocket
from tornado.iostream import StreamClosedError
from tornado.routing import Rule

from ..errors import APIError
from ..http_head import Head
from ..proxy import Target, cookie_name, host_name
from ..upstream import UpstreamError, UpstreamPool
from .base import ID, BaseHandler, UpgradeMatches, send_error
from .components import Components
from .wire import WEBSOCKET_REFUSED, forward_headers, response_headers, upstream_failure, upstream_uri
from .ws import open_counted, release_counted

log = logging.getLogger("uws.proxy")

QUEUE_CHUNKS = 8
PREFIX = "/passthrough/"

_pool: UpstreamPool | None = None


def upstream_pool() -> UpstreamPool:
    global _pool
    if _pool is None:
        _pool = UpstreamPool()
    return _pool


async def credential_user(
    parts: Components, target: Target, cookie: str | None, header: str | None
) -> int | None:
    """The user a request's job cookie names or, failing that, its UWS-Authorization header."""
    user_id = await parts.proxy.cookie_user(target, cookie)
    if user_id is not None or not header:
        return user_id
    try:
        return (await parts.auth.authenticate(header)).id
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


def session_route(parts: Components, path: str, host: str) -> tuple[int, str | None] | None:
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


def label_matches(target: Target, label: str | None) -> bool:
    return label is None or (bool(target.label) and hmac.compare_digest(target.label, label))


class PassthroughMixin(Components):
    """Authentication and target resolution shared by the HTTP and websocket handlers."""

    request: httputil.HTTPServerRequest

    async def resolve(self) -> Target:
        """The session this request may reach, or APIError 403/404/503."""
        path_args = self.path_args  # type: ignore[attr-defined]
        if path_args:
            route: tuple[int, str | None] | None = (int(path_args[0]), None)
        else:
            route = self.session_hosts.job(self.request.host or "")
        if route is None:
            raise APIError(404, "No session has this address.")
        jid, label = route
        target = await self.proxy.target(jid)
        if target is not None and not label_matches(target, label):
            raise APIError(403, "You do not have access to this session.")
        user_id = await self.credential_user(jid, target)
        if target is None:
            owner = await self.jobs.owner_of(jid)
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
                return (await self.auth.authenticate(header)).id if header else None
            except APIError:
                return None
        cookie = None
        if cookie_counts(self.request.method or "", self.request.headers):
            cookie = self.get_cookie(cookie_name(job_id))  # type: ignore[attr-defined]
        return await credential_user(self, target, cookie, header)

    def set_access_cookie(self, target: Target) -> None:
        """HttpOnly, and host-only (no Domain) on a session's own origin: no other session's
        host gets it."""
        self.set_cookie(  # type: ignore[attr-defined]
            cookie_name(target.job_id),
            self.proxy.make_cookie(target.job_id, target.user_id),
            path="/" if target.path_prefix is None else target.path_prefix + "/",
            httponly=True,
            secure=self.config.sessions_base.startswith("https://"),
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
        send_error(self, error)

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
        self.proxy.touch(self.target, bytes_in=len(chunk))
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
                self.config.proxy_connect_timeout,
                self.config.proxy_request_timeout,
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
            self.fail(upstream_failure(e.timeout))

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
        self.proxy.touch(self.target, bytes_out=len(chunk))
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
            self.fail(upstream_failure(timeout=False))
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
        return self.config.proxy_websocket_max_message_size

    async def get(self, *args: Any, **kwargs: Any) -> None:
        try:
            self.target = await self.resolve()
        except APIError as e:
            send_error(self, e)
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
            connect_timeout=self.config.proxy_connect_timeout,
            request_timeout=self.config.proxy_connect_timeout,
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
            send_error(self, APIError(status, WEBSOCKET_REFUSED))
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
            self.proxy.touch(self.target, bytes_out=len(message))
            try:
                await self.write_message(message, binary=isinstance(message, bytes))
            except websocket.WebSocketClosedError:
                upstream.close(1001, "The browser went away.")
                return

    async def on_message(self, message: str | bytes) -> None:
        # Awaited by Tornado before it reads the browser's next frame: back-pressure this way.
        self.proxy.touch(self.target, bytes_in=len(message))
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


def default_handlers(passthrough_mode: str) -> list[Any]:
    """The passthrough's routes on the API's own host, after every API route. In origin mode
    sessions are on hosts of their own (`session_host_handlers`), and /passthrough/ only says so."""
    if passthrough_mode == "origin":
        return [(r"/passthrough/.*", SessionElsewhereHandler)]
    return [(rf"/passthrough/{ID}(?:/.*)?", PassthroughHandler)]


def upgrade_handlers(passthrough_mode: str) -> list[Any]:
    """Websockets to sessions on the API's own host, tried before every other route."""
    if passthrough_mode == "origin":
        return []
    return [Rule(UpgradeMatches(rf"/passthrough/{ID}(?:/.*)?"), PassthroughWebSocket)]


# Every path on a session's own host name (origin mode) goes to that session.
session_host_handlers = [
    Rule(UpgradeMatches(r".*"), PassthroughWebSocket),
    (r".*", PassthroughHandler),
]
