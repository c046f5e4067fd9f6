"""`GET /status/` latency while a hostile session app is hammered through the passthrough.

Starts one `uws` server with the tests' harness (tests/helpers/: SQLite, local logins,
sessions as other OS accounts when run as root) and one session running
tests/apps/hostile_app.py, which answers every request with a randomly chosen broken answer
(bad chunk sizes, a 101 to a plain GET, oversized, truncated, garbage, bare-LF and slow heads,
endless interim answers). Measures `GET /status/` from one keep-alive client, first
alone, then while `--hammers` threads send `--requests` hostile requests in all (bounded by
`--duration` seconds too). Prints p50/p99/max per phase; the target is p99 <= 50 ms.

    python bench/hostile_bench.py [--hammers 8] [--requests 400] [--duration 30]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import threading
import time
from collections import Counter

import requests

import common  # noqa: F401  (puts tests/ on sys.path, for the helpers)
from helpers.api import create, login, start, wait_ready
from helpers.configs import HOSTILE_CONFIG
from helpers.harness import running_server


def hostile_request(port: int, path: str, auth: str) -> str:
    """One hostile request on its own connection: the status line, or how the connection ended."""
    head = (
        f"GET {path} HTTP/1.1\r\nHost: bench\r\nUWS-Authorization: {auth}\r\nConnection: keep-alive\r\n\r\n"
    )
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(head.encode())
            data = b""
            while b"\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    return "closed"
                data += chunk
            return data.split(b"\r\n", 1)[0].decode("latin1")
    except TimeoutError:
        return "timeout"
    except OSError as e:
        return type(e).__name__


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    if not ordered:
        return "no samples"

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return f"n={len(ordered)} p50={at(0.5):.1f} ms p99={at(0.99):.1f} ms max={ordered[-1] * 1000:.1f} ms"


def measure_status(base: str, stop: threading.Event, limit: int, samples: list[float]) -> None:
    session = requests.Session()
    while not stop.is_set() and len(samples) < limit:
        t0 = time.perf_counter()
        r = session.get(base + "/status/", timeout=10)
        samples.append(time.perf_counter() - t0)
        if r.status_code != 200:
            raise SystemExit(f"/status/ answered {r.status_code}")
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hammers", type=int, default=8, help="threads sending hostile requests")
    parser.add_argument("--requests", type=int, default=400, help="hostile requests in all")
    parser.add_argument("--duration", type=float, default=30, help="most seconds of hammering")
    parser.add_argument("--baseline", type=int, default=200, help="/status/ samples before hammering")
    args = parser.parse_args()
    servers = running_server("sqlite", HOSTILE_CONFIG + 'c.UWSApp.log_level = "WARN"\n')
    server = next(servers)
    base, port = server.base, server.port
    owner = None
    try:
        owner = login(server, server.client_token)
        auth = owner.headers()
        job = start(owner, create(owner)["id"], job_type="hostile")
        wait_ready(owner, job["id"], 60)

        baseline: list[float] = []
        measure_status(base, threading.Event(), args.baseline, baseline)
        print(f"/status/ alone:               {percentiles(baseline)}")

        stop = threading.Event()
        loaded: list[float] = []
        outcomes: Counter[str] = Counter()
        lock = threading.Lock()
        seeds = iter(range(args.requests))
        end = time.monotonic() + args.duration

        def hammer() -> None:
            while time.monotonic() < end:
                with lock:
                    seed = next(seeds, None)
                if seed is None:
                    return
                outcome = hostile_request(
                    port, f"/passthrough/{job['id']}/random?seed={seed}", auth["UWS-Authorization"]
                )
                with lock:
                    outcomes[outcome] += 1

        threads = [threading.Thread(target=hammer) for _ in range(args.hammers)]
        for t in threads:
            t.start()
        watcher = threading.Thread(target=measure_status, args=(base, stop, 100_000, loaded))
        watcher.start()
        for t in threads:
            t.join()
        stop.set()
        watcher.join()
        print(f"/status/ while hammered:      {percentiles(loaded)}")
        print(
            f"hostile requests: {sum(outcomes.values())} ({', '.join(f'{k}: {v}' for k, v in outcomes.most_common())})"
        )
    finally:
        servers.close()  # stops the server and its sessions
        if os.geteuid() == 0 and owner is not None:  # the OS account the login made (as the tests do)
            subprocess.run(["userdel", "-r", "--", owner.username], capture_output=True)


if __name__ == "__main__":
    main()
