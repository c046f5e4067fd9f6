"""Refusals on kept-alive connections (uws.handlers.base.AnswersBeforeBody, uws.passthrough.linger).

A refusal answered before its request's body is read (401, 403, 404, 413, from prepare(); a
bodyless GET's too) used to close the connection without `Connection: close` in the answer, so
a client keeping the connection (requests.Session, as a portal uses it) sent its next request
into the close and met a reset, now and then. Now the body is read and dropped and the
connection kept, or the answer says `Connection: close` and the close comes without a reset.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable

import pytest
import requests

from helpers.api import login
from helpers.harness import Client, Server
from helpers.raw import Connection, request

ROUNDS = 100  # each round: refusals and ordinary requests, in turn, on one kept connection
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def me(server: Server, client_token: str) -> Client:
    return login(server, client_token)


@pytest.fixture(scope="module")
def read_only(me: Client) -> str:
    """A key of an API token with only the read scope: writes are refused (403)."""
    r = me.post("/tokens/api/", {"scopes": ["read"]})
    assert r.status_code == 200, r.text
    return r.json()["data"]["token"]["token"]


def test_refusals_leave_the_kept_connection_serving(
    server: Server, client_token: str, me: Client, read_only: str
) -> None:
    """One requests.Session, as a portal holds it: refusals with and without bodies, each
    followed by an ordinary request on the same connection. Every request is answered (before
    the fix, some 1 in 5 requests after a 401 met a reset)."""
    base = server.base
    session = requests.Session()
    mine = {"UWS-Authorization": f"Token {me.token}"}
    reader = {"UWS-Authorization": f"Token {read_only}"}
    workspace = json.dumps({"name": "ws", "description": ""})
    name = me.username  # type: ignore[attr-defined]
    login_body = json.dumps(
        {"client_token": client_token, "user_info": {"username": name, "email": f"{name}@example.org"}}
    )
    steps: list[tuple[str, Callable[[], requests.Response], int]] = [
        (
            "401 GET",
            lambda: session.get(f"{base}/workspaces/", headers={"UWS-Authorization": "Token x"}),
            401,
        ),
        ("login", lambda: session.post(f"{base}/tokens/", data=login_body), 200),
        ("403 POST", lambda: session.post(f"{base}/workspaces/", data=workspace, headers=reader), 403),
        ("GET", lambda: session.get(f"{base}/workspaces/", headers=mine), 200),
        ("404 POST", lambda: session.post(f"{base}/no-such-route/", data=workspace, headers=mine), 404),
        ("GET", lambda: session.get(f"{base}/job_types/", headers=mine), 200),
        ("passthrough refusal", lambda: session.post(f"{base}/passthrough/99999/", data=workspace), 403),
        ("status", lambda: session.get(f"{base}/status/"), 200),
    ]
    failures: Counter[str] = Counter()
    deadline = time.monotonic() + 120
    rounds = 0
    try:
        while rounds < ROUNDS and time.monotonic() < deadline:
            rounds += 1
            for name, send, expected in steps:
                try:
                    r = send()
                except requests.ConnectionError as e:
                    failures[f"{name}: {type(e.args[0]).__name__ if e.args else e}"] += 1
                    continue
                if r.status_code != expected:
                    failures[f"{name}: {r.status_code} {r.text[:100]}"] += 1
                elif expected >= 400:
                    assert r.json()["success"] is False, r.text
                    assert "close" not in r.headers.get("Connection", "").lower()
    finally:
        session.close()
    assert rounds == ROUNDS, f"only {rounds} rounds in the time"
    assert not failures, f"in {rounds} rounds: {dict(failures)}"


def test_a_refused_body_is_dropped_not_read_as_a_request(server: Server) -> None:
    """The body of a refused request is read and dropped, whatever it holds: a body that looks
    like a request is not answered as one, and the request after it is."""
    inner = request("DELETE", "/workspaces/1/", {"UWS-Authorization": "Token x"})
    conn = Connection(server)
    try:
        conn.send(request("POST", "/workspaces/", {}, body=inner) + request("GET", "/status/", {}))
        status, headers, body = conn.answer()
        assert status == 401 and json.loads(body)["success"] is False
        assert "connection" not in headers
        status, _, body = conn.answer()
        assert status == 200 and json.loads(body)["success"] is True
        conn.send(request("GET", "/status/", {}))  # the connection is still open
        assert conn.answer()[0] == 200
    finally:
        conn.close()


@pytest.mark.parametrize(
    "case",
    ["chunked 401", "100-continue 401", "413 over the drain bound", "403 over the drain bound"],
)
def test_refusals_that_close_say_so_and_close_without_a_reset(
    server: Server, me: Client, read_only: str, case: str
) -> None:
    """A refused body the server does not read on (chunked, its length unknown; one the client
    sends only after "100 Continue"; one over the bound) gets `Connection: close`, and the
    close comes after the answer without a reset, though the client is still sending."""
    upload = f"/workspaces/{workspace_id(me)}/upload/"
    big = b"x" * (5 * MiB)  # past what is read on after a refusal (DRAIN_BYTES, 4 MiB)
    head: bytes
    rest = b""
    expected = 401
    if case == "chunked 401":
        head = request("POST", "/workspaces/", {"Transfer-Encoding": "chunked"})
        rest = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in [b"y" * 1000] * 200) + b"0\r\n\r\n"
    elif case == "100-continue 401":
        head = request("POST", "/workspaces/", {"Expect": "100-continue", "Content-Length": "5"})
    elif case == "413 over the drain bound":
        head = request("POST", "/tokens/", {"Content-Length": str(8 * MiB)})
        rest, expected = big + big[: 3 * MiB], 413
    else:
        # The upload limit (2 MiB) and the drain bound together let 5 MiB be read: the token's
        # scope refuses it, and the rest is not worth reading.
        head = request(
            "PUT", upload, {"UWS-Authorization": f"Token {read_only}", "Content-Length": str(len(big))}
        )
        rest, expected = big, 403
    conn = Connection(server)
    try:
        conn.send(head)
        conn.send(rest)  # (a client that sends on before reading the answer, as most do)
        status, headers, body = conn.answer()
        assert status == expected, body
        assert json.loads(body)["success"] is False
        assert headers.get("connection") == "close"
        assert conn.closed_by_server()
    finally:
        conn.close()


def workspace_id(c: Client) -> int:
    r = c.post("/workspaces/", {"name": "uploads", "description": ""})
    assert r.status_code == 200, r.text
    return r.json()["data"]["workspace"]["id"]
