"""Which of the servers sharing a PostgreSQL database leads: the holder of an advisory lock.

Several `uws` processes may run against one PostgreSQL database, behind a load balancer that
sends requests to whichever answers 200 at GET /status/leader. The work that must run once (the
session channel, reconcile and Slurm polling, the idle culler, ending warnings, resuming
workspace work a previous leader left) runs only on the leader: the process that holds a
session-level advisory lock (pg_try_advisory_lock) on a connection of its own, outside the
pool. The others stand by: they answer /status/, /status/leader and /metrics, and 503 with
Retry-After to everything else, and try for the lock every `retry_seconds`.

The leader asks its lock connection a trivial query every `check_seconds`. An error, or no
answer within `timeout_seconds`, and it steps down at once: it stops answering as the leader,
stops the leader's work, and drops the connection. Two leaders never act together: a
connection that has gone silent keeps its lock on the database's side until PostgreSQL ends
it, which it is told to do after `session_timeout_seconds` without a query (idle_session_timeout,
and TCP keepalives), longer than the leader takes to notice and step down. A leader that
stops (SIGTERM) or dies (its connections close with the process) frees the lock at once.

SQLite: one server, always the leader, no lock.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.engine import make_url
from traitlets import Bool, Float, Integer, TraitError, validate
from traitlets.config import LoggingConfigurable

from .cluster import join_cluster

if TYPE_CHECKING:
    from .db import Database

log = logging.getLogger("uws.leadership")

T = TypeVar("T")
LEADER = "leader"
STANDBY = "standby"
# What a standby still serves: health, leadership and metrics, for the load balancer and the
# monitoring (paths as routed, with and without the trailing slash).
STANDBY_PATHS = frozenset({"/status", "/status/", "/status/leader", "/status/leader/", "/metrics"})
STANDBY_MESSAGE = (
    "This server is a standby; the leader serves requests (GET /status/leader answers 200 there). "
    "Try again shortly."
)


def standby_serves(path: str) -> bool:
    """Whether a standby answers this path itself (the rest get 503 and Retry-After)."""
    return path in STANDBY_PATHS


def lock_conninfo(url: str) -> str:
    """The libpq URL of a SQLAlchemy one (postgresql+psycopg://... as postgresql://...)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class Leadership(LoggingConfigurable):
    """Leading or standing by (module docstring). Told what to run on gaining and on losing the
    lead; `role` says which it is now."""

    retry_seconds = Float(
        0.5,
        help="""Seconds between a standby's tries for the leadership lock (with PostgreSQL). A
        standby takes over at most this long after the leader has let the lock go.""",
    ).tag(config=True)
    check_seconds = Float(
        0.5,
        help="""Seconds between the leader's checks of its lock connection. A check that fails
        makes it step down at once (stop its work, answer as a standby) and try for the lock
        again like any standby.""",
    ).tag(config=True)
    timeout_seconds = Float(
        1.0,
        help="""Seconds the lock connection may take to connect or to answer a check. Longer
        counts as a lost database: the leader steps down.""",
    ).tag(config=True)
    session_timeout_seconds = Float(
        5.0,
        help="""Seconds after which PostgreSQL ends a lock connection it has not heard from
        (idle_session_timeout, PostgreSQL 14 and later; and TCP keepalives), freeing the lock for
        a standby when the leader is cut off from the database. Must be longer than
        check_seconds + timeout_seconds, the time the leader takes to notice and step down.""",
    ).tag(config=True)
    lock_key = Integer(
        0,
        help="""The advisory lock's key (a 64-bit integer); servers with the same key exclude
        each other. 0 (the default): the key recorded in the database's `cluster` table, made
        when the first server started, so servers sharing a database (and schema) share it and
        installations in other schemas of the same database never take each other's lock.""",
    ).tag(config=True)
    replace_secrets = Bool(
        False,
        help="""Start even if this server's cookie_secret, session_key or session_channel.key
        differ from those the servers sharing this database recorded, and record this server's
        instead: for replacing the secrets of a whole installation, every other server stopped
        (they refuse to start with the old files afterwards). Normally a server with other
        secrets refuses to start, naming the file to copy.""",
    ).tag(config=True)

    @validate("session_timeout_seconds")
    def _session_timeout(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if value <= self.check_seconds + self.timeout_seconds:
            raise TraitError(
                "Leadership.session_timeout_seconds must be longer than check_seconds + timeout_seconds"
            )
        return value

    def __init__(
        self,
        db: Database | None,
        lead: Callable[[], Awaitable[None]],
        step_down: Callable[[], Awaitable[None]],
        **kw: Any,
    ) -> None:
        """`db`: the server's database (a SQLite one, or None: always the leader). `lead` and
        `step_down` start and stop the leader's work (UWSApp.start_leading, stop_leading)."""
        super().__init__(**kw)
        self.db = db
        postgresql = db is not None and db.engine.dialect.name == "postgresql"
        self.conninfo = lock_conninfo(db.url) if db is not None and postgresql else None
        self.key = self.lock_key
        self._lead = lead
        self._step_down = step_down
        self.leading = False
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._starting: asyncio.Future[None] | None = None  # the leader's work, starting
        self._closed = False

    @property
    def role(self) -> str:
        return LEADER if self.leading else STANDBY

    # ---- life cycle --------------------------------------------------------------------------
    def join(self, data_dir: str) -> None:
        """At start-up: this server's secrets checked against the installation's (ClusterMismatch
        when they differ; uws.cluster), and the lock's key read. SQLite: one server, nothing to
        agree with; the record follows this server's files."""
        assert self.db is not None
        replace = self.replace_secrets or self.conninfo is None
        key = join_cluster(self.db, data_dir, replace=replace)
        self.key = self.lock_key or key

    async def begin(self) -> None:
        """At start-up, before the port opens (so a lone server answers its first request as
        the leader): SQLite leads; PostgreSQL tries the lock once."""
        if self.conninfo is None:
            self.leading = True
            return
        self.leading = await self._try_lock()
        log.info(
            "Leadership: %s", "this server leads" if self.leading else "standing by (another server leads)"
        )

    async def run(self) -> None:
        """Once the port is open: start the leader's work if leading (awaited: a failure stops
        the server at start-up, as it always has), then watch the lock, or try for it, in the
        background."""
        if self.leading:
            await self._lead()
        if self.conninfo is not None:
            self._task = asyncio.ensure_future(self._loop())

    async def close(self) -> None:
        """At shutdown: the leader's work stopped, then the lock freed at once (its connection
        closed), so that a standby takes over within retry_seconds."""
        self._closed = True
        for task in (self._task, self._starting):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait({task})
        if self.leading:
            self.leading = False
            await self._stop_quietly()
        conn, self._conn = self._conn, None
        if conn is not None:
            # (After a check still under way, if any; not waiting long for a lost database.)
            await asyncio.wait({asyncio.ensure_future(_close_quietly(conn))}, timeout=self.timeout_seconds)

    # ---- the lock ----------------------------------------------------------------------------
    async def _loop(self) -> None:
        while not self._closed:
            if not self.leading:
                if not await self._try_lock():
                    await asyncio.sleep(self.retry_seconds)
                    continue
                self.leading = True
                log.warning("Leadership: this server now leads")
                # Watched while it starts: a database lost meanwhile stops it too.
                self._starting = asyncio.ensure_future(self._lead())
            reason = await self._watch(self._conn, self._starting)
            await self._give_up(reason)
            # (Not straight back: a start that failed would fail again at once.)
            await asyncio.sleep(self.retry_seconds)

    async def _watch(self, conn: Any, starting: asyncio.Future[None] | None) -> str:
        """Check the lock connection until it fails; return why."""
        while True:
            await asyncio.sleep(self.check_seconds)
            if starting is not None and starting.done():
                error = None if starting.cancelled() else starting.exception()
                if error is not None:
                    log.error("Starting the leader's work failed", exc_info=error)
                    return "starting the leader's work failed"
                starting = None
            try:
                await self._bounded(self._check(conn))
            except TimeoutError:
                return f"the database did not answer within {self.timeout_seconds:g} s"
            except Exception as e:
                return f"the database connection failed ({type(e).__name__}: {str(e).strip()[:200]})"

    async def _give_up(self, reason: str) -> None:
        """Step down at once: answer as a standby, stop the leader's work, drop the lock's
        connection (the lock goes with it, now or when the database notices)."""
        log.warning("Leadership: stepping down: %s", reason)
        self.leading = False
        starting, self._starting = self._starting, None
        if starting is not None and not starting.done():
            starting.cancel()
            await asyncio.wait({starting})
        await self._stop_quietly()
        conn, self._conn = self._conn, None
        self._discard(conn)

    async def _stop_quietly(self) -> None:
        try:
            await self._step_down()
        except Exception:
            log.exception("Stopping the leader's work failed")

    async def _try_lock(self) -> bool:
        """Whether the lock was got. A standby keeps its connection between tries (a new one
        each time would cost the database a process each time); one that fails is dropped,
        and the next try connects anew."""
        try:
            if self._conn is None:
                self._conn = await self._bounded(self._connect())
                await self._bounded(self._prepare(self._conn))
            return await self._bounded(self._acquire(self._conn))
        except TimeoutError:
            log.debug("Leadership: the database did not answer within %g s", self.timeout_seconds)
        except Exception as e:
            log.debug("Leadership: cannot try the lock: %s", e)
        conn, self._conn = self._conn, None
        self._discard(conn)
        return False

    async def _connect(self) -> Any:
        import psycopg

        assert self.conninfo is not None
        return await psycopg.AsyncConnection.connect(
            self.conninfo,
            autocommit=True,
            connect_timeout=max(2, math.ceil(self.timeout_seconds)),  # (libpq's least)
            keepalives=1,
            keepalives_idle=1,
            keepalives_interval=1,
            keepalives_count=max(1, math.ceil(self.timeout_seconds)),
            tcp_user_timeout=max(1, int(self.timeout_seconds * 1000)),
        )

    async def _prepare(self, conn: Any) -> None:
        """The database's side of a lost leader (module docstring): PostgreSQL ends the lock's
        connection after session_timeout_seconds without a query. (idle_session_timeout is
        PostgreSQL 14's: set where the server knows it.)"""
        timeout_ms = str(int(self.session_timeout_seconds * 1000))
        idle = str(max(1, math.ceil(self.session_timeout_seconds / 2)))
        await conn.execute(
            "SELECT set_config('idle_session_timeout', %s, false)"
            " FROM pg_settings WHERE name = 'idle_session_timeout'",
            (timeout_ms,),
        )
        await conn.execute(
            "SELECT set_config('tcp_keepalives_idle', %s, false),"
            " set_config('tcp_keepalives_interval', '1', false),"
            " set_config('tcp_keepalives_count', '2', false)",
            (idle,),
        )

    async def _acquire(self, conn: Any) -> bool:
        cursor = await conn.execute("SELECT pg_try_advisory_lock(%s::bigint)", (self.key,))
        row = await cursor.fetchone()
        return bool(row and row[0])

    async def _check(self, conn: Any) -> None:
        await conn.execute("SELECT 1")

    async def _bounded(self, awaitable: Awaitable[T]) -> T:
        """`awaitable`'s result within timeout_seconds, else TimeoutError at once. On a timeout
        it is cancelled but not waited for: psycopg, cancelled mid-query, first asks the server
        to cancel it, which can itself wait seconds on a database that does not answer."""
        task = asyncio.ensure_future(awaitable)
        done, _ = await asyncio.wait({task}, timeout=self.timeout_seconds)
        if not done:
            task.cancel()
            task.add_done_callback(_ignore_result)
            raise TimeoutError
        return task.result()

    def _discard(self, conn: Any) -> None:
        """Close a connection in the background (a query of its may still be being cancelled)."""
        if conn is not None:
            task = asyncio.ensure_future(_close_quietly(conn))
            task.add_done_callback(_ignore_result)


async def _close_quietly(conn: Any) -> None:
    try:
        async with conn.lock:  # (after a cancelled query's clean-up, if one is under way)
            pass
        await conn.close()
    except Exception:
        pass


def _ignore_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
