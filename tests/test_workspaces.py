"""Workspaces: create, list, filter, update, upload and delete (contract 2.2-2.7)."""

from __future__ import annotations

import os

import pytest

from helpers.api import DATETIME, create, get_ws, login, wait_for, ws_dir
from helpers.configs import LOCAL_CONFIG
from helpers.harness import IS_ROOT, Client, Server

W_KEYS = [
    "id",
    "name",
    "description",
    "disk_space",
    "datetime_created",
    "datetime_last_modified",
    "datetime_last_job_launch",
    "workspace_details",
    "status",
    "default_job_type",
]


def test_create_returns_full_workspace(server: Server, alice: Client) -> None:
    w = create(
        alice,
        name="bench ws",
        description="baseline",
        default_job_type="local_test_job",
        workspace_details={
            "files": [
                {"name": "hello.txt", "content": "hello world!"},
                {"name": "sub/dir/nb.ipynb", "content": None},
            ],
            "symlinks": [{"name": "data/hostname", "source_path": "/etc/hostname"}],
            "globus_groups_token": "secret",
        },
    )
    assert list(w) == W_KEYS
    assert w["status"] == "idle"
    assert w["disk_space"] == 12
    assert DATETIME.match(w["datetime_created"])
    assert w["datetime_last_modified"] is None and w["datetime_last_job_launch"] is None
    assert w["workspace_details"] == {
        "request_workspace_details": {
            "files": [{"name": "hello.txt"}, {"name": "sub/dir/nb.ipynb"}],
            "symlinks": [{"name": "data/hostname", "source_path": "/etc/hostname"}],
        },
        "current_workspace_details": {
            "files": [{"name": "/hello.txt"}, {"name": "/sub/dir/nb.ipynb"}],
            "symlinks": [{"name": "/data/hostname"}],
        },
    }
    path = ws_dir(server, alice, w["id"])
    assert open(os.path.join(path, "hello.txt")).read() == "hello world!"
    assert os.readlink(os.path.join(path, "data/hostname")) == os.path.realpath("/etc/hostname")
    assert "secret" not in str(alice.get("/workspaces/").json())
    if IS_ROOT:
        import pwd

        uid = pwd.getpwnam(alice.username).pw_uid
        for rel in ("", "hello.txt", "sub", "sub/dir/nb.ipynb", "data"):
            assert os.lstat(os.path.join(path, rel)).st_uid == uid, rel
        assert os.lstat(os.path.join(path, "data/hostname")).st_uid == uid
        assert os.stat("/etc/hostname").st_uid == 0  # the link's target was not chowned (S4)


def test_get_list_by_id_and_filters(alice: Client, bob: Client) -> None:
    a = create(alice, name="one", description="x")
    b = create(alice, name="two", description="x")
    create(bob, name="one", description="x")
    listed = alice.get("/workspaces/").json()["data"]["workspaces"]
    assert [w["id"] for w in listed] == sorted(w["id"] for w in listed)
    assert {a["id"], b["id"]} <= {w["id"] for w in listed}
    assert [w["id"] for w in alice.get("/workspaces/?name=one").json()["data"]["workspaces"]] == [a["id"]]
    assert len(alice.get("/workspaces/?description=x&name=two").json()["data"]["workspaces"]) == 1
    r = alice.get("/workspaces/?status=nonsense")
    assert r.status_code == 200
    assert r.json() == {
        "message": "Workspace matching given parameters could not be found.",
        "success": True,
        "data": {"workspaces": []},
    }
    # by id: filters ignored; another user's id is an empty 200, never 404
    assert alice.get(f"/workspaces/{a['id']}?name=zzz").json()["data"]["workspaces"][0]["id"] == a["id"]
    r = bob.get(f"/workspaces/{a['id']}/")
    assert r.status_code == 200 and r.json()["data"]["workspaces"] == []
    assert alice.get("/workspaces/99999999").json()["success"] is True


