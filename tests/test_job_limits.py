"""Session limits that hold: the per-user session limit under concurrent starts, parameter
defaults (so every session has a time limit), core hours measured by the server rather than
reported by the helper, and no helper left running unsupervised after a server restart."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import os
import time

import psutil
import pytest
import requests
import zmq

from uws.sessions import protocol
from uws.sessions.params import DefaultValueError, with_defaults

from helpers.api import create, get_job, login, start, wait_for, wait_ready, wait_status, ws_dir
from helpers.configs import APP_PYTHON, LOCAL_CONFIG
from helpers.harness import Client, Server, running_server

LIMITS_CONFIG = (
    LOCAL_CONFIG
    + f"""
c.JobService.heartbeat_seconds = 1
c.JobService.reconcile_seconds = 1
c.UWSApp.stop_grace_seconds = 2
c.JobService.max_running_jobs_per_user = 2
c.UWSApp.job_types = {{
    "sleeper": {{"name": "Sleeper", "job_type": "CommandJob", "environment_details": {{"main_resource": {{
        "command": ["sleep", "600"], "readiness_path": ""}}}}}},
    "limited": {{"name": "Limited", "job_type": "CommandJob", "environment_details": {{"main_resource": {{
        "command": ["sleep", "600"], "readiness_path": "", "time_limit": "7"}}}}}},
    "brief": {{"name": "Brief", "job_type": "CommandJob", "environment_details": {{"main_resource": {{
        "command": ["sleep", "600"], "readiness_path": "", "time_limit_seconds": "90"}}}}}},
    "web": {{"name": "Web app", "job_type": "CommandJob", "environment_details": {{"main_resource": {{
        "command": ["{APP_PYTHON}", "-m", "http.server", "{{port}}", "--bind", "127.0.0.1"],
        "readiness_path": "/"}}}}}},
}}
"""
)
DIE_AFTER_SPAWN = "UWS_TEST_DIE_AFTER_SPAWN"


@pytest.fixture(scope="module")
def lserver(backend: str):
    yield from running_server(backend, LIMITS_CONFIG)


@pytest.fixture
def user(lserver: Server) -> Client:
    return login(lserver, lserver.client_token)


def stop_all(c: Client, jobs: list[dict]) -> None:
    for job in jobs:
        c.put(f"/jobs/{job['id']}/stop")
    for job in jobs:
        wait_status(c, job["id"], "complete", "failed")


def job_spec(srv: Server, c: Client, ws_id: int, job_id: int) -> dict:
    """The job.json the helper was given."""
    with open(os.path.join(ws_dir(srv, c, ws_id), f".{job_id}", "job.json")) as f:
        return json.load(f)


def job_secret(srv: Server, job_id: int) -> str:
    ((state,),) = srv.sql(f"SELECT spawner_state FROM jobs WHERE id = {int(job_id)}")
    return (json.loads(state) if isinstance(state, str) else state)["secret"]


def parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def session_processes(srv: Server, job_id: int | None = None) -> list[psutil.Process]:
    """Helpers of this server's sessions (or of one job) and everything they started."""
    found = []
    inside = srv.dir if job_id is None else f"/.{job_id}"
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "uws.session_helper" in cmdline and srv.dir in " ".join(cmdline) and inside in " ".join(cmdline):
            try:
                found += [proc, *proc.children(recursive=True)]
            except psutil.Error:
                pass
    return found


def kill_job_processes(srv: Server, job_id: int) -> None:
    procs = session_processes(srv, job_id)
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=5)


def cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def workspace_processes(srv: Server) -> list[psutil.Process]:
    """Live processes working in this server's workspaces (helpers and apps, orphaned or not)."""
    inside = os.path.join(srv.dir, "workspaces") + "/"
    found = []
    for proc in psutil.process_iter(["cwd"]):
        if (proc.info["cwd"] or "").startswith(inside) and not gone(proc):
            found.append(proc)
    return found


def gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


