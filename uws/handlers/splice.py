"""The front door's websocket relay: the app's handshake answer, then bytes both ways."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .wire import MAX_HEAD

if TYPE_CHECKING:
    from .front import FrontConnection


class WebSocketUpstream(asyncio.Protocol):
    """The app's side of a relayed websocket: its handshake answer, then bytes both ways with
    back-pressure (a side that is slow to take bytes stops the other side being read)."""

    def __init__(self, client: FrontConnection, target: Any) -> None:
        self.client = client
        self.target = target
        self.proxy = client.front.parts.proxy
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
