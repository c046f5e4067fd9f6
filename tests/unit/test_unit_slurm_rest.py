"""uws/spawners/slurm_rest.py in process: slurmrestd's two field layouts (OpenAPI v0.0.38, and
v0.0.39+/v0.0.40 with {"set", "infinite", "number"} numbers, job_state lists and the script
inside `job`), read and written; JWT expiry and caching; how errors slurmrestd lists reach the
user. slurmrestd is replaced by canned answers (no network)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pwd
import time
from datetime import datetime
from io import BytesIO
from typing import Any

import pytest
import slurmrest_translator
from tornado.httpclient import HTTPClientError, HTTPRequest, HTTPResponse

from uws.auth.accounts import Account
from uws.spawners import slurm_nodes, slurm_rest
from uws.spawners.slurm import SchedulerUnavailable, SlurmBase, SlurmJob
from uws.spawners.slurm_rest import (
    SlurmRestSpawner,
    job_from_rest,
    job_state,
    jwt_expiry,
    number,
    version_number,
)

NOW = 1_780_000_000.0  # an epoch time in 2026


@pytest.fixture(autouse=True)
def fresh_shared_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SlurmBase, "_status", {})
    monkeypatch.setattr(SlurmRestSpawner, "_tokens", {})
    monkeypatch.setattr(SlurmRestSpawner, "_token_locks", {})


def spawner(tmp_path: Any, username: str = "uwsunitnobody", **kw: Any) -> SlurmRestSpawner:
    account = Account(username, os.geteuid(), os.getegid(), frozenset())
    return SlurmRestSpawner(7, account, str(tmp_path), "ipc:///nonexistent/uws-unit", **kw)


def wrapped(value: int) -> dict[str, Any]:
    return {"set": True, "infinite": False, "number": value}


def jwt(claims: Any) -> str:
    def part(data: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


# ---- the small readers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        (5, 5),
        (2.5, 2.5),
        (0, 0),
        ({"set": True, "infinite": False, "number": 7}, 7),
        ({"number": 9}, 9),  # "set" absent: taken as set
        ({"set": False, "infinite": False, "number": 0}, None),  # not set (NO_VAL)
        ({"set": True, "infinite": True, "number": 0}, None),  # INFINITE
        (True, None),
        ("5", None),
        (None, None),
        ([5], None),
        ({"set": True, "infinite": False, "number": "5"}, None),
    ],
)
def test_number_in_either_layout(value: Any, expected: Any) -> None:
    assert number(value) == expected and type(number(value)) is type(expected)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("RUNNING", "RUNNING"),
        ("pending", "PENDING"),
        (["RUNNING", "COMPLETING"], "RUNNING"),
        (["CANCELLED"], "CANCELLED"),
        ([], ""),
        (None, ""),
    ],
)
def test_job_state_in_either_layout(value: Any, expected: str) -> None:
    assert job_state(value) == expected


@pytest.mark.parametrize("text, n", [("v0.0.38", 38), ("v0.0.39", 39), ("v0.0.40", 40), ("v0.0.41", 41)])
def test_version_number(text: str, n: int) -> None:
    assert version_number(text) == n


@pytest.mark.parametrize("text", ["0.0.38", "v0.0.", "v0.1.0", "v0.0.40 ", "latest", ""])
def test_version_number_refuses_other_forms(text: str, tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="api_version must look like v0.0.38"):
        version_number(text)
    with pytest.raises(ValueError):
        spawner(tmp_path, api_version=text)


def test_jwt_expiry() -> None:
    assert jwt_expiry(jwt({"exp": 1780003600, "iat": 1780000000, "sun": "alice"})) == 1780003600.0
    for n in range(1, 5):  # payload lengths that need 0-3 "=" of padding
        assert jwt_expiry(jwt({"exp": 1780003600, "sun": "a" * n})) == 1780003600.0
    assert jwt_expiry(jwt({"exp": 1.5e9})) == 1.5e9
    assert jwt_expiry(jwt({"sun": "alice"})) is None  # no exp
    assert jwt_expiry(jwt({"exp": "soon"})) is None
    assert jwt_expiry(jwt([1, 2])) is None
    assert jwt_expiry("no-dots-at-all") is None
    assert jwt_expiry("a.!!!not base64!!!.c") is None
    assert jwt_expiry("a." + base64.urlsafe_b64encode(b"not json").decode() + ".c") is None


# ---- GET /jobs records ---------------------------------------------------------------------------


def old_record(**fields: Any) -> dict[str, Any]:
    """A v0.0.38 job record (plain numbers, job_state a string)."""
    return {"job_id": 101, "state_reason": "None", "cpus": 4, "time_limit": 60, **fields}


def new_record(**fields: Any) -> dict[str, Any]:
    """The same in the v0.0.40 layout, written out by hand."""
    record = old_record(**fields)
    for key in ("job_id", "start_time", "end_time", "time_limit", "cpus"):
        if key in record and not isinstance(record[key], dict):
            record[key] = wrapped(record[key])
    record["job_state"] = [record["job_state"]]
    return record


RUNNING_10_MIN = {"job_state": "RUNNING", "start_time": int(NOW) - 600, "end_time": int(NOW) + 3000}


@pytest.mark.parametrize("layout", [old_record, new_record])
def test_running_job(layout: Any) -> None:
    job = job_from_rest(layout(**RUNNING_10_MIN), NOW)
    # 10 minutes into a 60-minute limit: 50 minutes left; 4 CPUs
    assert job == SlurmJob(
        state="RUNNING", reason="None", expected_start="", time_left=3000, cpus=4, elapsed=600.0
    )


@pytest.mark.parametrize("layout", [old_record, new_record])
def test_the_node_of_a_running_job(layout: Any) -> None:
    """`nodes` says where a running session is (the passthrough's host); pending and ended jobs
    have no node a session could be reached at."""
    assert job_from_rest(layout(**RUNNING_10_MIN, nodes="r001"), NOW).node == "r001"
    pending = {"job_state": "PENDING", "start_time": int(NOW) + 1800, "nodes": ""}
    assert job_from_rest(layout(**pending), NOW).node == ""
    ended = {"job_state": "COMPLETED", "start_time": int(NOW) - 1000, "end_time": int(NOW) - 400}
    assert job_from_rest(layout(**ended, nodes="r001"), NOW).node == ""
    assert job_from_rest(layout(**RUNNING_10_MIN), NOW).node == ""  # no field: not known


def test_translator_layout_reads_the_same() -> None:
    """tests/slurmrest_translator.py (the stand-in for a newer slurmrestd in the end-to-end tests)
    produces records that read the same as the old layout."""
    for fields in (
        RUNNING_10_MIN,
        {"job_state": "PENDING", "start_time": int(NOW) + 1800, "end_time": 0},
        {"job_state": "COMPLETED", "start_time": int(NOW) - 1000, "end_time": int(NOW) - 400},
    ):
        old = old_record(**fields)
        new = slurmrest_translator.up({"jobs": [json.loads(json.dumps(old))]})["jobs"][0]
        assert new["job_state"] == [fields["job_state"]] and isinstance(new["cpus"], dict)
        assert job_from_rest(new, NOW) == job_from_rest(old, NOW)


@pytest.mark.parametrize("layout", [old_record, new_record])
def test_pending_job_has_an_expected_start(layout: Any) -> None:
    start = int(NOW) + 1800
    job = job_from_rest(layout(job_state="PENDING", start_time=start, state_reason="Priority"), NOW)
    local = time.localtime(start)  # as Slurm's own tools print it: local time, to the second
    assert job.expected_start == time.strftime("%Y-%m-%dT%H:%M:%S", local)
    assert (job.state, job.reason, job.cpus, job.elapsed, job.time_left) == (
        "PENDING",
        "Priority",
        None,
        None,
        None,
    )
    assert job_from_rest(layout(job_state="PENDING", start_time=0), NOW).expected_start == ""


def test_pending_without_an_estimate_in_the_new_layout() -> None:
    record = new_record(job_state="PENDING")
    record["start_time"] = {"set": False, "infinite": False, "number": 0}
    assert job_from_rest(record, NOW).expected_start == ""


@pytest.mark.parametrize("layout", [old_record, new_record])
def test_finished_job_ran_from_start_to_end(layout: Any) -> None:
    fields = {"job_state": "COMPLETED", "start_time": int(NOW) - 1000, "end_time": int(NOW) - 400}
    job = job_from_rest(layout(**fields, cpus=2), NOW)
    assert (job.state, job.elapsed, job.cpus, job.time_left) == ("COMPLETED", 600.0, 2, None)


def test_unlimited_and_unset_numbers() -> None:
    record = new_record(**RUNNING_10_MIN)
    record["time_limit"] = {"set": True, "infinite": True, "number": 0}
    record["end_time"] = {"set": False, "infinite": False, "number": 0}
    job = job_from_rest(record, NOW)
    assert job.time_left is None and job.elapsed == 600.0
    record["cpus"] = {"set": False, "infinite": False, "number": 0}
    assert job_from_rest(record, NOW).cpus is None


def test_time_over_the_limit_is_zero_and_clock_skew_is_no_negative_time() -> None:
    over = job_from_rest(old_record(job_state="RUNNING", start_time=int(NOW) - 4000, time_limit=60), NOW)
    assert over.time_left == 0 and over.elapsed == 4000.0
    ahead = job_from_rest(old_record(job_state="RUNNING", start_time=int(NOW) + 5), NOW)
    assert ahead.elapsed == 0.0 and ahead.time_left == 3600


@pytest.mark.parametrize("version", ["v0.0.38", "v0.0.40"])
def test_session_host_is_the_node_address_from_get_nodes(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    """Without scontrol: the running job's node, and its `address` from one GET /nodes (as
    slurmrestd 22.05 answers it, the same in both layouts), asked once for many lookups."""
    monkeypatch.setattr(slurm_nodes, "CACHES", {})
    s = spawner(tmp_path, api_version=version, status_username="slurm")
    s.slurm_job_id = 101
    calls: list[tuple[str, str, str]] = []
    nodes = [
        {"name": "r001", "address": "10.1.0.1", "hostname": "r001", "state": "mixed"},
        {"name": "r002", "address": "", "hostname": "r002"},  # no address: reached nowhere
        {"address": "10.1.0.3"},  # no name: skipped
    ]

    async def call(method: str, path: str, username: str, body: Any = None) -> dict[str, Any]:
        calls.append((method, path, username))
        if path == "nodes":
            return {"nodes": nodes}
        return {"jobs": [{"job_id": 101, "job_state": "RUNNING", "start_time": 1, "nodes": node}]}

    s.call = call
    node = "r001"
    assert asyncio.run(s.session_host(8888)) == "10.1.0.1"
    assert asyncio.run(s.session_host(8888)) == "10.1.0.1"
    node = "r002"
    assert asyncio.run(s.session_host(8888)) is None
    assert [c for c in calls if c[1] == "nodes"] == [("GET", "nodes", "slurm")] * 2  # r002: asked again


def test_fetch_picks_our_jobs_from_all_jobs(tmp_path: Any) -> None:
    s = spawner(tmp_path, api_version="v0.0.40", status_username="slurm")
    calls: list[tuple[str, str, str]] = []

    async def call(method: str, path: str, username: str, body: Any = None) -> dict[str, Any]:
        calls.append((method, path, username))
        return {
            "jobs": [
                new_record(job_id=101, **RUNNING_10_MIN),
                new_record(job_id=102, job_state="PENDING", start_time=0),
                new_record(job_id=555, job_state="RUNNING", start_time=int(NOW)),  # someone else's
                {"job_state": ["RUNNING"]},  # no id: skipped
            ]
        }

    s.call = call
    jobs = asyncio.run(s.fetch([101, 102, 103]))
    assert calls == [("GET", "jobs", "slurm")]
    assert set(jobs) == {101, 102}
    assert jobs[101].state == "RUNNING" and jobs[101].cpus == 4
    assert jobs[102].state == "PENDING"
    assert asyncio.run(s.fetch([])) == {} and len(calls) == 1


# ---- POST job/submit bodies --------------------------------------------------------------------

SPEC = {
    "resource_options": {"cpus_per_task": 2, "memory_per_node": 4096, "time_limit": 30},
    "gpu": True,
}


def test_submit_body_v0_0_38(tmp_path: Any) -> None:
    s = spawner(tmp_path, api_version="v0.0.38", partition="cpu", gpu_partition="gpu")
    body = s.submit_body(SPEC, "#!/bin/bash\necho hi\n")
    job_dir = os.path.join(str(tmp_path), ".7")
    assert body == {
        "script": "#!/bin/bash\necho hi\n",
        "job": {
            "name": "uws-7",
            "current_working_directory": job_dir,
            "standard_output": os.path.join(job_dir, "slurm.out"),
            "standard_error": os.path.join(job_dir, "slurm.out"),
            "nodes": 1,
            "cpus_per_task": 2,
            "requeue": False,
            "environment": {
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "USER": "uwsunitnobody",
                "LOGNAME": "uwsunitnobody",
            },
            "memory_per_node": 4096,
            "time_limit": 30,
            "partition": "gpu",
            "gres": "gpu:1",
        },
    }


@pytest.mark.parametrize("version", ["v0.0.39", "v0.0.40", "v0.0.41"])
def test_submit_body_newer_layout(tmp_path: Any, version: str) -> None:
    s = spawner(tmp_path, api_version=version, partition="cpu", gpu_partition="gpu")
    body = s.submit_body(SPEC, "#!/bin/bash\n")
    job = body["job"]
    assert job["nodes"] == "1"
    assert job["environment"] == [
        "PATH=/usr/local/bin:/usr/bin:/bin",
        "USER=uwsunitnobody",
        "LOGNAME=uwsunitnobody",
    ]
    assert job["memory_per_node"] == wrapped(4096) and job["time_limit"] == wrapped(30)
    assert job["tres_per_node"] == "gres/gpu:1" and "gres" not in job
    assert job["cpus_per_task"] == 2 and job["partition"] == "gpu"
    if version == "v0.0.39":
        assert body["script"] == "#!/bin/bash\n" and "script" not in job
    else:
        assert job["script"] == "#!/bin/bash\n" and set(body) == {"job"}


def test_newer_body_passes_the_translators_strict_check(tmp_path: Any) -> None:
    """tests/slurmrest_translator.py refuses old-layout fields in a v0.0.40 request."""
    body = spawner(tmp_path, api_version="v0.0.40").submit_body(SPEC, "#!/bin/bash\n")
    down, problems = slurmrest_translator.down(json.loads(json.dumps(body)))
    assert problems == []
    old = spawner(tmp_path, api_version="v0.0.38").submit_body(SPEC, "#!/bin/bash\n")
    assert down == old
    assert slurmrest_translator.down(old)[1]  # and the old layout is what it refuses


def test_submit_body_environment_of_a_known_account(tmp_path: Any) -> None:
    me = pwd.getpwuid(os.geteuid())
    body = spawner(tmp_path, username=me.pw_name, api_version="v0.0.38").submit_body({}, "")
    env = body["job"]["environment"]
    assert env["HOME"] == me.pw_dir and env["USER"] == me.pw_name
    assert {"memory_per_node", "time_limit", "partition", "gres"}.isdisjoint(body["job"])


def test_submit_reads_the_job_id_and_explains_refusals(tmp_path: Any) -> None:
    s = spawner(tmp_path, api_version="v0.0.40")
    answers: list[Any] = [
        {"job_id": wrapped(4242)},
        {"job_id": 4243},
        {"result": {}},
        SchedulerUnavailable("slurmrestd: Failure during parsing"),
    ]
    sent: list[tuple[str, str, str, Any]] = []

    async def call(method: str, path: str, username: str, body: Any = None) -> dict[str, Any]:
        sent.append((method, path, username, body))
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    s.call = call
    assert asyncio.run(s.submit({}, "script")) == 4242
    assert sent[0][:3] == ("POST", "job/submit", "uwsunitnobody") and sent[0][3]["job"]["script"] == "script"
    assert asyncio.run(s.submit({}, "script")) == 4243
    with pytest.raises(SchedulerUnavailable, match="gave no job id"):
        asyncio.run(s.submit({}, "script"))
    with pytest.raises(
        SchedulerUnavailable,
        match=r"^slurmrestd: Failure during parsing \(the session asked for cpus=2, memory_mb=4096, "
        r"time_limit=30\)$",
    ):
        asyncio.run(
            s.submit(
                {
                    "resource_options": {"cpus_per_task": 2, "memory_per_node": 4096},
                    "time_limit_seconds": 1800,
                },
                "s",
            )
        )


# ---- tokens --------------------------------------------------------------------------------------


def fake_token_command(s: SlurmRestSpawner, outputs: list[str | Exception]) -> list[tuple[str, ...]]:
    calls: list[tuple[str, ...]] = []

    async def run(*argv: str) -> str:
        calls.append(argv)
        out = outputs.pop(0)
        if isinstance(out, Exception):
            raise out
        return out

    s.run = run  # type: ignore[method-assign]
    return calls


def test_tokens_are_cached_until_close_to_expiry(tmp_path: Any) -> None:
    s = spawner(tmp_path, token_lifespan=1800, token_renew_seconds=300.0)
    long_lived = jwt({"exp": int(time.time()) + 1800, "sun": "alice"})
    short_lived = jwt({"exp": int(time.time()) + 200, "sun": "alice"})
    calls = fake_token_command(s, [f"SLURM_JWT={short_lived}\n", f"SLURM_JWT={long_lived}\n"])
    assert asyncio.run(s.token("alice")) == short_lived
    assert calls == [("scontrol", "token", "username=alice", "lifespan=1800")]
    # 200 s left is within the 300 s renewal margin: a new token
    assert asyncio.run(s.token("alice")) == long_lived
    assert asyncio.run(s.token("alice")) == long_lived
    assert len(calls) == 2


def test_renewal_margin_is_at_least_a_minute(tmp_path: Any) -> None:
    s = spawner(tmp_path, token_renew_seconds=0.0)
    expiring = jwt({"exp": int(time.time()) + 30})
    calls = fake_token_command(s, [expiring, expiring])
    asyncio.run(s.token("bob"))
    asyncio.run(s.token("bob"))
    assert len(calls) == 2


def test_bare_token_and_token_without_exp(tmp_path: Any) -> None:
    s = spawner(tmp_path, token_lifespan=3600, token_command=["get-token", "{username}"])
    calls = fake_token_command(s, ["some notice\nopaque-token\n"])
    before = time.time()
    assert asyncio.run(s.token("carol")) == "opaque-token"
    assert calls == [("get-token", "carol")]
    token, expiry = SlurmRestSpawner._tokens["carol"]
    assert token == "opaque-token" and before + 3600 <= expiry <= time.time() + 3600


def test_token_command_failures(tmp_path: Any) -> None:
    s = spawner(tmp_path)
    fake_token_command(s, ["   \n", SchedulerUnavailable("scontrol: error: Permission denied")])
    with pytest.raises(SchedulerUnavailable, match="^Could not get a Slurm token for dave: no output$"):
        asyncio.run(s.token("dave"))
    with pytest.raises(
        SchedulerUnavailable,
        match="^Could not get a Slurm token for dave: scontrol: error: Permission denied$",
    ):
        asyncio.run(s.token("dave"))


# ---- one request ---------------------------------------------------------------------------------


class FakeHTTPClient:
    """Stands in for tornado's AsyncHTTPClient: records requests, answers from a list."""

    requests: list[HTTPRequest] = []
    answers: list[tuple[int, Any]] = []

    async def fetch(self, request: HTTPRequest, raise_error: bool = True) -> HTTPResponse:
        FakeHTTPClient.requests.append(request)
        code, body = FakeHTTPClient.answers.pop(0)
        if code == 599:
            return HTTPResponse(request, 599, error=HTTPClientError(599, "Timeout while connecting"))
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return HTTPResponse(request, code, buffer=BytesIO(raw))