# ---- the per-user session limit -------------------------------------------------------------
def test_concurrent_starts_respect_the_per_user_limit(lserver: Server, user: Client) -> None:
    """Six starts at once with a limit of two: two sessions, four 429s (each start is counted
    from its check on, not only once its job is recorded)."""
    w = create(user)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        clients = [Client(user.base, user.token) for _ in range(6)]  # one connection each
        answers = list(
            pool.map(lambda c: c.put(f"/workspaces/{w['id']}/start/", {"job_type": "sleeper"}), clients)
        )
    started = [r.json()["data"]["job"] for r in answers if r.status_code == 200]
    try:
        assert sorted(r.status_code for r in answers) == [200, 200, 429, 429, 429, 429]
        for r in answers:
            if r.status_code == 429:
                assert r.json() == {
                    "success": False,
                    "message": "You already have 2 sessions running (maximum 2). Stop one and try again.",
                }
                assert r.headers["Retry-After"]
        jobs = user.get(f"/jobs/?workspace_id={w['id']}").json()["data"]["jobs"]
        assert len(jobs) == 2 and all(j["status"] in ("pending", "running") for j in jobs)
    finally:
        stop_all(user, started)
    # a stopped session frees its place
    stop_all(user, [start(user, w["id"], job_type="sleeper")])


# ---- parameter defaults -----------------------------------------------------------------------
def test_parameter_defaults_are_applied(lserver: Server, user: Client) -> None:
    """No resource options: the parameters' default_values (1 CPU, 1024 MB, 180 minutes) are
    what the session gets, so it has a time limit."""
    w = create(user)
    job = start(user, w["id"], job_type="sleeper")
    try:
        spec = job_spec(lserver, user, w["id"], job["id"])
        assert spec["time_limit_seconds"] == 180 * 60
        assert spec["cpus"] == 1
        assert spec["resource_options"] == {"cpus_per_task": 1, "memory_per_node": 1024, "time_limit": 180}
        running = wait_for(
            lambda: "time_left" in (j := get_job(user, job["id"]))["job_details"]["current_job_details"] and j
        )
        assert 170 * 60 < running["job_details"]["current_job_details"]["time_left"] <= 180 * 60
        # the request is kept as sent
        assert job["job_details"]["request_job_details"] == {}
    finally:
        stop_all(user, [job])


def test_requested_and_job_type_limits_come_before_the_default(lserver: Server, user: Client) -> None:
    w = create(user)
    asked = start(user, w["id"], job_type="sleeper", resource_options={"time_limit_min": 5, "num_cpus": 2})
    try:
        spec = job_spec(lserver, user, w["id"], asked["id"])
        assert (spec["time_limit_seconds"], spec["cpus"]) == (300, 2)
        assert spec["resource_options"] == {"cpus_per_task": 2, "memory_per_node": 1024, "time_limit": 5}
    finally:
        stop_all(user, [asked])
    typed = start(user, w["id"], job_type="limited")
    brief = start(user, w["id"], job_type="brief")
    try:
        spec = job_spec(lserver, user, w["id"], typed["id"])
        assert (spec["time_limit_seconds"], spec["resource_options"]["time_limit"]) == (7 * 60, 7)
        # what a scheduler is asked for is whole minutes: 90 s -> 2
        spec = job_spec(lserver, user, w["id"], brief["id"])
        assert (spec["time_limit_seconds"], spec["resource_options"]["time_limit"]) == (90, 2)
    finally:
        stop_all(user, [typed, brief])


def test_default_time_limit_counts_against_the_core_hour_quota(lserver: Server, user: Client) -> None:
    """A start with no options reserves 1 CPU x the default 180 minutes, not nothing."""
    lserver.cli("quota", "set", user.username, "--core-hours", "1")
    w = create(user)
    r = user.put(f"/workspaces/{w['id']}/start/", {"job_type": "sleeper"})
    assert (r.status_code, r.json()) == (
        400,
        {
            "success": False,
            "message": "Core hour quota exceeded: used 0.00000 core hours, requested 3.00000 core hours, "
            "maximum 1.00000 core hours.",
        },
    )
    assert user.get(f"/jobs/?workspace_id={w['id']}").json()["data"]["jobs"] == []


