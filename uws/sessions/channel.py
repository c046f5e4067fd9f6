"""The server end of the ZeroMQ channel to session helpers (see protocol.py).

The socket is bound only while this server leads: bind() starts a term (a new epoch, nothing
remembered of any helper), close() ends it, and the same object may bind again later.
"""

from __future__ import annotations

import asyncio
import errno
import grp
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any

import zmq
import zmq.asyncio

from . import protocol

log = logging.getLogger("uws.channel")

SecretLookup = Callable[[int], Awaitable[str | None]]
Handler = Callable[[int, dict[str, Any]], Awaitable[None]]

# Seconds before a receive loop that ended unexpectedly is started again.
RESTART_DELAY = 0.5
# Seconds between warnings about dropped messages (a flood must not flood the log as well).
DROP_WARNING_INTERVAL = 10.0
# The socket's directory: group members may enter it (and so connect); nobody else may.
SOCKET_DIR_MODE = 0o750
SOCKET_MODE = 0o660
# Messages kept for a helper not heard from yet ("report", "stop": only the latest matter).
PENDING_PER_JOB = 4


class ChannelError(Exception):
    """The channel cannot be set up as configured (a message for the operator)."""


def default_url(data_dir: str) -> str:
    """ipc://<data_dir>-channel/sessions.sock: beside the data directory, not in it (helpers of
    other accounts must reach the socket, and the data directory is for the server alone)."""
    return "ipc://" + os.path.join(data_dir.rstrip("/") + "-channel", "sessions.sock")


def check_peers(url: str, peers: list[str]) -> list[str]:
    """The endpoints helpers are given besides (or instead of) url, checked: one scheme for
    all, since a helper speaks CURVE to every endpoint or to none."""
    scheme = url.split("://", 1)[0]
    seen: list[str] = []
    for peer in peers:
        if not (peer.startswith(("ipc://", "tcp://")) and len(peer) > len("ipc://")):
            raise ChannelError(f"session_channel_peers: {peer!r} is not ipc://<path> or tcp://<host>:<port>")
        if peer.split("://", 1)[0] != scheme:
            raise ChannelError(
                f"session_channel_peers: {peer!r} and session_channel_url {url!r} must both be"
                " tcp:// or both ipc://"
            )
        if "*" in peer:
            raise ChannelError(f"session_channel_peers: {peer!r} names no host a helper can connect to")
        if peer not in seen:
            seen.append(peer)
    if seen and url not in seen and "*" not in url:
        log.warning(
            "session_channel_peers does not list session_channel_url (%s): helpers reach this"
            " server only if one of the peers listed leads to it",
            url,
        )
    return seen


def group_id(name: str) -> int:
    """The gid of the group allowed to reach the ipc socket; the server's own group when empty."""
    if not name:
        return os.getegid()
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ChannelError(f"session_group {name!r} is not a group on this machine") from None


def prepare_socket_dir(socket_path: str, gid: int, clear: bool = True) -> None:
    """Make the ipc socket's directory reachable by the server and group gid only.

    The directory must be the socket's own (it is made if missing): its mode and group are
    set here, so a shared directory such as /tmp must never be given. `clear`: remove a socket
    left there (only when binding: a standby sharing the directory must not take the leader's)."""
    directory = os.path.dirname(os.path.abspath(socket_path))
    name = os.path.basename(socket_path)
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    try:
        os.mkdir(directory, SOCKET_DIR_MODE)
    except FileExistsError:
        pass
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise ChannelError(f"session channel directory {directory}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise ChannelError(
                f"session channel directory {directory} must belong to the server's account (uid {os.geteuid()})"
            )
        others = [entry for entry in os.listdir(fd) if entry != name]
        if others:
            raise ChannelError(
                f"session channel directory {directory} must hold nothing but {name} (found {others[0]!r});"
                " give the socket a directory of its own"
            )
        try:
            os.fchown(fd, -1, gid)
        except PermissionError:
            raise ChannelError(
                f"cannot give {directory} to group {gid}: the server's account must be a member of session_group"
            ) from None
        os.fchmod(fd, SOCKET_DIR_MODE)
    finally:
        os.close(fd)
    path = os.path.join(directory, name)
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ChannelError(f"{path} exists and is not a socket")
        if clear:
            os.unlink(path)  # left by a previous run; helpers reconnect to the new socket


