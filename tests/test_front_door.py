"""The server's front door (uws/passthrough/front.py): it relays a let-in client's bodyless GETs and
HEADs to the session itself, and hands a connection to Tornado at its first other request.
These tests talk raw HTTP/1.1 over one socket (helpers.raw), so that what one connection
carries, in which order and split how, is under the test's control.
"""

from __future__ import annotations

import hashlib
import json
import time

import pytest
import requests

from helpers.api import login
from helpers.configs import LOCAL_CONFIG
from helpers.harness import Client, Server, running_server
from helpers.raw import Connection, request

# `pserver`, `owner` and `session` are the passthrough tests' server, user and echo session
# (tests/conftest.py; module-scoped: this module gets its own).


def test_one_connection_mixes_relayed_and_full_requests(
    pserver: Server, owner: Client, session: dict
) -> None:
    """Relayed GETs, then an upload and an API call (Tornado's from then on), then GETs again:
    all on one connection, each answered in full."""
    auth = owner.headers()
    base = f"/passthrough/{session['id']}"
    conn = Connection(pserver)
    try:
        conn.send(request("GET", f"{base}/hello", auth))
        assert conn.answer()[::2] == (200, b"hello")
        conn.send(request("GET", f"{base}/headers", {**auth, "X-Real-Ip": "10.1.2.3"}))
        status, _, body = conn.answer()
        seen = {k.lower(): v for k, v in json.loads(body).items()}
        assert status == 200
        # No trusted proxies are configured: a client's own X-Real-Ip is not believed.
        assert seen["x-forwarded-for"] == "127.0.0.1"
        assert "uws-authorization" not in seen  # the credential is not passed on
        payload = b"z" * 100_000
        conn.send(request("POST", f"{base}/echo", auth, payload))
        status, _, body = conn.answer()
        assert status == 200
        assert json.loads(body) == {"sha256": hashlib.sha256(payload).hexdigest(), "length": len(payload)}
        conn.send(request("GET", "/workspaces/", auth))
        status, headers, body = conn.answer()
        assert status == 200 and json.loads(body)["success"] is True
        conn.send(request("GET", f"{base}/hello", auth))
        assert conn.answer()[::2] == (200, b"hello")
        conn.send(request("HEAD", f"{base}/hello", auth))
        status, headers, _ = conn.answer(head_request=True)
        assert status == 200 and headers["content-length"] == "5"
    finally:
        conn.close()


def test_pipelined_requests_are_answered_in_order(pserver: Server, owner: Client, session: dict) -> None:
    """Requests sent together in one write, among them one the front hands over while later
    ones already sit in its buffer: Tornado gets those bytes too."""
    auth = owner.headers()
    base = f"/passthrough/{session['id']}"
    conn = Connection(pserver)
    try:
        conn.send(
            request("GET", f"{base}/hello", auth)
            + request("GET", f"{base}/chunked?n=3", auth)
            + request("HEAD", f"{base}/hello", auth)
            + request("GET", "/workspaces/", auth)
            + request("GET", f"{base}/hello", auth)
        )
        assert conn.answer()[::2] == (200, b"hello")
        assert conn.answer()[::2] == (200, b"part0;part1;part2;")
        assert conn.answer(head_request=True)[0] == 200
        status, _, body = conn.answer()
        assert status == 200 and json.loads(body)["success"] is True
        assert conn.answer()[::2] == (200, b"hello")
    finally:
        conn.close()


def test_heads_split_across_writes(pserver: Server, owner: Client, session: dict) -> None:
    """A request head that arrives in pieces is waited for, on both paths."""
    auth = owner.headers()
    base = f"/passthrough/{session['id']}"
    conn = Connection(pserver)
    try:
        for data in (request("GET", f"{base}/hello", auth), request("POST", f"{base}/echo", auth, b"abc")):
            for i in range(0, len(data), 7):
                conn.send(data[i : i + 7])
                time.sleep(0.002)
            status, _, body = conn.answer()
            assert status == 200
            assert body == b"hello" if b"GET" in data[:3] else json.loads(body) == echo_of(b"abc")
    finally:
        conn.close()


def echo_of(payload: bytes) -> dict:
    return {"sha256": hashlib.sha256(payload).hexdigest(), "length": len(payload)}