@pytest.fixture
def http(monkeypatch: pytest.MonkeyPatch) -> type[FakeHTTPClient]:
    FakeHTTPClient.requests, FakeHTTPClient.answers = [], []
    monkeypatch.setattr(slurm_rest, "AsyncHTTPClient", FakeHTTPClient)
    return FakeHTTPClient


def test_call_sends_the_users_token(tmp_path: Any, http: type[FakeHTTPClient]) -> None:
    s = spawner(tmp_path, api_version="v0.0.40", url="http://slurm.example:6820/")
    SlurmRestSpawner._tokens["alice"] = ("tok-a", time.time() + 3600)
    http.answers = [(200, {"jobs": [], "errors": []})]
    assert asyncio.run(s.call("POST", "job/submit", "alice", {"job": {}})) == {"jobs": [], "errors": []}
    (request,) = http.requests
    assert request.url == "http://slurm.example:6820/slurm/v0.0.40/job/submit"
    assert request.method == "POST" and json.loads(request.body) == {"job": {}}
    assert request.headers["X-SLURM-USER-NAME"] == "alice"
    assert request.headers["X-SLURM-USER-TOKEN"] == "tok-a"


@pytest.mark.parametrize(
    "code, body, message",
    [
        (
            500,
            {"errors": [{"error": "Unable to parse", "error_number": 9001}, {"description": "no partition"}]},
            "slurmrestd: Unable to parse; no partition",
        ),
        (200, {"errors": [{"error_number": 2017, "error": "Invalid job id specified"}]}, None),
        (502, b"<html>bad gateway</html>", "slurmrestd: HTTP 502"),
        (599, None, "did not answer: HTTP 599: Timeout while connecting"),
    ],
)
def test_call_errors_reach_the_user(
    tmp_path: Any, http: type[FakeHTTPClient], code: int, body: Any, message: str | None
) -> None:
    s = spawner(tmp_path)
    SlurmRestSpawner._tokens["alice"] = ("tok-a", time.time() + 3600)
    http.answers = [(code, body)]
    with pytest.raises(SchedulerUnavailable) as raised:
        asyncio.run(s.call("GET", "jobs", "alice"))
    assert str(raised.value).endswith(message or "slurmrestd: Invalid job id specified")


