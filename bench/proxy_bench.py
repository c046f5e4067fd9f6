"""Passthrough benchmarks: UWS's proxy against the session app directly and against
configurable-http-proxy (the npm package JupyterHub uses).

Starts one `uws` server (SQLite, development login, the default passthrough_mode: the session on
a host name of its own, j<id>-<label>.localhost, sent to 127.0.0.1 with that Host header) with one
session running tests/apps/echo_app.py, then measures with wrk (Debian package `wrk`) from separate processes:
  - small-response HTTP requests/s and p99 at concurrency 1 and 16: direct, through UWS, through
    configurable-http-proxy (installed with npm into bench/.work/chp when missing);
  - websocket echo round trips (1,000 sequential messages): direct, through UWS, through CHP;
  - a 1 GB download through UWS: the server's RSS growth while it streams.
With --baseline, a second server from another checkout (an earlier commit's worktree) runs beside
it and is measured in the same interleaved rounds: a before/after figure from one run.

    python bench/proxy_bench.py [--duration 5] [--rounds 3] [--baseline ../uws-before]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import psutil
import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from common import WORK
from helpers.harness import Server, free_port

HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(os.path.dirname(HERE), "tests", "apps", "echo_app.py")
CONFIG = """
c.UWSApp.authenticator_class = "dev"
c.LocalFileSystemStorage.root_dir = "{root}"
c.UWSApp.log_level = "WARN"
c.UWSApp.job_types = {{
    "echo": {{"name": "Echo", "job_type": "CommandJob", "environment_details": {{"main_resource": {{
        "command": ["{python}", "{app}", "{{port}}", "{{base_url}}"],
        "readiness_path": "{{base_url}}hello", "url_path": "{{base_url}}hello"}}}}}},
}}
"""


def wrk(url: str, connections: int, duration: int, headers: dict[str, str]) -> tuple[float, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"failed requests:\n{out}")

    def ms(text: str) -> float:
        value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), ms(
        re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)
    )


async def ws_rtt(url: str, headers: dict[str, str], count: int = 1000) -> list[float]:
    conn = await websocket_connect(HTTPRequest(url, headers=headers))
    times = []
    for i in range(count):
        t0 = time.perf_counter()
        await conn.write_message(f"ping {i}")
        await conn.read_message()
        times.append(time.perf_counter() - t0)
    conn.close()
    return times


def median_ms(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] * 1000


def median_run(runs: list[tuple[float, float]]) -> tuple[float, float]:
    """The median requests/s and the median p99 of a peer's runs."""
    return (
        sorted(rps for rps, _ in runs)[len(runs) // 2],
        sorted(p99 for _, p99 in runs)[len(runs) // 2],
    )


def chp_binary() -> str | None:
    local = os.path.join(HERE, ".work", "chp", "node_modules", ".bin", "configurable-http-proxy")
    if os.path.exists(local):
        return local
    if shutil.which("npm"):
        os.makedirs(os.path.dirname(os.path.dirname(os.path.dirname(local))), exist_ok=True)
        subprocess.run(
            ["npm", "install", "--silent", "configurable-http-proxy@4"],
            cwd=os.path.join(HERE, ".work", "chp"),
            capture_output=True,
        )
    return local if os.path.exists(local) else None


def start_uws(workdir: str, checkout: str | None = None) -> tuple[Server, dict[str, str], int]:
    """A `uws` server with one echo session: the server, the headers that reach the session
    through it (its owner's token, the session's host name) and the app's own port. With
    `checkout`, the server and its session helper run that checkout's code (the helper's
    environment is its own, so it gets the path through helper_pythonpath)."""
    os.makedirs(workdir)
    config = CONFIG.format(root=os.path.join(workdir, "workspaces"), python=sys.executable, app=APP)
    env = None
    if checkout:
        config += f'c.Spawner.helper_pythonpath = "{checkout}"\n'
        env = {"PYTHONPATH": checkout}
    server = Server("sqlite", config, directory=workdir, env=env).start(poll_seconds=0.005)
    base = server.base
    token = requests.post(
        base + "/tokens/", data=json.dumps({"user_info": {"username": "bench", "email": "b@x"}})
    ).json()["token"]
    auth = {"UWS-Authorization": f"Token {token}"}
    ws_id = requests.post(
        base + "/workspaces/", headers=auth, data='{"name": "b", "description": ""}'
    ).json()["data"]["workspace"]["id"]
    job = requests.put(f"{base}/workspaces/{ws_id}/start/", headers=auth, data='{"job_type": "echo"}').json()[
        "data"
    ]["job"]
    deadline = time.monotonic() + 60
    while True:
        current = requests.get(f"{base}/jobs/{job['id']}", headers=auth).json()["data"]["jobs"][0][
            "job_details"
        ]["current_job_details"]
        if "connection_details" in current:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"the session did not get ready: {current}")
        time.sleep(0.1)
    # The session's origin, reached at this machine's address with its host name as Host.
    auth["Host"] = current["connection_details"]["url_domain"].split("://", 1)[1]
    return server, auth, int(current["proxy_details"]["port"])


def start_chp(app_port: int) -> tuple[subprocess.Popen | None, str | None]:
    binary = chp_binary()
    if not binary:
        return None, None
    chp_port, api_port = free_port(), free_port()
    chp = subprocess.Popen(
        [binary, "--ip", "127.0.0.1", "--port", str(chp_port), "--api-ip", "127.0.0.1"]
        + ["--api-port", str(api_port), "--default-target", f"http://127.0.0.1:{app_port}"]
        + ["--log-level", "error"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{chp_port}/hello"
    for _ in range(100):
        try:
            requests.get(url, timeout=1)
            break
        except requests.ConnectionError:
            time.sleep(0.1)
    return chp, url


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs per peer and concurrency")
    parser.add_argument("--workdir", default=WORK)
    parser.add_argument("--download-mb", type=int, default=1024)
    parser.add_argument(
        "--baseline",
        help="another checkout of UWS (a git worktree of an earlier commit, say): its server runs "
        "beside this one's, measured in the same interleaved rounds",
    )
    args = parser.parse_args()
    os.makedirs(os.path.join(args.workdir, "chp"), exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="uws-pbench-", dir=args.workdir)
    servers: list[Server] = []
    chp = None
    try:
        server, auth, app_port = start_uws(os.path.join(workdir, "uws"))
        servers.append(server)
        peers = {"UWS": (f"{server.base}/hello", auth)}
        processes = {"UWS": psutil.Process(server.proc.pid)}  # type: ignore[union-attr]
        if args.baseline:
            before, before_auth, _ = start_uws(
                os.path.join(workdir, "baseline"), os.path.abspath(args.baseline)
            )
            servers.append(before)
            peers["UWS before"] = (f"{before.base}/hello", before_auth)
            processes["UWS before"] = psutil.Process(before.proc.pid)  # type: ignore[union-attr]
        direct = f"http://127.0.0.1:{app_port}/hello"
        chp, chp_url = start_chp(app_port)
        if chp_url:
            peers["CHP"] = (chp_url, {})
        print(
            f"HTTP GET of a 5-byte answer (wrk, one thread; median of {args.rounds} interleaved "
            f"{args.duration} s runs each):"
        )
        for c in (1, 16):
            # Interleaved rounds, medians: this 2-core VM's speed drifts by tens of percent from
            # one run to the next, which would otherwise land on whichever peer ran then.
            runs: dict[str, list[tuple[float, float]]] = {"direct": [], **{name: [] for name in peers}}
            # The server's CPU time per relayed request: steadier than req/s on a noisy machine.
            cpu: dict[str, list[float]] = {name: [] for name in processes}
            for _ in range(args.rounds):
                runs["direct"].append(wrk(direct, c, args.duration, {}))
                for name, (url, headers) in peers.items():
                    before_cpu = sum(processes[name].cpu_times()[:2]) if name in processes else 0.0
                    runs[name].append(wrk(url, c, args.duration, headers))
                    if name in processes:
                        used = sum(processes[name].cpu_times()[:2]) - before_cpu
                        cpu[name].append(used / (runs[name][-1][0] * args.duration) * 1e6)
            d_rps, d_p99 = median_run(runs["direct"])
            line = f"  c={c:<2}  direct {d_rps:8,.0f} req/s p99 {d_p99:6.2f} ms"
            for name in peers:
                rps, p99 = median_run(runs[name])
                line += f" | {name} {rps:8,.0f} req/s p99 {p99:6.2f} ms ({rps / d_rps:.0%} of direct)"
            if chp_url:
                u_rps, c_rps = median_run(runs["UWS"])[0], median_run(runs["CHP"])[0]
                line += f" | UWS/CHP {u_rps / c_rps:.2f}x"
            print(line)
            print(
                "        server CPU per request, median: "
                + "; ".join(f"{name} {sorted(v)[len(v) // 2]:.0f} µs" for name, v in cpu.items())
            )
            print(
                "        runs, req/s: "
                + "; ".join(
                    f"{name} " + ", ".join(f"{rps:,.0f}" for rps, _ in values)
                    for name, values in runs.items()
                )
            )

        port = server.port
        d = median_ms(asyncio.run(ws_rtt(f"ws://127.0.0.1:{app_port}/ws", {})))
        u = median_ms(asyncio.run(ws_rtt(f"ws://127.0.0.1:{port}/ws", auth)))
        line = f"websocket echo round trip, p50: direct {d:.3f} ms, UWS {u:.3f} ms (overhead {u - d:.3f} ms)"
        if args.baseline:
            _, before_auth = peers["UWS before"]
            b = median_ms(asyncio.run(ws_rtt(f"ws://127.0.0.1:{servers[1].port}/ws", before_auth)))
            line += f", UWS before {b:.3f} ms (overhead {b - d:.3f} ms)"
        if chp_url:
            ch = median_ms(asyncio.run(ws_rtt(chp_url.replace("http", "ws").replace("/hello", "/ws"), {})))
            line += f", CHP {ch:.3f} ms (overhead {ch - d:.3f} ms)"
        print(line)
        download(server, auth, args.download_mb)
    finally:
        if chp:
            chp.terminate()
        for each in servers:
            each.close()


def download(server: Server, auth: dict[str, str], megabytes: int) -> None:
    """A large download through UWS, and the server's memory meanwhile."""
    proc = psutil.Process(server.proc.pid)  # type: ignore[union-attr]
    before = proc.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.time()
    r = requests.get(f"{server.base}/big?mb={megabytes}", headers=auth, stream=True)
    total = sum(len(chunk) for chunk in r.iter_content(1 << 20))
    seconds = time.time() - t0
    done.set()
    sampler.join()
    print(
        f"{total / (1 << 30):.2f} GiB download through UWS in {seconds:.1f} s ({total / seconds / 1e6:.0f} MB/s): "
        f"server RSS {before / 1e6:.0f} MB -> peak {peak[0] / 1e6:.0f} MB (+{(peak[0] - before) / 1e6:.1f} MB)"
    )


if __name__ == "__main__":
    main()
