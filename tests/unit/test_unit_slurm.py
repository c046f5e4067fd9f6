"""uws/spawners/slurm.py and slurm_status.py in process: squeue's output parsed, Slurm's states
mapped to how a session ended, the batched status query and its backoff, the options a session
asks Slurm for, and the core seconds it is charged. Slurm itself is replaced by canned answers in the shapes its
documentation gives (squeue -o "%i|%T|%r|%L|%S|%C|%M|%N", sbatch --parsable, scontrol ping), and
the node a running session is reached at."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import pytest

from uws.auth.accounts import Account
from uws.spawners import slurm_nodes
from uws.spawners.slurm import (
    LOG_TAIL_BYTES,
    PENDING,
    RUNNING,
    SchedulerStatus,
    SchedulerUnavailable,
    SlurmBase,
    SlurmJob,
    SlurmSpawner,
)
from uws.spawners.slurm_query import ENDED, parse_duration
from uws.spawners.slurm_status import ended as slurm_ended


@pytest.fixture(autouse=True)
def fresh_scheduler_status(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own batched-query state (it is shared per spawner class)."""
    monkeypatch.setattr(SlurmBase, "_status", {})


def account(uid: int | None = None) -> Account:
    uid = os.geteuid() if uid is None else uid
    return Account("uwsunit", uid, os.getegid(), frozenset())


def spawner(tmp_path: Any, cls: type = SlurmSpawner, uid: int | None = None, **kw: Any) -> Any:
    """A spawner that never asks the real sacct (the accounting tests give it canned answers)."""
    kw.setdefault("accounting_command", [])
    return cls(7, account(uid), str(tmp_path), "ipc:///nonexistent/uws-unit", **kw)


def canned_run(s: Any, answer: str | Exception) -> list[tuple[str, ...]]:
    """Replace the spawner's command runner; returns the list of argv it was called with."""
    calls: list[tuple[str, ...]] = []

    async def run(*argv: str) -> str:
        calls.append(argv)
        if isinstance(answer, Exception):
            raise answer
        return answer

    s.run = run
    return calls


def canned_fetch(s: Any, answers: dict[int, SlurmJob]) -> list[list[int]]:
    calls: list[list[int]] = []

    async def fetch(ids: list[int]) -> dict[int, SlurmJob]:
        calls.append(ids)
        return {i: answers[i] for i in ids if i in answers}

    s.fetch = fetch
    return calls


# ---- parse_duration: squeue's %L / %M ---------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("0:00", 0),  # minutes:seconds, as squeue prints short times
        ("5:03", 5 * 60 + 3),
        ("59:59", 59 * 60 + 59),
        ("1:00:00", 3600),  # hours:minutes:seconds
        ("12:34:56", 12 * 3600 + 34 * 60 + 56),
        ("1-00:00:00", 86400),  # days-hours:minutes:seconds
        ("2-03:04:05", 2 * 86400 + 3 * 3600 + 4 * 60 + 5),
        ("  7:30\n", 7 * 60 + 30),
        ("45", 45 * 60),  # a bare number is minutes, as in Slurm's time format
    ],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["UNLIMITED", "NOT_SET", "INVALID", "N/A", "", "x-1:00", "1:2:3:4", "-5:00"])
def test_parse_duration_without_a_time(text: str) -> None:
    assert parse_duration(text) is None


# ---- the state tables ---------------------------------------------------------------------------


def test_state_sets_do_not_overlap() -> None:
    assert not PENDING & RUNNING
    assert not PENDING & set(ENDED)
    assert not RUNNING & set(ENDED)


@pytest.mark.parametrize(
    "state, reason",
    [
        ("COMPLETED", "completed"),
        ("CANCELLED", "stopped"),
        ("TIMEOUT", "time_limit"),
        ("FAILED", "failed"),
        ("NODE_FAIL", "failed"),
        ("OUT_OF_MEMORY", "failed"),
        ("BOOT_FAIL", "failed"),
        ("DEADLINE", "failed"),
        ("PREEMPTED", "failed"),
    ],
)
def test_slurm_end_states_map_to_session_endings(tmp_path: Any, state: str, reason: str) -> None:
    s = spawner(tmp_path)
    ended = slurm_ended(s, state, None)
    assert ended["reason"] == reason and ended["slurm_state"] == state
    assert ended["message"] and ended["log_tail"] == ""


