"""The session helper's link to the server: one ZeroMQ DEALER socket carrying signed messages
both ways (uws.sessions.protocol), connected to every endpoint the helper was given, and its
monitor, which tells connections from disconnections.

With several endpoints (one per server of a high-availability pair) only the leading server
binds; ZMQ_IMMEDIATE keeps messages off connections that are not up, so everything goes to
whichever server is there. Whether that server has heard this helper in its current term is
the link's `confirmed` (see "Terms" in protocol.py).

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

# A connection whose server stopped answering ZMTP pings is given up after HEARTBEAT_TIMEOUT
# (ms): until then ZeroMQ would still hand it messages (a tcp server whose machine died says
# nothing). Pings are ZeroMQ's own, a few bytes a second per helper.
HEARTBEAT_IVL = 2000
HEARTBEAT_TIMEOUT = 6000
# Reconnection attempts back off up to this (ms): a server that starts leading hears every
# helper within about this long of binding.
RECONNECT_IVL_MAX = 1000


class ServerLink:
    """The helper's end of the session channel. Sending never blocks: a message no server can
    take now (none connected, or its queue full) is dropped and counted."""

    def __init__(self, endpoints: list[str] | str, secret: str, job_id: int) -> None:
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        self.secret = secret
        self.job_id = job_id
        self.connects = 0
        self.up: set[str] = set()  # endpoints whose connection is up (handshake done)
        self.dropped = 0  # refused by a full queue
        self.unsent = 0  # sent while no server was connected
        self.replay_guard = protocol.ReplayGuard()
        self.rejected = 0
        # The server's term this helper was last welcomed to; the nonce of this connection.
        self.epoch = ""
        self.nonce = protocol.new_epoch()
        self.confirmed = False  # the server of the current connection has welcomed this nonce
        self.ctx: zmq.Context[Any] | None = None
        self.sock: zmq.Socket[Any] | None = None
        self.monitor: zmq.Socket[Any] | None = None
        self.poller = zmq.Poller()

    @property
    def connected(self) -> bool:
        return bool(self.up)

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
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX)
        # Only to a connected server: with several endpoints, one that is not bound (a standby)
        # must not collect messages in a queue of its own.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDHWM, 200)
        sock.setsockopt(zmq.RCVHWM, 200)
        for opt, value in (("HEARTBEAT_IVL", HEARTBEAT_IVL), ("HEARTBEAT_TIMEOUT", HEARTBEAT_TIMEOUT)):
            if hasattr(zmq, opt):  # ZMTP-level pings: notice a vanished tcp peer
                sock.setsockopt(getattr(zmq, opt), value)
        self.monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        for endpoint in self.endpoints:
            sock.connect(endpoint)
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
        """Whether the message was queued (to a connected server)."""
        assert self.sock is not None
        message = {**message, "epoch": self.epoch, "nonce": self.nonce}
        try:
            self.sock.send_multipart(protocol.encode(self.secret, message), flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            if not self.up:
                self.unsent += 1  # no server to take it: expected while none is there
                return False
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

    def read_monitor(self, on_connect: Callable[[], object]) -> None:
        """Notes connections and disconnections; `on_connect` runs on each connection made
        (the helper says "hello" on it: the server there may be one that has never heard it)."""
        # Parsed here rather than with zmq.utils.monitor, which pulls in asyncio (~4 MB).
        assert self.monitor is not None
        while True:
            try:
                frames = self.monitor.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2 or len(frames[0]) != 6:
                continue
            event, _value = struct.unpack("=Hi", frames[0])
            endpoint = frames[1].decode("utf-8", "replace")
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connects += 1
                self.up.add(endpoint)
                # A new connection may lead to another server (a new leader): until that server
                # welcomes this nonce, nothing says it takes what this helper sends.
                self.nonce = protocol.new_epoch()
                self.confirmed = False
                if self.connects > 1:
                    log(f"job {self.job_id}: connected to the server at {endpoint}")
                on_connect()
            elif event == zmq.EVENT_DISCONNECTED and endpoint in self.up:
                self.up.discard(endpoint)
                if not self.up:
                    self.confirmed = False
                    log(f"job {self.job_id}: lost the server; waiting for one to come back")

    def receive(self, handle: Callable[[dict[str, Any]], None]) -> None:
        """Hands each waiting message that verifies (signature, job, term, age, order) to
        `handle`; drops the others. A "welcome" that echoes this connection's nonce moves the
        link to its term (`handle` gets it too, and tells from `epoch_changed` what to do)."""
        assert self.sock is not None
        while True:
            try:
                frames = self.sock.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            message = protocol.decode(self.secret, frames)
            if message is not None and message.get("job_id", self.job_id) == self.job_id:
                if message["type"] == "welcome":
                    message = self._welcome(message)
                elif message.get("epoch", "") != self.epoch:
                    message = None  # from another term: maybe captured before a handover
            if message is None or not self.replay_guard.accept("server", message):
                self.rejected += 1
                if self.rejected <= 10 or self.rejected % 100 == 0:
                    log(
                        f"job {self.job_id}: dropped a message that failed verification (signature, "
                        f"job, term, age or order; {len(frames)} frames; {self.rejected} so far)"
                    )
                continue
            if message["type"] == "welcome":
                message["epoch_changed"] = message["epoch"] != self.epoch
                self.epoch = message["epoch"]
                self.confirmed = True
            handle(message)

    def _welcome(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """The welcome, when it answers this connection's nonce; None otherwise."""
        epoch = message.get("epoch")
        if message.get("nonce") != self.nonce or not isinstance(epoch, str) or not epoch:
            return None
        if epoch != self.epoch:
            # Another term: another server process, whose seqs start afresh. Its freshness is
            # the nonce it echoed, not its clock.
            self.replay_guard.forget("server")
        return message