@pytest.mark.parametrize(
    "raw, status",
    [
        # HTTP/1.0: Tornado's, as are its keep-alive rules
        (b"GET /passthrough/{id}/hello HTTP/1.0\r\nUWS-Authorization: {auth}\r\n\r\n", 200),
        # asks to close after the answer
        (
            b"GET /passthrough/{id}/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"UWS-Authorization: {auth}\r\n\r\n",
            200,
        ),
        # malformed: Tornado's 400
        (b"GET /passthrough/{id}/hello HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400),
        (b"NOT-HTTP\r\n\r\n", 400),
        # a token to exchange: the full handler sets the cookie
        (b"GET /passthrough/{id}/hello?token=wrong HTTP/1.1\r\nHost: x\r\n\r\n", 403),
        # HTTP/1.1 without a Host, or with two: Tornado's 400
        (b"GET /passthrough/{id}/hello HTTP/1.1\r\nUWS-Authorization: {auth}\r\n\r\n", 400),
        (
            b"GET /passthrough/{id}/hello HTTP/1.1\r\nHost: a\r\nHost: b\r\nUWS-Authorization: {auth}\r\n\r\n",
            400,
        ),
    ],
)
def test_requests_the_front_leaves_to_tornado(
    pserver: Server, owner: Client, session: dict, raw: bytes, status: int
) -> None:
    conn = Connection(pserver)
    try:
        raw = raw.replace(b"{id}", str(session["id"]).encode())
        conn.send(raw.replace(b"{auth}", f"Token {owner.token}".encode()))
        got, _, body = conn.answer()
        assert got == status
        if status == 200:
            assert body == b"hello"
        if status == 403:
            assert json.loads(body) == {
                "success": False,
                "message": "You do not have access to this session.",
            }
        if b"HTTP/1.0" in raw or b"close" in raw or status == 400:
            assert conn.closed_by_server()
    finally:
        conn.close()


def test_refused_on_a_relayed_connection(pserver: Server, owner: Client, session: dict) -> None:
    """After relayed requests, another user's request on the same connection still gets the
    JSON 403, and nothing reaches the session."""
    other = login(pserver, pserver.client_token)
    base = f"/passthrough/{session['id']}"
    conn = Connection(pserver)
    try:
        conn.send(request("GET", f"{base}/count", owner.headers()))
        before = int(conn.answer()[2])
        conn.send(request("GET", f"{base}/hello", other.headers()))
        status, _, body = conn.answer()
        assert status == 403
        assert json.loads(body) == {"success": False, "message": "You do not have access to this session."}
        conn.close()  # (Tornado ends a connection after a refusal made before reading the body)
        conn = Connection(pserver)
        conn.send(request("GET", f"{base}/count", owner.headers()))
        assert int(conn.answer()[2]) == before
    finally:
        conn.close()


def test_client_leaving_ends_the_request_to_the_session(
    pserver: Server, owner: Client, session: dict
) -> None:
    """A browser that gives up on a long request (a long poll) must not leave it open at the app."""
    base = f"/passthrough/{session['id']}"
    auth = owner.headers()

    def in_flight() -> int:
        probe = Connection(pserver)
        try:
            probe.send(request("GET", f"{base}/in-flight", auth))
            return int(probe.answer()[2])
        finally:
            probe.close()

    assert in_flight() == 0
    conn = Connection(pserver)
    conn.send(request("GET", f"{base}/slow?s=30", auth))
    deadline = time.monotonic() + 5
    while in_flight() != 1:
        assert time.monotonic() < deadline, "the slow request never reached the app"
        time.sleep(0.05)
    conn.close()
    deadline = time.monotonic() + 1.5  # well before the proxy's own timeout (3 s) would end it
    while in_flight() != 0:
        assert time.monotonic() < deadline, "the app still serves a request nobody waits for"
        time.sleep(0.05)


@pytest.mark.parametrize("path, status", [("/ws", 101), ("/hello", 502), ("/no-such-page", 404)])
def test_websocket_handshake_answers(
    pserver: Server, owner: Client, session: dict, path: str, status: int
) -> None:
    """The front door passes the app's own handshake answer on; when the app answers with
    anything but 101, the browser gets the websocket handler's JSON refusal (the app's status,
    or 502 when that status was not an error)."""
    conn = Connection(pserver)
    try:
        conn.send(
            request(
                "GET",
                f"/passthrough/{session['id']}{path}",
                {
                    **owner.headers(),
                    "Connection": "Upgrade",
                    "Upgrade": "websocket",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                    "Sec-WebSocket-Version": "13",
                },
            )
        )
        if status == 101:
            assert conn.file.readline().startswith(b"HTTP/1.1 101 ")
            lines = []
            while (line := conn.file.readline()) != b"\r\n":
                lines.append(line.decode().lower())
            # the app's own answer to the key: the handshake went end to end
            assert "sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n" in lines
            return
        got, headers, body = conn.answer()
        assert got == status
        assert json.loads(body) == {"success": False, "message": "The session did not accept the websocket."}
        assert conn.closed_by_server()
    finally:
        conn.close()


def test_answer_with_two_framings_is_refused(pserver: Server, owner: Client, session: dict) -> None:
    """An app answer with both Content-Length and Transfer-Encoding is a 502, never passed on
    (with the length kept, the rest of the body would read as the next answer)."""
    conn = Connection(pserver)
    try:
        conn.send(request("GET", f"/passthrough/{session['id']}/both-lengths", owner.headers()))
        status, _, body = conn.answer()
        assert status == 502
        assert json.loads(body) == {"success": False, "message": "The session did not answer."}
        conn.send(request("GET", f"/passthrough/{session['id']}/hello", owner.headers()))
        assert conn.answer()[::2] == (200, b"hello")
    finally:
        conn.close()


def test_cut_answer_ends_the_connection_before_the_next_request(
    pserver: Server, owner: Client, session: dict
) -> None:
    """A request pipelined behind an answer the app cut short is not served on that connection:
    its answer would read as the rest of the broken one."""
    base = f"/passthrough/{session['id']}"
    conn = Connection(pserver)
    try:
        conn.send(
            request("GET", f"{base}/cut?length=1", owner.headers())
            + request("POST", f"{base}/echo", owner.headers(), b"x")
        )
        assert conn.file.readline().startswith(b"HTTP/1.1 200")
        while conn.file.readline() != b"\r\n":
            pass
        rest = conn.file.read()  # to the end of the connection
        assert len(rest) < 1000 and b"HTTP/1.1" not in rest
    finally:
        conn.close()


def test_pathological_head_does_not_stall_the_server(pserver: Server, owner: Client, session: dict) -> None:
    """A header value of 60,000 spaces and tabs (which once took a regular expression minutes)
    is parsed in passing: another client is answered meanwhile, and so is this one."""
    conn = Connection(pserver)
    try:
        evil = "a" + " \t" * 30_000 + "b"
        conn.send(request("GET", f"/passthrough/{session['id']}/hello", {**owner.headers(), "X-Pad": evil}))
        r = requests.get(
            f"{pserver.base}/passthrough/{session['id']}/hello", headers=owner.headers(), timeout=5
        )
        assert r.text == "hello"
        assert conn.answer()[0] in (200, 431)
    finally:
        conn.close()


@pytest.mark.parametrize("path", ["/passthrough/{n}/hello", "/workspaces/{n}/", "/jobs/{n}/"])
def test_ids_too_long_for_a_number_are_no_route(pserver: Server, owner: Client, path: str) -> None:
    """A 5,000-digit id (Python's int() refuses over 4,300 digits) gets the JSON 404 of a path
    that names nothing, not a server error."""
    r = requests.get(pserver.base + path.format(n="9" * 5000), headers=owner.headers(), timeout=5)
    assert r.status_code == 404 and r.headers["Content-Type"].startswith("application/json")
    assert r.json()["success"] is False


# ---- what one client can hold of the server: heads, connections, forwarded headers ------------

LIMITED_CONNECTIONS = 6


@pytest.fixture(scope="module")
def impatient(backend: str):
    """A server that gives a request head 1 s (the default is 30 s)."""
    yield from running_server(backend, LOCAL_CONFIG + "c.FrontServer.head_timeout = 1\n")


@pytest.fixture(scope="module")
def crowded(backend: str):
    """A server that takes at most LIMITED_CONNECTIONS connections at once."""
    yield from running_server(
        backend, LOCAL_CONFIG + f"c.FrontServer.max_connections = {LIMITED_CONNECTIONS}\n"
    )


def closed_within(conn: Connection, seconds: float) -> bool:
    """Whether the server closes the connection (bounded wait; a close, not a speed, is tested)."""
    conn.sock.settimeout(seconds)
    try:
        return conn.sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


@pytest.mark.parametrize(
    "opening",
    [
        b"GET /passthrough/1/ HTTP/1.1\r\nHost: x\r\n",  # a head the front door waits on
        b"",  # a connection that sends nothing
        request("GET", "/status/", {}) + b"GET /status/ HTTP/1.1\r\nHost: x\r\n",  # Tornado's wait
    ],
)
def test_slow_heads_are_closed_after_the_head_timeout(impatient: Server, opening: bytes) -> None:
    """A client that holds a connection without completing a request head (slowloris) loses it
    once the head timeout has passed, whether the front door or Tornado waits for the head; a
    byte now and then does not extend the time."""
    conn = Connection(impatient)
    try:
        conn.send(opening)
        if opening.startswith(b"GET /status/"):
            assert conn.answer()[0] == 200
        for _ in range(3):
            conn.send(b"X")  # a header's first bytes, trickling in
            time.sleep(0.2)
        assert closed_within(conn, 15)
    finally:
        conn.close()
    assert requests.get(f"{impatient.base}/status/", timeout=5).status_code == 200


def test_connection_cap_refuses_extra_connections(crowded: Server) -> None:
    """At the cap, one more connection gets a JSON 503 and is closed, while the open ones go on
    being served; once one of those closes there is room again."""
    open_ones = []
    try:
        for _ in range(LIMITED_CONNECTIONS):
            conn = Connection(crowded)
            conn.send(request("GET", "/status/", {}))
            assert conn.answer()[0] == 200
            open_ones.append(conn)
        extra = Connection(crowded)
        try:
            extra.send(request("GET", "/status/", {}))
            status, headers, body = extra.answer()
            assert status == 503 and headers["content-type"] == "application/json"
            assert json.loads(body)["success"] is False
            assert extra.closed_by_server()
        finally:
            extra.close()
        for conn in open_ones:  # still served
            conn.send(request("GET", "/status/", {}))
            assert conn.answer()[0] == 200
        open_ones.pop().close()
        for _ in range(100):  # the server notices the close shortly
            try:
                r = requests.get(f"{crowded.base}/status/", timeout=5)
            except requests.ConnectionError:
                r = None
            if r is not None and r.status_code == 200:
                break
            time.sleep(0.05)
        assert r is not None and r.status_code == 200
    finally:
        for conn in open_ones:
            conn.close()


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_bare_lf_heads_are_answered(pserver: Server, owner: Client, session: dict, ending: bytes) -> None:
    """Heads whose lines end in a bare LF (Tornado's parser takes them) are answered, not left
    waiting for a CRLF that never comes."""
    token = owner.headers()["UWS-Authorization"]
    for path, expected in ((f"/passthrough/{session['id']}/hello", b"hello"), ("/status/", None)):
        conn = Connection(pserver)
        try:
            conn.send(f"GET {path} HTTP/1.1\nHost: x\nUWS-Authorization: {token}\n".encode() + ending)
            status, _, body = conn.answer()
            assert status == 200
            if expected is not None:
                assert body == expected
        finally:
            conn.close()


def test_forwarded_headers_from_an_untrusted_peer_are_not_believed(
    pserver: Server, owner: Client, session: dict
) -> None:
    """No trusted proxies are configured (the default): what a client says in X-Forwarded-For,
    X-Real-Ip, X-Forwarded-Proto or X-Scheme changes neither what the session is told nor the
    access log, on the front door's relay or Tornado's."""
    spoof = {
        "X-Forwarded-For": "6.6.6.6",
        "X-Real-Ip": "6.6.6.7",
        "X-Forwarded-Proto": "https",
        "X-Scheme": "https",
    }
    for extra in ({}, {"Connection": "close"}):
        r = requests.get(
            f"{pserver.base}/passthrough/{session['id']}/headers",
            headers={**owner.headers(), **spoof, **extra},
            timeout=5,
        )
        seen = {k.lower(): v for k, v in r.json().items()}
        assert seen["x-forwarded-for"] == "127.0.0.1"
        assert seen["x-forwarded-proto"] == "http"
    r = requests.get(f"{pserver.base}/passthrough/{session['id']}/no-such-page", headers=spoof, timeout=5)
    assert r.status_code == 403
    assert "6.6.6" not in pserver.log()