def test_end_messages_say_what_to_do() -> None:
    assert "time limit" in ENDED["TIMEOUT"][1] and "longer" in ENDED["TIMEOUT"][1]
    assert "memory" in ENDED["OUT_OF_MEMORY"][1]
    assert "preempted" in ENDED["PREEMPTED"][1]


# ---- SlurmSpawner.fetch: squeue -------------------------------------------------------------------

SQUEUE_FORMAT = "%i|%T|%r|%L|%S|%C|%M|%N"  # %N: the nodes, to know where a session runs
SQUEUE = "\n".join(
    [
        "101|RUNNING|None|1:58:30|2026-12-01T07:00:00|4|1:30|r001",
        "102|PENDING|Priority|2:00:00|2026-12-01T09:30:00|2|0:00|",  # no node yet
        "103|PENDING|Resources|1-00:00:00|N/A|1|0:00|",
        "104|COMPLETED|None|0:00|2026-12-01T06:00:00|2|12:34|r002",
        "105|RUNNING|None|UNLIMITED|2026-12-01T05:00:00|8|1-02:00:00|r[003-004]",  # two nodes
        "106|CANCELLED by 1000|None|0:00|2026-12-01T06:30:00|1|0:05|r005",
        "107_3|RUNNING|None|10:00|2026-12-01T07:00:00|1|1:00|r006",  # an array task: not ours
        "JOBID|STATE|REASON|TIME_LEFT|START_TIME|CPUS|TIME|NODELIST",  # a header line: skipped
        "108|RUNNING|None",  # truncated: skipped
        "109|RUNNING|None|10:00|2026-12-01T07:00:00|1|1:00",  # the old 7 fields: skipped
        "",
    ]
)
IDS = [101, 102, 103, 104, 105, 106, 109]


def test_fetch_parses_squeue(tmp_path: Any) -> None:
    s = spawner(tmp_path)
    calls = canned_run(s, SQUEUE)
    jobs = asyncio.run(s.fetch(IDS))
    assert calls == [("squeue", "--states=all", "-h", "-o", SQUEUE_FORMAT, "-j", ",".join(map(str, IDS)))]
    assert SQUEUE_FORMAT.count("|") == 7 and SQUEUE_FORMAT.endswith("|%N")
    assert set(jobs) == {101, 102, 103, 104, 105, 106}
    assert jobs[101] == SlurmJob(
        state="RUNNING",
        reason="None",
        expected_start="2026-12-01T07:00:00",
        time_left=3600 + 58 * 60 + 30,
        cpus=4,
        elapsed=90,
        node="r001",
    )
    # pending: Slurm's estimate of the start; nothing allocated, nothing elapsed, no node
    assert jobs[102] == SlurmJob(
        state="PENDING",
        reason="Priority",
        expected_start="2026-12-01T09:30:00",
        time_left=7200,
        cpus=None,
        elapsed=None,
        node="",
    )
    assert jobs[103].expected_start == "" and jobs[103].time_left == 86400 and jobs[103].reason == "Resources"
    assert jobs[104].state == "COMPLETED" and jobs[104].elapsed == 12 * 60 + 34 and jobs[104].cpus == 2
    assert jobs[105].time_left is None and jobs[105].elapsed == 86400 + 2 * 3600
    assert jobs[106].state == "CANCELLED"  # "CANCELLED by <uid>" as sacct-style output says it


def test_fetch_keeps_the_node_of_running_jobs_only(tmp_path: Any) -> None:
    """Only a running job's node is where its session is; an ended job's node is not kept."""
    s = spawner(tmp_path)
    canned_run(s, SQUEUE)
    jobs = asyncio.run(s.fetch(IDS))
    nodes = {line.split("|")[0]: line.split("|")[-1] for line in SQUEUE.splitlines() if line.count("|") == 7}
    for job_id, job in jobs.items():
        expected = nodes[str(job_id)] if job.state in RUNNING else ""
        assert job.node == expected, job_id
    assert jobs[101].node == "r001" and jobs[105].node == "r[003-004]"
    assert jobs[104].node == jobs[106].node == ""


