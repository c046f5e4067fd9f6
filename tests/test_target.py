"""Where the passthrough connects is the server's own knowledge, never the helper's claim.

The helper runs as the session's owner, who can read its job secret: these tests read the secret
from the database (as an attacker with the owner's rights could get it) and send `ready`
messages signed with it over the real session channel, as a forging owner would.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import requests
import zmq

from uws.sessions import protocol

from helpers.api import create, get_job, login, start, wait_for, wait_ready, wait_status
from helpers.configs import APP_PYTHON, LOCAL_CONFIG
from helpers.harness import Client, Server, running_server

TARGET_CONFIG = (
    LOCAL_CONFIG
    + f"""
c.JobService.heartbeat_seconds = 1
c.UWSApp.session_channel_url = "ipc://@DIR@/channel/ch.sock"
c.UWSApp.job_types = {{
    "sleeper": {{"name": "Sleeper", "job_type": "LocalTestJob",
                "environment_details": {{"main_resource": {{"sleep_seconds": "120"}}}}}},
    "quiet_web": {{"name": "Web app without a probe", "job_type": "CommandJob",
                  "environment_details": {{"main_resource": {{
        "command": ["{APP_PYTHON}", "-m", "http.server", "{{port}}", "--bind", "127.0.0.1"],
        "readiness_path": ""}}}}}},
}}
"""
)
INTERNAL = b"INTERNAL-ONLY DATA"


@pytest.fixture(scope="module")
def tserver(backend: str) -> Iterator[Server]:
    yield from running_server(backend, TARGET_CONFIG)


@pytest.fixture
def owner(tserver: Server) -> Client:
    return login(tserver, tserver.client_token)


@pytest.fixture(scope="module")
def internal_port() -> Iterator[int]:
    """A stand-in for a loopback-only service of the server's host (slurmrestd, an admin UI)."""

    class Internal(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(INTERNAL)))
            self.end_headers()
            self.wfile.write(INTERNAL)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Internal)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


class Forger:
    """Sends messages for one job over the session channel, signed with the job's secret read
    from the database, from a sender that started after the real helper (so they are taken)."""

    def __init__(self, server: Server, job_id: int) -> None:
        (row,) = server.sql(f"SELECT spawner_state FROM jobs WHERE id = {int(job_id)}")
        state = row[0] if isinstance(row[0], dict) else json.loads(row[0])
        self.secret = state["secret"]
        self.server = server
        self.job_id = job_id
        self.seq = 0
        self.started = time.time()
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, protocol.identity(job_id))
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"ipc://{server.dir}/channel/ch.sock")

    def send(self, mtype: str, **fields: Any) -> None:
        self.seq += 1
        message = {"type": mtype, "job_id": self.job_id, "seq": self.seq, "sender": "forger"}
        message.update(started=self.started, **fields)
        self.sock.send_multipart(protocol.encode(self.secret, message))

    def ready(self, owner: Client, **claim: Any) -> None:
        """A forged `ready`, then a progress marker: once the marker shows, the server has
        handled the `ready` (one receive loop, in order)."""
        state = {"phase": "ready", "helper_pid": 1, "app_pid": 1, "started_at": time.time()}
        self.send("ready", state={**state, "ready": claim, "exit": None, "time_limit_seconds": None})
        marker = f"marker {self.seq}"
        self.send("progress", message=marker)
        assert wait_for(lambda: current(owner, self.job_id).get("message") == marker, 15)

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def current(owner: Client, job_id: int) -> dict[str, Any]:
    return get_job(owner, job_id)["job_details"]["current_job_details"]


def passthrough(server: Server, owner: Client, job_id: int) -> requests.Response:
    return requests.get(f"{server.base}/passthrough/{job_id}/", headers=owner.headers(), timeout=10)


def session_port(server: Server, job_id: int) -> int | None:
    """The port the session's app listens on, found from the outside (None: not yet)."""
    for proc in psutil.process_iter(["cmdline"]):
        if "uws.session_helper" not in " ".join(proc.info["cmdline"] or []) or server.dir not in str(
            proc.info["cmdline"]
        ):
            continue
        if f"/.{job_id} " not in " ".join(proc.info["cmdline"]) + " ":
            continue
        for child in proc.children(recursive=True):
            try:
                for c in child.net_connections(kind="inet"):
                    if c.status == psutil.CONN_LISTEN:
                        return c.laddr.port
            except psutil.Error:
                continue
    return None


