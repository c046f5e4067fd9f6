"""Sessions on a real Slurm cluster (scripts/slurm-start, which .ci/run runs), through both
SlurmSpawner (sbatch/squeue/scancel) and SlurmRestSpawner (slurmrestd with JWT). Most tests use
node 1, this machine (partition debug); the node tests use node 2 too, whose slurmd runs in a
network namespace of its own (partition node2), so its sessions are reached at another address.

Skipped, with the reason, where no cluster answers (a developer machine without Slurm)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import requests

from helpers.api import create, get_job, get_ws, login, start, wait_for, wait_status
from helpers.configs import APP_PYTHON, session_python_config, shared_python
from helpers.harness import Client, Server, free_port, running_server
from helpers.jupyter import run_code
from helpers.slurm import (
    APP,
    NODES,
    SPAWNERS,
    cancel_all,
    needs_cluster,
    needs_two_nodes,
    scontrol_job,
    slurm_config,
    squeue_state,
    wait_ready,
)

pytestmark = needs_cluster


@pytest.fixture(scope="module", params=SPAWNERS)
def slurm_server(backend: str, request: pytest.FixtureRequest):
    yield from running_server(backend, slurm_config(request.param))


@pytest.fixture
def user(slurm_server: Server):
    """A fresh user, whose jobs are cancelled afterwards."""
    client = login(slurm_server, slurm_server.client_token)
    yield client
    cancel_all(client.username)


def main_resource_health(server: Server) -> dict:
    return server.client().get("/status/").json()["dependencies"]["main_resource"]


def test_launch_ready_and_stop(slurm_server: Server, user: Client) -> None:
    """Resource options reach Slurm, the app answers, and core hours are what Slurm allocated
    (2 CPUs × the time the job ran), not the idle app's CPU time."""
    w = create(user)
    began = time.time()
    job = start(user, w["id"], job_type="echo", resource_options={"num_cpus": 2, "memory_mb": 1024})
    slurm_id = job["resource_job_id"]
    assert slurm_id > 0
    ready = wait_ready(user, job["id"])
    details = ready["job_details"]["current_job_details"]["connection_details"]
    assert requests.get(details["url_domain"] + details["url_path"], timeout=10).text == "hello"
    assert squeue_state(slurm_id) == "RUNNING"
    assert main_resource_health(slurm_server) == {"connected": True, "message": "Connected successfully."}
    fields = scontrol_job(slurm_id)
    assert fields["UserId"].startswith(user.username + "(")  # runs as the workspace owner
    assert fields["NumCPUs"] == "2" and fields["MinMemoryNode"] == "1G"
    time.sleep(2)
    assert user.put(f"/jobs/{job['id']}/stop").status_code == 200
    done = wait_status(user, job["id"], "complete", timeout=60)
    took = time.time() - began
    assert done["job_details"]["current_job_details"]["message"] == "Job stopped."
    # It ran 2 s and more; Slurm counts whole seconds, so allow 1 s either way.
    assert 2 * (2 - 1) / 3600 <= float(done["core_hours"]) <= 2 * (took + 1) / 3600
    wait_for(lambda: squeue_state(slurm_id) in ("CANCELLED", "COMPLETED", ""), 30)


def w_dir(server: Server, user: Client, ws_id: int) -> str:
    return os.path.join(server.dir, "workspaces", user.username, str(ws_id))


def test_scheduler_refusal_reaches_the_user(slurm_server: Server, user: Client) -> None:
    """A GPU on a cluster without GPUs: Slurm refuses the job; the user reads why, and the job
    is recorded as failed (B5), not left pending."""
    w = create(user)
    r = user.put(
        f"/workspaces/{w['id']}/start/", {"job_type": "echo", "resource_options": {"gpu_enabled": True}}
    )
    assert r.status_code == 500
    said = r.json()["message"]
    # sbatch says "Invalid generic resource (gres) specification"; slurmrestd 22.05 answers only
    # "Failure during parsing" (the reason goes to its log).
    assert said.startswith("Launch failed: ")
    assert "(gres)" in said or "slurmrestd: Failure during parsing" in said
    (job,) = user.get(f"/jobs/?workspace_id={w['id']}").json()["data"]["jobs"]
    assert job["status"] == "failed" and job["job_details"]["current_job_details"]["message"] == said
    assert get_ws(user, w["id"])["status"] == "idle"


