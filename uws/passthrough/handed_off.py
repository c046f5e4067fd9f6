"""The fast path on connections the front door has handed to Tornado.

Once a connection has carried an API call, a body or anything else the front does not take,
Tornado serves it for the rest of its life; the bodyless GETs and HEADs a session page sends on
it afterwards would pay for Tornado's RequestHandler machinery, which costs more than relaying
them. `UWSWebApplication` takes those before its router and relays them on the HTTP/1.1
connection. Everything else (bodies, websocket upgrades, token exchanges, refusals) goes to
the application's handlers unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from tornado import httputil, web
from tornado.iostream import StreamClosedError

from ..access_log import log_access
from ..handlers.components import SettingsComponents
from ..handlers.meta import StandbyHandler
from ..leadership import standby_serves
from . import wire
from .admission import Route, admit, fast_route
from .head import Head, ResponseHead
from .relay import relay
from .service import Target

log = logging.getLogger("uws.proxy")


class UWSWebApplication(web.Application):
    """Tornado's Application, with the passthrough's fast path in front of its router."""

    def __init__(self, *args: Any, **settings: Any) -> None:
        super().__init__(*args, **settings)
        # What the fast path and the front door use, over the same settings the handlers see.
        self.parts = SettingsComponents(self.settings)

    def find_handler(self, request: httputil.HTTPServerRequest, **kwargs: Any) -> web._HandlerDelegate:
        """A standby serves only its STANDBY_PATHS (on the API's host): every other request,
        whatever its route (REST, websocket, passthrough, page), goes to StandbyHandler's 503."""
        if not self.parts.leadership.leading and not (
            standby_serves(request.path) and not self.parts.session_hosts.is_session_host(request.host)
        ):
            return self.get_handler_delegate(request, StandbyHandler)
        return super().find_handler(request, **kwargs)

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        stream = getattr(request_conn, "stream", None)
        if stream is not None and not getattr(stream, "uws_nodelay", False):
            # Tornado turns Nagle's algorithm off at the end of every answer and back on after
            # it: two system calls per request. Off for good, as most proxies run.
            stream.set_nodelay(True)
            stream.set_nodelay = lambda value: None
            stream.uws_nodelay = True
        return HandedOffRequest(self, server_conn, request_conn)


class HandedOffRequest(httputil.HTTPMessageDelegate):
    """One request on a connection Tornado serves: relayed here, or given to the application."""

    def __init__(self, app: UWSWebApplication, server_conn: object, request_conn: Any) -> None:
        self.app = app
        self.server_conn = server_conn
        self.request_conn = request_conn
        self.inner: httputil.HTTPMessageDelegate | None = None
        self.relay: tuple[Target, Head] | None = None
        self.task: asyncio.Future[None] | None = None

    # ---- choosing ----------------------------------------------------------------------------
    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> Any:
        chosen = fast_route(self.app.parts, start_line.method, start_line.path, headers)
        if chosen is not None and not chosen[1]:  # (websockets go to the handlers, which splice)
            return self._check(chosen[0], start_line, headers)
        return self._to_application(start_line, headers)

    def _to_application(self, start_line: Any, headers: httputil.HTTPHeaders) -> Any:
        self.inner = web.Application.start_request(self.app, self.server_conn, self.request_conn)
        return self.inner.headers_received(start_line, headers)

    async def _check(self, route: Route, start_line: Any, headers: httputil.HTTPHeaders) -> None:
        admission = await admit(self.app.parts, route, start_line.method, headers)
        if admission.target is not None:
            context = self.request_conn.context
            self.start_line = start_line
            self.remote_ip = getattr(context, "remote_ip", "")
            upstream_headers = wire.forward_headers(
                headers,
                headers.get("Host", ""),
                self.remote_ip,
                getattr(context, "protocol", "http"),
                admission.target,
            )
            self.relay = (admission.target, upstream_headers)
            self.began = time.perf_counter()
            return
        result = self._to_application(start_line, headers)
        if result is not None:
            await result

    def data_received(self, chunk: bytes) -> Any:
        return self.inner.data_received(chunk) if self.inner is not None else None

    def finish(self) -> None:
        if self.inner is not None:
            self.inner.finish()
        elif self.relay is not None:
            self.task = asyncio.ensure_future(self._relay(*self.relay))
            # Tornado tells a delegate only of closes while the request is read; after that, a
            # browser that leaves (a long poll, say) must still end the request to the app.
            self.request_conn.set_close_callback(self.on_connection_close)

    def on_connection_close(self) -> None:
        if self.inner is not None:
            self.inner.on_connection_close()
        elif self.task is not None and not self.task.done():
            self.task.cancel()

    async def _relay(self, target: Target, headers: Head) -> None:
        method, path = self.start_line.method, self.start_line.path
        answer = _ConnectionAnswer(self.request_conn)
        try:
            status = await relay(self.app.parts.proxy, target, method, path, headers, None, answer)
        except asyncio.CancelledError:
            return  # the client went away
        except Exception:
            log.exception("Passthrough to job %s failed", target.job_id)
            self.request_conn.close()
            return
        log_access(status, method, path, self.remote_ip, time.perf_counter() - self.began)


class _ConnectionAnswer:
    """A relayed answer written to Tornado's HTTP/1.1 connection; the head waits for the first
    piece of the body, so a small answer goes out in one write."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.pending: tuple[httputil.ResponseStartLine, httputil.HTTPHeaders] | None = None
        self.sent = False

    def start(self, answer: ResponseHead, headers: Head) -> None:
        date = answer.headers.get("Date")
        if date is not None:
            headers.add("Date", date)
        start = httputil.ResponseStartLine("HTTP/1.1", answer.code, answer.reason)
        self.pending = (start, headers.to_tornado())

    def write(self, chunk: bytes) -> Any:
        self.sent = True
        if self.pending is not None:
            start, headers = self.pending
            self.pending = None
            return self.conn.write_headers(start, headers, chunk)
        return self.conn.write(chunk)  # awaited by the upstream reader: back-pressure

    def end(self) -> None:
        try:
            if self.pending is not None:  # an answer without a body
                self.conn.write_headers(*self.pending)
            self.conn.finish()
        except (httputil.HTTPOutputError, StreamClosedError):
            self.conn.close()  # the answer was cut short (either side went away): end the connection

    def fail(self, status: int, body: bytes) -> bool:
        if self.sent:
            self.conn.close()  # part of the answer went out: all that can be done is to end it
            return False
        headers = httputil.HTTPHeaders({"Content-Type": "application/json", "Content-Length": str(len(body))})
        start = httputil.ResponseStartLine("HTTP/1.1", status, httputil.responses[status])
        self.conn.write_headers(start, headers, body)
        self.conn.finish()
        return True
