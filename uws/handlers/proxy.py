"""/passthrough/<job id>/...: the authenticated proxy from the browser to a running session.

HTTP bodies stream both ways with back-pressure (a multi-GB download or upload never sits in
memory); websockets relay text and binary frames, pings and close codes. Requests that are not
the owner's get 403 before anything reaches the session.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from tornado import httpclient, httputil, web, websocket
from tornado.iostream import StreamClosedError

from ..errors import APIError, not_authenticated
from ..http_head import Head
from ..proxy import Target, cookie_name
from ..upstream import UpstreamError, UpstreamPool
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
STRIP_TO_UPSTREAM = {"uws-authorization", "host", "cookie"}
QUEUE_CHUNKS = 8
WEBSOCKET_REFUSED = "The session did not accept the websocket."

_pool: UpstreamPool | None = None


def upstream_pool() -> UpstreamPool:
    global _pool
    if _pool is None:
        _pool = UpstreamPool()
    return _pool


def forward_headers(request_headers: Any, host: str, remote_ip: str, protocol: str) -> Head:
    """The request's headers (HTTPHeaders or Head) as the session gets them: no hop-by-hop
    headers, no UWS credentials (header or cookie), and X-Forwarded-* saying where the request
    came from."""
    headers = Head()
    connection = request_headers.get("Connection")
    connection_tokens = {t.strip().lower() for t in connection.split(",")} if connection else set()
    for name, value in request_headers.get_all():
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in STRIP_TO_UPSTREAM or lname in connection_tokens:
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


def response_headers(upstream: Any, keep_length: bool) -> Head:
    """The session's response headers (HTTPHeaders or Head) as the browser gets them: no
    hop-by-hop headers (but Content-Length when `keep_length`), no Date (the server adds its
    own)."""
    headers = Head()
    connection = upstream.get("Connection")
    connection_tokens = {t.strip().lower() for t in connection.split(",")} if connection else set()
    for name, value in upstream.get_all():
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in connection_tokens or lname == "date":
            continue
        headers.add(name, value)
    if keep_length and "Content-Length" in upstream:
        headers.add("Content-Length", upstream["Content-Length"])
    return headers


def upstream_uri(target: Target, uri: str) -> str:
    """The request's path and query as the session gets them (without the prefix, for apps
    that cannot serve under /passthrough/<id>/)."""
    path = uri or "/"
    if target.strip_prefix:
        path = path[len(f"/passthrough/{target.job_id}") :] or "/"
        if not path.startswith("/"):
            path = "/" + path
    return path


async def credential_user(uws: Any, job_id: int, cookie: str | None, header: str | None) -> int | None:
    """The user a request's job cookie names or, failing that, its UWS-Authorization header."""
    user_id = uws.proxy.cookie_user(job_id, cookie)
    if user_id is not None or not header:
        return user_id
    try:
        return (await uws.auth_service.authenticate(header)).id
    except APIError:
        return None


class PassthroughMixin:
    """Authentication and target resolution shared by the HTTP and websocket handlers."""

    request: httputil.HTTPServerRequest

    @property
    def uws(self) -> Any:
        return self.application.settings["uws"]  # type: ignore[attr-defined]

    async def resolve(self, job_id: str) -> Target:
        """The session this request may reach, or APIError 403/404/503."""
        proxy = self.uws.proxy
        jid = int(job_id)
        user_id = await self.credential_user(jid)
        target = await proxy.target(jid)
        if target is None:
            owner = await self.uws.jobs.owner_of(jid)
            if user_id is not None and owner == user_id:
                raise APIError(503, "The session is not running or not ready yet.")
            raise APIError(403, "You do not have access to this session.")
        if user_id != target.user_id:
            token = self.get_query_argument("token", None)  # type: ignore[attr-defined]
            if not token or not target.token or not _same(token, target.token):
                raise APIError(403, "You do not have access to this session.")
            self.set_access_cookie(target)
        return target

    async def credential_user(self, job_id: int) -> int | None:
        cookie = self.get_cookie(cookie_name(job_id))  # type: ignore[attr-defined]
        return await credential_user(self.uws, job_id, cookie, self.request.headers.get("UWS-Authorization"))

    def set_access_cookie(self, target: Target) -> None:
        secure = self.uws.public_origin().startswith("https://")
        self.set_cookie(  # type: ignore[attr-defined]
            cookie_name(target.job_id),
            self.uws.proxy.make_cookie(target.job_id, target.user_id),
            path=f"/passthrough/{target.job_id}/",
            httponly=True,
            secure=secure,
            samesite="Lax",
            expires_days=0.5,
        )

    def upstream_url(self, target: Target, scheme: str) -> str:
        return f"{scheme}://{target.host}:{target.port}{upstream_uri(target, self.request.uri or '/')}"

    def upstream_headers(self) -> Head:
        request = self.request
        return forward_headers(request.headers, request.host, request.remote_ip or "", request.protocol)


def _same(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())


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
            self.target = await self.resolve(self.path_args[0])
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
                self.upstream_headers(),
                body() if self.body_queue is not None else None,
                self.send_upstream_headers,
                self.on_chunk,
                self.uws.proxy_connect_timeout,
                self.uws.proxy_request_timeout,
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
        for name, value in response_headers(headers, keep_length=self.request.method != "HEAD").get_all():
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
    UWSApp.proxy_websocket_max_message_size end the websocket."""

    upstream: websocket.WebSocketClientConnection | None = None
    _pump: asyncio.Future[None] | None = None

    def check_origin(self, origin: str) -> bool:
        return True  # access needs the job's cookie, header or token; the app checks origins itself

    @property
    def max_message_size(self) -> int:
        return self.uws.proxy_websocket_max_message_size

    async def get(self, *args: Any, **kwargs: Any) -> None:
        try:
            self.target = await self.resolve(args[0])
        except APIError as e:
            self.set_status(e.status)
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"success": False, "message": e.message}))
            return
        # The session's websockets count against its owner, whoever holds the link.
        await open_counted(self, self.target.user_id, self._open, *args, **kwargs)

    async def _open(self, *args: Any, **kwargs: Any) -> None:
        headers = self.upstream_headers().to_tornado()
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
            connect_timeout=self.uws.proxy_connect_timeout,
            request_timeout=self.uws.proxy_connect_timeout,
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
