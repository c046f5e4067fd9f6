"""The passthrough's Tornado handlers, for what the fast paths do not take: requests with
bodies (streamed both ways with back-pressure, so a multi-GB upload never sits in memory), token
exchanges, refusals (JSON, before anything reaches the session), and websockets that Tornado
holds (spliced as bytes once the socket is detached). Every path on a session's own host name
(passthrough_mode "origin"), or /passthrough/<job id>/... on the server's (path).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from tornado import httputil, web
from tornado.iostream import StreamClosedError
from tornado.routing import Rule

from ..errors import APIError
from ..handlers.auditing import record_refusal
from ..handlers.base import ID, AnswersBeforeBody, BaseHandler, UpgradeMatches, send_error, write_json_error
from ..handlers.components import Components
from . import splice, wire
from .admission import Route, admit
from .head import Head, ResponseHead
from .relay import relay
from .service import Target

log = logging.getLogger("uws.proxy")

QUEUE_CHUNKS = 8


class PassthroughMixin(Components):
    """Admission for the Tornado handlers: the request's session, or its refusal answered."""

    request: httputil.HTTPServerRequest
    # Set-Cookie for the access cookie, when the link's token let the request in.
    set_cookie_header = ""

    async def admit_request(self) -> Target | None:
        path_args = self.path_args  # type: ignore[attr-defined]
        route: Route | None
        if path_args:
            route = (int(path_args[0]), None)
        else:
            route = self.session_hosts.job(self.request.host or "")
        token = self.get_query_argument("token", None)  # type: ignore[attr-defined]
        admission = await admit(self, route, self.request.method or "", self.request.headers, token)
        if admission.refusal is not None:
            self.clear()  # type: ignore[attr-defined]
            send_error(self, admission.refusal)  # type: ignore[arg-type]
            job = f"job:{route[0]}" if route is not None else None
            record_refusal(self, admission.refusal, admission.user, job)  # type: ignore[arg-type]
            return None
        assert admission.target is not None
        self.set_cookie_header = ""
        if admission.set_cookie:
            self.set_cookie_header = self.proxy.access_cookie(
                admission.target, self.config.sessions_base.startswith("https://")
            )
        return admission.target

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        write_json_error(self, status_code)  # type: ignore[arg-type]

    def upstream_headers(self, target: Target) -> Head:
        request = self.request
        return wire.forward_headers(
            request.headers, request.host, request.remote_ip or "", request.protocol, target
        )


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
class PassthroughHandler(PassthroughMixin, AnswersBeforeBody):
    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")

    def initialize(self) -> None:
        self.body_queue: asyncio.Queue[bytes | None] | None = None
        self.upstream: asyncio.Future[None] | None = None
        self.target: Target | None = None
        self.forward_done = False

    def set_default_headers(self) -> None:
        self.clear_header("Content-Type")
        self.clear_header("Server")

    def compute_etag(self) -> None:
        return None

    async def prepare(self) -> None:
        self.target = await self.admit_request()
        if self.target is None:
            return
        if self.set_cookie_header:
            self.add_header("Set-Cookie", self.set_cookie_header)
        if "Content-Length" in self.request.headers or "Transfer-Encoding" in self.request.headers:
            # The body streams to the session while it arrives: forward from now on.
            self.body_queue = asyncio.Queue(QUEUE_CHUNKS)
            self.upstream = asyncio.ensure_future(self.forward(self.target))

    def data_received(self, chunk: bytes) -> Any:
        if self.body_queue is None or self._finished or self.forward_done:
            return None
        assert self.target is not None
        self.proxy.touch(self.target, bytes_in=len(chunk))
        return self.body_queue.put(chunk)  # awaited by Tornado: back-pressure on uploads

    async def _body(self) -> AsyncIterator[bytes]:
        assert self.body_queue is not None
        while True:
            chunk = await self.body_queue.get()
            if chunk is None:
                return
            yield chunk

    async def forward(self, target: Target) -> None:
        body = self._body() if self.body_queue is not None else None
        method = self.request.method or "GET"
        try:
            answer = _HandlerAnswer(self)
            headers = self.upstream_headers(target)
            # (Tornado writes a HEAD answer's length itself.)
            keep_length = method != "HEAD"
            await relay(
                self.proxy, target, method, self.request.uri or "/", headers, body, answer, keep_length
            )
        finally:
            # Uploads still arriving have nowhere to go: let a blocked data_received return.
            self.forward_done = True
            while self.body_queue is not None and not self.body_queue.empty():
                self.body_queue.get_nowait()

    async def get(self, *args: Any) -> None:
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
        if isinstance(value, asyncio.CancelledError):
            return
        super().log_exception(typ, value, tb)


class _HandlerAnswer:
    """A relayed answer written through the handler (Tornado frames it)."""

    def __init__(self, handler: PassthroughHandler) -> None:
        self.handler = handler

    def start(self, answer: ResponseHead, headers: Head) -> None:
        handler = self.handler
        if handler._finished:
            return
        handler.set_status(answer.code, answer.reason)
        for name, value in headers.get_all():
            handler.add_header(name, value)

    def write(self, chunk: bytes) -> Any:
        handler = self.handler
        if handler._finished or handler.request.connection.stream.closed():  # type: ignore[union-attr]
            raise StreamClosedError()  # the client went away: stop reading from the app
        handler.write(chunk)
        return handler.flush()  # awaited by the client: back-pressure on downloads

    def end(self) -> None:
        if not self.handler._finished:
            self.handler.finish()

    def fail(self, status: int, body: bytes) -> bool:
        handler = self.handler
        if handler._finished:
            return False
        if handler._headers_written:
            # Part of the answer went out: finishing would pass a truncated body off as whole.
            handler.request.connection.close()  # type: ignore[union-attr]
            handler._finished = True
            return False
        handler.clear()
        handler.set_status(status)
        handler.set_header("Content-Type", "application/json")
        handler.finish(body)
        return True


class PassthroughWebSocket(PassthroughMixin, web.RequestHandler):
    """A websocket to a session that Tornado holds (opened with a link's ?token=, or on a
    connection Tornado already serves): admitted here, then spliced as bytes on the socket
    taken from Tornado, as the front door splices its own."""

    async def get(self, *args: Any) -> None:
        target = await self.admit_request()
        if target is None:
            return
        request = self.request
        opened = await splice.connect(
            self, target, request.uri or "/", request.headers, request.remote_ip or "", request.protocol
        )
        if isinstance(opened, APIError):
            send_error(self, opened)
            return
        session, switch = opened
        stream = self.detach()
        take_socket = getattr(stream, "take_socket", None)
        if take_socket is None:  # (every connection comes through the front door)
            session.close()
            self.websockets.release(target.user_id)
            stream.close()
            return
        sock, unread, closed = take_socket()
        user_id = target.user_id

        def released() -> None:
            closed()
            self.websockets.release(user_id)

        browser = splice.BrowserSide(session, released)
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(lambda: browser, sock=sock)
        except OSError:
            sock.close()
            session.close()
            released()
            return
        extra = [("Set-Cookie", self.set_cookie_header)] if self.set_cookie_header else []
        session.join(browser, switch, extra, request.uri or "/")
        if unread:
            session.send(unread)


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
