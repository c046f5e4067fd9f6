"""Sessions end to end: launching through PUT /workspaces/<id>/start/, real helper and app
processes, status pushed over the session channel, stopping, failures and limits."""

from __future__ import annotations

import os
import time

import psutil
import pytest
import requests

from helpers.api import create, get_job, get_ws, login, start, wait_for, wait_ready, wait_status, ws_dir
from helpers.configs import SESSION_CONFIG, SUDO_AVAILABLE
from helpers.harness import Client, Server, running_server


@pytest.fixture(scope="module")
def sserver(backend: str):
    yield from running_server(backend, SESSION_CONFIG)


@pytest.fixture
def user(sserver: Server) -> Client:
    return login(sserver, sserver.client_token)


def test_local_test_job_runs_to_completion(sserver: Server, user: Client) -> None:
    w = create(user)
    job = start(user, w["id"], job_type="local_test_job", job_details={}, resource_options={"num_cpus": 1})
    assert job["status"] == "pending" and job["resource_job_id"] > 0
    assert job["core_hours"] == "0.00000"
    assert job["job_details"]["request_job_details"] == {"resource_options": {"num_cpus": 1}}
    ws = get_ws(user, w["id"])
    assert ws["status"] == "active" and ws["datetime_last_job_launch"]
    running = wait_status(user, job["id"], "running")
    assert running["datetime_start"] and running["job_details"]["metrics"]["time_pending"] >= 0
    done = wait_status(user, job["id"], "complete")
    assert done["datetime_end"] and done["core_hours"].count(".") == 1
    assert "Hello World" in done["job_details"]["current_job_details"]["log_tail"]
    wait_for(lambda: get_ws(user, w["id"])["status"] == "idle")
    # the job directory is hidden from the file lists, but counted in disk_space
    ws = get_ws(user, w["id"])
    assert ws["workspace_details"]["current_workspace_details"]["files"] == []
    assert ws["disk_space"] > 0
    assert [j["id"] for j in user.get(f"/jobs/?workspace_id={w['id']}").json()["data"]["jobs"]] == [job["id"]]


def test_web_app_becomes_ready_and_stops(sserver: Server, user: Client) -> None:
    w = create(user)
    job = start(user, w["id"], job_type="web")
    ready = wait_ready(user, job["id"])
    current = ready["job_details"]["current_job_details"]
    assert ready["status"] == "running"
    assert current["message"] == "Webserver ready."
    details = current["connection_details"]
    assert details["url_path"].count("?") == 1 and details["url_path"].startswith("/")
    assert not details["url_domain"].endswith("/")
    assert requests.get(details["url_domain"] + details["url_path"], timeout=5).status_code == 200
    assert "time_init" in ready["job_details"]["metrics"]
    app_port = int(current["proxy_details"]["port"])
    r = user.put(f"/jobs/{job['id']}/stop")
    assert r.json() == {"message": "Job queued to stop.", "success": True}
    stopping = get_job(user, job["id"])
    assert stopping["status"] in ("stopping", "complete")
    done = wait_status(user, job["id"], "complete")
    assert done["job_details"]["current_job_details"]["message"] == "Job stopped."
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{app_port}/", timeout=2)
    r = user.put(f"/jobs/{job['id']}/stop/")
    assert r.status_code == 400 and r.json()["message"] == "This job is not running or pending."


def test_failed_app_reports_exit_and_log(sserver: Server, user: Client) -> None:
    w = create(user)
    job = start(user, w["id"], job_type="crash")
    done = wait_status(user, job["id"], "failed")
    current = done["job_details"]["current_job_details"]
    assert "exit code 3" in current["message"]
    assert "boom" in current["log_tail"]
    assert done["datetime_end"]
    wait_for(lambda: get_ws(user, w["id"])["status"] == "idle")


def test_time_limit_ends_session(sserver: Server, user: Client) -> None:
    w = create(user)
    job = start(user, w["id"], job_type="short")
    done = wait_status(user, job["id"], "complete", timeout=30)
    assert (
        done["job_details"]["current_job_details"]["message"]
        == "The job reached its time limit and was stopped."
    )