def test_fetch_strips_the_node_field(tmp_path: Any) -> None:
    s = spawner(tmp_path)
    canned_run(s, "5|RUNNING|None|10:00|2026-12-01T07:00:00|1|1:00|  r001  \n")
    assert asyncio.run(s.fetch([5]))[5].node == "r001"


# ---- the node a session is reached at -------------------------------------------------------------


# `scontrol show node -o`, one line per node as Slurm 22.05 prints it (shortened): r002 has no
# NodeAddr of its own (Slurm then gives its name); r005's Reason mentions a NodeAddr, which is
# not its address; r009 is a node whose line lacks the field.
SCONTROL_NODES = "\n".join(
    [
        "NodeName=r001 Arch=x86_64 CoresPerSocket=1  CPUAlloc=4 CPUTot=8 NodeAddr=10.1.0.1 "
        "NodeHostName=r001 Version=22.05.8 OS=Linux 6.1.0-18-amd64 #1 SMP Debian RealMemory=64000",
        "NodeName=r002 Arch=x86_64 CPUTot=8 NodeAddr=r002 NodeHostName=r002 Version=22.05.8",
        "NodeName=r005 CPUTot=8 NodeAddr=10.1.0.5 NodeHostName=r005 State=DRAIN "
        "Reason=moved, was NodeAddr=10.9.9.9 [root@2026-12-01T06:00:00]",
        "NodeName=r009 CPUTot=8",
        "",
    ]
)


def canned_commands(s: Any, answers: dict[str, str]) -> list[tuple[str, ...]]:
    """Replace the spawner's command runner with answers by command name (squeue, scontrol)."""
    calls: list[tuple[str, ...]] = []

    async def run(*argv: str) -> str:
        calls.append(argv)
        return answers[argv[0]]

    s.run = run
    return calls


def test_node_addresses_from_scontrol() -> None:
    from uws.sessions.helper_node import parse_node_addresses

    assert parse_node_addresses(SCONTROL_NODES) == {"r001": "10.1.0.1", "r002": "r002", "r005": "10.1.0.5"}


@pytest.mark.parametrize(
    "job_id, host",
    [
        (101, "10.1.0.1"),  # running: its node's NodeAddr
        (102, None),  # pending: nowhere yet
        (104, None),  # ended
        (105, None),  # two nodes: not one host to connect to
        (110, None),  # not in squeue's answer at all
    ],
)
def test_session_host_asks_squeue_afresh(tmp_path: Any, job_id: int, host: str | None) -> None:
    s = spawner(tmp_path)
    s.slurm_job_id = job_id
    s.last_info, s.last_info_at = SlurmJob(state="RUNNING", node="stale"), time.monotonic()
    calls = canned_commands(s, {"squeue": SQUEUE, "scontrol": SCONTROL_NODES})
    assert asyncio.run(s.session_host(8888)) == host
    assert calls[0][0] == "squeue" and calls[0][-1] == str(job_id)  # not answered from the last query


@pytest.fixture
def fresh_node_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slurm_nodes, "CACHES", {})


def running_on(s: Any, node: str) -> None:
    async def fetch(ids: list[int]) -> dict[int, SlurmJob]:
        return {7: SlurmJob(state="RUNNING", node=node)}

    s.slurm_job_id, s.fetch = 7, fetch


@pytest.mark.usefixtures("fresh_node_addresses")
def test_node_addr_is_asked_once_for_all_nodes_and_again_for_a_new_one(tmp_path: Any) -> None:
    """One `scontrol show node` answers for every node (cached); a node it did not list is asked
    about again (added since); a node Slurm gives no address for is not reached."""
    s = spawner(tmp_path)
    calls = canned_commands(s, {"scontrol": SCONTROL_NODES})
    for node, address in (("r001", "10.1.0.1"), ("r002", "r002"), ("r005", "10.1.0.5"), ("r001", "10.1.0.1")):
        running_on(s, node)
        assert asyncio.run(s.session_host(8888)) == address
    assert calls == [("scontrol", "show", "node", "-o")]
    running_on(s, "r009")
    assert asyncio.run(s.session_host(8888)) is None
    assert len(calls) == 2


