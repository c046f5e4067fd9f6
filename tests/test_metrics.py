"""GET /metrics end to end: figures that move with what happens on a real server (a real echo
session through the passthrough, an event websocket, quotas set with the CLI), Prometheus'
own checker (promtool) on the answer, and who may read it."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from helpers.api import create, get_ws, login, start, unique_name, wait_for, wait_ready, wait_status
from helpers.configs import LOCAL_CONFIG, PROXY_CONFIG
from helpers.harness import Client, Server, running_server

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"
PROMTOOL = shutil.which("promtool")


@pytest.fixture(scope="module")
def mserver(backend: str) -> Iterator[Server]:
    yield from running_server(backend, PROXY_CONFIG + "c.UWSApp.metrics_public = True\n")


@pytest.fixture(scope="module")
def owner(mserver: Server) -> Client:
    return login(mserver, mserver.client_token)


def scrape_text(server: Server, headers: dict[str, str] | None = None) -> str:
    r = requests.get(server.base + "/metrics", headers=headers or {}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == TEXT_FORMAT
    return r.text


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(server: Server) -> Samples:
    return parse(scrape_text(server))


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= set(have))


def requests_of(samples: Samples, route: str, method: str, status: str) -> float:
    return value(
        samples, "uws_http_request_duration_seconds_count", route=route, method=method, status=status
    )


def test_figures_follow_a_session_through_its_life(mserver: Server, owner: Client) -> None:
    before = scrape(mserver)
    w = create(owner)
    job = start(owner, w["id"], job_type="echo")
    ready = wait_ready(owner, job["id"], 30)
    base = f"{mserver.base}/passthrough/{job['id']}"

    # API requests, by route template and status
    during = scrape(mserver)
    assert (
        requests_of(during, "/workspaces/", "POST", "200")
        == requests_of(before, "/workspaces/", "POST", "200") + 1
    )
    assert requests_of(during, "/workspaces/{id}/{action}/", "PUT", "200") == 1
    assert requests_of(during, "/jobs/{id}/", "GET", "200") >= 1
    # the session, running, counted by its spawner; its start; its helper's heartbeats
    spawner = next(
        dict(labels)["spawner"] for (name, labels), v in during.items() if name == "uws_sessions" and v
    )
    assert spawner in ("LocalProcessSpawner", "SudoSpawner")
    assert value(during, "uws_sessions", status="running", spawner=spawner) == 1
    started = "uws_session_start_duration_seconds_count"
    assert value(during, started, spawner=spawner) == value(before, started, spawner=spawner) + 1
    assert 0 < value(during, "uws_session_start_duration_seconds_sum", spawner=spawner) < 30
    wait_for(lambda: value(scrape(mserver), "uws_helper_heartbeat_lag_seconds_count") >= 1, 10)
    assert 0 <= value(scrape(mserver), "uws_helper_silence_seconds") < 10
    assert value(during, "uws_db_call_duration_seconds_count") > value(
        before, "uws_db_call_duration_seconds_count"
    )

    # the passthrough: requests by status class, bytes both ways, upstream errors
    headers = owner.headers()
    for _ in range(3):
        assert requests.get(base + "/hello", headers=headers, timeout=10).text == "hello"
    big = requests.get(base + "/big?mb=1", headers=headers, timeout=30)
    assert len(big.content) == 1 << 20
    assert requests.post(base + "/echo", headers=headers, data=b"x" * 5000, timeout=10).status_code == 200
    slow = requests.get(base + "/slow?s=10", headers=headers, timeout=30)  # over proxy_request_timeout
    assert slow.status_code == 504
    after = scrape(mserver)
    relayed = "uws_passthrough_requests_total"
    assert value(after, relayed, status="2xx") - value(during, relayed, status="2xx") == 5
    assert value(after, relayed, status="5xx") - value(during, relayed, status="5xx") == 1
    errors = "uws_passthrough_upstream_errors_total"
    assert value(after, errors, kind="timeout") - value(during, errors, kind="timeout") == 1
    moved = "uws_passthrough_bytes_total"
    assert value(after, moved, direction="from_session") - value(during, moved, direction="from_session") >= (
        1 << 20
    ) + 3 * len("hello")
    assert value(after, moved, direction="to_session") - value(during, moved, direction="to_session") >= 5000

    # the end: no longer running, counted as ended
    owner.put(f"/jobs/{job['id']}/stop")
    wait_status(owner, job["id"], "complete")
    ended = scrape(mserver)
    assert value(ended, "uws_sessions", status="running", spawner=spawner) == 0
    done = "uws_sessions_ended_total"
    assert (
        value(ended, done, status="complete", spawner=spawner)
        == value(before, done, status="complete", spawner=spawner) + 1
    )
    assert ready["status"] == "running"


def test_event_websocket_is_counted_while_open(mserver: Server, owner: Client) -> None:
    before = scrape(mserver)
    url = mserver.base.replace("http://", "ws://") + "/ws/events"

    async def open_and_scrape() -> Samples:
        conn = await websocket_connect(HTTPRequest(url, headers=owner.headers(), connect_timeout=5))
        try:
            await asyncio.wait_for(conn.read_message(), 10)  # (the first message: the socket is set up)
            return await asyncio.to_thread(scrape, mserver)
        finally:
            conn.close()

    during = asyncio.run(open_and_scrape())
    for name in ("uws_websockets_open", "uws_event_subscribers"):
        assert value(during, name) == value(before, name) + 1, name
    wait_for(
        lambda: value(scrape(mserver), "uws_event_subscribers") == value(before, "uws_event_subscribers")
    )
    assert value(scrape(mserver), "uws_websockets_open") == value(before, "uws_websockets_open")


def test_quota_usage_is_counted_in_bands(mserver: Server) -> None:
    """A user at their disk maximum, one far under it, one with a core-hour maximum: counts per
    band, never a series per user."""
    before = scrape(mserver)
    users = [login(mserver, mserver.client_token) for _ in range(3)]
    used = []
    for user in users[:2]:
        w = create(user, workspace_details={"files": [{"name": "f.txt", "content": "x" * 2000}]})
        used.append(wait_for(lambda u=user, i=w["id"]: (get_ws(u, i) or {}).get("disk_space")))
    mserver.cli("quota", "set", users[0].username, "--disk-bytes", str(used[0]))
    mserver.cli("quota", "set", users[1].username, "--disk-bytes", str(used[1] * 100))
    mserver.cli("quota", "set", users[2].username, "--core-hours", "5")
    after = scrape(mserver)
    disk, hours = "uws_quota_disk_users", "uws_quota_core_hour_users"
    assert value(after, disk, usage="over_100") == value(before, disk, usage="over_100") + 1
    assert value(after, disk, usage="under_80") == value(before, disk, usage="under_80") + 1
    assert value(after, hours, usage="under_80") == value(before, hours, usage="under_80") + 1
    assert value(after, "uws_disk_used_bytes") >= value(before, "uws_disk_used_bytes") + sum(used)
    assert not any(user.username in str(labels) for (_, labels) in after for user in users)


def test_route_labels_are_templates_never_paths(mserver: Server, owner: Client) -> None:
    assert owner.get("/workspaces/987654321/").status_code == 200  # (an empty list: not the owner's)
    assert owner.get("/no/such/route/55555").status_code == 404
    samples = scrape(mserver)
    assert requests_of(samples, "/workspaces/{id}/", "GET", "200") >= 1
    assert requests_of(samples, "unmatched", "GET", "404") >= 1
    routes = {dict(labels).get("route") for (_, labels) in samples} - {None}
    assert not any(any(ch.isdigit() for ch in route) for route in routes if route), routes


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian package prometheus)")
def test_promtool_accepts_the_answer(mserver: Server, owner: Client) -> None:
    owner.get("/workspaces/")  # (so that labelled series exist beside the plain ones)
    text = scrape_text(mserver)
    assert "uws_http_request_duration_seconds_bucket" in text
    assert PROMTOOL is not None
    checked = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True)
    assert checked.returncode == 0 and not checked.stdout.strip() and not checked.stderr.strip(), (
        checked.stdout + checked.stderr
    )


# ---- who may read them --------------------------------------------------------------------
ADMIN = unique_name("admin")


@pytest.fixture(scope="module")
def private_server(backend: str) -> Iterator[Server]:
    config = LOCAL_CONFIG + f"c.UWSApp.admin_users = {{{ADMIN!r}}}\n"
    yield from running_server(backend, config)


@pytest.mark.parametrize(
    "header,message",
    [
        (None, "Authentication credentials were not provided."),
        ("Token 0000000000000000000000000000000000000000", "Invalid token provided."),
    ],
)
def test_without_a_valid_token_is_401(private_server: Server, header: str | None, message: str) -> None:
    r = requests.get(
        private_server.base + "/metrics", headers={"UWS-Authorization": header} if header else {}, timeout=10
    )
    assert r.status_code == 401
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {"success": False, "message": message}


@pytest.mark.parametrize("header", ["UWS-Authorization", "Authorization"])
def test_an_ordinary_users_token_is_403(private_server: Server, header: str) -> None:
    """In either header (Prometheus sends the standard one): the token is read, and refused."""
    user = login(private_server, private_server.client_token)
    r = requests.get(private_server.base + "/metrics", headers={header: f"Bearer {user.token}"}, timeout=10)
    assert r.status_code == 403
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {
        "success": False,
        "message": "Reading the metrics needs an admin's token or a token with the metrics scope.",
    }
    assert "uws_" not in r.text


def test_other_methods_are_json_405(private_server: Server) -> None:
    r = private_server.client().post("/metrics", {})
    assert r.status_code == 405 and r.json()["success"] is False


def test_an_admins_token_reads_them(private_server: Server) -> None:
    admin = login(private_server, private_server.client_token, username=ADMIN)
    r = admin.get("/metrics")
    assert r.status_code == 200 and r.headers["Content-Type"] == TEXT_FORMAT
    assert "uws_sessions" in r.text
    # as Prometheus sends it
    bearer = {"Authorization": f"Bearer {admin.token}"}
    r = requests.get(private_server.base + "/metrics", headers=bearer, timeout=10)
    assert r.status_code == 200 and "uws_sessions" in r.text


def test_metrics_off_is_json_404(backend: str) -> None:
    for srv in running_server(backend, LOCAL_CONFIG + "c.UWSApp.metrics_enabled = False\n"):
        r = srv.client().get("/metrics")
        assert r.status_code == 404
        assert r.json() == {"success": False, "message": "Not found."}
