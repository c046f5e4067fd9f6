"""Failover with a Slurm session (tests/test_failover.py has the local sessions): two servers on
one PostgreSQL database behind HAProxy, both configured with the same tcp:// channel endpoint,
which only the leader binds. The leader is killed with SIGKILL while the batch job runs; the
session answers through the new leader, the Slurm job is the same one, and it stops through it."""

from __future__ import annotations

import json

import pytest

from helpers.api import at, create, get_job, start, wait_for, wait_status
from helpers.failover import ha_cluster, kill_leader, role, users
from helpers.haproxy import haproxy_path
from helpers.harness import Server
from helpers.slurm import cancel_all, cluster_up, slurm_config, squeue_state, wait_ready

pytestmark = pytest.mark.skipif(
    not cluster_up(), reason="needs a running Slurm cluster (scripts/slurm-start)"
)


def slurm_job_id(srv: Server, job_id: int) -> int:
    (state,) = srv.sql(f"SELECT spawner_state FROM jobs WHERE id = {job_id}")[0]
    return int((json.loads(state) if isinstance(state, str) else state)["slurm_job_id"])


def test_a_batch_session_survives_the_leaders_kill(backend: str) -> None:
    if backend != "postgresql":
        pytest.skip("failover needs PostgreSQL (leadership is an advisory lock there)")
    if haproxy_path() is None:
        pytest.skip("needs haproxy (Debian package haproxy)")
    with ha_cluster(slurm_config("slurm")) as (first, second, proxy):
        ((name, c),) = users(proxy, first.new_client_token(), 1)
        try:
            job = start(c, create(c)["id"], job_type="echo")
            ready = wait_ready(c, job["id"])
            details = ready["job_details"]["current_job_details"]["connection_details"]
            link = details["url_domain"] + details["url_path"]
            assert at(link).status_code == 200
            batch_job = slurm_job_id(first, job["id"])

            _, survivor, _ = kill_leader((first, second))
            wait_for(lambda: role(survivor) == "leader", 30)
            # The same batch job answers through the new leader, and is still running.
            wait_for(lambda: at(link, timeout=5).status_code == 200, 30)
            assert get_job(c, job["id"])["status"] == "running"
            assert slurm_job_id(first, job["id"]) == batch_job
            assert squeue_state(batch_job) == "RUNNING"
            assert c.put(f"/jobs/{job['id']}/stop").status_code == 200
            wait_status(c, job["id"], "complete", timeout=60)
        finally:
            cancel_all(name)
