"""Scoped API tokens end to end: POST/GET /tokens/api/ and DELETE /tokens/api/<id>/, and the
scope every operation needs (read, workspaces, sessions), through to the passthrough. Runs on
the passthrough's server (conftest's `pserver`) with its running echo session."""

from __future__ import annotations

import re

import requests

from helpers.api import create, get_job, login, wait_for
from helpers.harness import Client, Server


def api_token(c: Client, scopes: list[str], **body: object) -> Client:
    """A client holding a new API token of `c`'s user with these scopes."""
    r = c.post("/tokens/api/", {"scopes": scopes, **body})
    assert r.status_code == 200, r.text
    token = r.json()["data"]["token"]
    scoped = Client(c.base, token["token"])
    scoped.username = c.username  # type: ignore[attr-defined]
    scoped.token_id = token["id"]  # type: ignore[attr-defined]
    return scoped


def token_ids(c: Client) -> list[int]:
    r = c.get("/tokens/api/")
    assert r.status_code == 200, r.text
    return [t["id"] for t in r.json()["data"]["tokens"]]


def refused(r: requests.Response, scope: str) -> bool:
    return r.status_code == 403 and r.json() == {
        "success": False,
        "message": f"This token does not have the '{scope}' scope.",
    }


def test_create_list_and_revoke(pserver: Server) -> None:
    me = login(pserver, pserver.client_token)
    r = me.post("/tokens/api/", {"scopes": ["read", "workspaces"], "expires_in": 3600, "note": "backup job"})
    assert r.status_code == 200, r.text
    created = r.json()["data"]["token"]
    key = created["token"]
    assert re.fullmatch(r"[0-9a-f]{40}", key)
    assert created["scopes"] == ["read", "workspaces"] and created["note"] == "backup job"
    assert created["expires_at"] and not created["current"]
    scoped = Client(me.base, key)
    listing = scoped.get("/tokens/api/")
    assert listing.status_code == 200
    tokens = {t["id"]: t for t in listing.json()["data"]["tokens"]}
    # The login token (full rights: scopes null) and the new one; the key and its hash never.
    assert len(tokens) == 2 and key not in listing.text
    assert not re.search(r"[0-9a-f]{40}", listing.text)
    assert all(
        set(t) == {"id", "note", "scopes", "datetime_created", "expires_at", "current"}
        for t in tokens.values()
    )
    assert tokens[created["id"]]["current"] and tokens[created["id"]]["scopes"] == ["read", "workspaces"]
    (login_token,) = [t for t in tokens.values() if t["id"] != created["id"]]
    assert login_token["scopes"] is None and not login_token["current"]
    assert me.delete(f"/tokens/api/{created['id']}/").json()["message"] == f"Token {created['id']} revoked."
    assert scoped.get("/workspaces/").status_code == 401
    assert token_ids(me) == [login_token["id"]]


def test_read_only_token_reads_but_changes_nothing(pserver: Server, owner: Client, session: dict) -> None:
    reader = api_token(owner, ["read"])
    w = create(owner, name="kept")
    before = owner.get("/workspaces/").json()["data"]["workspaces"]
    # Every GET of the owner's own objects.
    for path in ("/workspaces/", f"/workspaces/{w['id']}/", "/jobs/", f"/jobs/{session['id']}/", "/quota/"):
        assert reader.get(path).status_code == 200, path
    assert reader.post("/ws_tickets/").status_code == 200
    # No workspace change, no start, no stop.
    assert refused(reader.post("/workspaces/", {"name": "x", "description": ""}), "workspaces")
    assert refused(reader.put(f"/workspaces/{w['id']}/", {"name": "renamed"}), "workspaces")
    assert refused(reader.delete(f"/workspaces/{w['id']}/"), "workspaces")
    files = {"files": ("a.txt", b"a")}
    assert refused(reader.request("PUT", f"/workspaces/{w['id']}/upload/", files=files), "workspaces")
    assert refused(reader.put(f"/workspaces/{w['id']}/start/", {"job_type": "echo"}), "sessions")
    assert refused(reader.put(f"/jobs/{session['id']}/stop/"), "sessions")
    assert refused(
        reader.post("/shared_workspaces/", {"original_workspace_id": w["id"], "shared_user_ids": [1]}),
        "workspaces",
    )
    assert owner.get("/workspaces/").json()["data"]["workspaces"] == before
    assert get_job(owner, session["id"])["status"] == "running"
    assert len(owner.get(f"/jobs/?workspace_id={w['id']}").json()["data"]["jobs"]) == 0


def test_read_only_token_does_not_reach_into_sessions(pserver: Server, owner: Client, session: dict) -> None:
    reader = api_token(owner, ["read"])
    url = f"{pserver.base}/passthrough/{session['id']}/hello"
    assert requests.get(url, headers=owner.headers(), timeout=5).status_code == 200
    r = requests.get(url, headers=reader.headers(), timeout=5)
    assert r.status_code == 403 and r.json()["success"] is False
    # The job's link carries the session's token only for tokens that may enter the session.
    full_link = get_job(owner, session["id"])["job_details"]["current_job_details"]["connection_details"]
    read_link = get_job(reader, session["id"])["job_details"]["current_job_details"]["connection_details"]
    assert "token=" in full_link["url_path"] and "token=" not in read_link["url_path"]
    assert read_link["url_path"] == full_link["url_path"].split("?")[0]


