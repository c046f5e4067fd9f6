"""Warnings before a session's time limit: `ending_soon` job events at the configured
thresholds, once each, again after an extension, and not lost or repeated across a restart of
the server. Real server, real local sessions whose helper keeps the limit; the thresholds are
fractions of a minute so the sessions can be seconds long. SQLite only: the warnings' record is
one JSON field of the job, which test_extend.py's extensions exercise on both databases."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from helpers.api import create, login, start, wait_status
from helpers.configs import LOCAL_CONFIG
from helpers.harness import Client, Server, running_server


def config(limit_seconds: int, thresholds: list[float], interval: float) -> str:
    return (
        LOCAL_CONFIG
        + f"""
c.JobService.heartbeat_seconds = 1
c.UWSApp.stop_grace_seconds = 2
c.EndingWarnings.thresholds_minutes = {thresholds!r}
c.EndingWarnings.interval_seconds = {interval}
c.UWSApp.job_types = {{
    "short": {{"name": "Short", "job_type": "CommandJob", "environment_details": {{"main_resource": {{
        "command": ["sleep", "600"], "readiness_path": "", "time_limit_seconds": "{limit_seconds}"}}}}}},
}}
"""
    )


pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@pytest.fixture(scope="module")
def wserver(backend: str):
    # 6 s and 57 s before the end of a 12 s session: the 57 s one has passed at its first check.
    yield from running_server(backend, config(12, [0.1, 0.95], 0.3))


def ws_url(server: Server) -> str:
    return server.base.replace("http://", "ws://") + "/ws/events"


async def next_warning(conn: Any, job_id: int, within: float) -> dict[str, Any] | None:
    """The next ending_soon event for the job, or None if none comes within `within` s."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        try:
            event = json.loads(await asyncio.wait_for(conn.read_message(), left))
        except TimeoutError:
            return None
        if event["type"] == "ending_soon" and event["data"]["job_id"] == job_id:
            return event
    return None


async def subscribe(server: Server, c: Client) -> Any:
    conn = await websocket_connect(
        HTTPRequest(ws_url(server), headers={"UWS-Authorization": f"Token {c.token}"}, connect_timeout=5)
    )
    await conn.read_message()  # the snapshot
    return conn


def test_warned_once_then_again_after_an_extension(wserver: Server) -> None:
    user = login(wserver, wserver.client_token)
    w = create(user)

    async def scenario() -> tuple[Any, Any, Any, Any]:
        conn = await subscribe(wserver, user)
        loop = asyncio.get_running_loop()
        job = await loop.run_in_executor(None, lambda: start(user, w["id"], job_type="short"))
        first = await next_warning(conn, job["id"], 15)
        repeat = await next_warning(conn, job["id"], 1.5)
        extended = await loop.run_in_executor(
            None, lambda: user.put(f"/jobs/{job['id']}/extend/", {"minutes": 1})
        )
        again = await next_warning(conn, job["id"], 15)
        conn.close()
        await loop.run_in_executor(None, lambda: user.put(f"/jobs/{job['id']}/stop"))
        return job, first, repeat, (extended, again)

    job, first, repeat, (extended, again) = asyncio.run(scenario())
    assert first is not None, "no ending_soon before the end"
    assert first["type"] == "ending_soon" and first["data"]["job_id"] == job["id"]
    assert 0 < first["data"]["seconds_left"] <= 6
    assert "time limit" in first["data"]["message"]
    assert repeat is None, f"warned twice: {repeat}"
    assert extended.status_code == 200, extended.text
    # After the extension (about 65 s left) the 57 s threshold is due again, 8 s later.
    assert again is not None, "no warning after the extension"
    assert 45 <= again["data"]["seconds_left"] <= 57
    wait_status(user, job["id"], "complete", timeout=30)


def test_warning_due_while_the_server_was_down_comes_after_the_restart(backend: str) -> None:
    """What has been sent is kept with the job: the 6 s warning, due while the server was
    down, goes out once it is back (a server that forgot would take the passed threshold for
    the session's starting point, and stay silent)."""
    srv = Server(backend, config(24, [0.1, 0.95], 2.0)).start()
    try:
        user = login(srv, srv.new_client_token())
        job = start(user, create(user)["id"], job_type="short")
        wait_status(user, job["id"], "running", timeout=30)
        time.sleep(3)  # at least one check has recorded the session's starting point
        srv.proc.kill()
        srv.proc.wait()
        time.sleep(17)  # down while fewer than 6 s remain
        srv.start()

        async def after_restart() -> Any:
            conn = await subscribe(srv, user)
            warning = await next_warning(conn, job["id"], 8)
            conn.close()
            return warning

        warning = asyncio.run(after_restart())
        assert warning is not None, "the warning due during the downtime never came"
        assert warning["data"]["seconds_left"] <= 6
        wait_status(user, job["id"], "complete", timeout=30)
    finally:
        srv.close()


def test_the_job_stream_carries_the_warning(wserver: Server) -> None:
    """Asked for (?notices=true), the per-job websocket gets the warning as {"type":
    "ending_soon", "job_id", ...} beside the original's status messages; not asked for, it keeps
    the original's message shape only."""
    user = login(wserver, wserver.client_token)
    job = start(user, create(user)["id"], job_type="short")
    url = wserver.base.replace("http://", "ws://") + f"/ws/jobs/{job['id']}/"

    async def stream(url: str) -> list[dict[str, Any]]:
        conn = await websocket_connect(
            HTTPRequest(url, headers={"UWS-Authorization": f"Token {user.token}"}, connect_timeout=5)
        )
        messages: list[dict[str, Any]] = []
        while (message := await asyncio.wait_for(conn.read_message(), 20)) is not None:
            messages.append(json.loads(message))
        return messages

    async def both() -> list[list[dict[str, Any]]]:  # until the job ends and the streams close
        return list(await asyncio.gather(stream(url + "?notices=true"), stream(url)))

    messages, original = asyncio.run(both())
    assert all(set(m) == {"job_id", "workspace_id", "status", "current_job_details"} for m in original)
    warnings = [m for m in messages if m.get("type") == "ending_soon"]
    assert len(warnings) == 1, messages
    assert warnings[0]["job_id"] == job["id"] and 0 < warnings[0]["seconds_left"] <= 6
    assert warnings[0]["reason"] == "time_limit"
    assert messages[-1]["status"] == "complete"