@pytest.mark.usefixtures("fresh_node_addresses")
def test_node_addr_cache_expires(tmp_path: Any) -> None:
    s = spawner(tmp_path, node_address_seconds=0)
    calls = canned_commands(s, {"scontrol": SCONTROL_NODES})
    running_on(s, "r001")
    for _ in range(2):
        assert asyncio.run(s.session_host(8888)) == "10.1.0.1"
    assert len(calls) == 2


@pytest.mark.usefixtures("fresh_node_addresses")
def test_node_address_map_is_the_whole_truth(tmp_path: Any) -> None:
    """With a map, Slurm's NodeAddr is not asked: a node the map lists is reached at its
    address, one it does not list (though Slurm knows it) nowhere."""
    s = spawner(tmp_path, node_addresses={"r001": "192.168.7.1", "r002": "r002.ib.cluster"})
    calls = canned_commands(s, {"scontrol": SCONTROL_NODES})
    for node, address in (("r001", "192.168.7.1"), ("r002", "r002.ib.cluster"), ("r005", None)):
        running_on(s, node)
        assert asyncio.run(s.session_host(8888)) == address
    assert calls == []


@pytest.mark.usefixtures("fresh_node_addresses")
@pytest.mark.parametrize(
    "node", ["", "r[003-004]", "r001,r002", "-r001", ".r001", "r 001", "r001:8888", "a" * 254]
)
def test_node_lists_and_malformed_names_are_reached_nowhere(tmp_path: Any, node: str) -> None:
    s = spawner(tmp_path)
    calls = canned_commands(s, {"scontrol": SCONTROL_NODES.replace("r001", node)})
    running_on(s, node)
    assert asyncio.run(s.session_host(8888)) is None
    assert calls == []


@pytest.mark.usefixtures("fresh_node_addresses")
@pytest.mark.parametrize("address", ["", "10.1.0.1:8888", "http://r001", "r001/x", "r001,r002", "-r"])
def test_an_address_from_slurm_that_is_not_one_is_refused(tmp_path: Any, address: str) -> None:
    s = spawner(tmp_path)
    canned_commands(s, {"scontrol": f"NodeName=r001 NodeAddr={address} NodeHostName=r001"})
    running_on(s, "r001")
    assert asyncio.run(s.session_host(8888)) is None


@pytest.mark.parametrize(
    "mapping",
    [
        {"r001": "10.1.0.1:80"},
        {"r001": "http://10.1.0.1"},
        {"r001": ""},
        {"r[1-2]": "10.1.0.1"},
        {"r 1": "x"},
    ],
)
def test_node_address_map_refuses_what_is_not_a_node_and_an_address(tmp_path: Any, mapping: dict) -> None:
    from traitlets import TraitError

    with pytest.raises(TraitError, match="node_addresses maps Slurm node names"):
        spawner(tmp_path, node_addresses=mapping)
    assert spawner(tmp_path, node_addresses={"r001": "fd00::7", "r002": "r002.ib"}).node_addresses


def test_job_json_tells_the_helper_to_listen_on_the_node(tmp_path: Any) -> None:
    """The helper gets the map (or none: Slurm's NodeAddr) in job.json, to listen where the
    server will connect."""
    from traitlets.config import Configurable

    class App(Configurable):
        share_dir = os.path.join(os.path.dirname(__file__), "..", "..", "share", "uws")

    s = spawner(tmp_path, node_addresses={"r001": "192.168.7.1"}, parent=App())
    canned_run(s, "41\n")
    asyncio.run(s.start({"job_id": 7, "command": ["true"]}, "secret\ntoken"))
    with open(os.path.join(s.job_dir, "job.json")) as f:
        job = json.load(f)
    assert job["listen"] == "slurm_node" and job["node_addresses"] == {"r001": "192.168.7.1"}


def test_session_host_of_a_job_never_submitted(tmp_path: Any) -> None:
    s = spawner(tmp_path)
    calls = canned_run(s, SQUEUE)
    assert asyncio.run(s.session_host(8888)) is None and calls == []


def test_fetch_asks_nothing_for_no_ids(tmp_path: Any) -> None:
    s = spawner(tmp_path)
    calls = canned_run(s, SQUEUE)
    assert asyncio.run(s.fetch([])) == {} and calls == []


