"""The session helper's link to the server: one ZeroMQ DEALER socket carrying signed messages
both ways (uws.sessions.protocol), and its monitor, which tells connections from disconnections.

Part of the helper (uws.sessions.helper), so it too imports neither tornado nor the server's
modules.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import zmq

from uws.sessions import protocol
from uws.sessions.helper_app import log


class ServerLink:
    """The helper's end of the session channel. Sending never blocks: when the queue is full
    (the server is away for long) a message is dropped and counted."""

    def __init__(self, endpoint: str, secret: str, job_id: int) -> None:
        self.endpoint = endpoint
        self.secret = secret
        self.job_id = job_id
        self.connects = 0
        self.connected = False
        self.dropped = 0
        self.replay_guard = protocol.ReplayGuard()
        self.rejected = 0
        self.ctx: zmq.Context[Any] | None = None
        self.sock: zmq.Socket[Any] | None = None
        self.monitor: zmq.Socket[Any] | None = None
        self.poller = zmq.Poller()

    def connect(self, server_key: str = "") -> None:
        """`server_key`: the server's CURVE public key (Z85) on a tcp:// channel."""
        self.ctx = zmq.Context(io_threads=1)
        sock = self.ctx.socket(zmq.DEALER)
        # A fresh random identity: nobody can claim it first, or take it over, to get this
        # job's messages.
        sock.setsockopt(zmq.ROUTING_ID, protocol.identity(self.job_id))
        sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        if server_key:
            # tcp://: encrypted, and only the server holding the matching secret key is spoken to.
            public, secret = zmq.curve_keypair()
            sock.setsockopt(zmq.CURVE_SERVERKEY, server_key.encode())
            sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        sock.setsockopt(zmq.LINGER, 500)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sock.setsockopt(zmq.IMMEDIATE, 0)
        sock.setsockopt(zmq.SNDHWM, 200)
        sock.setsockopt(zmq.RCVHWM, 200)
        for opt, value in (("HEARTBEAT_IVL", 5000), ("HEARTBEAT_TIMEOUT", 15000)):
            if hasattr(zmq, opt):  # ZMTP-level pings: notice a vanished tcp peer
                sock.setsockopt(getattr(zmq, opt), value)
        self.monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        sock.connect(self.endpoint)
        self.sock = sock
        self.poller.register(sock, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.disable_monitor()
        if self.monitor is not None:
            self.monitor.close(linger=0)
        if self.sock is not None:
            self.sock.close()
        if self.ctx is not None:
            self.ctx.term()

    def send(self, message: dict[str, Any]) -> bool:
        """Whether the message was queued."""
        assert self.sock is not None
        try:
            self.sock.send_multipart(protocol.encode(self.secret, message), flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log(
                    f"job {self.job_id}: send queue full, dropped {message['type']} "
                    f"({self.dropped} dropped so far)"
                )
            return False

    def wait(self, seconds: float) -> tuple[bool, bool]:
        """Waits up to `seconds` for the monitor or the socket: whether each has something."""
        events = dict(self.poller.poll(int(seconds * 1000)))
        return self.monitor in events, self.sock in events

    def read_monitor(self, on_reconnect: Callable[[], object]) -> None:
        """Notes connections and disconnections; `on_reconnect` runs on each connection after
        the first (the first hello was queued before the first connection)."""
        # Parsed here rather than with zmq.utils.monitor, which pulls in asyncio (~4 MB).
        assert self.monitor is not None
        while True:
            try:
                frames = self.monitor.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2 or len(frames[0]) != 6:
                continue
            event, _value = struct.unpack("=hi", frames[0])
            if event == zmq.EVENT_CONNECTED:
                self.connects += 1
                self.connected = True
                if self.connects > 1:
                    log(f"job {self.job_id}: reconnected to the server")
                    on_reconnect()
            elif event == zmq.EVENT_DISCONNECTED and self.connected:
                self.connected = False
                log(f"job {self.job_id}: lost the server; messages queue until it is back")

    def receive(self, handle: Callable[[dict[str, Any]], None]) -> None:
        """Hands each waiting message that verifies (signature, job, age, order) to `handle`;
        drops the others."""
        assert self.sock is not None
        while True:
            try:
                frames = self.sock.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            message = protocol.decode(self.secret, frames)
            if (
                message is None
                or message.get("job_id", self.job_id) != self.job_id
                or not self.replay_guard.accept("server", message)
            ):
                self.rejected += 1
                if self.rejected <= 10 or self.rejected % 100 == 0:
                    log(
                        f"job {self.job_id}: dropped a message that failed verification (signature, "
                        f"job, age or order; {len(frames)} frames; {self.rejected} so far)"
                    )
                continue
            handle(message)
