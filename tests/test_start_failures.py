"""Start failures that say why: a session helper that cannot start fails its job within seconds
with the cause; a Python the session's account cannot run is refused with the fix; `uws
check-config` and the server's start-up find such deployments before any session does."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from uws.spawners.access import PYTHON_FIX

from helpers.api import create, login, start, wait_for, wait_status
from helpers.configs import LOCAL_CONFIG, SESSION_GROUP, SUDO_AVAILABLE, shared_dir
from helpers.harness import Client, Server, running_server, uws_command

# A "Python" that fails as an interpreter does when it cannot start: a line on standard error
# and an exit code. It echoes what it read on standard input (the job secret and the session
# token), which must never reach the job.
FAILING_PYTHON = """#!/bin/sh
read -r secret
read -r token
echo "failing-python: cannot load libuws-test.so ($secret $token)" >&2
exit 3
"""
SECRETS_REMOVED = "failing-python: cannot load libuws-test.so ([hidden] [hidden])"


@pytest.fixture(scope="module")
def places() -> Iterator[dict[str, str]]:
    """An open directory holding the failing Python, and a closed one (0700, as a home
    directory) holding a link to the system's Python."""
    top = tempfile.mkdtemp(prefix="uws-startfail-")
    os.chmod(top, 0o755)
    failing = os.path.join(top, "failing-python")
    with open(failing, "w") as f:
        f.write(FAILING_PYTHON)
    os.chmod(failing, 0o755)
    closed = os.path.join(top, "home")
    os.mkdir(closed, 0o700)
    os.symlink("/usr/bin/python3", os.path.join(closed, "python3"))
    yield {"top": top, "failing": failing, "closed": closed, "closed_python": os.path.join(closed, "python3")}
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def failing_server(backend: str, places: dict[str, str]) -> Iterator[Server]:
    yield from running_server(backend, LOCAL_CONFIG + f'c.Spawner.python = "{places["failing"]}"\n')


def test_a_helper_that_cannot_start_fails_its_job_with_its_cause(failing_server: Server) -> None:
    c = login(failing_server, failing_server.client_token)
    job = start(c, create(c)["id"], job_type="local_test_job")
    # Before, the job stayed pending until the reconciler found its helper silent (15 s and
    # more here), and then said only "Job process disappeared; exit status unknown."
    failed = wait_status(c, job["id"], "failed", timeout=10)
    current = failed["job_details"]["current_job_details"]
    assert current["message"] == f"The session helper could not start: {SECRETS_REMOVED}. (exit code 3)"
    assert current["log_tail"] == SECRETS_REMOVED
    # The user's next start works as before (the watch left nothing behind that refuses it).
    again = start(c, create(c)["id"], job_type="local_test_job")
    assert wait_status(c, again["id"], "failed", timeout=10)


@pytest.fixture(scope="module")
def closed_python_server(backend: str, places: dict[str, str]) -> Iterator[Server]:
    """The deployment of a server whose Python lives in a home directory other accounts cannot
    enter."""
    yield from running_server(backend, LOCAL_CONFIG + f'c.Spawner.python = "{places["closed_python"]}"\n')


@pytest.mark.skipif(not SUDO_AVAILABLE, reason="sessions run as other OS accounts only as root, through sudo")
def test_a_python_the_sessions_account_cannot_run_is_refused_with_the_fix(
    closed_python_server: Server, places: dict[str, str]
) -> None:
    """One message saying what to set, at the start and in the start-up log."""
    srv, python = closed_python_server, places["closed_python"]
    c = login(srv, srv.client_token)
    r = c.put(f"/workspaces/{create(c)['id']}/start/", {"job_type": "local_test_job"})
    expected = (
        f"The OS account {c.username} cannot run the session helper's Python {python}"
        f" ({places['closed']} is closed to it). {PYTHON_FIX}"
    )
    assert r.status_code == 500 and r.json()["message"] == f"Launch failed: {expected}", r.text
    (job,) = c.get("/jobs/").json()["data"]["jobs"]
    assert job["status"] == "failed"
    assert job["job_details"]["current_job_details"]["message"] == f"Launch failed: {expected}"
    # The server said so as it started (the check runs in the background).
    wait_for(lambda: any("deployment: " in line and python in line for line in whole_log(srv)), 30)


