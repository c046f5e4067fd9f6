"""Ending a client connection without a reset (a lingering close, as nginx does it).

A socket closed while bytes it has not read are waiting, or that receives bytes after it is
closed, makes the kernel answer with a reset (RST). A reset can reach the client before it has
read the server's last answer, and destroy it; or meet the next request of a client that took
the connection for still open. So the server ends a connection in three steps: it shuts its
sending side (the client reads the answer, then the end of the connection), reads and drops
what the client still sends until the client closes its side too (or for a bounded time and
amount), and only then closes the socket.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

LINGER_SECONDS = 2.0  # the longest a connection is read (and ignored) after the server ends it
LINGER_BYTES = 16 * 1024 * 1024  # and the most read: a client that sends more meets the reset
_READ = 65536


def close_gently(sock: socket.socket, closed: Callable[[], None]) -> None:
    """End the connection on `sock` (non-blocking; its descriptor no longer watched by anyone
    else) without a reset; `closed` is called once the socket is closed."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:  # not connected any more (the client reset it): nothing to linger for
        sock.close()
        closed()
        return
    _Lingering(sock, closed)


class _Lingering:
    def __init__(self, sock: socket.socket, closed: Callable[[], None]) -> None:
        self.sock = sock
        self.closed = closed
        self.left = LINGER_BYTES
        self.loop = asyncio.get_running_loop()
        self.fd = sock.fileno()
        self.loop.add_reader(self.fd, self._read)
        self.timer = self.loop.call_later(LINGER_SECONDS, self._close)

    def _read(self) -> None:
        try:
            data = self.sock.recv(_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # a reset: the client has gone
            data = b""
        self.left -= len(data)
        if not data or self.left <= 0:
            self._close()

    def _close(self) -> None:
        if self.fd < 0:
            return
        self.timer.cancel()
        self.loop.remove_reader(self.fd)
        self.fd = -1
        self.sock.close()
        self.closed()
