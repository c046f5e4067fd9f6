"""Throughput of the core REST API, and start-up time.

Runs one `uws` server process on SQLite and drives it with wrk (Debian package `wrk`) from a
separate process at concurrency 16:
  - GET /workspaces/ for a user with 100 workspaces
  - POST /workspaces/ with 20 files each
and times `uws` from start to the first answered request on an empty database.

With --compare FEATURE..., it measures instead what optional features cost: the same
GET /workspaces/ load against two servers side by side, one with the features on (the default
configuration) and one with them switched off (FEATURES below says how), in interleaved rounds
(a small VM's speed drifts; the median of each side is printed, and the cost in per cent).

With --baseline DIR, it measures what a change costs: GET and POST /workspaces/ against this
checkout's server and one run from DIR (another checkout, e.g. `git archive main | tar -x -C
DIR`), side by side in interleaved rounds as --compare does.

    python bench/api_bench.py [--duration 10] [--connections 16]
    python bench/api_bench.py --compare metrics audit [--rounds 5] [--duration 5]
    python bench/api_bench.py --baseline /tmp/uws-main [--rounds 5] [--duration 5]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile

import requests

from common import WORK, start_server

CONFIG = """
c.UWSApp.authenticator_class = "dev"
c.LocalFileSystemStorage.root_dir = "{root}"
c.UWSApp.log_level = "WARN"
"""
# Optional features --compare can switch off, each as the configuration line that does it.
FEATURES = {
    "metrics": "c.UWSApp.metrics_enabled = False\n",
    "audit": "c.AuditLog.enabled = False\n",
}


def wrk(
    url: str, token: str, duration: int, connections: int, script: str | None = None
) -> tuple[float, float, float]:
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "-H",
        f"UWS-Authorization: Token {token}",
    ]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout

    def ms(text: str) -> float:
        match = re.match(r"([\d.]+)([a-z]+)", text)
        if match is None:
            raise SystemExit(f"cannot read wrk's output:\n{out}")
        value, unit = match.groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise SystemExit(f"{non2xx.group(1)} failed requests:\n{out}")
    return rps, p50, p99


def log_in_with_workspaces(base: str, username: str = "bench", count: int = 100) -> str:
    """A user's token, the user holding `count` workspaces (one small file each)."""
    token = requests.post(
        base + "/tokens/",
        data=json.dumps({"user_info": {"username": username, "email": f"{username}@example.org"}}),
    ).json()["token"]
    headers = {"UWS-Authorization": f"Token {token}"}
    for i in range(count):
        r = requests.post(
            base + "/workspaces/",
            headers=headers,
            data=json.dumps(
                {
                    "name": f"ws {i}",
                    "description": "bench workspace",
                    "workspace_details": {"files": [{"name": "hello.txt", "content": "hello"}]},
                }
            ),
        )
        r.raise_for_status()
    return token


def compare(args: argparse.Namespace) -> None:
    """GET /workspaces/ on a server with the features on and one with them off, interleaved."""
    off = "".join(FEATURES[name] for name in args.compare)
    servers = {}
    try:
        for side, extra in (("on", ""), ("off", off)):
            workdir = tempfile.mkdtemp(prefix="uws-bench-", dir=args.workdir)
            config = CONFIG.format(root=os.path.join(workdir, "workspaces")) + extra
            server, _ = start_server(workdir, config)
            servers[side] = (server, log_in_with_workspaces(server.base))
        results: dict[str, list[tuple[float, float, float]]] = {"on": [], "off": []}
        for round_number in range(args.rounds):
            order = ("on", "off") if round_number % 2 == 0 else ("off", "on")
            for side in order:
                server, token = servers[side]
                results[side].append(
                    wrk(server.base + "/workspaces/", token, args.duration, args.connections)
                )
        features = " + ".join(args.compare)
        medians = {}
        for side in ("on", "off"):
            rps = statistics.median(r[0] for r in results[side])
            p50 = statistics.median(r[1] for r in results[side])
            p99 = statistics.median(r[2] for r in results[side])
            medians[side] = rps
            runs = ", ".join(f"{r[0]:,.0f}" for r in results[side])
            print(
                f"GET /workspaces/ (100 workspaces), c={args.connections}, {features} {side}: "
                f"median {rps:,.0f} req/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms (runs: {runs})"
            )
        cost = (medians["off"] - medians["on"]) / medians["off"] * 100
        # Each round's two runs follow each other, so their ratio drifts less than the medians.
        paired = statistics.median(
            (off[0] - on[0]) / off[0] * 100 for on, off in zip(results["on"], results["off"], strict=True)
        )
        print(
            f"cost of {features}: {cost:.1f}% of GET /workspaces/ throughput (medians), {paired:.1f}% "
            f"(median of each round's pair); {args.rounds} rounds of {args.duration} s"
        )
    finally:
        for server, _ in servers.values():
            server.close()


