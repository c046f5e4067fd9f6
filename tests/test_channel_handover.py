"""A second server takes over the sessions of one that died (high availability, the session
channel's part): same database, same data directory, and helpers given both servers' channel
endpoints (c.UWSApp.session_channel_peers), of which only the leader's is bound.

On PostgreSQL server B stands by while A leads (uws.leadership) and takes over when A is killed;
on SQLite, where a lone server always leads, B is started once A is dead. B must re-attach every
running session without restarting it, serve it through its passthrough, stop it through the
channel, and refuse a message signed in A's term.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import psutil
import requests
import zmq

from uws.sessions import protocol

from helpers.api import create, get_job, login, start, wait_for, wait_ready, wait_status, ws_dir
from helpers.configs import PROXY_CONFIG
from helpers.harness import Client, Server, second_server

ENDPOINTS = ["ipc://@DIR@/ch-a/sessions.sock", "ipc://@DIR@/ch-b/sessions.sock"]
PEERS = f"c.UWSApp.session_channel_peers = {ENDPOINTS!r}\nc.UWSApp.metrics_public = True\n"


def config(endpoint: str) -> str:
    return PROXY_CONFIG + PEERS + f"c.UWSApp.session_channel_url = {endpoint!r}\n"


def endpoint(srv: Server, which: int) -> str:
    return ENDPOINTS[which].replace("@DIR@", srv.dir)


def leads(srv: Server) -> bool:
    try:
        return requests.get(srv.base + "/status/leader", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def heartbeats(srv: Server) -> float:
    """Helper heartbeats the server has taken (its lag histogram's count)."""
    text = requests.get(srv.base + "/metrics", timeout=5).text
    match = re.search(r"^uws_helper_heartbeat_lag_seconds_count (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def session_pids(job: dict[str, Any]) -> set[int]:
    """The session's processes below its resource job (the helper, its app; sudo as root)."""
    return {p.pid for p in psutil.Process(job["resource_job_id"]).children(recursive=True)}


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def secret_of(srv: Server, job_id: int) -> str:
    ((state,),) = srv.sql(f"SELECT spawner_state FROM jobs WHERE id = {job_id}")
    return (json.loads(state) if isinstance(state, str) else state)["secret"]


class FakeHelper:
    """One job's helper as an attacker who captured its traffic would replay it: a DEALER with
    the job's secret, speaking the helper's side of the protocol."""

    def __init__(self, url: str, job_id: int, secret: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTING_ID, protocol.identity(job_id))
        self.sock.connect(url)
        self.job_id, self.secret = job_id, secret
        self.seq, self.epoch, self.nonce = 0, "", protocol.new_epoch()
        # A sender of its own, started now: the server takes a new sender for a job only if it
        # started no earlier than the last (the job's real helper).
        self.sender, self.started = protocol.new_epoch(), time.time()

    def send(self, mtype: str, **fields: Any) -> list[bytes]:
        self.seq += 1
        message = {"type": mtype, "job_id": self.job_id, "seq": self.seq, "epoch": self.epoch}
        message.update(nonce=self.nonce, sender=self.sender, started=self.started)
        frames = protocol.encode(self.secret, {**message, **fields})
        self.sock.send_multipart(frames)
        return frames

    def receive(self, timeout: float = 5.0) -> dict[str, Any]:
        assert self.sock.poll(int(timeout * 1000)), "nothing from the server"
        message = protocol.decode(self.secret, self.sock.recv_multipart())
        assert message is not None
        return message


def message_of(c: Client, job_id: int) -> str:
    return get_job(c, job_id)["job_details"]["current_job_details"].get("message", "")


def test_standby_takes_over_running_sessions(backend: str) -> None:
    a = Server(backend, config(ENDPOINTS[0])).start()
    b: Server | None = None
    try:
        owner = login(a, a.new_client_token())
        w = create(owner)
        jobs = [start(owner, w["id"], job_type="echo") for _ in range(3)]
        jobs = [wait_ready(owner, job["id"]) for job in jobs]
        pids = {job["id"]: session_pids(job) for job in jobs}
        assert all(pids.values())

        # What an eavesdropper on A's channel could have kept: a message A took, signed in A's term.
        first = jobs[0]["id"]
        fake = FakeHelper(endpoint(a, 0), first, secret_of(a, first))
        fake.send("hello", state={})
        welcome = fake.receive()
        assert welcome["type"] == "welcome" and welcome["nonce"] == fake.nonce
        fake.epoch = welcome["epoch"]
        captured = fake.send("progress", message="captured in A's term")
        wait_for(lambda: message_of(owner, first) == "captured in A's term")
        fake.send("progress", message="the last word in A's term")
        wait_for(lambda: message_of(owner, first) == "the last word in A's term")
        fake.sock.close(0)

        # B: same database, same data directory, the other endpoint of the helpers' list.
        b = second_server(a, config(ENDPOINTS[1]))
        if backend == "postgresql":
            b.start()  # standing by: it binds nothing, and leaves A's socket alone
            assert not leads(b)
        assert a.proc is not None
        a.proc.kill()
        a.proc.wait()
        started = time.monotonic()
        if backend != "postgresql":
            b.start()
        wait_for(lambda: leads(b), timeout=10)
        c = Client(b.base, owner.token)
        c.username = owner.username  # type: ignore[attr-defined]

        # Every helper reaches B (three at least: each heartbeats every second) within seconds.
        wait_for(lambda: heartbeats(b) >= 6, timeout=5)
        reattached = time.monotonic() - started
        print(f"{backend}: every helper heard by B {reattached:.2f} s after A was killed")
        assert reattached < 6, f"helpers took {reattached:.1f} s to reach the new server"
        for job in jobs:
            again = get_job(c, job["id"])
            assert again["status"] == "running"
            assert again["resource_job_id"] == job["resource_job_id"]  # not restarted:
            assert session_pids(again) == pids[job["id"]]  # the same helper and app
            r = requests.get(f"{b.base}/passthrough/{job['id']}/hello", headers=c.headers(), timeout=5)
            assert r.status_code == 200 and r.text == "hello"

        # The captured message, replayed to B: verified (its signature is good), then refused
        # for its term; the replayer is only asked for a fresh hello.
        replayer = FakeHelper(endpoint(a, 1), first, "")  # (@DIR@ is A's in both)
        replayer.secret = fake.secret
        replayer.sock.send_multipart(captured)
        challenge = replayer.receive()
        assert challenge["type"] == "welcome" and challenge["epoch"] != fake.epoch
        replayer.sock.close(0)
        time.sleep(0.5)
        assert message_of(c, first) == "the last word in A's term"

        # Stops go through B's channel to the helpers (not the spawner's fallback).
        for job in jobs:
            assert c.put(f"/jobs/{job['id']}/stop").status_code == 200
        for job in jobs:
            done = wait_status(c, job["id"], "complete", timeout=10)
            assert done["job_details"]["current_job_details"]["message"] == "Job stopped."
            with open(os.path.join(ws_dir(a, c, w["id"]), f".{job['id']}", "helper.log")) as f:
                assert "stop requested" in f.read()
        wait_for(lambda: all(gone(pid) for job in jobs for pid in pids[job["id"]]), timeout=5)
    finally:
        for srv in (b, a):
            if srv is not None:
                srv.close()