@pytest.mark.parametrize(
    "body,status,message",
    [
        ({}, 400, "Missing job_type and no default job type set on workspace."),
        ({"job_type": "nope"}, 400, "nope is not in the list of available job types."),
        ({"job_type": "web", "job_details": None}, 400, "Job details not JSON."),
        ({"job_type": "web", "job_details": []}, 400, "Job details not JSON."),
        ({"job_type": "web", "resource_options": None}, 400, "Resource options not JSON."),
        (
            {"job_type": "web", "resource_options": {"num_cpus": "one"}},
            422,
            "Invalid resource options found: [\"num_cpus: Value 'one' of type str does not match required type int. "
            'Skipping further validation of parameter num_cpus."]',
        ),
        (
            {"job_type": "web", "resource_options": {"memory_mb": 1}},
            422,
            "Invalid resource options found: [\"memory_mb: Value '1' not above minimum of 1024.\"]",
        ),
        (
            {"job_type": "web", "resource_options": {"time_limit_min": 481, "num_cpus": 99}},
            422,
            "Invalid resource options found: [\"time_limit_min: Value '481' above maximum of 480.\", "
            "\"num_cpus: Value '99' above maximum of 4.\"]",
        ),
        (
            {"job_type": "missing"},
            400,
            "Job Type improperly configured. Please contact a system administrator to resolve this.",
        ),
    ],
)
def test_start_validation_creates_no_job(
    sserver: Server, user: Client, body: dict, status: int, message: str
) -> None:
    w = create(user)
    r = user.put(f"/workspaces/{w['id']}/start", body)
    assert (r.status_code, r.json()) == (status, {"success": False, "message": message})
    assert user.get(f"/jobs/?workspace_id={w['id']}").json()["data"]["jobs"] == []


def test_start_checks_and_empty_body(sserver: Server, user: Client, client_token_other=None) -> None:
    w = create(user, default_job_type="local_test_job")
    other = login(sserver, sserver.client_token)
    assert other.put(f"/workspaces/{w['id']}/start", {}).status_code == 404
    r = user.put(f"/workspaces/{w['id']}/start", raw="")
    assert r.json()["message"] == "Invalid JSON: Expecting value: line 1 column 1 (char 0)"
    # the default job type is used; unknown options are dropped silently
    job = start(user, w["id"], resource_options={"time_limit_minutes": 60, "gpu_enabled": True})
    assert job["job_type"] == "local_test_job"
    assert job["job_details"]["request_job_details"]["resource_options"] == {
        "time_limit_minutes": 60,
        "gpu_enabled": True,
    }
    r = user.delete(f"/workspaces/{w['id']}")
    assert (
        r.status_code == 400
        and r.json()["message"] == "Cannot delete workspace, jobs are running for this workspace."
    )
    assert other.put(f"/jobs/{job['id']}/stop").json()["message"] == f"Job {job['id']} not found for user."
    assert user.put(f"/jobs/{job['id']}/restart").json()["message"] == "Invalid PUT type passed."
    assert user.put(f"/jobs/{job['id']}/").status_code == 405
    assert user.get(f"/jobs/{job['id']}/stop").status_code == 405
    wait_status(user, job["id"], "complete")


def test_per_user_running_limit(sserver: Server, user: Client) -> None:
    w = create(user)
    jobs = [start(user, w["id"], job_type="web") for _ in range(3)]
    r = user.put(f"/workspaces/{w['id']}/start", {"job_type": "web"})
    assert r.status_code == 429
    assert r.headers["Retry-After"]
    assert "maximum 3" in r.json()["message"]
    for job in jobs:
        user.put(f"/jobs/{job['id']}/stop")
    for job in jobs:
        wait_status(user, job["id"], "complete")


def test_core_hour_quota_is_checked_at_start(sserver: Server, user: Client) -> None:
    sserver.cli("quota", "set", user.username, "--core-hours", "1")
    w = create(user)
    r = user.put(
        f"/workspaces/{w['id']}/start",
        {"job_type": "web", "resource_options": {"num_cpus": 2, "time_limit_min": 60}},
    )
    assert r.status_code == 400
    assert r.json()["message"] == (
        "Core hour quota exceeded: used 0.00000 core hours, requested 2.00000 core hours, "
        "maximum 1.00000 core hours."
    )


