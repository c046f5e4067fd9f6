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
import json
import logging
import os
import re
import socket
import time
from typing import Any

from tornado import httputil, netutil
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream

from ..access_log import log_access
from ..forwarded import ProxyTrust
from ..http_head import Head
from ..upstream import UpstreamError
from . import proxy as full
from .fast_proxy import (
    Route,
    admitted_target,
    answer_headers,
    failure_body,
    fetch_bodyless,
    is_websocket,
    may_take,
)

log = logging.getLogger("uws.proxy")

MAX_HEAD = 65536  # as Tornado's max_header_size: a longer head goes to Tornado, which refuses it
SMALL_WRITE = 65536  # a head and a first piece of body up to this size go out in one write
# The end of a head whose lines end in a bare LF (searched for only when there is no CRLF end):
# Tornado's parser takes those, so such a head is handed over rather than waited on.
_BARE_LF_END = re.compile(rb"\n\r?\n")
REFUSAL_LINGER = 2.0  # seconds a refused connection is read (and ignored) before it is closed
TOO_MANY_CONNECTIONS = json.dumps(
    {"success": False, "message": "The server has too many open connections; try again later."}
).encode()


class FrontServer:
    """Listens on the server's port; serves the fast path itself, the rest through Tornado.

    `head_seconds` bounds both the wait for a request head to be complete (from its first byte)
    and an idle connection's life between requests, here and (as its header_timeout) in
    Tornado's HTTPServer: a client holding connections open without sending complete requests
    holds each for that long at most. At most `max_connections` connections are open at once,
    those handed to Tornado (websockets included) counted until their socket is closed."""

    def __init__(
        self,
        uws: Any,
        tornado_server: HTTPServer,
        head_seconds: float,
        max_connections: int,
        trust: ProxyTrust,
    ) -> None:
        self.uws = uws
        self.tornado_server = tornado_server
        self.idle_seconds = head_seconds
        self.max_connections = max_connections
        self.trust = trust
        self.connections: set[FrontConnection] = set()
        self.handed_off = 0  # connections Tornado serves, still open
        self._servers: list[asyncio.AbstractServer] = []
        self._sweeper: asyncio.TimerHandle | None = None

    async def listen(self, port: int, address: str) -> None:
        loop = asyncio.get_running_loop()
        for sock in netutil.bind_sockets(port, address):
            self._servers.append(await loop.create_server(lambda: FrontConnection(self), sock=sock))
        self._sweeper = loop.call_later(self._sweep_every(), self._sweep)

    def _sweep_every(self) -> float:
        # Often enough that a connection outlives its time by a fraction of it; one timer for
        # all connections rather than one per request.
        return max(0.1, min(5.0, self.idle_seconds / 4))

    def open_connections(self) -> int:
        return len(self.connections) + self.handed_off

    def _sweep(self) -> None:
        # Tornado's idle_connection_timeout, for connections still here: one timer for all of
        # them rather than one per request.
        deadline = time.monotonic() - self.idle_seconds
        for conn in list(self.connections):
            if conn.task is None and conn.splice is None and conn.last_active < deadline:
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
    counts as one of the front's open connections until it is closed."""

    def __init__(self, sock: socket.socket, prefix: bytes, front: FrontServer) -> None:
        super().__init__(sock)
        self._prefix = memoryview(prefix)
        self._front: FrontServer | None = front
        front.handed_off += 1

    def close_fd(self) -> None:
        if self._front is not None:
            self._front.handed_off -= 1
            self._front = None
        super().close_fd()

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
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.scanned = 0  # how much of the buffer is known to hold no complete head
        self.task: asyncio.Task[None] | None = None
        self.last_active = time.monotonic()
        self.peer_ip = ""
        self.reading_paused = False
        self.gone = False
        self.handing_off = False
        self.closing = False
        self._drain: asyncio.Future[None] | None = None
        self.splice: _WebSocketUpstream | None = None  # a relayed websocket: bytes both ways
        self.peer_trusted = False
        self.refused = False
        self.websocket_user: int | None = None  # whose websocket count this connection holds

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
        """Over the connection cap: a 503 at once, then close. What the client sends meanwhile is
        read and dropped, as closing with unread bytes would reset the connection and could
        destroy the answer before the client reads it."""
        self.refused = True
        self.closing = True
        transport = self.transport
        assert transport is not None
        self._answer_json(503, TOO_MANY_CONNECTIONS, close=True)
        transport.write_eof()
        asyncio.get_running_loop().call_later(REFUSAL_LINGER, transport.abort)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if self.splice is not None:
            self.splice.send(data)
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
        self._release_websocket()
        if self.task is not None and not self.task.done():
            self.task.cancel()  # the browser went away: end the request to the app too
        if self.splice is not None:
            self.splice.close()
        self._wake_writer()

    def pause_writing(self) -> None:
        if self.splice is not None:
            self.splice.pause_reading()  # the browser is slow to take the app's frames
            return
        self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.splice is not None:
            self.splice.resume_reading()
            return
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
            first, _, rest = self.buffer[:end].decode("latin1").partition("\r\n")
            start = httputil.parse_request_start_line(first)
            headers = Head.parse(rest)
        except Exception:  # Tornado answers a malformed request with its 400
            self._hand_off()
            return
        uws = self.front.uws
        if start.version != "HTTP/1.1":
            self._hand_off()
            return
        route = is_websocket(uws, start.method, start.path, headers)
        if route is not None:
            self.task = asyncio.ensure_future(self._serve_websocket(start, headers, end + 4, route))
            return
        route = may_take(uws, start.method, start.path, headers)
        if route is None or "Expect" in headers or "close" in headers.get("Connection", "").lower():
            self._hand_off()
            return
        self.task = asyncio.ensure_future(self._serve(start, headers, end + 4, route))

    async def _admit(self, start: httputil.RequestStartLine, headers: Head, size: int, route: Route) -> Any:
        """The request's session, its head taken from the buffer; or None, the connection handed
        to Tornado, whose handlers give the refusal or the token exchange."""
        target = await admitted_target(self.front.uws, route, start.method, headers)
        if target is None:
            self.task = None
            if not self.gone:
                self._hand_off()
            return None
        del self.buffer[:size]
        return target

    async def _serve(self, start: httputil.RequestStartLine, headers: Head, size: int, route: Route) -> None:
        try:
            target = await self._admit(start, headers, size, route)
            if target is None:
                return
            began = time.perf_counter()
            remote_ip, protocol = self._origin(headers)
            status = await self._relay(target, start, headers, remote_ip, protocol)
            log_access(status, start.method, start.path, remote_ip, time.perf_counter() - began)
        except asyncio.CancelledError:
            return  # the browser went away
        except Exception:
            log.exception("Passthrough request %s %s failed", start.method, start.path[:200])
            self.close(abort=True)
            return
        finally:
            if self.task is asyncio.current_task():
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

    async def _relay(
        self,
        target: Any,
        start: httputil.RequestStartLine,
        headers: Head,
        remote_ip: str,
        protocol: str,
    ) -> int:
        """Relay one request to the session and its answer back; the status sent."""
        uws = self.front.uws
        transport = self.transport
        assert transport is not None
        upstream_headers = full.forward_headers(headers, headers.get("Host", ""), remote_ip, protocol, target)
        status = 0
        head: bytes | None = None
        chunked = False

        def on_headers(answer: httputil.ResponseStartLine, upstream: Head) -> None:
            nonlocal status, head, chunked
            status = answer.code
            out = answer_headers(upstream, target, start.path)
            bodyless = start.method == "HEAD" or status in (204, 304) or status < 200
            if not bodyless and "Content-Length" not in out:
                out.add("Transfer-Encoding", "chunked")  # the app's own framing, or none (read to close)
                chunked = True
            head = out.encode(f"HTTP/1.1 {status} {answer.reason}")

        def on_chunk(chunk: bytes) -> asyncio.Future[None] | None:
            nonlocal head
            if not chunk:
                return None
            uws.proxy.touch(target, bytes_out=len(chunk))
            data = b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk
            if head is not None:
                if len(data) <= SMALL_WRITE:
                    data = head + data
                else:
                    transport.write(head)
                head = None
            transport.write(data)
            return self._drain  # awaited by the upstream reader: back-pressure

        try:
            await fetch_bodyless(
                uws,
                target,
                start.method,
                full.upstream_uri(target, start.path),
                upstream_headers,
                on_headers,
                on_chunk,
            )
        except UpstreamError as e:
            if status and head is None:
                self.close(abort=True)  # part of the answer went out: all that can be done is to end it
                return status
            status = 504 if e.timeout else 502
            self._answer_json(status, failure_body(e.timeout))
            return status
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Passthrough to job %s failed", target.job_id)
            self.close(abort=True)
            return status or 502
        if head is not None:  # an answer without a body
            transport.write(head)
        if chunked:
            transport.write(b"0\r\n\r\n")
        return status

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
    async def _serve_websocket(
        self, start: httputil.RequestStartLine, headers: Head, size: int, route: Route
    ) -> None:
        """Relay a websocket as bytes: the app's own handshake answer, then whatever either side
        sends, frames, pings and close codes alike, untouched."""
        uws = self.front.uws
        upstream: _WebSocketUpstream | None = None
        try:
            target = await self._admit(start, headers, size, route)
            if target is None:
                return
            began = time.perf_counter()
            remote_ip, protocol = self._origin(headers)
            if not uws.websockets.acquire(target.user_id):
                self._refuse_websocket(429, uws.websockets.refusal, start, remote_ip, began)
                return
            self.websocket_user = target.user_id  # given back when the connection ends
            out = full.forward_headers(headers, headers.get("Host", ""), remote_ip, protocol, target)
            out.add("Connection", "Upgrade")
            out.add("Upgrade", headers["Upgrade"])
            loop = asyncio.get_running_loop()
            try:
                _, upstream = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: _WebSocketUpstream(self, target), target.host, target.port
                    ),
                    uws.proxy.connect_timeout,
                )
                upstream.transport.write(out.encode(f"GET {full.upstream_uri(target, start.path)} HTTP/1.1"))
                end = await asyncio.wait_for(upstream.answered, uws.proxy.connect_timeout)
                status = httputil.parse_response_start_line(
                    upstream.head[: upstream.head.index(b"\r\n")].decode("latin1")
                ).code
            except (OSError, TimeoutError, ValueError, httputil.HTTPInputError):
                status = 502
            if status != 101:
                # As the websocket handler answers: the app's refusal, or 502 when there was none.
                if upstream is not None:
                    upstream.close()
                status = status if 300 <= status < 599 else 502
                self._refuse_websocket(status, full.WEBSOCKET_REFUSED, start, remote_ip, began)
                return
            uws.proxy.touch(target)
            self.splice = upstream
            early_client = bytes(self.buffer)
            self.buffer.clear()
            upstream.start_splicing(end)  # the app's handshake answer and any frames after it
            if early_client:
                upstream.send(early_client)
            if self.reading_paused:
                self.reading_paused = False
                self.transport.resume_reading()  # type: ignore[union-attr]
            log_access(101, start.method, start.path, remote_ip, time.perf_counter() - began)
        except asyncio.CancelledError:
            if upstream is not None:
                upstream.close()
        except Exception:
            log.exception("Passthrough websocket %s failed", start.path[:200])
            if upstream is not None:
                upstream.close()
            self.close(abort=True)
        finally:
            if self.task is asyncio.current_task():
                self.task = None

    def _refuse_websocket(
        self, status: int, message: str, start: httputil.RequestStartLine, remote_ip: str, began: float
    ) -> None:
        self._release_websocket()
        self._answer_json(status, json.dumps({"success": False, "message": message}).encode(), close=True)
        self.close()
        log_access(status, start.method, start.path, remote_ip, time.perf_counter() - began)

    def _release_websocket(self) -> None:
        if self.websocket_user is not None:
            self.front.uws.websockets.release(self.websocket_user)
            self.websocket_user = None

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


