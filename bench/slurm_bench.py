"""Slurm session benchmarks on the local cluster (sudo scripts/slurm-start first).

  1. submit to running: PUT start to the job's `running` event (the helper started inside the
     allocation), sequential sessions on the idle cluster, after a warm-up job that waits out
     the first scheduling pass; on node 1 (partition debug) and, on the two-node cluster, on
     node 2 (partition node2, behind its veth pair; target: 1.5 s at most on either);
  2. extend -> time_left: PUT /jobs/<id>/extend/ on a running session (Slurm's limit raised as
     the operator account: scripts/slurm-start's uwsop where the cluster has accounting, else
     SlurmUser) to the `job` event on /ws/events that carries the new time_left (target: 1 s
     at most), on each node;
  3. scheduler queries: with N sessions active across both nodes (partition "debug,node2": 2
     CPUs each, so most of them wait in the queue; node 1 alone on a single-node cluster), how
     many status queries the server makes per poll interval: `squeue` calls (counted by a
     logging wrapper put first on the server's PATH), or with --spawner slurm_rest, GET /jobs
     requests (counted by a pass-through proxy in front of slurmrestd). Target: one.

    python bench/slurm_bench.py [--spawner slurm|slurm_rest] [--starts 10] [--extends 5] [--active 200]

(--active 0 measures only the starts and extensions.)

Run as root (sessions run as the workspace owner through sudo).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time

from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

from common import WORK, start_server
from helpers.harness import free_port
from helpers.slurm import OPERATOR

CONFIG = """
c.UWSApp.authenticator_class = "local"
c.LocalAuthenticator.create_system_users = True
c.LocalFileSystemStorage.root_dir = "{root}"
c.UWSApp.log_level = "WARN"
c.UWSApp.spawner_class = "{spawner}"
c.SlurmRestSpawner.url = "{rest_url}"
c.SlurmBase.partition = "{partition}"
c.UWSApp.session_channel_url = "tcp://{channel_host}:{channel}"
c.JobService.max_running_jobs_per_user = 0
c.JobService.max_concurrent_starts = 0
c.JobService.reconcile_seconds = 1
c.SlurmBase.poll_interval = 2
c.SlurmBase.operator_username = "{operator}"
c.Spawner.python = "/usr/bin/python3"
c.Spawner.helper_pythonpath = "{lib}"
c.UWSApp.job_types = {{
    "sleep": {{"name": "Sleep", "job_type": "CommandJob",
              "environment_details": {{"main_resource": {{"command": ["sleep", "600"], "readiness_path": ""}}}}}},
    "limited": {{"name": "Sleep, 30 minutes", "job_type": "CommandJob",
                "environment_details": {{"main_resource": {{"command": ["sleep", "600"], "readiness_path": "",
                                                            "time_limit": "30"}}}}}},
}}
"""


SLURMRESTD = "http://127.0.0.1:6820"


def counting_proxy(port: int, count_file: str) -> None:
    """Passes requests to slurmrestd unchanged, logging each GET of the job list."""

    class Forward(web.RequestHandler):
        async def handle(self) -> None:
            if self.request.method == "GET" and self.request.path.endswith("/jobs"):
                with open(count_file, "a") as f:
                    f.write(f"{time.time()}\n")
            headers = {
                k: v
                for k, v in self.request.headers.items()
                if k.lower().startswith(("x-slurm", "content-type"))
            }
            r = await AsyncHTTPClient().fetch(
                HTTPRequest(
                    SLURMRESTD + self.request.uri,
                    method=self.request.method,
                    headers=headers,
                    body=self.request.body if self.request.method == "POST" else None,
                    request_timeout=60,
                ),
                raise_error=False,
            )
            self.set_status(r.code if r.code != 599 else 502)
            self.finish(r.body or b"")

        get = post = delete = handle

    def serve() -> None:  # on its own thread: the benchmark's loop blocks while the server starts
        async def run() -> None:
            web.Application([(r"/.*", Forward)]).listen(port, "127.0.0.1")
            await asyncio.Event().wait()

        asyncio.run(run())

    threading.Thread(target=serve, daemon=True).start()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spawner", choices=["slurm", "slurm_rest"], default="slurm")
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--extends", type=int, default=5)
    parser.add_argument("--active", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    os.makedirs(WORK, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="uws-slbench-", dir="/tmp")
    os.chmod(workdir, 0o755)
    lib = os.path.join(workdir, "lib")
    shutil.copytree(
        os.path.join(os.path.dirname(WORK), "..", "uws"),
        os.path.join(lib, "uws"),
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    wrappers = os.path.join(workdir, "bin")
    os.makedirs(wrappers)
    count_file = os.path.join(workdir, "squeue.calls")
    real = shutil.which("squeue")
    with open(os.path.join(wrappers, "squeue"), "w") as f:
        f.write(f'#!/bin/sh\necho "$(date +%s.%N)" >> {count_file}\nexec {real} "$@"\n')
    os.chmod(os.path.join(wrappers, "squeue"), 0o755)
    for dirpath, _, files in os.walk(workdir):
        os.chmod(dirpath, 0o755)
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o755)
    os.environ["PATH"] = f"{wrappers}:{os.environ['PATH']}"
    rest_port = free_port()
    if args.spawner == "slurm_rest":
        count_file = os.path.join(workdir, "get-jobs.calls")
        counting_proxy(rest_port, count_file)
    # Node 2 (scripts/slurm-start's second node) reaches the channel at this machine's end of
    # its veth pair only; node 1 reaches it there too.
    nodes = [("node 1", "debug", "127.0.0.1")]
    both = nodes[0]
    try:
        with open("/run/uws-slurm/node2.env") as f:
            node2 = dict(line.strip().split("=", 1) for line in f if "=" in line)
        nodes.append(("node 2", node2["PARTITION"], node2["HOST_ADDR"]))
        both = ("both nodes", f"debug,{node2['PARTITION']}", node2["HOST_ADDR"])
    except OSError:
        print("a single-node cluster: node 1 only")
    print(f"operator account: {OPERATOR}")
    # Starts and extensions on each node, then the queries with sessions on all of them.
    runs = [(*node, False) for node in nodes] + ([(*both, True)] if args.active else [])
    for number, (label, partition, channel_host, queries) in enumerate(runs):
        config = CONFIG.format(
            root=os.path.join(workdir, f"workspaces-{number}"),  # each server's own
            channel=free_port(),
            channel_host=channel_host,
            partition=partition,
            lib=lib,
            spawner=args.spawner,
            rest_url=f"http://127.0.0.1:{rest_port}",
            operator=OPERATOR,
        )
        server_dir = os.path.join(workdir, f"server-{number}")
        os.mkdir(server_dir)
        await measure(args, label, config, server_dir, count_file, queries)
    shutil.rmtree(workdir, ignore_errors=True)


async def measure(
    args: argparse.Namespace, label: str, config: str, server_dir: str, count_file: str, queries: bool
) -> None:
    query = "squeue calls" if args.spawner == "slurm" else "GET /jobs requests"
    server, _ = start_server(server_dir, config)
    base = server.base
    http = AsyncHTTPClient(max_clients=32)
    try:
        ct = server.new_client_token("bench")

        async def call(method: str, path: str, body: object = None, token: str | None = None) -> dict:
            headers = {"UWS-Authorization": f"Token {token}"} if token else {}
            r = await http.fetch(
                HTTPRequest(
                    base + path,
                    method=method,
                    headers=headers,
                    request_timeout=60,
                    body=json.dumps(body) if body is not None else (b"" if method == "PUT" else None),
                ),
                raise_error=False,
            )
            return json.loads(r.body)

        token = (
            await call(
                "POST",
                "/tokens/",
                {"client_token": ct, "user_info": {"username": "uwstbench", "email": "b@x"}},
            )
        )["token"]
        ws = (await call("POST", "/workspaces/", {"name": "b", "description": ""}, token))["data"][
            "workspace"
        ]["id"]
        conn = await websocket_connect(
            HTTPRequest(
                base.replace("http", "ws") + "/ws/events", headers={"UWS-Authorization": f"Token {token}"}
            )
        )
        await conn.read_message()

        async def start_and_wait(job_type: str = "sleep", stop: bool = True) -> tuple[float, int]:
            t0 = time.time()
            job = (await call("PUT", f"/workspaces/{ws}/start/", {"job_type": job_type}, token))["data"][
                "job"
            ]
            while True:
                event = json.loads(await asyncio.wait_for(conn.read_message(), 120))
                if (
                    event["type"] == "job"
                    and event["data"]["id"] == job["id"]
                    and event["data"]["status"] == "running"
                ):
                    if stop:
                        await call("PUT", f"/jobs/{job['id']}/stop/", token=token)
                    return time.time() - t0, job["id"]

        async def extend_and_wait(job_id: int) -> float:
            """PUT extend, then the job event that carries the new time_left (already queued on
            the websocket when the answer arrives, if the server sent it first)."""
            t0 = time.time()
            answer = await call("PUT", f"/jobs/{job_id}/extend/", {"minutes": 1}, token)
            assert answer.get("success"), answer
            new = answer["data"]["job"]["job_details"]["current_job_details"]["time_left"]
            while True:
                event = json.loads(await asyncio.wait_for(conn.read_message(), 30))
                data = event["data"]
                if (
                    event["type"] == "job"
                    and data.get("id") == job_id
                    and data["job_details"]["current_job_details"].get("time_left", 0) >= new - 2
                ):
                    return time.time() - t0

        if not queries:
            warm, _ = await start_and_wait()
            times = sorted([(await start_and_wait())[0] for _ in range(args.starts)])
            print(
                f"{args.spawner}, {label}: submit -> running (idle cluster, after a warm-up of {warm:.2f} s): "
                f"p50 {times[len(times) // 2]:.2f} s, max {times[-1]:.2f} s over {len(times)} sessions"
            )
            if args.extends:
                _, job_id = await start_and_wait("limited", stop=False)
                await asyncio.sleep(2 * 2)  # two status queries: Slurm's time_left is known
                extends = sorted([await extend_and_wait(job_id) for _ in range(args.extends)])
                await call("PUT", f"/jobs/{job_id}/stop/", token=token)
                print(
                    f"{args.spawner}, {label}: extend -> new time_left on /ws/events: "
                    f"p50 {extends[len(extends) // 2]:.3f} s, max {extends[-1]:.3f} s over {len(extends)} extensions"
                )
            conn.close()
            return
        await asyncio.sleep(5)
        jobs = [
            (await call("PUT", f"/workspaces/{ws}/start/", {"job_type": "sleep"}, token))["data"]["job"]
            for _ in range(args.active)
        ]
        await asyncio.sleep(5)
        statuses: dict[str, int] = {}
        for job in (await call("GET", "/jobs/", token=token))["data"]["jobs"]:
            statuses[job["status"]] = statuses.get(job["status"], 0) + 1
        print(f"jobs by status: {statuses}")

        def calls() -> int:
            try:
                with open(count_file) as f:
                    return sum(1 for _ in f)
            except FileNotFoundError:
                return 0

        before = calls()
        await asyncio.sleep(args.seconds)
        after = calls()
        listed = (await call("GET", "/jobs/?status=pending", token=token))["data"]["jobs"]
        print(
            f"{args.spawner}, {label}: {args.active} active sessions ({len(listed)} pending): {after - before} {query} in "
            f"{args.seconds:.0f} s, poll interval 2 s ({(after - before) / (args.seconds / 2):.2f} per interval)"
        )
        for job in jobs:
            await call("PUT", f"/jobs/{job['id']}/stop/", token=token)
        conn.close()
    finally:
        subprocess.run(["scancel", "-u", "uwstbench"], capture_output=True)
        server.close()


if __name__ == "__main__":
    asyncio.run(main())
