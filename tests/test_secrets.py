"""Secrets stay secret: no session token on a command line, in job.json, in the database or in a
log line; the database, its -wal/-shm files and the server's keys are 0600 and the data
directory private, whatever the umask."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator

import psutil
import pytest
import requests

from helpers.api import create, login, start, unique_name, wait_for, wait_ready, ws_dir
from helpers.configs import APP_PYTHON, LOCAL_CONFIG
from helpers.harness import IS_ROOT, Client, Server, running_server, uws_command

# Sessions as the server's own user, so JupyterLab comes from this checkout's virtualenv.
SECRETS_CONFIG = (
    LOCAL_CONFIG
    + f"""
c.UWSApp.spawner_class = "local"
c.JobService.heartbeat_seconds = 1
c.UWSApp.job_types = {{
    "web": {{"name": "Web app", "job_type": "CommandJob", "environment_details": {{"main_resource": {{
        "command": ["{APP_PYTHON}", "-m", "http.server", "{{port}}", "--bind", "127.0.0.1"],
        "readiness_path": "/"}}}}}},
    "jupyter_lab": {{"name": "Jupyter Lab", "job_type": "JupyterLabJob",
                    "environment_details": {{"main_resource": {{"use_local_environment": True}}}}}},
}}
"""
)


@pytest.fixture(scope="module")
def sserver(backend: str) -> Iterator[Server]:
    yield from running_server(backend, SECRETS_CONFIG)


@pytest.fixture
def owner(sserver: Server) -> Client:
    return login(sserver, sserver.client_token)


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def environments_with(name: str, value: str) -> list[int]:
    found = []
    for proc in psutil.process_iter(["environ"]):
        if (proc.info["environ"] or {}).get(name) == value:
            found.append(proc.pid)
    return found


@pytest.mark.parametrize("job_type", ["web", "jupyter_lab"])
def test_session_token_stays_out_of_command_lines_files_and_the_database(
    sserver: Server, owner: Client, job_type: str
) -> None:
    if job_type == "jupyter_lab":
        pytest.importorskip("jupyterlab", reason="JupyterLab is installed with the test extras")
    w = create(owner)
    job = start(owner, w["id"], job_type=job_type)
    ready = wait_ready(owner, job["id"], 120)
    link = ready["job_details"]["current_job_details"]["connection_details"]
    assert link["url_path"].count("?") == 1
    token = link["url_path"].split("token=", 1)[1]
    assert len(token) >= 32
    # /proc/<pid>/cmdline is world-readable: no process may carry the token there.
    for proc in psutil.process_iter(["cmdline"]):
        assert token not in " ".join(proc.info["cmdline"] or []), proc.info
    # The app has it in its environment (readable by its own account only).
    assert environments_with("UWS_SESSION_TOKEN", token)
    if job_type == "jupyter_lab":
        assert environments_with("JUPYTER_TOKEN", token)
    # The job directory (job.json, the helper's and the app's logs) may be read by other
    # accounts: no token there.
    job_dir = os.path.join(ws_dir(sserver, owner, w["id"]), f".{job['id']}")
    assert "job.json" in os.listdir(job_dir)
    for name in os.listdir(job_dir):
        with open(os.path.join(job_dir, name), "rb") as f:
            assert token.encode() not in f.read(), name
    assert_not_in_database(sserver, job["id"], token)
    # The owner's link opens the session; the token goes in exchange for a cookie.
    r = requests.get(link["url_domain"] + link["url_path"], timeout=30)
    assert r.status_code == 200
    owner.put(f"/jobs/{job['id']}/stop")


def assert_not_in_database(server: Server, job_id: int, token: str) -> None:
    """The database holds no usable link token: not in clear, nor the link with it."""
    rows = server.sql(f"SELECT * FROM jobs WHERE id = {int(job_id)}")
    assert rows and token not in repr(rows)
    if server.backend == "sqlite":
        path = server.db_url[len("sqlite:///") :]
        for name in (path, path + "-wal"):
            if os.path.exists(name):
                with open(name, "rb") as f:
                    assert token.encode() not in f.read()


def test_database_holds_no_link_token(sserver: Server, owner: Client) -> None:
    w = create(owner)
    job = start(owner, w["id"], job_type="web")
    ready = wait_ready(owner, job["id"])
    token = ready["job_details"]["current_job_details"]["connection_details"]["url_path"].split("token=")[1]
    assert_not_in_database(sserver, job["id"], token)
    owner.put(f"/jobs/{job['id']}/stop")


def test_link_token_is_redacted_from_log_lines(sserver: Server, owner: Client) -> None:
    secret = "zz" + os.urandom(12).hex()
    r = requests.get(f"{sserver.base}/passthrough/987654/x?a=1&token={secret}", timeout=10)
    assert r.status_code == 403
    assert wait_for(lambda: "/passthrough/987654/x?a=1&token=[redacted]" in sserver.log(), 10)
    assert secret not in sserver.log()


def test_redact_unit() -> None:
    from uws.access_log import redact

    assert redact("/p/1/x?token=abc&b=2") == "/p/1/x?token=[redacted]&b=2"
    assert redact("/ws/jobs?ticket=t1") == "/ws/jobs?ticket=[redacted]"
    assert redact("/p/1/x?mytoken=abc") == "/p/1/x?mytoken=abc"


def test_link_with_token_unit() -> None:
    from uws.models import link_with_token

    assert link_with_token("/passthrough/1/lab", "t") == "/passthrough/1/lab?token=t"
    assert link_with_token("/passthrough/1/?x=1&token=old", "t") == "/passthrough/1/?x=1&token=t"
    assert link_with_token("/passthrough/1/?token={token}", "") == "/passthrough/1/"
    assert link_with_token("/passthrough/1/?a=1?b=2", "t").count("?") == 1


def private_files(directory: str, db_path: str) -> list[str]:
    files = [db_path, db_path + "-wal", db_path + "-shm"]
    files += [os.path.join(directory, "uws-data", n) for n in ("cookie_secret", "session_key")]
    return [f for f in files if os.path.exists(f)]


def test_files_are_private_whatever_the_umask() -> None:
    old = os.umask(0o022)
    try:
        srv = Server("sqlite", LOCAL_CONFIG + 'c.UWSApp.spawner_class = "local"\n').start()
    finally:
        os.umask(old)
    try:
        data_dir = os.path.join(srv.dir, "uws-data")
        db_path = srv.db_url[len("sqlite:///") :]
        token = srv.new_client_token()
        login(srv, token)
        files = private_files(srv.dir, db_path)
        assert {db_path, db_path + "-wal"} <= set(files) and len(files) >= 4, files
        assert {f: mode(f) for f in files} == {f: 0o600 for f in files}
        assert mode(data_dir) == 0o700
        # Files an earlier version left readable are tightened at start.
        srv.stop()
        for f in private_files(srv.dir, db_path):
            os.chmod(f, 0o644)
        os.chmod(data_dir, 0o755)
        srv.start()
        login(srv, token)
        files = private_files(srv.dir, db_path)
        assert {f: mode(f) for f in files} == {f: 0o600 for f in files}
        assert mode(data_dir) == 0o700
    finally:
        srv.close()


def test_data_dir_is_never_listable() -> None:
    """With sessions as other accounts that must reach the session socket inside it, the data
    directory can be entered but still not listed."""
    srv = Server("sqlite", LOCAL_CONFIG).start()
    try:
        assert mode(os.path.join(srv.dir, "uws-data")) & 0o066 == 0
    finally:
        srv.close()


def test_check_config_warns_about_token_on_a_command_line(tmp_path: str) -> None:
    config = os.path.join(tmp_path, "uws_config.py")
    with open(config, "w") as f:
        f.write(
            "c.UWSApp.authenticator_class = 'local'\n"
            "c.UWSApp.job_types = {'x': {'name': 'X', 'job_type': 'CommandJob', 'environment_details': "
            "{'main_resource': {'command': ['app', '--token={token}']}}}}\n"
        )
    out = subprocess.run(
        [*uws_command(), "check-config", config, "--file-only"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert (
        "warning: available_job_types.x.environment_details.main_resource.command puts {token}" in out.stdout
    )


@pytest.mark.skipif(not IS_ROOT, reason="needs root (an OS account of its own for the user)")
def test_local_spawner_needs_no_session_group_membership(sserver: Server) -> None:
    """With the local spawner the helper runs as the server's own account, which reaches the
    channel whatever the session's account is: an account outside session_group (made before
    the server, say) starts sessions all the same."""
    name = unique_name("ng")
    subprocess.run(["useradd", "--create-home", "--", name], check=True, capture_output=True)
    c = login(sserver, sserver.client_token, username=name)
    w = create(c)
    job = start(c, w["id"], job_type="web")
    wait_ready(c, job["id"], 60)
    c.put(f"/jobs/{job['id']}/stop")
