"""Browsing a workspace's files and downloading one (GET /workspaces/<id>/files/...), end to end:
what is listed and served, with which headers, and what never is (paths outside the workspace,
symlinks out of it, job directories, FIFOs, other users' workspaces), also while a session
swaps directories for symlinks under the server.

Files are put in place on disk by the test (as root: owned by the workspace's OS account), the
way a session would make them: the API only writes files at the workspace's creation."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from urllib.parse import quote, unquote

import psutil
import pytest

from helpers.api import create, login, wait_for, ws_dir
from helpers.configs import LOCAL_CONFIG
from helpers.harness import IS_ROOT, Client, Server, running_server
from helpers.raw import Connection, request

MAX_ENTRIES = 50
CONFIG = (
    LOCAL_CONFIG
    + f"""
c.LocalFileSystemStorage.allowed_symlink_roots = ["@DIR@/datasets"]
c.LocalFileSystemStorage.max_listing_entries = {MAX_ENTRIES}
c.UWSApp.job_types = {{
    "local_test_job": {{"name": "Local Test Job", "job_type": "LocalTestJob",
                       "environment_details": {{"main_resource": {{"sleep_seconds": "60"}}}}}},
}}
"""
)
NOT_FOUND = {"success": False, "message": "File not found in workspace."}


@pytest.fixture(scope="module")
def fserver(backend: str) -> Iterator[Server]:
    yield from running_server(backend, CONFIG)


@pytest.fixture(scope="module")
def datasets(fserver: Server) -> str:
    """The allowed symlink root, with a dataset in it; and, beside it, a directory that is not."""
    root = os.path.join(fserver.dir, "datasets")
    os.makedirs(os.path.join(root, "d1", "raw"), exist_ok=True)
    write(os.path.join(root, "d1", "raw", "x.csv"), b"a,b\n1,2\n")
    os.makedirs(os.path.join(fserver.dir, "outside"), exist_ok=True)
    write(os.path.join(fserver.dir, "outside", "secret.txt"), b"OUTSIDE-SECRET")
    return root


@pytest.fixture
def owner(fserver: Server) -> Client:
    return login(fserver, fserver.client_token)


def write(path: str, content: bytes, mode: int = 0o644) -> None:
    with open(path, "wb") as f:
        f.write(content)
    os.chmod(path, mode)


def own(path: str, like: str) -> None:
    """Give path (not following it) the owner of `like`, as if a session had made it."""
    st = os.stat(like)
    os.lchown(path, st.st_uid, st.st_gid)


class Workspace:
    """A workspace of `owner` and its directory, to put things in as its session would."""

    def __init__(self, server: Server, owner: Client, **body: object) -> None:
        self.owner = owner
        self.id = create(owner, **body)["id"]
        self.dir = ws_dir(server, owner, self.id)

    def path(self, rel: str) -> str:
        return os.path.join(self.dir, rel)

    def mkdir(self, rel: str) -> None:
        os.makedirs(self.path(rel), exist_ok=True)
        own(self.path(rel), self.dir)

    def file(self, rel: str, content: bytes, mode: int = 0o644) -> None:
        write(self.path(rel), content, mode)
        own(self.path(rel), self.dir)

    def link(self, rel: str, target: str) -> None:
        os.symlink(target, self.path(rel))
        own(self.path(rel), self.dir)

    def listing(self, path: str | None = None, client: Client | None = None) -> dict:
        query = "" if path is None else f"?path={quote(path, safe='/')}"
        r = (client or self.owner).get(f"/workspaces/{self.id}/files/{query}")
        assert r.status_code == 200, r.text
        assert r.json()["success"] is True
        return r.json()["data"]

    def download(self, rel: str, client: Client | None = None) -> tuple[int, dict, bytes]:
        r = (client or self.owner).get(f"/workspaces/{self.id}/files/{quote(rel, safe='/')}")
        return r.status_code, dict(r.headers), r.content


def names(listing: dict) -> list[str]:
    return [e["name"] for e in listing["entries"]]


def raw_get(server: Server, token: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """A GET of exactly this path: no client library normalising `..` or re-encoding it."""
    conn = Connection(server)
    try:
        conn.send(request("GET", path, {"UWS-Authorization": f"Token {token}", "Connection": "close"}))
        return conn.answer()
    finally:
        conn.close()


# ---- listings --------------------------------------------------------------------------------
def test_listing_of_the_top_and_a_subdirectory(fserver: Server, owner: Client) -> None:
    files = [
        {"name": "b.txt", "content": "B"},
        {"name": "a.txt", "content": "AAA"},
        {"name": "zdir/inner.txt", "content": "inner"},
    ]
    w = Workspace(fserver, owner, workspace_details={"files": files})
    w.mkdir("adir")
    w.file(".hidden_by_the_user", b"dotfiles are the user's own")

    top = w.listing()
    assert top["path"] == "" and top["truncated"] is False
    # Directories first, then by name.
    assert names(top) == ["adir", "zdir", ".hidden_by_the_user", "a.txt", "b.txt"]
    a_txt = next(e for e in top["entries"] if e["name"] == "a.txt")
    assert a_txt["type"] == "file" and a_txt["size"] == 3
    assert a_txt["modified"].endswith("Z") and len(a_txt["modified"]) == 24
    assert {e["name"]: e["type"] for e in top["entries"]}["zdir"] == "directory"
    assert w.listing("") == top
    # The slash-less route, and a trailing slash on the path, answer the same.
    assert owner.get(f"/workspaces/{w.id}/files").json()["data"] == top
    sub = w.listing("zdir/")
    assert sub["path"] == "zdir"
    assert [(e["name"], e["type"], e["size"]) for e in sub["entries"]] == [("inner.txt", "file", 5)]

    code, _, body = w.download("zdir/inner.txt")
    assert (code, body) == (200, b"inner")


def test_listing_is_bounded(fserver: Server, owner: Client) -> None:
    w = Workspace(fserver, owner)
    w.mkdir("many")
    for i in range(MAX_ENTRIES + 10):
        w.file(f"many/f{i:03d}", b"")
    listing = w.listing("many")
    assert listing["truncated"] is True
    assert len(listing["entries"]) == MAX_ENTRIES
    assert names(listing) == sorted(names(listing))
    assert w.listing()["truncated"] is False


def test_listing_a_file_or_downloading_a_directory_is_a_400(fserver: Server, owner: Client) -> None:
    w = Workspace(fserver, owner)
    w.mkdir("d")
    w.file("f", b"x")
    r = owner.get(f"/workspaces/{w.id}/files/?path=f")
    assert r.status_code == 400 and r.json()["message"].startswith("Not a directory"), r.text
    for path in ("d", "d/"):
        r = owner.get(f"/workspaces/{w.id}/files/{path}")
        assert r.status_code == 400 and r.json()["message"].startswith("Is a directory"), r.text
    r = owner.get(f"/workspaces/{w.id}/files/nope")
    assert (r.status_code, r.json()) == (404, NOT_FOUND)


# ---- downloads -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    ["plain.txt", "with space.txt", "ünïcødé €.txt", "q\"uote'.txt", "new\nline.txt", "semi;colon=x%41.txt"],
)
def test_download_content_and_headers(fserver: Server, owner: Client, name: str) -> None:
    w = Workspace(fserver, owner)
    w.mkdir("sub dir")
    content = ("content of " + name).encode() + bytes(range(256))
    w.file(f"sub dir/{name}", content)
    assert name in names(w.listing("sub dir"))

    code, headers, body = w.download(f"sub dir/{name}")
    assert code == 200, body
    assert body == content
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Length"] == str(len(content))
    assert headers["X-Content-Type-Options"] == "nosniff"
    disposition = headers["Content-Disposition"]
    assert disposition.startswith("attachment; filename=")
    encoded = disposition.split("filename*=UTF-8''", 1)[1]
    assert unquote(encoded, errors="strict") == name
    # Nothing of the name reaches the header as itself but plain printable ASCII.
    assert all(" " <= c < "\x7f" for c in disposition)
    fallback = disposition.split('filename="', 1)[1].split('"', 1)[0]
    assert '"' not in fallback and "\\" not in fallback


def test_big_file_is_streamed(fserver: Server, owner: Client) -> None:
    """256 MiB through the server: what it holds grows by far less than the file (it reads and
    sends a chunk at a time)."""
    size = 256 * 1024 * 1024
    w = Workspace(fserver, owner)
    digest = hashlib.sha256()
    with open(w.path("big.bin"), "wb") as f:
        block = os.urandom(1024 * 1024)
        for _ in range(size // len(block)):
            f.write(block)
            digest.update(block)
    own(w.path("big.bin"), w.dir)
    w.file("small.bin", b"warm up")
    assert w.download("small.bin")[0] == 200

    server = psutil.Process(fserver.proc.pid)  # type: ignore[union-attr]
    baseline = server.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.01):
            peak = max(peak, server.memory_info().rss)

    sampler = threading.Thread(target=sample)
    sampler.start()
    received = hashlib.sha256()
    count = 0
    t0 = time.perf_counter()
    try:
        r = owner.get(f"/workspaces/{w.id}/files/big.bin", stream=True)
        assert r.status_code == 200
        assert r.headers["Content-Length"] == str(size)
        for chunk in r.iter_content(1024 * 1024):
            received.update(chunk)
            count += len(chunk)
    finally:
        done.set()
        sampler.join()
    seconds = time.perf_counter() - t0
    assert count == size and received.digest() == digest.digest()
    growth = peak - baseline
    print(f"\n256 MiB download: {size / seconds / 1e6:.0f} MB/s, server RSS growth {growth / 2**20:.1f} MiB")
    assert growth < 64 * 1024 * 1024, f"server RSS grew by {growth / 2**20:.0f} MiB"


# ---- what is never read ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    [
        "files/..%2F..%2F..%2Fetc%2Fpasswd",
        "files/%2e%2e/%2e%2e/etc/passwd",
        "files/sub/../../../etc/passwd",
        "files/../../etc/passwd",
        "files/%2Fetc%2Fpasswd",
        "files//etc/passwd",
        "files/a%00b",
        "files/a//b",
        "files/./a.txt",
        "files/" + "n" * 256,
        "files/%ff%fe",
        "files/?path=..",
        "files/?path=%2e%2e%2f%2e%2e",
        "files/?path=/etc",
        "files/?path=sub/../..",
        "files/?path=a%00",
        "files/?path=.",
    ],
)
def test_traversal_attempts_are_refused(fserver: Server, owner: Client, path: str) -> None:
    w = Workspace(fserver, owner)
    w.file("a.txt", b"A")
    w.mkdir("sub")
    code, headers, body = raw_get(fserver, owner.token or "", f"/workspaces/{w.id}/{path}")
    assert code in (400, 404), (code, body)
    assert headers["content-type"].startswith("application/json")
    answer = json.loads(body)
    assert answer["success"] is False and answer["message"]
    assert b"root:" not in body


def test_symlinks_are_followed_only_inside_or_into_allowed_roots(
    fserver: Server, owner: Client, datasets: str
) -> None:
    bob = login(fserver, fserver.client_token)
    bobs = Workspace(fserver, bob)
    bobs.file("private.txt", b"BOB-PRIVATE")
    w = Workspace(fserver, owner)
    w.mkdir("sub")
    w.file("sub/in.txt", b"inside")
    w.link("etc_passwd", "/etc/passwd")
    w.link("etc", "/etc")
    w.link("bobs_file", bobs.path("private.txt"))
    w.link("bobs_ws", bobs.dir)
    w.link("escape", "../../../outside")
    w.link("outside", os.path.join(fserver.dir, "outside"))
    w.link("loop", "loop")
    w.link("to_sub", "sub")
    w.link("to_in", "sub/in.txt")
    w.link("dataset", os.path.join(datasets, "d1"))
    # Relative, through the storage root's parent: still lands in the allowed root.
    w.link("dataset_rel", os.path.relpath(os.path.join(datasets, "d1", "raw", "x.csv"), w.dir))

    entries = {e["name"]: e for e in w.listing()["entries"]}
    allowed = {
        n: (e["type"], e["target_allowed"], e["target_type"]) for n, e in entries.items() if n != "sub"
    }
    assert allowed == {
        "etc_passwd": ("symlink", False, None),
        "etc": ("symlink", False, None),
        "bobs_file": ("symlink", False, None),
        "bobs_ws": ("symlink", False, None),
        "escape": ("symlink", False, None),
        "outside": ("symlink", False, None),
        "loop": ("symlink", False, None),
        "to_sub": ("symlink", True, "directory"),
        "to_in": ("symlink", True, "file"),
        "dataset": ("symlink", True, "directory"),
        "dataset_rel": ("symlink", True, "file"),
    }
    assert entries["to_in"]["size"] == len(b"inside")

    for refused in (
        "etc_passwd",
        "etc/passwd",
        "bobs_file",
        "bobs_ws/private.txt",
        "escape/secret.txt",
        "outside/secret.txt",
        "loop",
    ):
        code, _, body = w.download(refused)
        assert (code, json.loads(body)) == (404, NOT_FOUND), refused
    for refused_dir in ("etc", "bobs_ws", "outside"):
        r = owner.get(f"/workspaces/{w.id}/files/", params={"path": refused_dir})
        assert (r.status_code, r.json()) == (404, NOT_FOUND), refused_dir

    assert w.download("to_in")[2] == b"inside"
    assert w.download("to_sub/in.txt")[2] == b"inside"
    assert w.download("dataset/raw/x.csv")[2] == b"a,b\n1,2\n"
    assert w.download("dataset_rel")[2] == b"a,b\n1,2\n"
    assert names(w.listing("dataset")) == ["raw"]
    assert names(w.listing("dataset/raw")) == ["x.csv"]
    # Symlinks made through the API into the allowed root work the same.
    r = owner.put(
        f"/workspaces/{w.id}",
        {
            "workspace_details": {
                "symlinks": [{"name": "api_link", "source_path": os.path.join(datasets, "d1")}]
            }
        },
    )
    assert r.status_code == 200, r.text
    assert w.download("api_link/raw/x.csv")[2] == b"a,b\n1,2\n"


@pytest.mark.skipif(not IS_ROOT, reason="needs files the owner's account cannot read (root)")
def test_files_the_owner_could_not_read_are_not_served(fserver: Server, owner: Client) -> None:
    """The server reads as root; the owner must not gain from that: a root-only file in the
    workspace (a hard link a session cannot make on this system, or a file an admin left)."""
    w = Workspace(fserver, owner)
    write(w.path("root_only"), b"ROOT-ONLY", 0o600)  # owned by root, not the workspace's owner
    os.makedirs(w.path("root_dir"))
    os.chmod(w.path("root_dir"), 0o700)
    write(w.path("root_dir/inner"), b"ROOT-ONLY")
    for path in ("root_only", "root_dir/inner"):
        code, _, body = w.download(path)
        assert (code, json.loads(body)) == (404, NOT_FOUND), path
    w.file("own_private", b"mine", 0o600)  # the owner's own 0600 file is theirs to read
    assert w.download("own_private")[:3:2] == (200, b"mine")


def test_swapping_a_directory_for_a_symlink_never_leaks(
    fserver: Server, owner: Client, datasets: str
) -> None:
    """A session swaps, as fast as it can, a directory for a symlink out of the workspace (and
    a file for a symlink to an outside file) while its owner downloads: every answer is the
    workspace's content or a 404, never the outside file's."""
    w = Workspace(fserver, owner)
    outside = os.path.join(fserver.dir, "outside")
    w.mkdir("d")
    w.file("d/secret.txt", b"inside dir")
    w.file("secret.txt", b"inside file")
    stop = threading.Event()

    def swapper() -> None:
        d, f = w.path("d"), w.path("secret.txt")
        while not stop.is_set():
            os.rename(d, d + ".real")
            os.symlink(outside, d)
            os.rename(f, f + ".real")
            os.symlink(os.path.join(outside, "secret.txt"), f)
            os.unlink(d)
            os.rename(d + ".real", d)
            os.unlink(f)
            os.rename(f + ".real", f)

    thread = threading.Thread(target=swapper)
    thread.start()
    seen: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 10
        for i in range(400):
            if time.monotonic() > deadline:
                break
            code, _, body = w.download("d/secret.txt" if i % 2 else "secret.txt")
            assert b"OUTSIDE" not in body
            assert code in (200, 404), body
            if code == 200:
                assert body in (b"inside dir", b"inside file")
            seen[code] = seen.get(code, 0) + 1
    finally:
        stop.set()
        thread.join()
    assert seen.get(200, 0) > 0, seen  # the race was run, not only refused
    print(f"\nswap race: {seen}")


def test_fifo_is_refused_without_hanging(fserver: Server, owner: Client) -> None:
    w = Workspace(fserver, owner)
    os.mkfifo(w.path("pipe"))
    own(w.path("pipe"), w.dir)
    w.link("to_pipe", "pipe")
    entry = next(e for e in w.listing()["entries"] if e["name"] == "pipe")
    assert entry["type"] == "other"
    for path in ("pipe", "to_pipe"):
        t0 = time.monotonic()
        code, _, body = w.download(path)
        assert code == 400, body
        assert json.loads(body)["message"].startswith("Not a regular file")
        assert time.monotonic() - t0 < 5
    assert owner.get("/status/").status_code == 200


def test_job_directories_are_neither_listed_nor_read(fserver: Server, owner: Client) -> None:
    """A session's job directory holds its output (where apps print the session's link with
    its token) and, under Slurm, the helper's secret: not for a read-only token, and so for
    none, also not through a symlink to it."""
    w = Workspace(fserver, owner)
    r = owner.put(f"/workspaces/{w.id}/start/", {"job_type": "local_test_job"})
    assert r.status_code == 200, r.text
    job_id = r.json()["data"]["job"]["id"]
    try:
        job_dir = f".{job_id}"
        wait_for(lambda: os.path.exists(w.path(f"{job_dir}/job.json")), 20)
        w.file(f"{job_dir}/.secret", b"JOB-SECRET")  # as the Slurm spawner leaves it
        w.link("to_job", job_dir)
        w.link("to_job_file", f"{job_dir}/job.json")
        w.mkdir(".9999999x")  # not a job directory's name: the user's own
        listing = w.listing()
        assert job_dir not in names(listing)
        assert ".9999999x" in names(listing)
        links = {e["name"]: e["target_allowed"] for e in listing["entries"] if e["type"] == "symlink"}
        assert links == {"to_job": False, "to_job_file": False}
        for path in (
            f"{job_dir}/job.json",
            f"{job_dir}/.secret",
            f"{job_dir}/session.log",
            "to_job/job.json",
            "to_job_file",
        ):
            code, _, body = w.download(path)
            assert (code, json.loads(body)) == (404, NOT_FOUND), path
        for path in (job_dir, "to_job"):
            r = owner.get(f"/workspaces/{w.id}/files/", params={"path": path})
            assert (r.status_code, r.json()) == (404, NOT_FOUND), path
    finally:
        owner.put(f"/jobs/{job_id}/stop")


# ---- who may read ----------------------------------------------------------------------------
def test_another_users_workspace_is_a_404_and_audited(fserver: Server, owner: Client) -> None:
    w = Workspace(fserver, owner)
    w.file("mine.txt", b"MINE")
    eve = login(fserver, fserver.client_token)
    expected = {"success": False, "message": f"Workspace {w.id} not found for user."}
    for path in (f"/workspaces/{w.id}/files/", f"/workspaces/{w.id}/files/mine.txt"):
        r = eve.get(path)
        assert (r.status_code, r.json()) == (404, expected), path
    # The same answer as for a workspace that does not exist.
    r = eve.get("/workspaces/999999999/files/mine.txt")
    assert (r.status_code, r.json()["message"]) == (404, "Workspace 999999999 not found for user.")

    audit = os.path.join(fserver.dir, "uws-data", "audit.log")

    def refusal() -> dict | None:
        with open(audit, encoding="utf-8") as f:
            lines = [json.loads(line) for line in f]
        return next(
            (
                line
                for line in lines
                if line["actor"] == eve.username  # type: ignore[attr-defined]
                and line["object"] == f"/workspaces/{w.id}/files/mine.txt"
            ),
            None,
        )

    line = wait_for(refusal)
    assert (line["action"], line["outcome"]) == ("access.refused", "refused")


def test_a_read_only_token_lists_and_downloads(fserver: Server, owner: Client) -> None:
    w = Workspace(fserver, owner)
    w.file("r.txt", b"readable")

    def token_with(scopes: list[str]) -> Client:
        r = owner.post("/tokens/api/", {"scopes": scopes})
        assert r.status_code == 200, r.text
        return Client(owner.base, r.json()["data"]["token"]["token"])

    reader = token_with(["read"])
    assert names(w.listing(client=reader)) == ["r.txt"]
    assert w.download("r.txt", client=reader)[2] == b"readable"
    starter = token_with(["sessions"])
    for path in (f"/workspaces/{w.id}/files/", f"/workspaces/{w.id}/files/r.txt"):
        r = starter.get(path)
        assert (r.status_code, r.json()["message"]) == (403, "This token does not have the 'read' scope."), (
            path
        )
