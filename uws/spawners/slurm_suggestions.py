"""What would start sooner: for a Slurm session waiting longer than pending_notice_seconds, Slurm
is asked (`sbatch --test-only`, as the session's owner, with the session's own job script) when
smaller shapes of it would start: half the CPUs, half the memory, half the time, each alone.
The shapes that would start meaningfully earlier than Slurm's expected start for the job itself
become the job's `current_job_details.suggestions`: [{"resource_options", "expected_start"}].

"Meaningfully earlier": at least MIN_GAIN_SECONDS (60 s) sooner, and at least GAIN_FRACTION
(10 %) of the job's remaining wait sooner; a job whose own start Slurm has not estimated yet is
not asked about. Each job is asked about at most once per SlurmBase.suggestion_seconds; the jobs
due are asked about together, in one round per spawner class, with at most CONCURRENCY sbatch
calls running at once, apart from the status query.

slurmrestd 22.05 (OpenAPI v0.0.38) cannot test a job without submitting it, so
SlurmRestSpawner uses sbatch --test-only too where sbatch is installed, and makes no
suggestions where it is not.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..utils import UTC, isoformat
from .slurm_options import sbatch_flags
from .slurm_query import SchedulerUnavailable, parse_slurm_time

if TYPE_CHECKING:
    from .slurm import SlurmBase

log = logging.getLogger("uws.spawners")

MIN_GAIN_SECONDS = 60.0
GAIN_FRACTION = 0.1
CONCURRENCY = 4
# The shape's fields that are halved, and the resource option each is, as users give them.
HALVED = {"cpus": "num_cpus", "memory_mb": "memory_mb", "time_limit": "time_limit_min"}
# sbatch --test-only's answer (on standard error): "sbatch: Job 12 to start at
# 2026-12-01T15:00:00 using 1 processors on nodes n1 in partition debug"
TEST_ONLY_ANSWER = re.compile(r"\bJob \d+ to start at (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\b")


def parse_test_only(text: str) -> float | None:
    """The start time (epoch seconds) in sbatch --test-only's answer; None when it gives none."""
    match = TEST_ONLY_ANSWER.search(text)
    return parse_slurm_time(match.group(1)) if match else None


def halved_shapes(shape: dict[str, Any]) -> list[dict[str, Any]]:
    """The shape with its CPUs, its memory or its time limit halved (each alone): those it has,
    and that can be halved (at least 2)."""
    return [
        {**shape, key: shape[key] // 2}
        for key in HALVED
        if isinstance(shape.get(key), int) and not isinstance(shape[key], bool) and shape[key] >= 2
    ]


def resource_options(shape: dict[str, Any]) -> dict[str, Any]:
    """A shape as the resource options a user starts a session with (num_cpus, memory_mb,
    time_limit_min)."""
    return {option: shape[key] for key, option in HALVED.items() if key in shape}


def meaningfully_earlier(start: float, own_start: float, now: float) -> bool:
    """Whether starting at `start` beats the job's own expected start by enough to matter."""
    wait = max(0.0, own_start - now)
    return own_start - start >= max(MIN_GAIN_SECONDS, GAIN_FRACTION * wait)


def can_test(spawner: SlurmBase) -> bool:
    """Whether the spawner can ask: a shape kept from its start, and sbatch to ask with."""
    return bool(spawner.shape) and shutil.which("sbatch") is not None


async def test_start(spawner: SlurmBase, shape: dict[str, Any]) -> float | None:
    """When Slurm would start the session's job script with `shape` (None: it does not say)."""
    script = os.path.join(spawner.job_dir, "job.sh")
    argv = [*spawner.as_user(), "sbatch", "--test-only", *sbatch_flags(shape), script]
    try:
        return parse_test_only(await spawner.run(*argv, with_stderr=True))
    except SchedulerUnavailable as e:  # e.g. a shape no partition can hold
        log.info("sbatch --test-only for Slurm job %s: %s", spawner.slurm_job_id, e)
        return None


async def suggestions_for(
    spawner: SlurmBase, own_start: float, limit: asyncio.Semaphore
) -> list[dict[str, Any]]:
    """The smaller shapes that would start meaningfully earlier than `own_start`, soonest first."""
    assert spawner.shape is not None

    async def ask(shape: dict[str, Any]) -> float | None:
        async with limit:
            return await test_start(spawner, shape)

    shapes = halved_shapes(spawner.shape)
    starts = await asyncio.gather(*(ask(shape) for shape in shapes))
    now = time.time()
    found = [
        (max(start, now), shape)
        for shape, start in zip(shapes, starts, strict=True)
        if start is not None and meaningfully_earlier(start, own_start, now)
    ]
    return [
        {
            "resource_options": resource_options(shape),
            "expected_start": isoformat(datetime.fromtimestamp(start, UTC)),
        }
        for start, shape in sorted(found, key=lambda item: item[0])
    ]


class SuggestionRounds:
    """The suggestion queries of one kind of Slurm spawner: jobs due are collected as the status
    poll meets them, and asked about together in one round at a time."""

    def __init__(self) -> None:
        self.due: dict[int, tuple[SlurmBase, float]] = {}  # Slurm job id -> (spawner, own start)
        self.task: asyncio.Task[None] | None = None

    def want(self, spawner: SlurmBase, own_start: float) -> None:
        assert spawner.slurm_job_id is not None
        self.due[spawner.slurm_job_id] = (spawner, own_start)
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self.run_rounds())

    async def run_rounds(self) -> None:
        limit = asyncio.Semaphore(CONCURRENCY)
        while self.due:
            batch, self.due = self.due, {}

            async def one(spawner: SlurmBase, own_start: float) -> None:
                try:
                    spawner.suggestions = await suggestions_for(spawner, own_start, limit)
                except Exception:
                    log.exception(
                        "Asking Slurm what would start sooner than job %s failed", spawner.slurm_job_id
                    )

            await asyncio.gather(*(one(spawner, start) for spawner, start in batch.values()))


ROUNDS: dict[type, SuggestionRounds] = {}  # one per spawner class


def consider(spawner: SlurmBase, expected_start: str) -> None:
    """For the status poll of a job that has waited longer than pending_notice_seconds: ask
    about it in the next round, unless it was asked about within suggestion_seconds or Slurm has
    no estimate of its own start yet."""
    now = time.monotonic()
    if not spawner.suggestion_seconds or now - spawner.suggested_at < spawner.suggestion_seconds:
        return
    own_start = parse_slurm_time(expected_start) if expected_start else None
    if own_start is None or not can_test(spawner):
        return
    spawner.suggested_at = now
    ROUNDS.setdefault(type(spawner), SuggestionRounds()).want(spawner, own_start)
