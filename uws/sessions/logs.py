"""Session logs: the output of each session's app, as its helper forwards it ("log" messages over
the session channel), kept as a bounded tail in a server-owned file per job (logtail.py), read
with GET /jobs/<id>/log/ and pushed to the job's websocket.

Why the helper forwards it: a session may run as another OS account (SudoSpawner) or on a
cluster node (Slurm), where the server cannot be assumed to read the file the app writes. What
a helper sends is its session owner's claim, so it can cost only its own job: each message is
bounded (protocol.LOG_CHUNK_BYTES), each job has a byte budget refilled at
`rate_bytes_per_second` (what goes over it is dropped and a marker says how much), the file name
is the job id, and the tail is bounded by `max_bytes`.

Offsets are byte offsets of the job's stream as the server keeps it: the app's output, with a
one-line marker where output was left out (skipped by the helper or dropped here).
"""

from __future__ import annotations

import asyncio
import binascii
import datetime as _dt
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from traitlets import Float, Integer
from traitlets.config import LoggingConfigurable

from .. import orm
from ..errors import APIError
from ..utils import utcnow
from .logtail import FILE_NAME, LogFollower, LogTail, decode
from .protocol import LOG_CHUNK_BYTES
from .status import TERMINAL, JobStatus

if TYPE_CHECKING:
    from ..db import Database
    from .record import LiveSession

log = logging.getLogger("uws.jobs")

DIRECTORY_MODE = 0o700
# base64 of LOG_CHUNK_BYTES
MAX_ENCODED = (LOG_CHUNK_BYTES + 2) // 3 * 4
# Every message costs at least this much of its job's budget: a flood of tiny ones is bounded too.
MESSAGE_COST = 1024
# Seconds between warnings about logs that cannot be written (a full disk must not fill the log).
WRITE_WARNING_INTERVAL = 10.0
# Expired logs looked up in the database per query.
SWEEP_BATCH = 500


def lost_marker(count: int) -> bytes:
    return f"\n[uws: {count} bytes of output left out here: the session wrote faster than its log is kept]\n".encode()


class Following(LogFollower):
    """A websocket's share of one job's new output, and the event that wakes its sender."""

    def __init__(self, job_id: int, max_bytes: int) -> None:
        super().__init__(max_bytes)
        self.job_id = job_id
        self.event = asyncio.Event()


