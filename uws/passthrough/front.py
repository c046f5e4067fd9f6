"""The server's HTTP/1.1 front door: every connection starts here.

Tornado's HTTP/1.1 server does a lot for each request: a connection object, a header timeout,
a future at every step. For the passthrough's bulk traffic (bodyless GETs and HEADs for assets
and polling, from a browser or client that is already let in), that costs more than relaying
the request does. The front reads request heads itself and relays those straight to the
session. At the first request it does not take (an API call, a body, a websocket, a refusal,
anything unusual), it hands the connection to Tornado's HTTPServer for the rest of the
connection's life, with the bytes read so far. Tornado then serves it exactly as it would have
served it from the start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tornado import httputil, netutil
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream
from traitlets import Float, Integer, List, Unicode
from traitlets.config import LoggingConfigurable

from ..access_log import log_access
from ..errors import APIError, error_body
from ..forwarded import ProxyTrust
from . import splice, wire
from .admission import Route, admit, fast_route
from .head import MAX_HEAD, Head, HeadError, RequestHead, RequestHeads, ResponseHead
from .linger import close_gently
from .relay import relay

if TYPE_CHECKING:
    from ..handlers.components import Components

log = logging.getLogger("uws.proxy")

SMALL_WRITE = 65536  # a head and a first piece of body up to this size go out in one write
# The end of a head whose lines end in a bare LF (searched for only when there is no CRLF end):
# Tornado's parser takes those, so such a head is handed over rather than waited on.
_BARE_LF_END = re.compile(rb"\n\r?\n")
REFUSAL_LINGER = 2.0  # seconds a refused connection is read (and ignored) before it is closed
TOO_MANY_CONNECTIONS = error_body("The server has too many open connections; try again later.")


class FrontServer(LoggingConfigurable):
    """Listens on the server's port; serves the fast path itself, the rest through Tornado. Its
    options are the listening socket's: what one client can hold of the server, and whose
    X-Forwarded-* headers are believed (here and, through `trust`, in Tornado's HTTPServer)."""

    head_timeout = Float(
        30.0,
        help="""Seconds a client has to send a complete request head, from its first byte; also
        the longest a kept-alive connection may sit idle between requests. Then it is closed.""",
    ).tag(config=True)
    max_connections = Integer(
        10000,
        help="""Client connections open at once (websockets included); more are answered 503 and
        closed. Keep it well under the process's open-file limit (ulimit -n).""",
    ).tag(config=True)
    trusted_proxies = List(
        Unicode(),
        [],
        help="""IP addresses or CIDR networks of reverse proxies (e.g. ["127.0.0.1"] for nginx
        on this host) whose X-Forwarded-For, X-Real-Ip, X-Forwarded-Proto and X-Scheme headers
        are believed. From any other peer they are ignored. Empty (default): never believed.""",
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.trust = ProxyTrust(self.trusted_proxies)  # (ValueError names a bad entry)
        self.connections: set[FrontConnection] = set()
        self.handed_off = 0  # connections Tornado serves, still open
        self._servers: list[asyncio.AbstractServer] = []
        self._sweeper: asyncio.TimerHandle | None = None

    def attach(self, parts: Components, tornado_server: HTTPServer) -> None:
        """What the front serves with: the handlers' components, and Tornado's HTTPServer for
        the connections it hands over."""
        self.parts = parts
        self.tornado_server = tornado_server

    async def listen(self, port: int, address: str) -> None:
        loop = asyncio.get_running_loop()
        for sock in netutil.bind_sockets(port, address):
            self._servers.append(await loop.create_server(lambda: FrontConnection(self), sock=sock))
        self._sweeper = loop.call_later(self._sweep_every(), self._sweep)

    def _sweep_every(self) -> float:
        # Often enough that a connection outlives its time by a fraction of it; one timer for
        # all connections rather than one per request.
        return max(0.1, min(5.0, self.head_timeout / 4))

    def open_connections(self) -> int:
        return len(self.connections) + self.handed_off

    def handed_off_closed(self) -> None:
        self.handed_off -= 1

    def _sweep(self) -> None:
        # Tornado's idle_connection_timeout, for connections still here: one timer for all of
        # them rather than one per request.
        deadline = time.monotonic() - self.head_timeout
        for conn in list(self.connections):
            if conn.task is None and conn.last_active < deadline:
                conn.close(abort=True)  # (a close would wait for a client that takes nothing)
        self._sweeper = asyncio.get_running_loop().call_later(self._sweep_every(), self._sweep)

    def close(self) -> None:
        for server in self._servers:
            server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            conn.close()


class _PrefilledIOStream(IOStream):
    """An IOStream that first yields the bytes the front had already read from its socket, and
    counts as one of the front's open connections until it is closed. Tornado's closes are
    lingering ones (uws.passthrough.linger): it closes a connection after an answer whose
    request it has not read to the end (`Connection: close`, or a client cut off), and a reset
    could destroy that answer."""

    def __init__(self, sock: socket.socket, prefix: bytes, front: FrontServer) -> None:
        super().__init__(sock)
        self._prefix = memoryview(prefix)
        self._front: FrontServer | None = front
        front.handed_off += 1

    def close_fd(self) -> None:
        front, self._front = self._front, None
        if front is None:  # (taken: the connection lives on in a copy of the descriptor)
            super().close_fd()
            return
        sock, self.socket = self.socket, None  # type: ignore[assignment]
        close_gently(sock, front.handed_off_closed)

    def take_socket(self) -> tuple[socket.socket, bytes, Callable[[], None]]:
        """The connection's socket, taken from Tornado (after RequestHandler.detach), with what
        Tornado had read but not used, and what to call once it is closed: it stays one of the
        front's open connections until then."""
        sock = socket.socket(fileno=os.dup(self.socket.fileno()))
        unread = bytes(self._read_buffer[: self._read_buffer_size]) + bytes(self._prefix)
        front, self._front = self._front, None
        self.close()  # (closes Tornado's descriptor: the connection lives on in the copy)
        return sock, unread, front.handed_off_closed if front is not None else lambda: None

    def read_from_fd(self, buf: bytearray | memoryview) -> int | None:
        if self._prefix:
            n = min(len(buf), len(self._prefix))
            buf[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        return super().read_from_fd(buf)


class FrontConnection(asyncio.Protocol):
    """One browser connection while the front serves it: one request at a time, in order."""

    def __init__(self, front: FrontServer) -> None:
        self.front = front
        # Made by create_server, in the running loop. Kept: asking for the running loop costs a
        # getpid() system call each time (Python 3.11).
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.scanned = 0  # how much of the buffer is known to hold no complete head
        self.heads = RequestHeads()
        self.task: asyncio.Task[None] | None = None
        self.last_active = time.monotonic()
        self.peer_ip = ""
        self.reading_paused = False
        self.gone = False
        self.handing_off = False
        self.closing = False
        self._drain: asyncio.Future[None] | None = None
        self.peer_trusted = False
        self.refused = False

    # ---- the transport's events --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if isinstance(peer, tuple) else ""
        if self.front.open_connections() >= self.front.max_connections:
            self._refuse()
            return
        self.front.connections.add(self)
        self.peer_trusted = self.front.trust.trusts(self.peer_ip)

    def _refuse(self) -> None:
        """Over the connection cap: a 503 at once, then close."""
        self._answer_and_close(503, TOO_MANY_CONNECTIONS)

    def _answer_and_close(self, status: int, body: bytes) -> None:
        """An error of the server's own, and the end of the connection. What the client sends
        meanwhile is read and dropped (data_received) until it closes too, or REFUSAL_LINGER has
        passed: closing with unread bytes would reset the connection and could destroy the
        answer before the client reads it (uws.passthrough.linger, for Tornado's side)."""
        self.refused = True
        self.closing = True
        transport = self.transport
        assert transport is not None
        self._answer_json(status, body, close=True)
        transport.write_eof()
        asyncio.get_running_loop().call_later(REFUSAL_LINGER, transport.abort)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if not self.buffer:
            self.last_active = time.monotonic()  # a head's time runs from its first byte
        self.buffer += data
        if self.task is None:
            self._next()
        elif len(self.buffer) > MAX_HEAD and not self.reading_paused:
            # A client sending ahead while its answer is relayed: wait for it to take the answer.
            self.transport.pause_reading()  # type: ignore[union-attr]
            self.reading_paused = True

    def eof_received(self) -> bool:
        return False  # as Tornado: a client that stops sending has left (connection_lost follows)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        self.front.connections.discard(self)
        if self.task is not None and not self.task.done():
            self.task.cancel()  # the browser went away: end the request to the app too
        self._wake_writer()

    def pause_writing(self) -> None:
        self._drain = self.loop.create_future()

    def resume_writing(self) -> None:
        self._wake_writer()
        if self.handing_off:
            self._hand_off()

    def _wake_writer(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    def close(self, abort: bool = False) -> None:
        """End the connection: after what is already written, or (abort) at once."""
        self.closing = True
        if self.transport is not None and not self.gone:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    # ---- requests ----------------------------------------------------------------------------
    def _next(self) -> None:
        """Start on the next request in the buffer, if its head has arrived."""
        if self.closing:
            return
        # Resume the search where the last one stopped: a head trickling in a byte at a time
        # must not cost a scan of everything so far for each byte.
        end = self.buffer.find(b"\r\n\r\n", max(0, self.scanned - 3))
        if end < 0:
            if len(self.buffer) > MAX_HEAD or _BARE_LF_END.search(self.buffer, max(0, self.scanned - 2)):
                self._hand_off()
                return
            self.scanned = len(self.buffer)
            return
        self.scanned = 0
        if end > MAX_HEAD:
            self._hand_off()  # Tornado refuses a head this long
            return
        try:
            request = self.heads.parse(bytes(self.buffer[: end + 4]))
        except HeadError:  # Tornado answers a malformed request with its 400
            self._hand_off()
            return
        chosen = fast_route(self.front.parts, request.method, request.path, request.headers)
        if (
            chosen is None
            or request.version != "1.1"
            or "Expect" in request.headers
            or "close" in request.headers.get("Connection", "").lower()
        ):
            self._hand_off()
            return
        route, websocket = chosen
        serve = self._serve_websocket if websocket else self._serve
        self.task = self.loop.create_task(serve(request, end + 4, route))

    async def _admit(self, request: RequestHead, size: int, route: Route) -> Any:
        """The request's session, its head taken from the buffer; or None, the connection handed
        to Tornado, whose handlers give the refusal."""
        admission = await admit(self.front.parts, route, request.method, request.headers)
        if admission.target is None:
            self.task = None
            if not self.gone:
                self._hand_off()
            return None
        del self.buffer[:size]
        return admission.target

    async def _serve(self, request: RequestHead, size: int, route: Route) -> None:
        try:
            target = await self._admit(request, size, route)
            if target is None:
                return
            began = time.perf_counter()
            remote_ip, protocol = self._origin(request.headers)
            headers = wire.forward_headers(
                request.headers, request.headers.get("Host", ""), remote_ip, protocol, target
            )
            answer = _FrontAnswer(self, request.method)
            status = await relay(
                self.front.parts.proxy, target, request.method, request.path, headers, None, answer
            )
            log_access(status, request.method, request.path, remote_ip, time.perf_counter() - began)
        except asyncio.CancelledError:
            return  # the browser went away
        except Exception:
            log.exception("Passthrough request %s %s failed", request.method, request.path[:200])
            self.close(abort=True)
            return
        finally:
            if self.task is asyncio.current_task(self.loop):
                self.task = None
        if self.gone or self.handing_off or self.closing:
            return
        self.last_active = time.monotonic()
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        if self.buffer:
            self._next()

    def _origin(self, headers: Head) -> tuple[str, str]:
        """The client's address and scheme, worked out as the Tornado side does (X-Forwarded-*
        from trusted proxies only)."""
        return self.front.trust.origin(self.peer_ip, self.peer_trusted, headers, "http")

    def _answer_json(self, status: int, body: bytes, close: bool = False) -> None:
        """A JSON answer of the server's own (an error), written straight to the browser."""
        self.transport.write(  # type: ignore[union-attr]
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
            % (
                status,
                httputil.responses.get(status, "Error").encode(),
                len(body),
                b"Connection: close\r\n" if close else b"",
                body,
            )
        )

    # ---- websockets ----------------------------------------------------------------------------
    async def _serve_websocket(self, request: RequestHead, size: int, route: Route) -> None:
        """Splice a websocket to the session (uws.passthrough.splice): the connection leaves the
        front for good, though it counts as one of its connections until it is closed."""
        parts = self.front.parts
        try:
            target = await self._admit(request, size, route)
            if target is None:
                return
            began = time.perf_counter()
            remote_ip, protocol = self._origin(request.headers)
            opened = await splice.connect(parts, target, request.path, request.headers, remote_ip, protocol)
            if self.gone:
                if not isinstance(opened, APIError):
                    opened[0].close()
                    parts.websockets.release(target.user_id)
                return
            if isinstance(opened, APIError):
                self._answer_and_close(opened.status, error_body(opened.message))
                log_access(
                    opened.status, request.method, request.path, remote_ip, time.perf_counter() - began
                )
                return
            session, switch = opened
            self._join(session, switch, target.user_id, request.path)
            log_access(101, request.method, request.path, remote_ip, time.perf_counter() - began)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("Passthrough websocket %s failed", request.path[:200])
            self.close(abort=True)
        finally:
            if self.task is asyncio.current_task(self.loop):
                self.task = None

    def _join(self, session: splice.SessionSide, switch: ResponseHead, user_id: int, path: str) -> None:
        transport = self.transport
        assert transport is not None
        front = self.front
        front.connections.discard(self)
        front.handed_off += 1
        self.gone = True  # (its transport now belongs to the splice)

        def closed() -> None:
            front.handed_off -= 1
            front.parts.websockets.release(user_id)

        browser = splice.BrowserSide(session, closed)
        browser.transport = transport
        transport.set_protocol(browser)
        early = bytes(self.buffer)  # frames the browser sent before the switch
        self.buffer.clear()
        session.join(browser, switch, [], path)
        if early:
            session.send(early)
        if self.reading_paused:
            transport.resume_reading()

    # ---- handing over to Tornado -------------------------------------------------------------
    def _hand_off(self) -> None:
        """Give the connection, and what has been read from it, to Tornado's HTTPServer."""
        transport = self.transport
        if transport is None or self.gone or self.closing or transport.is_closing():
            return
        if transport.get_write_buffer_size():
            # An earlier answer is still going out: hand over once it has (resume_writing).
            self.handing_off = True
            transport.pause_reading()
            transport.set_write_buffer_limits(high=0, low=0)
            return
        self.handing_off = False
        transport.pause_reading()
        original = transport.get_extra_info("socket")
        sock = socket.socket(fileno=os.dup(original.fileno()))
        peer = transport.get_extra_info("peername")
        prefix = bytes(self.buffer)
        self.buffer.clear()
        self.gone = True
        self.front.connections.discard(self)
        # abort() closes only this protocol's descriptor: the connection lives on in the copy.
        transport.abort()
        self.front.tornado_server.handle_stream(_PrefilledIOStream(sock, prefix, self.front), peer)


class _FrontAnswer:
    """A relayed answer written straight to the front's transport: the head goes out with the
    first piece of the body, so a small answer is one write."""

    def __init__(self, conn: FrontConnection, method: str) -> None:
        self.conn = conn
        self.method = method
        self.head: bytes | None = None
        self.chunked = False
        self.sent = False

    def start(self, answer: ResponseHead, headers: Head) -> None:
        date = answer.headers.get("Date")
        if date is not None:
            headers.add("Date", date)
        status = answer.code
        bodyless = self.method == "HEAD" or status in (204, 304) or status < 200
        if not bodyless and "Content-Length" not in headers:
            headers.add("Transfer-Encoding", "chunked")  # the app's own framing, or none (read to close)
            self.chunked = True
        self.head = headers.encode(f"HTTP/1.1 {status} {answer.reason}")

    def write(self, chunk: bytes) -> asyncio.Future[None] | None:
        if not chunk:
            return None
        transport = self.conn.transport
        assert transport is not None
        data = b"%x\r\n%s\r\n" % (len(chunk), chunk) if self.chunked else chunk
        if self.head is not None:
            if len(data) <= SMALL_WRITE:
                data = self.head + data
            else:
                transport.write(self.head)
            self.head = None
        self.sent = True
        transport.write(data)
        return self.conn._drain  # awaited by the upstream reader: back-pressure

    def end(self) -> None:
        transport = self.conn.transport
        assert transport is not None
        if self.head is not None:  # an answer without a body
            transport.write(self.head)
            self.head = None
        if self.chunked:
            transport.write(b"0\r\n\r\n")

    def fail(self, status: int, body: bytes) -> bool:
        if self.sent:
            self.conn.close(abort=True)  # part of the answer went out: all that can be done is to end it
            return False
        self.conn._answer_json(status, body)
        return True