def test_forged_ready_cannot_point_at_a_server_port(
    tserver: Server, owner: Client, internal_port: int
) -> None:
    """A session with no readiness probe never sends `ready`: a forged one naming a loopback
    service of the server's host must not make the passthrough reach it."""
    w = create(owner)
    job = start(owner, w["id"], job_type="sleeper")
    wait_status(owner, job["id"], "running")
    forger = Forger(tserver, job["id"])
    try:
        forger.ready(owner, host="127.0.0.1", port=internal_port, path="/", token="forged")
        # A privileged port and nonsense are refused too.
        for port in (22, 80, 0, 70000, "8080", True):
            forger.ready(owner, host="127.0.0.1", port=port, path="/")
    finally:
        forger.close()
    assert "connection_details" not in current(owner, job["id"])
    r = passthrough(tserver, owner, job["id"])
    assert r.status_code == 503 and INTERNAL not in r.content
    assert (
        requests.get(f"{tserver.base}/passthrough/{job['id']}/?token=forged", timeout=10).status_code == 403
    )
    assert f"Job {job['id']}: refused a ready naming port {internal_port}" in tserver.log()
    owner.put(f"/jobs/{job['id']}/stop")


def test_forged_ready_cannot_choose_the_host_or_move_the_target(
    tserver: Server, owner: Client, internal_port: int
) -> None:
    """The host is the session's node as the server knows it (here 127.0.0.1): a claim naming
    another is refused, even with the right port; the port the session's app really listens on
    is accepted, and once recorded the target never moves."""
    w = create(owner)
    job = start(owner, w["id"], job_type="quiet_web")
    wait_status(owner, job["id"], "running")
    port = wait_for(lambda: session_port(tserver, job["id"]), 15)
    assert port, "the session's app never listened"
    forger = Forger(tserver, job["id"])
    try:
        forger.ready(owner, host="192.0.2.1", port=port, path="/")
        assert "connection_details" not in current(owner, job["id"])
        assert f"Job {job['id']}: refused a ready naming host '192.0.2.1'" in tserver.log()
        forger.ready(owner, host="127.0.0.1", port=port, path="/")
        ready = wait_ready(owner, job["id"])
        proxy = ready["job_details"]["current_job_details"]["proxy_details"]
        assert proxy["hostname"] == "127.0.0.1" and proxy["port"] == str(port)
        r = passthrough(tserver, owner, job["id"])
        assert r.status_code == 200 and b"Directory listing" in r.content
        forger.ready(owner, host="127.0.0.1", port=internal_port, path="/")
    finally:
        forger.close()
    details = current(owner, job["id"])["proxy_details"]
    assert details["port"] == str(port)
    r = passthrough(tserver, owner, job["id"])
    assert r.status_code == 200 and INTERNAL not in r.content
    owner.put(f"/jobs/{job['id']}/stop")


def test_port_not_listened_on_by_the_session_is_refused(tserver: Server, owner: Client) -> None:
    """An unprivileged port some other process of the host listens on (here: this test's)."""
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen()
    w = create(owner)
    job = start(owner, w["id"], job_type="quiet_web")
    wait_status(owner, job["id"], "running")
    forger = Forger(tserver, job["id"])
    try:
        forger.ready(owner, host="127.0.0.1", port=other.getsockname()[1], path="/")
    finally:
        forger.close()
        other.close()
    assert "connection_details" not in current(owner, job["id"])
    assert passthrough(tserver, owner, job["id"]).status_code == 503
    owner.put(f"/jobs/{job['id']}/stop")


def test_listening_uids_reads_the_socket_owner() -> None:
    """The check used when the server cannot see another account's processes' sockets."""
    from uws.spawners.local import listening_uids

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert os.geteuid() not in listening_uids(port)  # bound, not listening
        s.listen()
        assert os.geteuid() in listening_uids(port)
