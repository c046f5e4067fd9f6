"""Client state on two server processes sharing one database and one data directory (as two
machines behind a load balancer would): what a client got from one process stays good on the
other. Events resumed with the last id, websocket tickets, browser and passthrough cookies and
their end at logout, and session-start idempotency keys.

Both processes serve every request here (which process leads does not matter to client state):
B takes a leadership lock of its own, so on PostgreSQL it leads beside A instead of standing by,
and binds a session channel of its own so that sessions started through A stay A's.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from helpers.api import create, login, wait_for, wait_ready
from helpers.configs import ECHO_APP
from helpers.harness import Client, Server

CONFIG = f"""
c.LocalFileSystemStorage.root_dir = "@DIR@/workspaces"
c.UWSApp.spawner_class = "local"
c.UWSApp.passthrough_mode = "path"
c.JobService.heartbeat_seconds = 1
c.UWSApp.job_types = {{
    "echo": {{"name": "Echo", "job_type": "CommandJob", "environment_details": {{"main_resource": {{
        "command": ["{sys.executable}", "{ECHO_APP}", "{{port}}", "{{base_url}}"],
        "readiness_path": "{{base_url}}hello", "url_path": "{{base_url}}hello"}}}}}},
}}
"""
# B: a lock, a channel endpoint of its own, and no reconciling of A's sessions.
B_CONFIG = (
    CONFIG
    + f"""