def test_with_defaults_order_and_bad_defaults() -> None:
    """In-process: a request beats the job type's setting, which beats the default; a default
    that fails its own validation is refused rather than left out."""
    params = [
        {"variable_name": "t", "default_value": 60, "validation": {"type": "int", "min": 1, "max": 90}},
        {"variable_name": "n", "default_value": None, "validation": {"type": "int"}},
        {"variable_name": "r", "validation": {"type": "int", "required": True}},
    ]
    assert with_defaults(params, {}) == {"t": 60}
    assert with_defaults(params, {}, {"t": 120}) == {"t": 120}
    assert with_defaults(params, {"t": 5}, {"t": 120}) == {"t": 5}
    assert with_defaults(params, {}, {"t": None}) == {"t": 60}
    for bad in ("60", 91):
        with pytest.raises(DefaultValueError):
            with_defaults([{**params[0], "default_value": bad}], {})


# ---- core hours ------------------------------------------------------------------------------
def test_core_hours_are_cpus_times_elapsed_whatever_the_helper_says(lserver: Server, user: Client) -> None:
    """The session's owner can sign messages as its helper (the secret is the job's; here read
    from the database): a heartbeat claiming 10^9 CPU seconds must not count."""
    w = create(user)
    job = start(user, w["id"], job_type="sleeper", resource_options={"num_cpus": 2})
    wait_status(user, job["id"], "running")
    time.sleep(1.5)  # some elapsed time to measure
    endpoint = "ipc://" + os.path.join(lserver.dir, "uws-data-channel", "sessions.sock")
    assert os.path.exists(endpoint[len("ipc://") :])
    secret = job_secret(lserver, job["id"])
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, protocol.identity(job["id"]))
    sock.setsockopt(zmq.LINGER, 1000)
    try:
        sock.connect(endpoint)
        now = time.time()
        base = {"job_id": job["id"], "sender": "forged", "started": now, "time": now}
        state = {"phase": "running", "helper_pid": 1, "app_pid": None, "started_at": now, "ready": None}
        metrics = {"cpu_seconds": 1e9, "rss_bytes": 1, "processes": 1}
        sock.send_multipart(
            protocol.encode(
                secret, {**base, "type": "heartbeat", "seq": 1, "state": state, "metrics": metrics}
            )
        )
        ended = {"exit_code": 0, "reason": "completed", "log_tail": "", "ended_at": now}
        exited = {**state, "phase": "exited", "exit": ended}
        sock.send_multipart(protocol.encode(secret, {**base, "type": "exited", "seq": 2, "state": exited}))
        done = wait_status(user, job["id"], "complete")
    finally:
        sock.close()
        ctx.term()
        kill_job_processes(lserver, job["id"])  # the real helper, cut off by the forged one
    elapsed = (parse_time(done["datetime_end"]) - parse_time(done["datetime_start"])).total_seconds()
    assert elapsed >= 1.5
    assert float(done["core_hours"]) == pytest.approx(2 * elapsed / 3600, abs=2e-5)
    quota = user.get("/quota/").json()["data"]["quota"]
    assert quota["core_hours"]["used"] == done["core_hours"]


