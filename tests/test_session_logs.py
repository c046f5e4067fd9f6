"""Session logs end to end: real sessions (tests/apps/print_app.py) whose helpers forward their
output over the session channel; GET /jobs/<id>/log/ with offsets, the job websocket's "log"
messages, the bounded tail, a flooding session, and removal after keep_seconds.

Run as root (as CI does), the sessions run as other OS accounts through sudo: the server never
reads the session's own files, only what the helper sends it."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import stat
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from apps.print_app import numbered_lines
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from helpers.api import create, login, start, wait_for, wait_status, ws_dir
from helpers.configs import APP_PYTHON, LOCAL_CONFIG, SUDO_AVAILABLE, shared_dir
from helpers.harness import Client, Server, running_server

PRINT_APP = os.path.join(shared_dir(), "apps", "print_app.py")
TAIL_BYTES = 64 * 1024
READ_BYTES = 1024
FLOOD_BYTES = 64 * 1024 * 1024
LINES_OUTPUT = "héllo → ✓\n" + "".join(f"line {i}\n" for i in range(1, 21)) + "done\n"


def command_job(*args: str, readiness: bool = False) -> str:
    resource: dict[str, Any] = {"command": [APP_PYTHON, PRINT_APP, *args]}
    if readiness:  # print_app never answers HTTP: the job stays pending
        resource.update({"readiness_path": "/", "url_path": "/"})
    return json.dumps(
        {"name": args[0], "job_type": "CommandJob", "environment_details": {"main_resource": resource}}
    )


JOB_TYPES = {
    "lines": command_job("lines", "20", "0.01", "exit"),
    "lines_slow": command_job("lines", "20", "0.1"),
    "bytes": command_job("bytes", "10000", "exit"),
    "over_tail": command_job("bytes", "200000", "exit"),
    "flood": command_job("flood", str(FLOOD_BYTES), "6"),
    "pending": command_job("hold", readiness=True),
    "quiet": command_job("lines", "1", "0"),
}
CONFIG = (
    LOCAL_CONFIG
    + f"""