def test_failure_is_reported_with_log(slurm_server: Server, user: Client) -> None:
    w = create(user)
    job = start(user, w["id"], job_type="crash")
    done = wait_status(user, job["id"], "failed", timeout=60)
    current = done["job_details"]["current_job_details"]
    assert "exit code 4" in current["message"]
    assert "slurm-boom" in current["log_tail"]


def test_scancel_from_outside(slurm_server: Server, user: Client) -> None:
    w = create(user)
    job = start(user, w["id"], job_type="echo")
    wait_ready(user, job["id"])
    subprocess.run(["scancel", str(job["resource_job_id"])], check=True, timeout=10)
    done = wait_status(user, job["id"], "complete", "failed", timeout=60)
    assert done["status"] == "complete"
    assert "cancelled in Slurm" in done["job_details"]["current_job_details"]["message"]
    wait_for(lambda: get_ws(user, w["id"])["status"] == "idle", 20)


@pytest.mark.parametrize("spawner", SPAWNERS)
def test_server_restart_reattaches(backend: str, spawner: str) -> None:
    """kill -9 of the server while sessions run and others wait in the queue: the restarted
    server re-attaches to all of them, running and pending alike (each job's status is read
    from Slurm's answer about it, never from an answer about other jobs)."""
    cpus = int(subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True).stdout.split()[0])
    srv = Server(backend, slurm_config(spawner)).start()
    c = None
    try:
        ct = srv.new_client_token()
        c = login(srv, ct)
        w = create(c)
        running = [start(c, w["id"], job_type="echo") for _ in range(cpus)]
        for job in running:
            wait_ready(c, job["id"])
        queued = [start(c, w["id"], job_type="echo") for _ in range(2)]
        srv.proc.kill()
        srv.proc.wait()
        srv.start()
        time.sleep(3)  # several status queries
        assert [get_job(c, j["id"])["status"] for j in running + queued] == ["running"] * cpus + [
            "pending"
        ] * 2
        for job in running + queued:
            assert c.put(f"/jobs/{job['id']}/stop").status_code == 200
        for job in running + queued:
            wait_status(c, job["id"], "complete", timeout=60)
    finally:
        if c is not None:
            cancel_all(c.username)
        srv.close()


def test_pending_reason_reaches_the_user(slurm_server: Server, user: Client) -> None:
    """Two 1-CPU sessions fill the 2-CPU node; a third waits, and says why."""
    cpus = int(subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True).stdout.split()[0])
    w = create(user)
    fillers = [start(user, w["id"], job_type="echo") for _ in range(cpus)]
    for job in fillers:
        wait_ready(user, job["id"])
    waiting = start(user, w["id"], job_type="echo")
    # Right after submission Slurm's reason is "None"; once the scheduler has looked, it says why.
    pending = wait_for(
        lambda: (
            "Slurm queue (Resources)"
            in (j := get_job(user, waiting["id"]))["job_details"]["current_job_details"]["message"]
            and j
        ),
        30,
    )
    assert pending["status"] == "pending"
    user.put(f"/jobs/{fillers[0]['id']}/stop")
    wait_ready(user, waiting["id"])
    for job in [*fillers[1:], waiting]:
        user.put(f"/jobs/{job['id']}/stop")
    for job in [*fillers, waiting]:
        wait_status(user, job["id"], "complete", timeout=60)


def helper_pid(job_id: int) -> int:
    out = subprocess.run(
        ["pgrep", "-f", rf"uws\.session_helper --job-dir \S*/\.{job_id} "], capture_output=True, text=True
    ).stdout.split()
    assert len(out) == 1, out
    return int(out[0])


