"""A hostile session app (tests/apps/hostile_app.py) breaks only its own requests: malformed,
truncated, oversized and slow answers end those requests (502/504, or an abort once the head
went out) while everyone else's requests keep being answered. Also: X-Forwarded-* from a
trusted proxy, and the per-user websocket cap."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time

import pytest
import requests
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from helpers.api import create, get_job, login, start, wait_ready, wait_status
from helpers.configs import HOSTILE_CONFIG, MESSAGE_CAP, WEBSOCKET_CAP
from helpers.harness import Client, Server, running_server

BAD_CHUNK_SIZES = ["-5", "+5", "0x5", "5_0", "-0", " 5"]


@pytest.fixture(scope="module")
def hserver(backend: str):
    yield from running_server(backend, HOSTILE_CONFIG)


@pytest.fixture(scope="module")
def owner(hserver: Server) -> Client:
    return login(hserver, hserver.client_token)


def _session(owner: Client, job_type: str):
    w = create(owner)
    job = start(owner, w["id"], job_type=job_type)
    wait_ready(owner, job["id"], 30)
    yield job["id"]
    owner.put(f"/jobs/{job['id']}/stop")
    wait_status(owner, job["id"], "complete")


@pytest.fixture(scope="module")
def hostile(hserver: Server, owner: Client):
    yield from _session(owner, "hostile")


@pytest.fixture(scope="module")
def echo(hserver: Server, owner: Client):
    yield from _session(owner, "echo")


def raw_request(server: Server, path: str, headers: dict[str, str]) -> bytes:
    """One request on a new connection: the answer's bytes, up to the end of its Content-Length
    or chunked body, or what came before the server closed the connection (or 15 s passed)."""
    lines = [f"GET {path} HTTP/1.1", "Host: uws.test", *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
                if _complete(data):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        return data


def _complete(data: bytes) -> bool:
    head, found, body = data.partition(b"\r\n\r\n")
    if not found:
        return False
    fields = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
    }
    if b"content-length" in fields:
        return len(body) >= int(fields[b"content-length"])
    return fields.get(b"transfer-encoding") == b"chunked" and body.endswith(b"0\r\n\r\n")


def assert_status_answers(server: Server) -> None:
    r = requests.get(f"{server.base}/status/", timeout=5)
    assert r.status_code == 200


def assert_json_502(data: bytes) -> None:
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 502 "), data[:300]
    assert json.loads(body) == {"success": False, "message": "The session did not answer."}


@pytest.mark.parametrize("size", BAD_CHUNK_SIZES)
def test_bad_chunk_sizes_answer_502(hserver: Server, owner: Client, hostile: int, size: str) -> None:
    """Only hex digits make a chunk size: a negative one used to spin the event loop (the whole
    server stopped answering), and "+5", "0x5", "5_0" were taken as sizes too. On each of the
    three relays (front door; Tornado's fast path; the full handler) the request gets a JSON 502
    and the server goes on answering."""
    path = f"/passthrough/{hostile}/chunk?size={requests.utils.quote(size)}"
    front = raw_request(hserver, path, owner.headers())  # the front door relays it
    assert_json_502(front)
    assert_status_answers(hserver)
    # Connection: close sends the request to Tornado, whose fast path relays it.
    tornado = raw_request(hserver, path, {**owner.headers(), "Connection": "close"})
    assert_json_502(tornado)
    # A request with a body goes through the full passthrough handler.
    r = requests.post(f"{hserver.base}{path}", data=b"x", headers=owner.headers(), timeout=10)
    assert r.status_code == 502 and r.json()["success"] is False
    assert_status_answers(hserver)


def test_101_to_a_plain_get_is_not_relayed(hserver: Server, owner: Client, hostile: int) -> None:
    """A 101 is an answer only to an upgrade request: to a plain GET it is a bad answer (502),
    not a switch to an unframed pipe through which the app could pass off answers of its own."""
    for extra in ({}, {"Connection": "close"}):
        data = raw_request(hserver, f"/passthrough/{hostile}/upgrade", {**owner.headers(), **extra})
        assert b"INJECTED" not in data and b"X-Injected" not in data
        assert_json_502(data)
    assert_status_answers(hserver)


@pytest.mark.parametrize(
    "path, status",
    [("big-head", 502), ("garbage", 502), ("bare-lf", 502), ("interim", 502), ("slow?s=10", 504)],
)
def test_other_broken_answers(hserver: Server, owner: Client, hostile: int, path: str, status: int) -> None:
    r = requests.get(f"{hserver.base}/passthrough/{hostile}/{path}", headers=owner.headers(), timeout=20)
    assert r.status_code == status and r.json()["success"] is False


@pytest.mark.parametrize("path", ["big-head", "garbage", "bare-lf", "interim", "chunk?size=-5"])
@pytest.mark.parametrize("entry", ["front", "handler"])
def test_broken_websocket_handshake_answers(
    hserver: Server, owner: Client, hostile: int, path: str, entry: str
) -> None:
    """A broken answer to a websocket upgrade, through the front door's splice (the owner's
    header) or the handler's (a link's token): the browser gets the JSON refusal, and the same
    session still answers afterwards."""
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"}
    upgrade["Sec-WebSocket-Key"] = "dGhlIHNhbXBsZSBub25jZQ=="
    url = f"{hserver.base}/passthrough/{hostile}/{path}"
    if entry == "front":
        headers = {**owner.headers(), **upgrade}
    else:
        details = get_job(owner, hostile)["job_details"]["current_job_details"]["connection_details"]
        url += ("&" if "?" in path else "?") + "token=" + details["url_path"].split("token=", 1)[1]
        headers = upgrade
    r = requests.get(url, headers=headers, timeout=20)
    assert r.status_code == 502
    assert r.json() == {"success": False, "message": "The session did not accept the websocket."}
    assert (
        requests.get(f"{hserver.base}/passthrough/{hostile}/hello", headers=owner.headers(), timeout=10).text
        == "hello"
    )


def test_truncated_answer_is_cut_off(hserver: Server, owner: Client, hostile: int) -> None:
    """An answer that ends before its Content-Length: the head went out, so the browser's
    connection is ended rather than the answer passed off as whole."""
    data = raw_request(hserver, f"/passthrough/{hostile}/truncated", owner.headers())
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"0123456789")
    assert_status_answers(hserver)


def test_status_answers_while_the_hostile_app_is_hammered(
    hserver: Server, owner: Client, hostile: int
) -> None:
    """Random broken answers from the app (bounded: 4 threads, 80 requests, 90 s), while another
    client's GET /status/ keeps answering and every hostile request ends in a JSON 502/504, a
    cut-off answer or a closed connection, never something the app made up."""
    deadline = time.monotonic() + 90
    outcomes: list[str] = []
    seeds = iter(range(80))
    lock = threading.Lock()

    def hammer() -> None:
        while time.monotonic() < deadline:
            with lock:
                seed = next(seeds, None)
            if seed is None:
                return
            data = raw_request(hserver, f"/passthrough/{hostile}/random?seed={seed}", owner.headers())
            head = data.split(b"\r\n", 1)[0]
            assert b"INJECTED" not in data
            with lock:
                outcomes.append(head.decode("latin1") or "closed")

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    answered = 0
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        assert_status_answers(hserver)
        answered += 1
        time.sleep(0.05)
    for t in threads:
        t.join(timeout=max(1, deadline - time.monotonic()))
    assert answered > 0
    assert len(outcomes) == 80
    for outcome in outcomes:
        assert outcome in ("closed", "HTTP/1.1 502 Bad Gateway", "HTTP/1.1 504 Gateway Timeout") or (
            outcome == "HTTP/1.1 200 OK"  # a cut-off (huge chunk) or slow-but-whole answer
        ), outcome
    assert "Traceback" not in hserver.log()


def test_forwarded_for_from_a_trusted_proxy(hserver: Server, owner: Client, echo: int) -> None:
    """With 127.0.0.1 a trusted proxy, X-Forwarded-For is read from the right past trusted hops;
    what the client wrote to the left of the proxy's entry is not believed."""
    base = f"{hserver.base}/passthrough/{echo}/headers"
    cases = [
        ({"X-Forwarded-For": "203.0.113.7"}, "203.0.113.7"),
        ({"X-Forwarded-For": "1.2.3.4, 203.0.113.7"}, "203.0.113.7"),  # 1.2.3.4: the client's say-so
        ({"X-Forwarded-For": "203.0.113.7, 10.9.9.9"}, "203.0.113.7"),  # 10.9.9.9: a trusted hop
        ({"X-Forwarded-For": "bogus"}, "127.0.0.1"),
        ({"X-Real-Ip": "198.51.100.1"}, "198.51.100.1"),
    ]
    for extra in ({}, {"Connection": "close"}):  # the front door, and Tornado
        for headers, expected in cases:
            r = requests.get(base, headers={**owner.headers(), **headers, **extra}, timeout=10)
            seen = {k.lower(): v for k, v in r.json().items()}
            assert seen["x-forwarded-for"] == expected, (headers, extra)
        r = requests.get(base, headers={**owner.headers(), "X-Forwarded-Proto": "https", **extra}, timeout=10)
        assert {k.lower(): v for k, v in r.json().items()}["x-forwarded-proto"] == "https"


