"""Live events: every change to a user's jobs and workspaces, pushed to their websockets.

Each event has an integer id, increasing for the life of the server and across restarts (ids
start from the start-up time in milliseconds × 1000). A per-user ring buffer lets a client that
reconnects with the last id it saw catch up; when that id is older than the buffer, the client
gets a snapshot instead. Subscribers have bounded queues: a slow consumer loses its own oldest
events (and is told to resynchronise), never delays anyone else.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Callable
from typing import Any

BUFFER_PER_USER = 1000
QUEUE_PER_SUBSCRIBER = 1000


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


class EventBus:
    def __init__(self) -> None:
        self._ids = itertools.count(int(time.time() * 1000) * 1000)
        # Ids of this server run start here; anything older came from an earlier run.
        self._start = next(self._ids)
        self._latest = self._start
        self._buffers: collections.defaultdict[int, collections.deque[dict[str, Any]]] = (
            collections.defaultdict(lambda: collections.deque(maxlen=BUFFER_PER_USER))
        )
        self._evicted: dict[int, int] = {}  # user -> id of the newest event dropped from the buffer
        self._subscribers: collections.defaultdict[int, set[Subscription]] = collections.defaultdict(set)
        self.listeners: list[Callable[[int, dict[str, Any]], None]] = []

    def publish(
        self,
        user_id: int,
        kind: str,
        data: dict[str, Any],
        job_id: int | None = None,
        source_time: float | None = None,
    ) -> dict[str, Any]:
        """source_time: when the change was seen where it happened (a helper's clock), so clients
        and benchmarks can tell the end-to-end delay."""
        self._latest = next(self._ids)
        event = {"id": self._latest, "type": kind, "time": time.time(), "data": data}
        if source_time is not None:
            event["source_time"] = source_time
        if job_id is not None:
            event["job_id"] = job_id
        buffer = self._buffers[user_id]
        if len(buffer) == buffer.maxlen:
            self._evicted[user_id] = buffer[0]["id"]
        buffer.append(event)
        for sub in list(self._subscribers.get(user_id, ())):
            sub.push(event)
        for listener in self.listeners:
            listener(user_id, event)
        return event

    def subscribe(self, user_id: int, job_id: int | None = None) -> Subscription:
        sub = Subscription(self, user_id, job_id)
        self._subscribers[user_id].add(sub)
        return sub

    def since(self, user_id: int, last_id: int) -> list[dict[str, Any]] | None:
        """Events after last_id, or None when they are no longer all buffered."""
        oldest_known = self._evicted.get(user_id, self._start)
        if last_id < oldest_known:
            return None
        return [e for e in self._buffers.get(user_id, ()) if e["id"] > last_id]

    def latest_id(self) -> int:
        """The newest id issued so far (without issuing one)."""
        return self._latest

    def first_id(self) -> int:
        return self._start

    def has_subscribers(self, user_id: int) -> bool:
        return bool(self._subscribers.get(user_id))

    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())