@pytest.mark.parametrize(
    "body,message",
    [
        ({"name": "x"}, "Missing required fields."),
        ({"description": "x"}, "Missing required fields."),
        ({"name": 1, "description": ""}, "name must be a string."),
        ({"name": None, "description": ""}, "name must be a string."),
        ({"name": "x", "description": 5}, "description must be a string."),
        ({"name": "x" * 257, "description": ""}, "name must be at most 256 characters."),
        (
            {"name": "x", "description": "", "default_job_type": "nope"},
            "nope is not in the list of available job types.",
        ),
        ({"name": "x", "description": "", "workspace_details": []}, "Workspace details not JSON."),
        (
            {"name": "x", "description": "", "workspace_details": {"symlinks": {}}},
            "'symlinks' index must contain a list.",
        ),
        (
            {"name": "x", "description": "", "workspace_details": {"symlinks": ["a"]}},
            "Each symlink must be an object with a string 'name'.",
        ),
        (
            {
                "name": "x",
                "description": "",
                "workspace_details": {"symlinks": [{"name": "a/../b", "source_path": "/etc"}]},
            },
            "Symlink name cannot contain double dots.",
        ),
        (
            {
                "name": "x",
                "description": "",
                "workspace_details": {"symlinks": [{"name": "/abs", "source_path": "/etc"}]},
            },
            "Invalid symlink destination path specified /abs",
        ),
        (
            {
                "name": "x",
                "description": "",
                "workspace_details": {"symlinks": [{"name": "ok", "source_path": "/no/such"}]},
            },
            "Symlink path not found: /no/such",
        ),
        (
            {"name": "x", "description": "", "workspace_details": {"symlinks": [{"name": "ok"}]}},
            "Symlink path not found: None",
        ),
        (
            {
                "name": "x",
                "description": "",
                "workspace_details": {"symlinks": [{"name": "ok", "source_path": "relative"}]},
            },
            "Symlink path not found: relative",
        ),
        (
            {"name": "x", "description": "", "workspace_details": {"files": "a"}},
            "'files' index must contain a list.",
        ),
        (
            {"name": "x", "description": "", "workspace_details": {"files": [{"name": 3}]}},
            "Each file must be an object with a string 'name'.",
        ),
        (
            {"name": "x", "description": "", "workspace_details": {"files": [{"name": "../x"}]}},
            "File name cannot contain double dots.",
        ),
        (
            {"name": "x", "description": "", "workspace_details": {"files": [{"name": "/etc/passwd"}]}},
            "Invalid file path specified /etc/passwd",
        ),
        (
            {"name": "x", "description": "", "workspace_details": {"files": [{"name": "a//b"}]}},
            "Invalid file path specified a//b",
        ),
        (
            {"name": "x", "description": "", "workspace_details": {"files": [{"name": "./a"}]}},
            "Invalid file path specified ./a",
        ),
        (
            {"name": "x", "description": "", "workspace_details": {"files": [{"name": ".12/job.sh"}]}},
            "Invalid file path specified .12/job.sh",
        ),
        (
            {"name": "x", "description": "", "workspace_details": {"files": [{"name": "my_venv/x"}]}},
            "Invalid file path specified my_venv/x",
        ),
        (
            {"name": "x", "description": "", "workspace_details": {"files": [{"name": "a", "content": 5}]}},
            "File content must be a string.",
        ),
    ],
)
def test_create_validation_changes_nothing(server: Server, alice: Client, body: dict, message: str) -> None:
    before = alice.get("/workspaces/").json()["data"]["workspaces"]
    r = alice.post("/workspaces/", body)
    assert r.status_code == 400, r.text
    assert r.json() == {"success": False, "message": message}
    assert alice.get("/workspaces/").json()["data"]["workspaces"] == before


def test_symlink_sources_are_restricted(server: Server, alice: Client, bob: Client) -> None:
    other = create(bob, name="bobs", workspace_details={"files": [{"name": "secret.txt", "content": "s"}]})
    bob_path = ws_dir(server, bob, other["id"])
    forbidden = [os.path.join(bob_path, "secret.txt"), server.dir + "/workspaces"]
    if IS_ROOT:
        forbidden += ["/etc/shadow", "/root"]
    for source in forbidden:
        r = alice.post(
            "/workspaces/",
            {
                "name": "x",
                "description": "",
                "workspace_details": {"symlinks": [{"name": "l", "source_path": source}]},
            },
        )
        assert r.status_code == 400, source
        assert r.json()["message"] == f"Invalid symlink source path specified {source}"
    # A link to the owner's own other workspace is fine.
    mine = create(alice, name="mine")
    own = ws_dir(server, alice, mine["id"])
    create(alice, workspace_details={"symlinks": [{"name": "prev", "source_path": own}]})


def test_no_write_through_symlinked_parent(server: Server, alice: Client) -> None:
    import pathlib
    import tempfile

    # A world-writable directory the user could read anyway (pytest's tmp_path is private to root).
    target = pathlib.Path(tempfile.mkdtemp(prefix="uws-outside-", dir=server.dir))
    os.chmod(target, 0o777)
    w = create(alice, workspace_details={"symlinks": [{"name": "out", "source_path": str(target)}]})
    r = alice.put(
        f"/workspaces/{w['id']}/", {"workspace_details": {"files": [{"name": "out/x.txt", "content": "x"}]}}
    )
    assert r.status_code == 400
    assert r.json()["message"] == "Invalid file path specified out/x.txt"
    assert list(target.iterdir()) == []
    # Replacing the link itself with a file is allowed and does not touch the target.
    r = alice.put(
        f"/workspaces/{w['id']}/",
        {"workspace_details": {"files": [{"name": "out", "content": "now a file"}]}},
    )
    assert r.status_code == 200
    assert open(os.path.join(ws_dir(server, alice, w["id"]), "out")).read() == "now a file"
    assert target.is_dir()


