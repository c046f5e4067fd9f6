"""The app's output, forwarded to the server: the helper follows the log file the app writes and
hands out what is new in bounded chunks for "log" messages (see protocol.py).

The server cannot be assumed to read the file itself (the session may run as another account,
or on a cluster node), so the bytes travel over the session channel. The app never waits for the
forwarding: it writes to its file as before, and when it writes faster than the helper forwards,
the helper skips ahead (and says how much it left out) rather than falling ever further behind.

Part of the helper (uws.sessions.helper), so it too imports neither tornado nor the server's
modules.
"""

from __future__ import annotations

import binascii
import os
from collections.abc import Callable
from typing import NamedTuple

from uws.sessions.helper_app import open_regular_file
from uws.sessions.protocol import LOG_BACKLOG_BYTES, LOG_CHUNK_BYTES, LOG_INTERVAL_SECONDS

# After skipping, this much of the newest output is still forwarded (a second's worth).
KEPT_AFTER_SKIP = LOG_BACKLOG_BYTES // 4
# Chunks sent at once when the app has ended: enough for the whole backlog.
FLUSH_CHUNKS = LOG_BACKLOG_BYTES // LOG_CHUNK_BYTES + 2

SendLog = Callable[[str, int], bool]  # (base64 data, bytes skipped) -> whether it was queued


class Chunk(NamedTuple):
    data: bytes
    skipped: int  # bytes of output left out just before `data`
    position: int  # where the file has been read to after `data`


def encode(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


class OutputForwarder:
    """Follows one file from its start. Nothing counts as forwarded until the link has queued it,
    so a full send queue only delays the output."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None
        self.position = 0
        self.next_send = 0.0
        self.refused = False  # the path is not a regular file: never followed

    def open(self) -> int | None:
        """The file, opened once (the helper opens it as soon as the app has started, so the
        app cannot swap another file in first). Never blocks: the app could put a FIFO in its
        place, and a helper stuck opening it would no longer enforce the time limit."""
        if self.fd is None and not self.refused:
            if not os.path.lexists(self.path):
                return None  # not written yet
            self.fd = open_regular_file(self.path)
            self.refused = self.fd is None
        return self.fd

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def read(self) -> Chunk | None:
        """The next chunk to forward; None when there is nothing new."""
        fd = self.open()
        if fd is None:
            return None
        try:
            size = os.fstat(fd).st_size
        except OSError:
            return None
        if size < self.position:
            self.position = 0  # the app truncated its file: follow it from its new start
        position, skipped = self.position, 0
        if size - position > LOG_BACKLOG_BYTES:
            skipped = size - position - KEPT_AFTER_SKIP
            position += skipped
        try:
            data = os.pread(fd, LOG_CHUNK_BYTES, position)
        except OSError:
            return None
        if not data:
            return None
        if skipped:
            # Resume at a line's start when there is one in sight: no half line after the gap.
            newline = data.find(b"\n")
            if 0 <= newline < len(data) - 1:
                skipped += newline + 1
                position += newline + 1
                data = data[newline + 1 :]
        return Chunk(data, skipped, position + len(data))

    def forward(self, send: SendLog, chunks: int = 1) -> None:
        """Send up to `chunks` chunks; stop at the first the link could not queue (it is read
        again next time)."""
        for _ in range(chunks):
            chunk = self.read()
            if chunk is None or not send(encode(chunk.data), chunk.skipped):
                return
            self.position = chunk.position

    def forward_due(self, now: float, send: SendLog) -> None:
        """One chunk, at most every LOG_INTERVAL_SECONDS."""
        if now >= self.next_send:
            self.next_send = now + LOG_INTERVAL_SECONDS
            self.forward(send)

    def flush(self, send: SendLog) -> None:
        """What is left once the app has ended (at most the backlog), then the file is let go."""
        self.forward(send, FLUSH_CHUNKS)
        self.close()
