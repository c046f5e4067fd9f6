"""SlurmSpawner: sessions as Slurm batch jobs, submitted with sbatch as the workspace owner.

The job script (share/uws/slurm_job.sh) runs uws-session-helper inside the allocation; the helper
connects back to the server's session channel (use a tcp:// session_channel_url reachable from
the compute nodes). The Slurm job id is the resource job id and is kept in the spawner state, so
a restarted server re-attaches. Status comes from one batched `squeue` per poll interval for all
of the server's Slurm jobs, never one call per job; a scheduler that does not answer means
"unknown": the job keeps its status and the check is retried.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import time
from typing import Any, ClassVar

from traitlets import Float, List, Unicode

from ..storage import safepath
from .base import Spawner

# Slurm state -> (how it ended, what the user reads). Anything else, or no answer, is unknown.
PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED"}
RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
ENDED = {
    "COMPLETED": ("completed", "The session finished."),
    "CANCELLED": ("stopped", "The session was cancelled in Slurm."),
    "TIMEOUT": ("time_limit", "The session reached its Slurm time limit."),
    "FAILED": ("failed", "The session failed in Slurm; see its log."),
    "NODE_FAIL": ("failed", "The node running the session failed; start it again."),
    "OUT_OF_MEMORY": ("failed", "The session ran out of memory; start it again with more memory."),
    "BOOT_FAIL": ("failed", "The node could not boot for the session; start it again."),
    "DEADLINE": ("failed", "The session missed its Slurm deadline."),
    "PREEMPTED": ("failed", "The session was preempted by a higher-priority job; start it again."),
    "LAUNCH_FAILED": ("failed", "Slurm could not launch the session; start it again."),
    "SPECIAL_EXIT": ("failed", "The session ended with a special exit state in Slurm."),
}


class SchedulerUnavailable(RuntimeError):
    pass


class SlurmSpawner(Spawner):
    sudo = List(
        Unicode(),
        ["sudo", "-n", "-H"],
        config=True,
        help="Prefix that runs sbatch and scancel as the workspace owner (`-u USER --` follows).",
    )
    partition = Unicode("", config=True, help="Slurm partition for sessions (empty: the default).")
    gpu_partition = Unicode("", config=True, help="Partition for sessions that ask for a GPU.")
    poll_interval = Float(
        2.0, config=True, help="Seconds between the batched squeue queries for all sessions."
    )
    command_timeout = Float(30.0, config=True, help="Seconds sbatch, squeue or scancel may take.")

    slurm_job_id: int | None = None

    # One query per poll interval serves every session (class-wide).
    _tracked: ClassVar[set[int]] = set()
    _results: ClassVar[dict[int, dict[str, str]]] = {}
    _queried_at: ClassVar[float] = 0.0
    _query_lock: ClassVar[asyncio.Lock | None] = None
    queries: ClassVar[int] = 0
    status_message: str | None = None

    def get_state(self) -> dict[str, Any]:
        return {**super().get_state(), "slurm_job_id": self.slurm_job_id}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.slurm_job_id = state.get("slurm_job_id")
        if self.slurm_job_id:
            self._tracked.add(self.slurm_job_id)

    def as_user(self) -> list[str]:
        return [*self.sudo, "-u", self.account.username, "--"] if os.geteuid() != self.account.uid else []

    async def run(self, *argv: str) -> str:
        def _run() -> subprocess.CompletedProcess:
            return subprocess.run(argv, capture_output=True, text=True, timeout=self.command_timeout, cwd="/")

        try:
            result = await asyncio.get_running_loop().run_in_executor(None, _run)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SchedulerUnavailable(f"{shlex.join(argv)} did not answer: {e}") from None
        if result.returncode != 0:
            raise SchedulerUnavailable(
                (result.stderr or result.stdout).strip() or f"exit {result.returncode}"
            )
        return result.stdout

    # ---- start -------------------------------------------------------------------------------
    def sbatch_options(self, spec: dict[str, Any]) -> list[str]:
        options = spec.get("resource_options") or {}
        lines = []
        cpus = options.get("cpus_per_task") or spec.get("cpus") or 1
        lines.append(f"--cpus-per-task={int(cpus)}")
        if options.get("memory_per_node"):
            lines.append(f"--mem={int(options['memory_per_node'])}M")
        seconds = spec.get("time_limit_seconds")
        if options.get("time_limit"):
            lines.append(f"--time={int(options['time_limit'])}")
        elif seconds:
            lines.append(f"--time={max(1, -(-int(seconds) // 60))}")
        partition = self.partition
        if spec.get("gpu"):
            lines.append("--gres=gpu:1")
            partition = self.gpu_partition or partition
        if partition:
            lines.append(f"--partition={partition}")
        return [f"#SBATCH {line}" for line in lines]

    async def start(self, spec: dict[str, Any], secret: str) -> int:
        with open(os.path.join(self.parent.share_dir, "slurm_job.sh")) as f:
            template = f.read()
        secret_file = os.path.join(self.job_dir, ".secret")
        script = template.format(
            job_id=self.job_id,
            job_dir=self.job_dir,
            sbatch_options="\n".join(self.sbatch_options(spec)),
            helper_command=shlex.join(self.helper_command()),
            secret_file=shlex.quote(secret_file),
        )

        def _prepare() -> None:
            self.prepare_job_dir(spec)
            safepath.write_file(self.job_dir, [".secret"], (secret + "\n").encode(), self.account, mode=0o600)
            safepath.write_file(self.job_dir, ["job.sh"], script.encode(), self.account, mode=0o700)

        await asyncio.get_running_loop().run_in_executor(None, _prepare)
        out = await self.run(*self.as_user(), "sbatch", "--parsable", os.path.join(self.job_dir, "job.sh"))
        self.slurm_job_id = int(out.strip().split(";")[0])
        self._tracked.add(self.slurm_job_id)
        self.messages.append(f"Submitted to Slurm as job {self.slurm_job_id}.")
        return self.slurm_job_id

    # ---- poll --------------------------------------------------------------------------------
    async def _query(self) -> dict[int, dict[str, str]]:
        cls = type(self)
        if cls._query_lock is None:
            cls._query_lock = asyncio.Lock()
        async with cls._query_lock:
            if time.monotonic() - cls._queried_at < self.poll_interval and self.slurm_job_id in cls._results:
                return cls._results
            ids = ",".join(str(i) for i in sorted(cls._tracked))
            out = await self.run("squeue", "--states=all", "-h", "-o", "%i|%T|%r|%L|%S", "-j", ids)
            cls.queries += 1
            results = {}
            for line in out.splitlines():
                parts = line.strip().split("|")
                if len(parts) == 5 and parts[0].isdigit():
                    results[int(parts[0])] = dict(
                        zip(("state", "reason", "time_left", "start"), parts[1:], strict=True)
                    )
            cls._results, cls._queried_at = results, time.monotonic()
            return results

    async def poll(self) -> dict[str, Any] | None:
        if self.slurm_job_id is None:
            return {"reason": "disappeared"}
        results = await self._query()  # SchedulerUnavailable propagates: status unknown
        info = results.get(self.slurm_job_id)
        if info is None:
            self._tracked.discard(self.slurm_job_id)
            return self.read_exit() or {"reason": "disappeared"}
        state = info["state"].split()[0].rstrip("+")
        if state in PENDING:
            start = info["start"] if info["start"] not in ("N/A", "Unknown", "") else "not known yet"
            why = f" ({info['reason']})" if info["reason"] not in ("None", "") else ""
            self.status_message = f"Waiting in the Slurm queue{why}; expected start: {start}."
            return None
        if state in RUNNING:
            self.status_message = None
            return None
        if state in ENDED:
            self._tracked.discard(self.slurm_job_id)
            reason, message = ENDED[state]
            ended = self.read_exit() or {}
            return {
                **ended,
                "reason": reason if state != "COMPLETED" else ended.get("reason", reason),
                "message": message,
                "slurm_state": state,
            }
        self.status_message = None
        return None  # a state we do not know: keep the job as it is

    async def stop(self) -> None:
        if self.slurm_job_id is not None:
            await self.run(*self.as_user(), "scancel", str(self.slurm_job_id))