class _WebSocketUpstream(asyncio.Protocol):
    """The app's side of a relayed websocket: its handshake answer, then bytes both ways with
    back-pressure (a side that is slow to take bytes stops the other side being read)."""

    def __init__(self, client: FrontConnection, target: Any) -> None:
        self.client = client
        self.target = target
        self.proxy = client.front.uws.proxy
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.splicing = False
        self.lost = False
        self.answered: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.splicing:
            self.proxy.touch(self.target, bytes_out=len(data))
            self.client.transport.write(data)  # type: ignore[union-attr]
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end >= 0 and not self.answered.done():
            self.answered.set_result(end + 4)
        elif len(self.head) > MAX_HEAD and not self.answered.done():
            self.answered.set_exception(ValueError("handshake answer too long"))

    def start_splicing(self, head_size: int) -> None:
        """Pass the app's handshake answer on, and from now on every byte it sends."""
        self.splicing = True
        data = bytes(self.head)
        self.head.clear()
        self.proxy.touch(self.target, bytes_out=len(data) - head_size)
        self.client.transport.write(data)  # type: ignore[union-attr]
        if self.lost:  # the app answered and left at once: the browser gets what it sent
            self.client.close()

    def send(self, data: bytes) -> None:
        self.proxy.touch(self.target, bytes_in=len(data))
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.answered.done():
            self.answered.set_exception(ConnectionResetError("the session closed the connection"))
        if self.splicing:
            self.client.close()  # after what is already on its way to the browser

    # The browser's side calls these when it is slow to take bytes, and the other way round.
    def pause_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client.transport is not None and not self.client.gone:
            self.client.transport.resume_reading()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
