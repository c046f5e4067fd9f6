"""Session logs in process: the server's bounded tail file (uws.sessions.logtail), what a helper's
"log" message may cost (SessionLogs.receive) and the helper's side, which follows the app's file
and skips ahead when the app writes faster than it forwards (uws.sessions.helper_output)."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest

from uws.sessions.helper_output import KEPT_AFTER_SKIP, OutputForwarder
from uws.sessions.logs import MESSAGE_COST, SessionLogs
from uws.sessions.logtail import HEADER_BYTES, LogFollower, LogTail, complete_utf8
from uws.sessions.protocol import LOG_BACKLOG_BYTES, LOG_CHUNK_BYTES, MAX_MESSAGE_BYTES
from uws.sessions.record import LiveSession

# ---- the tail --------------------------------------------------------------------------------


def test_offsets_are_absolute_and_the_tail_stays_bounded(tmp_path: Any) -> None:
    tail = LogTail(str(tmp_path), 7, max_bytes=1000)
    assert tail.bounds() is None and tail.read(0, 100) is None
    stream = b""
    for i in range(300):
        line = f"line {i:04d}\n".encode()
        assert tail.append(line) == len(stream)
        stream += line
        assert os.path.getsize(tail.path) <= HEADER_BYTES + 1000
    start, end = tail.bounds()  # type: ignore[misc]
    assert end == len(stream) and 750 <= end - start <= 1000
    chunk = tail.read(start, 10_000)
    assert chunk is not None and chunk.data == stream[start:] and chunk.next_offset == end
    # An offset older than the tail: the answer starts where the tail does.
    assert tail.read(0, 10).offset == start  # type: ignore[union-attr]
    assert tail.read(end, 10).data == b""  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        tail.read(end + 1, 10)
    assert oct(os.stat(tail.path).st_mode & 0o777) == "0o600"


def test_one_append_larger_than_the_tail_keeps_its_newest_bytes(tmp_path: Any) -> None:
    tail = LogTail(str(tmp_path), 8, max_bytes=100)
    tail.append(b"a" * 50)
    assert tail.append(b"0123456789" * 30) == 50
    assert tail.bounds() == (250, 350)
    assert tail.read(0, 1000).data == (b"0123456789" * 10)  # type: ignore[union-attr]


def test_a_trim_never_starts_inside_a_character(tmp_path: Any) -> None:
    tail = LogTail(str(tmp_path), 9, max_bytes=8)
    tail.append("ab✓✓".encode())  # 8 bytes
    tail.append(b"c")  # keeps 6 bytes: "b" is cut, then the first ✓ would be cut in half
    start, end = tail.bounds()  # type: ignore[misc]
    assert tail.read(start, 100).data.decode() == "✓c"  # type: ignore[union-attr]
    assert end == 9


def test_reads_do_not_split_characters_unless_final(tmp_path: Any) -> None:
    tail = LogTail(str(tmp_path), 10, max_bytes=1000)
    tail.append("x✓".encode())
    cut = tail.read(0, 3)  # "x" and two of ✓'s three bytes
    assert cut is not None and cut.data == b"x" and cut.next_offset == 1
    tail.append(b"\xe2\x9c")  # half a character: it may still be completed
    assert tail.read(4, 100).data == b""  # type: ignore[union-attr]
    assert tail.read(4, 100, final=True).data == b"\xe2\x9c"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "data,length",
    [
        (b"", 0),
        (b"abc", 3),
        ("a✓".encode(), 4),
        ("a✓".encode()[:-1], 1),
        ("a✓".encode()[:-2], 1),
        ("é".encode()[:1], 0),
        ("😀".encode()[:3], 0),
        ("😀".encode(), 4),
        (b"\xff", 1),  # not UTF-8: waiting would not help
        (b"\x80\x80\x80\x80", 4),
    ],
)
def test_complete_utf8(data: bytes, length: int) -> None:
    assert complete_utf8(data) == length


def test_a_follower_keeps_the_newest_bytes_and_whole_characters() -> None:
    follower = LogFollower(max_bytes=8)
    follower.feed(100, b"abcd")
    assert follower.take() == (100, b"abcd")
    assert follower.take() is None
    follower.feed(104, "ef✓".encode()[:-1])
    assert follower.take() == (104, b"ef")  # the half character waits
    follower.feed(108, "✓".encode()[-1:] + b"0123456789")  # more than 8 bytes pending
    offset, data = follower.take()  # type: ignore[misc]
    assert data == b"23456789" and offset == 111


# ---- what a helper's messages may cost --------------------------------------------------------


def make_logs(tmp_path: Any, **options: Any) -> SessionLogs:
    return SessionLogs(None, str(tmp_path), **options)  # type: ignore[arg-type]


def message(data: bytes, skipped: int = 0) -> dict[str, Any]:
    return {"type": "log", "data": base64.b64encode(data).decode(), "skipped": skipped}


def kept(logs: SessionLogs, job_id: int) -> bytes:
    chunk = logs.tail(job_id).read(0, 10**7, final=True)
    return chunk.data if chunk else b""


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "log"},
        {"type": "log", "data": 12},
        {"type": "log", "data": "not base64!"},
        {"type": "log", "data": "QUJD"[:3]},
        {"type": "log", "data": "QUJD", "skipped": -1},
        {"type": "log", "data": "QUJD", "skipped": True},
        {"type": "log", "data": "QUJD", "skipped": 2**60},
        {"type": "log", "data": "QUJD", "skipped": "5"},
        message(b"x" * (LOG_CHUNK_BYTES + 1)),
        {"type": "log", "data": "QUJD" * (MAX_MESSAGE_BYTES // 4)},
        {"type": "log", "data": "QU\u00e9D"},
    ],
)
def test_malformed_messages_write_nothing(tmp_path: Any, bad: dict[str, Any]) -> None:
    logs = make_logs(tmp_path)
    logs.receive(LiveSession(3, owner=1), bad)
    assert logs.tail(3).bounds() is None


def test_a_session_over_its_budget_loses_only_its_own_output(tmp_path: Any) -> None:
    logs = make_logs(tmp_path, rate_bytes_per_second=1, burst_bytes=3 * LOG_CHUNK_BYTES)
    greedy, calm = LiveSession(1, owner=1), LiveSession(2, owner=1)
    chunk = b"y" * LOG_CHUNK_BYTES
    for _ in range(10):
        logs.receive(greedy, message(chunk))
    logs.receive(calm, message(b"calm\n"))
    assert kept(logs, 1) == chunk * 3
    assert kept(logs, 2) == b"calm\n"
    assert greedy.log_lost == 7 * LOG_CHUNK_BYTES
    # Tiny messages are charged MESSAGE_COST each: a flood of them is bounded too.
    for _ in range(60):
        logs.receive(calm, message(b"."))
    assert kept(logs, 2) == b"calm\n" + b"." * ((3 * LOG_CHUNK_BYTES - MESSAGE_COST) // MESSAGE_COST)
    # Once the budget has refilled, what was dropped is marked where it was.
    greedy.log_tokens = None
    logs.receive(greedy, message(b"after\n", skipped=5))
    marker = f"\n[uws: {7 * LOG_CHUNK_BYTES + 5} bytes of output left out here".encode()
    assert kept(logs, 1).startswith(chunk * 3 + marker) and kept(logs, 1).endswith(b"]\nafter\n")


def test_the_largest_log_message_fits_a_frame() -> None:
    frame = json.dumps({**message(b"\xff" * LOG_CHUNK_BYTES), "job_id": 2**60, "seq": 2**60, "time": 1.0})
    assert len(frame) + 200 < MAX_MESSAGE_BYTES


# ---- the helper's side -----------------------------------------------------------------------


class Link:
    """Collects what a helper would send; `accept` False stands for a full send queue."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, int]] = []
        self.accept = True

    def __call__(self, data: str, skipped: int) -> bool:
        if self.accept:
            self.sent.append((base64.b64decode(data), skipped))
        return self.accept