def test_fetch_all_ids_purged_is_an_empty_answer(tmp_path: Any) -> None:
    s = spawner(tmp_path)
    canned_run(s, SchedulerUnavailable("slurm_load_jobs error: Invalid job id specified"))
    assert asyncio.run(s.fetch([5])) == {}


def test_fetch_other_errors_mean_unknown(tmp_path: Any) -> None:
    s = spawner(tmp_path)
    canned_run(s, SchedulerUnavailable("slurm_load_jobs error: Unable to contact slurm controller"))
    with pytest.raises(SchedulerUnavailable, match="Unable to contact"):
        asyncio.run(s.fetch([5]))


def test_submit_reads_sbatch_parsable(tmp_path: Any) -> None:
    s = spawner(tmp_path)
    calls = canned_run(s, "4242;cluster\n")
    assert asyncio.run(s.submit({}, "#!/bin/bash\n")) == 4242
    assert calls == [("sbatch", "--parsable", os.path.join(str(tmp_path), ".7", "job.sh"))]
    canned_run(s, "4243\n")
    assert asyncio.run(s.submit({}, "")) == 4243


def test_commands_run_as_the_workspace_owner(tmp_path: Any) -> None:
    same = spawner(tmp_path)
    assert same.as_user() == []
    other = spawner(tmp_path, uid=os.geteuid() + 1)
    assert other.as_user() == ["sudo", "-n", "-H", "-u", "uwsunit", "--"]
    other.slurm_job_id = 99
    calls = canned_run(other, "")
    asyncio.run(other.cancel())
    assert calls == [("sudo", "-n", "-H", "-u", "uwsunit", "--", "scancel", "99")]


def test_health_from_scontrol_ping(tmp_path: Any) -> None:
    s = spawner(tmp_path)
    canned_run(s, "Slurmctld(primary) at head is UP\n")
    assert asyncio.run(s.health()) == (True, "Connected successfully.")
    canned_run(s, "Slurmctld(primary) at head is DOWN\n")
    assert asyncio.run(s.health()) == (False, "Slurmctld(primary) at head is DOWN")
    canned_run(s, SchedulerUnavailable("scontrol ping did not answer: timed out"))
    assert asyncio.run(s.health()) == (False, "scontrol ping did not answer: timed out")


def test_health_down_controller_on_a_host_named_with_up(tmp_path: Any) -> None:
    s = spawner(tmp_path)
    canned_run(s, "Slurmctld(primary) at BACKUP-CTL is DOWN\n")
    assert asyncio.run(s.health())[0] is False


# ---- the options a session asks for ---------------------------------------------------------------


def test_sbatch_options_from_resource_options(tmp_path: Any) -> None:
    s = spawner(tmp_path, partition="RM-shared", gpu_partition="GPU-shared")
    spec = {
        "resource_options": {"cpus_per_task": "4", "memory_per_node": "2048", "time_limit": "90"},
        "cpus": 1,
        "time_limit_seconds": 60,
        "gpu": True,
    }
    assert s.sbatch_options(spec) == [
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=2048M",
        "#SBATCH --time=90",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --partition=GPU-shared",
    ]


@pytest.mark.parametrize("seconds, minutes", [(1, 1), (59, 1), (60, 1), (61, 2), (3600, 60), (3601, 61)])
def test_time_limit_in_seconds_rounds_up_to_minutes(tmp_path: Any, seconds: int, minutes: int) -> None:
    options = spawner(tmp_path).job_options({"time_limit_seconds": seconds})
    assert options == {"cpus": 1, "time_limit": minutes}


def test_job_options_defaults_and_partitions(tmp_path: Any) -> None:
    assert spawner(tmp_path).job_options({}) == {"cpus": 1}
    assert spawner(tmp_path).job_options({"cpus": 3}) == {"cpus": 3}
    s = spawner(tmp_path, partition="cpu")
    assert s.job_options({"gpu": True}) == {"cpus": 1, "gpu": True, "partition": "cpu"}
    assert s.job_options({}) == {"cpus": 1, "partition": "cpu"}
    assert s.sbatch_options({}) == ["#SBATCH --cpus-per-task=1", "#SBATCH --partition=cpu"]


# ---- the batched status query ------------------------------------------------------------------


