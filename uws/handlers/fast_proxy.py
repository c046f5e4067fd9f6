"""The passthrough's fast path: a bodyless GET or HEAD from a client that is already let in.

That is nearly all of a session's traffic once its page is open (assets, XHR polling), and it
costs most through Tornado's RequestHandler machinery. Such a request is relayed here, right on
the HTTP/1.1 connection. Everything else goes to the full application unchanged: requests
with bodies, websocket upgrades, token exchanges, refusals, sessions not known to be running.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from tornado import httputil, web
from tornado.iostream import StreamClosedError

from ..access_log import log_access
from ..http_head import Head
from ..proxy import cookie_name
from ..upstream import UpstreamError
from . import proxy as full

log = logging.getLogger("uws.proxy")
Route = tuple[int, str | None]  # job id and, on a session's own host, the host name's label


def _bodyless(path: str, headers: Head | httputil.HTTPHeaders) -> bool:
    """A request without a body or a token to exchange, with one Host (as Tornado's full path
    insists): what both relays may take on."""
    return (
        "Content-Length" not in headers
        and "Transfer-Encoding" not in headers
        and "token=" not in path
        and "," not in headers.get("Host", ",")
    )


def may_take(uws: Any, method: str, path: str, headers: Head | httputil.HTTPHeaders) -> Route | None:
    """The session a request is for, if it is of the kind the fast path relays: a bodyless GET
    or HEAD, without a token to exchange or an upgrade. (Whether its sender is let in is
    `admitted_target`'s question.)"""
    if method in ("GET", "HEAD") and "Upgrade" not in headers and _bodyless(path, headers):
        return full.session_route(uws, path, headers.get("Host", ""))
    return None


def is_websocket(uws: Any, method: str, path: str, headers: Head) -> Route | None:
    """The session a request opens a websocket to (without a token to exchange), if it does."""
    if (
        method == "GET"
        and headers.get("Upgrade", "").lower() == "websocket"
        and "upgrade" in headers.get("Connection", "").lower()
        and _bodyless(path, headers)
    ):
        return full.session_route(uws, path, headers.get("Host", ""))
    return None


async def admitted_target(uws: Any, route: Route, method: str, headers: Head | httputil.HTTPHeaders) -> Any:
    """The running session a request is for, if its cookie or header is the owner's; None sends
    the request to the full handlers (which explain a refusal)."""
    target = await uws.proxy.target(route[0])  # cached; the first request after a restart loads it
    if target is None or not full.label_matches(target, route[1]):
        return None
    cookie = None
    if full.cookie_counts(method, headers):
        try:
            cookie = httputil.parse_cookie(headers.get("Cookie", "")).get(cookie_name(target.job_id))
        except Exception:  # as Tornado's own cookie parsing: a garbled header is no cookie
            pass
    user = await full.credential_user(uws, target, cookie, headers.get("UWS-Authorization"))
    return target if user == target.user_id else None


def answer_headers(upstream: Head, target: Any, request_path: str) -> Head:
    """The session's answer's headers as the fast path relays them: its own Date and length."""
    headers = full.response_headers(upstream, True, target, request_path)
    date = upstream.get("Date")
    if date is not None:
        headers.add("Date", date)
    return headers


async def fetch_bodyless(
    uws: Any,
    target: Any,
    method: str,
    uri: str,
    headers: Head,
    on_headers: Callable[[httputil.ResponseStartLine, Head], None],
    on_chunk: Callable[[bytes], Any],
) -> None:
    """Relay a bodyless request to the session, counting it as activity."""
    uws.proxy.touch(target)
    await full.upstream_pool().fetch(
        target.host,
        target.port,
        method,
        uri,
        headers,
        None,
        on_headers,
        on_chunk,
        uws.proxy.connect_timeout,
        uws.proxy.request_timeout,
    )


def failure_body(timeout: bool) -> bytes:
    """The JSON answer when the session cannot be reached (502) or is too slow (504)."""
    message = "The session did not answer in time." if timeout else "The session did not answer."
    return json.dumps({"success": False, "message": message}).encode()


class UWSWebApplication(web.Application):
    """Tornado's Application, with the passthrough's fast path in front of its router."""

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
        return FastPassthrough(self, server_conn, request_conn)


class FastPassthrough(httputil.HTTPMessageDelegate):
    def __init__(self, app: UWSWebApplication, server_conn: object, request_conn: Any) -> None:
        self.app = app
        self.server_conn = server_conn
        self.request_conn = request_conn
        self.inner: httputil.HTTPMessageDelegate | None = None
        self.relay: tuple[Any, str, Any] | None = None  # (target, upstream uri, headers)
        self.task: asyncio.Future[None] | None = None

    # ---- choosing ----------------------------------------------------------------------------
    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> Any:
        route = may_take(self.app.settings["uws"], start_line.method, start_line.path, headers)
        if route is not None:
            return self._check(route, start_line, headers)
        return self._to_application(start_line, headers)

    def _to_application(self, start_line: Any, headers: httputil.HTTPHeaders) -> Any:
        self.inner = web.Application.start_request(self.app, self.server_conn, self.request_conn)
        return self.inner.headers_received(start_line, headers)

    async def _check(self, route: Route, start_line: Any, headers: httputil.HTTPHeaders) -> None:
        uws = self.app.settings["uws"]
        target = await admitted_target(uws, route, start_line.method, headers)
        if target is not None:
            context = self.request_conn.context
            upstream_headers = full.forward_headers(
                headers,
                headers.get("Host", ""),
                getattr(context, "remote_ip", ""),
                getattr(context, "protocol", "http"),
                target,
            )
            self.relay = (target, full.upstream_uri(target, start_line.path), upstream_headers)
            self.start = time.perf_counter()
            self.start_line = start_line
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

    # ---- relaying ----------------------------------------------------------------------------
    async def _relay(self, target: Any, uri: str, headers: httputil.HTTPHeaders) -> None:
        uws = self.app.settings["uws"]
        conn = self.request_conn
        status = [0]

        # The head waits for the first piece of the body, so a small answer goes out in one write.
        pending: list[Any] = []

        def on_headers(start: httputil.ResponseStartLine, upstream: Head) -> None:
            status[0] = start.code
            headers = answer_headers(upstream, target, self.start_line.path)
            pending[:] = [
                httputil.ResponseStartLine("HTTP/1.1", start.code, start.reason),
                headers.to_tornado(),
            ]

        def on_chunk(chunk: bytes) -> Any:
            uws.proxy.touch(target, bytes_out=len(chunk))
            if pending:
                start, headers = pending
                pending.clear()
                return conn.write_headers(start, headers, chunk)
            return conn.write(chunk)  # awaited by the upstream reader: back-pressure

        try:
            await fetch_bodyless(uws, target, self.start_line.method, uri, headers, on_headers, on_chunk)
        except UpstreamError as e:
            if status[0] and not pending:
                conn.close()  # part of the answer went out: all that can be done is to end it
                return
            status[0] = 504 if e.timeout else 502
            pending.clear()  # the app's head, if it came, never went out: this answer replaces it
            body = failure_body(e.timeout)
            conn.write_headers(
                httputil.ResponseStartLine("HTTP/1.1", status[0], httputil.responses[status[0]]),
                httputil.HTTPHeaders({"Content-Type": "application/json", "Content-Length": str(len(body))}),
                body,
            )
        except asyncio.CancelledError:
            return  # the client went away
        except Exception:
            log.exception("Passthrough to job %s failed", target.job_id)
            conn.close()
            return
        try:
            if pending:  # an answer without a body
                conn.write_headers(*pending)
            conn.finish()
        except (httputil.HTTPOutputError, StreamClosedError):
            conn.close()  # the answer was cut short (either side went away): end the connection
        log_access(
            status[0],
            self.start_line.method,
            self.start_line.path,
            getattr(conn.context, "remote_ip", ""),
            time.perf_counter() - self.start,
        )
