"""One session's log as the server keeps it: the bounded tail of its output stream in a file of
the server's own, and what readers (GET /jobs/<id>/log/, the job websocket) take from it.

Offsets are absolute byte offsets in the whole stream since the session started, so an offset a
client holds stays valid when the oldest bytes are dropped: the file starts with a fixed-size
header naming the offset of its first kept byte (`start`), and `end` is `start` plus the bytes
kept. Appending past `max_bytes` drops the oldest bytes down to three quarters of it, so the
file is rewritten (through a temporary file, atomically) once per quarter of `max_bytes`
appended, never on every append.

Only the server writes here, and the name is the job id the server knows: nothing a session
sends reaches a path.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

HEADER_PREFIX = b"UWSLOG1 "
HEADER_DIGITS = 20
HEADER_BYTES = len(HEADER_PREFIX) + HEADER_DIGITS + 1
FILE_MODE = 0o600
FILE_NAME = re.compile(r"([0-9]{1,18})\.log")
OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC


class LogChunk(NamedTuple):
    """Bytes of the stream from `offset` to `next_offset`, with the bounds of what is kept."""

    offset: int
    next_offset: int
    start: int
    end: int
    data: bytes


def header(start: int) -> bytes:
    return HEADER_PREFIX + str(start).zfill(HEADER_DIGITS).encode() + b"\n"


def complete_utf8(data: bytes) -> int:
    """The length of `data` without an incomplete UTF-8 character at its end (one whose last
    bytes have not come yet). Bytes that are not UTF-8 at all count as complete: they decode to
    replacement characters, and waiting would not change that."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: its lead is further back
        if byte < 0x80:
            return len(data)
        needed = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
        return len(data) if back >= needed else len(data) - back
    return len(data)


def leading_continuations(data: bytes | bytearray) -> int:
    """How many bytes at the start of `data` continue a character cut off before it (0-3)."""
    count = 0
    while count < min(3, len(data)) and data[count] & 0xC0 == 0x80:
        count += 1
    return count


def decode(data: bytes) -> str:
    return data.decode("utf-8", "replace")


class LogTail:
    """The file <directory>/<job id>.log. Each call opens it afresh: no descriptor is held for a
    job between messages."""

    def __init__(self, directory: str, job_id: int, max_bytes: int) -> None:
        self.directory = directory
        self.path = os.path.join(directory, f"{int(job_id)}.log")
        self.max_bytes = max(1, max_bytes)

    @staticmethod
    def _start(fd: int) -> int:
        raw = os.pread(fd, HEADER_BYTES, 0)
        digits = raw[len(HEADER_PREFIX) : len(HEADER_PREFIX) + HEADER_DIGITS]
        if len(raw) != HEADER_BYTES or not raw.startswith(HEADER_PREFIX) or not digits.isdigit():
            raise ValueError(f"{raw[:40]!r} is not a log header")
        return int(digits)

    def bounds(self) -> tuple[int, int] | None:
        """(start, end) of what is kept; None when there is no log (nothing was ever written, or
        it has been removed)."""
        chunk = self.read(0, 0, final=True)
        return (chunk.start, chunk.end) if chunk is not None else None

    def append(self, data: bytes) -> int:
        """Add `data` at the end; the offset it starts at."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | OPEN_FLAGS, FILE_MODE)
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_BYTES:  # new (or cut short by a crash while made): start over
                os.ftruncate(fd, 0)
                os.pwrite(fd, header(0), 0)
                size = HEADER_BYTES
            start = self._start(fd)
            kept = size - HEADER_BYTES
            offset = start + kept
            if kept + len(data) <= self.max_bytes:
                os.pwrite(fd, data, size)
                return offset
            self._rewrite(fd, start, kept, data)
            return offset
        finally:
            os.close(fd)

    def _rewrite(self, fd: int, start: int, kept: int, data: bytes) -> None:
        """The newest bytes of the kept ones plus `data`, three quarters of max_bytes (or all of
        `data` up to max_bytes), in a new file that replaces the old one."""
        keep = max(self.max_bytes * 3 // 4, min(len(data), self.max_bytes))
        end = start + kept + len(data)
        from_old = max(0, keep - len(data))
        tail = os.pread(fd, from_old, HEADER_BYTES + kept - from_old) if from_old else b""
        tail += data[-keep:] if len(data) > keep else data
        # Begin at a character's start: the first kept byte is not half of one.
        tail = tail[leading_continuations(tail) :]
        temporary = self.path + ".tmp"
        out = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | OPEN_FLAGS, FILE_MODE)
        try:
            os.write(out, header(end - len(tail)) + tail)
        finally:
            os.close(out)
        os.replace(temporary, self.path)

    def read(self, offset: int, limit: int, final: bool = False) -> LogChunk | None:
        """Up to `limit` bytes from `offset` (from `start` when `offset` is older than what is
        kept). Unless `final` (no byte will follow), an incomplete character at the end is left
        for the next read. None when there is no log; ValueError when `offset` is past the end."""
        try:
            fd = os.open(self.path, os.O_RDONLY | OPEN_FLAGS)
        except FileNotFoundError:
            return None
        try:
            start = self._start(fd)
            end = start + os.fstat(fd).st_size - HEADER_BYTES
            if offset > end:
                raise ValueError(f"offset {offset} is past the end ({end})")
            offset = max(offset, start)
            data = os.pread(fd, max(0, min(limit, end - offset)), HEADER_BYTES + offset - start)
        finally:
            os.close(fd)
        if not (final and offset + len(data) == end):
            data = data[: complete_utf8(data)]
        return LogChunk(offset, offset + len(data), start, end, data)


class LogFollower:
    """What one reader (a job websocket) has not been sent yet: the newest `max_bytes` appended
    since it last took, with the offset they start at. Older bytes are dropped, so a slow reader
    costs a bounded amount; its next message then starts at a later offset (a gap it can fill
    with GET /jobs/<id>/log/)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(4, max_bytes)
        self.offset = 0
        self.pending = bytearray()
        self.cut = False  # the oldest pending bytes were dropped: they may start mid-character

    def feed(self, offset: int, data: bytes) -> None:
        if not self.pending or offset != self.offset + len(self.pending):
            self.pending.clear()
            self.offset = offset
        self.pending += data
        over = len(self.pending) - self.max_bytes
        if over > 0:
            del self.pending[:over]
            self.offset += over
            self.cut = True

    def take(self, final: bool = False) -> tuple[int, bytes] | None:
        """(offset, bytes) to send now, whole characters only unless `final`; None when nothing."""
        skip = leading_continuations(self.pending) if self.cut else 0
        data = bytes(self.pending[skip:])
        if not final:
            data = data[: complete_utf8(data)]
        if not data:
            return None
        offset = self.offset + skip
        del self.pending[: skip + len(data)]
        self.cut = False
        self.offset = offset + len(data)
        return offset, data
