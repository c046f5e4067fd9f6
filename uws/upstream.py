"""A small keep-alive HTTP/1.1 client for the passthrough.

Tornado's AsyncHTTPClient opens a new connection for every request; a proxy in front of a busy
app pays for that on every asset and XHR. This keeps idle connections to each session app and
streams both bodies through Tornado's own HTTP/1.1 implementation, with back-pressure.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from tornado import httputil
from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient

IDLE_SECONDS = 30.0
MAX_IDLE_PER_TARGET = 64
PARAMS = HTTP1ConnectionParameters(
    no_keep_alive=False, decompress=False, max_body_size=1 << 50, chunk_size=1 << 16
)


class UpstreamError(Exception):
    """The session could not be reached or stopped answering (502), or took too long (504)."""

    def __init__(self, message: str, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class _Relay(httputil.HTTPMessageDelegate):
    def __init__(
        self, on_headers: Callable[[Any, Any], None], on_chunk: Callable[[bytes], Awaitable[None] | None]
    ) -> None:
        self.on_headers = on_headers
        self.on_chunk = on_chunk
        self.headers: httputil.HTTPHeaders | None = None
        self.start_line: Any = None

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> None:
        if start_line.code == 100:
            return
        self.start_line, self.headers = start_line, headers
        self.on_headers(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self.on_chunk(chunk)


class UpstreamPool:
    def __init__(self) -> None:
        self.idle: collections.defaultdict[tuple[str, int], list[tuple[float, IOStream]]] = (
            collections.defaultdict(list)
        )
        self.tcp = TCPClient()

    async def _stream(self, host: str, port: int, connect_timeout: float) -> tuple[IOStream, bool]:
        idle = self.idle[(host, port)]
        now = time.monotonic()
        while idle:
            since, stream = idle.pop()
            if not stream.closed() and now - since < IDLE_SECONDS:
                return stream, True
            stream.close()
        try:
            stream = await asyncio.wait_for(self.tcp.connect(host, port), connect_timeout)
        except TimeoutError:
            raise UpstreamError("connect timed out", timeout=True) from None
        except OSError as e:
            raise UpstreamError(f"connect failed: {e}") from None
        stream.set_nodelay(True)
        return stream, False

    def _release(self, host: str, port: int, stream: IOStream) -> None:
        idle = self.idle[(host, port)]
        if stream.closed() or len(idle) >= MAX_IDLE_PER_TARGET:
            stream.close()
            return
        idle.append((time.monotonic(), stream))

    async def fetch(
        self,
        host: str,
        port: int,
        method: str,
        uri: str,
        headers: httputil.HTTPHeaders,
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
        headers: httputil.HTTPHeaders,
        body: AsyncIterator[bytes] | None,
        on_headers: Callable[[Any, Any], None],
        on_chunk: Callable[[bytes], Awaitable[None] | None],
        connect_timeout: float,
    ) -> None:
        for attempt in (1, 2):
            stream, reused = await self._stream(host, port, connect_timeout)
            connection = HTTP1Connection(stream, True, PARAMS)
            relay = _Relay(on_headers, on_chunk)
            try:
                await connection.write_headers(httputil.RequestStartLine(method, uri, "HTTP/1.1"), headers)
                if body is not None:
                    async for chunk in body:
                        await connection.write(chunk)
                connection.finish()
                await connection.read_response(relay)
            except StreamClosedError:
                stream.close()
                # A pooled connection the app had already closed: try once more on a new one,
                # unless part of the answer or a body has already gone through.
                if reused and attempt == 1 and relay.headers is None and body is None:
                    continue
                if relay.headers is None:
                    raise UpstreamError("connection closed") from None
                return
            except httputil.HTTPInputError as e:
                stream.close()
                raise UpstreamError(f"bad answer: {e}") from None
            if relay.headers is None:
                stream.close()
                raise UpstreamError("connection closed before an answer")
            if self._reusable(method, relay.start_line, relay.headers) and not stream.closed():
                self._release(host, port, stream)
            else:
                stream.close()
            return

    @staticmethod
    def _reusable(method: str, start_line: Any, headers: httputil.HTTPHeaders) -> bool:
        if start_line.version != "HTTP/1.1" or "close" in headers.get("Connection", "").lower():
            return False
        if method == "HEAD" or start_line.code in (204, 304):
            return True
        return "Content-Length" in headers or headers.get("Transfer-Encoding", "").lower() == "chunked"
