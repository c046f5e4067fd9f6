"""The server (root) never follows a path the user controls: job files read through the job
directory, rescans of a workspace, and the fd walks underneath them."""

from __future__ import annotations

import os
import secrets
import sys

import psutil
import pytest

from uws.auth.accounts import Account
from uws.storage import safepath, trees

from helpers.api import create, get_ws, login, wait_for, ws_dir
from helpers.configs import LOCAL_CONFIG, SUDO_AVAILABLE
from helpers.harness import Client, Server, running_server

APP_PYTHON = "/usr/bin/python3" if SUDO_AVAILABLE else sys.executable
SECRET = f"TOP-SECRET-OF-B-{secrets.token_hex(4)}"

CONFIG = (
    LOCAL_CONFIG
    + f"""
c.JobService.heartbeat_seconds = 1
c.JobService.reconcile_seconds = 1
c.UWSApp.job_types = {{
    "secret": {{"name": "Secret", "job_type": "CommandJob", "environment_details": {{"main_resource": {{
        "command": ["sh", "-c", "echo {SECRET}; exit 3"]}}}}}},
    "web": {{"name": "Web app", "job_type": "CommandJob", "environment_details": {{"main_resource": {{
        "command": ["{APP_PYTHON}", "-m", "http.server", "{{port}}", "--bind", "127.0.0.1"],
        "readiness_path": "/"}}}}}},
}}
"""
)


@pytest.fixture(scope="module")
def rserver(backend: str):
    yield from running_server(backend, CONFIG)


def job_status(c: Client, job_id: int) -> dict:
    (job,) = c.get(f"/jobs/{job_id}").json()["data"]["jobs"]
    return job


def start(c: Client, ws_id: int, job_type: str) -> dict:
    r = c.put(f"/workspaces/{ws_id}/start/", {"job_type": job_type})
    assert r.status_code == 200, r.text
    return r.json()["data"]["job"]


def test_swapped_job_dir_does_not_show_another_jobs_exit(rserver: Server) -> None:
    """A user kills their own helper and replaces their job directory with a symlink to another
    user's: their job must not end with the other job's exit.json (log tail, exit code)."""
    bob = login(rserver, rserver.client_token)
    eve = login(rserver, rserver.client_token)
    wb = create(bob)
    bob_job = start(bob, wb["id"], "secret")
    done = wait_for(lambda: (j := job_status(bob, bob_job["id"]))["status"] == "failed" and j, 30)
    assert SECRET in done["job_details"]["current_job_details"]["log_tail"]
    bob_job_dir = os.path.join(ws_dir(rserver, bob, wb["id"]), f".{bob_job['id']}")
    assert os.path.exists(os.path.join(bob_job_dir, "exit.json"))

    we = create(eve)
    eve_job = start(eve, we["id"], "web")
    wait_for(lambda: job_status(eve, eve_job["id"])["status"] == "running", 30)
    # What eve's session could do as eve: move .N away and put a symlink in its place (the
    # test does it as root, which changes nothing for the server). The swap comes before the
    # kill, so the server cannot look in between.
    eve_job_dir = os.path.join(ws_dir(rserver, eve, we["id"]), f".{eve_job['id']}")
    os.rename(eve_job_dir, eve_job_dir + "-moved")
    os.symlink(bob_job_dir, eve_job_dir)
    helper = psutil.Process(eve_job["resource_job_id"])
    tree = [helper, *helper.children(recursive=True)]
    for p in tree:
        p.kill()
    psutil.wait_procs(tree, timeout=5)
    ended = wait_for(
        lambda: (j := job_status(eve, eve_job["id"]))["status"] in ("complete", "failed") and j, 30
    )
    current = ended["job_details"]["current_job_details"]
    assert SECRET not in str(current)
    assert current["message"] == "Job process disappeared; exit status unknown."


def test_rescan_lists_a_symlink_to_etc_as_a_link_only(rserver: Server) -> None:
    c = login(rserver, rserver.client_token)
    w = create(c, workspace_details={"symlinks": [{"name": "etc", "source_path": "/etc"}]})
    r = c.put(f"/workspaces/{w['id']}/upload", files={"f": ("a.txt", b"x")})
    assert r.status_code == 200, r.text
    current = get_ws(c, w["id"])["workspace_details"]["current_workspace_details"]
    assert current == {"files": [{"name": "/a.txt"}], "symlinks": [{"name": "/etc"}]}


# ---- the fd walks, in process ------------------------------------------------------------------
class Listing(list):
    """What os.scandir returns, already read (usable with `with` and as an iterator)."""

    def __enter__(self) -> Listing:
        return self

    def __exit__(self, *exc: object) -> bool:
        return False


def test_scan_does_not_follow_a_directory_swapped_for_a_symlink(tmp_path, monkeypatch) -> None:
    """The race made deterministic: right after the top directory is listed (sub/ seen as a
    directory), sub/ is replaced by a symlink to /etc."""
    top = tmp_path / "ws"
    (top / "sub").mkdir(parents=True)
    (top / "sub" / "mine.txt").write_text("x")
    (top / "kept.txt").write_text("y")
    real_scandir = os.scandir
    swapped: list[bool] = []

    def scandir(arg: object = "."):
        listing = Listing(real_scandir(arg))
        if not swapped:
            swapped.append(True)
            os.rename(top / "sub", tmp_path / "elsewhere")
            os.symlink("/etc", top / "sub")
        return listing

    monkeypatch.setattr(os, "scandir", scandir)
    total, files, links = trees.scan(str(top))
    monkeypatch.undo()
    assert swapped
    assert files == [{"name": "/kept.txt"}]
    assert total == 1


