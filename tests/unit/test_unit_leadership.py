"""Leadership's pieces in process: stepping down when the lock connection fails or stalls (a
stand-in lock, no PostgreSQL), the standby's paths, the secrets' fingerprints and the
database checks made at start-up (uws.leadership, uws.cluster, uws.db)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from traitlets.config import Config

from uws import db
from uws.cluster import ClusterMismatch, join_cluster, local_fingerprints
from uws.handlers import api_host_routes
from uws.leadership import Leadership, lock_conninfo, standby_serves
from uws.metrics import LiveParts, ServerMetrics
from uws.passthrough.service import PassthroughCounts
from uws.sessions.culler import IdleCuller
from uws.sessions.ending import EndingWarnings
from uws.sessions.record import LiveSessions

FAST = Config({"Leadership": {"retry_seconds": 0.02, "check_seconds": 0.02, "timeout_seconds": 0.1}})


class FakeLock(Leadership):
    """Leadership over a stand-in for the PostgreSQL lock: `free` says whether it can be
    taken, `fail` makes checks raise, `stall` makes them never answer."""

    def __init__(self, **kw: Any) -> None:
        self.events: list[str] = []
        super().__init__(None, self._started, self._stopped, config=FAST, **kw)
        self.conninfo = "postgresql://stand-in"
        self.free = True
        self.fail = False
        self.stall = False
        self.closed_connections = 0
        self.connections = 0

    async def _started(self) -> None:
        self.events.append("lead")

    async def _stopped(self) -> None:
        self.events.append("step down")

    async def _connect(self) -> Any:
        if self.fail:
            raise OSError("connection refused")
        self.connections += 1
        return SimpleNamespace(lock=asyncio.Lock(), close=self._close)

    async def _close(self) -> None:
        self.closed_connections += 1

    async def _prepare(self, conn: Any) -> None:
        pass

    async def _acquire(self, conn: Any) -> bool:
        if self.fail:
            raise OSError("server closed the connection unexpectedly")
        return self.free

    async def _check(self, conn: Any) -> None:
        if self.stall:
            await asyncio.sleep(3600)
        if self.fail:
            raise OSError("server closed the connection unexpectedly")


async def until(condition: Any, seconds: float = 2.0) -> float:
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < seconds, "not within the time"
        await asyncio.sleep(0.005)
    return time.monotonic() - t0


def test_sqlite_always_leads(tmp_path: Any) -> None:
    database = db.Database(f"sqlite:///{tmp_path}/l.sqlite")
    events: list[str] = []

    async def lead() -> None:
        events.append("lead")

    async def step_down() -> None:
        events.append("step down")

    async def scenario() -> None:
        leadership = Leadership(database, lead, step_down)
        assert leadership.conninfo is None and leadership.role == "standby"
        await leadership.begin()
        assert leadership.role == "leader"
        await leadership.run()
        assert events == ["lead"]
        await leadership.close()
        assert events == ["lead", "step down"] and leadership.role == "standby"

    asyncio.run(scenario())
    database.close()


def test_leader_steps_down_when_its_connection_fails_and_leads_again() -> None:
    async def scenario() -> None:
        lock = FakeLock()
        await lock.begin()
        await lock.run()
        assert lock.role == "leader" and lock.events == ["lead"]
        lock.fail = True
        took = await until(lambda: not lock.leading)
        assert took < 0.1  # within a check or two
        await until(lambda: lock.closed_connections == 1)  # the lock let go
        assert lock.events == ["lead", "step down"]
        lock.fail = False  # the database is back: the lock is tried again, and got
        await until(lambda: lock.leading)
        await until(lambda: lock.events == ["lead", "step down", "lead"])
        await lock.close()
        assert lock.events[-1] == "step down" and lock.closed_connections == 2

    asyncio.run(scenario())


def test_leader_steps_down_when_a_check_does_not_answer() -> None:
    """A check that never answers: the leader steps down after timeout_seconds, without
    waiting for the check (psycopg's cancellation of it can itself take seconds)."""

    async def scenario() -> None:
        lock = FakeLock()
        await lock.begin()
        await lock.run()
        lock.stall = True
        took = await until(lambda: not lock.leading)
        assert 0.08 <= took < 0.5, took
        assert lock.events == ["lead", "step down"]
        await lock.close()

    asyncio.run(scenario())


def test_standby_takes_the_lock_once_it_is_free() -> None:
    async def scenario() -> None:
        lock = FakeLock()
        lock.free = False
        await lock.begin()
        await lock.run()
        assert lock.role == "standby" and lock.events == []
        await asyncio.sleep(0.1)
        # Tried again and again, on the one connection.
        assert not lock.leading and lock.connections == 1 and lock.closed_connections == 0
        lock.free = True
        await until(lambda: lock.leading)
        await until(lambda: lock.events == ["lead"])
        await lock.close()
        assert lock.events == ["lead", "step down"] and lock.closed_connections == 1

    asyncio.run(scenario())


def test_a_failed_start_of_the_leaders_work_steps_down() -> None:
    async def scenario() -> None:
        lock = FakeLock()
        lock.free = False
        await lock.begin()
        await lock.run()
        starts = 0

        async def broken() -> None:
            nonlocal starts
            starts += 1
            raise RuntimeError("cannot bind the session channel")

        lock._lead = broken
        lock.free = True
        await until(lambda: starts >= 1)
        await until(lambda: not lock.leading)
        assert lock.events == ["step down"]
        await lock.close()

    asyncio.run(scenario())


def test_session_timeout_must_outlast_a_step_down() -> None:
    from traitlets import TraitError

    with pytest.raises(TraitError, match="longer than check_seconds"):
        Leadership(None, FakeLock._started, FakeLock._stopped, session_timeout_seconds=1.0)  # type: ignore[arg-type]


def test_standby_paths_and_lock_url() -> None:
    for path in ("/status", "/status/", "/status/leader", "/status/leader/", "/metrics"):
        assert standby_serves(path), path
    for path in (
        "/workspaces/",
        "/tokens/",
        "/ws/events",
        "/passthrough/1/status/",
        "/status/x",
        "/metrics/",
    ):
        assert not standby_serves(path), path
    url = "postgresql+psycopg://u:p%40ss@db.example.org:5433/uws?options=-csearch_path%3Dx"
    assert lock_conninfo(url) == "postgresql://u:p%40ss@db.example.org:5433/uws?options=-csearch_path%3Dx"


def test_leader_gauge(tmp_path: Any) -> None:
    leadership = SimpleNamespace(leading=False)
    parts = LiveParts(
        proxy=SimpleNamespace(counts=PassthroughCounts()),  # type: ignore[arg-type]
        events=SimpleNamespace(subscriber_count=lambda: 0),  # type: ignore[arg-type]
        websockets=SimpleNamespace(open={}),  # type: ignore[arg-type]
        live=LiveSessions(),
        front=SimpleNamespace(open_connections=lambda: 0),  # type: ignore[arg-type]
        leadership=leadership,  # type: ignore[arg-type]
    )
    database = db.Database(f"sqlite:///{tmp_path}/g.sqlite")
    db.prepare(database.engine)
    metrics = ServerMetrics(database, parts, api_host_routes("path"))

    def gauge() -> float:
        families = text_string_to_metric_families(asyncio.run(metrics.render()).decode())
        return next(f.samples[0].value for f in families if f.name == "uws_leader")

    assert gauge() == 0
    leadership.leading = True
    assert gauge() == 1
    database.close()


def test_culler_and_warnings_begin_and_close_repeatedly() -> None:
    async def scenario() -> None:
        culler = IdleCuller(None, None, None, None, {}, None)  # type: ignore[arg-type]
        warnings = EndingWarnings(None, None, None)  # type: ignore[arg-type]
        for part in (culler, warnings):
            part.begin()
            first = part._task
            assert first is not None
            part.begin()  # already running: no second loop
            assert part._task is first
            part.close()
            part.close()
            assert part._task is None
            part.begin()
            assert part._task is not None and part._task is not first
            part.close()

    asyncio.run(scenario())


# ---- the installation's secrets -----------------------------------------------------------------
def write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def data_dir(root: Any, name: str, cookie: bytes, session: bytes) -> str:
    path = os.path.join(str(root), name)
    os.makedirs(path)
    write(os.path.join(path, "cookie_secret"), cookie)
    write(os.path.join(path, "session_key"), session)
    return path


def test_servers_must_share_their_secrets(tmp_path: Any) -> None:
    database = db.Database(f"sqlite:///{tmp_path}/c.sqlite")
    db.prepare(database.engine)
    cookie, session = b"c" * 64, b"s" * 64
    first = data_dir(tmp_path, "first", cookie, session)
    key = join_cluster(database, first)
    assert 0 < key < 2**63
    # Another server with the same files joins, with the same lock key.
    assert join_cluster(database, data_dir(tmp_path, "same", cookie, session)) == key
    # One with another cookie_secret is refused, told which file to copy and where.
    other = data_dir(tmp_path, "other", b"x" * 64, session)
    with pytest.raises(ClusterMismatch) as refused:
        join_cluster(database, other)
    message = str(refused.value)
    assert message.startswith("This server's cookie_secret differs from that of the other servers")
    assert os.path.join(other, "cookie_secret") in message and "session_key" not in message
    both = data_dir(tmp_path, "both", b"x" * 64, b"y" * 64)
    with pytest.raises(ClusterMismatch, match="cookie_secret, session_key differ"):
        join_cluster(database, both)
    # The fingerprints tell nothing of the secrets.
    stored = database.call(lambda s: s.execute(text("SELECT fingerprints FROM cluster")).scalar())
    assert "ccc" not in str(stored) and "sss" not in str(stored)
    # A channel key, new (the channel moved to tcp://), is recorded; a different one refused.
    write(os.path.join(first, "session_channel.key"), b"P" * 40 + b"\n" + b"S" * 40 + b"\n")
    join_cluster(database, first)
    write(os.path.join(other, "cookie_secret"), cookie)
    write(os.path.join(other, "session_channel.key"), b"Q" * 40 + b"\n" + b"S" * 40 + b"\n")
    with pytest.raises(ClusterMismatch, match="session_channel.key differs"):
        join_cluster(database, other)
    # Replacing the installation's secrets on purpose: recorded, and the old ones refused.
    assert join_cluster(database, other, replace=True) == key
    with pytest.raises(ClusterMismatch, match="session_channel.key"):
        join_cluster(database, first)
    assert (
        local_fingerprints(other)["session_channel.key"] != local_fingerprints(first)["session_channel.key"]
    )
    database.close()


# ---- the database's checks ----------------------------------------------------------------------
def test_a_database_newer_than_the_code_is_refused(tmp_path: Any) -> None:
    database = db.Database(f"sqlite:///{tmp_path}/n.sqlite")
    db.prepare(database.engine)
    db.prepare(database.engine)  # (current: accepted)

    def at(revision: str) -> None:
        database.call(
            lambda s: s.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": revision})
        )

    at("0042_later")
    with pytest.raises(
        db.DatabaseNewer, match=f"'0042_later', newer than .* knows up to '{db.HEAD_REVISION}'"
    ):
        db.prepare(database.engine)
    with pytest.raises(db.DatabaseNewer):
        db.upgrade(database.engine, database.url)
    at("0000_older")  # unknown but no newer: outdated, as before
    with pytest.raises(db.DatabaseOutdated, match="uws upgrade-db") as e:
        db.prepare(database.engine)
    assert not isinstance(e.value, db.DatabaseNewer)
    assert db.HEAD_REVISION in db.known_revisions() and "0001_initial" in db.known_revisions()
    assert db.revision_number("0003_cluster") == 3 and db.revision_number("x") == -1
    database.close()


def test_postgresql_timeouts_leave_the_urls_own() -> None:
    args = db.postgresql_connect_args("postgresql+psycopg://u@h/d?options=-csearch_path%3Ds")
    assert args["connect_timeout"] == db.PG_CONNECT_TIMEOUT_SECONDS and args["tcp_user_timeout"] > 0
    assert args["options"] == f"-c statement_timeout={db.PG_STATEMENT_TIMEOUT} -csearch_path=s"
    args = db.postgresql_connect_args("postgresql+psycopg://u@h/d?connect_timeout=20")
    assert "connect_timeout" not in args  # the URL's own, given by SQLAlchemy
    assert args["options"] == f"-c statement_timeout={db.PG_STATEMENT_TIMEOUT}"


def test_which_database_errors_are_unavailability() -> None:
    import psycopg

    def wrapped(error: Exception) -> OperationalError:
        return OperationalError("SELECT 1", {}, error)

    assert db.unavailable(wrapped(psycopg.OperationalError("connection refused")))
    assert db.unavailable(wrapped(sqlite3.OperationalError("database is locked")))
    assert not db.unavailable(wrapped(sqlite3.OperationalError("no such table: x")))
    assert not db.unavailable(ValueError("not the database's"))
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    assert db.unavailable(PoolTimeout("QueuePool limit reached"))