def message(c: Client, job_id: int) -> str:
    return get_job(c, job_id)["job_details"]["current_job_details"]["message"]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_scheduler_restart_while_sessions_run(slurm_server: Server, user: Client) -> None:
    """(SQLite only: a minute per run, and the database plays no part.) With slurmctld down, a session whose helper still reports keeps running and says the
    scheduler is not answering; one whose helper is gone too is given up after
    lost_contact_seconds (4 s here). Once slurmctld is back, the first carries on."""
    w = create(user)
    job = start(user, w["id"], job_type="echo")
    lost = start(user, w["id"], job_type="echo")
    ready = wait_ready(user, job["id"])
    wait_ready(user, lost["id"])
    details = ready["job_details"]["current_job_details"]["connection_details"]
    pid = int(open("/run/slurmctld.pid").read())
    os.kill(pid, 15)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 20)
    try:
        os.kill(helper_pid(lost["id"]), 9)
        wait_for(lambda: main_resource_health(slurm_server)["connected"] is False, 10)  # cached 5 s
        wait_for(lambda: "not answering" in message(user, job["id"]), 15)
        done = wait_status(user, lost["id"], "failed", timeout=30)
        assert (
            done["job_details"]["current_job_details"]["message"]
            == "Lost contact with the job on the resource."
        )
        assert get_job(user, job["id"])["status"] == "running"
        assert requests.get(details["url_domain"] + details["url_path"], timeout=10).text == "hello"
    finally:
        subprocess.run(["slurmctld"], check=True, timeout=30)  # state is kept in StateSaveLocation
        wait_for(
            lambda: "UP" in subprocess.run(["scontrol", "ping"], capture_output=True, text=True).stdout, 30
        )
    wait_for(lambda: message(user, job["id"]) == "The resource is answering again.", 30)
    assert user.put(f"/jobs/{job['id']}/stop").status_code == 200
    wait_status(user, job["id"], "complete", timeout=60)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_time_limit_from_slurm(backend: str) -> None:
    """Slurm owns the time limit: time_left is Slurm's (it follows `scontrol update`), and a job
    that reaches it ends TIMEOUT, shown as a normal end with a message that says so. Both
    spawners run at once, as a minute must pass either way; the database plays no part here,
    so SQLite only."""
    servers = [Server(backend, slurm_config(spawner)).start() for spawner in SPAWNERS]
    jobs = []
    try:
        for srv in servers:
            c = login(srv, srv.new_client_token())
            job = start(c, create(c)["id"], job_type="echo", resource_options={"time_limit_min": 5})
            jobs.append((c, job))
        for c, job in jobs:
            current = wait_ready(c, job["id"])["job_details"]["current_job_details"]
            assert 240 <= current["time_left"] <= 300
            subprocess.run(
                ["scontrol", "update", f"JobId={job['resource_job_id']}", "TimeLimit=1"],
                check=True,
                timeout=10,
            )
        for c, job in jobs:
            current = wait_for(
                lambda c=c, job=job: (
                    (d := get_job(c, job["id"])["job_details"]["current_job_details"]).get("time_left", 999)
                    <= 60
                    and d
                ),
                15,
            )
            assert current["time_left"] >= 0
        for c, job in jobs:  # Slurm checks time limits every 30 s: 60-90 s after the start
            done = wait_status(c, job["id"], "complete", "failed", timeout=120)
            assert done["status"] == "complete"
            assert "reached its Slurm time limit" in done["job_details"]["current_job_details"]["message"]
            assert squeue_state(job["resource_job_id"]) == "TIMEOUT"
    finally:
        for c, _ in jobs:
            cancel_all(c.username)
        for srv in servers:
            srv.close()


