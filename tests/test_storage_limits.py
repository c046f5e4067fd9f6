"""Storage limits: path depth, deep trees that must still delete and copy, share recipients and
the recipient's disk quota, a full disk, and names that are not text."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile

import pytest

from uws.storage import safepath

from helpers.api import create, get_ws, login, user_id, wait_for, ws_dir
from helpers.configs import LOCAL_CONFIG
from helpers.harness import IS_ROOT, Client, Server, running_server

DEEP = 1100  # deeper than Python's recursion limit


def make_deep_tree(top: str, depth: int, leaf: bytes) -> None:
    """What a session can do as the owner: nested directories far past any path length limit."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        out = os.open("leaf.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, leaf)
        os.close(out)
    finally:
        os.close(fd)


def workspace_ids(c: Client) -> list[int]:
    return [w["id"] for w in c.get("/workspaces/").json()["data"]["workspaces"]]


# ---- depth ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["files", "symlinks"])
def test_too_deep_path_is_400_and_changes_nothing(server: Server, alice: Client, kind: str) -> None:
    entry = {"name": "a/" * DEEP + "x"}
    entry.update({"content": "x"} if kind == "files" else {"source_path": "/etc/hostname"})
    r = alice.post("/workspaces/", {"name": "deep", "description": "", "workspace_details": {kind: [entry]}})
    assert r.status_code == 400
    what = "file path" if kind == "files" else "symlink destination path"
    assert r.json() == {
        "success": False,
        "message": f"Invalid {what} specified: a path may have at most 64 components.",
    }
    assert workspace_ids(alice) == []
    w = create(alice)
    r = alice.put(f"/workspaces/{w['id']}", {"workspace_details": {kind: [entry]}})
    assert r.status_code == 400
    assert os.listdir(ws_dir(server, alice, w["id"])) == []
    # the limit itself is fine
    ok = {**entry, "name": "a/" * 63 + "x"}
    assert alice.put(f"/workspaces/{w['id']}", {"workspace_details": {kind: [ok]}}).status_code == 200


def test_deep_tree_is_scanned_copied_and_deleted(server: Server, alice: Client, bob: Client) -> None:
    w = create(alice)
    make_deep_tree(ws_dir(server, alice, w["id"]), DEEP, b"12345")
    try:
        check_deep_workspace(server, alice, bob, w["id"])
    finally:
        # Whatever happened, no deep tree is left for the shared server's teardown (rm copes).
        for path in (ws_dir(server, alice, w["id"]), os.path.join(server.dir, "workspaces", bob.username)):
            subprocess.run(["rm", "-rf", "--", path], check=False)


def check_deep_workspace(server: Server, alice: Client, bob: Client, ws_id: int) -> None:
    r = alice.put(f"/workspaces/{ws_id}/upload", files={"f": ("top.txt", b"abc")})
    assert r.status_code == 200, r.text
    ws = get_ws(alice, ws_id)
    assert ws["disk_space"] == 8  # the deep file counts, though it is too deep to be listed
    assert ws["workspace_details"]["current_workspace_details"]["files"] == [{"name": "/top.txt"}]

    r = alice.post(
        "/shared_workspaces/", {"original_workspace_id": ws_id, "shared_user_ids": [user_id(alice, bob)]}
    )
    assert r.status_code == 200, r.text
    copy_id = r.json()["data"]["shared_workspaces"][0]["shared_workspace_id"]["id"]
    done = wait_for(
        lambda: (
            (row := server.sql(f"SELECT status, disk_space FROM workspaces WHERE id = {copy_id}")[0])[0]
            != "initializing"
            and row
        )
    )
    assert done == ("idle", 8)
    assert bob.put(f"/shared_workspaces/{copy_id}/accept").status_code == 200
    assert bob.delete(f"/workspaces/{copy_id}").status_code == 200
    wait_for(lambda: get_ws(bob, copy_id) is None)

    assert alice.delete(f"/workspaces/{ws_id}").status_code == 200
    wait_for(lambda: get_ws(alice, ws_id) is None or get_ws(alice, ws_id)["status"] == "error")
    assert get_ws(alice, ws_id) is None
    assert not os.path.exists(ws_dir(server, alice, ws_id))