def test_update_applies_and_merges(server: Server, alice: Client) -> None:
    w = create(alice, name="before", workspace_details={"files": [{"name": "a.txt", "content": "1"}]})
    r = alice.put(
        f"/workspaces/{w['id']}", {"name": "after", "description": "d2", "default_job_type": "jupyter_lab"}
    )
    assert r.json() == {"message": "Update successful.", "success": True}
    r = alice.put(
        f"/workspaces/{w['id']}/",
        {"workspace_details": {"files": [{"name": "a.txt", "content": "22"}, {"name": "b.txt"}]}},
    )
    assert r.status_code == 200
    got = get_ws(alice, w["id"])
    assert got["name"] == "after" and got["description"] == "d2" and got["default_job_type"] == "jupyter_lab"
    assert DATETIME.match(got["datetime_last_modified"])
    assert got["workspace_details"]["request_workspace_details"]["files"] == [
        {"name": "a.txt"},
        {"name": "b.txt"},
    ]
    assert got["workspace_details"]["current_workspace_details"]["files"] == [
        {"name": "/a.txt"},
        {"name": "/b.txt"},
    ]
    assert got["disk_space"] == 2
    assert alice.put(f"/workspaces/{w['id']}", {"default_job_type": None}).status_code == 200
    assert get_ws(alice, w["id"])["default_job_type"] is None


def test_update_failure_changes_nothing(server: Server, alice: Client) -> None:
    w = create(alice, name="keep")
    r = alice.put(
        f"/workspaces/{w['id']}",
        {
            "name": "changed",
            "workspace_details": {"files": [{"name": "good.txt", "content": "x"}, {"name": "../bad"}]},
        },
    )
    assert r.status_code == 400
    got = get_ws(alice, w["id"])
    assert got["name"] == "keep"
    assert not os.path.exists(os.path.join(ws_dir(server, alice, w["id"]), "good.txt"))
    r = alice.put(f"/workspaces/{w['id']}", raw="")
    assert r.json()["message"] == "Invalid JSON: Expecting value: line 1 column 1 (char 0)"


def test_put_common_checks(alice: Client, bob: Client) -> None:
    w = create(alice)
    for path in (f"/workspaces/{w['id']}/", f"/workspaces/{w['id']}/upload/"):
        r = bob.put(path, {})
        assert r.status_code == 404
        assert r.json()["message"] == f"Workspace {w['id']} not found for user."
    r = alice.put(f"/workspaces/{w['id']}/bogus/", {})
    assert r.status_code == 400 and r.json()["message"] == "Invalid PUT type passed."
    r = bob.put(f"/workspaces/{w['id']}/bogus/", {})
    assert r.status_code == 404


def test_upload_saves_every_part(server: Server, alice: Client) -> None:
    w = create(alice)
    files = [
        ("files", ("one.txt", b"1")),
        ("files", ("two.txt", b"22")),
        ("other", ("dir/three.txt", b"333")),
        ("x", ("C:\\Users\\me\\four.txt", b"4444")),
    ]
    r = alice.session.put(f"{alice.base}/workspaces/{w['id']}/UPLOAD/", files=files, headers=alice.headers())
    assert r.json() == {"message": "Successful upload.", "success": True}
    got = get_ws(alice, w["id"])
    assert got["workspace_details"]["current_workspace_details"]["files"] == [
        {"name": "/four.txt"},
        {"name": "/one.txt"},
        {"name": "/three.txt"},
        {"name": "/two.txt"},
    ]
    assert got["disk_space"] == 10
    assert DATETIME.match(got["datetime_last_modified"])


def test_upload_errors(server: Server, alice: Client) -> None:
    w = create(alice)
    url = f"{alice.base}/workspaces/{w['id']}/upload"
    r = alice.session.put(url, data=b"plain", headers=alice.headers())
    assert r.status_code == 400 and r.json()["message"] == "No files found in request."
    r = alice.session.put(url, files=[("f", ("ok.txt", b"x")), ("f", ("..", b"x"))], headers=alice.headers())
    assert r.status_code == 400 and r.json()["message"] == "Invalid file path specified .."
    assert not os.path.exists(os.path.join(ws_dir(server, alice, w["id"]), "ok.txt"))
    r = alice.session.put(url, files=[("f", (".3", b"x"))], headers=alice.headers())
    assert r.json()["message"] == "Invalid file path specified .3"
    r = alice.session.put(url, files=[("f", ("big.bin", b"x" * (3 * 1024 * 1024)))], headers=alice.headers())
    assert r.status_code == 413 and r.json()["message"] == "Request body too large."