@pytest.fixture
def newer_slurmrestd():
    """slurmrestd's v0.0.40 layout, translated in front of the real v0.0.38 daemon (see
    tests/slurmrest_translator.py: the one stand-in here, as Slurm 22.05 cannot serve it)."""
    port = free_port()
    here = os.path.dirname(__file__)
    proc = subprocess.Popen(
        [sys.executable, os.path.join(here, "slurmrest_translator.py"), str(port), "http://127.0.0.1:6820"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_rest_newer_layout_and_one_query_per_interval(backend: str, newer_slurmrestd: str) -> None:
    """SlurmRestSpawner speaking v0.0.40: the submit body in the newer layout (the translator
    refuses the old one), and numbers and states read from the newer answers. Three sessions
    cost one GET /jobs per poll interval between them."""
    extra = f'c.SlurmRestSpawner.url = "{newer_slurmrestd}"\nc.SlurmRestSpawner.api_version = "v0.0.40"'
    srv = Server(backend, slurm_config("slurm_rest", extra)).start()
    c = None
    try:
        c = login(srv, srv.new_client_token())
        w = create(c)
        pending = start(c, w["id"], job_type="echo", resource_options={"time_limit_min": 5, "num_cpus": 2})
        # The whole node: it starts once the previous test's jobs have left it and the scheduler
        # has run again, which took over 60 s once in a full run.
        current = wait_ready(c, pending["id"])["job_details"]["current_job_details"]
        assert 240 <= current["time_left"] <= 300
        queued = [start(c, w["id"], job_type="echo") for _ in range(2)]  # the node is full: they wait
        for job in queued:  # (Resources) for the first, (Priority) behind it
            wait_for(lambda job=job: "Waiting in the Slurm queue (" in message(c, job["id"]), 30)
        counts = lambda: requests.get(f"{newer_slurmrestd}/_counts", timeout=5).json().get("GET jobs", 0)  # noqa: E731
        before, began = counts(), time.time()
        time.sleep(6)
        calls, seconds = counts() - before, time.time() - began
        assert 1 <= calls <= seconds / 1.0 + 1  # poll_interval 1 s, three active sessions
        for job in [pending, *queued]:
            assert c.put(f"/jobs/{job['id']}/stop").status_code == 200
        for job in [pending, *queued]:
            done = wait_status(c, job["id"], "complete", timeout=60)
            assert done["job_details"]["current_job_details"]["message"] == "Job stopped."
        assert float(get_job(c, pending["id"])["core_hours"]) > 0
    finally:
        if c is not None:
            cancel_all(c.username)
        srv.close()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_original_config_slurm_resource(backend: str) -> None:
    """An original config.json whose main resource is a SlurmAPIResource runs sessions through
    SlurmRestSpawner: cpu_partition is the partition used, and check-config says which keys
    (PSC's root_url and api_token) do not carry over."""
    with open(os.path.join(os.path.dirname(__file__), "data", "test_config.json")) as f:
        raw = json.load(f)
    raw["available_user_authentication"]["test_auth"]["connection_details"] = {
        "create_external_users": True,
        "operating_system": "linux",
    }
    raw["available_storage"]["test_storage"]["root_dir"] = "workspaces"
    raw["main_resource"] = "psc"
    raw["available_resources"]["psc"] = {
        "name": "PSC Slurm",
        "resource_type": "SlurmAPIResource",
        "storage": "test_storage",
        "user_authentication": "test_auth",
        "passthrough_domain": "",
        "connection_details": {
            "root_url": "https://psc.invalid/api",
            "api_token": "x",
            "token_lifespan": "600",
        },
        "cpu_partition": "uws",
        "gpu_partition": "uws",
        "time_pending_catch": "3600",
        "parameter_mapping": {
            "num_cpus": "cpus_per_task",
            "memory_mb": "memory_per_node",
            "time_limit_min": "time_limit",
        },
    }
    raw["available_job_types"] = {
        "echo": {
            "name": "Echo",
            "job_type": "CommandJob",
            "environment_details": {
                "psc": {
                    "command": [APP_PYTHON, APP, "{port}", "{base_url}"],
                    "readiness_path": "{base_url}hello",
                    "url_path": "{base_url}hello",
                }
            },
        }
    }
    # What a uws_config.py would add (a config.json has no place for them): the sessions'
    # Python, and the TCP channel batch jobs report over, as for every Slurm deployment.
    python_args = [
        f"--{line.split(' = ')[0][2:]}={json.loads(line.split(' = ')[1])}"
        for line in session_python_config().splitlines()
        if line.startswith("c.Spawner.")
    ] + [f"--UWSApp.session_channel_url=tcp://127.0.0.1:{free_port()}"]
    srv = Server(backend, json.dumps(raw), suffix=".json", extra_args=python_args).start()
    c = None
    try:
        check = srv.cli("check-config", srv.config_path)
        assert "root_url and api_token are not used" in check.stdout + check.stderr
        c = login(srv, srv.new_client_token())
        job = start(c, create(c)["id"], job_type="echo", resource_options={"num_cpus": 1})
        wait_ready(c, job["id"])
        assert scontrol_job(job["resource_job_id"])["Partition"] == "uws"
        assert c.put(f"/jobs/{job['id']}/stop").status_code == 200
        wait_status(c, job["id"], "complete", timeout=60)
    finally:
        if c is not None:
            cancel_all(c.username)
        srv.close()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_job_that_never_starts_its_helper(backend: str) -> None:
    """A job script that fails before the helper runs (here: a Python that does not exist)
    leaves nothing but Slurm's FAILED and its output file: both reach the user within seconds."""
    srv = Server(backend, slurm_config("slurm"), extra_args=["--Spawner.python=/nonexistent/python3"]).start()
    c = None
    try:
        c = login(srv, srv.new_client_token())
        job = start(c, create(c)["id"], job_type="echo")
        done = wait_status(c, job["id"], "failed", timeout=20)
        current = done["job_details"]["current_job_details"]
        assert current["message"] == "The session failed in Slurm; see its log."
        assert "/nonexistent/python3" in current["log_tail"]
    finally:
        if c is not None:
            cancel_all(c.username)
        srv.close()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_rest_tokens_cached_and_renewed_before_expiry(backend: str, tmp_path) -> None:
    """JWTs come from token_command, one per user, and are reused until fewer than 60 s are
    left. With a 61 s lifespan every token is due for renewal a second after it was issued."""
    calls = tmp_path / "calls"
    wrapper = tmp_path / "token"
    wrapper.write_text(
        f'#!/bin/sh\necho "$1 $2" >> {calls}\nexec scontrol token username="$1" lifespan="$2"\n'
    )
    wrapper.chmod(0o755)
    extra = (
        f'c.SlurmRestSpawner.token_command = ["{wrapper}", "{{username}}", "{{lifespan}}"]\n'
        "c.SlurmRestSpawner.token_renew_seconds = 60"
    )
    results = {}
    for lifespan in (3600, 61):
        srv = Server(
            backend, slurm_config("slurm_rest", f"{extra}\nc.SlurmRestSpawner.token_lifespan = {lifespan}")
        )
        calls.write_text("")
        srv.start()
        c = None
        try:
            c = login(srv, srv.new_client_token())
            job = start(c, create(c)["id"], job_type="echo")
            wait_ready(c, job["id"])
            time.sleep(4)  # status queries every second
            assert c.put(f"/jobs/{job['id']}/stop").status_code == 200
            wait_status(c, job["id"], "complete", timeout=60)
            results[lifespan] = (c.username, calls.read_text().splitlines())
        finally:
            if c is not None:
                cancel_all(c.username)
            srv.close()
    owner, lines = results[3600]
    assert sorted(lines) == sorted(["root 3600", f"{owner} 3600"])  # one token each, then cached
    owner, lines = results[61]
    assert lines.count("root 61") >= 3, lines  # the status token, renewed again and again


def ready_on(c: Client, job: dict, node: str) -> dict:
    """The job's connection details, once it is ready; it runs on `node`, as Slurm says."""
    current = wait_ready(c, job["id"])["job_details"]["current_job_details"]
    assert scontrol_job(job["resource_job_id"])["NodeList"] == node
    return current


@needs_two_nodes
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("spawner", SPAWNERS)
def test_sessions_on_each_node_through_the_passthrough(backend: str, spawner: str) -> None:
    """A CommandJob web app and JupyterLab on each node, all four at once (each node has two
    CPUs): the passthrough reaches node 1's at 127.0.0.1 and node 2's at node 2's NodeAddr,
    which only the veth pair leads to; the apps listen there ({host}). Both servers' channels
    are on this machine's end of the veth pair, which node 1 reaches too. The servers run on
    an interpreter the sessions' accounts can run too: JupyterLab sessions use the server's."""
    assert NODES is not None
    python = shared_python()
    kinds = ("echo", "lab") if python else ("echo",)  # (no JupyterLab the accounts can run)
    servers = [
        Server(
            backend,
            slurm_config(spawner, f'c.SlurmBase.partition = "{partition}"', NODES["HOST_ADDR"]),
            python=python,
        )
        for partition in ("debug", NODES["PARTITION"])
    ]
    clients: list[Client] = []
    try:
        for srv in servers:
            srv.start()
            clients.append(login(srv, srv.new_client_token()))
        started = [
            (c, start(c, create(c)["id"], job_type=kind), node, address)
            for c, node, address in zip(
                clients, (NODES["NODE1"], NODES["NODE2"]), ("127.0.0.1", NODES["NODE2_ADDR"]), strict=True
            )
            for kind in kinds
        ]
        for c, job, node, address in started:
            current = ready_on(c, job, node)
            assert current["proxy_details"]["hostname"] == address
            link = current["connection_details"]["url_domain"] + current["connection_details"]["url_path"]
            if job["job_type"] == "echo":
                assert requests.get(link, timeout=10).text == "hello"
                continue
            lab = requests.get(link, timeout=30)
            assert lab.status_code == 200 and "JupyterLab" in lab.text
            token = link.split("token=")[1]
            api = link.split("/lab?")[0] + "/api/kernels"
            kernel = requests.post(f"{api}?token={token}", json={"name": "python3"}, timeout=30)
            assert kernel.status_code == 201, kernel.text
            channels = api.replace("http", "ws") + f"/{kernel.json()['id']}/channels?token={token}"
            assert run_code(channels, "print(6 * 7)") == "42\n"
        for c, job, _, _ in started:
            assert c.put(f"/jobs/{job['id']}/stop").status_code == 200
        for c, job, _, _ in started:
            wait_status(c, job["id"], "complete", timeout=60)
    finally:
        for c in clients:
            cancel_all(c.username)
        for srv in servers:
            srv.close()


@needs_two_nodes
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_node_missing_from_the_address_map_fails_naming_it(backend: str) -> None:
    """With c.SlurmBase.node_addresses set, it alone says where nodes are: a session Slurm
    places on a node it does not list fails at once, and the owner reads which node."""
    assert NODES is not None
    extra = (
        f'c.SlurmBase.partition = "{NODES["PARTITION"]}"\n'
        f'c.SlurmBase.node_addresses = {{"{NODES["NODE1"]}": "127.0.0.1"}}'
    )
    srv = Server(backend, slurm_config("slurm", extra, NODES["HOST_ADDR"])).start()
    c = None
    try:
        c = login(srv, srv.new_client_token())
        job = start(c, create(c)["id"], job_type="echo")
        done = wait_status(c, job["id"], "failed", timeout=60)
        assert done["job_details"]["current_job_details"]["message"] == (
            f"Slurm placed the session on node {NODES['NODE2']}, which is not in the server's node "
            "address map (c.SlurmBase.node_addresses), so the server cannot reach it there. Please "
            "contact your administrator."
        )
        assert scontrol_job(job["resource_job_id"])["NodeList"] == NODES["NODE2"]
    finally:
        if c is not None:
            cancel_all(c.username)
        srv.close()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_extend_raises_slurms_time_limit(backend: str) -> None:
    """PUT /jobs/<id>/extend/ raises the Slurm job's own limit (scontrol as the operator
    account, or slurmrestd's job update with its token), and time_left follows at once. The
    operator account is scripts/slurm-start's uwsop, with the Operator level granted through
    sacctmgr (SlurmUser on a cluster without accounting)."""
    servers = [Server(backend, slurm_config(spawner)).start() for spawner in SPAWNERS]
    users = []
    try:
        for srv in servers:
            c = login(srv, srv.new_client_token())
            users.append(c)
            job = start(c, create(c)["id"], job_type="echo", resource_options={"time_limit_min": 5})
            wait_ready(c, job["id"])
            # Its owner cannot raise it: the operator account's level is what does.
            own = subprocess.run(
                ["sudo", "-n", "-u", c.username, "--", "scontrol", "update"]
                + [f"JobId={job['resource_job_id']}", "TimeLimit=8"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            assert own.returncode != 0 and scontrol_job(job["resource_job_id"])["TimeLimit"] == "00:05:00"
            r = c.put(f"/jobs/{job['id']}/extend/", {"minutes": 3})
            assert r.status_code == 200, r.text
            assert 420 <= r.json()["data"]["job"]["job_details"]["current_job_details"]["time_left"] <= 480
            assert scontrol_job(job["resource_job_id"])["TimeLimit"] == "00:08:00"
            too_long = c.put(f"/jobs/{job['id']}/extend/", {"minutes": 10_000})
            assert too_long.status_code == 422
            assert scontrol_job(job["resource_job_id"])["TimeLimit"] == "00:08:00"
            assert c.put(f"/jobs/{job['id']}/stop").status_code == 200
            wait_status(c, job["id"], "complete", timeout=60)
    finally:
        for c in users:
            cancel_all(c.username)
        for srv in servers:
            srv.close()
