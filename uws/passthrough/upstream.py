"""A small keep-alive HTTP/1.1 client for the passthrough: the pool of connections to sessions.

Tornado's AsyncHTTPClient opens a new connection for every request, and its IOStream registers
and unregisters the socket with the event loop on every read; a proxy in front of a busy app
pays for both on every asset and XHR. This keeps idle connections to each session app as plain
asyncio protocols (the socket stays registered), reads answers with llhttp (httptools) as they
arrive, and streams both bodies with back-pressure: a download is read no faster than the
browser takes it, an upload no faster than the app does. A hostile app's answer costs only its
own request: whatever llhttp refuses, a 101 to a request without Upgrade, endless interim
answers and framing other than chunked end that request with a 502.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httptools

from .head import MAX_HEAD, AnswerHeads, Head, HeadError, ResponseHead

IDLE_SECONDS = 30.0
MAX_IDLE_PER_TARGET = 64
BUFFER_HIGH = 1 << 20  # stop reading from the app while this much is waiting to be relayed
MAX_INTERIM = 16  # 1xx answers skipped before the real one: an app sending them forever is broken


class UpstreamError(Exception):
    """The session could not be reached or stopped answering (502), or took too long (504)."""

    def __init__(self, message: str, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class _Closed(Exception):
    pass


class UpstreamConnection(AnswerHeads, asyncio.Protocol):
    """One connection to a session app, and the answer being read from it."""

    def __init__(self) -> None:
        # Made by create_connection, in the running loop. Kept: asking for the running loop
        # costs a getpid() system call each time (Python 3.11), twice per request here.
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reading_paused = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self.begin(False)
        self.expecting = False

    def begin(self, head_request: bool) -> None:
        """A request is going out: what arrives from now on is its answer."""
        self.expecting = True
        self.head_request = head_request
        self.head: ResponseHead | None = None
        self.body: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.until_close = False  # no length given: the body ends when the app closes
        self.error: str | None = None
        self.interim = 0
        self.head_bytes = 0
        self._clear_head()

    # ---- the transport's events --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.expecting or self.complete or self.error is not None:
            # Bytes nobody asked for (on an idle connection, or after a whole answer): the
            # connection can no longer be trusted to frame the next answer.
            self.error = self.error or "bytes after the answer"
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Only an upgrade request may be answered with a switch of protocols, and this
            # client never sends one (websockets are spliced): passing it on would turn the
            # browser's connection into an unframed pipe from the app.
            self._fail("101 Switching Protocols to a request without Upgrade")
        except httptools.HttpParserError as e:
            cause = e.__context__ if isinstance(e.__context__, HeadError) else e
            self._fail(f"bad answer: {cause}")
        if self.head is None and self.error is None:
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD:  # (llhttp sets no bound of its own)
                self._fail("response header too long")
        if self.buffered > BUFFER_HIGH and not self.reading_paused and self.transport is not None:
            self.transport.pause_reading()
            self.reading_paused = True
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.head is not None and self.until_close:
            self.complete = True  # the body was everything up to the close
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self._drain = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    # ---- llhttp's callbacks (and AnswerHeads') ---------------------------------------------
    def on_headers_complete(self) -> None:
        head = self._take_head()
        code = head.code
        if code < 200:  # 100 Continue and other interim answers (a 101 is refused as an upgrade)
            self.interim += 1
            if self.interim > MAX_INTERIM:
                raise HeadError("too many interim answers")
            return
        headers = head.headers
        encoding = headers.get("Transfer-Encoding")
        if encoding is not None and encoding.lower() != "chunked":
            # As Tornado's own client: chunked only (llhttp would read anything else to the close).
            raise HeadError(f"unsupported Transfer-Encoding {encoding!r}")
        self.until_close = (
            encoding is None and "Content-Length" not in headers and code not in (204, 304)
        ) and not self.head_request
        self.head = head
        if self.head_request:
            # llhttp cannot be told the answer is to a HEAD, so it would wait for the body the
            # length announces: the answer ends here, and the connection with it.
            self.complete = True

    def on_body(self, data: bytes) -> None:
        self.body.append(data)
        self.buffered += len(data)

    def on_message_complete(self) -> None:
        if self.head is not None and not self.complete:
            self.complete = True
            self.keep_alive = self._parser.should_keep_alive()

    # ---- the relay's side ------------------------------------------------------------------
    def _fail(self, reason: str) -> None:
        self.error = reason
        self.close()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def more(self) -> None:
        """Wait until more of the answer has come, or it ended, or the app left."""
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()
        self._waiter = self.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def take_body(self) -> bytes:
        data = self.body.popleft() if len(self.body) == 1 else b"".join(self.body)
        self.body.clear()
        self.buffered = 0
        if self.reading_paused and self.transport is not None:
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


class UpstreamPool:
    """Idle keep-alive connections to session apps, by (host, port)."""

    def __init__(self) -> None:
        self.idle: collections.defaultdict[tuple[str, int], list[tuple[float, UpstreamConnection]]] = (
            collections.defaultdict(list)
        )

    async def _connection(
        self, host: str, port: int, connect_timeout: float
    ) -> tuple[UpstreamConnection, bool]:
        idle = self.idle[(host, port)]
        now = time.monotonic()
        while idle:
            since, conn = idle.pop()
            if not conn.closed and now - since < IDLE_SECONDS:
                return conn, True
            conn.close()
        if not idle:
            del self.idle[(host, port)]  # (no key per target stays behind once its session is gone)
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(UpstreamConnection, host, port), connect_timeout
            )
        except TimeoutError:
            raise UpstreamError("connect timed out", timeout=True) from None
        except OSError as e:
            raise UpstreamError(f"connect failed: {e}") from None
        return conn, False

    def _release(self, host: str, port: int, conn: UpstreamConnection) -> None:
        conn.expecting = False
        idle = self.idle[(host, port)]
        if conn.closed or len(idle) >= MAX_IDLE_PER_TARGET:
            conn.close()
            return
        idle.append((time.monotonic(), conn))

    def close_all(self) -> None:
        for idle in self.idle.values():
            for _, conn in idle:
                conn.close()
        self.idle.clear()

    async def fetch(
        self,
        host: str,
        port: int,
        method: str,
        uri: str,
        headers: Head,
        body: AsyncIterator[bytes] | None,
        on_head: Callable[[ResponseHead], None],
        on_chunk: Callable[[bytes], Awaitable[None] | None],
        connect_timeout: float,
        request_timeout: float,
    ) -> None:
        """Send one request and stream the answer to the callbacks."""
        # A timer rather than asyncio.wait_for: no extra task per request on the hot path.
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        timed_out = []

        def expire() -> None:
            timed_out.append(True)
            if task is not None:
                task.cancel()

        timer = loop.call_later(request_timeout, expire)
        try:
            await self._fetch(host, port, method, uri, headers, body, on_head, on_chunk, connect_timeout)
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
        on_head: Callable[[ResponseHead], None],
        on_chunk: Callable[[bytes], Awaitable[None] | None],
        connect_timeout: float,
    ) -> None:
        chunked = body is not None and "Content-Length" not in headers
        if chunked:
            headers = Head(headers.get_all())
            headers["Transfer-Encoding"] = "chunked"
        try:
            request_head = headers.encode(f"{method} {uri} HTTP/1.1")
        except ValueError:
            raise UpstreamError("refusing a header with a line break") from None
        for attempt in (1, 2):
            conn, reused = await self._connection(host, port, connect_timeout)
            conn.begin(method == "HEAD")
            answered = False
            try:
                await conn.write(request_head)
                if body is not None:
                    async for chunk in body:
                        if chunk:
                            await conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                    if chunked:
                        await conn.write(b"0\r\n\r\n")
                while conn.head is None:
                    self._check(conn, "before an answer")
                    await conn.more()
                answered = True
                on_head(conn.head)
                await self._relay_body(conn, on_chunk)
            except (_Closed, OSError) as e:  # either side went away (a client: StreamClosedError)
                conn.close()
                # A pooled connection the app had already closed: try once more on a new one,
                # unless part of the answer or a body has already gone through.
                if reused and attempt == 1 and not answered and body is None and conn.error is None:
                    continue
                if not answered:
                    raise UpstreamError(f"connection closed: {e}") from None
                if isinstance(e, _Closed):  # cut short: the caller must not pass it off as whole
                    raise UpstreamError(
                        "the session closed the connection in the middle of the answer"
                    ) from None
                return  # the client went away
            except BaseException:
                conn.close()  # cancelled (timeout, client gone) halfway: not reusable
                raise
            if conn.keep_alive and not conn.head_request:
                self._release(host, port, conn)
            else:
                conn.close()
            return

    @staticmethod
    def _check(conn: UpstreamConnection, where: str) -> None:
        if conn.error is not None:
            raise UpstreamError(conn.error)
        if conn.closed:
            raise _Closed(where)

    @staticmethod
    async def _relay_body(
        conn: UpstreamConnection, on_chunk: Callable[[bytes], Awaitable[None] | None]
    ) -> None:
        while True:
            if conn.body:
                result = on_chunk(conn.take_body())
                if result is not None:
                    await result  # back-pressure: the client's pace
                continue
            if conn.complete:
                return
            UpstreamPool._check(conn, "in the middle of the answer")
            await conn.more()