# ---- helpers the server lost track of ----------------------------------------------------------
def test_server_killed_in_the_launch_window_stops_the_orphan(backend: str) -> None:
    """The server dies right after starting a helper, before recording it (a test-only hook:
    UWS_TEST_DIE_AFTER_SPAWN makes it exit there). The helper starts its app all the same; after
    a restart the job is failed and the helper and app are gone, found by their job directory."""
    srv = Server(backend, LIMITS_CONFIG, env={DIE_AFTER_SPAWN: "1"}).start()
    try:
        ct = srv.new_client_token()
        c = login(srv, ct)
        w = create(c)
        with pytest.raises(requests.ConnectionError):
            c.put(f"/workspaces/{w['id']}/start/", {"job_type": "web"})
        assert srv.proc.wait(30) == 70
        # the orphan runs on: its helper has started the app
        procs = wait_for(
            lambda: (
                [p for p in session_processes(srv) if "http.server" in " ".join(cmdline(p))]
                and session_processes(srv)
            ),
            timeout=30,
        )
        srv.env.pop(DIE_AFTER_SPAWN)
        # On a channel the helper does not know, so that only the server's own search for it
        # (by its job directory) can find it; a helper that reaches the server is told to stop
        # (the next test).
        with open(srv.config_path, "a") as f:
            f.write(f'\nc.UWSApp.session_channel_url = "ipc://{srv.dir}/elsewhere/ch.sock"\n')
        srv.start()
        (job,) = c.get(f"/jobs/?workspace_id={w['id']}").json()["data"]["jobs"]
        job = wait_status(c, job["id"], "failed")
        assert job["job_details"]["current_job_details"]["message"] == (
            "Launch interrupted by a server restart; the session was ended."
        )
        wait_for(lambda: all(gone(p) for p in procs) and not workspace_processes(srv), timeout=30)
        assert get_job(c, job["id"])["status"] == "failed"
    finally:
        srv.close()


def test_helper_of_an_ended_job_is_stopped_when_it_speaks(backend: str) -> None:
    """A job that ended on the server's side while its helper ran on (here: marked failed while
    the server was down): when the helper reconnects, the server tells it to stop."""
    srv = Server(backend, LIMITS_CONFIG).start()
    try:
        ct = srv.new_client_token()
        c = login(srv, ct)
        w = create(c)
        job = start(c, w["id"], job_type="web")
        ready = wait_ready(c, job["id"])
        port = int(ready["job_details"]["current_job_details"]["proxy_details"]["port"])
        procs = session_processes(srv)
        assert procs
        srv.proc.kill()
        srv.proc.wait()
        srv.sql(f"UPDATE jobs SET status = 'failed' WHERE id = {int(job['id'])}")
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
        srv.start()
        wait_for(lambda: all(gone(p) for p in procs) and not workspace_processes(srv), timeout=30)
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/", timeout=2)
        assert get_job(c, job["id"])["status"] == "failed"
    finally:
        srv.close()


def refuse_launch_records(srv: Server) -> None:
    """A database that refuses to record a launch (a trigger: the one failure here that needs
    no mock), so the commit after the helper has started fails."""
    if srv.backend == "sqlite":
        srv.sql(
            "CREATE TRIGGER refuse_launch BEFORE UPDATE OF resource_job_id ON jobs "
            "WHEN OLD.resource_job_id = -1 BEGIN SELECT RAISE(ABORT, 'launch refused by test'); END"
        )
        return
    srv.sql(
        "CREATE FUNCTION refuse_launch() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'launch refused by test'; END $$"
    )
    srv.sql(
        "CREATE TRIGGER refuse_launch BEFORE UPDATE ON jobs FOR EACH ROW "
        "WHEN (OLD.resource_job_id = -1 AND NEW.resource_job_id <> -1) EXECUTE FUNCTION refuse_launch()"
    )


def test_launch_that_cannot_be_recorded_is_stopped(backend: str) -> None:
    srv = Server(backend, LIMITS_CONFIG).start()
    try:
        ct = srv.new_client_token()
        c = login(srv, ct)
        w = create(c)
        refuse_launch_records(srv)
        r = c.put(f"/workspaces/{w['id']}/start/", {"job_type": "sleeper"})
        assert (r.status_code, r.json()) == (
            500,
            {"success": False, "message": "Launch failed: the session could not be recorded."},
        )
        (job,) = c.get(f"/jobs/?workspace_id={w['id']}").json()["data"]["jobs"]
        assert job["status"] == "failed"
        assert job["job_details"]["current_job_details"]["message"] == r.json()["message"]
        assert session_processes(srv) == [] and workspace_processes(srv) == []
    finally:
        srv.close()
