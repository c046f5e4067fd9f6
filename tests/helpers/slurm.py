"""The Slurm tests' shared parts: whether the cluster (scripts/slurm-start) is there, with two
nodes and with accounting; the server configuration they run; and what they ask Slurm
directly (squeue, scontrol, sacct) to check what the server says."""

from __future__ import annotations

import os
import subprocess

import pytest

from helpers.api import get_job, wait_for
from helpers.configs import APP_PYTHON, LOCAL_CONFIG, SUDO_AVAILABLE, shared_dir
from helpers.harness import IS_ROOT, Client, free_port


def cluster_up() -> bool:
    try:
        return "UP" in subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_cluster = pytest.mark.skipif(
    not (IS_ROOT and SUDO_AVAILABLE and cluster_up()),
    reason="needs root, sudo and a running Slurm cluster (sudo scripts/slurm-start)",
)

APP = os.path.join(shared_dir(), "apps", "echo_app.py")


SPAWNERS = ["slurm", "slurm_rest"]


def two_nodes() -> dict[str, str] | None:
    """Where scripts/slurm-start put node 2 (NODE1, NODE2, NODE2_ADDR, HOST_ADDR: this machine's
    end of the veth pair, PARTITION); None on a single-node cluster."""
    try:
        with open("/run/uws-slurm/node2.env") as f:
            return dict(line.strip().split("=", 1) for line in f if "=" in line)
    except OSError:
        return None


NODES = two_nodes()
needs_two_nodes = pytest.mark.skipif(
    NODES is None, reason="needs the two-node cluster (sudo scripts/slurm-start, without --single-node)"
)


def operator_has_its_level() -> bool:
    """Whether scripts/slurm-start's operator account has Slurm's Operator level (the cluster
    has accounting)."""
    try:
        out = subprocess.run(
            ["sacctmgr", "-n", "-P", "list", "user", "uwsop", "format=user,adminlevel"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.strip() == "uwsop|Operator"


ACCOUNTING = operator_has_its_level()
# Extensions raise limits as the operator account with the Operator level that slurm-start
# grants; without accounting, only SlurmUser can.
OPERATOR = "uwsop" if ACCOUNTING else "slurm"
needs_accounting = pytest.mark.skipif(
    not ACCOUNTING,
    reason="needs Slurm accounting (slurmdbd; scripts/slurm-start sets it up where MariaDB answers)",
)


def slurm_config(spawner: str = "slurm", extra: str = "", channel_host: str = "127.0.0.1") -> str:
    return (
        LOCAL_CONFIG
        + f"""
c.UWSApp.spawner_class = "{spawner}"
c.UWSApp.session_channel_url = "tcp://{channel_host}:{free_port()}"
c.UWSApp.heartbeat_seconds = 1
c.UWSApp.reconcile_seconds = 1
c.UWSApp.stop_grace_seconds = 2
c.UWSApp.lost_contact_seconds = 4
c.SlurmBase.poll_interval = 1
c.SlurmBase.max_backoff = 4
c.SlurmBase.operator_username = "{OPERATOR}"
{extra}
c.UWSApp.job_types = {{
    "echo": {{"name": "Echo", "job_type": "CommandJob", "environment_details": {{"main_resource": {{
        "command": ["{APP_PYTHON}", "{APP}", "{{port}}", "{{base_url}}", "{{host}}"],
        "readiness_path": "{{base_url}}hello", "url_path": "{{base_url}}hello"}}}}}},
    "lab": {{"name": "Jupyter Lab", "job_type": "JupyterLabJob",
             "environment_details": {{"main_resource": {{"use_local_environment": True}}}}}},
    "crash": {{"name": "Crash", "job_type": "CommandJob", "environment_details": {{"main_resource": {{
        "command": ["sh", "-c", "echo slurm-boom; exit 4"]}}}}}},
}}
"""
    )


def cluster_state() -> str:
    """What the scheduler says about its queue and node, for a failure message."""
    out = []
    for command in (["squeue", "-o", "%i %u %T %r %M %l"], ["sinfo", "-N", "-o", "%N %T %C %E"]):
        try:
            out.append(subprocess.run(command, capture_output=True, text=True, timeout=10).stdout)
        except (OSError, subprocess.TimeoutExpired) as e:
            out.append(f"{command[0]}: {e}")
    return "\n".join(out)


def wait_ready(c: Client, job_id: int, timeout: float = 150) -> dict:
    """helpers.api.wait_ready, with the job and the cluster's state in the failure. The time is
    generous: in a full run the scheduler sometimes takes a minute or more to place a job on a
    node that the previous test's jobs have only just left. A job that has ended fails the
    wait at once: it will not become ready."""

    def ready_or_ended() -> dict | None:
        job = get_job(c, job_id)
        current = job["job_details"]["current_job_details"]
        return job if "connection_details" in current or job["status"] in ("complete", "failed") else None

    try:
        job = wait_for(ready_or_ended, timeout)
    except AssertionError:
        job = get_job(c, job_id)
    if "connection_details" not in job["job_details"]["current_job_details"]:
        raise AssertionError(
            f"job {job_id} not ready (waited up to {timeout} s): {job['status']}, "
            f"{job['job_details'].get('current_job_details')}\n{cluster_state()}"
        )
    return job


def cancel_all(username: str) -> None:
    """Cancel what a test's user left in the queue, so a failing test cannot leave the 2-CPU
    node full for the next one."""
    subprocess.run(["scancel", "-u", username], capture_output=True, timeout=30)
    wait_for(
        lambda: (
            not subprocess.run(
                ["squeue", "-h", "-u", username, "-t", "PD,R,CG"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        ),
        30,
    )


def squeue_state(slurm_id: int) -> str:
    out = subprocess.run(
        ["squeue", "--states=all", "-h", "-o", "%T", "-j", str(slurm_id)],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    return out.strip()


def scontrol_job(slurm_id: int) -> dict[str, str]:
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", str(slurm_id)], capture_output=True, text=True, timeout=10
    ).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def sacct_job(slurm_id: int) -> dict[str, str]:
    """The job's allocation record in Slurm's accounting ({} when there is none yet)."""
    fields = "JobID,State,Start,End,ElapsedRaw,AllocCPUS,CPUTimeRAW"
    out = subprocess.run(
        ["sacct", "-a", "-X", "-n", "-P", "-o", fields, "-j", str(slurm_id)],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    lines = [line for line in out.splitlines() if line.startswith(f"{slurm_id}|")]
    return dict(zip(fields.split(","), lines[-1].split("|"), strict=True)) if lines else {}