def test_each_scope_allows_its_own_operations_only(pserver: Server) -> None:
    me = login(pserver, pserver.client_token)
    writer = api_token(me, ["workspaces"])
    r = writer.post("/workspaces/", {"name": "made by a workspaces token", "description": ""})
    assert r.status_code == 200, r.text
    ws_id = r.json()["data"]["workspace"]["id"]
    assert refused(writer.get("/workspaces/"), "read")
    assert refused(writer.put(f"/workspaces/{ws_id}/start/", {"job_type": "echo"}), "sessions")
    starter = api_token(me, ["sessions"])
    assert refused(starter.post("/workspaces/", {"name": "no", "description": ""}), "workspaces")
    assert [w["id"] for w in me.get("/workspaces/").json()["data"]["workspaces"]] == [ws_id]


def test_a_token_never_grants_more_than_it_holds(pserver: Server) -> None:
    me = login(pserver, pserver.client_token)
    reader = api_token(me, ["read"])
    before = token_ids(me)
    r = reader.post("/tokens/api/", {"scopes": ["read", "workspaces"]})
    assert r.status_code == 403 and "does not hold: workspaces" in r.json()["message"]
    r = me.post("/tokens/api/", {"scopes": ["admin"]})
    assert r.status_code == 403 and r.json()["success"] is False
    r = me.post("/tokens/api/", {"scopes": ["read", "metrics"]})
    assert r.status_code == 403
    assert token_ids(me) == before
    # A read-only token may make another read-only token (no more than it holds).
    assert api_token(reader, ["read"]).get("/quota/").status_code == 200


def test_bad_input_is_400_and_creates_nothing(pserver: Server) -> None:
    me = login(pserver, pserver.client_token)
    before = token_ids(me)
    for body in (
        {},
        {"scopes": []},
        {"scopes": "read"},
        {"scopes": ["read", "everything"]},
        {"scopes": ["read"], "expires_in": 0},
        {"scopes": ["read"], "expires_in": -5},
        {"scopes": ["read"], "expires_in": "60"},
        {"scopes": ["read"], "expires_in": 1.5},
        {"scopes": ["read"], "expires_in": True},
        {"scopes": ["read"], "expires_in": 10**30},
        {"scopes": ["read"], "note": "x" * 256},
        {"scopes": ["read"], "note": 5},
    ):
        r = me.post("/tokens/api/", body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["success"] is False and r.json()["message"], body
    assert me.post("/tokens/api/", raw="[1]").status_code == 400
    assert token_ids(me) == before


def test_expiry(pserver: Server) -> None:
    me = login(pserver, pserver.client_token)
    brief = api_token(me, ["read"], expires_in=1)
    assert brief.get("/workspaces/").status_code == 200
    # Bounded: the token expires one second after it was made.
    answer = wait_for(lambda: (r := brief.get("/workspaces/")).status_code == 401 and r.json(), timeout=5)
    assert answer == {"success": False, "message": "Token has expired."}


def test_revocation_rules(pserver: Server) -> None:
    me = login(pserver, pserver.client_token)
    other = login(pserver, pserver.client_token)
    reader = api_token(me, ["read"])
    full_id = next(t["id"] for t in me.get("/tokens/api/").json()["data"]["tokens"] if t["current"])
    # A read-only token cannot log out a full-rights token, nor log out everything.
    r = reader.delete(f"/tokens/api/{full_id}/")
    assert r.status_code == 403 and r.json()["success"] is False
    r = reader.delete("/tokens/?all=true")
    assert r.status_code == 403
    assert me.get("/workspaces/").status_code == 200
    # Another user's token is not found, and stays valid.
    other_id = next(t["id"] for t in other.get("/tokens/api/").json()["data"]["tokens"] if t["current"])
    r = me.delete(f"/tokens/api/{other_id}/")
    assert r.status_code == 404 and r.json() == {
        "success": False,
        "message": f"Token {other_id} not found for user.",
    }
    assert other.get("/workspaces/").status_code == 200
    # A token may revoke itself; the revocation counts at once.
    assert reader.delete(f"/tokens/api/{reader.token_id}/").status_code == 200  # type: ignore[attr-defined]
    assert reader.get("/workspaces/").json()["message"] == "Invalid token provided."


def test_login_tokens_keep_full_rights(pserver: Server, owner: Client, session: dict) -> None:
    """The original API's POST /tokens/ tokens hold every right of their owner (tests of the
    original contract in test_tokens.py, test_workspaces.py, ... check the rest)."""
    me = login(pserver, pserver.client_token)
    assert me.post("/workspaces/", {"name": "w", "description": ""}).status_code == 200
    assert me.post("/tokens/api/", {"scopes": ["read", "workspaces", "sessions"]}).status_code == 200
    # Logging out with a login token still works, and takes every key with ?all=true.
    scoped = api_token(me, ["read"])
    assert me.delete("/tokens/?all=true").status_code == 200
    assert scoped.get("/workspaces/").status_code == 401
