"""Prometheus metrics (GET /metrics, uws/handlers/metrics.py), with prometheus_client.

Two kinds, by what they describe:
- Events are counted where they happen: API requests (by route template, method and status,
  with their latency), database calls, session starts (submit to running) and ends, helper
  heartbeats. The passthrough's requests, bytes and upstream errors are plain integers the relay
  adds to (uws.passthrough.service.PassthroughCounts), read here at scrape time: its hot path
  pays an integer addition, not a metric's lock.
- State is read when /metrics is asked, never kept up to date by hand at every transition (a
  missed transition would drift for the life of the process): sessions by status and spawner
  and the quota bands from one database read on the database's threads, open websockets,
  event-bus subscribers and helper silence from the live objects.

Each server has a registry of its own (not prometheus_client's global one), so several servers
built in one process keep their figures apart.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import case, func, select

from . import orm
from .sessions.servicebase import SessionObserver
from .sessions.status import ACTIVE

if TYPE_CHECKING:
    from tornado import web

    from .db import Database
    from .events import EventBus
    from .leadership import Leadership
    from .passthrough.front import FrontServer
    from .passthrough.service import ProxyService
    from .sessions.record import LiveSessions
    from .websockets import WebSocketCounter

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
# Submit to running: a local session takes about a second, a Slurm job may queue for hours.
START_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Users with a maximum, by how much of it they use: a few bands rather than a series per user,
# whose number would grow with the users (and a scrape with it) without bound.
QUOTA_BANDS = ("under_80", "80_to_90", "90_to_100", "over_100")
UNMATCHED = "unmatched"  # the route label of a path no route matches (its JSON 404)


# ---- route templates ---------------------------------------------------------------------------
_TEMPLATE_STEPS = (
    (re.compile(r"\$$"), ""),
    (re.compile(re.escape("(?:/.*)?")), "/{path}"),
    (re.compile(re.escape(".*")), "{path}"),
    (re.compile(re.escape("([0-9]{1,4300})")), "{id}"),
    (re.compile(re.escape("([^/]+)")), "{action}"),
    (re.compile(r"\((?!\?)[^()]*\)"), "{param}"),  # any other group (a name, say)
    (re.compile(re.escape("/?") + "$"), "/"),
    (re.compile(r"\\(.)"), r"\1"),
)


def route_template(pattern: str) -> str:
    """A route's regular expression as the label requests are counted under: `/jobs/{id}/`
    for `/jobs/([0-9]{1,4300})/?`. Never the request's own path, whose ids would make a
    series per job."""
    template = pattern
    for regex, replacement in _TEMPLATE_STEPS:
        template = regex.sub(replacement, template)
    return template if template.startswith("/") else "/" + template


def route_patterns(routes: Iterable[Any]) -> Iterator[tuple[type, str]]:
    """(handler class, pattern) of each route, given as a tuple or as a Tornado Rule."""
    for route in routes:
        if isinstance(route, tuple | list):
            yield route[1], route[0]
        else:
            yield route.target, route.matcher.regex.pattern


class RouteTemplates:
    """The template of the route that served a request, from its handler class (and, for a
    class that serves several routes, the path)."""

    def __init__(self, routes: Iterable[Any]) -> None:
        self._by_class: dict[type, list[tuple[re.Pattern[str], str]]] = {}
        for cls, pattern in route_patterns(routes):
            anchored = pattern if pattern.endswith("$") else pattern + "$"
            candidates = self._by_class.setdefault(cls, [])
            template = route_template(pattern)
            if all(t != template for _, t in candidates):
                candidates.append((re.compile(anchored), template))

    def template(self, cls: type, path: str) -> str:
        candidates = self._by_class.get(cls)
        if not candidates:
            return UNMATCHED
        if len(candidates) > 1:
            for regex, template in candidates:
                if regex.match(path):
                    return template
        return candidates[0][1]


# ---- what is read at scrape time -----------------------------------------------------------------
@dataclass
class DatabaseState:
    """What one scrape reads from the database."""

    sessions: list[tuple[str, str, int]] = field(default_factory=list)  # status, spawner, count
    disk_bands: tuple[int, ...] = (0, 0, 0, 0)
    core_hour_bands: tuple[int, ...] = (0, 0, 0, 0)
    disk_used_bytes: int = 0
    core_hours_used: float = 0.0


def _bands(used: Any, maximum: Any) -> list[Any]:
    """Counts of rows in each QUOTA_BANDS band, as SQL sums (no division: integers stay exact)."""
    over = used >= maximum
    over_90 = used * 10 >= maximum * 9
    over_80 = used * 10 >= maximum * 8
    return [
        func.coalesce(func.sum(case((cond, 1), else_=0)), 0)
        for cond in (~over_80, over_80 & ~over_90, over_90 & ~over, over)
    ]


def read_database_state(session: Any) -> DatabaseState:
    """Sessions by status and spawner (active ones: the ended are counted as they end), users
    by quota band, and the totals used; a handful of rows whatever the number of users."""
    spawner = orm.Job.spawner_state["spawner"].as_string().label("spawner")
    sessions = session.execute(
        select(orm.Job.status, spawner, func.count())
        .where(orm.Job.status.in_([str(s) for s in ACTIVE]))
        .group_by(orm.Job.status, spawner)
    ).all()
    disk_per_user = (
        select(orm.Workspace.user_id, func.sum(orm.Workspace.disk_space).label("used"))
        .group_by(orm.Workspace.user_id)
        .subquery()
    )
    used_disk = func.coalesce(disk_per_user.c.used, 0)
    disk_bands = session.execute(
        select(*_bands(used_disk, orm.Quota.max_disk_bytes))
        .select_from(orm.Quota)
        .outerjoin(disk_per_user, disk_per_user.c.user_id == orm.Quota.user_id)
        .where(orm.Quota.max_disk_bytes.is_not(None), orm.Quota.max_disk_bytes > 0)
    ).one()
    used_hours = func.coalesce(orm.Quota.used_core_hours, 0.0)
    hour_bands = session.execute(
        select(*_bands(used_hours, orm.Quota.max_core_hours)).where(
            orm.Quota.max_core_hours.is_not(None), orm.Quota.max_core_hours > 0
        )
    ).one()
    disk_total = session.scalar(select(func.coalesce(func.sum(orm.Workspace.disk_space), 0)))
    hours_total = session.scalar(select(func.coalesce(func.sum(orm.Quota.used_core_hours), 0.0)))
    return DatabaseState(
        [(str(status), name or "none", int(count)) for status, name, count in sessions],
        tuple(int(n) for n in disk_bands),
        tuple(int(n) for n in hour_bands),
        int(disk_total or 0),
        float(hours_total or 0.0),
    )


@dataclass(frozen=True)
class LiveParts:
    """The objects whose state the metrics read at scrape time."""

    proxy: ProxyService
    events: EventBus
    websockets: WebSocketCounter
    live: LiveSessions
    front: FrontServer
    # None: a server on its own, always the leader.
    leadership: Leadership | None = None


class StateCollector:
    """A prometheus_client collector: what is true now, read when /metrics is asked."""

    def __init__(self, parts: LiveParts) -> None:
        self.parts = parts
        self.database = DatabaseState()

    def describe(self) -> list[Metric]:
        return []  # (no names claimed up front: collect() needs a database read first)

    def collect(self) -> Iterator[Metric]:
        parts, state = self.parts, self.database
        sessions = GaugeMetricFamily(
            "uws_sessions", "Active sessions by status and spawner class.", labels=["status", "spawner"]
        )
        for status, spawner, count in state.sessions:
            sessions.add_metric([status, spawner], count)
        yield sessions
        for name, what, bands in (
            ("uws_quota_disk_users", "disk", state.disk_bands),
            ("uws_quota_core_hour_users", "core-hour", state.core_hour_bands),
        ):
            yield one_label(
                GaugeMetricFamily,
                name,
                f"Users with a {what} maximum, by the share of it they use.",
                "usage",
                zip(QUOTA_BANDS, bands, strict=True),
            )
        yield GaugeMetricFamily(
            "uws_disk_used_bytes", "Disk space of every workspace.", value=state.disk_used_bytes
        )
        yield GaugeMetricFamily(
            "uws_core_seconds_charged",
            "Core time charged to every user so far (their core hours, in seconds).",
            value=state.core_hours_used * 3600.0,
        )
        yield GaugeMetricFamily(
            "uws_websockets_open",
            "Open websockets: event streams and relayed session websockets.",
            value=sum(parts.websockets.open.values()),
        )
        yield GaugeMetricFamily(
            "uws_event_subscribers",
            "Subscribers of the live event bus (one per event websocket).",
            value=parts.events.subscriber_count(),
        )
        yield GaugeMetricFamily(
            "uws_open_connections", "Client connections open.", value=parts.front.open_connections()
        )
        yield GaugeMetricFamily(
            "uws_leader",
            "1 on the server that leads the servers sharing the database, 0 on a standby.",
            value=1 if parts.leadership is None or parts.leadership.leading else 0,
        )
        yield GaugeMetricFamily(
            "uws_helper_silence_seconds",
            "The longest any active session's helper has been silent (0: none).",
            value=self._longest_silence(),
        )
        yield from self._passthrough()

    def _longest_silence(self) -> float:
        now = time.monotonic()
        heard = [now - record.last_seen for record in self.parts.live if record.heard]
        return max(heard, default=0.0)

    def _passthrough(self) -> Iterator[Metric]:
        counts = self.parts.proxy.counts
        yield one_label(
            CounterMetricFamily,
            "uws_passthrough_requests",
            "Requests relayed to sessions (websocket upgrades included), by the status class answered.",
            "status",
            zip(counts.STATUS_CLASSES, counts.requests, strict=True),
        )
        yield one_label(
            CounterMetricFamily,
            "uws_passthrough_bytes",
            "Bytes relayed between browsers and sessions (bodies and websocket bytes).",
            "direction",
            [("to_session", counts.bytes_in), ("from_session", counts.bytes_out)],
        )
        yield one_label(
            CounterMetricFamily,
            "uws_passthrough_upstream_errors",
            "Relayed requests the session did not answer: could not connect or broke off (failed), or too slow (timeout).",
            "kind",
            [("failed", counts.upstream_failed), ("timeout", counts.upstream_timeouts)],
        )


def one_label(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    documentation: str,
    label: str,
    values: Iterable[tuple[str, float]],
) -> Metric:
    """A metric family with one label, a sample for each (label value, value)."""
    family = kind(name, documentation, labels=[label])
    for label_value, value in values:
        family.add_metric([label_value], value)
    return family


# ---- the server's metrics ---------------------------------------------------------------------
class ServerMetrics(SessionObserver):
    """Every metric of one server, in a registry of its own."""

    def __init__(self, db: Database, parts: LiveParts, routes: Iterable[Any]) -> None:
        self.db = db
        # No `_created` series beside each counter and histogram: they would double the answer
        # (and its time) for a figure Prometheus does not need. (prometheus_client's switch is
        # for the whole process, which holds only servers' registries.)
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        self.routes = RouteTemplates(routes)
        self.requests = Histogram(
            "uws_http_request_duration_seconds",
            "API requests served by the server's handlers, by route template, method and status.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # Labelled children by (handler class, path template, method, status): a dict lookup per
        # request instead of prometheus_client's labels() (string checks and a lock).
        self._request_children: dict[tuple[str, str, int], Any] = {}
        self.db_calls = Histogram(
            "uws_db_call_duration_seconds",
            "Database calls as their caller waits for them: the wait for a database thread and the work.",
            buckets=DB_BUCKETS,
            registry=self.registry,
        )
        self.start_durations = Histogram(
            "uws_session_start_duration_seconds",
            "Sessions from their start request (submit) to running, by spawner class.",
            ["spawner"],
            buckets=START_BUCKETS,
            registry=self.registry,
        )
        self.ended_sessions = Counter(
            "uws_sessions_ended",
            "Sessions that ended, by final status and spawner class.",
            ["status", "spawner"],
            registry=self.registry,
        )
        self.heartbeat_lags = Histogram(
            "uws_helper_heartbeat_lag_seconds",
            "Heartbeats from the session helpers: from the helper's clock at sending to the server's "
            "at receiving (on other hosts, clock skew counts too).",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.state = StateCollector(parts)
        self.registry.register(self.state)
        self._reading: asyncio.Future[DatabaseState] | None = None
        db.observe = self.db_calls.observe

    # ---- events ----------------------------------------------------------------------------
    def log_function(self, log: Callable[[web.RequestHandler], None]) -> Callable[[web.RequestHandler], None]:
        """The Tornado application's log_function: `log`, then the request counted."""

        def log_and_count(handler: web.RequestHandler) -> None:
            log(handler)
            self.count_request(handler)

        return log_and_count

    def count_request(self, handler: web.RequestHandler) -> None:
        request = handler.request
        method = request.method if request.method in METHODS else "other"
        route = self.routes.template(type(handler), request.path)
        key = (route, method or "other", handler.get_status())
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(route, key[1], str(key[2]))
        child.observe(request.request_time())

    def started(self, spawner: str, seconds: float) -> None:
        self.start_durations.labels(spawner or "none").observe(max(0.0, seconds))

    def ended(self, spawner: str, status: str) -> None:
        self.ended_sessions.labels(status, spawner or "none").inc()

    def heartbeat(self, sent_at: float) -> None:
        self.heartbeat_lags.observe(max(0.0, time.time() - sent_at))

    # ---- scrape ----------------------------------------------------------------------------
    async def render(self) -> bytes:
        """The metrics in Prometheus' text format. The database is read on its threads, once for
        scrapes that arrive together; the rest is read on the event loop (a few milliseconds)."""
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self.db.run(read_database_state))
        self.state.database = await asyncio.shield(self._reading)
        return generate_latest(self.registry)
