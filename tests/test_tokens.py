"""POST /tokens/ (client-token login) and DELETE /tokens/ (logout), contract 2.1 and S7."""

from __future__ import annotations

import json
import re
import time

import pytest

from helpers.api import login, unique_name
from helpers.configs import LOCAL_CONFIG
from helpers.harness import IS_ROOT, Client, Server


def post_tokens(server: Server, raw: str | bytes, headers: dict[str, str] | None = None):
    return server.client().request("POST", "/tokens/", raw=raw, headers=headers or {})


def test_login_returns_new_hex_token_each_time(server: Server, client_token: str) -> None:
    name = unique_name()
    body = json.dumps(
        {"client_token": client_token, "user_info": {"username": name, "email": f"{name}@x.org"}}
    )
    # The portal's Flask back end sends no Content-Type at all.
    r1 = post_tokens(server, body)
    r2 = post_tokens(server, body, {"Content-Type": "application/x-www-form-urlencoded"})
    assert r1.status_code == r2.status_code == 200
    assert list(r1.json()) == ["success", "message", "token"]
    assert r1.json()["message"] == "Successful authentication."
    t1, t2 = r1.json()["token"], r2.json()["token"]
    assert re.fullmatch(r"[0-9a-f]{40}", t1) and t1 != t2
    # Both stay valid: earlier keys are not revoked by a new login.
    for t in (t1, t2):
        assert server.client(t).get("/workspaces/").status_code == 200


@pytest.mark.parametrize(
    "raw,status,message",
    [
        ("", 400, "JSONDecodeError('Expecting value: line 1 column 1 (char 0)')"),
        ("[]", 400, "Missing client_token. Please have admin generate a token for you."),
        ('{"user_info": {}}', 400, "Missing client_token. Please have admin generate a token for you."),
        ('{"client_token": "x"}', 400, "Missing user_info. Please provide user_info to get user_token."),
        ('{"client_token": "nope", "user_info": {}}', 401, "Incorrect authentication credentials."),
    ],
)
def test_login_errors(server: Server, raw: str, status: int, message: str) -> None:
    r = post_tokens(server, raw)
    assert r.status_code == status
    assert r.json() == {"success": False, "message": message}


@pytest.mark.parametrize(
    "info,message",
    [
        ({"email": "a@b.c"}, "Missing username or email in user_info."),
        ({"username": "abc"}, "Missing username or email in user_info."),
        ("notadict", "Missing username or email in user_info."),
        ({"username": "-rf", "email": "a@b.c"}, "Invalid username in user_info."),
        ({"username": "a b", "email": "a@b.c"}, "Invalid username in user_info."),
        ({"username": "x" * 33, "email": "a@b.c"}, "Invalid username in user_info."),
        ({"username": "1abc", "email": "a@b.c"}, "Invalid username in user_info."),
    ],
)
def test_user_info_validation(server: Server, client_token: str, info: object, message: str) -> None:
    r = post_tokens(server, json.dumps({"client_token": client_token, "user_info": info}))
    assert r.status_code == 400
    assert r.json() == {"success": False, "message": message}


def test_user_token_is_not_a_client_token(server: Server, alice: Client) -> None:
    r = post_tokens(
        server, json.dumps({"client_token": alice.token, "user_info": {"username": "x", "email": "e"}})
    )
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == "Token"


def test_client_token_is_not_a_user_token(server: Server, client_token: str) -> None:
    r = server.client(client_token).get("/workspaces/")
    assert r.status_code == 401
    assert r.json()["message"] == "Invalid token provided."


def test_login_ignores_stale_auth_header(server: Server, client_token: str) -> None:
    name = unique_name()
    body = json.dumps({"client_token": client_token, "user_info": {"username": name, "email": "e@x.org"}})
    r = post_tokens(server, body, {"UWS-Authorization": "Token garbage"})
    assert r.status_code == 200


def test_existing_username_with_other_email_is_same_user(server: Server, client_token: str) -> None:
    name = unique_name()
    a = login(server, client_token, name, email="first@x.org", first_name="First")
    a.post("/workspaces/", {"name": "mine", "description": ""})
    b = login(server, client_token, name, email="second@x.org", first_name="Second")
    names = [w["name"] for w in b.get("/workspaces/").json()["data"]["workspaces"]]
    assert names == ["mine"]


def test_logout_revokes_only_that_key(server: Server, client_token: str) -> None:
    name = unique_name()
    a1 = login(server, client_token, name)
    a2 = login(server, client_token, name)
    r = a1.delete("/tokens/")
    assert r.status_code == 200
    assert r.json() == {"message": "Successful logout.", "success": True}
    assert a1.get("/workspaces/").json() == {"success": False, "message": "Invalid token provided."}
    assert a2.get("/workspaces/").status_code == 200
    assert a1.delete("/tokens").status_code == 401


def test_logout_all(server: Server, client_token: str) -> None:
    name = unique_name()
    a1, a2 = login(server, client_token, name), login(server, client_token, name)
    assert a1.delete("/tokens/?all=true").status_code == 200
    assert a2.get("/workspaces/").status_code == 401


def test_token_is_stored_only_hashed(server: Server, alice: Client) -> None:
    if server.backend != "sqlite":
        pytest.skip("reads the SQLite file directly")
    with open(server.db_url[len("sqlite:///") :], "rb") as f:
        data = f.read()
    import glob

    for wal in glob.glob(server.db_url[len("sqlite:///") :] + "-wal"):
        data += open(wal, "rb").read()
    assert alice.token.encode() not in data
    import hashlib

    assert hashlib.sha256(alice.token.encode()).hexdigest().encode() in data


@pytest.fixture(scope="module")
def expiring_server(backend: str):

    srv = Server(backend, LOCAL_CONFIG + "\nc.UWSApp.token_expiry_seconds = 1\n").start()
    yield srv
    srv.close()


def test_token_expiry(expiring_server: Server) -> None:
    ct = expiring_server.new_client_token()
    name = unique_name()
    r = expiring_server.client().post(
        "/tokens/", {"client_token": ct, "user_info": {"username": name, "email": "e@x"}}
    )
    body = r.json()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["expires_at"])
    c = expiring_server.client(body["token"])
    assert c.get("/workspaces/").status_code == 200
    time.sleep(3.1)  # expiry (1 s) plus the lookup cache (2 s)
    r = c.get("/workspaces/")
    assert r.status_code == 401
    assert r.json()["message"] == "Token has expired."


def test_inactive_user_is_refused(server: Server, client_token: str) -> None:
    name = unique_name()
    c = login(server, client_token, name)
    assert c.get("/workspaces/").status_code == 200
    server.cli("user", "deactivate", name)
    time.sleep(2.1)  # the server re-reads token lookups after 2 s
    r = c.get("/workspaces/")
    assert r.status_code == 401
    assert r.json()["message"] == "User inactive or deleted."


@pytest.mark.skipif(not IS_ROOT, reason="creating OS accounts needs root")
def test_login_provisions_os_account(server: Server, client_token: str) -> None:
    import pwd

    name = unique_name()
    login(server, client_token, name)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            pwd.getpwnam(name)
            return
        except KeyError:
            time.sleep(0.1)
    raise AssertionError(f"OS account {name} was not created")
