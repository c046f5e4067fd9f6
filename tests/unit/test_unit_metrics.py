"""The metrics' pure parts (uws.metrics): route templates as labels, the passthrough's counts,
the one database read of a scrape, and registries kept apart per server."""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from uws import orm
from uws.db import Database, create_new
from uws.handlers import api_host_routes, session_host_routes
from uws.handlers.jobs import JobActionHandler, JobsHandler
from uws.handlers.ws import JobStreamHandler
from uws.metrics import (
    UNMATCHED,
    LiveParts,
    RouteTemplates,
    ServerMetrics,
    read_database_state,
    route_template,
)
from uws.passthrough.service import PassthroughCounts
from uws.sessions.record import LiveSessions

REGEX_SYNTAX = re.compile(r"[()\[\]*+?\\^$|]")


def all_routes() -> list[Any]:
    return [*api_host_routes("path"), *api_host_routes("origin"), *session_host_routes]


def test_every_route_has_a_template_without_regular_expression_syntax() -> None:
    from uws.metrics import route_patterns

    for _, pattern in route_patterns(all_routes()):
        template = route_template(pattern)
        assert template.startswith("/") and not REGEX_SYNTAX.search(template), (pattern, template)


@pytest.mark.parametrize(
    "pattern,template",
    [
        (r"/workspaces/?", "/workspaces/"),
        (r"/jobs/([0-9]{1,4300})/?", "/jobs/{id}/"),
        (r"/jobs/([0-9]{1,4300})/([^/]+)/?", "/jobs/{id}/{action}/"),
        (r"/openapi.yaml", "/openapi.yaml"),
        (r"/metrics", "/metrics"),
        (r"/passthrough/([0-9]{1,4300})(?:/.*)?$", "/passthrough/{id}/{path}"),
        (r"/passthrough/.*", "/passthrough/{path}"),
        (r".*$", "/{path}"),
        (r"/admin/users/([^/]{1,255})/?", "/admin/users/{param}/"),
    ],
)
def test_route_template(pattern: str, template: str) -> None:
    assert route_template(pattern) == template


def test_a_class_with_several_routes_is_told_apart_by_path() -> None:
    routes = RouteTemplates(api_host_routes("path"))
    assert routes.template(JobsHandler, "/jobs/") == "/jobs/"
    assert routes.template(JobsHandler, "/jobs/12") == "/jobs/{id}/"
    assert routes.template(JobActionHandler, "/jobs/12/stop/") == "/jobs/{id}/{action}/"
    assert routes.template(JobStreamHandler, "/ws/jobs/7/") == "/ws/jobs/{id}/"
    assert routes.template(object, "/anything/99") == UNMATCHED


def test_passthrough_counts_by_status_class() -> None:
    counts = PassthroughCounts()
    for status in (200, 204, 304, 404, 502, 504, 101, 0, 700):
        counts.answered(status)
    assert dict(zip(counts.STATUS_CLASSES, counts.requests, strict=True)) == {
        "none": 2,  # nothing answered, and a status no class holds
        "1xx": 1,
        "2xx": 2,
        "3xx": 1,
        "4xx": 1,
        "5xx": 2,
    }
    counts.upstream_error(timeout=True)
    counts.upstream_error(timeout=False)
    counts.upstream_error(timeout=False)
    assert (counts.upstream_timeouts, counts.upstream_failed) == (1, 2)


@pytest.fixture
def database(tmp_path: Any) -> Any:
    db = Database(f"sqlite:///{tmp_path}/uws.sqlite")
    create_new(db.engine)
    yield db
    db.close()


def add_user(session: Any, name: str) -> orm.User:
    user = orm.User(username=name, email=f"{name}@example.org")
    session.add(user)
    session.flush()
    return user


def test_database_state_groups_sessions_and_bands_quotas(database: Database) -> None:
    def fill(session: Any) -> None:
        users = [add_user(session, f"u{i}") for i in range(5)]
        jobs = [
            ("running", "LocalProcessSpawner"),
            ("running", "LocalProcessSpawner"),
            ("running", "SlurmSpawner"),
            ("pending", None),  # not submitted yet: no spawner recorded
            ("complete", "LocalProcessSpawner"),  # ended: counted as it ends, not here
            ("failed", "SlurmSpawner"),
        ]
        for status, spawner in jobs:
            state = {"spawner": spawner} if spawner else {}
            session.add(
                orm.Job(workspace_id=1, user_id=users[0].id, job_type="t", status=status, spawner_state=state)
            )
        # disk: u0 uses 50 of 100 (under 80%), u1 85 of 100, u2 95 of 100, u3 100 of 100;
        # u4 has no maximum and 1000 bytes.
        for user, used in zip(users, (50, 85, 95, 100, 1000), strict=True):
            session.add(
                orm.Workspace(user_id=user.id, name="w", description="", file_path="/x", disk_space=used)
            )
        for user in users[:4]:
            session.add(orm.Quota(user_id=user.id, max_disk_bytes=100, used_core_hours=0.0))
        # core hours: u4 used 9.5 of 10 (90 to 100%)
        session.add(orm.Quota(user_id=users[4].id, max_core_hours=10.0, used_core_hours=9.5))

    database.call(fill)
    state = database.call(read_database_state)
    assert sorted(state.sessions) == [
        ("pending", "none", 1),
        ("running", "LocalProcessSpawner", 2),
        ("running", "SlurmSpawner", 1),
    ]
    assert state.disk_bands == (1, 1, 1, 1)
    assert state.core_hour_bands == (0, 0, 1, 0)
    assert state.disk_used_bytes == 50 + 85 + 95 + 100 + 1000
    assert state.core_hours_used == 9.5


def parts() -> LiveParts:
    return LiveParts(
        proxy=SimpleNamespace(counts=PassthroughCounts()),  # type: ignore[arg-type]
        events=SimpleNamespace(subscriber_count=lambda: 3),  # type: ignore[arg-type]
        websockets=SimpleNamespace(open={1: 2, 5: 1}),  # type: ignore[arg-type]
        live=LiveSessions(),
        front=SimpleNamespace(open_connections=lambda: 7),  # type: ignore[arg-type]
    )


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_servers_keep_their_registries_apart(database: Database) -> None:
    """Two servers in one process: each counts its own, and neither clashes with the other's
    names (prometheus_client's global registry would refuse the second)."""
    first = ServerMetrics(database, parts(), api_host_routes("path"))
    second = ServerMetrics(database, parts(), api_host_routes("path"))
    first.started("LocalProcessSpawner", 1.5)
    first.ended("LocalProcessSpawner", "complete")

    async def both() -> tuple[bytes, bytes]:
        return await first.render(), await second.render()

    one, two = asyncio.run(both())
    mine, theirs = samples(one), samples(two)
    start_count = ("uws_session_start_duration_seconds_count", (("spawner", "LocalProcessSpawner"),))
    assert mine[start_count] == 1 and start_count not in theirs
    ended = ("uws_sessions_ended_total", (("spawner", "LocalProcessSpawner"), ("status", "complete")))
    assert mine[ended] == 1 and ended not in theirs
    assert mine[("uws_websockets_open", ())] == 3
    assert mine[("uws_event_subscribers", ())] == 3
    assert mine[("uws_open_connections", ())] == 7
    assert not any(name.endswith("_created") for name, _ in mine)