def test_idempotent_retry_launches_once(sserver: Server, user: Client) -> None:
    import concurrent.futures

    w = create(user)
    key = {"Idempotency-Key": f"retry-{time.time()}"}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(
                lambda _: user.put(
                    f"/workspaces/{w['id']}/start", {"job_type": "local_test_job"}, headers=key
                ),
                range(2),
            )
        )
    ids = {r.json()["data"]["job"]["id"] for r in results}
    assert len(ids) == 1
    assert len(user.get(f"/jobs/?workspace_id={w['id']}").json()["data"]["jobs"]) == 1
    wait_status(user, ids.pop(), "complete")


@pytest.mark.skipif(
    not SUDO_AVAILABLE, reason="needs root, sudo, and python3-zmq/python3-psutil for the system Python"
)
def test_session_runs_as_workspace_owner(sserver: Server, user: Client) -> None:
    import pwd

    w = create(user)
    job = start(user, w["id"], job_type="web")
    ready = wait_ready(user, job["id"])
    port = int(ready["job_details"]["current_job_details"]["proxy_details"]["port"])
    uid = pwd.getpwnam(user.username).pw_uid
    app = next(
        c for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port and c.status == "LISTEN"
    )
    assert psutil.Process(app.pid).uids().real == uid
    helper = psutil.Process(app.pid).parent()
    assert helper.uids().real == uid
    job_dir = os.path.join(ws_dir(sserver, user, w["id"]), f".{job['id']}")
    for name in os.listdir(job_dir):
        assert os.lstat(os.path.join(job_dir, name)).st_uid == uid, name
    user.put(f"/jobs/{job['id']}/stop")
    wait_status(user, job["id"], "complete")
    assert not psutil.pid_exists(app.pid) or psutil.Process(app.pid).status() == psutil.STATUS_ZOMBIE


def test_sessions_survive_server_kill(backend: str) -> None:
    """kill -9 the server with sessions running; after a restart they are re-attached."""
    srv = Server(backend, SESSION_CONFIG).start()
    try:
        ct = srv.new_client_token()
        c = login(srv, ct)
        w = create(c)
        jobs = [start(c, w["id"], job_type="web") for _ in range(2)]
        ports = []
        for job in jobs:
            ready = wait_ready(c, job["id"])
            ports.append(int(ready["job_details"]["current_job_details"]["proxy_details"]["port"]))
        srv.proc.kill()
        srv.proc.wait()
        for port in ports:  # the sessions keep serving while the server is gone
            assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
        srv.start()
        for job in jobs:
            assert get_job(c, job["id"])["status"] == "running"
        # re-attached: a stop goes through the channel to the helper and completes
        for job in jobs:
            assert c.put(f"/jobs/{job['id']}/stop").status_code == 200
        for job in jobs:
            assert (
                wait_status(c, job["id"], "complete")["job_details"]["current_job_details"]["message"]
                == "Job stopped."
            )
        for port in ports:
            with pytest.raises(requests.ConnectionError):
                requests.get(f"http://127.0.0.1:{port}/", timeout=2)
        wait_for(lambda: get_ws(c, w["id"])["status"] == "idle")
    finally:
        srv.close()


def test_session_that_vanished_while_server_was_down_is_failed(backend: str) -> None:
    srv = Server(backend, SESSION_CONFIG).start()
    try:
        ct = srv.new_client_token()
        c = login(srv, ct)
        w = create(c)
        job = start(c, w["id"], job_type="web")
        wait_status(c, job["id"], "running")
        srv.proc.kill()
        srv.proc.wait()
        helper = psutil.Process(job["resource_job_id"])
        tree = [helper, *helper.children(recursive=True)]
        for p in tree:
            p.kill()  # the helper dies without a word: no exit.json
        psutil.wait_procs(tree, timeout=5)
        srv.start()
        done = wait_status(c, job["id"], "failed", timeout=30)
        assert (
            done["job_details"]["current_job_details"]["message"]
            == "Job process disappeared; exit status unknown."
        )
    finally:
        srv.close()


def test_disk_quota_holds_right_after_a_start(sserver: Server, user: Client) -> None:
    """Starting a session (which checks core hours) must not make a disk maximum look absent."""
    sserver.cli("quota", "set", user.username, "--disk-bytes", "100")
    w = create(user)
    start(user, w["id"], job_type="local_test_job")
    r = user.post(
        "/workspaces/",
        {
            "name": "big",
            "description": "",
            "workspace_details": {"files": [{"name": "a.txt", "content": "x" * 150}]},
        },
    )
    assert r.status_code == 400
    assert r.json()["message"].startswith("Disk quota exceeded:")
