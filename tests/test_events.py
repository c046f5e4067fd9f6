"""Live events over websockets: the per-job stream (/jobs/<id>/ and /ws/jobs/<id>/), all jobs
(/jobs/), and /ws/events with replay; authentication by header and by single-use ticket."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from helpers.api import create, get_job, login, start, wait_status
from helpers.configs import SESSION_CONFIG
from helpers.harness import Client, Server, running_server


@pytest.fixture(scope="module")
def eserver(backend: str):
    yield from running_server(backend, SESSION_CONFIG)


@pytest.fixture
def user(eserver: Server) -> Client:
    return login(eserver, eserver.client_token)


def ws_url(server: Server, path: str) -> str:
    return server.base.replace("http://", "ws://") + path


async def collect(
    url: str, headers: dict[str, str] | None, until, timeout: float = 20
) -> tuple[list[dict[str, Any]], Any]:
    """Messages until `until(messages)` is true or the server closes; returns (messages, close code)."""
    conn = await websocket_connect(HTTPRequest(url, headers=headers or {}, connect_timeout=5))
    messages: list[dict[str, Any]] = []
    try:
        while True:
            msg = await asyncio.wait_for(conn.read_message(), timeout)
            if msg is None:
                return messages, conn.close_code
            messages.append(json.loads(msg))
            if until(messages):
                return messages, None
    finally:
        conn.close()


def run(coro):
    return asyncio.run(coro)


def auth(c: Client) -> dict[str, str]:
    return {"UWS-Authorization": f"Token {c.token}"}


@pytest.mark.parametrize("path", ["/jobs/{id}/", "/jobs/{id}", "/ws/jobs/{id}/"])
def test_job_stream_until_terminal(eserver: Server, user: Client, path: str) -> None:
    w = create(user)
    job = start(user, w["id"], job_type="local_test_job")
    url = ws_url(eserver, path.format(id=job["id"]))
    messages, code = run(collect(url, auth(user), until=lambda m: False, timeout=30))
    assert code == 1000  # closed by the server after the terminal status
    assert all(set(m) == {"job_id", "workspace_id", "status", "current_job_details"} for m in messages)
    assert messages[0]["job_id"] == job["id"] and messages[0]["workspace_id"] == w["id"]
    statuses = [m["status"] for m in messages]
    assert statuses[-1] == "complete"
    assert "running" in statuses
    # one message per change, never a repeat of the same state
    pairs = [(m["status"], json.dumps(m["current_job_details"], sort_keys=True)) for m in messages]
    assert len(pairs) == len(set(pairs))


def test_job_stream_handshake_errors(eserver: Server, user: Client) -> None:
    w = create(user)
    job = start(user, w["id"], job_type="local_test_job")
    other = login(eserver, eserver.client_token)
    cases = [
        (None, 401, "Authentication credentials were not provided."),
        ({"UWS-Authorization": "Token nope"}, 401, "Invalid token provided."),
        (auth(other), 404, f"Job {job['id']} not found for user."),
    ]
    for headers, status, message in cases:
        with pytest.raises(HTTPClientError) as info:
            run(collect(ws_url(eserver, f"/jobs/{job['id']}/"), headers, until=lambda m: True))
        assert info.value.code == status
        assert json.loads(info.value.response.body) == {"success": False, "message": message}
    with pytest.raises(HTTPClientError) as info:
        run(collect(ws_url(eserver, "/ws/nothing/"), auth(user), until=lambda m: True))
    assert info.value.code == 404
    # a plain GET on the same path is still the REST answer
    assert user.get(f"/jobs/{job['id']}/").json()["data"]["jobs"][0]["id"] == job["id"]


def test_browser_ticket_is_single_use(eserver: Server, user: Client) -> None:
    w = create(user)
    job = start(user, w["id"], job_type="local_test_job")
    r = user.post("/ws_tickets/")
    ticket = r.json()["data"]["ticket"]
    assert r.json()["data"]["expires_in"] == 60
    url = ws_url(eserver, f"/ws/jobs/{job['id']}/?ticket={ticket}")
    messages, _ = run(collect(url, None, until=lambda m: len(m) >= 1))
    assert messages[0]["job_id"] == job["id"]
    with pytest.raises(HTTPClientError) as info:
        run(collect(url, None, until=lambda m: True))
    assert info.value.code == 401
    assert ticket not in eserver.log()  # redacted from the access log


def test_all_jobs_stream_sees_new_jobs(eserver: Server, user: Client) -> None:
    w = create(user)

    async def scenario() -> list[dict[str, Any]]:
        conn = await websocket_connect(HTTPRequest(ws_url(eserver, "/jobs/"), headers=auth(user)))
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: start(user, w["id"], job_type="local_test_job")
        )
        seen = []
        while not any(m["status"] == "complete" for m in seen):
            seen.append(json.loads(await asyncio.wait_for(conn.read_message(), 20)))
        conn.close()
        return seen

    seen = run(scenario())
    assert {m["workspace_id"] for m in seen} == {w["id"]}
    assert [m["status"] for m in seen][-1] == "complete"


def test_events_replay_and_snapshot(eserver: Server, user: Client) -> None:
    w = create(user)
    url = ws_url(eserver, "/ws/events")

    async def first_events() -> list[dict[str, Any]]:
        conn = await websocket_connect(HTTPRequest(url, headers=auth(user)))
        snapshot = json.loads(await conn.read_message())
        assert snapshot["type"] == "snapshot"
        assert w["id"] in [x["id"] for x in snapshot["data"]["workspaces"]]
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: start(user, w["id"], job_type="local_test_job")
        )
        events = [snapshot]
        while not any(e["type"] == "job" and e["data"]["status"] == "running" for e in events):
            events.append(json.loads(await asyncio.wait_for(conn.read_message(), 20)))
        conn.close()
        return events

    events = run(first_events())
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    job_id = next(e["data"]["id"] for e in events if e["type"] == "job")
    wait_status(user, job_id, "complete")
    # Reconnecting with the last id seen delivers what happened meanwhile, and nothing older.
    missed, _ = run(
        collect(
            url + f"?last_event_id={ids[-1]}",
            auth(user),
            until=lambda m: any(e["type"] == "job" and e["data"]["status"] == "complete" for e in m),
        )
    )
    assert all(e["id"] > ids[-1] for e in missed)
    assert missed[0]["type"] != "snapshot"
    # An id from before the events table (or trimmed) gets a snapshot instead.
    old, _ = run(collect(url + "?last_event_id=1", auth(user), until=lambda m: len(m) >= 1))
    assert old[0]["type"] == "snapshot"
    assert [j["status"] for j in old[0]["data"]["jobs"] if j["id"] == job_id] == ["complete"]


def test_logout_closes_sockets_with_4401(eserver: Server, user: Client) -> None:
    async def scenario() -> Any:
        conn = await websocket_connect(HTTPRequest(ws_url(eserver, "/ws/events"), headers=auth(user)))
        await conn.read_message()  # snapshot
        await asyncio.get_running_loop().run_in_executor(None, lambda: user.delete("/tokens/"))
        while await asyncio.wait_for(conn.read_message(), 10) is not None:
            pass
        return conn.close_code

    assert run(scenario()) == 4401


def test_job_events_carry_readiness(eserver: Server, user: Client) -> None:
    w = create(user)
    job = start(user, w["id"], job_type="web")
    url = ws_url(eserver, f"/jobs/{job['id']}/")
    messages, _ = run(
        collect(url, auth(user), until=lambda m: "connection_details" in m[-1]["current_job_details"])
    )
    assert messages[-1]["current_job_details"]["message"] == "Webserver ready."
    user.put(f"/jobs/{job['id']}/stop")
    wait_status(user, job["id"], "complete")
    assert get_job(user, job["id"])["status"] == "complete"


def test_quota_warning_events(eserver: Server, user: Client) -> None:
    eserver.cli("quota", "set", user.username, "--disk-bytes", "1000")

    async def scenario() -> list[dict[str, Any]]:
        conn = await websocket_connect(HTTPRequest(ws_url(eserver, "/ws/events"), headers=auth(user)))
        await conn.read_message()  # snapshot
        body = {
            "name": "q",
            "description": "",
            "workspace_details": {"files": [{"name": "a", "content": "x" * 850}]},
        }
        r = await asyncio.get_running_loop().run_in_executor(None, lambda: user.post("/workspaces/", body))
        assert r.status_code == 200
        events = []
        while not any(e["type"] == "quota_warning" for e in events):
            events.append(json.loads(await asyncio.wait_for(conn.read_message(), 10)))
        conn.close()
        return events

    warning = next(e for e in run(scenario()) if e["type"] == "quota_warning")["data"]
    assert warning["quota"] == "disk_bytes" and warning["percent"] == 80
    assert warning["used"] == 850 and warning["maximum"] == 1000


def test_launch_failure_leaves_failed_job(eserver: Server, user: Client) -> None:
    w = create(user)
    job = start(user, w["id"], job_type="nobinary")
    done = wait_status(user, job["id"], "failed")
    current = done["job_details"]["current_job_details"]
    assert current["message"] == "The application could not be started, or did not answer in time."
    assert "uws-no-such-program" in current["log_tail"]
    assert done["datetime_end"]