def test_one_query_answers_for_every_job_within_the_interval() -> None:
    status = SchedulerStatus()
    status.tracked = {3, 1}
    calls: list[list[int]] = []

    async def fetch(ids: list[int]) -> dict[int, SlurmJob]:
        calls.append(ids)
        return {i: SlurmJob(state="RUNNING") for i in ids}

    async def scenario() -> None:
        now = time.monotonic()
        first = await status.get(fetch, 2, now - 2, 2.0, 60.0)
        assert set(first) == {1, 2, 3}
        again = await status.get(fetch, 3, now - 2, 2.0, 60.0)  # fresh and covered: reused
        assert again is first
        await status.get(fetch, 4, now - 2, 2.0, 60.0)  # not asked about yet: asks again
        await status.get(fetch, 1, time.monotonic() + 1, 2.0, 60.0)  # wants newer: asks again

    asyncio.run(scenario())
    assert calls == [[1, 2, 3], [1, 3, 4], [1, 3]]  # only tracked ids and the asker


def test_failures_back_off_and_a_success_resets() -> None:
    status = SchedulerStatus()
    answers: list[Any] = [
        SchedulerUnavailable("down"),
        SchedulerUnavailable("down"),
        SchedulerUnavailable("down"),
        {1: SlurmJob(state="PENDING")},
    ]
    calls = 0

    async def fetch(ids: list[int]) -> dict[int, SlurmJob]:
        nonlocal calls
        calls += 1
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def attempt() -> Any:
        return await status.get(fetch, 1, time.monotonic(), 2.0, 5.0)

    with pytest.raises(SchedulerUnavailable, match=r"^down \(attempt 1; retrying in 2 s\)$"):
        asyncio.run(attempt())
    # within the backoff Slurm is not asked again
    with pytest.raises(SchedulerUnavailable, match=r"^down \(retrying in [12] s\)$"):
        asyncio.run(attempt())
    assert calls == 1
    status.retry_at = time.monotonic() - 0.001  # the backoff has passed
    with pytest.raises(SchedulerUnavailable, match=r"attempt 2; retrying in 4 s"):  # 2 × interval
        asyncio.run(attempt())
    status.retry_at = time.monotonic() - 0.001
    with pytest.raises(SchedulerUnavailable, match=r"attempt 3; retrying in 5 s"):  # capped at max_backoff
        asyncio.run(attempt())
    status.retry_at = time.monotonic() - 0.001
    assert asyncio.run(attempt()) == {1: SlurmJob(state="PENDING")}
    assert (status.failures, status.retry_at, calls) == (0, 0.0, 4)


# ---- poll: what the server makes of Slurm's answer ----------------------------------------------


def write_exit(s: Any, data: dict[str, Any]) -> None:
    os.makedirs(s.job_dir, exist_ok=True)
    with open(os.path.join(s.job_dir, "exit.json"), "w") as f:
        json.dump(data, f)


def write_slurm_out(s: Any, text: str) -> None:
    os.makedirs(s.job_dir, exist_ok=True)
    with open(os.path.join(s.job_dir, "slurm.out"), "w") as f:
        f.write(text)


def test_poll_pending_says_why_and_when(tmp_path: Any) -> None:
    s = spawner(tmp_path)
    s.slurm_job_id = 11
    canned_fetch(s, {11: SlurmJob(state="PENDING", reason="Priority", expected_start="2026-12-01T09:30:00")})
    assert asyncio.run(s.poll()) is None
    assert s.status_message == "Waiting in the Slurm queue (Priority); expected start: 2026-12-01T09:30:00."
    assert s.scheduler_status().covered == {11}


def test_poll_pending_without_reason_or_estimate(tmp_path: Any) -> None:
    s = spawner(tmp_path)
    s.slurm_job_id = 11
    canned_fetch(s, {11: SlurmJob(state="CONFIGURING", reason="None")})
    assert asyncio.run(s.poll()) is None
    assert s.status_message == "Waiting in the Slurm queue; expected start: not known yet."


