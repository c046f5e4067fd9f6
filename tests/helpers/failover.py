"""What the failover test and bench/failover_bench.py share: two servers of one installation
behind HAProxy, a client that keeps writing through it, event subscribers that resume after a
dropped connection, and the leader's SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from .api import at, unique_name, wait_for
from .configs import ORIGIN_MODE, PROXY_CONFIG
from .haproxy import HAProxy
from .harness import Client, Server, free_port, second_server

CONFIG = (
    PROXY_CONFIG
    + ORIGIN_MODE
    + """
c.JobService.max_running_jobs_per_user = 50
"""
)


@contextmanager
def ha_cluster(base_config: str = CONFIG) -> Iterator[tuple[Server, Server, HAProxy]]:
    """Two servers on one PostgreSQL schema and data directory, and HAProxy in front; session
    links name HAProxy (public_url)."""
    port = free_port()
    config = base_config + f'\nc.UWSApp.public_url = "http://127.0.0.1:{port}"\n'
    first = Server("postgresql", config).start()
    second = second_server(first, config)
    proxy = None
    try:
        second.start()
        proxy = HAProxy([first.port, second.port], port=port).start()
        yield first, second, proxy
    finally:
        if proxy is not None:
            proxy.close()
        second.close()
        first.close()


def users(proxy: HAProxy, client_token: str, count: int) -> list[tuple[str, Client]]:
    """`count` new users logged in through HAProxy: (username, client)."""
    made = []
    for _ in range(count):
        name = unique_name()
        r = requests.post(
            proxy.base + "/tokens/",
            json={
                "client_token": client_token,
                "user_info": {"username": name, "email": f"{name}@example.org"},
            },
            timeout=10,
        )
        assert r.status_code == 200, r.text
        made.append((name, Client(proxy.base, r.json()["token"])))
    return made


def role(srv: Server) -> str | None:
    try:
        return requests.get(srv.base + "/status/", timeout=2).json().get("role")
    except (requests.RequestException, ValueError):
        return None


class Writer(threading.Thread):
    """Creates workspaces and reads /jobs/ through HAProxy until told to stop (at most
    `limit` writes), remembering every write that was acknowledged with a 2xx."""

    def __init__(self, client: Client, limit: int = 3000) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.limit = limit
        # (monotonic time sent, time answered, workspace id)
        self.acknowledged: list[tuple[float, float, int]] = []
        self.failures = 0
        self.stop = threading.Event()

    def run(self) -> None:
        for i in range(self.limit):
            if self.stop.is_set():
                return
            sent = time.monotonic()
            try:
                r = self.client.post("/workspaces/", {"name": f"w{i}", "description": "failover"}, timeout=5)
                if r.status_code // 100 == 2:
                    ws_id = r.json()["data"]["workspace"]["id"]
                    self.acknowledged.append((sent, time.monotonic(), ws_id))
                else:
                    self.failures += 1
                self.client.get("/jobs/", timeout=5)
            except requests.RequestException:
                self.failures += 1
            time.sleep(0.02)

    def first_write_after(self, moment: float, timeout: float) -> float:
        """Seconds from `moment` to the answer of the first write sent after it and acknowledged
        (one sent before may be answered after: it does not count)."""
        done = wait_for(lambda: next((a for s, a, _ in self.acknowledged if s > moment), None), timeout)
        return done - moment


class Subscriber(threading.Thread):
    """Listens to /ws/events through HAProxy, and when the connection drops, connects again
    with the last event id it saw, as the web interface does."""

    def __init__(self, base: str, token: str) -> None:
        super().__init__(daemon=True)
        self.url = base.replace("http://", "ws://") + "/ws/events"
        self.token = token
        self.ids: list[int] = []
        self.snapshots = 0
        self.connections = 0
        self.stop = threading.Event()

    def run(self) -> None:
        asyncio.run(self.listen())

    async def listen(self) -> None:
        deadline = time.monotonic() + 600
        while not self.stop.is_set() and time.monotonic() < deadline:
            query = f"?last_event_id={self.ids[-1]}" if self.ids else ""
            try:
                conn = await websocket_connect(
                    HTTPRequest(
                        self.url + query,
                        headers={"UWS-Authorization": f"Token {self.token}"},
                        connect_timeout=2,
                    )
                )
            except Exception:
                await asyncio.sleep(0.1)
                continue
            self.connections += 1
            while not self.stop.is_set():
                try:
                    message = await asyncio.wait_for(conn.read_message(), 0.5)
                except TimeoutError:
                    continue
                if message is None:
                    break
                event = json.loads(message)
                if "id" not in event:
                    continue  # a live reading (metrics): never stored, never replayed
                if event["type"] == "snapshot":
                    self.snapshots += 1
                    if self.ids:  # a snapshot after resuming would mean events were lost
                        self.ids.append(-1)
                self.ids.append(event["id"])
            conn.close()


def kill_leader(servers: tuple[Server, Server]) -> tuple[Server, Server, float]:
    """SIGKILL the leading server; (the killed one, the other, when)."""
    leader = next(s for s in servers if role(s) == "leader")
    other = next(s for s in servers if s is not leader)
    assert role(other) == "standby"
    assert leader.proc is not None
    moment = time.monotonic()
    os.kill(leader.proc.pid, signal.SIGKILL)
    leader.proc.wait()
    return leader, other, moment


def reachable(links: dict[int, str]) -> dict[int, int]:
    """Each session's answer code through HAProxy, by job id."""
    codes = {}
    for job_id, link in links.items():
        try:
            codes[job_id] = at(link, timeout=5).status_code
        except requests.RequestException:
            codes[job_id] = 0
    return codes


def stored_events(srv: Server, username: str, after: int, up_to: int) -> list[int]:
    """Ids of the events stored for the user in (after, up_to]."""
    rows = srv.sql(
        "SELECT e.id FROM events e JOIN users u ON u.id = e.user_id "
        f"WHERE u.username = '{username}' AND e.id > {after} AND e.id <= {up_to} ORDER BY e.id"
    )
    return [row[0] for row in rows]


def session_helpers(directory: str) -> set[int]:
    """Pids of the session helpers running for the installation in `directory` (not the sudo
    processes that started some of them)."""
    import psutil

    found = set()
    for proc in psutil.process_iter(["cmdline", "name"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "uws.session_helper" in cmdline and directory in cmdline and proc.info["name"] != "sudo":
            found.add(proc.pid)
    return found
