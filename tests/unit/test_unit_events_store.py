"""Events through the database (uws.events, uws.events_store), on a real SQLite file: ids from
the table in publish order, events pushed only once stored, a second bus on the same database
(another process) reading what the first stored, trimming and the snapshot fallback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from uws import orm
from uws.db import Database, prepare
from uws.events import EventBus
from uws.events_store import read_since, trim
from uws.sessions import start_keys


@pytest.fixture
def db(tmp_path: Any) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/events.sqlite")
    prepare(database.engine)
    yield database
    database.close()


def add_users(db: Database, *names: str) -> list[int]:
    def _add(session: Any) -> list[int]:
        users = [orm.User(username=name) for name in names]
        session.add_all(users)
        session.flush()
        return [u.id for u in users]

    return db.call(_add)


def drain(sub: Any) -> list[dict[str, Any]]:
    events = list(sub.queue)
    sub.queue.clear()
    return events


def test_live_readings_are_pushed_in_turn_without_an_id_and_never_stored(db: Database) -> None:
    (alice,) = add_users(db, "alice")

    async def scenario() -> None:
        bus = EventBus(db)
        sub = bus.subscribe(alice)
        bus.publish(alice, "n", {"i": 0})
        bus.publish(alice, "metrics", {"cpu": 1.5}, job_id=7, stored=False)
        bus.publish(alice, "n", {"i": 1})
        await bus.flush()
        events = drain(sub)
        assert [e["type"] for e in events] == ["n", "metrics", "n"]
        assert "id" not in events[1] and events[1]["data"] == {"cpu": 1.5} and events[1]["job_id"] == 7
        assert all(not key.startswith("_") for key in events[1])
        assert [e["data"] for e in await bus.since(alice, events[0]["id"]) or []] == [{"i": 1}]
        stored = db.call(lambda session: session.query(orm.Event).count())
        assert stored == 2

    asyncio.run(scenario())


def test_ids_from_the_table_in_publish_order(db: Database) -> None:
    alice, bob = add_users(db, "alice", "bob")

    async def scenario() -> None:
        bus = EventBus(db)
        sub = bus.subscribe(alice)
        for i in range(3):
            bus.publish(alice, "n", {"i": i}, job_id=7 if i == 1 else None)
        bus.publish(bob, "n", {"i": 99})
        assert drain(sub) == []  # nothing is pushed before it is stored
        await bus.flush()
        events = drain(sub)
        assert [e["data"]["i"] for e in events] == [0, 1, 2]
        ids = [e["id"] for e in events]
        assert ids == sorted(ids) and len(set(ids)) == 3
        assert ids[0] > time.time() * 1e6 - 3600e6  # (past the ids of earlier versions)
        assert events[1]["job_id"] == 7 and "job_id" not in events[0]
        # A bus of another process reads the same events from the database.
        other = EventBus(db)
        again = await other.since(alice, ids[0])
        assert again == [{k: v for k, v in e.items()} for e in events[1:]]
        assert await other.since(alice, ids[-1]) == []
        assert await other.latest_id(alice) == ids[-1]
        assert await other.since(alice, 1) is None  # from before the table: a snapshot
        assert await other.since(alice, ids[-1] + 10**6) is None  # never issued: a snapshot

    asyncio.run(scenario())


def test_a_failed_write_is_retried_in_order(db: Database) -> None:
    (alice,) = add_users(db, "alice")

    async def scenario() -> None:
        bus = EventBus(db)
        sub = bus.subscribe(alice)
        real_run, failures = db.run, [2]

        async def flaky(fn: Any) -> Any:
            if failures[0]:
                failures[0] -= 1
                raise OSError("database away")
            return await real_run(fn)

        db.run = flaky  # type: ignore[method-assign]
        for i in range(5):
            bus.publish(alice, "n", {"i": i})
        await bus.flush()
        assert [e["data"]["i"] for e in drain(sub)] == [0, 1, 2, 3, 4]
        assert bus.pending() == 0

    asyncio.run(scenario())


def test_a_deleted_users_events_are_dropped_not_the_others(db: Database) -> None:
    alice, gone = add_users(db, "alice", "gone")
    db.call(lambda s: s.delete(s.get(orm.User, gone)))

    async def scenario() -> None:
        bus = EventBus(db)
        sub = bus.subscribe(alice)
        bus.publish(alice, "n", {"i": 0})
        bus.publish(gone, "n", {"i": 1})
        bus.publish(alice, "n", {"i": 2})
        await bus.flush()
        assert [e["data"]["i"] for e in drain(sub)] == [0, 2]

    asyncio.run(scenario())


def test_trimming_moves_the_horizon(db: Database) -> None:
    alice, bob = add_users(db, "alice", "bob")

    async def scenario() -> list[int]:
        bus = EventBus(db, keep_per_user=1000)
        sub = bus.subscribe(alice)
        for i in range(12):
            bus.publish(alice, "n", {"i": i})
        bus.publish(bob, "n", {})
        await bus.flush()
        return [e["id"] for e in drain(sub)]

    ids = asyncio.run(scenario())
    assert db.call(lambda s: trim(s, [alice], 5, None)) == 7
    # A client that saw the 5th event missed trimmed ones: a snapshot. One that saw the 7th
    # (the newest trimmed) missed nothing that is gone.
    assert db.call(lambda s: read_since(s, alice, ids[4])) is None
    assert [e["id"] for e in db.call(lambda s: read_since(s, alice, ids[6]))] == ids[7:]
    # By age: everything older goes but the newest event of all (bob's), and horizons follow.
    assert db.call(lambda s: trim(s, [], 5, time.time() + 1)) == 5
    assert db.call(lambda s: read_since(s, alice, ids[-2])) is None
    assert db.call(lambda s: read_since(s, alice, ids[-1])) == []  # (saw the last one that went)
    newest = db.call(lambda s: s.query(orm.Event).one())
    assert newest.user_id == bob and db.call(lambda s: read_since(s, bob, newest.id)) == []


def test_the_bus_trims_a_busy_user_as_it_goes(db: Database) -> None:
    (alice,) = add_users(db, "alice")

    async def scenario() -> None:
        bus = EventBus(db, keep_per_user=20)
        for i in range(100):
            bus.publish(alice, "n", {"i": i})
            if i % 7 == 0:
                await bus.flush()
        await bus.flush()

    asyncio.run(scenario())
    assert db.call(lambda s: s.query(orm.Event).count()) <= 20 + 20 // 10 + 7


def test_start_keys_name_their_job_for_ten_minutes(db: Database, monkeypatch: Any) -> None:
    (alice,) = add_users(db, "alice")

    def _job(session: Any) -> int:
        job = orm.Job(workspace_id=1, user_id=alice, job_type="t", job_details={}, spawner_state={})
        session.add(job)
        session.flush()
        start_keys.record(session, alice, 1, "k", job.id)
        return job.id

    job_id = db.call(_job)
    assert db.call(lambda s: start_keys.lookup(s, alice, 1, "k"))["id"] == job_id
    assert db.call(lambda s: start_keys.lookup(s, alice, 2, "k")) is None  # another workspace
    later = time.time() + start_keys.KEY_SECONDS + 1
    monkeypatch.setattr(start_keys.time, "time", lambda: later)
    assert db.call(lambda s: start_keys.lookup(s, alice, 1, "k")) is None


def test_a_made_up_websocket_ticket_costs_a_read_not_a_write(db: Database) -> None:
    """Anyone may send ?ticket=: an unknown one must not take the database's write turn."""
    from sqlalchemy import event

    from uws.websockets import TicketStore

    statements: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    store = TicketStore(db, auth=None)  # type: ignore[arg-type]  (an unknown ticket never asks it)
    assert asyncio.run(store.redeem("made-up")) is None
    assert statements and not [s for s in statements if not s.lstrip().upper().startswith("SELECT")]