def test_walk_refuses_a_directory_moved_away_mid_walk(tmp_path) -> None:
    """Climbing back with '..' must reach the directory the walk came from; a directory moved
    elsewhere meanwhile stops the walk instead of continuing in its new parent."""
    top = tmp_path / "ws"
    (top / "a" / "b").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    seen: list[list[str]] = []

    def visit(fds, parts, state):
        seen.append(list(parts))
        if parts == ["a", "b"]:
            os.rename(top / "a", tmp_path / "outside" / "a")
        names = [e.name for e in os.scandir(fds[0]) if e.is_dir(follow_symlinks=False)]
        return [(n, None) for n in names]

    with safepath.open_dir(str(top)) as fd, pytest.raises(trees.TreeChanged):
        trees.walk([fd], visit)
    assert seen == [[], ["a"], ["a", "b"]]


def test_open_dir_and_read_file_refuse_links_fifos_and_hard_links(tmp_path) -> None:
    job = tmp_path / "ws" / ".7"
    job.mkdir(parents=True)
    (job / "exit.json").write_text('{"exit_code": 0}')
    assert safepath.read_file(str(job), "exit.json", 1000) == b'{"exit_code": 0}'
    assert safepath.read_file(str(job), "exit.json", 5, tail=True) == b'": 0}'
    assert safepath.read_file(str(job), "exit.json", 5) is None  # too big: not the helper's
    os.symlink(job, tmp_path / "ws" / ".8")
    assert safepath.read_file(str(tmp_path / "ws" / ".8"), "exit.json", 1000) is None
    with pytest.raises(OSError):
        safepath.open_dir_fd(str(tmp_path / "ws" / ".8"))
    os.link(job / "exit.json", job / "linked.json")
    assert safepath.read_file(str(job), "exit.json", 1000) is None
    os.mkfifo(job / "fifo")
    assert safepath.read_file(str(job), "fifo", 1000) is None  # and did not block


def test_chown_tree_does_not_follow_a_directory_swapped_for_a_symlink(tmp_path, monkeypatch) -> None:
    """Right after the first file in d/ is chowned, d/ becomes a symlink to a directory of root's
    files: the rest of d/ must not be reached through it."""
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    import pwd

    nobody = pwd.getpwnam("nobody")
    account = Account("nobody", nobody.pw_uid, nobody.pw_gid, frozenset([nobody.pw_gid]))
    top = tmp_path / "new"
    (top / "d").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("x", "y"):
        (top / "d" / name).write_text(name)
        (outside / name).write_text(name)
    real_chown = os.chown
    swapped: list[bool] = []

    def chown(path, *args, **kw):  # noqa: ANN001, ANN002, ANN003
        real_chown(path, *args, **kw)
        if os.path.basename(os.fspath(path)) in ("x", "y") and not swapped:
            swapped.append(True)
            os.rename(top / "d", tmp_path / "moved")
            os.symlink(outside, top / "d")

    monkeypatch.setattr(os, "chown", chown)
    try:
        trees.chown_tree(str(top), account)
    except OSError:
        pass  # the walk may also notice that d/ has moved: stopping is fine, following is not
    monkeypatch.undo()
    assert swapped
    assert [os.stat(outside / n).st_uid for n in ("x", "y")] == [0, 0]
    assert [os.stat(tmp_path / "moved" / n).st_uid for n in ("x", "y")] == [nobody.pw_uid] * 2


def test_job_files_are_not_read_through_a_swapped_job_dir(tmp_path) -> None:
    """In process (no Slurm cluster needed): Slurm's output file and exit.json of another job,
    reached through this job's directory swapped for a symlink, are not read."""
    from uws.spawners.base import Spawner
    from uws.spawners.slurm import SlurmSpawner

    ws = tmp_path / "ws"
    (ws / ".5").mkdir(parents=True)
    (ws / ".5" / "slurm.out").write_text("SECRET slurm output\n")
    (ws / ".5" / "exit.json").write_text('{"exit_code": 0, "log_tail": "SECRET"}')
    account = Account("nobody", 65534, 65534, frozenset([65534]))
    assert SlurmSpawner(5, account, str(ws), "ipc:///nowhere").log_tail() == "SECRET slurm output\n"
    assert Spawner(5, account, str(ws), "ipc:///nowhere").read_exit()["log_tail"] == "SECRET"
    os.symlink(ws / ".5", ws / ".6")
    assert SlurmSpawner(6, account, str(ws), "ipc:///nowhere").log_tail() == ""
    assert Spawner(6, account, str(ws), "ipc:///nowhere").read_exit() is None
    # nor through a workspace directory swapped for a symlink (the .N below it is real)
    os.symlink(ws, tmp_path / "ws2")
    assert SlurmSpawner(5, account, str(tmp_path / "ws2"), "ipc:///nowhere").log_tail() == ""
