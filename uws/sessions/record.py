"""The live record: what the server holds in memory about one job while it is active.

One object per job, in one map (`LiveSessions`), so that forgetting a job is one `pop`: nothing
keyed by a job id can be left behind when it ends. The database remains the truth; a record is
only what must not be re-read on every helper message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..spawners.base import Spawner


@dataclass(eq=False)
class LiveSession:
    job_id: int
    owner: int  # user id
    secret: str | None = None  # the channel secret, cached from spawner_state
    spawner: Spawner | None = None  # loaded once, then kept for the job's life
    launching: bool = False  # started here, not yet recorded as submitted
    last_seen: float = 0.0  # monotonic time of the helper's last message
    heard: bool = False  # its helper has reported (to this server process) at least once
    metrics: dict[str, Any] = field(default_factory=dict)  # from the last heartbeat
    recorded: tuple[str, float] | None = None  # (phase in the database, when it was written)
    stop_requested: bool = False  # the server asked it to stop
    stop_message: str | None = None  # why (idle culling), shown when it has ended
    unanswered_since: float | None = None  # when checking it on its resource first failed
    # Its log's byte budget (uws.sessions.logs): what is left (None: full), when it was
    # refilled, and bytes of output dropped since the last that was kept.
    log_tokens: float | None = None
    log_refilled: float = 0.0
    log_lost: int = 0
    # The time limit its helper keeps (local and sudo sessions), once extended: a helper that
    # reports another one is told again.
    time_limit_seconds: int | None = None
    # Serialises this job's read-modify-write of its database row across awaits.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class LiveSessions:
    """The live records by job id. Only `add` creates one and only `forget` removes one."""

    def __init__(self) -> None:
        self._records: dict[int, LiveSession] = {}
        # Ended (or unknown) jobs share one lock: their writes are rare no-ops, and a lock per
        # id would have to be kept, or leak, for every job ever seen.
        self._orphan_lock = asyncio.Lock()

    def add(self, job_id: int, owner: int, **fields: Any) -> LiveSession:
        record = self._records.get(job_id)
        if record is None:
            record = self._records[job_id] = LiveSession(job_id, owner, **fields)
        return record

    def get(self, job_id: int) -> LiveSession | None:
        return self._records.get(job_id)

    def forget(self, job_id: int) -> LiveSession | None:
        return self._records.pop(job_id, None)

    def lock(self, job_id: int) -> asyncio.Lock:
        record = self._records.get(job_id)
        return record.lock if record is not None else self._orphan_lock

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._records

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[LiveSession]:
        return iter(list(self._records.values()))