def whole_log(srv: Server) -> list[str]:
    with open(srv.log_path, errors="replace") as f:
        return f.read().splitlines()


def check_config(path: str, *args: str, cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*uws_command(), "check-config", path, *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_check_config_lists_the_deployments_problems(places: dict[str, str]) -> None:
    """No session account known yet: the permission bits are read for an account in the
    sessions' group, and the interpreter, root_dir and the channel are all out of its reach."""
    closed, top = places["closed"], places["top"]
    path = os.path.join(top, "broken_config.py")
    with open(path, "w") as f:
        f.write(
            'c.UWSApp.authenticator_class = "local"\n'
            'c.UWSApp.spawner_class = "sudo"\n'
            f'c.Spawner.python = "{places["closed_python"]}"\n'
            f'c.LocalFileSystemStorage.root_dir = "{closed}/workspaces"\n'
            f'c.UWSApp.session_channel_url = "ipc://{closed}/channel/sessions.sock"\n'
        )
    r = check_config(path, cwd=top)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"{path}: valid" in r.stdout
    assert "note: No session account was found to try the session helper with" in r.stdout
    problems = [line for line in r.stderr.splitlines() if line.startswith("deployment problem: ")]
    assert len(problems) == 3, r.stderr
    assert (
        f"cannot run the session helper's Python {places['closed_python']} ({closed} is closed to it)"
        in problems[0]
    )
    assert f"cannot enter root_dir {closed}/workspaces ({closed} is closed to it)" in problems[1]
    assert f"cannot reach the session channel in {closed}/channel ({closed} is closed to it)" in problems[2]
    # The file alone is valid.
    r = check_config(path, "--file-only", cwd=top)
    assert r.returncode == 0 and "deployment problem" not in r.stderr, (r.stdout, r.stderr)


def test_check_config_passes_for_the_test_deployment(server: Server, alice: Client) -> None:
    """The tests' own deployment, with a session account (alice's) to try the helper as."""
    create(alice)
    r = server.cli("check-config", server.config_path, check=False)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "deployment problem" not in r.stderr and "note:" not in r.stdout
    # The helper was started, as a session account (the server's own when it is not root).
    who = "the OS account " if SUDO_AVAILABLE else "the server's account"
    assert r.stdout.splitlines()[-1].startswith(
        f"deployment: no problems found; the session helper starts as {who}"
    )


@pytest.mark.skipif(not SUDO_AVAILABLE, reason="sessions run as other OS accounts only as root, through sudo")
def test_check_config_starts_the_helper_as_a_session_account(
    server: Server, alice: Client, places: dict[str, str]
) -> None:
    """With an account to try, the helper's interpreter is started as it, through sudo."""
    top, python = places["top"], places["closed_python"]
    path = os.path.join(top, "sudo_config.py")
    with open(path, "w") as f:
        f.write(
            'c.UWSApp.authenticator_class = "local"\n'
            'c.UWSApp.spawner_class = "sudo"\n'
            f'c.UWSApp.session_group = "{SESSION_GROUP}"\n'
            f'c.Spawner.python = "{python}"\n'
            f'c.Spawner.helper_pythonpath = "{shared_dir()}"\n'
            f'c.LocalFileSystemStorage.root_dir = "{top}/workspaces"\n'
        )
    r = check_config(path, "--account", alice.username, cwd=top)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert (
        f"deployment problem: As the OS account {alice.username}: The session helper could not start:"
        f" env: ‘{python}’: Permission denied. {PYTHON_FIX} (exit code 126)"
    ) in r.stderr.splitlines()
    with open(path, "a") as f:
        f.write('c.Spawner.python = "/usr/bin/python3"\n')
    r = check_config(path, "--account", alice.username, cwd=top)
    assert r.returncode == 0, (r.stdout, r.stderr)