def test_the_helper_forwards_new_output_in_bounded_chunks(tmp_path: Any) -> None:
    path = tmp_path / "session.log"
    forwarder, link = OutputForwarder(str(path)), Link()
    forwarder.forward(link)  # no file yet
    assert link.sent == []
    path.write_bytes(b"a" * (LOG_CHUNK_BYTES + 10))
    link.accept = False
    forwarder.forward(link)  # a full queue: nothing counts as sent
    link.accept = True
    forwarder.forward(link, chunks=5)
    assert link.sent == [(b"a" * LOG_CHUNK_BYTES, 0), (b"a" * 10, 0)]
    with open(path, "ab") as f:
        f.write(b"more\n")
    forwarder.flush(link)
    assert link.sent[-1] == (b"more\n", 0) and forwarder.fd is None


def test_the_helper_skips_ahead_of_a_flood_to_a_line_start(tmp_path: Any) -> None:
    path = tmp_path / "session.log"
    lines = b"".join(f"{i:07d}\n".encode() for i in range(LOG_BACKLOG_BYTES // 8 + 1000))
    path.write_bytes(lines)
    forwarder, link = OutputForwarder(str(path)), Link()
    forwarder.flush(link)
    (first, skipped), *rest = link.sent
    assert (
        skipped > len(lines) - KEPT_AFTER_SKIP - 8
        and first.startswith(b"0")
        and lines[skipped - 1 : skipped] == b"\n"
    )
    assert lines[skipped:] == first + b"".join(data for data, _ in rest)
    assert all(s == 0 for _, s in rest)


def test_the_helper_never_follows_what_is_not_a_regular_file(tmp_path: Any) -> None:
    """An app that puts a FIFO where its log was must not block its helper (which enforces the
    time limit) in open(): the FIFO is refused, without waiting for a writer."""
    path = tmp_path / "session.log"
    os.mkfifo(path)
    forwarder, link = OutputForwarder(str(path)), Link()
    forwarder.forward(link)
    assert forwarder.refused and forwarder.fd is None and link.sent == []


def test_the_exit_log_tail_is_never_read_from_a_fifo(tmp_path: Any) -> None:
    """The log tail the helper reports when the app ends is read the same way: a FIFO in the
    log's place gives an empty tail instead of a helper blocked in open()."""
    from uws.sessions.helper_app import read_tail

    path = tmp_path / "session.log"
    os.mkfifo(path)
    assert read_tail(str(path)) == ""
    regular = tmp_path / "other.log"
    regular.write_bytes(b"x" * 10 + "é".encode())
    assert read_tail(str(regular), size=3) == "xé"
