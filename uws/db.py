"""Database engine, schema versioning and running queries off the event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from sqlalchemy.orm import Session, sessionmaker

from . import orm
from .keys import create_private, tighten

log = logging.getLogger("uws.db")

# The newest migration in uws/alembic/versions. A test checks it matches Alembic's head, so a new
# migration cannot be added without updating it. Kept here so start-up need not import Alembic.
HEAD_REVISION = "0004_events"
VERSIONS_DIR = os.path.join(os.path.dirname(__file__), "alembic", "versions")
# PostgreSQL connections: how long a connection attempt may take, how long one statement may run
# (a lock waited on, a stuck query), and how soon an unacknowledged send or a silent peer ends a
# connection. Without them a request to a database that has vanished (a host down, a network
# cut) waits for the kernel's TCP timeouts, minutes; with them it fails within seconds and is
# answered 503 with Retry-After (`unavailable`). A URL's own parameters win (e.g.
# ?connect_timeout=10, or options=-c statement_timeout=120s).
PG_CONNECT_TIMEOUT_SECONDS = 3
PG_STATEMENT_TIMEOUT = "30s"
PG_CONNECT_ARGS = {
    "connect_timeout": PG_CONNECT_TIMEOUT_SECONDS,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,  # milliseconds
}

T = TypeVar("T")


class DatabaseOutdated(RuntimeError):
    pass


class DatabaseNewer(DatabaseOutdated):
    """The database is at a revision this code does not have: a newer UWS upgraded it."""


def secure_sqlite_files(url: str) -> None:
    """The database holds every session's helper secret: its file is 0600 whatever the umask,
    created so before SQLite opens it (SQLite gives -wal and -shm the database file's mode), and
    looser files left by an earlier version are tightened."""
    path = make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    create_private(path)
    for suffix in ("-wal", "-shm", "-journal"):
        tighten(path + suffix)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        secure_sqlite_files(url)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=8)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        serialize_sqlite_writes(engine)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    connect_args = postgresql_connect_args(url) if url.startswith("postgresql") else {}
    return create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True, connect_args=connect_args)


def postgresql_connect_args(url: str) -> dict[str, Any]:
    """The timeouts above, for libpq, where the URL does not set its own: its `options` (the
    tests' search_path, say) are kept, with the statement timeout put first so that a
    statement_timeout of the URL's, later, wins."""
    query = make_url(url).query
    args: dict[str, Any] = {key: value for key, value in PG_CONNECT_ARGS.items() if key not in query}
    options = query.get("options", "")
    if not isinstance(options, str):  # (given twice in the URL: the last one, as libpq takes it)
        options = options[-1]
    args["options"] = f"-c statement_timeout={PG_STATEMENT_TIMEOUT} {options}".strip()
    return args


def unavailable(error: BaseException) -> bool:
    """Whether a database error says the database cannot be reached or cannot answer now (a
    503 the client should retry), rather than a fault of the query (a 500): a lost or refused
    connection, a statement timeout, a server shutting down, no pooled connection free, or
    SQLite's lock held too long. SQLite's other OperationalErrors (no such table...) are faults."""
    if isinstance(error, SATimeoutError):
        return True
    if not isinstance(error, DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    if not isinstance(error, OperationalError):
        return False
    if isinstance(error.orig, sqlite3.Error):
        return "locked" in str(error.orig) or "busy" in str(error.orig)
    return True


WRITE_PREFIXES = ("INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER", "REPLACE")


def serialize_sqlite_writes(engine: Engine) -> None:
    """Let one of this process's threads write at a time.

    SQLite allows a single writer; when several threads race for it, the losers sleep in SQLite's
    busy handler with growing back-off, which turns a 1 ms transaction into a 100 ms wait. A
    Python lock taken at a transaction's first write and released at its end queues them fairly.
    """
    lock = threading.Lock()

    @event.listens_for(engine, "before_cursor_execute")
    def _take(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not conn.info.get("uws_writing") and statement.lstrip()[:7].upper().startswith(WRITE_PREFIXES):
            lock.acquire()
            conn.info["uws_writing"] = True

    def _release(conn: Any) -> None:
        if conn.info.pop("uws_writing", False):
            lock.release()

    event.listen(engine, "commit", _release)
    event.listen(engine, "rollback", _release)


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", os.path.join(os.path.dirname(__file__), "alembic"))
    cfg.attributes["engine"] = engine
    return cfg


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def is_empty(engine: Engine) -> bool:
    with engine.connect() as conn:
        return not inspect(conn).get_table_names()


def create_new(engine: Engine) -> None:
    """A new database gets the current schema and is stamped with the head revision."""
    from .events_store import seed_event_ids

    orm.Base.metadata.create_all(engine)
    with engine.begin() as conn:
        seed_event_ids(conn)
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version (version_num) VALUES (:v)"), {"v": HEAD_REVISION})


def known_revisions() -> set[str]:
    """Every revision this code has a migration for (each file in uws/alembic/versions is named
    after its revision), read without importing Alembic."""
    return {name[:-3] for name in os.listdir(VERSIONS_DIR) if name.endswith(".py") and name[:1].isdigit()}


def revision_number(revision: str) -> int:
    """The number a revision's id starts with (0003 of 0003_cluster); -1 for none."""
    digits = revision[: len(revision) - len(revision.lstrip("0123456789"))]
    return int(digits) if digits else -1


def refuse_newer(revision: str | None) -> None:
    """A database a newer UWS has upgraded is never touched by this one: its schema may have
    changed under the code's feet, and Alembic could not go back from a revision it does not
    know anyway. Called before anything else is done to the database. (A revision this code
    does not know, numbered below its head, is no newer: the caller calls it outdated.)"""
    if (
        revision is not None
        and revision not in known_revisions()
        and revision_number(revision) > revision_number(HEAD_REVISION)
    ):
        raise DatabaseNewer(
            f"The database is at revision {revision!r}, newer than this server's code: this server "
            f"knows up to {HEAD_REVISION!r}. A newer UWS has upgraded the database; run that "
            "version here too (every server sharing a database must run the same version)."
        )


def upgrade(engine: Engine, url: str) -> str:
    """Bring any database to the head revision; SQLite files are backed up first. A database
    newer than the code is refused before anything is done to it."""
    from alembic import command

    if is_empty(engine):
        create_new(engine)
        return "created"
    before = current_revision(engine)
    if before == HEAD_REVISION:
        return "up to date"
    refuse_newer(before)
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if os.path.exists(path):
            backup = f"{path}.{before or 'unversioned'}.bak"
            shutil.copy2(path, backup)
            tighten(backup)
            log.info("Backed up %s to %s", path, backup)
    command.upgrade(alembic_config(engine), "head")
    return f"upgraded from {before} to {HEAD_REVISION}"


def prepare(engine: Engine) -> None:
    """At start-up: create a new database, accept a current one, refuse an outdated one, and
    one newer than the code (naming its revision)."""
    if is_empty(engine):
        create_new(engine)
        return
    rev = current_revision(engine)
    refuse_newer(rev)
    if rev != HEAD_REVISION:
        raise DatabaseOutdated(
            f"The database is at revision {rev!r}, this server needs {HEAD_REVISION!r}. "
            "Run `uws upgrade-db` (with the same --db-url or --config) and start again."
        )


def open_database(data_dir: str, url: str = "") -> Database:
    """The server's database: `url`, or by default SQLite in the data directory, which is made
    here, private from the start (the database, cookie_secret and session_key live there)."""
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    return Database(url or f"sqlite:///{os.path.join(data_dir, 'uws.sqlite')}")


class Database:
    """Runs blocking SQLAlchemy work on a thread pool so a slow query never stalls the loop."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="uws-db")
        # Told how long each run() took its caller (the server's metrics, when they are on).
        self.observe: Callable[[float], None] | None = None

    def session(self) -> Session:
        return self.sessionmaker()

    def call(self, fn: Callable[[Session], T]) -> T:
        """Run fn(session) synchronously and commit; roll back when it raises."""
        with self.sessionmaker() as session:
            try:
                result = fn(session)
                session.commit()
                return result
            except BaseException:
                session.rollback()
                raise

    async def run(self, fn: Callable[[Session], T]) -> T:
        loop = asyncio.get_running_loop()
        observe = self.observe
        if observe is None:
            return await loop.run_in_executor(self.executor, self.call, fn)
        began = time.perf_counter()
        try:
            return await loop.run_in_executor(self.executor, self.call, fn)
        finally:
            observe(time.perf_counter() - began)

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.engine.dispose()