c.JobService.heartbeat_seconds = 1
c.JobService.reconcile_seconds = 1
c.UWSApp.stop_grace_seconds = 2
c.SessionLogs.max_bytes = {TAIL_BYTES}
c.SessionLogs.read_max_bytes = {READ_BYTES}
c.SessionLogs.push_interval_seconds = 0.2
c.UWSApp.job_types = {{{", ".join(f'"{k}": {v}' for k, v in JOB_TYPES.items())}}}
"""
)


@pytest.fixture(scope="module")
def lserver(backend: str) -> Iterator[Server]:
    yield from running_server(backend, CONFIG)


@pytest.fixture
def user(lserver: Server) -> Client:
    return login(lserver, lserver.client_token)


def run_job(c: Client, job_type: str) -> int:
    return start(c, create(c)["id"], job_type=job_type)["id"]


def get_log(c: Client, job_id: int, offset: Any = None) -> requests.Response:
    query = "" if offset is None else f"?offset={offset}"
    return c.get(f"/jobs/{job_id}/log/{query}")


def read_all(c: Client, job_id: int, offset: int = 0) -> tuple[str, list[dict[str, Any]]]:
    """The text from `offset` to the end, following next_offset; and the pages."""
    pages = []
    while True:
        r = get_log(c, job_id, offset)
        assert r.status_code == 200, r.text
        page = r.json()["data"]
        pages.append(page)
        if page["next_offset"] == page["end_offset"]:
            return "".join(p["text"] for p in pages), pages
        assert page["next_offset"] > offset
        offset = page["next_offset"]
        assert len(pages) < 1000


def log_file(server: Server, job_id: int) -> str:
    return os.path.join(server.dir, "uws-data", "session-logs", f"{job_id}.log")


def test_the_owner_reads_the_whole_output_with_offsets(lserver: Server, user: Client) -> None:
    job_id = run_job(user, "lines")
    wait_status(user, job_id, "complete")
    r = get_log(user, job_id)
    assert r.status_code == 200 and r.json()["success"] is True
    page = r.json()["data"]
    assert page["text"] == LINES_OUTPUT  # multi-byte characters intact
    end = len(LINES_OUTPUT.encode())
    assert page == {
        "offset": 0, "next_offset": end, "start_offset": 0, "end_offset": end, "text": LINES_OUTPUT,
        "complete": True,
    }  # fmt: skip
    # From any offset: the bytes from there on.
    second_line = len("héllo → ✓\n".encode())
    later = get_log(user, job_id, second_line).json()["data"]
    assert later["offset"] == second_line and later["text"] == LINES_OUTPUT.split("\n", 1)[1]
    # An offset inside a character: what cannot be decoded is a replacement character.
    assert get_log(user, job_id, 2).json()["data"]["text"] == "\ufffdllo → ✓\n" + later["text"]
    # At the end: nothing more, and nothing more will come.
    assert get_log(user, job_id, end).json()["data"] == {**page, "offset": end, "text": ""}
    if SUDO_AVAILABLE:  # the app ran as the workspace owner's account, not the server's
        session_log = os.path.join(
            ws_dir(lserver, user, workspace_of(user, job_id)), f".{job_id}", "session.log"
        )
        assert pwd.getpwuid(os.stat(session_log).st_uid).pw_name == user.username  # type: ignore[attr-defined]


def workspace_of(c: Client, job_id: int) -> int:
    return c.get(f"/jobs/{job_id}/").json()["data"]["jobs"][0]["workspace_id"]


def test_each_answer_is_bounded_and_pages_join_up(lserver: Server, user: Client) -> None:
    job_id = run_job(user, "bytes")
    wait_status(user, job_id, "complete")
    text, pages = read_all(user, job_id)
    assert text.encode() == numbered_lines(10000)
    assert len(pages) >= 10000 // READ_BYTES
    assert all(len(p["text"].encode()) <= READ_BYTES for p in pages)
    assert [p["complete"] for p in pages] == [False] * (len(pages) - 1) + [True]


def test_a_pending_job_has_no_log_yet(lserver: Server, user: Client) -> None:
    job_id = run_job(user, "pending")
    try:
        time.sleep(1.5)  # its helper runs the app (which says nothing) by now
        r = get_log(user, job_id)
        assert r.status_code == 409
        assert r.json() == {"success": False, "message": "Job has not started."}
        assert user.get(f"/jobs/{job_id}/").json()["data"]["jobs"][0]["status"] == "pending"
    finally:
        user.put(f"/jobs/{job_id}/stop/")
    wait_status(user, job_id, "complete", "failed")
    # Ended without a word: an empty, complete log.
    assert get_log(user, job_id).json()["data"]["complete"] is True


def test_another_users_job_is_not_found(lserver: Server, user: Client) -> None:
    job_id = run_job(user, "lines")
    wait_status(user, job_id, "complete")
    other = login(lserver, lserver.client_token)
    for c, wanted in ((other, job_id), (user, 999_999_999)):
        r = get_log(c, wanted)
        assert r.status_code == 404
        assert r.json() == {"success": False, "message": f"Job {wanted} not found for user."}
    assert lserver.client().get(f"/jobs/{job_id}/log/").status_code == 401


@pytest.mark.parametrize(
    "offset,status,message",
    [
        ("-1", 400, "Invalid value for query parameter offset: -1 (a byte offset, 0 or more)."),
        ("abc", 400, "Invalid value for query parameter offset: abc"),
        ("1.5", 400, "Invalid value for query parameter offset: 1.5"),
        ("", 400, "Invalid value for query parameter offset: "),
        (str(2**63), 400, f"Invalid value for query parameter offset: {2**63}"),
        ("100000", 416, "Offset 100000 is beyond the end of the log (end_offset {end})."),
    ],
)
def test_bad_offsets_are_refused(
    lserver: Server, user: Client, offset: str, status: int, message: str
) -> None:
    job_id = run_job(user, "lines")
    wait_status(user, job_id, "complete")
    end = len(LINES_OUTPUT.encode())
    r = get_log(user, job_id, offset)
    assert r.status_code == status
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {"success": False, "message": message.format(end=end)}
    assert get_log(user, job_id).json()["data"]["text"] == LINES_OUTPUT  # nothing changed


async def stream(url: str, headers: dict[str, str], until: Any, timeout: float = 30) -> list[dict[str, Any]]:
    conn = await websocket_connect(HTTPRequest(url, headers=headers, connect_timeout=5))
    messages: list[dict[str, Any]] = []
    try:
        while not until(messages):
            raw = await asyncio.wait_for(conn.read_message(), timeout)
            if raw is None:
                break
            messages.append(json.loads(raw))
    finally:
        conn.close()
    return messages


def ws_url(server: Server, path: str) -> str:
    return server.base.replace("http://", "ws://") + path


def test_new_output_is_pushed_on_the_job_websocket(lserver: Server, user: Client) -> None:
    job_id = run_job(user, "lines_slow")
    headers = {"UWS-Authorization": f"Token {user.token}"}
    url = ws_url(lserver, f"/ws/jobs/{job_id}/?logs=true")
    messages = asyncio.run(
        stream(url, headers, lambda m: any("done\n" in x.get("text", "") for x in m), timeout=30)
    )
    logs = [m for m in messages if m.get("type") == "log"]
    assert logs and all(
        set(m) == {"type", "job_id", "offset", "text"} and m["job_id"] == job_id for m in logs
    )
    # Contiguous: each message starts where the one before ended.
    for before, after in zip(logs, logs[1:], strict=False):
        assert after["offset"] == before["offset"] + len(before["text"].encode())
    # Together with what came before the first push, the whole output.
    head = get_log(user, job_id).json()["data"]["text"].encode()[: logs[0]["offset"]].decode()
    assert head + "".join(m["text"] for m in logs) == LINES_OUTPUT
    # Coalesced: 22 writes over two seconds, fewer messages.
    assert len(logs) < 22
    # The status messages keep the original's shape.
    assert all(
        set(m) == {"job_id", "workspace_id", "status", "current_job_details"}
        for m in messages
        if m not in logs
    )
    user.put(f"/jobs/{job_id}/stop/")


def test_log_messages_are_asked_for(lserver: Server, user: Client) -> None:
    job_id = run_job(user, "lines")
    headers = {"UWS-Authorization": f"Token {user.token}"}
    messages = asyncio.run(stream(ws_url(lserver, f"/ws/jobs/{job_id}/"), headers, lambda m: False))
    assert messages and not any(m.get("type") == "log" for m in messages)  # closed after "complete"
    with pytest.raises(HTTPClientError) as info:
        asyncio.run(stream(ws_url(lserver, f"/ws/jobs/{job_id}/?logs=maybe"), headers, lambda m: True))
    assert info.value.code == 400
    assert json.loads(info.value.response.body) == {
        "success": False, "message": "Invalid value for query parameter logs: maybe",
    }  # fmt: skip


def test_the_kept_tail_is_bounded(lserver: Server, user: Client) -> None:
    job_id = run_job(user, "over_tail")
    wait_status(user, job_id, "complete")
    first = get_log(user, job_id, 0).json()["data"]
    start_offset = first["start_offset"]
    assert first["end_offset"] == 200000
    assert 0 < start_offset and first["offset"] == start_offset  # the oldest bytes are gone
    assert 200000 - start_offset <= TAIL_BYTES
    text, _ = read_all(user, job_id, 0)
    assert text.encode() == numbered_lines(200000)[start_offset:]
    path = log_file(lserver, job_id)
    assert os.path.getsize(path) <= TAIL_BYTES + 64
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and os.stat(path).st_uid == os.geteuid()
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700


def test_a_flooding_session_costs_only_its_own_log(lserver: Server, user: Client) -> None:
    calm = run_job(user, "lines_slow")
    flood = run_job(user, "flood")
    wait_for(lambda: get_log(user, flood).status_code == 200)
    deadline = time.monotonic() + 60
    answered = 0
    # While it floods (at most 64 MiB, 6 s), the server answers, and the other session's log is whole.
    while "flood done" not in read_all(user, flood, 0)[0] and time.monotonic() < deadline:
        assert requests.get(lserver.base + "/status/", timeout=5).status_code == 200
        assert user.get(f"/jobs/{calm}/").status_code == 200
        answered += 1
        time.sleep(0.2)
    text, pages = read_all(user, flood, 0)
    assert text.endswith("flood done\n") and answered > 0
    # The app wrote 64 MiB; its helper skipped ahead rather than forward them all.
    written = os.path.getsize(
        os.path.join(ws_dir(lserver, user, workspace_of(user, flood)), f".{flood}", "session.log")
    )
    assert written > FLOOD_BYTES and pages[-1]["end_offset"] < written // 8
    assert os.path.getsize(log_file(lserver, flood)) <= TAIL_BYTES + 64
    wait_for(lambda: "done\n" in read_all(user, calm, 0)[0], 30)
    assert read_all(user, calm, 0)[0] == LINES_OUTPUT
    for job_id in (calm, flood):
        user.put(f"/jobs/{job_id}/stop/")


# ---- removal ---------------------------------------------------------------------------------
KEEP_CONFIG = CONFIG + "\nc.SessionLogs.keep_seconds = 1\nc.SessionLogs.sweep_seconds = 0.5\n"


@pytest.fixture(scope="module")
def kserver(backend: str) -> Iterator[Server]:
    yield from running_server(backend, KEEP_CONFIG)


def test_logs_are_removed_after_their_job_ends(kserver: Server) -> None:
    user = login(kserver, kserver.client_token)
    quiet = run_job(user, "quiet")  # one line, then silence for longer than keep_seconds
    lines = run_job(user, "lines_slow")
    wait_for(lambda: os.path.exists(log_file(kserver, quiet)) and os.path.exists(log_file(kserver, lines)))
    time.sleep(2.5)
    # Active jobs keep their logs, however old the last output.
    assert get_log(user, quiet).json()["data"]["text"] == "héllo → ✓\nline 1\ndone\n"
    for job_id in (quiet, lines):
        user.put(f"/jobs/{job_id}/stop/")
        wait_status(user, job_id, "complete", "failed")
    # Ended: gone after keep_seconds, and nothing piles up.
    wait_for(lambda: not os.listdir(os.path.join(kserver.dir, "uws-data", "session-logs")), 15)
    wait_for(lambda: get_log(user, lines).status_code == 410, 5)
    assert get_log(user, lines).json() == {"success": False, "message": "The job's log is no longer kept."}
