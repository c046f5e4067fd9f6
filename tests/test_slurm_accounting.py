"""Slurm's own figures where the server did not watch (scripts/slurm-start's cluster, with
accounting in MariaDB): a session that ended while the server was down ends with sacct's state,
end time and CPU time; a session waiting longer than usual is told which smaller shape Slurm
would start sooner (sbatch --test-only).

Skipped, with the reason, where no cluster answers, or (the first) where it has no accounting."""

from __future__ import annotations

import subprocess
import time
from datetime import datetime

import pytest

from helpers.api import create, get_job, login, start, wait_for, wait_status
from helpers.harness import Client, Server
from helpers.slurm import (
    SPAWNERS,
    cancel_all,
    needs_accounting,
    needs_cluster,
    sacct_job,
    slurm_config,
    wait_ready,
)

pytestmark = needs_cluster


def epoch(iso: str) -> float:
    """The API's UTC time ("...Z"), or Slurm's local time, as epoch seconds."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@needs_accounting
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_session_that_ended_while_the_server_was_down(backend: str) -> None:
    """kill -9 of the server, scancel of its session, and the server back a few seconds later:
    the session is complete with Slurm's end time (not the time the server came back) and core
    hours = CPUTimeRAW / 3600 (not the server's CPUs × its own clock). Both spawners at once:
    the database plays no part here, so SQLite only."""
    servers = [Server(backend, slurm_config(spawner)).start() for spawner in SPAWNERS]
    clients: list[Client] = []
    try:
        jobs = []
        for srv in servers:
            c = login(srv, srv.new_client_token())
            clients.append(c)
            jobs.append(start(c, create(c)["id"], job_type="echo"))
        for c, job in zip(clients, jobs, strict=True):
            wait_ready(c, job["id"])
        time.sleep(2)  # some CPU time to count
        for srv in servers:
            assert srv.proc is not None
            srv.proc.kill()
            srv.proc.wait()
        for job in jobs:
            subprocess.run(["scancel", str(job["resource_job_id"])], check=True, timeout=10)
        records = [
            wait_for(
                lambda job=job: (
                    (r := sacct_job(job["resource_job_id"])).get("State", "").startswith("CANCELLED") and r
                ),
                30,
            )
            for job in jobs
        ]
        time.sleep(3)  # down a while longer: the server's own clock would end them later
        for srv in servers:
            srv.start()
        for c, job, record in zip(clients, jobs, records, strict=True):
            done = wait_status(c, job["id"], "complete", "failed", timeout=30)
            assert done["status"] == "complete", done
            assert "cancelled in Slurm" in done["job_details"]["current_job_details"]["message"]
            assert abs(epoch(done["datetime_end"]) - epoch(record["End"])) <= 1, (done, record)
            cpu_seconds = int(record["CPUTimeRAW"])
            assert cpu_seconds >= 2
            assert abs(float(done["core_hours"]) - cpu_seconds / 3600) <= 0.00001, (done, record)
    finally:
        for c in clients:
            cancel_all(c.username)
        for srv in servers:
            srv.close()


def squeue_start(slurm_id: int) -> str:
    """Slurm's expected start of a pending job (%S), as squeue prints it."""
    return subprocess.run(
        ["squeue", "-h", "-o", "%S", "-j", str(slurm_id)], capture_output=True, text=True, timeout=10
    ).stdout.strip()


def node_cpus() -> int:
    out = subprocess.run(
        ["sinfo", "-h", "-p", "debug", "-o", "%c"], capture_output=True, text=True, timeout=10
    )
    return int(out.stdout.split()[0])


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_pending_session_is_told_what_would_start_sooner(backend: str) -> None:
    """A session holds half the node for two hours; one asking for the whole node for 30
    minutes waits behind it. Half its CPUs would start within those 30 minutes: that is
    suggested (half its time would not start any sooner, so it is not). Once it runs, the
    suggestions are gone."""
    cpus = node_cpus()
    srv = Server(backend, slurm_config("slurm", "c.SlurmBase.pending_notice_seconds = 1")).start()
    c = None
    try:
        c = login(srv, srv.new_client_token())
        w = create(c)
        filler = start(
            c,
            w["id"],
            job_type="echo",
            resource_options={"num_cpus": cpus - cpus // 2, "time_limit_min": 120},
        )
        wait_ready(c, filler["id"])
        began = time.time()
        waiting = start(
            c, w["id"], job_type="echo", resource_options={"num_cpus": cpus, "time_limit_min": 30}
        )

        def suggested() -> dict | None:
            current = get_job(c, waiting["id"])["job_details"]["current_job_details"]
            return current if current.get("suggestions") else None

        current = wait_for(suggested, 60)
        assert get_job(c, waiting["id"])["status"] == "pending"
        (suggestion,) = current["suggestions"]
        assert suggestion["resource_options"]["num_cpus"] == cpus // 2
        assert suggestion["resource_options"]["time_limit_min"] == 30
        # Slurm's answer for the smaller shape counts the waiting session as going first (its 30
        # minutes); its own start is behind the filler's two hours.
        sooner = epoch(suggestion["expected_start"])
        assert began - 5 <= sooner <= time.time() + 31 * 60
        assert epoch(squeue_start(waiting["resource_job_id"])) - sooner >= 3600
        assert c.put(f"/jobs/{filler['id']}/stop").status_code == 200
        running = wait_ready(c, waiting["id"])["job_details"]["current_job_details"]
        assert "suggestions" not in running
        assert c.put(f"/jobs/{waiting['id']}/stop").status_code == 200
        wait_status(c, waiting["id"], "complete", timeout=60)
    finally:
        if c is not None:
            cancel_all(c.username)
        srv.close()
