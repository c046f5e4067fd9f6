"""Session websockets, relayed as bytes: the app's handshake answer, then whatever either side
sends (frames, pings and close codes alike) untouched, with back-pressure both ways: a side that
is slow to take bytes stops the other side being read, so the server holds a socket buffer, not
a message. Both entry points splice: the front door on the connection it holds, and the full
handler (a link's ?token=, or a connection Tornado serves) once it has detached the socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httptools

from ..errors import APIError
from . import wire
from .head import MAX_HEAD, AnswerHeads, HeadError, ResponseHead

if TYPE_CHECKING:
    from ..handlers.components import Components
    from .service import ProxyService, Target


class _End(asyncio.Protocol):
    """One end of a splice: its socket, read or not as the other end keeps up."""

    transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def eof_received(self) -> bool:
        return False  # (a half-closed websocket is a closed one)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class SessionSide(AnswerHeads, _End):
    """The app's end of a relayed websocket: its handshake answer, then its bytes."""

    def __init__(self, service: ProxyService, target: Target) -> None:
        self.service = service
        self.target = target
        self.browser: BrowserSide | None = None
        self.pending = bytearray()  # what the app sent after its answer, before the browser is joined
        self.lost = False
        self.answered: asyncio.Future[ResponseHead] = asyncio.get_running_loop().create_future()
        self._clear_head()
        self._parser = httptools.HttpResponseParser(self)
        self._head: ResponseHead | None = None
        self._head_bytes = 0

    # llhttp's callbacks (and AnswerHeads'), for the handshake answer
    def on_headers_complete(self) -> None:
        head = self._take_head()
        if head.code >= 200 or head.code == 101:  # (other 1xx answers are interim)
            self._head = head

    # the transport's events
    def data_received(self, data: bytes) -> None:
        if self.browser is not None:
            self.service.touch(self.target, bytes_out=len(data))
            self.browser.write(data)
            return
        if self.answered.done():
            self.pending += data  # (the browser is joined within this turn of the loop)
            return
        self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self.pending += data[e.args[0] :]
        except httptools.HttpParserError as e:
            self.answered.set_exception(HeadError(str(e)))
            return
        if self._head is not None:
            self.answered.set_result(self._head)  # the switch, or the app's refusal
        elif self._head_bytes > MAX_HEAD:
            self.answered.set_exception(HeadError("handshake answer too long"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.answered.done():
            self.answered.set_exception(ConnectionResetError("the session closed the connection"))
        if self.browser is not None:
            self.browser.close()  # after what is already on its way to the browser

    # the browser's side
    def join(
        self, browser: BrowserSide, answer: ResponseHead, extra: list[tuple[str, str]], path: str
    ) -> None:
        """Send the browser the app's switch (its headers filtered as every answer's are), what
        the app sent since, and from now on every byte it sends."""
        headers = wire.response_headers(answer.headers, False, self.target, path)
        headers.add("Connection", "Upgrade")
        headers.add("Upgrade", answer.headers.get("Upgrade") or "websocket")
        for name, value in extra:
            headers.add(name, value)
        self.browser = browser
        data = bytes(self.pending)
        self.pending.clear()
        self.service.touch(self.target, bytes_out=len(data))
        browser.write(headers.encode(f"HTTP/1.1 101 {answer.reason}") + data)
        if self.lost:  # the app answered and left at once: the browser gets what it sent
            browser.close()

    def send(self, data: bytes) -> None:
        self.service.touch(self.target, bytes_in=len(data))
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # The browser's side calls these when it is slow to take bytes, and the other way round.
    def pause_writing(self) -> None:
        if self.browser is not None:
            self.browser.pause_reading()

    def resume_writing(self) -> None:
        if self.browser is not None:
            self.browser.resume_reading()


class BrowserSide(_End):
    """The browser's end of a relayed websocket, once the handshake is done."""

    def __init__(self, session: SessionSide, on_close: Callable[[], None]) -> None:
        self.session = session
        self.on_close: Callable[[], None] | None = on_close

    def data_received(self, data: bytes) -> None:
        self.session.send(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.close()
        if self.on_close is not None:
            on_close, self.on_close = self.on_close, None
            on_close()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def pause_writing(self) -> None:
        self.session.pause_reading()  # the browser is slow to take the app's bytes

    def resume_writing(self) -> None:
        self.session.resume_reading()


async def connect(
    parts: Components, target: Target, path: str, headers: Any, remote_ip: str, protocol: str
) -> tuple[SessionSide, ResponseHead] | APIError:
    """Open the websocket to the session (counted against its owner, whoever holds the link):
    the app's side and its switch, or the refusal the browser gets. Once the browser is joined,
    its connection's close gives the count back (`release`)."""
    service = parts.proxy
    if not parts.websockets.acquire(target.user_id):
        return APIError(429, parts.websockets.refusal)
    out = wire.forward_headers(headers, headers.get("Host", ""), remote_ip, protocol, target)
    out.add("Connection", "Upgrade")
    out.add("Upgrade", headers.get("Upgrade") or "websocket")
    session: SessionSide | None = None
    status = 502
    try:
        _, opened = await asyncio.wait_for(
            asyncio.get_running_loop().create_connection(
                lambda: SessionSide(service, target), target.host, target.port
            ),
            service.connect_timeout,
        )
        session = opened
        assert opened.transport is not None
        opened.transport.write(out.encode(f"GET {wire.upstream_uri(target, path)} HTTP/1.1"))
        answer = await asyncio.wait_for(opened.answered, service.connect_timeout)
        status = answer.code
    except (OSError, TimeoutError, ValueError, HeadError) as e:
        service.counts.upstream_error(isinstance(e, TimeoutError))
    if status != 101 or session is None:
        # As for every refusal: the app's own status, or 502 when there was none.
        parts.websockets.release(target.user_id)
        if session is not None:
            session.close()
        refusal = APIError(status if 300 <= status < 599 else 502, wire.WEBSOCKET_REFUSED)
        service.counts.answered(refusal.status)
        return refusal
    service.counts.answered(101)
    service.touch(target)
    return session, answer
