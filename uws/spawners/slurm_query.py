"""What Slurm says about a job (SlurmJob, its states and how they end a session), and the batched
status query of a kind of Slurm spawner: one query for all of the server's jobs, shared by their
sessions, with backoff when the scheduler does not answer."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .base import LaunchError

PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED"}
RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
# Slurm end state -> (how the session ended, what the user reads). Anything else is unknown.
ENDED = {
    "COMPLETED": ("completed", "The session finished."),
    "CANCELLED": ("stopped", "The session was cancelled in Slurm (scancel or an administrator)."),
    "TIMEOUT": ("time_limit", "The session reached its Slurm time limit; start it again with a longer one."),
    "FAILED": ("failed", "The session failed in Slurm; see its log."),
    "NODE_FAIL": ("failed", "The node running the session failed; start it again."),
    "OUT_OF_MEMORY": ("failed", "The session ran out of memory; start it again with more memory."),
    "BOOT_FAIL": ("failed", "The node could not boot for the session; start it again."),
    "DEADLINE": ("failed", "The session missed its Slurm deadline; start it again."),
    "PREEMPTED": ("failed", "The session was preempted by a higher-priority job; start it again."),
    "LAUNCH_FAILED": ("failed", "Slurm could not launch the session; start it again."),
    "SPECIAL_EXIT": ("failed", "The session ended with a special exit state in Slurm."),
}


@dataclass
class SlurmJob:
    """One job as the scheduler reported it, whichever interface asked."""

    state: str
    reason: str = ""
    expected_start: str = ""  # pending jobs: Slurm's estimate, as text
    time_left: int | None = None  # seconds; None: no limit or not known
    cpus: int | None = None  # allocated CPUs
    elapsed: float | None = None  # seconds the allocation has run so far (or ran in all)
    node: str = ""  # the node it runs on, as Slurm names it (sessions ask for one node)


def parse_duration(text: str) -> int | None:
    """Slurm's [days-][hours:]minutes:seconds (squeue %L, %M) in seconds; None for UNLIMITED etc."""
    text = text.strip()
    days = 0
    if "-" in text:
        head, _, text = text.partition("-")
        if not head.isdigit():
            return None
        days = int(head)
    parts = text.split(":")
    if not parts or not all(p.isdigit() for p in parts) or len(parts) > 3:
        return None
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    if len(parts) == 1:  # minutes only
        seconds *= 60
    return days * 86400 + seconds


SQUEUE_FORMAT = "%i|%T|%r|%L|%S|%C|%M|%N"


def parse_squeue(out: str) -> dict[int, SlurmJob]:
    """squeue -h -o SQUEUE_FORMAT: %C allocated CPUs; %M time used; %L time left; %S (expected)
    start; %N nodes."""
    results = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 8 or not parts[0].isdigit():
            continue
        job_id, state, reason, left, start, cpus, used, node = parts
        state = state.split()[0].rstrip("+")
        results[int(job_id)] = SlurmJob(
            state=state,
            reason=reason,
            expected_start=start if start not in ("N/A", "Unknown", "") else "",
            time_left=parse_duration(left),
            cpus=int(cpus) if cpus.isdigit() and state not in PENDING else None,
            elapsed=parse_duration(used) if state not in PENDING else None,
            node=node.strip() if state in RUNNING else "",
        )
    return results


def parse_slurm_time(text: str) -> float | None:
    """A time as Slurm's commands print it (YYYY-MM-DDTHH:MM:SS, the cluster's local time) as
    epoch seconds; None for Unknown, None, N/A and anything else."""
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        return None


class SchedulerUnavailable(LaunchError):
    """The scheduler did not answer, or refused; the message says what it said."""


class SchedulerStatus:
    """The batched status query of one kind of Slurm spawner, shared by all its sessions: at most
    one query runs at a time, a fresh enough answer is reused, and failures back off."""

    def __init__(self) -> None:
        self.tracked: set[int] = set()
        self.results: dict[int, SlurmJob] = {}
        self.covered: set[int] = set()  # the ids the last answer asked about
        self.started_at = -math.inf  # monotonic start of the last answered query
        self.failures = 0
        self.retry_at = 0.0
        self.last_error = ""
        self._lock: asyncio.Lock | None = None

    def ended_or_gone(self) -> set[int]:
        """The tracked jobs that the last answer showed ended, or did not list (purged)."""
        return {
            i for i in self.covered & self.tracked if i not in self.results or self.results[i].state in ENDED
        }

    async def get(
        self, fetch: Any, job_id: int, newer_than: float, interval: float, max_backoff: float
    ) -> dict[int, SlurmJob]:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.started_at >= newer_than and job_id in self.covered:
                return self.results
            started = time.monotonic()
            if started < self.retry_at:
                wait = math.ceil(self.retry_at - started)
                raise SchedulerUnavailable(f"{self.last_error} (retrying in {wait} s)")
            asked = set(self.tracked) | {job_id}
            try:
                results = await fetch(sorted(asked))
            except SchedulerUnavailable as e:
                self.failures += 1
                delay = min(max_backoff, interval * 2 ** (self.failures - 1))
                self.retry_at = time.monotonic() + delay
                self.last_error = str(e)
                raise SchedulerUnavailable(
                    f"{e} (attempt {self.failures}; retrying in {math.ceil(delay)} s)"
                ) from None
            self.failures, self.retry_at = 0, 0.0
            self.results, self.covered, self.started_at = results, asked, started
            return results
