"""uws/spawners/slurm_accounting.py and slurm_suggestions.py in process: sacct's and sbatch
--test-only's answers parsed, the batched accounting query, a purged or ended job finished with
accounting's state, end time and CPU time, and the suggestion rounds. Slurm is replaced by
canned answers in the shapes its commands print (sacct -X -n -P, sbatch --test-only)."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import datetime
from typing import Any

import pytest

from uws.auth.accounts import Account
from uws.spawners import slurm_suggestions
from uws.spawners.slurm import SchedulerUnavailable, SlurmBase, SlurmJob, SlurmSpawner
from uws.spawners.slurm_accounting import AccountedJob, AccountingQuery, parse_sacct, sacct_argv
from uws.spawners.slurm_query import ENDED
from uws.spawners.slurm_suggestions import (
    halved_shapes,
    meaningfully_earlier,
    parse_test_only,
    resource_options,
)


@pytest.fixture(autouse=True)
def fresh_class_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own batched queries (they are shared per spawner class)."""
    monkeypatch.setattr(SlurmBase, "_status", {})
    monkeypatch.setattr(SlurmBase, "_accounting", {})
    monkeypatch.setattr(slurm_suggestions, "ROUNDS", {})


def local(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def spawner(tmp_path: Any, job_id: int = 7, **kw: Any) -> SlurmSpawner:
    account = Account("uwsunit", os.geteuid(), os.getegid(), frozenset())
    return SlurmSpawner(job_id, account, str(tmp_path), "ipc:///nonexistent/uws-unit", **kw)


# ---- sacct ---------------------------------------------------------------------------------------

SACCT = """\
101|COMPLETED|2026-12-01T10:00:00|2026-12-01T10:05:00|300|2|600|0:0
102|CANCELLED by 0|2026-12-01T10:00:00|2026-12-01T10:01:40|100|4|400|0:15
103|TIMEOUT|2026-12-01T09:00:00|2026-12-01T10:00:01|3601|1|3601|0:0
104|RUNNING|2026-12-01T10:00:00|Unknown|60|1|60|0:0
105|PENDING|Unknown|Unknown|0|0|0|0:0
106_3|COMPLETED|2026-12-01T10:00:00|2026-12-01T10:00:10|10|1|10|0:0
107+0|COMPLETED|2026-12-01T10:00:00|2026-12-01T10:00:10|10|1|10|0:0
108|FAILED|2026-12-01T10:00:00|2026-12-01T10:00:10|ten|1|10|1:0
109|OUT_OF_MEMORY+|2026-12-01T10:00:00|2026-12-01T10:00:10|10|1|10|0:125
101|COMPLETED|2026-12-02T10:00:00|2026-12-02T10:00:30|30|1|30|0:0
not a line
"""


def test_parse_sacct() -> None:
    jobs = parse_sacct(SACCT)
    # The last record of a reused id is the newest; array elements, job parts and lines whose
    # numbers are not numbers are left out.
    assert sorted(jobs) == [101, 102, 103, 104, 105, 109]
    assert jobs[101] == AccountedJob(
        state="COMPLETED",
        start=local("2026-12-02T10:00:00"),
        end=local("2026-12-02T10:00:30"),
        elapsed=30,
        cpus=1,
        core_seconds=30,
        exit_code="0:0",
    )
    assert jobs[102].state == "CANCELLED" and jobs[102].core_seconds == 400
    assert jobs[102].end == local("2026-12-01T10:01:40")
    assert jobs[103].state == "TIMEOUT"
    assert jobs[104].end is None and jobs[105].start is None
    assert jobs[109].state == "OUT_OF_MEMORY"


def test_sacct_asks_for_all_users_allocations_only() -> None:
    argv = sacct_argv([3, 1, 2])
    assert argv[argv.index("-j") + 1] == "3,1,2"
    assert {"-a", "-X", "-n", "-P"} <= set(argv)
    assert argv[argv.index("-o") + 1] == "JobID,State,Start,End,ElapsedRaw,AllocCPUS,CPUTimeRAW,ExitCode"


def canned(answer: str | Exception) -> tuple[Any, list[list[int]]]:
    calls: list[list[int]] = []

    async def fetch(ids: list[int]) -> dict[int, AccountedJob]:
        calls.append(ids)
        if isinstance(answer, Exception):
            raise answer
        return {i: job for i, job in parse_sacct(answer).items() if i in ids}

    return fetch, calls


def test_one_sacct_call_for_every_ended_job_and_final_answers_kept() -> None:
    query = AccountingQuery()
    fetch, calls = canned(SACCT)

    async def go() -> None:
        assert (await query.get(fetch, 102, {101, 103, 104})).state == "CANCELLED"
        assert (await query.get(fetch, 101, set())).core_seconds == 30  # answered already
        assert (await query.get(fetch, 103, set())).state == "TIMEOUT"
        assert calls == [[101, 102, 103, 104]]
        # Still running in accounting (its end not recorded yet): asked again next time.
        assert await query.get(fetch, 104, set()) is None
        assert calls[-1] == [104]
        query.forget(101)
        await query.get(fetch, 101, set())
        assert calls[-1] == [101]

    asyncio.run(go())


def test_an_earlier_job_under_the_same_id_is_not_this_one() -> None:
    query = AccountingQuery()
    fetch, _ = canned(SACCT)
    submitted = local("2026-12-03T00:00:00")  # after job 101's only record ended
    assert asyncio.run(query.get(fetch, 101, set(), submitted_at=submitted)) is None
    assert asyncio.run(query.get(fetch, 101, set(), submitted_at=local("2026-12-02T09:00:00"))) is not None


def test_accounting_down_is_asked_again_later() -> None:
    query = AccountingQuery()
    fetch, calls = canned(SchedulerUnavailable("Slurm accounting storage is disabled"))
    assert asyncio.run(query.get(fetch, 101, set())) is None
    assert asyncio.run(query.get(fetch, 101, set())) is None
    assert len(calls) == 1  # not again within RETRY_SECONDS
    query.retry_at = time.monotonic() - 1
    asyncio.run(query.get(fetch, 101, set()))
    assert len(calls) == 2


def canned_squeue_and_sacct(
    s: SlurmSpawner, squeue: dict[int, SlurmJob], sacct: str
) -> list[tuple[str, ...]]:
    calls: list[tuple[str, ...]] = []

    async def fetch(ids: list[int]) -> dict[int, SlurmJob]:
        return {i: squeue[i] for i in ids if i in squeue}

    async def run(*argv: str, with_stderr: bool = False) -> str:
        calls.append(argv)
        return sacct

    s.fetch = fetch  # type: ignore[method-assign]
    s.run = run  # type: ignore[method-assign]
    return calls


def test_a_purged_job_ends_as_accounting_says(tmp_path: Any) -> None:
    """squeue no longer lists it (MinJobAge passed while the server was down): sacct's state,
    end time and CPU time, not "disappeared" at the server's clock."""
    s = spawner(tmp_path)
    s.slurm_job_id = 102
    s.scheduler_status().tracked.add(102)
    calls = canned_squeue_and_sacct(s, {}, SACCT)
    ended = asyncio.run(s.poll())
    assert ended is not None
    assert ended["reason"] == "stopped" and ended["message"] == ENDED["CANCELLED"][1]
    assert [c[0] for c in calls] == ["sacct"]
    assert s.ended_at() == local("2026-12-01T10:01:40")
    assert asyncio.run(s.usage()) == 400.0
    assert 102 not in s.scheduler_status().tracked


def test_an_ended_job_takes_accounting_over_squeue(tmp_path: Any) -> None:
    """Found ended by the status query after the server was down: squeue's elapsed time is
    what it last knew, accounting's CPU time and end are the scheduler's record; other jobs the
    same query found ended are asked about in the same sacct call."""
    s = spawner(tmp_path)
    s.slurm_job_id = 103
    s.scheduler_status().tracked.update({101, 103, 104})
    squeue = {
        101: SlurmJob(state="COMPLETED", cpus=1, elapsed=30),
        103: SlurmJob(state="TIMEOUT", cpus=1, elapsed=10),
        104: SlurmJob(state="RUNNING"),
    }
    calls = canned_squeue_and_sacct(s, squeue, SACCT)
    assert asyncio.run(s.poll())["reason"] == "time_limit"
    (sacct,) = calls
    assert sacct[sacct.index("-j") + 1] == "101,103"  # not the running 104
    assert asyncio.run(s.usage()) == 3601.0 and s.ended_at() == local("2026-12-01T10:00:01")
    other = spawner(tmp_path, job_id=8)
    other.slurm_job_id = 101
    calls2 = canned_squeue_and_sacct(other, squeue, SACCT)
    asyncio.run(other.poll())
    assert calls2 == [] and asyncio.run(other.usage()) == 30.0  # answered by the first call


def test_without_accounting_the_server_clock_counts(tmp_path: Any) -> None:
    s = spawner(tmp_path, accounting_command=[])
    s.slurm_job_id = 102
    calls = canned_squeue_and_sacct(s, {102: SlurmJob(state="CANCELLED", cpus=4, elapsed=100)}, SACCT)
    assert asyncio.run(s.poll())["reason"] == "stopped"
    assert calls == [] and s.ended_at() is None and asyncio.run(s.usage()) == 400.0


# ---- suggestions -----------------------------------------------------------------------------------


def test_parse_test_only() -> None:
    said = (
        "sbatch: Job 2203 to start at 2026-12-01T15:00:00 using 1 processors on nodes n1 in partition debug\n"
    )
    assert parse_test_only(said) == local("2026-12-01T15:00:00")
    assert parse_test_only("sbatch: error: Requested node configuration is not available") is None
    assert parse_test_only("") is None


def test_halved_shapes_each_alone() -> None:
    shape = {"cpus": 4, "memory_mb": 2048, "time_limit": 60, "partition": "debug"}
    assert halved_shapes(shape) == [
        {**shape, "cpus": 2},
        {**shape, "memory_mb": 1024},
        {**shape, "time_limit": 30},
    ]
    # one CPU, no memory asked for, one minute: nothing to halve
    assert halved_shapes({"cpus": 1, "time_limit": 1}) == []
    assert resource_options({"cpus": 2, "time_limit": 30, "partition": "debug"}) == {
        "num_cpus": 2,
        "time_limit_min": 30,
    }


@pytest.mark.parametrize(
    "start, own_start, earlier",
    [
        (1000.0, 1000.0 + 60, True),  # a minute sooner, on a short wait
        (1000.0, 1000.0 + 59, False),
        (1000.0 + 3000, 1000.0 + 36000, True),  # 9 of 10 hours sooner
        (1000.0 + 34000, 1000.0 + 36000, False),  # 2000 s sooner on a 10-hour wait: under 10 %
        (5000.0, 1000.0, False),  # later
    ],
)
def test_meaningfully_earlier(start: float, own_start: float, earlier: bool) -> None:
    assert meaningfully_earlier(start, own_start, now=1000.0) is earlier


def test_suggestion_round_asks_sbatch_test_only_as_the_owner(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half the CPUs would start now, half the memory or time no sooner than the job itself
    (in an hour): one suggestion, with the options users give; asked again only after
    suggestion_seconds."""
    monkeypatch.setattr(slurm_suggestions.shutil, "which", lambda name: f"/usr/bin/{name}")
    s = spawner(tmp_path, pending_notice_seconds=1.0)
    s.account = Account("uwsother", os.geteuid() + 1, os.getegid(), frozenset())
    s.slurm_job_id = 55
    s.submitted_at = time.time() - 10
    s.shape = {"cpus": 2, "memory_mb": 1000, "time_limit": 120, "partition": "debug"}
    own = datetime.fromtimestamp(time.time() + 3600).isoformat(timespec="seconds")
    now = datetime.fromtimestamp(time.time()).isoformat(timespec="seconds")
    calls: list[tuple[str, ...]] = []

    async def run(*argv: str, with_stderr: bool = False) -> str:
        calls.append(argv)
        assert with_stderr  # sbatch answers on standard error
        start = now if "--cpus-per-task=1" in argv else own
        return f"sbatch: Job 99 to start at {start} using 1 processors on nodes n1 in partition debug\n"

    async def fetch(ids: list[int]) -> dict[int, SlurmJob]:
        return {55: SlurmJob(state="PENDING", reason="Resources", expected_start=own)}

    s.run = run  # type: ignore[method-assign]
    s.fetch = fetch  # type: ignore[method-assign]

    async def go() -> None:
        await s.poll()
        await slurm_suggestions.ROUNDS[SlurmSpawner].task
        await s.poll()  # within suggestion_seconds: not asked again
        await asyncio.sleep(0)

    asyncio.run(go())
    assert len(calls) == 3
    script = os.path.join(s.job_dir, "job.sh")
    assert calls[0] == (
        "sudo", "-n", "-H", "-u", "uwsother", "--", "sbatch", "--test-only",
        "--cpus-per-task=1", "--mem=1000M", "--time=120", "--partition=debug", script,
    )  # fmt: skip
    assert {c[-4] for c in calls[1:]} == {"--mem=500M", "--mem=1000M"}
    assert s.suggestions is not None and len(s.suggestions) == 1
    (suggestion,) = s.suggestions
    assert suggestion["resource_options"] == {"num_cpus": 1, "memory_mb": 1000, "time_limit_min": 120}
    assert suggestion["expected_start"].endswith("Z")


def test_no_suggestions_before_the_notice_or_without_an_estimate(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slurm_suggestions.shutil, "which", lambda name: f"/usr/bin/{name}")
    for notice, estimate in ((0.0, "2026-12-01T10:00:00"), (3600.0, "2026-12-01T10:00:00"), (1.0, "")):
        monkeypatch.setattr(SlurmBase, "_status", {})  # a fresh status query each time
        s = spawner(tmp_path, pending_notice_seconds=notice)
        s.slurm_job_id, s.submitted_at, s.shape = 56, time.time() - 10, {"cpus": 2}

        async def fetch(ids: list[int], estimate: str = estimate) -> dict[int, SlurmJob]:
            return {56: SlurmJob(state="PENDING", expected_start=estimate)}

        s.fetch = fetch  # type: ignore[method-assign]
        asyncio.run(s.poll())
        assert slurm_suggestions.ROUNDS == {}