def test_websockets_per_user_are_capped(hserver: Server, owner: Client, echo: int) -> None:
    """Event streams and relayed session websockets count together against one user's cap; one
    more gets a JSON 429, and closing one makes room again. Other users are not affected."""
    port = hserver.port
    auth = owner.headers()
    other = login(hserver, hserver.client_token)
    details = get_job(owner, echo)["job_details"]["current_job_details"]["connection_details"]
    token = details["url_path"].split("token=", 1)[1]

    async def connect(path: str, headers: dict[str, str]):
        return await websocket_connect(HTTPRequest(f"ws://127.0.0.1:{port}{path}", headers=headers))

    async def refused(path: str, headers: dict[str, str]) -> None:
        with pytest.raises(HTTPClientError) as info:
            await connect(path, headers)
        assert info.value.code == 429
        body = json.loads(info.value.response.body)
        assert body["success"] is False and "websockets" in body["message"]

    async def run() -> None:
        ws_path = f"/passthrough/{echo}/ws"
        # The front door's splice, and the handler's (where a link's ?token= upgrade goes: it
        # counts against the session's owner, whoever holds the link).
        opened = [
            await connect("/ws/events", auth),
            await connect(ws_path, auth),
            await connect(f"{ws_path}?token={token}", {}),
        ]
        for ws in opened[1:]:
            ws.write_message("ping-pong")
            assert await ws.read_message() == "ping-pong"
        await refused("/ws/events", auth)
        await refused(ws_path, auth)
        other_ws = await connect("/ws/events", other.headers())  # someone else still may
        opened.pop(0).close()
        for _ in range(100):  # the server notices the close shortly
            try:
                opened.append(await connect("/ws/events", auth))
                break
            except HTTPClientError as e:
                assert e.code == 429
                await asyncio.sleep(0.05)
        assert len(opened) == WEBSOCKET_CAP
        for ws in [*opened, other_ws]:
            ws.close()

    asyncio.run(run())


