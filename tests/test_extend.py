"""Extending a running session in place: PUT /jobs/<id>/extend/ with {"minutes": N}, through a
real server and real local sessions whose helper keeps the time limit (the Slurm spawners'
case is in test_slurm.py)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from helpers.api import create, get_job, login, start, wait_status
from helpers.configs import APP_PYTHON, LOCAL_CONFIG
from helpers.harness import Client, Server, running_server

EXTEND_CONFIG = (
    LOCAL_CONFIG
    + f"""
c.JobService.heartbeat_seconds = 1
c.JobService.reconcile_seconds = 1
c.UWSApp.stop_grace_seconds = 2
c.UWSApp.job_types = {{
    "short": {{"name": "Short", "job_type": "CommandJob", "environment_details": {{"main_resource": {{
        "command": ["sleep", "600"], "readiness_path": "", "time_limit_seconds": "4"}}}}}},
    "web": {{"name": "Web app", "job_type": "CommandJob", "max_time_limit_min": 3,
        "environment_details": {{"main_resource": {{
        "command": ["{APP_PYTHON}", "-m", "http.server", "{{port}}", "--bind", "127.0.0.1"],
        "readiness_path": "/", "url_path": "/"}}}}}},
    "crash": {{"name": "Crash", "job_type": "CommandJob", "environment_details": {{"main_resource": {{
        "command": ["sh", "-c", "exit 3"]}}}}}},
}}
"""
)


@pytest.fixture(scope="module")
def xserver(backend: str):
    yield from running_server(backend, EXTEND_CONFIG)


@pytest.fixture
def user(xserver: Server) -> Client:
    return login(xserver, xserver.client_token)


@pytest.fixture(scope="module")
def one_running(xserver: Server):
    """One running session, shared by the tests that must change nothing about it."""
    owner = login(xserver, xserver.client_token)
    job = start(owner, create(owner)["id"], job_type="web", resource_options={"time_limit_min": 1})
    yield owner, running(owner, job["id"])
    owner.put(f"/jobs/{job['id']}/stop")
    wait_status(owner, job["id"], "complete", timeout=30)


def running(c: Client, job_id: int) -> dict[str, Any]:
    return wait_status(c, job_id, "running", timeout=30)


def extend(c: Client, job_id: int, body: Any) -> Any:
    return c.put(f"/jobs/{job_id}/extend/", body)


def test_extension_moves_the_helpers_deadline(xserver: Server, user: Client) -> None:
    """A session with a 4 s limit, extended by a minute, is still running well after 4 s; its
    time_left comes back in the answer and as a job event on /ws/events."""
    job = start(user, create(user)["id"], job_type="short")
    running(user, job["id"])
    url = xserver.base.replace("http://", "ws://") + "/ws/events"

    async def extend_and_listen() -> tuple[Any, list[dict[str, Any]]]:
        conn = await websocket_connect(
            HTTPRequest(url, headers={"UWS-Authorization": f"Token {user.token}"}, connect_timeout=5)
        )
        await conn.read_message()  # the snapshot
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(None, lambda: extend(user, job["id"], {"minutes": 1}))
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            e["type"] == "job" and e["data"]["job_details"]["current_job_details"].get("time_left", 0) > 50
            for e in events
        ):
            events.append(json.loads(await asyncio.wait_for(conn.read_message(), 10)))
        conn.close()
        return answer, events

    answer, events = asyncio.run(extend_and_listen())
    assert answer.status_code == 200, answer.text
    extended = answer.json()["data"]["job"]
    assert extended["id"] == job["id"]
    assert 50 <= extended["job_details"]["current_job_details"]["time_left"] <= 64
    assert any(e["type"] == "job" and e["data"]["id"] == job["id"] for e in events)
    time.sleep(6)  # past the old 4 s limit
    assert get_job(user, job["id"])["status"] == "running"
    assert user.put(f"/jobs/{job['id']}/stop").status_code == 200
    wait_status(user, job["id"], "complete", timeout=30)


def test_extension_past_the_maximum_is_refused(xserver: Server, user: Client) -> None:
    """The job type's max_time_limit_min (3) bounds the whole limit; nothing changes."""
    job = start(user, create(user)["id"], job_type="web", resource_options={"time_limit_min": 2})
    running(user, job["id"])
    before = get_job(user, job["id"])["job_details"]["current_job_details"].get("time_left")
    r = extend(user, job["id"], {"minutes": 2})
    assert r.status_code == 422
    assert r.json() == {
        "success": False,
        "message": "The time limit would become 4 minutes; the maximum for this job type is 3 minutes.",
    }
    assert get_job(user, job["id"])["job_details"]["current_job_details"].get("time_left") == before
    ok = extend(user, job["id"], {"minutes": 1})
    assert ok.status_code == 200, ok.text
    assert 150 <= ok.json()["data"]["job"]["job_details"]["current_job_details"]["time_left"] <= 180
    user.put(f"/jobs/{job['id']}/stop")
    wait_status(user, job["id"], "complete", timeout=30)


def test_extension_needs_the_core_hour_quota(xserver: Server, user: Client) -> None:
    """The session's whole reservation (CPUs × new limit) must fit the quota: 403 with the
    quota's message, and the limit is unchanged."""
    xserver.cli("quota", "set", user.username, "--core-hours", "0.04")  # 2.4 CPU-minutes
    job = start(user, create(user)["id"], job_type="web", resource_options={"time_limit_min": 2})
    running(user, job["id"])
    r = extend(user, job["id"], {"minutes": 1})
    assert r.status_code == 403
    assert r.json()["message"] == (
        "Core hour quota exceeded: used 0.00000 core hours, requested 0.05000 core hours, "
        "maximum 0.04000 core hours."
    )
    assert get_job(user, job["id"])["job_details"]["current_job_details"]["time_left"] <= 120
    user.put(f"/jobs/{job['id']}/stop")
    wait_status(user, job["id"], "complete", timeout=30)


def test_extension_of_what_is_not_running_or_not_yours(xserver: Server, user: Client) -> None:
    other = login(xserver, xserver.client_token)
    job = start(user, create(user)["id"], job_type="crash")
    wait_status(user, job["id"], "failed", timeout=30)
    r = extend(user, job["id"], {"minutes": 1})
    assert (r.status_code, r.json()["message"]) == (409, "Job is not running.")
    live = start(user, create(user)["id"], job_type="web", resource_options={"time_limit_min": 1})
    running(user, live["id"])
    r = extend(other, live["id"], {"minutes": 1})
    assert (r.status_code, r.json()["message"]) == (404, f"Job {live['id']} not found for user.")
    r = extend(user, 10**9, {"minutes": 1})
    assert r.status_code == 404
    user.put(f"/jobs/{live['id']}/stop")
    r = extend(user, live["id"], {"minutes": 1})  # stopping
    assert (r.status_code, r.json()["message"]) == (409, "Job is not running.")
    wait_status(user, live["id"], "complete", timeout=30)


@pytest.mark.parametrize(
    "body",
    [{}, {"minutes": 0}, {"minutes": -5}, {"minutes": 1.5}, {"minutes": "10"}, {"minutes": True}, []],
)
def test_bad_minutes_change_nothing(one_running: tuple[Client, dict[str, Any]], body: Any) -> None:
    owner, job = one_running
    r = extend(owner, job["id"], body)
    assert r.status_code == 400
    assert r.json()["success"] is False and r.json()["message"]
    current = get_job(owner, job["id"])
    assert current["status"] == "running"
    assert current["job_details"]["current_job_details"]["time_left"] <= 60