class SessionLogs(LoggingConfigurable):
    max_bytes = Integer(
        1024 * 1024,
        help="""Bytes of each session's output the server keeps (the newest; at least 64 KiB).
        When more arrives, the oldest quarter is dropped; offsets still count from the session's
        first byte, and GET /jobs/<id>/log/ says where the kept part begins.""",
    ).tag(config=True)
    read_max_bytes = Integer(64 * 1024, help="Most bytes of output one GET /jobs/<id>/log/ returns.").tag(
        config=True
    )
    push_interval_seconds = Float(
        0.5,
        help="""New output is pushed to a job's websocket at most this often (what arrives in
        between goes out together).""",
    ).tag(config=True)
    push_max_bytes = Integer(
        16 * 1024,
        help="""Most bytes of output in one pushed "log" message. When more arrived since the
        last, the newest are sent; the message's offset shows the gap, which GET
        /jobs/<id>/log/ fills.""",
    ).tag(config=True)
    rate_bytes_per_second = Integer(
        128 * 1024,
        help="""Output one session may add to its log per second, on average (its helper sends at
        most 64 KiB/s). What a session sends beyond it, and beyond burst_bytes at once, is
        dropped and marked as left out.""",
    ).tag(config=True)
    burst_bytes = Integer(
        512 * 1024,
        help="Output one session may send at once (its helper sends what is left when the app ends).",
    ).tag(config=True)
    keep_seconds = Float(
        7 * 86400.0,
        help="""A session's log is removed this many seconds after its last output, once the job
        has ended (GET /jobs/<id>/log/ is then 410).""",
    ).tag(config=True)
    sweep_seconds = Float(3600.0, help="Seconds between removals of logs past keep_seconds.").tag(config=True)

    def __init__(self, db: Database, directory: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.db = db
        self.directory = directory
        self.followers: dict[int, set[Following]] = {}
        self._sweep_task: asyncio.Task[None] | None = None
        self._last_write_warning = float("-inf")

    # ---- life cycle --------------------------------------------------------------------------
    def begin(self) -> None:
        """Make the directory (the server's alone) and start removing expired logs."""
        os.makedirs(self.directory, DIRECTORY_MODE, exist_ok=True)
        os.chmod(self.directory, DIRECTORY_MODE)
        self._sweep_task = asyncio.ensure_future(self._sweep_loop())

    def close(self) -> None:
        if self._sweep_task is not None:
            self._sweep_task.cancel()

    def tail(self, job_id: int) -> LogTail:
        return LogTail(self.directory, job_id, max(64 * 1024, self.max_bytes))

    # ---- from helpers ------------------------------------------------------------------------
    def receive(self, record: LiveSession, message: dict[str, Any]) -> None:
        """A "log" message of a live job: checked, charged to the job's budget, appended, and
        handed to the job's websockets."""
        job_id = record.job_id
        data = self._decode(message)
        if data is None:
            log.debug("Job %s: dropped a malformed log message", job_id)
            return
        skipped = message["skipped"]
        now = time.monotonic()
        burst = float(self.burst_bytes)
        tokens = burst if record.log_tokens is None else record.log_tokens
        tokens = min(burst, tokens + (now - record.log_refilled) * self.rate_bytes_per_second)
        record.log_refilled = now
        cost = max(len(data), MESSAGE_COST)
        if cost > tokens:
            record.log_tokens = tokens
            record.log_lost += len(data) + skipped
            return
        record.log_tokens = tokens - cost
        lost, record.log_lost = record.log_lost + skipped, 0
        if lost:
            data = lost_marker(lost) + data
        if data:
            self._append(job_id, data)

    @staticmethod
    def _decode(message: dict[str, Any]) -> bytes | None:
        encoded, skipped = message.get("data"), message.get("skipped", 0)
        if not isinstance(encoded, str) or len(encoded) > MAX_ENCODED:
            return None
        if isinstance(skipped, bool) or not isinstance(skipped, int) or not 0 <= skipped < 2**53:
            return None
        try:
            data = binascii.a2b_base64(encoded.encode("ascii"), strict_mode=True)
        except (binascii.Error, UnicodeEncodeError):
            return None
        message["skipped"] = skipped
        return data if len(data) <= LOG_CHUNK_BYTES else None

    def _append(self, job_id: int, data: bytes) -> None:
        try:
            offset = self.tail(job_id).append(data)
        except (OSError, ValueError) as e:
            now = time.monotonic()
            if now - self._last_write_warning >= WRITE_WARNING_INTERVAL:
                self._last_write_warning = now
                log.warning("Job %s: could not write its log in %s: %s", job_id, self.directory, e)
            return
        for following in self.followers.get(job_id, ()):
            following.feed(offset, data)
            following.event.set()

    # ---- to websockets -----------------------------------------------------------------------
    def follow(self, job_id: int) -> Following:
        following = Following(job_id, self.push_max_bytes)
        self.followers.setdefault(job_id, set()).add(following)
        return following

    def unfollow(self, following: Following) -> None:
        others = self.followers.get(following.job_id)
        if others is not None:
            others.discard(following)
            if not others:
                del self.followers[following.job_id]

    @staticmethod
    def message(following: Following, final: bool = False) -> dict[str, Any] | None:
        """The websocket message for what `following` has not been sent; None when nothing."""
        taken = following.take(final)
        if taken is None:
            return None
        offset, data = taken
        return {"type": "log", "job_id": following.job_id, "offset": offset, "text": decode(data)}

    # ---- to GET /jobs/<id>/log/ --------------------------------------------------------------
    def answer(self, job_id: int, offset: int, status: str, ended: _dt.datetime | None) -> dict[str, Any]:
        """The answer's data for `offset` of a job in `status` (ended at `ended`): APIError 409
        before there is a log, 410 once it has been removed, 416 for an offset past its end."""
        complete = status in TERMINAL
        tail = self.tail(job_id)
        try:
            chunk = tail.read(offset, max(1024, self.read_max_bytes), final=complete)
        except ValueError:
            bounds = tail.bounds()
            end = bounds[1] if bounds else 0
            raise APIError(416, f"Offset {offset} is beyond the end of the log (end_offset {end}).") from None
        if chunk is None:
            if status == JobStatus.PENDING:
                raise APIError(409, "Job has not started.")
            expired = ended is not None and (utcnow() - ended).total_seconds() > self.keep_seconds
            if complete and expired:
                raise APIError(410, "The job's log is no longer kept.")
            if offset > 0:
                raise APIError(416, f"Offset {offset} is beyond the end of the log (end_offset 0).")
            return {
                "offset": 0, "next_offset": 0, "start_offset": 0, "end_offset": 0, "text": "",
                "complete": complete,
            }  # fmt: skip
        return {
            "offset": chunk.offset,
            "next_offset": chunk.next_offset,
            "start_offset": chunk.start,
            "end_offset": chunk.end,
            "text": decode(chunk.data),
            "complete": complete and chunk.next_offset == chunk.end,
        }

    # ---- removal -----------------------------------------------------------------------------
    async def _sweep_loop(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("Removing expired session logs failed; trying again later")
            await asyncio.sleep(max(0.2, min(self.sweep_seconds, self.keep_seconds / 2)))

    async def sweep(self) -> int:
        """Remove the logs of ended (or unknown) jobs untouched for keep_seconds; how many."""
        loop = asyncio.get_running_loop()
        expired = await loop.run_in_executor(None, self._expired)
        ids = list(expired)
        ended: set[int] = set()
        for i in range(0, len(ids), SWEEP_BATCH):
            batch = ids[i : i + SWEEP_BATCH]

            def _active(session: Any, batch: list[int] = batch) -> set[int]:
                stmt = select(orm.Job.id, orm.Job.status).where(orm.Job.id.in_(batch))
                return {job_id for job_id, status in session.execute(stmt) if status not in TERMINAL}

            active = await self.db.run(_active)
            ended.update(job_id for job_id in batch if job_id not in active)
        doomed = [expired[job_id] for job_id in ended]
        return await loop.run_in_executor(None, remove_files, doomed)

    def _expired(self) -> dict[int, str]:
        """Job id -> path of the logs not written to for keep_seconds."""
        cutoff = time.time() - self.keep_seconds
        found: dict[int, str] = {}
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return found
        for entry in entries:
            match = FILE_NAME.fullmatch(entry.name)  # (a .tmp left by a crash goes with its log)
            try:
                if match and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    found[int(match.group(1))] = entry.path
            except OSError:
                continue
        return found


def remove_files(paths: list[str]) -> int:
    removed = 0
    for path in paths:
        for candidate in (path, path + ".tmp"):
            try:
                os.unlink(candidate)
                removed += candidate == path
            except FileNotFoundError:
                pass
    return removed