def test_ticket_flood_is_capped(hserver: Server, owner: Client) -> None:
    """Unused websocket tickets per user are bounded (each is kept 60 s otherwise)."""
    codes = [owner.post("/ws_tickets/").status_code for _ in range(105)]
    assert codes[:100] == [200] * 100
    assert codes[100:] == [429] * 5
    r = owner.post("/ws_tickets/")
    assert r.status_code == 429 and r.headers["Retry-After"] == "60" and r.json()["success"] is False
    assert login(hserver, hserver.client_token).post("/ws_tickets/").status_code == 200  # others still may


def test_link_websocket_is_spliced_not_buffered(hserver: Server, owner: Client, echo: int) -> None:
    """A websocket opened with a link's ?token= (Tornado's side, not the front door's) is
    spliced as bytes like any other: a message far larger than any buffer the server keeps
    comes back whole, and the access cookie comes with the switch."""
    details = get_job(owner, echo)["job_details"]["current_job_details"]["connection_details"]
    token = details["url_path"].split("token=", 1)[1]
    url = f"ws://127.0.0.1:{hserver.port}/passthrough/{echo}/ws?token={token}"

    async def run() -> tuple[bytes | str | None, str | None]:
        conn = await websocket_connect(url, max_message_size=32 * MESSAGE_CAP)
        big = os.urandom(8 * MESSAGE_CAP)
        await conn.write_message(big, binary=True)
        echoed = await asyncio.wait_for(conn.read_message(), 30)
        cookie = conn.headers.get("Set-Cookie")
        conn.close()
        return (echoed == big) and echoed, cookie

    echoed, cookie = asyncio.run(run())
    assert echoed, "the message did not come back whole"
    assert cookie is not None and cookie.startswith(f"uws-session-{echo}=") and "HttpOnly" in cookie


def test_relayed_websocket_has_back_pressure(hserver: Server, owner: Client, hostile: int) -> None:
    """An app that sends as fast as it can to a browser that reads nothing: the splice stops
    reading from the app while the browser's socket is full, so the server holds a socket
    buffer, not all 256 MiB the app would send."""
    import psutil

    process = psutil.Process(hserver.proc.pid)  # type: ignore[union-attr]
    # The link's token sends the upgrade to the handler's splice (a header: the front door's).
    details = get_job(owner, hostile)["job_details"]["current_job_details"]["connection_details"]
    token = details["url_path"].split("token=", 1)[1]
    url = f"ws://127.0.0.1:{hserver.port}/passthrough/{hostile}/flood?mb=256&token={token}"

    async def run() -> int:
        before = process.memory_info().rss
        conn = await websocket_connect(url)
        await asyncio.sleep(3)  # reading nothing (the client takes one message and stops)
        grown = process.memory_info().rss - before
        assert len(await conn.read_message()) == 512 << 10  # the relay still works
        conn.close()
        return grown

    grown = asyncio.run(run())
    assert grown < 64 << 20, f"the server grew by {grown >> 20} MiB"
    assert_status_answers(hserver)
