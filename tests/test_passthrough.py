"""/passthrough/<job id>/: the authenticated proxy to running sessions, with a real session app
(tests/apps/echo_app.py) launched by the spawner."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time

import pytest
import requests
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from helpers.api import create, get_job, login, start, wait_ready, wait_status
from helpers.harness import Client, Server


def app_count(pserver: Server, owner: Client, session: dict) -> int:
    r = requests.get(f"{pserver.base}/passthrough/{session['id']}/count", headers=owner.headers(), timeout=5)
    return int(r.text)


def test_link_shape(pserver: Server, session: dict) -> None:
    assert session["url_domain"] == pserver.base
    assert session["url_path"].startswith(f"/passthrough/{session['id']}/hello?token=")
    assert session["url_path"].count("?") == 1


def test_link_exchanges_token_for_cookie(pserver: Server, session: dict) -> None:
    browser = requests.Session()  # a new tab: no headers, just the link
    r = browser.get(session["link"], timeout=5, allow_redirects=False)
    assert r.status_code == 200 and r.text == "hello"
    cookie = next(c for c in browser.cookies if c.name == f"uws-session-{session['id']}")
    assert cookie.path == f"/passthrough/{session['id']}/"
    assert cookie.has_nonstandard_attr("HttpOnly")
    # later requests need nothing more than the cookie
    r = browser.get(f"{pserver.base}/passthrough/{session['id']}/headers", timeout=5)
    assert r.status_code == 200
    seen = {k.lower(): v for k, v in r.json().items()}
    assert "uws-session" not in seen.get("cookie", "")  # the access cookie is not passed on
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"


def test_others_are_refused_before_the_session(pserver: Server, owner: Client, session: dict) -> None:
    other = login(pserver, pserver.client_token)
    other_link = None
    w = create(other)
    other_job = start(other, w["id"], job_type="echo")
    wait_ready(other, other_job["id"], 30)
    other_cookie = requests.Session()
    other_details = get_job(other, other_job["id"])["job_details"]["current_job_details"][
        "connection_details"
    ]
    other_link = other_details["url_domain"] + other_details["url_path"]
    assert other_cookie.get(other_link, timeout=5).status_code == 200
    before = app_count(pserver, owner, session)
    base = f"{pserver.base}/passthrough/{session['id']}/hello"
    attempts = [
        requests.get(base, timeout=5),  # nothing
        requests.get(base, headers=other.headers(), timeout=5),  # someone else's token
        requests.get(base + "?token=wrong", timeout=5),
        requests.get(base, headers={"Authorization": f"Token {owner.token}"}, timeout=5),  # wrong header
        other_cookie.get(base, timeout=5),  # a cookie of another session
        requests.post(f"{pserver.base}/passthrough/{session['id']}/echo", data=b"x" * 100, timeout=5),
    ]
    for r in attempts:
        assert r.status_code == 403, r.text
        assert r.json() == {"success": False, "message": "You do not have access to this session."}
    assert app_count(pserver, owner, session) == before  # none of them reached the app
    # a job that does not exist is refused the same way
    assert requests.get(f"{pserver.base}/passthrough/999999/hello", timeout=5).status_code == 403
    other.put(f"/jobs/{other_job['id']}/stop")


def test_answers_of_every_shape(pserver: Server, owner: Client, session: dict) -> None:
    """Chunked, bodyless and HEAD answers, over one keep-alive connection from the browser and
    (in the server) pooled connections to the app: nothing lost, nothing left over."""
    browser = requests.Session()
    assert browser.get(session["link"], timeout=5).text == "hello"  # the cookie, from the link
    base = f"{pserver.base}/passthrough/{session['id']}"
    for _ in range(3):
        r = browser.get(f"{base}/chunked?n=50", timeout=5)
        assert r.status_code == 200 and r.text == "".join(f"part{i};" for i in range(50))
        r = browser.get(f"{base}/empty", timeout=5)
        assert r.status_code == 204 and r.content == b""
        r = browser.head(f"{base}/hello", timeout=5)
        assert r.status_code == 200 and r.content == b"" and r.headers["Content-Length"] == "5"
        r = browser.get(f"{base}/big?mb=3", timeout=10)
        assert len(r.content) == 3 << 20
        assert browser.get(f"{base}/hello", timeout=5).text == "hello"


def test_answer_cut_short_is_not_passed_off_as_whole(pserver: Server, owner: Client, session: dict) -> None:
    """The app drops the connection halfway through an answer: the browser must see a broken
    answer, not a short one that looks complete (and gets cached). Through the fast path (GET)
    and the full handler (POST), with a Content-Length and chunked."""
    browser = requests.Session()
    browser.get(session["link"], timeout=5)
    base = f"{pserver.base}/passthrough/{session['id']}"
    for method in ("GET", "POST"):
        for length in ("1", "0"):
            with pytest.raises(requests.exceptions.ChunkedEncodingError):
                browser.request(
                    method, f"{base}/cut?length={length}", data=b"" if method == "POST" else None, timeout=5
                )
    assert browser.get(f"{base}/hello", timeout=5).text == "hello"  # and the session still answers


def test_owner_header_gets_through(pserver: Server, owner: Client, session: dict) -> None:
    r = requests.get(f"{pserver.base}/passthrough/{session['id']}/hello", headers=owner.headers(), timeout=5)
    assert r.text == "hello"


def test_bodies_stream_both_ways(pserver: Server, owner: Client, session: dict) -> None:
    base = f"{pserver.base}/passthrough/{session['id']}"
    payload = os.urandom(8 << 20)
    r = requests.post(f"{base}/echo", data=payload, headers=owner.headers(), timeout=30)
    assert r.json() == {"sha256": hashlib.sha256(payload).hexdigest(), "length": len(payload)}

    def chunks():
        for _ in range(16):
            yield b"y" * (1 << 20)

    r = requests.put(f"{base}/echo", data=chunks(), headers=owner.headers(), timeout=30)  # chunked upload
    assert r.json()["length"] == 16 << 20
    r = requests.get(f"{base}/big?mb=32", headers=owner.headers(), timeout=30, stream=True)
    assert r.headers["Content-Length"] == str(32 << 20)
    assert sum(len(c) for c in r.iter_content(1 << 20)) == 32 << 20


def test_unreachable_and_slow_sessions(pserver: Server, owner: Client) -> None:
    w = create(owner)
    job = start(owner, w["id"], job_type="echo")
    wait_ready(owner, job["id"], 30)
    base = f"{pserver.base}/passthrough/{job['id']}"
    r = requests.get(f"{base}/slow?s=6", headers=owner.headers(), timeout=20)
    assert r.status_code == 504
    assert r.json() == {"success": False, "message": "The session did not answer in time."}
    assert requests.post(f"{base}/close-listener", headers=owner.headers(), timeout=5).status_code == 200
    time.sleep(0.5)
    r = requests.get(f"{base}/hello", headers=owner.headers(), timeout=10)
    assert r.status_code == 502
    assert r.json() == {"success": False, "message": "The session did not answer."}
    owner.put(f"/jobs/{job['id']}/stop")
    wait_status(owner, job["id"], "complete")


def test_app_served_at_root_gets_prefix_stripped(pserver: Server, owner: Client) -> None:
    w = create(owner)
    job = start(owner, w["id"], job_type="echo_root")
    ready = wait_ready(owner, job["id"], 30)
    details = ready["job_details"]["current_job_details"]["connection_details"]
    assert details["url_path"].startswith(f"/passthrough/{job['id']}/hello?token=")
    assert requests.get(details["url_domain"] + details["url_path"], timeout=5).text == "hello"
    owner.put(f"/jobs/{job['id']}/stop")
    wait_status(owner, job["id"], "complete")


@pytest.mark.parametrize("credential", ["header", "link token"])
def test_websocket_relay(pserver: Server, owner: Client, session: dict, credential: str) -> None:
    """With the header, the front door relays the websocket as bytes; with the link's token (to
    exchange for a cookie) Tornado's websocket handler relays it frame by frame. Both pass
    frames, pings both ways, big messages and close codes."""
    url = pserver.base.replace("http", "ws") + f"/passthrough/{session['id']}/ws"
    token = session["url_path"].split("token=", 1)[1]
    opened = (
        HTTPRequest(url, headers=owner.headers())
        if credential == "header"
        else HTTPRequest(f"{url}?token={token}")
    )

    async def scenario():
        conn = await websocket_connect(opened, subprotocols=["echo.v1"])
        assert conn.selected_subprotocol == "echo.v1"
        await conn.write_message("text frame")
        assert await conn.read_message() == "text frame"
        await conn.write_message(b"\x00\x01binary", binary=True)
        assert await conn.read_message() == b"\x00\x01binary"
        pings: list[bytes] = []
        pongs: list[bytes] = []
        conn.on_ping = pings.append  # type: ignore[method-assign]
        conn.on_pong = pongs.append  # type: ignore[method-assign]
        conn.ping(b"hi")  # relayed to the session, which answers
        await conn.write_message("ping:from the app")  # the session pings the browser
        await conn.write_message("after ping")
        assert await conn.read_message() == "after ping"
        assert pongs == [b"hi"] and pings == [b"from the app"]
        big = os.urandom(3 << 20)  # more than either side's buffers: back-pressure both ways
        await conn.write_message(big, binary=True)
        assert await conn.read_message() == big
        await conn.write_message("close:4005")
        assert await conn.read_message() is None
        return conn.close_code

    assert asyncio.run(scenario()) == 4005

    async def refused():
        await websocket_connect(HTTPRequest(url))

    with pytest.raises(HTTPClientError) as info:
        asyncio.run(refused())
    assert info.value.code == 403
    assert json.loads(info.value.response.body)["message"] == "You do not have access to this session."


def test_websocket_with_cookie_from_link(pserver: Server, session: dict) -> None:
    browser = requests.Session()
    browser.get(session["link"], timeout=5)
    cookie = "; ".join(f"{c.name}={c.value}" for c in browser.cookies)
    url = pserver.base.replace("http", "ws") + f"/passthrough/{session['id']}/ws"

    async def scenario():
        conn = await websocket_connect(HTTPRequest(url, headers={"Cookie": cookie}))
        await conn.write_message("via cookie")
        reply = await conn.read_message()
        conn.close()
        return reply

    assert asyncio.run(scenario()) == "via cookie"


def test_idle_session_is_warned_then_culled(pserver: Server, owner: Client) -> None:
    import time

    w = create(owner)
    job = start(owner, w["id"], job_type="echo_idle")
    ready = wait_ready(owner, job["id"], 30)
    link = ready["job_details"]["current_job_details"]["connection_details"]
    browser = requests.Session()
    # In use: traffic through the passthrough every second keeps it alive past its 4 s timeout.
    for _ in range(7):
        assert browser.get(link["url_domain"] + link["url_path"], timeout=5).status_code == 200
        time.sleep(1)
    assert get_job(owner, job["id"])["status"] == "running"

    async def events() -> list[dict]:
        url = pserver.base.replace("http", "ws") + "/ws/events"
        conn = await websocket_connect(HTTPRequest(url, headers=owner.headers()))
        seen = []
        while True:
            event = json.loads(await asyncio.wait_for(conn.read_message(), 20))
            seen.append(event)
            if (
                event["type"] == "job"
                and event["data"]["id"] == job["id"]
                and event["data"]["status"] == "complete"
            ):
                conn.close()
                return seen

    seen = asyncio.run(events())
    warnings = [e for e in seen if e["type"] == "idle_warning" and e["data"]["job_id"] == job["id"]]
    assert warnings and warnings[0]["data"]["seconds_left"] <= 2
    assert seen.index(warnings[0]) < len(seen) - 1  # the warning came before the end
    ending = [e for e in seen if e["type"] == "ending_soon" and e["data"]["job_id"] == job["id"]]
    assert [e["data"]["reason"] for e in ending] == ["idle"]
    done = get_job(owner, job["id"])
    assert (
        done["job_details"]["current_job_details"]["message"] == "Stopped after 4 seconds without activity."
    )
