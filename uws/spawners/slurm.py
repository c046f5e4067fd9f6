"""Sessions as Slurm batch jobs.

SlurmBase holds what every way of talking to Slurm shares: the resource options a session asks
for, one batched status query per poll interval for all of the server's Slurm jobs (never one
call per job), and what the session is told from it (uws.spawners.slurm_status: waiting, running,
or ended and how). SlurmSpawner talks to Slurm with sbatch/squeue/scancel run as the workspace
owner through sudo; SlurmRestSpawner (slurm_rest.py) with slurmrestd's REST API.

The job script (share/uws/slurm_job.sh) runs uws-session-helper inside the allocation; the helper
connects back to the server's session channel (use a tcp:// session_channel_url reachable from
the compute nodes), and its app listens on the node's address, where the passthrough connects
(uws.spawners.slurm_nodes). The Slurm job id is the resource job id and is kept in the spawner
state, so a restarted server re-attaches. A scheduler that does not answer means "unknown": the
job keeps its status and the query is retried with backoff (uws.spawners.slurm_query).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import pwd
import re
import shlex
import subprocess
import time
from typing import Any, ClassVar

from traitlets import Dict, Float, List, Unicode, validate

from ..sessions.helper_node import ON_SLURM_NODE, parse_node_addresses
from ..storage import safepath
from . import slurm_status
from .base import LaunchError, Spawner
from .slurm_accounting import AccountedJob, AccountingQuery, parse_sacct, sacct_argv
from .slurm_nodes import check_node_addresses, node_address
from .slurm_options import job_options, sbatch_flags
from .slurm_query import (
    PENDING,
    RUNNING,
    SQUEUE_FORMAT,
    SchedulerStatus,
    SchedulerUnavailable,
    SlurmJob,
    parse_squeue,
)

LOG_TAIL_BYTES = 2000


class SlurmBase(Spawner):
    partition = Unicode(
        "",
        config=True,
        help="""Slurm partition for sessions (empty: the cluster's default). From config.json:
        the resource's `cpu_partition`.""",
    )
    gpu_partition = Unicode(
        "",
        config=True,
        help="""Partition for sessions that ask for a GPU (`gpu_enabled: true`); empty: the same
        as `partition`. From config.json: the resource's `gpu_partition`.""",
    )
    poll_interval = Float(
        2.0,
        config=True,
        help="""Seconds between the status queries to Slurm. One query answers for every session
        of this server, however many there are.""",
    )
    max_backoff = Float(
        60.0,
        config=True,
        help="""When Slurm does not answer, the query is retried after poll_interval, then twice
        as long each time, up to this many seconds. Sessions keep their status meanwhile.""",
    )
    end_state_wait = Float(
        10.0,
        config=True,
        help="""Seconds to wait for Slurm's final word on a session whose helper reported that it
        was signalled (time limit, scancel, preemption), so the user reads the real reason.""",
    )
    pending_notice_seconds = Float(
        0.0,
        config=True,
        help="""Sessions waiting in the queue longer than this many seconds get a note that the
        wait is longer than usual, and the server logs a warning (0: never). From config.json:
        the resource's `time_pending_catch`.""",
    )

    suggestion_seconds = Float(
        300.0,
        config=True,
        help="""For a session waiting longer than pending_notice_seconds, Slurm is asked (sbatch
        --test-only, as the session's owner) when it would start with half the CPUs, half the
        memory or half the time; those that would start at least a minute (and a tenth of the
        wait) sooner reach the user as the job's `suggestions`. Each session is asked about at
        most once per this many seconds (0: never).""",
    )

    operator_username = Unicode(
        "",
        config=True,
        help="""Slurm account that raises a session's time limit when its owner extends it
        (PUT /jobs/<id>/extend/): Slurm lets users lower their jobs' limits, never raise them.
        It needs Slurm's Operator level (`sacctmgr modify user NAME set adminlevel=Operator`);
        root and SlurmUser have it without. Empty: extending Slurm sessions is refused.""",
    )

    node_addresses = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        default_value={},
        config=True,
        help="""Where the server reaches each Slurm node, as {"node name": "address"}: the
        passthrough connects to a session's app there, and the app listens there ({host} in a
        job template). Empty (the default): each node's NodeAddr as Slurm has it (`scontrol show
        node`, or slurmrestd's node list), which is the node's name unless slurm.conf gives
        another. With a map, it alone counts: a session that Slurm places on a node the map does
        not list fails, with a message naming the node. Set it when the server reaches the nodes
        at other addresses than Slurm does (a network of their own between server and nodes).""",
    )

    @validate("node_addresses")
    def _check_node_addresses(self, proposal: Any) -> dict[str, str]:
        return check_node_addresses(proposal["value"])

    node_address_seconds = Float(
        300.0,
        config=True,
        help="""Seconds the nodes' addresses read from Slurm (without node_addresses) are kept
        before they are asked again; a node not among them is asked about at once.""",
    )

    accounting_command = List(
        Unicode(),
        ["sacct"],
        config=True,
        help="""Command that reads Slurm's accounting (sacct; its arguments are added). A session
        that ended while the server was down, or that squeue no longer lists, gets its end state,
        end time and core hours (CPUTimeRAW) from it, in one call for all such sessions. Empty:
        never asked; such sessions end with what squeue last said, at the time the server finds
        them ended.""",
    )

    sudo = List(
        Unicode(),
        ["sudo", "-n", "-H"],
        config=True,
        help="""Prefix that runs Slurm commands as another account (`-u USER --` follows):
        SlurmSpawner's sbatch and scancel as the workspace owner, `sbatch --test-only` for
        suggestions, and scontrol as operator_username.""",
    )

    def as_user(self, username: str | None = None) -> list[str]:
        """The prefix that runs a command as `username` (default: the workspace owner); none
        when the server runs as that account."""
        if username is None:
            if os.geteuid() == self.account.uid:
                return []
            username = self.account.username
        elif username == pwd.getpwuid(os.geteuid()).pw_name:
            return []
        return [*self.sudo, "-u", username, "--"]

    command_timeout = Float(
        30.0,
        config=True,
        help="Seconds a Slurm command (sbatch, squeue, scancel, scontrol, the token command) may take.",
    )

    slurm_job_id: int | None = None
    status_message: str | None = None
    last_info: SlurmJob | None = None
    last_info_at: float = 0.0
    # Status is cheap to ask for all sessions at once, so the server asks on every pass.
    poll_while_alive = True

    accounted: AccountedJob | None = None  # accounting's record, once the job is found ended
    shape: dict[str, Any] | None = None  # what the job asked for (job_options), kept in the state
    suggestions: list[dict[str, Any]] | None = None  # smaller shapes that start sooner, once asked
    suggested_at = -math.inf  # monotonic time of the last suggestion query

    _status: ClassVar[dict[type, SchedulerStatus]] = {}
    _accounting: ClassVar[dict[type, AccountingQuery]] = {}

    @classmethod
    def scheduler_status(cls) -> SchedulerStatus:
        if cls not in SlurmBase._status:
            SlurmBase._status[cls] = SchedulerStatus()
        return SlurmBase._status[cls]

    @classmethod
    def accounting(cls) -> AccountingQuery:
        return SlurmBase._accounting.setdefault(cls, AccountingQuery())

    def get_state(self) -> dict[str, Any]:
        return {
            **super().get_state(),
            "slurm_job_id": self.slurm_job_id,
            "submitted_at": self.submitted_at,
            "slurm_options": self.shape,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.slurm_job_id = state.get("slurm_job_id")
        self.submitted_at = state.get("submitted_at")
        self.shape = state.get("slurm_options")
        if self.slurm_job_id:
            self.scheduler_status().tracked.add(self.slurm_job_id)

    async def run(self, *argv: str, with_stderr: bool = False) -> str:
        """The command's output (and its error output after it, with_stderr)."""

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
        return result.stdout + result.stderr if with_stderr else result.stdout

    # ---- what each interface provides --------------------------------------------------------
    async def submit(self, spec: dict[str, Any], script: str) -> int:
        raise NotImplementedError

    async def fetch(self, ids: list[int]) -> dict[int, SlurmJob]:
        raise NotImplementedError

    async def cancel(self) -> None:
        raise NotImplementedError

    async def update_time_limit(self, minutes: int) -> None:
        raise NotImplementedError

    async def set_time_limit(self, seconds: int) -> bool:
        """Slurm keeps the limit (in whole minutes): the operator account raises it."""
        if not self.operator_username:
            raise LaunchError(
                "extending Slurm sessions needs an operator account (SlurmBase.operator_username)"
            )
        if not self.slurm_job_id:
            raise LaunchError("the session has no Slurm job")
        minutes = max(1, -(-seconds // 60))
        await self.update_time_limit(minutes)
        info = self.last_info
        if info is not None and info.time_left is not None and info.elapsed is not None:
            # Until the next status query, time left follows the new limit.
            left = minutes * 60 - int(info.elapsed + time.monotonic() - self.last_info_at)
            self.last_info = dataclasses.replace(info, time_left=max(0, left))
        return True

    async def fetch_node_addresses(self) -> dict[str, str]:
        """Slurm's NodeAddr of every node, by node name."""
        raise NotImplementedError

    # ---- start -------------------------------------------------------------------------------
    def job_options(self, spec: dict[str, Any]) -> dict[str, Any]:
        """What the session asks Slurm for: cpus, memory_mb, time_limit (minutes), partition, gpu."""
        return job_options(spec, self.partition, self.gpu_partition)

    def sbatch_options(self, spec: dict[str, Any]) -> list[str]:
        return [f"#SBATCH {flag}" for flag in sbatch_flags(self.job_options(spec))]

    async def start(self, spec: dict[str, Any], secret: str) -> int:
        app = self.parent
        assert app is not None, "SpawnerFactory makes every spawner with the app as its parent"
        with open(os.path.join(app.share_dir, "slurm_job.sh")) as f:
            template = f.read()
        secret_file = os.path.join(self.job_dir, ".secret")
        script = template.format(
            job_id=self.job_id,
            job_dir=self.job_dir,
            sbatch_options="\n".join(self.sbatch_options(spec)),
            helper_command=shlex.join(self.helper_command()),
            secret_file=shlex.quote(secret_file),
        )
        # The helper must not end the session at its own clock: Slurm's TIMEOUT is the truth.
        # Its app listens on the node's address, from the map or Slurm as the server's own.
        helper_spec = {
            **spec,
            "time_limit_seconds": None,
            "listen": ON_SLURM_NODE,
            "node_addresses": dict(self.node_addresses),
        }

        def _prepare() -> None:
            self.prepare_job_dir(helper_spec)
            safepath.write_file(self.job_dir, [".secret"], (secret + "\n").encode(), self.account, mode=0o600)
            safepath.write_file(self.job_dir, ["job.sh"], script.encode(), self.account, mode=0o700)

        await asyncio.get_running_loop().run_in_executor(None, _prepare)
        self.shape = self.job_options(spec)
        self.slurm_job_id = await self.submit(spec, script)
        self.submitted_at = time.time()
        self.scheduler_status().tracked.add(self.slurm_job_id)
        self.messages.append(f"Submitted to Slurm as job {self.slurm_job_id}.")
        return self.slurm_job_id

    async def session_host(self, port: int) -> str | None:
        """The address of the node Slurm reports for the running job (asked afresh). Slurm
        cannot tell which process listens on the node, so only the port range is checked for
        these sessions."""
        info = await self.query(newer_than=time.monotonic())
        if info is None or info.state not in RUNNING:
            return None
        return await node_address(self, info.node)

    # ---- status ------------------------------------------------------------------------------
    submitted_at: float | None = None  # UNIX time, kept in the state: it outlives a restart
    noticed_long_wait = False

    async def query(self, newer_than: float | None = None) -> SlurmJob | None:
        """This job as of a batched query started after `newer_than` (default: within the poll
        interval). Raises SchedulerUnavailable when Slurm does not answer."""
        if newer_than is None:
            newer_than = time.monotonic() - self.poll_interval
        status = self.scheduler_status()
        if self.slurm_job_id is None:
            return None
        results = await status.get(
            self.fetch, self.slurm_job_id, newer_than, self.poll_interval, self.max_backoff
        )
        info = results.get(self.slurm_job_id)
        if info is not None:
            self.last_info, self.last_info_at = info, status.started_at
        return info

    @property
    def time_left(self) -> int | None:
        """Seconds left before Slurm's time limit, as of the last query (None: no limit)."""
        info = self.last_info
        if info is None or info.time_left is None or info.state not in RUNNING:
            return None
        return max(0, int(info.time_left - (time.monotonic() - self.last_info_at)))

    def allocated_core_seconds(self) -> float | None:
        """Allocated CPUs × elapsed time: accounting's CPU time for a job found ended, else from
        what squeue last said (None: Slurm never said)."""
        if self.accounted is not None:
            return float(self.accounted.core_seconds)
        info = self.last_info
        if info is None or info.cpus is None or info.elapsed is None:
            return None
        elapsed = info.elapsed
        if info.state in RUNNING:  # it has run on since that query
            elapsed += time.monotonic() - self.last_info_at
        return info.cpus * elapsed

    async def usage(self) -> float | None:
        """Core seconds Slurm allocated to the session, asking once more if it never said."""
        if self.accounted is None and (self.last_info is None or self.last_info.state in PENDING):
            try:
                await self.query()
            except SchedulerUnavailable:
                pass
        return self.allocated_core_seconds()

    def ended_at(self) -> float | None:
        """When Slurm's accounting says the job ended, for a job found ended (else None)."""
        return self.accounted.end if self.accounted is not None else None

    async def fetch_accounting(self, ids: list[int]) -> dict[int, AccountedJob]:
        return parse_sacct(await self.run(*self.accounting_command, *sacct_argv(ids)))

    async def poll(self) -> dict[str, Any] | None:
        return await slurm_status.poll(self)

    async def end_state(self, helper_exit: dict[str, Any]) -> dict[str, Any]:
        return await slurm_status.end_state(self, helper_exit)

    def log_tail(self) -> str:
        """The end of the job's Slurm output file (for jobs whose helper never wrote exit.json)."""
        raw = safepath.read_file(self.job_dir, "slurm.out", LOG_TAIL_BYTES, tail=True)
        return "" if raw is None else raw.decode(errors="replace")

    async def stop(self) -> None:
        if self.slurm_job_id is not None:
            await self.cancel()

    async def reap(self) -> None:
        # The session is finished as far as the server is concerned: stop asking about it.
        if self.slurm_job_id is not None:
            self.scheduler_status().tracked.discard(self.slurm_job_id)
            self.accounting().forget(self.slurm_job_id)


class SlurmSpawner(SlurmBase):
    """Submits with sbatch, checks with squeue and cancels with scancel. sbatch and scancel run
    as the workspace owner (through sudo when the server runs as another account)."""

    async def submit(self, spec: dict[str, Any], script: str) -> int:
        out = await self.run(*self.as_user(), "sbatch", "--parsable", os.path.join(self.job_dir, "job.sh"))
        return int(out.strip().split(";")[0])

    async def fetch(self, ids: list[int]) -> dict[int, SlurmJob]:
        if not ids:
            return {}
        try:
            out = await self.run(
                "squeue", "--states=all", "-h", "-o", SQUEUE_FORMAT, "-j", ",".join(map(str, ids))
            )
        except SchedulerUnavailable as e:
            if "Invalid job id" in str(e):
                return {}  # squeue fails when no id it was given is known any more (all purged)
            raise
        return parse_squeue(out)

    async def cancel(self) -> None:
        await self.run(*self.as_user(), "scancel", str(self.slurm_job_id))

    async def update_time_limit(self, minutes: int) -> None:
        await self.run(
            *self.as_user(self.operator_username),
            "scontrol",
            "update",
            f"JobId={self.slurm_job_id}",
            f"TimeLimit={minutes}",
        )

    async def fetch_node_addresses(self) -> dict[str, str]:
        return parse_node_addresses(await self.run("scontrol", "show", "node", "-o"))

    async def health(self) -> tuple[bool, str] | None:
        try:
            out = await self.run("scontrol", "ping")
        except SchedulerUnavailable as e:
            return False, str(e)
        # "Slurmctld(primary) at <host> is UP": the state after "is", not "UP" anywhere (a host
        # name may contain it while the controller is DOWN). One controller up is enough.
        up = bool(re.search(r"\bis UP\b", out))
        return up, ("Connected successfully." if up else out.strip())