# ---- names that are not text ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["files", "symlinks"])
def test_lone_surrogate_in_a_name_is_400(server: Server, alice: Client, kind: str) -> None:
    extra = '"content": "x"' if kind == "files" else '"source_path": "/etc/hostname"'
    raw = '{"name": "ws", "description": "", "workspace_details": {"%s": [{"name": "a\\ud800", %s}]}}'
    r = alice.post("/workspaces/", raw=raw % (kind, extra))
    assert r.status_code == 400
    assert r.json()["success"] is False
    assert r.json()["message"].startswith("Invalid ")
    assert workspace_ids(alice) == []
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("field", ["name", "description"])
def test_lone_surrogate_in_workspace_fields_is_400(server: Server, alice: Client, field: str) -> None:
    body = {"name": "ws", "description": ""}
    raw = json.dumps(body).replace(f'"{field}": "', f'"{field}": "\\udc80')
    r = alice.post("/workspaces/", raw=raw)
    assert r.status_code == 400
    assert r.json() == {
        "success": False,
        "message": "Invalid JSON: a string holds a lone surrogate (not text).",
    }
    assert workspace_ids(alice) == []
    # a proper pair is text
    ok = json.dumps({"name": "\U0001f600", "description": ""})
    assert "\\ud83d\\ude00" in ok
    assert alice.post("/workspaces/", raw=ok).status_code == 200


def test_split_destination_refuses_lone_surrogates() -> None:
    for name in ("a\ud800", "d/\udcff.txt"):
        with pytest.raises(safepath.UnsafePath):
            safepath.split_destination(name)
    assert safepath.split_destination("d/\U0001f600.txt") == ["d", "\U0001f600.txt"]


# ---- shares ------------------------------------------------------------------------------------
def test_share_recipients_are_capped(server: Server, client_token: str, alice: Client) -> None:
    others = [login(server, client_token) for _ in range(21)]
    ids = [user_id(alice, o) for o in others]
    w = create(alice, workspace_details={"files": [{"name": "a.txt", "content": "x"}]})
    r = alice.post("/shared_workspaces/", {"original_workspace_id": w["id"], "shared_user_ids": ids})
    assert r.status_code == 400
    assert r.json() == {
        "success": False,
        "message": "A workspace can be shared with at most 20 users at once.",
    }
    assert alice.get("/shared_workspaces/").json()["data"]["original_workspaces"] == []
    r = alice.post("/shared_workspaces/", {"original_workspace_id": w["id"], "shared_user_ids": ids[:20]})
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]["shared_workspaces"]) == 20


def test_share_is_charged_to_the_recipients_quota(server: Server, alice: Client, bob: Client) -> None:
    server.cli("quota", "set", bob.username, "--disk-bytes", "100")
    bob_id = user_id(alice, bob)
    big = create(alice, workspace_details={"files": [{"name": "a.txt", "content": "x" * 150}]})
    r = alice.post("/shared_workspaces/", {"original_workspace_id": big["id"], "shared_user_ids": [bob_id]})
    assert r.status_code == 400
    assert r.json()["message"] == (
        "Disk quota of user Bob Builder exceeded: used 0 bytes, requested 150 bytes, maximum 100 bytes."
    )
    assert alice.get("/shared_workspaces/").json()["data"]["original_workspaces"] == []

    small = create(alice, workspace_details={"files": [{"name": "a.txt", "content": "x" * 60}]})
    r = alice.post("/shared_workspaces/", {"original_workspace_id": small["id"], "shared_user_ids": [bob_id]})
    assert r.status_code == 200, r.text
    # charged at once, before the copy has run or been accepted
    r = alice.post("/shared_workspaces/", {"original_workspace_id": big["id"], "shared_user_ids": [bob_id]})
    assert r.json()["message"] == (
        "Disk quota of user Bob Builder exceeded: used 60 bytes, requested 150 bytes, maximum 100 bytes."
    )

    # Bytes a session wrote since the last scan count too (the recorded size says 0 here).
    grown = create(alice)
    with open(os.path.join(ws_dir(server, alice, grown["id"]), "session-output.bin"), "wb") as f:
        f.write(b"y" * 50)
    assert get_ws(alice, grown["id"])["disk_space"] == 0
    r = alice.post("/shared_workspaces/", {"original_workspace_id": grown["id"], "shared_user_ids": [bob_id]})
    assert r.status_code == 400
    assert "requested 50 bytes" in r.json()["message"]


