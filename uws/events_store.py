"""The events table, for uws.events: a batch written in order, what a resuming client missed,
and trimming. Every function here runs on the database thread with a Session.

Why ids can be trusted across processes: a reader that sees event n must also see every event
below n, or a client resuming after n would never get them. Ids are drawn when a row is inserted
and become visible when its transaction commits, so writers must commit in the order they draw:
in one process one task writes (uws.events.EventBus); between processes, on PostgreSQL, every
writing transaction first takes a transaction-level advisory lock (SQLite has one writer anyway).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import orm

# pg_advisory_xact_lock's key: any fixed 64-bit number no other part of UWS locks with.
EVENTS_LOCK = int.from_bytes(hashlib.sha256(b"uws events table").digest()[:8], "big", signed=True)
# Events of one user read for a resuming client at most: further behind, a snapshot is cheaper.
MAX_REPLAY = 5000


def seed_event_ids(conn: Any) -> None:
    """A new events table: ids start at the time in milliseconds x 1000, where the in-memory ids
    of earlier versions were, so they keep increasing for clients across the upgrade; any id
    below is from before the table, and gets a snapshot (migration 0004 does the same)."""
    base = int(time.time() * 1000) * 1000
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT setval(pg_get_serial_sequence('events', 'id'), :b)"), {"b": base})
    else:
        conn.execute(text("INSERT INTO sqlite_sequence (name, seq) VALUES ('events', :b)"), {"b": base})
    conn.execute(text("INSERT INTO event_horizons (user_id, up_to) VALUES (0, :b)"), {"b": base})


def take_turn(session: Session) -> None:
    """Event writers of every process one after the other, until this transaction ends."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": EVENTS_LOCK})


def _row(user_id: int, event: dict[str, Any]) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "job_id": event.get("job_id"),
        "type": event["type"],
        "time": event["time"],
        "data": event["data"],
        "source_time": event.get("source_time"),
    }


def insert_events(session: Session, batch: list[tuple[int, dict[str, Any]]]) -> list[int | None]:
    """Store the events in the batch's order; their ids, in that order (None: the user is gone)."""
    take_turn(session)
    statement = insert(orm.Event).returning(orm.Event.id, sort_by_parameter_order=True)
    rows = [_row(user_id, event) for user_id, event in batch]
    try:
        with session.begin_nested():
            return list(session.scalars(statement, rows))
    except IntegrityError:
        pass
    # A user deleted meanwhile (the foreign key): everyone else's events are still written.
    ids: list[int | None] = []
    for row in rows:
        try:
            with session.begin_nested():
                ids.append(session.scalar(statement, row))
        except IntegrityError:
            ids.append(None)
    return ids


def event_dict(row: orm.Event) -> dict[str, Any]:
    """An event as /ws/events sends it (job_id is for the bus's filters; the handler drops it)."""
    event: dict[str, Any] = {"id": row.id, "type": row.type, "time": row.time, "data": row.data}
    if row.source_time is not None:
        event["source_time"] = row.source_time
    if row.job_id is not None:
        event["job_id"] = row.job_id
    return event


def horizon(session: Session, user_id: int) -> int:
    """The newest id that may be gone for the user (trimmed, or before the table began)."""
    up_to = session.scalar(
        select(func.max(orm.EventHorizon.up_to)).where(orm.EventHorizon.user_id.in_((0, user_id)))
    )
    return int(up_to or 0)


def read_since(session: Session, user_id: int, last_id: int) -> list[dict[str, Any]] | None:
    """The user's events after last_id, in order; None when some of them may be gone (trimmed),
    last_id is not one this database issued, or they are too many: the client needs a snapshot."""
    floor = horizon(session, user_id)
    if last_id < floor:
        return None
    newest = session.scalar(select(func.max(orm.Event.id)))
    if last_id > max(newest or 0, floor):
        return None
    rows = session.scalars(
        select(orm.Event)
        .where(orm.Event.user_id == user_id, orm.Event.id > last_id)
        .order_by(orm.Event.id)
        .limit(MAX_REPLAY + 1)
    ).all()
    if len(rows) > MAX_REPLAY:
        return None
    return [event_dict(row) for row in rows]


def latest_for(session: Session, user_id: int) -> int:
    """The id a snapshot of the user's state read after this call is at least as new as."""
    newest = session.scalar(select(func.max(orm.Event.id)).where(orm.Event.user_id == user_id))
    return max(int(newest or 0), horizon(session, user_id))


def _raise_horizon(session: Session, user_id: int, up_to: int) -> None:
    row = session.get(orm.EventHorizon, user_id)
    if row is None:
        session.add(orm.EventHorizon(user_id=user_id, up_to=up_to))
    elif row.up_to < up_to:
        row.up_to = up_to
    session.flush()


def trim(session: Session, user_ids: list[int], keep: int, older_than: float | None) -> int:
    """Drop all but each listed user's newest `keep` events and, with older_than, every event
    older than that (but the newest of all, so the highest id issued stays readable). Each
    user's horizon first moves past what goes. Returns how many rows went."""
    take_turn(session)
    gone = 0
    for user_id in user_ids:
        cut = session.scalar(
            select(orm.Event.id)
            .where(orm.Event.user_id == user_id)
            .order_by(orm.Event.id.desc())
            .offset(keep)
            .limit(1)
        )
        if cut is None:
            continue
        _raise_horizon(session, user_id, cut)
        result = session.execute(
            delete(orm.Event).where(orm.Event.user_id == user_id, orm.Event.id <= cut),
            execution_options={"synchronize_session": False},
        )
        gone += int(getattr(result, "rowcount", 0) or 0)
    if older_than is not None:
        newest = session.scalar(select(func.max(orm.Event.id)))
        if newest is not None:
            old = (orm.Event.time < older_than) & (orm.Event.id < newest)
            for user_id, up_to in session.execute(
                select(orm.Event.user_id, func.max(orm.Event.id)).where(old).group_by(orm.Event.user_id)
            ).all():
                _raise_horizon(session, user_id, up_to)
            result = session.execute(
                delete(orm.Event).where(old), execution_options={"synchronize_session": False}
            )
            gone += int(getattr(result, "rowcount", 0) or 0)
    return gone
