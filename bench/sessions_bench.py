"""Session benchmarks: event latency, start-to-running, idle cost, and websocket fan-out.

Starts one `uws` server (SQLite, development login, LocalProcessSpawner) and measures, from a
separate client process:
  1. event latency: from a helper seeing a state change (its own clock, `source_time`) to a
     /ws/events client receiving the event (same machine, same clock);
  2. PUT /workspaces/<id>/start/ to the job's `running` event, LocalTestJob;
  3. 100 idle sessions: the server's CPU use over 30 s, and each helper's RSS;
  4. 1,000 websocket clients on /ws/events: time until all receive one change; server RSS.

    python bench/sessions_bench.py [--starts 40] [--idle 100] [--clients 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from typing import Any, NoReturn

import psutil
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

from common import WORK, start_server

CONFIG = """
c.UWSApp.authenticator_class = "dev"
c.LocalFileSystemStorage.root_dir = "{root}"
c.UWSApp.log_level = "WARN"
c.JobService.max_running_jobs_per_user = 0
c.JobService.max_concurrent_starts = 0
# The fan-out step holds --clients event streams for its one user, more than the default per-user
# cap; the cap is not what it measures.
c.WebSocketCounter.max_per_user = {websockets}
c.UWSApp.job_types = {{
    "local_test_job": {{"name": "Local Test Job", "job_type": "LocalTestJob",
                       "environment_details": {{"main_resource": {{"sleep_seconds": "600"}}}}}},
    "idle": {{"name": "Idle", "job_type": "CommandJob",
             "environment_details": {{"main_resource": {{"command": ["sleep", "3600"], "readiness_path": ""}}}}}},
}}
"""


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


class Bench:
    def __init__(self, workdir: str, clients: int) -> None:
        self.workdir = workdir
        config = CONFIG.format(root=os.path.join(workdir, "workspaces"), websockets=clients + 10)
        self.server, _ = start_server(workdir, config)
        self.proc, self.base = self.server.proc, self.server.base
        self.http = AsyncHTTPClient(max_clients=64)

    async def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        headers = {"UWS-Authorization": f"Token {self.token}"} if getattr(self, "token", None) else {}
        request = HTTPRequest(
            self.base + path,
            method=method,
            headers=headers,
            request_timeout=60,
            body=json.dumps(body) if body is not None else (b"" if method in ("POST", "PUT") else None),
            allow_nonstandard_methods=True,
        )
        response = await self.http.fetch(request, raise_error=False)
        return json.loads(response.body)

    async def ready(self) -> None:
        self.token = (
            await self.call("POST", "/tokens/", {"user_info": {"username": "bench", "email": "b@x"}})
        )["token"]
        self.ws_id = (await self.call("POST", "/workspaces/", {"name": "bench", "description": ""}))["data"][
            "workspace"
        ]["id"]

    async def events(self) -> Any:
        return await websocket_connect(
            HTTPRequest(
                self.base.replace("http", "ws") + "/ws/events",
                headers={"UWS-Authorization": f"Token {self.token}"},
            )
        )

    async def start_to_running(self, count: int) -> tuple[list[float], list[float]]:
        conn = await self.events()
        await conn.read_message()  # snapshot
        latencies: list[float] = []
        durations: list[float] = []
        for _ in range(count):
            t0 = time.time()
            job = (
                await self.call("PUT", f"/workspaces/{self.ws_id}/start/", {"job_type": "local_test_job"})
            )["data"]["job"]
            # Bounded as a whole: a pending session still sends metrics events every few seconds.
            give_up = t0 + 60
            while True:
                try:
                    event = json.loads(await asyncio.wait_for(conn.read_message(), give_up - time.time()))
                except TimeoutError:
                    self.fail(f"job {job['id']} was not running 60 s after its start")
                received = time.time()
                if "source_time" in event:
                    latencies.append(received - event["source_time"])
                if (
                    event["type"] == "job"
                    and event["data"]["id"] == job["id"]
                    and event["data"]["status"] == "running"
                ):
                    durations.append(received - t0)
                    break
            await self.call("PUT", f"/jobs/{job['id']}/stop/")
        # Let the stops finish, collecting their events' latencies too.
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                event = json.loads(await asyncio.wait_for(conn.read_message(), 2))
            except TimeoutError:
                break
            if "source_time" in event:
                latencies.append(time.time() - event["source_time"])
        conn.close()
        return latencies, durations

    async def idle_sessions(self, count: int, seconds: float) -> tuple[float, list[int]]:
        jobs = []
        for _ in range(count):
            jobs.append(
                (await self.call("PUT", f"/workspaces/{self.ws_id}/start/", {"job_type": "idle"}))["data"][
                    "job"
                ]
            )
        deadline = time.time() + 120
        while True:
            listed = (await self.call("GET", "/jobs/?status=running"))["data"]["jobs"]
            if len({j["id"] for j in listed} & {j["id"] for j in jobs}) == count:
                break
            if time.time() > deadline:
                self.fail(f"{count} idle sessions were not all running after 120 s")
            await asyncio.sleep(0.5)
        await asyncio.sleep(6)  # past start-up, into steady heartbeats
        server = psutil.Process(self.proc.pid)
        before = server.cpu_times()
        await asyncio.sleep(seconds)
        after = server.cpu_times()
        cpu = (after.user + after.system - before.user - before.system) / seconds * 100
        rss = []
        for job in jobs:
            try:
                rss.append(psutil.Process(job["resource_job_id"]).memory_info().rss)
            except psutil.Error:
                pass
        for job in jobs:
            await self.call("PUT", f"/jobs/{job['id']}/stop/")
        return cpu, rss

    async def fan_out(self, clients: int, rounds: int) -> tuple[list[float], int]:
        conns = []
        for _ in range(clients):
            conn = await self.events()
            await conn.read_message()  # snapshot
            conns.append(conn)
        times = []
        for i in range(rounds):
            t0 = time.time()
            await self.call("PUT", f"/workspaces/{self.ws_id}/", {"name": f"renamed {i}"})

            async def wait_one(conn: Any, name: str = f"renamed {i}") -> float:
                while True:
                    event = json.loads(await conn.read_message())
                    if event["type"] == "workspace" and event["data"]["name"] == name:
                        return time.time()

            done = await asyncio.wait_for(asyncio.gather(*(wait_one(c) for c in conns)), 30)
            times.append(max(done) - t0)
        rss = psutil.Process(self.proc.pid).memory_info().rss
        for conn in conns:
            conn.close()
        return times, rss

    def fail(self, what: str) -> NoReturn:
        # The server's log goes with its directory when the benchmark stops it; show it first.
        raise SystemExit(f"{what}; the server's log ends:\n{self.server.log()}")

    def stop(self) -> None:
        self.server.close()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--starts", type=int, default=40)
    parser.add_argument("--idle", type=int, default=100)
    parser.add_argument("--idle-seconds", type=float, default=30)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--workdir", default=WORK)
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="uws-sbench-", dir=args.workdir)
    bench = Bench(workdir, args.clients)
    try:
        await bench.ready()
        latencies, durations = await bench.start_to_running(args.starts)
        ms = [x * 1000 for x in latencies]
        print(
            f"event latency, helper -> websocket client: p50 {pct(ms, 50):.2f} ms, p99 {pct(ms, 99):.2f} ms "
            f"({len(ms)} events)"
        )
        d = [x * 1000 for x in durations]
        print(
            f"PUT start -> running event (LocalTestJob): p50 {pct(d, 50):.0f} ms, p90 {pct(d, 90):.0f} ms, "
            f"max {max(d):.0f} ms ({len(d)} starts)"
        )
        await asyncio.sleep(3)
        cpu, rss = await bench.idle_sessions(args.idle, args.idle_seconds)
        mb = [r / 1e6 for r in rss]
        print(
            f"{args.idle} idle sessions: server CPU {cpu:.2f}% of one core over {args.idle_seconds:.0f} s; "
            f"helper RSS mean {statistics.mean(mb):.1f} MB, max {max(mb):.1f} MB ({len(mb)} helpers)"
        )
        await asyncio.sleep(8)
        times, server_rss = await bench.fan_out(args.clients, 3)
        print(
            f"{args.clients} websocket clients: all received a change within "
            f"{', '.join(f'{t * 1000:.0f}' for t in times)} ms (3 rounds); server RSS {server_rss / 1e6:.0f} MB"
        )
    finally:
        bench.stop()


if __name__ == "__main__":
    asyncio.run(main())