def test_copy_stops_at_what_the_quota_leaves(backend: str) -> None:
    """A copy that finds more bytes than the recipient's quota leaves (here: a copy resumed
    after a restart, the maximum lowered meanwhile) ends in error, holding and charging nothing."""
    srv = Server(backend, LOCAL_CONFIG).start()
    try:
        ct = srv.new_client_token()
        alice = login(srv, ct, first_name="Alice", last_name="Liddell")
        bob = login(srv, ct, first_name="Bob", last_name="Builder")
        w = create(alice, workspace_details={"files": [{"name": "a.txt", "content": "x" * 150}]})
        r = alice.post(
            "/shared_workspaces/",
            {"original_workspace_id": w["id"], "shared_user_ids": [user_id(alice, bob)]},
        )
        assert r.status_code == 200, r.text
        copy_id = r.json()["data"]["shared_workspaces"][0]["shared_workspace_id"]["id"]
        status = f"SELECT status, status_message, disk_space FROM workspaces WHERE id = {copy_id}"
        assert wait_for(lambda: (row := srv.sql(status)[0])[0] != "initializing" and row) == ("idle", "", 150)
        srv.stop()
        srv.sql(f"UPDATE workspaces SET status = 'initializing' WHERE id = {copy_id}")
        srv.cli("quota", "set", bob.username, "--disk-bytes", "100")
        srv.start()
        assert wait_for(lambda: (row := srv.sql(status)[0])[0] != "initializing" and row) == (
            "error",
            "Copy failed: the workspace is larger than the recipient's remaining disk quota.",
            0,
        )
        assert not os.path.exists(ws_dir(srv, bob, copy_id))
        assert bob.get("/quota/").json()["data"]["quota"]["disk_bytes"]["used"] == 0
    finally:
        srv.close()


# ---- a full disk -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_disk_server(backend: str):
    if not IS_ROOT:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tempfile.mkdtemp(prefix="uws-tmpfs-")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", mount], capture_output=True
    )
    if result.returncode != 0:
        os.rmdir(mount)
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        # JSON bodies may be big enough here to overflow the 1 MiB file system in one request.
        config = (
            LOCAL_CONFIG
            + f'\nc.LocalFileSystemStorage.root_dir = "{mount}"\n'
            + "c.UWSApp.max_json_body_size = 4 * 1024 * 1024\n"
        )
        for srv in running_server(backend, config):
            srv.mount = mount
            yield srv
    finally:
        if subprocess.run(["umount", mount], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", mount], capture_output=True)
        os.rmdir(mount)


def test_full_disk_is_507(full_disk_server: Server) -> None:
    srv = full_disk_server
    c = login(srv, srv.client_token)
    big = "x" * (1536 * 1024)
    r = c.post(
        "/workspaces/",
        {
            "name": "big",
            "description": "",
            "workspace_details": {"files": [{"name": "big.bin", "content": big}]},
        },
    )
    assert r.status_code == 507
    assert r.json() == {"success": False, "message": "Not enough disk space on the server to write big.bin."}
    assert workspace_ids(c) == []
    user_dir = os.path.join(srv.mount, c.username)
    assert os.listdir(user_dir) == []  # the half-built workspace is gone

    w = create(c, workspace_details={"files": [{"name": "keep.txt", "content": "kept"}]})
    r = c.put(
        f"/workspaces/{w['id']}", {"workspace_details": {"files": [{"name": "big.bin", "content": big}]}}
    )
    assert r.status_code == 507
    r = c.put(f"/workspaces/{w['id']}/upload", files={"f": ("big.bin", big.encode())})
    assert r.status_code == 507
    assert r.json()["message"] == "Not enough disk space on the server to write big.bin."
    assert sorted(os.listdir(os.path.join(user_dir, str(w["id"])))) == ["keep.txt"]
    assert get_ws(c, w["id"])["workspace_details"]["current_workspace_details"]["files"] == [
        {"name": "/keep.txt"}
    ]
