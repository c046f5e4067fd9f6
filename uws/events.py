"""Live events: every change to a user's jobs and workspaces, pushed to their websockets.

Each event is stored in the database (the events table, uws.events_store), which gives it its
id, before it is pushed: ids increase for good, across restarts and across every server process
sharing the database. A client that reconnects with the last id it saw, to this process or
another, reads what it missed from the table; when that id is older than what is kept (see
`keep_per_user`, `keep_seconds`), it gets a snapshot instead. Subscribers have bounded queues:
a slow consumer loses its own oldest events (and is told to resynchronise), never delays
anyone else.

Publishing stays a cheap call that callers need not await: the event joins a queue that one
task writes in batches (one transaction each) and then pushes, in order. One writer per process
keeps commit order equal to id order, which is what lets a resuming reader trust that it has
seen everything below the newest id it saw (between processes, see uws.events_store).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from traitlets import Float, Integer
from traitlets.config import LoggingConfigurable

from .events_store import insert_events, latest_for, read_since, trim
from .models import job_view

if TYPE_CHECKING:
    from .db import Database

# Marks a queued event that is pushed but not stored (publish(stored=False)).
SAMPLE = "_sample"

log = logging.getLogger("uws.events")

QUEUE_PER_SUBSCRIBER = 1000
# Events written in one transaction at most.
BATCH = 500
# Seconds between trims of every user this process wrote for (and of events past keep_seconds).
TRIM_SECONDS = 60.0


class Subscription:
    def __init__(self, bus: EventBus, user_id: int, job_id: int | None) -> None:
        self.bus = bus
        self.user_id = user_id
        self.job_id = job_id
        self.queue: collections.deque[dict[str, Any]] = collections.deque()
        self.overflowed = False
        self._wakeup = asyncio.Event()

    def push(self, event: dict[str, Any]) -> None:
        if self.job_id is not None and event.get("job_id") != self.job_id:
            return
        if len(self.queue) >= QUEUE_PER_SUBSCRIBER:
            self.queue.popleft()
            self.overflowed = True
        self.queue.append(event)
        self._wakeup.set()

    async def next(self, timeout: float | None = None) -> dict[str, Any] | None:
        if not self.queue:
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                return None
        return self.queue.popleft() if self.queue else None

    def close(self) -> None:
        self.bus._subscribers[self.user_id].discard(self)


class EventBus(LoggingConfigurable):
    keep_per_user = Integer(
        1000,
        help="""Events kept per user, for clients that resume /ws/events with the last id they saw
        (on any server process sharing the database). A client further behind gets a snapshot of
        the current state instead. Trimmed about every minute, so a few more may be kept.""",
    ).tag(config=True)
    keep_seconds = Float(
        24 * 3600,
        help="""Events older than this many seconds are dropped (0: kept until keep_per_user
        pushes them out). A client away for longer gets a snapshot instead.""",
    ).tag(config=True)

    def __init__(self, db: Database, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.db = db
        self._pending: collections.deque[tuple[int, dict[str, Any]]] = collections.deque()
        self._writer: asyncio.Task[None] | None = None
        self._subscribers: collections.defaultdict[int, set[Subscription]] = collections.defaultdict(set)
        self.listeners: list[Callable[[int, dict[str, Any]], None]] = []
        # Users this process wrote events for since their last trim, and how many.
        self._untrimmed: collections.Counter[int] = collections.Counter()
        self._trimmed_at = time.monotonic()
        self._failing = False

    def publish(
        self,
        user_id: int,
        kind: str,
        data: dict[str, Any],
        job_id: int | None = None,
        source_time: float | None = None,
        stored: bool = True,
    ) -> None:
        """Queue an event for the user; it is stored, given its id and pushed shortly after, in
        the order published. source_time: when the change was seen where it happened (a
        helper's clock), so clients and benchmarks can tell the end-to-end delay. stored=False:
        a live reading (a session's metrics, every few seconds), pushed in its turn without an
        id and never stored or replayed: the next reading replaces it, and storing every one
        would cost the database a write per session per heartbeat."""
        if kind == "job":
            # Stored, so without the session's token: each stream adds it for whom it may.
            data = job_view(data, with_link_token=False)
        event: dict[str, Any] = {"type": kind, "time": time.time(), "data": data}
        if source_time is not None:
            event["source_time"] = source_time
        if job_id is not None:
            event["job_id"] = job_id
        if not stored:
            event[SAMPLE] = True
        self._pending.append((user_id, event))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        """Store the queued events a batch at a time and push each batch once it is committed.
        A failed write is retried (the events stay queued, in order) until it succeeds."""
        try:
            delay = 0.05
            while self._pending:
                batch = list(itertools.islice(self._pending, BATCH))
                kept = [(user_id, event) for user_id, event in batch if SAMPLE not in event]
                try:
                    ids = await self.db.run(functools.partial(insert_events, batch=kept)) if kept else []
                except Exception:
                    if not self._failing:
                        log.exception("Storing %d events failed; retrying", len(batch))
                    self._failing = True
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                if self._failing:
                    log.info("Storing events works again")
                self._failing = False
                delay = 0.05
                for _ in batch:
                    self._pending.popleft()
                stored_ids = iter(ids)
                for user_id, event in batch:
                    if SAMPLE in event:
                        self._deliver(user_id, {k: v for k, v in event.items() if k != SAMPLE})
                        continue
                    event_id = next(stored_ids)
                    if event_id is not None:
                        self._deliver(user_id, {"id": event_id, **event})
                        self._untrimmed[user_id] += 1
                await self._trim_if_due()
        finally:
            self._writer = None

    def _deliver(self, user_id: int, event: dict[str, Any]) -> None:
        for sub in list(self._subscribers.get(user_id, ())):
            sub.push(event)
        for listener in self.listeners:
            listener(user_id, event)

    async def _trim_if_due(self) -> None:
        """Every TRIM_SECONDS: each user written for, and the events past keep_seconds. Sooner for
        a user who has had a tenth of keep_per_user new events (their table stays near size)."""
        now = time.monotonic()
        every = now - self._trimmed_at >= TRIM_SECONDS
        soon = max(1, self.keep_per_user // 10)
        users = list(self._untrimmed) if every else [u for u, n in self._untrimmed.items() if n >= soon]
        if not users and not every:
            return
        for user_id in users:
            del self._untrimmed[user_id]
        older_than = time.time() - self.keep_seconds if every and self.keep_seconds > 0 else None
        if every:
            self._trimmed_at = now
        keep = self.keep_per_user
        try:
            await self.db.run(lambda session: trim(session, users, keep, older_than))
        except Exception:
            log.exception("Trimming old events failed")

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait (up to `timeout`) for the queued events to be stored: at shutdown."""
        writer = self._writer
        if writer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(writer), timeout)
            except TimeoutError:
                log.warning("%d events not stored at shutdown", len(self._pending))

    def subscribe(self, user_id: int, job_id: int | None = None) -> Subscription:
        sub = Subscription(self, user_id, job_id)
        self._subscribers[user_id].add(sub)
        return sub

    async def since(self, user_id: int, last_id: int) -> list[dict[str, Any]] | None:
        """The user's events after last_id, from the database (whichever process stored them);
        None when they are no longer all kept."""
        return await self.db.run(lambda session: read_since(session, user_id, last_id))

    async def latest_id(self, user_id: int) -> int:
        """An id that every event of the user stored so far is at most: a snapshot read after
        this call reflects at least those events."""
        return await self.db.run(lambda session: latest_for(session, user_id))

    def pending(self) -> int:
        """Events published but not stored yet."""
        return len(self._pending)

    def has_subscribers(self, user_id: int) -> bool:
        return bool(self._subscribers.get(user_id))

    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())
