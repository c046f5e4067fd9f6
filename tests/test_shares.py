"""Shared workspaces (contract 2.14) and the user search that feeds the share dialog (2.13)."""

from __future__ import annotations

import os
import re

from helpers.api import DATETIME, create, get_ws, login, unique_name, user_id, wait_for, ws_dir
from helpers.harness import Client, Server

SW_KEYS = ["id", "name", "description", "workspace_details", "user_id"]
M_KEYS = [
    "original_workspace_id",
    "shared_workspace_id",
    "last_resource_options",
    "last_job_type",
    "is_accepted",
    "datetime_share_created",
]


def test_share_copy_accept_flow(server: Server, alice: Client, bob: Client) -> None:
    w = create(
        alice,
        name="shared one",
        description="d",
        default_job_type="local_test_job",
        workspace_details={
            "files": [{"name": "nb.ipynb", "content": "{}"}, {"name": "d/x.txt", "content": "x"}],
            "symlinks": [{"name": "host", "source_path": "/etc/hostname"}],
        },
    )
    open(os.path.join(ws_dir(server, alice, w["id"]), ".hidden"), "w").write("h")
    bob_id = user_id(alice, bob)
    r = alice.post(
        "/shared_workspaces/", {"original_workspace_id": str(w["id"]), "shared_user_ids": [bob_id]}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["message"] == "Successful."
    (m,) = body["data"]["shared_workspaces"]
    assert list(m) == M_KEYS
    assert list(m["original_workspace_id"]) == SW_KEYS
    assert m["original_workspace_id"]["user_id"]["username"] == alice.username
    assert m["shared_workspace_id"]["user_id"]["username"] == bob.username
    assert m["is_accepted"] is False and m["last_job_type"] == "" and m["last_resource_options"] == {}
    assert DATETIME.match(m["datetime_share_created"])
    copy_id = m["shared_workspace_id"]["id"]
    # Unaccepted: hidden from bob's workspace list, but visible as a received share.
    assert copy_id not in [x["id"] for x in bob.get("/workspaces/").json()["data"]["workspaces"]]
    got = bob.get(f"/shared_workspaces/{copy_id}/").json()["data"]
    assert got["shared_workspaces"][0]["shared_workspace_id"]["id"] == copy_id
    sent = alice.get("/shared_workspaces/?is_accepted=false").json()["data"]["original_workspaces"]
    assert copy_id in [x["shared_workspace_id"]["id"] for x in sent]
    assert (
        bob.put(f"/workspaces/{copy_id}", {"name": "x"}).json()["message"]
        == f"Workspace {copy_id} is a shared workspace and has not been accepted."
    )
    # accept (case-insensitive, idempotent)
    r = bob.put(f"/shared_workspaces/{copy_id}/ACCEPT")
    assert r.json() == {"message": "Successful.", "success": True}
    copy = wait_for(lambda: (x := get_ws(bob, copy_id)) and x["status"] == "idle" and x)
    created = copy["datetime_created"]
    assert bob.put(f"/shared_workspaces/{copy_id}/accept/").status_code == 200
    assert get_ws(bob, copy_id)["datetime_created"] == created
    assert copy["name"] == "shared one" and copy["default_job_type"] == "local_test_job"
    assert copy["workspace_details"]["current_workspace_details"] == {
        "files": [{"name": "/d/x.txt"}, {"name": "/nb.ipynb"}],
        "symlinks": [{"name": "/host"}],
    }
    dst = ws_dir(server, bob, copy_id)
    assert not os.path.exists(os.path.join(dst, ".hidden"))
    assert os.readlink(os.path.join(dst, "host")) == os.path.realpath("/etc/hostname")
    accepted = bob.get("/shared_workspaces/?is_accepted=True").json()["data"]["shared_workspaces"]
    assert [x["is_accepted"] for x in accepted if x["shared_workspace_id"]["id"] == copy_id] == [True]
    r = alice.delete(f"/shared_workspaces/{copy_id}")
    assert r.status_code == 400
    assert r.json()["message"] == f"Shared workspace {copy_id} has been accepted and cannot be deleted."


def test_share_errors(server: Server, client_token: str, alice: Client, bob: Client) -> None:
    w = create(alice)
    bob_id = user_id(alice, bob)
    me = user_id(bob, alice)
    cases = [
        ({"original_workspace_id": w["id"]}, 400, "Missing required fields."),
        ({"original_workspace_id": "abc", "shared_user_ids": []}, 404, "Workspace abc not found for user."),
        (
            {"original_workspace_id": 99999999, "shared_user_ids": []},
            404,
            "Workspace 99999999 not found for user.",
        ),
        ({"original_workspace_id": w["id"], "shared_user_ids": 5}, 400, "shared_user_ids is not a list."),
        ({"original_workspace_id": w["id"], "shared_user_ids": ["x"]}, 400, "Invalid user id provided."),
        ({"original_workspace_id": w["id"], "shared_user_ids": [99999999]}, 400, "Invalid user id provided."),
        (
            {"original_workspace_id": w["id"], "shared_user_ids": [bob_id, bob_id]},
            400,
            "Invalid user id provided.",
        ),
        (
            {"original_workspace_id": w["id"], "shared_user_ids": [me]},
            400,
            "Cannot share a workspace with yourself.",
        ),
    ]
    for body, status, message in cases:
        r = alice.post("/shared_workspaces", body)
        assert (r.status_code, r.json()["message"]) == (status, message), body
    assert (
        bob.post(
            "/shared_workspaces", {"original_workspace_id": w["id"], "shared_user_ids": [me]}
        ).status_code
        == 404
    )
    assert (
        alice.post(
            "/shared_workspaces", {"original_workspace_id": w["id"], "shared_user_ids": [bob_id]}
        ).status_code
        == 200
    )
    r = alice.post("/shared_workspaces", {"original_workspace_id": w["id"], "shared_user_ids": [str(bob_id)]})
    assert r.status_code == 400
    assert r.json()["message"] == f"Workspace {w['id']} already has a pending share for user {bob_id}."
    # the original cannot be deleted while a share of it is pending
    r = alice.delete(f"/workspaces/{w['id']}")
    assert r.status_code == 400
    assert r.json()["message"].startswith(f"Workspace {w['id']} has shared workspaces associated with it")


def test_decline_and_cancel(server: Server, client_token: str, alice: Client, bob: Client) -> None:
    carol = login(server, client_token)
    w = create(alice, workspace_details={"files": [{"name": "a.txt", "content": "a"}]})
    ids = [user_id(alice, bob), user_id(alice, carol)]
    shares = alice.post(
        "/shared_workspaces/", {"original_workspace_id": w["id"], "shared_user_ids": ids}
    ).json()
    bob_copy, carol_copy = (m["shared_workspace_id"]["id"] for m in shares["data"]["shared_workspaces"])
    wait_for(
        lambda: bob.get(f"/shared_workspaces/{bob_copy}").json()["data"]["shared_workspaces"][0][
            "shared_workspace_id"
        ]["workspace_details"]["current_workspace_details"]["files"]
    )
    r = carol.delete(f"/shared_workspaces/{bob_copy}/")
    assert r.status_code == 403
    assert r.json()["message"] == f"User does not have permissions for shared workspace {bob_copy}."
    assert bob.delete("/shared_workspaces/99999999").status_code == 404
    # recipient declines
    r = bob.delete(f"/shared_workspaces/{bob_copy}/")
    assert r.json() == {"message": f"Shared workspace {bob_copy} queued for deletion.", "success": True}
    # sender cancels
    assert alice.delete(f"/shared_workspaces/{carol_copy}").status_code == 200
    wait_for(lambda: alice.get(f"/shared_workspaces/{bob_copy}").json()["data"]["original_workspaces"] == [])
    wait_for(
        lambda: not os.path.exists(ws_dir(server, bob, bob_copy)), 30
    )  # (background work: slow under load)
    # carol's copy may have finished copying before the cancel, so it too is deleted in the background
    wait_for(
        lambda: alice.get(f"/shared_workspaces/{carol_copy}").json()["data"]["original_workspaces"] == []
    )
    r = alice.get(f"/shared_workspaces/{carol_copy}")
    assert r.json() == {
        "message": "Shared workspace matching given parameters could not be found.",
        "success": True,
        "data": {"original_workspaces": [], "shared_workspaces": []},
    }
    # with no pending share left, the original can be deleted
    assert alice.delete(f"/workspaces/{w['id']}").status_code == 200


def test_deleted_original_gives_null(server: Server, alice: Client, bob: Client) -> None:
    w = create(alice)
    share = alice.post(
        "/shared_workspaces/", {"original_workspace_id": w["id"], "shared_user_ids": [user_id(alice, bob)]}
    ).json()
    copy_id = share["data"]["shared_workspaces"][0]["shared_workspace_id"]["id"]
    bob.put(f"/shared_workspaces/{copy_id}/accept")
    assert alice.delete(f"/workspaces/{w['id']}").status_code == 200
    wait_for(lambda: get_ws(alice, w["id"]) is None)
    (m,) = bob.get(f"/shared_workspaces/{copy_id}").json()["data"]["shared_workspaces"]
    assert m["original_workspace_id"] is None
    assert m["shared_workspace_id"]["id"] == copy_id


def test_users_search(server: Server, client_token: str) -> None:
    tag = unique_name("s")
    me = login(server, client_token, email=f"{tag}me@x.org", first_name="Searcher", last_name=tag)
    zed = login(server, client_token, email=f"zz{tag}@x.org", first_name="Zed", last_name="Quux")
    mary = login(server, client_token, email="m@x.org", first_name="Mary Ann", last_name=f"Smith{tag}")
    r = me.get(f"/users/?search={tag}")
    users = r.json()["data"]["users"]
    assert [u["username"] for u in users] == [zed.username, mary.username]  # never the caller
    assert list(users[0]) == ["id", "first_name", "last_name", "username", "email"]
    # case-insensitive, '+' is a space, matches "<first> <last>"
    assert [
        u["username"] for u in me.get(f"/users/?search=ann+smith{tag.upper()}").json()["data"]["users"]
    ] == [mary.username]
    # no username match
    assert me.get(f"/users/?search={zed.username}").json()["data"]["users"] == []
    # A NUL matches nothing (PostgreSQL would refuse it in the query: a 500 before).
    assert me.get(f"/users/?search={tag}%00").json()["data"]["users"] == []
    r = me.get("/users/?search=nobody-at-all-here")
    assert r.json() == {
        "message": "Users matching given parameters could not be found.",
        "success": True,
        "data": {"users": []},
    }
    everyone = [u["username"] for u in me.get("/users/").json()["data"]["users"]]
    assert zed.username in everyone and me.username not in everyone
    server.cli("user", "deactivate", zed.username)
    assert zed.username not in [u["username"] for u in me.get("/users/?search=").json()["data"]["users"]]
    assert re.fullmatch(r"\d+", str(users[0]["id"]))
