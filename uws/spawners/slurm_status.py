"""A Slurm session's status as the server reports it (SlurmBase.poll and end_state): waiting in
the queue, with a note when the wait is longer than usual; running; or ended, and how. How it
ended is told from Slurm's end state (squeue), accounting's record (sacct) for a job squeue
shows ended or no longer lists, and what the session helper recorded (exit.json)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from . import slurm_suggestions
from .slurm_accounting import AccountedJob
from .slurm_query import ENDED, PENDING, SchedulerUnavailable

if TYPE_CHECKING:
    from .slurm import SlurmBase


async def poll(spawner: SlurmBase) -> dict[str, Any] | None:
    """How the session ended, or None while it waits or runs (its status_message says which).
    Raises SchedulerUnavailable when Slurm does not answer: the status is then unknown."""
    if spawner.slurm_job_id is None:
        return {"reason": "disappeared"}
    info = await spawner.query()  # SchedulerUnavailable propagates: status unknown
    if info is None:  # purged from the queue: accounting still knows how it ended
        accounted = await accounted_end(spawner)
        spawner.scheduler_status().tracked.discard(spawner.slurm_job_id)
        if accounted is not None:
            return ended(spawner, accounted.state, spawner.read_exit())
        return spawner.read_exit() or {"reason": "disappeared", "log_tail": spawner.log_tail()}
    state = info.state
    if state in PENDING:
        start = info.expected_start or "not known yet"
        why = f" ({info.reason})" if info.reason not in ("None", "") else ""
        spawner.status_message = f"Waiting in the Slurm queue{why}; expected start: {start}."
        waited = time.time() - spawner.submitted_at if spawner.submitted_at else 0.0
        if spawner.pending_notice_seconds and waited > spawner.pending_notice_seconds:
            spawner.status_message += " The wait is longer than usual."
            if not spawner.noticed_long_wait:
                spawner.noticed_long_wait = True
                spawner.log.warning("Slurm job %s has been pending for %d s", spawner.slurm_job_id, waited)
            slurm_suggestions.consider(spawner, info.expected_start)
        return None
    spawner.status_message = None
    if state in ENDED:
        accounted = await accounted_end(spawner)
        spawner.scheduler_status().tracked.discard(spawner.slurm_job_id)
        return ended(spawner, accounted.state if accounted else state, spawner.read_exit())
    return None  # running, or a state we do not know: keep the job as it is


def ended(spawner: SlurmBase, state: str, helper_exit: dict[str, Any] | None) -> dict[str, Any]:
    """How the session ended, from Slurm's end state and what the helper recorded. The helper
    knows the app's exit code and log; Slurm knows why it stopped the job."""
    reason, message = ENDED[state]
    helper_exit = helper_exit or {}
    told = helper_exit.get("reason")
    if told and (state == "COMPLETED" or (state == "FAILED" and told != "stopped")):
        return {**helper_exit, "slurm_state": state}
    tail = helper_exit.get("log_tail") or spawner.log_tail()
    return {"reason": reason, "message": message, "log_tail": tail, "slurm_state": state}


async def end_state(spawner: SlurmBase, helper_exit: dict[str, Any]) -> dict[str, Any]:
    """For a helper that reported it was signalled: wait (briefly) for Slurm's end state."""
    deadline = time.monotonic() + spawner.end_state_wait
    while time.monotonic() < deadline:
        asked = time.monotonic()
        try:
            info = await spawner.query(newer_than=asked)
        except SchedulerUnavailable:
            break
        if info is None or info.state in ENDED:
            # Accounting's record too, as poll takes it: the session's end time and core hours
            # are Slurm's, not the moment this server heard of the end (it may have been down).
            accounted = await accounted_end(spawner)
            spawner.scheduler_status().tracked.discard(spawner.slurm_job_id)
            state = accounted.state if accounted else info.state if info else None
            return ended(spawner, state, helper_exit) if state in ENDED else helper_exit
        await asyncio.sleep(min(1.0, spawner.poll_interval))
    return helper_exit


async def accounted_end(spawner: SlurmBase) -> AccountedJob | None:
    """The job's accounting record (kept as spawner.accounted), for a job squeue shows ended or
    no longer lists; asked in one sacct call with the other jobs the last status query found so.
    None without accounting, or before it has recorded the end."""
    if spawner.slurm_job_id is None or not spawner.accounting_command:
        return None
    also = spawner.scheduler_status().ended_or_gone()
    accounting = spawner.accounting()
    spawner.accounted = await accounting.get(
        spawner.fetch_accounting, spawner.slurm_job_id, also, spawner.submitted_at
    )
    return spawner.accounted
