"""How long a session whose helper cannot start takes to reach its user as `failed`, with the cause.

Starts one `uws` server with the tests' harness (tests/helpers/: SQLite, local logins, sessions
as other OS accounts through sudo when run as root) for each way a helper fails to start:

- `no-uws`: the interpreter runs but cannot import uws (c.Spawner.python = /usr/bin/python3 with
  a helper_pythonpath that holds no uws), as after installing the server where sessions cannot
  read it;
- `exits`: the interpreter exits at once with an error message (a shell script standing in).

For each, `--starts` sessions are started one after another, then `--burst` at once, and each is
timed from sending its start request to the first `GET /jobs/<id>` that shows it `failed` with
its cause in the message (polled every 20 ms). Prints p50/p90/max per case; the target is a
max of 3 s.

    python bench/start_failure_bench.py [--starts 20] [--burst 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager

import common  # noqa: F401  (puts tests/ on sys.path, for the helpers)
from helpers.api import create, get_job, login
from helpers.configs import LOCAL_CONFIG
from helpers.harness import Client, running_server

EXITS = """#!/bin/sh
echo "bench-python: cannot start (a stand-in for a broken interpreter)" >&2
exit 3
"""
TARGET_SECONDS = 3.0
POLL_SECONDS = 0.02


def time_to_failed(c: Client, ws_id: int, cause: str) -> float:
    t0 = time.perf_counter()
    r = c.put(f"/workspaces/{ws_id}/start/", {"job_type": "local_test_job"})
    if r.status_code != 200:
        raise SystemExit(f"start answered {r.status_code}: {r.text}")
    job_id = r.json()["data"]["job"]["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = get_job(c, job_id)
        if job["status"] == "failed":
            elapsed = time.perf_counter() - t0
            message = job["job_details"]["current_job_details"].get("message", "")
            if cause not in message:
                raise SystemExit(f"job {job_id} failed without its cause: {message!r}")
            return elapsed
        if job["status"] not in ("pending", "running"):
            raise SystemExit(f"job {job_id} ended {job['status']}: {job['job_details']}")
        time.sleep(POLL_SECONDS)
    raise SystemExit(f"job {job_id} was not failed within 60 s")


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    verdict = "meets" if ordered[-1] <= TARGET_SECONDS else "MISSES"
    return (
        f"n={len(ordered)} p50={at(0.5):.2f} s p90={at(0.9):.2f} s max={ordered[-1]:.2f} s"
        f" ({verdict} the {TARGET_SECONDS:g} s target)"
    )


def run_case(name: str, extra_config: str, cause: str, starts: int, burst: int) -> None:
    config = LOCAL_CONFIG + extra_config + "c.JobService.max_running_jobs_per_user = 0\n"
    with contextmanager(running_server)("sqlite", config) as srv:
        c = login(srv, srv.client_token)
        one_by_one = [time_to_failed(c, create(c)["id"], cause) for _ in range(starts)]
        # The burst: as many users, each starting in a workspace of their own.
        users = [login(srv, srv.client_token) for _ in range(burst)]
        workspaces = [create(u)["id"] for u in users]
        at_once: list[float] = []
        threads = [
            threading.Thread(target=lambda u=u, w=w: at_once.append(time_to_failed(u, w, cause)))
            for u, w in zip(users, workspaces, strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if len(at_once) != burst:
            raise SystemExit(f"{burst - len(at_once)} of the {burst} starts at once went wrong (above)")
        print(f"{name:7} one by one: {summary(one_by_one)}")
        if at_once:
            print(f"{name:7} {burst} at once: {summary(at_once)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--starts", type=int, default=20, help="sessions started one after another")
    parser.add_argument("--burst", type=int, default=10, help="sessions started at once, by as many users")
    args = parser.parse_args()
    top = tempfile.mkdtemp(prefix="uws-bench-startfail-")
    try:
        os.chmod(top, 0o755)
        empty = os.path.join(top, "no-uws-here")
        os.mkdir(empty, 0o755)
        exits = os.path.join(top, "exits")
        with open(exits, "w") as f:
            f.write(EXITS)
        os.chmod(exits, 0o755)
        no_uws = f'c.Spawner.python = "/usr/bin/python3"\nc.Spawner.helper_pythonpath = "{empty}"\n'
        run_case("no-uws", no_uws, "No module named 'uws'", args.starts, args.burst)
        run_case(
            "exits", f'c.Spawner.python = "{exits}"\n', "bench-python: cannot start", args.starts, args.burst
        )
    finally:
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