def test_upload_into_a_folder_stays_inside_the_workspace(server: Server, alice: Client) -> None:
    w = create(
        alice,
        workspace_details={
            "files": [{"name": "results/run 1/old.txt", "content": "x"}, {"name": "plain.txt"}],
            "symlinks": [{"name": "linked", "source_path": "/usr/share"}],
        },
    )
    url = f"{alice.base}/workspaces/{w['id']}/upload/"
    root = ws_dir(server, alice, w["id"])

    def put(path: str, name: str = "new.txt") -> tuple[int, str]:
        r = alice.session.put(
            url, params={"path": path}, files=[("f", (name, b"new"))], headers=alice.headers()
        )
        return r.status_code, r.json()["message"]

    assert put("results/run 1/") == (200, "Successful upload.")
    with open(os.path.join(root, "results", "run 1", "new.txt"), "rb") as f:
        assert f.read() == b"new"
    listing = alice.get(f"/workspaces/{w['id']}/files/", params={"path": "results/run 1"}).json()["data"]
    assert sorted(e["name"] for e in listing["entries"]) == ["new.txt", "old.txt"]
    invalid = (
        400,
        "Invalid path: a path relative to the workspace, names separated by '/', without empty, '.' or '..' names.",
    )
    for path in ("..", "results/../..", "/etc", "results//x", "./results"):
        assert put(path) == invalid, path
    assert put("results/missing") == (404, "Folder not found in workspace: results/missing.")
    assert put(".1") == (404, "Folder not found in workspace: .1.")  # (a job directory: hidden)
    assert put("linked") == (
        400,
        "Uploads go into the workspace's own folders: linked goes through a symlink.",
    )
    assert put("plain.txt") == (400, "Not a directory: plain.txt.")
    assert put("results", "run 1") == (400, "Invalid file path specified run 1")  # (a folder there)
    assert not os.path.exists("/usr/share/new.txt") and not os.path.exists(
        os.path.join(server.dir, "new.txt")
    )
    assert put("") == (200, "Successful upload.")  # (empty: the top, as before)
    assert os.path.isfile(os.path.join(root, "new.txt"))


def test_delete_flow(server: Server, alice: Client, bob: Client) -> None:
    w = create(
        alice,
        workspace_details={
            "files": [{"name": "f.txt", "content": "x"}],
            "symlinks": [{"name": "host", "source_path": "/etc/hostname"}],
        },
    )
    path = ws_dir(server, alice, w["id"])
    r = bob.delete(f"/workspaces/{w['id']}/")
    assert r.status_code == 404 and r.json()["message"] == f"Workspace {w['id']} not found for user."
    r = alice.delete(f"/workspaces/{w['id']}")
    assert r.json() == {"message": f"Workspace {w['id']} queued for deletion.", "success": True}
    # idempotent while deleting, and the row disappears once the directory is gone
    assert alice.delete(f"/workspaces/{w['id']}").status_code in (200, 404)
    wait_for(lambda: get_ws(alice, w["id"]) is None)
    assert not os.path.exists(path)
    assert os.path.exists("/etc/hostname")
    r = alice.put(f"/workspaces/{w['id']}", {"name": "x"})
    assert r.status_code == 404


def test_puts_refused_while_deleting_or_initializing(server: Server, alice: Client) -> None:
    w = create(alice)
    server.sql(f"UPDATE workspaces SET status = 'deleting' WHERE id = {w['id']}")
    r = alice.put(f"/workspaces/{w['id']}", {"name": "x"})
    assert r.status_code == 400 and r.json()["message"] == f"Workspace {w['id']} is being deleted."
    # a second DELETE is an idempotent 200 and queues nothing
    r = alice.delete(f"/workspaces/{w['id']}")
    assert r.json() == {"message": f"Workspace {w['id']} queued for deletion.", "success": True}
    server.sql(f"UPDATE workspaces SET status = 'initializing' WHERE id = {w['id']}")
    r = alice.put(f"/workspaces/{w['id']}/upload", {"name": "x"})
    assert r.status_code == 400 and r.json()["message"] == f"Workspace {w['id']} is still initializing."
    assert os.path.isdir(ws_dir(server, alice, w["id"]))


def test_queued_deletion_survives_restart(backend: str) -> None:

    srv = Server(backend, LOCAL_CONFIG).start()
    try:
        ct = srv.new_client_token()
        c = login(srv, ct)
        w = create(c, workspace_details={"files": [{"name": "f.txt", "content": "x"}]})
        path = ws_dir(srv, c, w["id"])
        srv.stop()
        # As if the server died right after accepting the DELETE.
        srv.sql(f"UPDATE workspaces SET status = 'deleting' WHERE id = {w['id']}")
        srv.start()
        wait_for(lambda: get_ws(c, w["id"]) is None)
        assert not os.path.exists(path)
    finally:
        srv.close()
