"""A small keep-alive HTTP/1.1 client for the passthrough.

Tornado's AsyncHTTPClient opens a new connection for every request, and its IOStream registers
and unregisters the socket with the event loop on every read; a proxy in front of a busy app
pays for both on every asset and XHR. This keeps idle connections to each session app as plain
asyncio protocols (the socket stays registered) and streams both bodies with back-pressure:
a download is read no faster than the browser takes it, an upload no faster than the app does.
"""

from __future__ import annotations

import asyncio
import collections
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from tornado import httputil

from .http_head import Head

IDLE_SECONDS = 30.0
MAX_IDLE_PER_TARGET = 64
MAX_HEAD = 65536
BUFFER_HIGH = 1 << 20  # stop reading from the app while this much is waiting to be relayed
MAX_INTERIM = 16  # 1xx answers skipped before the real one: an app sending them forever is broken
# A chunk size as RFC 9112 has it: hex digits only. int(x, 16) would also take "-5", "+5", "0x5"
# and "5_0"; a negative size never shrinks and would spin the relay loop on the event loop. The
# length bound keeps a size within what a connection could ever carry.
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")


class UpstreamError(Exception):
    """The session could not be reached or stopped answering (502), or took too long (504)."""

    def __init__(self, message: str, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class _Connection(asyncio.Protocol):
    """One connection to a session app: a buffer of what it sent, and waiting for more."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False
        self.reading_paused = False
        self._data: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > BUFFER_HIGH and not self.reading_paused and self.transport is not None:
            self.transport.pause_reading()
            self.reading_paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    def _wake(self) -> None:
        if self._data is not None and not self._data.done():
            self._data.set_result(None)

    async def more(self) -> bool:
        """Wait for more bytes; False once the app has closed the connection."""
        if self.closed:
            return False
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()
        self._data = asyncio.get_running_loop().create_future()
        await self._data
        self._data = None
        return bool(self.buffer) or not self.closed

    def take(self, n: int | None = None) -> bytes:
        if n is None or n >= len(self.buffer):
            data = bytes(self.buffer)
            self.buffer.clear()
        else:
            data = bytes(self.buffer[:n])
            del self.buffer[:n]
        if self.reading_paused and len(self.buffer) < BUFFER_HIGH // 2 and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()
        return data

    async def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise ConnectionResetError("the session closed the connection")
        self.transport.write(data)
        if self._drain is not None:
            await self._drain

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _request_head(method: str, uri: str, headers: Head) -> bytes:
    try:
        return headers.encode(f"{method} {uri} HTTP/1.1")
    except ValueError:
        raise UpstreamError("refusing a header with a line break") from None


class _Closed(Exception):
    pass


class UpstreamPool:
    def __init__(self) -> None:
        self.idle: collections.defaultdict[tuple[str, int], list[tuple[float, _Connection]]] = (
            collections.defaultdict(list)
        )

    async def _connection(self, host: str, port: int, connect_timeout: float) -> tuple[_Connection, bool]:
        idle = self.idle[(host, port)]
        now = time.monotonic()
        while idle:
            since, conn = idle.pop()
            if not conn.closed and not conn.buffer and now - since < IDLE_SECONDS:
                return conn, True
            conn.close()
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(_Connection, host, port), connect_timeout)
        except TimeoutError:
            raise UpstreamError("connect timed out", timeout=True) from None
        except OSError as e:
            raise UpstreamError(f"connect failed: {e}") from None
        return conn, False

    def _release(self, host: str, port: int, conn: _Connection) -> None:
        idle = self.idle[(host, port)]
        if conn.closed or conn.buffer or len(idle) >= MAX_IDLE_PER_TARGET:
            conn.close()
            return
        idle.append((time.monotonic(), conn))

    async def fetch(
        self,
        host: str,
        port: int,
        method: str,
        uri: str,
        headers: Head,
        body: AsyncIterator[bytes] | None,
        on_headers: Callable[[Any, Any], None],
        on_chunk: Callable[[bytes], Awaitable[None] | None],
        connect_timeout: float,
        request_timeout: float,
    ) -> None:
        """Send one request and stream the answer to the callbacks."""
        # A timer rather than asyncio.wait_for: no extra task per request on the hot path.
        task = asyncio.current_task()
        timed_out = []

        def expire() -> None:
            timed_out.append(True)
            if task is not None:
                task.cancel()

        timer = asyncio.get_running_loop().call_later(request_timeout, expire)
        try:
            await self._fetch(host, port, method, uri, headers, body, on_headers, on_chunk, connect_timeout)
        except asyncio.CancelledError:
            if timed_out:
                raise UpstreamError("no answer in time", timeout=True) from None
            raise
        finally:
            timer.cancel()

    async def _fetch(
        self,
        host: str,
        port: int,
        method: str,
        uri: str,
        headers: Head,
        body: AsyncIterator[bytes] | None,
        on_headers: Callable[[Any, Any], None],
        on_chunk: Callable[[bytes], Awaitable[None] | None],
        connect_timeout: float,
    ) -> None:
        chunked = body is not None and "Content-Length" not in headers
        if chunked:
            headers = Head(headers.get_all())
            headers["Transfer-Encoding"] = "chunked"
        head = _request_head(method, uri, headers)
        for attempt in (1, 2):
            conn, reused = await self._connection(host, port, connect_timeout)
            answered = False
            try:
                await conn.write(head)
                if body is not None:
                    async for chunk in body:
                        if chunk:
                            await conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                    if chunked:
                        await conn.write(b"0\r\n\r\n")
                start, response_headers = await self._read_head(conn)
                answered = True
                on_headers(start, response_headers)
                reusable = await self._read_body(conn, method, start, response_headers, on_chunk)
            except (_Closed, OSError) as e:  # either side went away (a client: StreamClosedError)
                conn.close()
                # A pooled connection the app had already closed: try once more on a new one,
                # unless part of the answer or a body has already gone through.
                if reused and attempt == 1 and not answered and body is None:
                    continue
                if not answered:
                    raise UpstreamError(f"connection closed: {e}") from None
                if isinstance(e, _Closed):  # cut short: the caller must not pass it off as whole
                    raise UpstreamError(
                        "the session closed the connection in the middle of the answer"
                    ) from None
                return  # the client went away
            except httputil.HTTPInputError as e:
                conn.close()
                raise UpstreamError(f"bad answer: {e}") from None
            except BaseException:
                conn.close()  # cancelled (timeout, client gone) halfway: not reusable
                raise
            if reusable:
                self._release(host, port, conn)
            else:
                conn.close()
            return

    @staticmethod
    async def _read_head(conn: _Connection) -> tuple[httputil.ResponseStartLine, Head]:
        interim = 0
        while True:
            end = conn.buffer.find(b"\r\n\r\n")
            while end < 0:
                if len(conn.buffer) > MAX_HEAD:
                    raise httputil.HTTPInputError("response header too long")
                if not await conn.more():
                    raise _Closed("before an answer")
                end = conn.buffer.find(b"\r\n\r\n")
            text = conn.take(end + 4)[:end].decode("latin1")
            first, _, rest = text.partition("\r\n")
            start = httputil.parse_response_start_line(first)
            if start.code == 101:
                # Only an upgrade request may be answered with a switch of protocols, and this
                # client never sends one (websockets have relays of their own): passing it on
                # would turn the browser's connection into an unframed pipe from the app.
                raise httputil.HTTPInputError("101 Switching Protocols to a request without Upgrade")
            if 100 <= start.code < 200:
                interim += 1
                if interim > MAX_INTERIM:
                    raise httputil.HTTPInputError("too many interim answers")
                continue  # 100 Continue and other interim answers
            headers = Head.parse(rest)
            encoding = headers.get("Transfer-Encoding")
            if encoding is not None and (encoding.lower() != "chunked" or "Content-Length" in headers):
                # As Tornado's own client: chunked only, and never with a length beside it (a
                # relay passing that length on would frame the answer wrongly).
                raise httputil.HTTPInputError(f"unsupported Transfer-Encoding {encoding!r}")
            return start, headers

    @staticmethod
    async def _read_body(
        conn: _Connection,
        method: str,
        start: httputil.ResponseStartLine,
        headers: Head,
        on_chunk: Callable[[bytes], Awaitable[None] | None],
    ) -> bool:
        """Relay the body; whether the connection can carry another request."""

        async def relay(size: int) -> None:
            while size:
                if not conn.buffer and not await conn.more():
                    raise _Closed("in the middle of the answer")
                data = conn.take(size)
                if not data:  # never loop without progress: that would hold the event loop
                    raise httputil.HTTPInputError("no progress in the answer's body")
                size -= len(data)
                result = on_chunk(data)
                if result is not None:
                    await result  # back-pressure: the client's pace

        keep = start.version == "HTTP/1.1" and "close" not in headers.get("Connection", "").lower()
        if method == "HEAD" or start.code in (204, 304):
            return keep
        if "Transfer-Encoding" in headers:  # chunked: _read_head let nothing else through
            while True:
                line = await UpstreamPool._read_line(conn)
                digits = line.split(b";", 1)[0].rstrip(b" \t")
                if _CHUNK_SIZE.fullmatch(digits) is None:
                    raise httputil.HTTPInputError("bad chunk size")
                size = int(digits, 16)
                if size == 0:
                    while await UpstreamPool._read_line(conn):  # trailers, then the empty line
                        pass
                    return keep
                await relay(size)
                if await UpstreamPool._read_line(conn):
                    raise httputil.HTTPInputError("bad chunk framing")
        if "Content-Length" in headers:
            length = headers["Content-Length"]
            if not (length.isascii() and length.isdigit()):
                raise httputil.HTTPInputError("bad Content-Length")
            await relay(int(length))
            return keep
        while True:  # no length: the body ends when the app closes the connection
            if not conn.buffer and not await conn.more():
                return False
            await relay(len(conn.buffer))

    @staticmethod
    async def _read_line(conn: _Connection) -> bytes:
        while (end := conn.buffer.find(b"\r\n")) < 0:
            if len(conn.buffer) > MAX_HEAD:
                raise httputil.HTTPInputError("line too long")
            if not await conn.more():
                raise _Closed("in the middle of the answer")
        return conn.take(end + 2)[:-2]
