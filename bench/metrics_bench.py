"""GET /metrics on a server with history: 1,000 jobs in the database, 100 of them running.

Starts one `uws` server on SQLite (development login, metrics open to anyone), starts --running
real sessions (a session helper running `sleep`, heartbeating every 5 s), adds ended jobs to the
database until it holds --jobs (copies of a real job's row, as a server that has run for a while
has them), then times --requests sequential GET /metrics from one client: p50, p90 and p99
(target: p50 at most 20 ms). Then, in process, what counting costs one API request and one
database call. For what metrics cost the API's throughput, see
`bench/api_bench.py --compare metrics`.

    python bench/metrics_bench.py [--jobs 1000] [--running 100] [--requests 300]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from common import WORK, start_server

CONFIG = """
c.UWSApp.authenticator_class = "dev"
c.LocalFileSystemStorage.root_dir = "{root}"
c.UWSApp.log_level = "WARN"
c.UWSApp.metrics_public = True
c.JobService.max_running_jobs_per_user = 0
c.JobService.max_concurrent_starts = 0
c.UWSApp.job_types = {{
    "idle": {{"name": "Idle", "job_type": "CommandJob",
             "environment_details": {{"main_resource": {{"command": ["sleep", "3600"], "readiness_path": ""}}}}}},
}}
"""

# Ended jobs, copied from a real one's row with another status and id.
COPY_ENDED = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count})
INSERT INTO jobs (workspace_id, user_id, job_type, resource, resource_job_id, status,
                  datetime_created, datetime_start, datetime_end, core_hours, job_details, spawner_state)
SELECT workspace_id, user_id, job_type, resource, -1,
       CASE WHEN n.i % 5 = 0 THEN 'failed' ELSE 'complete' END,
       datetime_created, datetime_created, datetime_created, 0.0, job_details, spawner_state
FROM jobs, n WHERE jobs.id = {model}
"""


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def counting_cost(calls: int = 200_000) -> tuple[float, float]:
    """Microseconds the server spends counting one API request (its route, method, status and
    latency), and one database call: in process, so other load on the machine hardly matters."""
    from types import SimpleNamespace

    from uws.db import Database
    from uws.handlers import api_host_routes
    from uws.handlers.workspaces import WorkspacesHandler
    from uws.metrics import LiveParts, ServerMetrics

    database = Database("sqlite://")
    stub: Any = SimpleNamespace()
    metrics = ServerMetrics(database, LiveParts(stub, stub, stub, stub, stub), api_host_routes("origin"))
    request = SimpleNamespace(method="GET", path="/workspaces/", request_time=lambda: 0.002)
    handler: Any = WorkspacesHandler.__new__(WorkspacesHandler)
    handler.request, handler.get_status = request, lambda: 200
    t0 = time.perf_counter()
    for _ in range(calls):
        metrics.count_request(handler)
    per_request = (time.perf_counter() - t0) / calls * 1e6
    observe = database.observe
    assert observe is not None
    t0 = time.perf_counter()
    for _ in range(calls):
        observe(0.001)
    per_call = (time.perf_counter() - t0) / calls * 1e6
    database.close()
    return per_request, per_call


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=1000, help="jobs in the database in all")
    parser.add_argument("--running", type=int, default=100, help="of them running (real sessions)")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--workdir", default=WORK)
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="uws-bench-", dir=args.workdir)
    server, _ = start_server(workdir, CONFIG.format(root=os.path.join(workdir, "workspaces")))
    http = requests.Session()
    try:
        token = http.post(
            server.base + "/tokens/", data=json.dumps({"user_info": {"username": "bench", "email": "b@x"}})
        ).json()["token"]
        http.headers["UWS-Authorization"] = f"Token {token}"
        ws_id = http.post(
            server.base + "/workspaces/", data=json.dumps({"name": "b", "description": ""})
        ).json()["data"]["workspace"]["id"]
        jobs = []
        for _ in range(args.running):
            answer = http.put(
                f"{server.base}/workspaces/{ws_id}/start/", data=json.dumps({"job_type": "idle"})
            )
            jobs.append(answer.json()["data"]["job"]["id"])
        deadline = time.time() + 180
        while True:
            listed = http.get(server.base + "/jobs/?status=running").json()["data"]["jobs"]
            if len({j["id"] for j in listed} & set(jobs)) == len(jobs):
                break
            if time.time() > deadline:
                raise SystemExit(f"{len(jobs)} sessions were not all running after 180 s:\n{server.log()}")
            time.sleep(0.5)
        server.sql(COPY_ENDED.format(count=args.jobs - args.running, model=jobs[0]))
        ((in_database,),) = server.sql("SELECT count(*) FROM jobs")
        time.sleep(6)  # past the starts, into steady heartbeats

        metrics = requests.Session()  # (no token: metrics_public)
        for _ in range(10):
            metrics.get(server.base + "/metrics").raise_for_status()
        times = []
        for _ in range(args.requests):
            t0 = time.perf_counter()
            answer = metrics.get(server.base + "/metrics")
            times.append((time.perf_counter() - t0) * 1000)
            answer.raise_for_status()
        running = sum(
            sample.value
            for family in text_string_to_metric_families(answer.text)
            for sample in family.samples
            if sample.name == "uws_sessions" and sample.labels["status"] == "running"
        )
        series = sum(1 for line in answer.text.splitlines() if line and not line.startswith("#"))
        print(
            f"GET /metrics, {in_database:,} jobs in the database ({running:.0f} running, real sessions): "
            f"p50 {statistics.median(times):.2f} ms, p90 {pct(times, 90):.2f} ms, p99 {pct(times, 99):.2f} ms "
            f"over {len(times)} requests; answer {len(answer.content) / 1024:.1f} KiB, {series} samples "
            f"(target: p50 at most 20 ms)"
        )
    finally:
        server.close()
    per_request, per_call = counting_cost()
    print(
        f"counting, in process: {per_request:.2f} µs per API request (route template, method, status, "
        f"latency), {per_call:.2f} µs per database call"
    )


if __name__ == "__main__":
    main()
