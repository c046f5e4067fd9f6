"""Session logs under floods: what sessions that write as fast as they can cost the server.

Starts one `uws` server (SQLite, development login, LocalProcessSpawner) and N sessions running
tests/apps/print_app.py in flood mode (each writes up to 256 MiB within --seconds), then prints:
the server's CPU use while they flood, the latency of GET /status/ and GET /jobs/<id>/log/
meanwhile (sequential requests, bounded in count), and how fast each log grew.

    python bench/session_logs_bench.py [--sessions 4] [--seconds 10]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import tempfile
import time

import psutil
import requests

from common import HERE, WORK, start_server

PRINT_APP = os.path.join(os.path.dirname(HERE), "tests", "apps", "print_app.py")
CONFIG = """
c.UWSApp.authenticator_class = "dev"
c.LocalFileSystemStorage.root_dir = "{root}"
c.UWSApp.spawner_class = "local"
c.UWSApp.log_level = "WARN"
c.JobService.max_running_jobs_per_user = 0
c.UWSApp.job_types = {{"flood": {{"name": "Flood", "job_type": "CommandJob", "environment_details":
    {{"main_resource": {{"command": {command}, "readiness_path": ""}}}}}}}}
"""


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    os.makedirs(WORK, exist_ok=True)
    workdir = tempfile.mkdtemp(dir=WORK)
    command = json.dumps([sys.executable, PRINT_APP, "flood", str(256 * 1024 * 1024), str(args.seconds)])
    server, _ = start_server(
        workdir, CONFIG.format(root=os.path.join(workdir, "workspaces"), command=command)
    )
    try:
        http = requests.Session()
        token = http.post(server.base + "/tokens/", json={"user_info": {"username": "bench", "email": "b@x"}})
        http.headers["UWS-Authorization"] = f"Token {token.json()['token']}"
        jobs = []
        for i in range(args.sessions):
            ws = http.post(server.base + "/workspaces/", json={"name": f"b{i}", "description": ""}).json()
            job = http.put(
                f"{server.base}/workspaces/{ws['data']['workspace']['id']}/start/", json={"job_type": "flood"}
            )
            jobs.append(job.json()["data"]["job"]["id"])
        proc = psutil.Process(server.proc.pid)  # type: ignore[union-attr]
        cpu_before, t0 = sum(proc.cpu_times()[:2]), time.monotonic()
        status_ms: list[float] = []
        log_ms: list[float] = []
        for i in range(2000):  # bounded: at most 2,000 requests, and --seconds
            if time.monotonic() - t0 > args.seconds:
                break
            for path, into in (
                ("/status/", status_ms),
                (f"/jobs/{jobs[i % len(jobs)]}/log/?offset=0", log_ms),
            ):
                start = time.perf_counter()
                http.get(server.base + path, timeout=10)
                into.append((time.perf_counter() - start) * 1000)
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
        cpu = sum(proc.cpu_times()[:2]) - cpu_before
        ends = []
        for job_id in jobs:
            answer = http.get(f"{server.base}/jobs/{job_id}/log/?offset=0").json()
            ends.append(answer.get("data", {}).get("end_offset", 0))
        print(f"{args.sessions} flooding sessions for {elapsed:.1f} s")
        print(f"server CPU: {cpu / elapsed * 100:.1f} % of one core")
        for name, values in (("GET /status/", status_ms), ("GET /jobs/<id>/log/", log_ms)):
            print(
                f"{name}: {len(values)} requests, median {statistics.median(values):.1f} ms, "
                f"p95 {pct(values, 95):.1f} ms, max {max(values):.1f} ms"
            )
        root = os.path.join(workdir, "workspaces")
        written = [
            os.path.getsize(path)
            for job_id in jobs
            for path in glob.glob(os.path.join(root, "**", f".{job_id}", "session.log"), recursive=True)
        ]
        print(
            f"per session: the app wrote {statistics.mean(written) / 2**20:.0f} MiB (mean), "
            f"its log stream holds {statistics.mean(ends) / 1024:.0f} KiB (mean; the rest skipped)"
        )
        for job_id in jobs:
            http.put(f"{server.base}/jobs/{job_id}/stop/")
    finally:
        server.close()


if __name__ == "__main__":
    main()