def test_poll_long_wait_is_noticed_once(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    s = spawner(tmp_path, pending_notice_seconds=60.0)
    s.slurm_job_id = 12
    s.submitted_at = time.time() - 120
    canned_fetch(s, {12: SlurmJob(state="PENDING", reason="Resources")})
    asyncio.run(s.poll())
    assert s.status_message.endswith(" The wait is longer than usual.")
    assert s.noticed_long_wait
    assert [r for r in caplog.records if "has been pending" in r.getMessage()]
    s2 = spawner(tmp_path, pending_notice_seconds=600.0)
    s2.slurm_job_id = 12
    s2.submitted_at = time.time() - 120
    canned_fetch(s2, {12: SlurmJob(state="PENDING", reason="Resources")})
    asyncio.run(s2.poll())
    assert "longer than usual" not in s2.status_message and not s2.noticed_long_wait


def test_poll_running_and_unknown_states_keep_the_job(tmp_path: Any) -> None:
    for job_id, state in enumerate(("RUNNING", "COMPLETING", "SOME_FUTURE_STATE"), start=13):
        s = spawner(tmp_path)
        s.slurm_job_id = job_id
        s.status_message = "stale"
        s.scheduler_status().tracked.add(job_id)
        calls = canned_fetch(s, {job_id: SlurmJob(state=state)})
        assert asyncio.run(s.poll()) is None and calls
        assert s.status_message is None and job_id in s.scheduler_status().tracked


def test_poll_end_state_untracks_and_reports(tmp_path: Any) -> None:
    s = spawner(tmp_path)
    s.slurm_job_id = 14
    s.scheduler_status().tracked.add(14)
    write_slurm_out(s, "slurmstepd: error: *** JOB 14 CANCELLED DUE TO TIME LIMIT ***\n")
    write_exit(s, {"exit_code": None, "reason": "stopped", "log_tail": "app log"})
    canned_fetch(s, {14: SlurmJob(state="TIMEOUT")})
    result = asyncio.run(s.poll())
    assert result == {
        "reason": "time_limit",
        "message": ENDED["TIMEOUT"][1],
        "log_tail": "app log",  # the helper's tail is preferred to slurm.out
        "slurm_state": "TIMEOUT",
    }
    assert 14 not in s.scheduler_status().tracked


def test_poll_job_gone_from_slurm(tmp_path: Any) -> None:
    s = spawner(tmp_path)
    s.slurm_job_id = 15
    s.scheduler_status().tracked.add(15)
    write_slurm_out(s, "x" * 100 + "the end")
    canned_fetch(s, {})
    assert asyncio.run(s.poll()) == {"reason": "disappeared", "log_tail": "x" * 100 + "the end"}
    assert 15 not in s.scheduler_status().tracked
    write_exit(s, {"exit_code": 0, "reason": "completed", "log_tail": ""})  # the helper's word wins
    assert asyncio.run(s.poll()) == {"exit_code": 0, "reason": "completed", "log_tail": ""}


def test_poll_without_a_slurm_job(tmp_path: Any) -> None:
    assert asyncio.run(spawner(tmp_path).poll()) == {"reason": "disappeared"}


def test_poll_scheduler_down_is_unknown(tmp_path: Any) -> None:
    s = spawner(tmp_path)
    s.slurm_job_id = 16

    async def fetch(ids: list[int]) -> dict[int, SlurmJob]:
        raise SchedulerUnavailable("slurmctld not responding")

    s.fetch = fetch
    with pytest.raises(SchedulerUnavailable, match="slurmctld not responding"):
        asyncio.run(s.poll())


def test_ended_trusts_the_helper_only_where_slurm_knows_less(tmp_path: Any) -> None:
    s = spawner(tmp_path)
    app_failed = {"exit_code": 3, "reason": "failed", "log_tail": "Traceback"}
    # Slurm's FAILED is the app's own exit status: the helper knows the code and the log
    assert slurm_ended(s, "FAILED", app_failed) == {**app_failed, "slurm_state": "FAILED"}
    done = {"exit_code": 0, "reason": "completed", "log_tail": ""}
    assert slurm_ended(s, "COMPLETED", done) == {**done, "slurm_state": "COMPLETED"}
    # a signalled helper says "stopped"; Slurm says why
    stopped = {"exit_code": None, "reason": "stopped", "log_tail": "t"}
    assert slurm_ended(s, "FAILED", stopped)["reason"] == "failed"
    assert slurm_ended(s, "CANCELLED", stopped)["reason"] == "stopped"
    assert slurm_ended(s, "PREEMPTED", stopped)["reason"] == "failed"
    assert slurm_ended(s, "OUT_OF_MEMORY", app_failed)["message"] == ENDED["OUT_OF_MEMORY"][1]


def test_log_tail_is_the_end_of_slurm_out(tmp_path: Any) -> None:
    s = spawner(tmp_path)
    assert s.log_tail() == ""
    text = "".join(f"line {i}\n" for i in range(1000))
    write_slurm_out(s, text)
    assert s.log_tail() == text[-LOG_TAIL_BYTES:]


# ---- time left and core seconds --------------------------------------------------------------------


def test_time_left_counts_down_from_the_last_query(tmp_path: Any) -> None:
    s = spawner(tmp_path)
    assert s.time_left is None
    s.last_info = SlurmJob(state="RUNNING", time_left=600)
    s.last_info_at = time.monotonic() - 100
    assert s.time_left in (499, 500)
    s.last_info_at = time.monotonic() - 1000
    assert s.time_left == 0
    s.last_info = SlurmJob(state="RUNNING", time_left=None)  # UNLIMITED
    assert s.time_left is None
    s.last_info = SlurmJob(state="PENDING", time_left=600)
    assert s.time_left is None


def test_core_seconds_are_cpus_times_elapsed(tmp_path: Any) -> None:
    s = spawner(tmp_path)
    assert s.allocated_core_seconds() is None
    s.last_info = SlurmJob(state="COMPLETED", cpus=4, elapsed=90.0)
    s.last_info_at = time.monotonic() - 50  # ended: no more time accrues
    assert s.allocated_core_seconds() == 360.0
    s.last_info = SlurmJob(state="RUNNING", cpus=2, elapsed=100.0)
    s.last_info_at = time.monotonic() - 10  # running: it has run on since the query
    assert 220.0 <= s.allocated_core_seconds() < 221.0
    s.last_info = SlurmJob(state="PENDING")
    assert s.allocated_core_seconds() is None


def test_core_seconds_from_squeue(tmp_path: Any) -> None:
    """squeue's %C × %M for a finished job: 2 CPUs for 12:34 is 1508 core seconds."""
    s = spawner(tmp_path)
    s.slurm_job_id = 104
    canned_run(s, SQUEUE)
    assert asyncio.run(s.usage()) == 2 * (12 * 60 + 34)


def test_state_survives_a_restart(tmp_path: Any) -> None:
    s = spawner(tmp_path)
    s.slurm_job_id, s.submitted_at = 77, 1700000000.0
    state = json.loads(json.dumps(s.get_state()))
    again = spawner(tmp_path)
    again.load_state(state)
    assert (again.slurm_job_id, again.submitted_at, again.job_dir) == (77, 1700000000.0, s.job_dir)
    assert 77 in again.scheduler_status().tracked


def test_extension_needs_an_operator_and_runs_scontrol_as_it(tmp_path: Any) -> None:
    """Without an operator account an extension is refused with a message saying which option
    to set; with one, scontrol runs as that account (through sudo) with the limit in minutes,
    and time left follows before the next status query."""
    s = spawner(tmp_path)
    s.slurm_job_id = 41
    calls = canned_run(s, "")
    with pytest.raises(Exception, match="operator_username"):
        asyncio.run(s.set_time_limit(600))
    assert calls == []
    s.operator_username = "slurmop"
    s.last_info = SlurmJob(state="RUNNING", time_left=240, elapsed=60.0)
    s.last_info_at = time.monotonic()
    assert asyncio.run(s.set_time_limit(601)) is True
    assert calls == [
        ("sudo", "-n", "-H", "-u", "slurmop", "--", "scontrol", "update", "JobId=41", "TimeLimit=11")
    ]
    assert 595 <= s.time_left <= 600


def test_a_server_key_starting_with_a_dash_reaches_the_helper(tmp_path: Any) -> None:
    """Z85 keys may begin with "-": the helper's command line must still hand it over (as two
    arguments, argparse took it for an option and every session of that server failed)."""
    from uws.sessions.helper import parse_args

    s = spawner(tmp_path)
    s.channel_server_key = "-" + "a" * 39
    argv = s.helper_command()
    args = parse_args(argv[argv.index("uws.session_helper") + 1 :])
    assert args.server_key == "-" + "a" * 39