c.Leadership.lock_key = {secrets.randbits(62) + 1}
c.UWSApp.session_channel_url = "ipc://@DIR@/channel-b/sessions.sock"
c.JobService.reconcile_seconds = 3600
"""
)
HTML = {"Accept": "text/html"}
# How long another process may still accept a token or cookie that a logout ended: its caches'
# lifetime (TokenService.cache_seconds, passthrough.service.USER_CACHE_SECONDS), and a margin.
CACHE_SECONDS = 2.0


@pytest.fixture(scope="module")
def pair(backend: str) -> Iterator[tuple[Server, Server]]:
    a = Server(backend, CONFIG, extra_args=["--dev"]).start()  # (A creates the database)
    b = Server(backend, B_CONFIG, extra_args=["--dev"], shared_with=a)
    try:
        b.start()
        yield a, b
    finally:
        b.close()
        a.close()


def ws_url(server: Server, path: str) -> str:
    return server.base.replace("http://", "ws://") + path


def on(server: Server, user: Client) -> Client:
    """The same user (same token) talking to another process."""
    other = server.client(user.token)
    other.username = user.username  # type: ignore[attr-defined]
    return other


def user_id(server: Server, user: Client) -> int:
    return server.sql(f"SELECT id FROM users WHERE username = '{user.username}'")[0][0]  # type: ignore[attr-defined]


def stored_after(server: Server, uid: int, last_id: int) -> list[int]:
    return [
        r[0]
        for r in server.sql(f"SELECT id FROM events WHERE user_id = {uid} AND id > {last_id} ORDER BY id")
    ]


async def read(conn: WebSocketClientConnection, timeout: float = 10) -> dict[str, Any]:
    message = await asyncio.wait_for(conn.read_message(), timeout)
    assert message is not None, "the server closed the socket"
    return json.loads(message)


async def read_until(conn: WebSocketClientConnection, done: Any, timeout: float = 10) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    while not done(seen):
        seen.append(await read(conn, timeout))
    return seen


async def quiet(conn: WebSocketClientConnection, seconds: float = 1.0) -> list[dict[str, Any]]:
    """Whatever else arrives within `seconds` (nothing, when nothing else happened)."""
    extra = []
    try:
        while True:
            extra.append(await read(conn, seconds))
    except TimeoutError:
        return extra


def in_thread(fn: Any) -> Any:
    return asyncio.get_running_loop().run_in_executor(None, fn)


def auth(user: Client) -> dict[str, str]:
    return {"UWS-Authorization": f"Token {user.token}"}


def test_events_resume_on_the_other_process(pair: tuple[Server, Server]) -> None:
    a, b = pair
    user = login(a, None)  # type: ignore[arg-type]
    uid = user_id(a, user)

    async def scenario() -> None:
        conn = await websocket_connect(HTTPRequest(ws_url(a, "/ws/events"), headers=auth(user)))
        assert (await read(conn))["type"] == "snapshot"
        first = await in_thread(lambda: create(user, name="seen"))
        seen = await read_until(conn, lambda s: any(e["data"].get("id") == first["id"] for e in s))
        last_id = seen[-1]["id"]
        conn.close()
        # Away: more changes through A, which nobody on A listens to now.
        made = [await in_thread(lambda i=i: create(user, name=f"away {i}")) for i in range(3)]
        assert (await in_thread(lambda: user.delete(f"/workspaces/{made[0]['id']}/"))).status_code == 200
        missed = await in_thread(
            lambda: wait_for(lambda: (ids := stored_after(a, uid, last_id)) and len(ids) >= 5 and ids, 10)
        )
        # Back, on B: exactly what was missed, in order, once each; then B's own events follow.
        url = ws_url(b, f"/ws/events?last_event_id={last_id}")
        conn = await websocket_connect(HTTPRequest(url, headers=auth(user)))
        got = await read_until(conn, lambda s: len(s) >= len(missed))
        got += await quiet(conn)
        assert [e["id"] for e in got] == missed
        assert {e["data"]["id"] for e in got if e["type"] == "workspace"} == {w["id"] for w in made}
        assert [e["data"]["id"] for e in got if e["type"] == "workspace_deleted"] == [made[0]["id"]]
        later = await in_thread(lambda: create(on(b, user), name="on b"))
        event = await read(conn)
        assert event["type"] == "workspace" and event["data"]["id"] == later["id"]
        assert event["id"] > missed[-1]
        conn.close()
        # An id from before the events table (or long trimmed) gets a snapshot, on either process.
        for server in (a, b):
            conn = await websocket_connect(
                HTTPRequest(ws_url(server, "/ws/events?last_event_id=1"), headers=auth(user))
            )
            snapshot = await read(conn)
            assert snapshot["type"] == "snapshot" and snapshot["id"] >= event["id"]
            assert later["id"] in [w["id"] for w in snapshot["data"]["workspaces"]]
            conn.close()

    asyncio.run(scenario())


def test_ticket_from_one_process_redeemed_once_on_the_other(pair: tuple[Server, Server]) -> None:
    a, b = pair
    user = login(a, None)  # type: ignore[arg-type]
    r = user.post("/ws_tickets/")
    assert r.status_code == 200
    ticket = r.json()["data"]["ticket"]
    assert ticket not in str(a.sql("SELECT * FROM ws_tickets"))  # (only its hash is kept)

    async def scenario() -> None:
        conn = await websocket_connect(HTTPRequest(ws_url(b, f"/ws/events?ticket={ticket}")))
        assert (await read(conn))["type"] == "snapshot"
        conn.close()
        for server in (b, a):  # used up, on both
            with pytest.raises(HTTPClientError) as info:
                await websocket_connect(HTTPRequest(ws_url(server, f"/ws/events?ticket={ticket}")))
            assert info.value.code == 401

    asyncio.run(scenario())


def refused_within(check: Any, seconds: float) -> float:
    """How long until `check()` is true (failing the test past `seconds`)."""
    began = time.monotonic()
    wait_for(check, seconds)
    return time.monotonic() - began


def test_browser_cookie_valid_on_both_until_sign_out_on_one(pair: tuple[Server, Server]) -> None:
    a, b = pair
    browser = requests.Session()
    form = browser.get(a.base + "/login", headers=HTML, timeout=10)
    form_xsrf = re.search(r'name="_xsrf" value="([^"]+)"', form.text)
    assert form_xsrf is not None
    r = browser.post(
        a.base + "/login",
        data={"username": f"web{time.time_ns() % 10**9}", "_xsrf": form_xsrf.group(1)},
        headers=HTML,
        allow_redirects=False,
        timeout=10,
    )
    assert r.status_code == 303
    cookie = {"Cookie": f"uws-browser={browser.cookies['uws-browser']}"}
    # Signed on A, good on B: B's home page, and B's API (its XSRF token, from B's page, too).
    home = requests.get(b.base + "/", headers={**HTML, **cookie}, timeout=10)
    assert home.status_code == 200
    xsrf = re.search(r'<meta name="uws-xsrf" content="([0-9a-f]+)">', home.text)
    assert xsrf is not None
    assert requests.get(b.base + "/workspaces/", headers=cookie, timeout=10).status_code == 200
    made = requests.post(
        b.base + "/workspaces/",
        data=json.dumps({"name": "from b", "description": ""}),
        headers={**cookie, "X-XSRFToken": xsrf.group(1)},
        timeout=10,
    )
    assert made.status_code == 200
    # Signed out on A: refused on A at once, on B within its cache's lifetime.
    r = browser.post(a.base + "/logout", data={"_xsrf": xsrf.group(1)}, allow_redirects=False, timeout=10)
    assert r.status_code == 303
    assert requests.get(a.base + "/workspaces/", headers=cookie, timeout=10).status_code == 401
    refused_within(
        lambda: requests.get(b.base + "/workspaces/", headers=cookie, timeout=10).status_code == 401,
        CACHE_SECONDS + 1,
    )


def test_session_cookie_and_start_key_on_both_until_logout(pair: tuple[Server, Server]) -> None:
    a, b = pair
    user = login(a, None)  # type: ignore[arg-type]
    w = create(user)
    key = {"Idempotency-Key": "ha-start-1"}
    r = user.put(f"/workspaces/{w['id']}/start/", {"job_type": "echo"}, headers=key)
    assert r.status_code == 200, r.text
    job = r.json()["data"]["job"]
    # The same start retried on the other process is the same session, not a second one.
    again = on(b, user).put(f"/workspaces/{w['id']}/start/", {"job_type": "echo"}, headers=key)
    assert again.status_code == 200 and again.json()["data"]["job"]["id"] == job["id"]
    details = wait_ready(user, job["id"])["job_details"]["current_job_details"]["connection_details"]
    # The link's token is exchanged for a cookie on A ...
    r = requests.get(details["url_domain"] + details["url_path"], timeout=10, allow_redirects=False)
    assert r.status_code == 200 and r.text == "hello"
    name = f"uws-session-{job['id']}"
    cookie = {"Cookie": f"{name}={r.cookies[name]}"}
    path = f"/passthrough/{job['id']}/hello"
    # ... which B takes too.
    r = requests.get(b.base + path, headers=cookie, timeout=10)
    assert r.status_code == 200 and r.text == "hello"
    # Logged out on A: the cookie opens the session on neither.
    assert user.delete("/tokens/").status_code == 200
    assert requests.get(a.base + path, headers=cookie, timeout=10).status_code == 403
    refused_within(
        lambda: requests.get(b.base + path, headers=cookie, timeout=10).status_code == 403,
        CACHE_SECONDS + 1,
    )