def load_curve_keys(path: str) -> tuple[bytes, bytes]:
    """The server's CURVE key pair (public, secret), kept in a 0600 file; made on first use."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        pass
    else:
        public, secret = zmq.curve_keypair()
        with os.fdopen(fd, "wb") as f:
            f.write(public + b"\n" + secret + b"\n")
            f.flush()
            os.fsync(f.fileno())
        return public, secret
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise ChannelError(f"cannot read the session channel key {path}: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as f:
        if os.fstat(f.fileno()).st_uid != os.geteuid():
            raise ChannelError(f"{path} must belong to the server's account")
        os.fchmod(f.fileno(), 0o600)
        lines = f.read().split()
    if len(lines) != 2 or not all(len(key) == 40 for key in lines):
        raise ChannelError(f"{path} is not a session channel key file (two Z85 keys, one a line)")
    return lines[0], lines[1]


class SessionChannel:
    def __init__(
        self,
        url: str,
        secret_for: SecretLookup,
        handler: Handler,
        group: str = "",
        key_file: str = "",
    ) -> None:
        self.url = url
        self.secret_for = secret_for
        self.handler = handler
        self.socket: Any = None
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.restarts = 0
        self.dropped = 0
        self._dropped_since_warning = 0
        self._last_drop_warning = float("-inf")
        # Messages that verified but were signed under another term: answered with "welcome".
        self.challenged = 0
        # This term's: its epoch, and what it knows of the helpers (forgotten by close()).
        self.epoch = ""
        self._term_started = 0.0
        self.guard = protocol.ReplayGuard()
        # job id -> routing identity of the last peer whose message for that job verified
        self.peers: dict[int, bytes] = {}
        # job id -> messages for a helper not heard from yet (after a restart, until it speaks)
        self.pending: dict[int, list[tuple[str, dict[str, Any]]]] = {}
        self.public_key = b""
        self._secret_key = b""
        # Checked here, at start-up, so a misconfiguration stops the server with a clear message.
        if not (self.is_tcp or self.ipc_path):
            raise ChannelError(
                f"session_channel_url must be ipc://<path> or tcp://<address>:<port>, not {url!r}"
            )
        if (self.ipc_path or "").startswith("@"):
            raise ChannelError("an abstract ipc:// socket (ipc://@...) has no access control; give a path")
        self._gid = group_id(group)
        if self.ipc_path is not None:
            prepare_socket_dir(self.ipc_path, self._gid, clear=False)
        if self.is_tcp:
            if not key_file:
                raise ChannelError("a tcp:// session channel needs a key file")
            self.public_key, self._secret_key = load_curve_keys(key_file)

    @property
    def is_tcp(self) -> bool:
        return self.url.startswith("tcp://")

    @property
    def socket_gid(self) -> int | None:
        """The group whose members may reach the socket; None when it is not an ipc:// one."""
        return self._gid if self.ipc_path is not None else None

    @property
    def ipc_path(self) -> str | None:
        return self.url[len("ipc://") :] if self.url.startswith("ipc://") else None

    @property
    def bound(self) -> bool:
        return self.socket is not None

    def bind(self) -> None:
        """Bind the ROUTER socket and start a term; call from the running event loop. Raises
        zmq.ZMQError (EADDRINUSE) when a tcp:// port is still held (by this process's previous
        term a moment ago, or by another server)."""
        if self.socket is not None:
            return
        if self.ipc_path is not None:
            prepare_socket_dir(self.ipc_path, self._gid)
        socket = zmq.asyncio.Context.instance().socket(zmq.ROUTER)
        try:
            self._configure(socket)
            socket.bind(self.url)
        except BaseException:
            socket.close(0)
            raise
        self.socket = socket
        if self.ipc_path is not None:
            os.chown(self.ipc_path, -1, self._gid)
            os.chmod(self.ipc_path, SOCKET_MODE)
        self._forget_term()
        # A new epoch: what any helper signed before this moment (captured, say, and replayed
        # now) is refused, whatever this process or another remembered of it.
        self.epoch = protocol.new_epoch()
        self._term_started = time.time()
        self._closed = False
        self._start_receiving()

    async def bind_when_free(self, timeout: float = 5.0) -> None:
        """bind(), retried while the address is in use: a tcp:// port this process let go of
        a moment ago is freed by ZeroMQ's I/O thread shortly after close()."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.bind()
                return
            except zmq.ZMQError as e:
                if e.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(0.05)

    def _configure(self, socket: Any) -> None:
        socket.setsockopt(zmq.LINGER, 0)
        # A helper that reconnects (its old connection not yet noticed as gone) takes its
        # identity back. Nobody else can take it: the identity holds 128 random bits that only
        # travel inside the helper's connection (encrypted on tcp://), and sends go only to the
        # identity whose messages verified.
        socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
        socket.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        for opt, value in (("HEARTBEAT_IVL", 5000), ("HEARTBEAT_TIMEOUT", 15000)):
            if hasattr(zmq, opt):  # notice vanished tcp peers, so their queues are freed
                socket.setsockopt(getattr(zmq, opt), value)
        if self.is_tcp:
            # Tokens and stop requests cross the cluster network: encrypt them. Any client key
            # is let in; what a helper may say is decided by its job's HMAC secret.
            socket.setsockopt(zmq.CURVE_SERVER, 1)
            socket.setsockopt(zmq.CURVE_SECRETKEY, self._secret_key)

    # ---- receiving ---------------------------------------------------------------------------
    def _start_receiving(self) -> None:
        if self._closed or self.socket is None or (self._task is not None and not self._task.done()):
            return
        self._task = asyncio.ensure_future(self._receive_loop())
        self._task.add_done_callback(self._receiver_ended)

    def _receiver_ended(self, task: asyncio.Task[None]) -> None:
        """Supervision: without its receive loop the server would never hear from a helper
        again, so a loop that ends for any reason but close() is started again."""
        if self._closed:
            return
        error = None if task.cancelled() else task.exception()
        log.error(
            "The session channel's receive loop ended unexpectedly; restarting it",
            exc_info=(type(error), error, error.__traceback__) if error else None,
        )
        self.restarts += 1
        asyncio.get_running_loop().call_later(RESTART_DELAY, self._start_receiving)

    async def _receive_loop(self) -> None:
        while True:
            try:
                frames = await self.socket.recv_multipart()
            except zmq.ZMQError:
                log.exception("session channel receive failed")
                await asyncio.sleep(0.1)
                continue
            try:
                await self._dispatch(frames)
            except Exception:
                # One message's trouble (a database error looking up its secret, say) must
                # not stop the channel for every other session.
                log.exception("Handling a session message failed; the channel goes on")

    async def _dispatch(self, frames: list[bytes]) -> None:
        if len(frames) < 3:
            self._drop(frames[0] if frames else b"")
            return
        ident, body = frames[0], frames[1:]
        job_id = protocol.job_id_from_identity(ident)
        secret = await self.secret_for(job_id) if job_id is not None else None
        message = protocol.decode(secret, body) if secret else None
        if job_id is None or secret is None or message is None or message.get("job_id") != job_id:
            self._drop(ident)
            return
        # Helpers that know of terms put "epoch" in every message (older ones never do).
        knows_terms = "epoch" in message
        if knows_terms and message["epoch"] != self.epoch:
            # Signed by the job's helper, but not under this term: a helper that has not heard
            # of it yet, or a message captured before and replayed. Only a fresh one is taken:
            # the sender is asked for it, and nothing else happens.
            self.challenged += 1
            await self._welcome(ident, job_id, secret, message)
            return
        if not self.guard.accept(job_id, message):
            self._drop(ident)
            return
        # Only now does this peer become the one the server talks to about the job.
        self.peers[job_id] = ident
        if knows_terms and message.get("type") == "hello":
            await self._welcome(ident, job_id, secret, message)  # it knows it has been heard
        for waiting_secret, waiting in self.pending.pop(job_id, []):
            await self.send(job_id, waiting_secret, waiting)
        if message.get("type") == "exited":
            await self.send(job_id, secret, {"type": "ack", "ack_seq": message.get("seq")})
        try:
            await self.handler(job_id, message)
        except Exception:
            log.exception("Handling %s from job %s failed", message.get("type"), job_id)

    def _drop(self, ident: bytes) -> None:
        self.dropped += 1
        self._dropped_since_warning += 1
        now = time.monotonic()
        if now - self._last_drop_warning < DROP_WARNING_INTERVAL:
            return
        log.warning(
            "Dropped %d session message(s) that failed verification (signature, job, age or order;"
            " last sender %r)",
            self._dropped_since_warning,
            ident[:40],
        )
        self._last_drop_warning = now
        self._dropped_since_warning = 0

    # ---- sending -----------------------------------------------------------------------------
    def _stamp(self, job_id: int, message: dict[str, Any]) -> dict[str, Any]:
        """The message as this term sends it: its seq, its epoch, and this term as the sender
        (a helper's guard takes a new sender only if it started no earlier than the last)."""
        self._seq += 1
        return {
            **message,
            "job_id": job_id,
            "seq": self._seq,
            "epoch": self.epoch,
            "sender": f"{protocol.SENDER}.{self.epoch[:8]}",
            "started": self._term_started,
        }

    async def _welcome(self, ident: bytes, job_id: int, secret: str, message: dict[str, Any]) -> None:
        """This term's epoch, to the identity `message` came from, echoing its nonce: only the
        helper that chose that nonce takes it (see "Terms" in protocol.py)."""
        nonce = message.get("nonce")
        if self.socket is None or not isinstance(nonce, str):
            return
        welcome = self._stamp(job_id, {"type": "welcome", "nonce": nonce[:64]})
        try:
            await self.socket.send_multipart([ident, *protocol.encode(secret, welcome)])
        except zmq.ZMQError:
            log.debug("Job %s: welcome not delivered", job_id)

    async def send(self, job_id: int, secret: str, message: dict[str, Any]) -> bool:
        """Send to the job's helper. A helper not heard from yet gets the message (the last
        few) when its first verified message arrives; then the answer is False."""
        peer = self.peers.get(job_id)
        if self.socket is None:
            return False
        if peer is None:
            waiting = self.pending.setdefault(job_id, [])
            waiting.append((secret, message))
            del waiting[:-PENDING_PER_JOB]
            log.debug("Job %s helper not heard from yet; %s sent when it is", job_id, message.get("type"))
            return False
        message = self._stamp(job_id, message)
        try:
            await self.socket.send_multipart([peer, *protocol.encode(secret, message)])
        except zmq.ZMQError:
            log.debug("Job %s helper not connected; %s not delivered", job_id, message["type"])
            return False
        return True

    def forget(self, job_id: int) -> None:
        """The job is over: drop what the channel remembers about its helper."""
        self.guard.forget(job_id)
        self.peers.pop(job_id, None)
        self.pending.pop(job_id, None)

    def _forget_term(self) -> None:
        self.guard = protocol.ReplayGuard()
        self.peers.clear()
        self.pending.clear()

    def close(self) -> None:
        """Unbind and end the term: another server (or this one, later) may bind next."""
        self._closed = True
        if self._task:
            self._task.cancel()
            self._task = None
        if self.socket is not None:
            self.socket.close(0)
            self.socket = None
        self._forget_term()
        self.epoch = ""