def test_refused_token_is_renewed_on_the_next_call(tmp_path: Any, http: type[FakeHTTPClient]) -> None:
    s = spawner(tmp_path)
    SlurmRestSpawner._tokens["alice"] = ("revoked", time.time() + 3600)
    calls = fake_token_command(s, ["SLURM_JWT=fresh\n"])
    http.answers = [(401, {"errors": [{"error": "Authentication failure"}]}), (200, {"jobs": []})]
    with pytest.raises(SchedulerUnavailable, match="Authentication failure"):
        asyncio.run(s.call("GET", "jobs", "alice"))
    assert "alice" not in SlurmRestSpawner._tokens
    assert asyncio.run(s.call("GET", "jobs", "alice")) == {"jobs": []}
    assert http.requests[1].headers["X-SLURM-USER-TOKEN"] == "fresh" and len(calls) == 1


def test_rest_core_seconds_for_a_finished_job(tmp_path: Any) -> None:
    """4 CPUs from start to end (600 s) is 2400 core seconds, whichever layout said it."""
    for version, layout in (("v0.0.38", old_record), ("v0.0.40", new_record)):
        s = spawner(tmp_path, api_version=version)
        s.slurm_job_id = 101
        record = layout(job_state="COMPLETED", start_time=int(NOW) - 1000, end_time=int(NOW) - 400)

        async def call(method: str, path: str, username: str, body: Any = None, r: Any = record) -> Any:
            return {"jobs": [r]}

        s.call = call
        SlurmBase._status = {}
        assert asyncio.run(s.usage()) == 2400.0


def test_expected_start_is_local_iso_time() -> None:
    start = int(NOW) + 90
    job = job_from_rest(old_record(job_state="PENDING", start_time=start), NOW)
    assert datetime.fromisoformat(job.expected_start).timestamp() == start
