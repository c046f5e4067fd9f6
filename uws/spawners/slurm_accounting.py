"""Slurm's accounting (sacct): how a job ended, when, and the core seconds it was allocated, for
jobs the server did not see end (it was down, or squeue no longer lists them).

squeue forgets a job MinJobAge seconds after it ends; slurmdbd keeps it. A session that ended
while the server was down is therefore finished with the scheduler's own end state, end time and
CPU time (CPUTimeRAW: allocated CPUs × elapsed seconds) instead of the server's clock. One sacct
call answers for every job found ended in a status query (never one call per job); where sacct
cannot answer (a cluster without accounting) the server falls back to what squeue said, or its
own clock, and asks sacct again only after `RETRY_SECONDS`.

SlurmRestSpawner asks sacct too: slurmrestd 22.05 serves accounting only with its dbv0.0.38
plugin, one job per request, while one sacct call covers all of them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .slurm_query import ENDED, SchedulerUnavailable, parse_slurm_time

log = logging.getLogger("uws.spawners")

# sacct's fields, in this order (-P: separated by |; -X: the allocation only, not its steps).
SACCT_FIELDS = "JobID,State,Start,End,ElapsedRaw,AllocCPUS,CPUTimeRAW,ExitCode"
# After sacct failed (no accounting, slurmdbd down), it is asked again only this much later.
RETRY_SECONDS = 60.0


@dataclass
class AccountedJob:
    """One job as Slurm's accounting recorded it."""

    state: str  # base state, e.g. CANCELLED (sacct's "CANCELLED by 0" without the uid)
    start: float | None  # epoch seconds
    end: float | None
    elapsed: int  # seconds
    cpus: int
    core_seconds: int  # CPUTimeRAW
    exit_code: str = ""


def sacct_argv(ids: list[int]) -> list[str]:
    """sacct's arguments for these jobs: all users' (-a), allocations only, parsable, no header."""
    return ["-a", "-X", "-n", "-P", "-o", SACCT_FIELDS, "-j", ",".join(map(str, ids))]


def parse_sacct(out: str) -> dict[int, AccountedJob]:
    """`sacct -X -n -P -o JobID,State,Start,End,ElapsedRaw,AllocCPUS,CPUTimeRAW,ExitCode`.
    Lines that are not one plain job (array elements "12_3", heterogeneous parts "12+0", steps)
    or that do not parse are left out. With several records of one id (job ids reused after a
    reset), sacct prints the newest last: the last one wins."""
    jobs: dict[int, AccountedJob] = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 8 or not parts[0].isdigit():
            continue
        job_id, state, start, end, elapsed, cpus, cpu_time, exit_code = parts
        if not (elapsed.isdigit() and cpus.isdigit() and cpu_time.isdigit()):
            continue
        jobs[int(job_id)] = AccountedJob(
            state=state.split()[0].rstrip("+") if state.strip() else "",
            start=parse_slurm_time(start),
            end=parse_slurm_time(end),
            elapsed=int(elapsed),
            cpus=int(cpus),
            core_seconds=int(cpu_time),
            exit_code=exit_code.strip(),
        )
    return jobs


class AccountingQuery:
    """The accounting of one kind of Slurm spawner's ended jobs: one sacct call for all the jobs
    that a status query found ended or gone, its final answers kept until the job is forgotten."""

    def __init__(self) -> None:
        self.results: dict[int, AccountedJob] = {}
        self.retry_at = 0.0  # monotonic; after a failure
        self._lock: asyncio.Lock | None = None

    async def get(
        self,
        fetch: Callable[[list[int]], Awaitable[dict[int, AccountedJob]]],
        job_id: int,
        also: set[int],
        submitted_at: float | None = None,
    ) -> AccountedJob | None:
        """Job `job_id`'s record once it has ended (None: not known, or not ended there yet),
        asking in the same call about the jobs in `also` not yet answered for. A record that
        ended before `submitted_at` is an earlier job under the same id (after the cluster's
        job ids were reset), not this one."""
        accounted = await self._get(fetch, job_id, also)
        if accounted is not None and accounted.end and submitted_at and accounted.end < submitted_at:
            return None
        return accounted

    async def _get(
        self,
        fetch: Callable[[list[int]], Awaitable[dict[int, AccountedJob]]],
        job_id: int,
        also: set[int],
    ) -> AccountedJob | None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if job_id in self.results:
                return self.results[job_id]
            if time.monotonic() < self.retry_at:
                return None
            wanted = sorted(({job_id} | also) - self.results.keys())
            try:
                answered = await fetch(wanted)
            except SchedulerUnavailable as e:
                self.retry_at = time.monotonic() + RETRY_SECONDS
                log.warning("Slurm accounting did not answer (%s); asking again in %d s", e, RETRY_SECONDS)
                return None
            # Only a final record is kept: one still running there is asked about again.
            self.results.update({i: job for i, job in answered.items() if job.state in ENDED})
            return self.results.get(job_id)

    def forget(self, job_id: int) -> None:
        self.results.pop(job_id, None)