def post_script(workdir: str) -> str:
    """wrk's script for POST /workspaces/ with 20 files."""
    body = json.dumps(
        {
            "name": "bench",
            "description": "post bench",
            "workspace_details": {
                "files": [
                    {"name": f"dir/file{i}.txt", "content": f"content of file {i}\n" * 4} for i in range(20)
                ]
            },
        }
    )
    script = os.path.join(workdir, "post.lua")
    with open(script, "w") as f:
        f.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n')
    return script


def new_token(base: str, username: str) -> str:
    return requests.post(
        base + "/tokens/",
        data=json.dumps({"user_info": {"username": username, "email": f"{username}@example.org"}}),
    ).json()["token"]


def against_baseline(args: argparse.Namespace) -> None:
    """GET and POST /workspaces/ on this checkout's server and on the baseline's, interleaved."""
    servers = {}
    try:
        for side, code in (("this", None), ("baseline", args.baseline)):
            workdir = tempfile.mkdtemp(prefix="uws-bench-", dir=args.workdir)
            config = CONFIG.format(root=os.path.join(workdir, "workspaces"))
            server, _ = start_server(workdir, config, code)
            token = log_in_with_workspaces(server.base)
            servers[side] = (server, token, new_token(server.base, "poster"), post_script(workdir))
        results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
        for round_number in range(args.rounds):
            order = ("this", "baseline") if round_number % 2 == 0 else ("baseline", "this")
            for load in ("GET", "POST"):
                for side in order:
                    server, token, post_token, script = servers[side]
                    if load == "GET":
                        result = wrk(server.base + "/workspaces/", token, args.duration, args.connections)
                    else:
                        result = wrk(
                            server.base + "/workspaces/", post_token, args.duration, args.connections, script
                        )
                    results.setdefault((load, side), []).append(result)
        for load, what in (
            ("GET", "GET /workspaces/ (100 workspaces)"),
            ("POST", "POST /workspaces/ (20 files)"),
        ):
            medians = {}
            for side in ("this", "baseline"):
                runs = results[(load, side)]
                medians[side] = statistics.median(r[0] for r in runs)
                print(
                    f"{what}, c={args.connections}, {side}: median {medians[side]:,.0f} req/s, "
                    f"p50 {statistics.median(r[1] for r in runs):.2f} ms, "
                    f"p99 {statistics.median(r[2] for r in runs):.2f} ms "
                    f"(runs: {', '.join(f'{r[0]:,.0f}' for r in runs)})"
                )
            paired = statistics.median(
                (base[0] - this[0]) / base[0] * 100
                for this, base in zip(results[(load, "this")], results[(load, "baseline")], strict=True)
            )
            cost = (medians["baseline"] - medians["this"]) / medians["baseline"] * 100
            print(
                f"  cost against the baseline: {cost:.1f}% (medians), {paired:.1f}% (median of each round's pair)"
            )
        print(f"{args.rounds} rounds of {args.duration} s; baseline: {args.baseline}")
    finally:
        for server, *_ in servers.values():
            server.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--workdir",
        default=WORK,
        help="where the servers keep their data (some machines' /tmp is much slower)",
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        choices=sorted(FEATURES),
        help="measure GET /workspaces/ with these features on and off, side by side",
    )
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="another checkout of UWS: measure GET and POST /workspaces/ against it, side by side",
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved runs per side (--compare, --baseline)"
    )
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    if args.compare:
        compare(args)
        return
    if args.baseline:
        against_baseline(args)
        return

    startups = []
    for _ in range(5):
        workdir = tempfile.mkdtemp(prefix="uws-bench-", dir=args.workdir)
        server, seconds = start_server(workdir, CONFIG.format(root=os.path.join(workdir, "workspaces")))
        startups.append(seconds)
        server.close()
    print(
        f"start-up to first answer (empty database): median {statistics.median(startups) * 1000:.0f} ms, "
        f"max {max(startups) * 1000:.0f} ms over {len(startups)} runs"
    )

    workdir = tempfile.mkdtemp(prefix="uws-bench-", dir=args.workdir)
    server, _ = start_server(workdir, CONFIG.format(root=os.path.join(workdir, "workspaces")))
    base = server.base
    try:
        token = log_in_with_workspaces(base)
        rps, p50, p99 = wrk(base + "/workspaces/", token, args.duration, args.connections)
        print(
            f"GET /workspaces/ (100 workspaces), c={args.connections}: {rps:,.0f} req/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms"
        )

        script = post_script(workdir)
        post_token = new_token(base, "poster")
        rps, p50, p99 = wrk(base + "/workspaces/", post_token, args.duration, args.connections, script)
        print(
            f"POST /workspaces/ (20 files), c={args.connections}: {rps:,.0f} req/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms"
        )
    finally:
        server.close()


if __name__ == "__main__":
    main()
