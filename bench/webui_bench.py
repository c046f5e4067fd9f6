"""The web interface's speed: the home page of a user with 100 workspaces and 10 running
sessions, in headless Chromium on loopback.

Prints:
  1. server render: GET / (the page's HTML) as the signed-in browser asks for it, p50 and p95
     (target: p50 at most 20 ms);
  2. first contentful paint of the home page, cold (target: at most 500 ms);
  3. total transfer of that first load, uncompressed: the page, its scripts and style, its API
     answers and the event stream's snapshot (target: at most 200 KB);
  4. status change to page: from the server publishing a job's status (the event's `time`) to
     the session card's data-status changing in the page, or an ended session's card leaving it
     (a MutationObserver; one machine, one clock), over the 10 sessions stopped one by one
     (target: at most 100 ms). With --rounds N the sessions are started again and stopped N
     times over, for a longer tail (2 changes per session and round: stopping, then ended).
     With --stall-ms M the server logs every event-loop stall of M ms or more, with the stack
     of what blocked it (UWSApp.loop_stall_seconds); the stalls are printed at the end.

    python bench/webui_bench.py [--renders 200] [--rounds 1] [--stall-ms 0]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from typing import Any, NoReturn

import requests

from common import WORK
from helpers.configs import CHROMIUM_ARGS
from helpers.harness import Server

CONFIG = """
c.LocalFileSystemStorage.root_dir = "@DIR@/workspaces"
c.UWSApp.spawner_class = "local"
c.UWSApp.log_level = "WARN"
c.JobService.max_running_jobs_per_user = 0
c.JobService.max_concurrent_starts = 0
c.UWSApp.job_types = {
    "local_test_job": {"name": "Local Test Job", "job_type": "LocalTestJob",
                       "environment_details": {"main_resource": {"sleep_seconds": "600"}}},
}
"""
HTML = {"Accept": "text/html"}
WORKSPACES = 100
SESSIONS = 10
# In the page: when each card's data-status changes, and the server time of each job event.
OBSERVE = """
window.benchSeen = [];
window.benchEvents = {};
const stream = window.uwsEvents;
const handle = stream.onEvent;
stream.onEvent = (event) => {
  const now = (performance.timeOrigin + performance.now()) / 1000;
  if (event.type === 'job') window.benchEvents[`${event.data.id}:${event.data.status}`] = [event.time, now];
  handle(event);
};
new MutationObserver((records) => {
  const now = (performance.timeOrigin + performance.now()) / 1000;
  for (const r of records) {
    if (r.type === 'attributes') {
      const status = r.target.dataset.status;
      if (r.target.matches('article.session') && r.oldValue !== status) window.benchSeen.push([r.target.id.slice(4), status, now]);
      continue;
    }
    // (an ended session leaves the home page: its card is removed)
    for (const node of r.removedNodes) {
      if (node.matches?.('article.session') && !document.getElementById(node.id)) window.benchSeen.push([node.id.slice(4), 'complete', now]);
    }
  }
}).observe(document.body, { subtree: true, childList: true, attributes: true, attributeOldValue: true, attributeFilter: ['data-status'] });
"""


def fail(message: str) -> NoReturn:
    print(f"FAILED: {message}", file=sys.stderr)
    raise SystemExit(1)


def sign_in(base: str, username: str) -> requests.Session:
    http = requests.Session()
    form = http.get(base + "/login", headers=HTML, timeout=10).text
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', form)
    if xsrf is None:
        fail("no sign-in form")
    r = http.post(base + "/login", data={"username": username, "_xsrf": xsrf.group(1)}, allow_redirects=False)
    if r.status_code != 303:
        fail(f"sign-in answered {r.status_code}")
    return http


def set_up(server: Server) -> str:
    """100 workspaces and 10 running sessions for the user `bench`; returns its API token."""
    token = (
        server.client().post("/tokens/", {"user_info": {"username": "bench", "email": "b@x"}}).json()["token"]
    )
    api = server.client(token)
    ids = [
        api.post("/workspaces/", {"name": f"workspace {i}", "description": "for the benchmark"}).json()[
            "data"
        ]["workspace"]["id"]
        for i in range(WORKSPACES)
    ]
    for ws_id in ids[:SESSIONS]:
        r = api.put(f"/workspaces/{ws_id}/start/", {"job_type": "local_test_job"})
        if r.status_code != 200:
            fail(f"start answered {r.status_code}: {r.text}")
    deadline = time.time() + 120
    while time.time() < deadline:
        jobs = api.get("/jobs/").json()["data"]["jobs"]
        if sum(j["status"] == "running" for j in jobs) == SESSIONS:
            return token
        time.sleep(0.5)
    fail("the sessions were not running after 120 s")


def renders(base: str, http: requests.Session, count: int) -> list[float]:
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        r = http.get(base + "/", headers=HTML, timeout=10)
        times.append(time.perf_counter() - t0)
        if r.status_code != 200:
            fail(f"GET / answered {r.status_code}")
    return times


class CPUPressure:
    """The machine's CPU pressure (Linux PSI, /proc/pressure/cpu `some`: the share of time some
    runnable task waited for a CPU), sampled every 10 ms, so a slow status change can be told
    apart from a busy machine (this benchmark shares it with Chromium and the sessions)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int]] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    @staticmethod
    def read() -> int | None:
        try:
            with open("/proc/pressure/cpu") as f:
                return int(f.readline().rsplit("total=", 1)[1])
        except (OSError, IndexError, ValueError):
            return None

    def run(self) -> None:
        while not self.stopped.wait(0.01):
            total = self.read()
            if total is None:
                return
            self.samples.append((time.time(), total))

    def between(self, start: float, end: float) -> float | None:
        """The share of [start, end] that some task waited for a CPU (None: not known)."""
        inside = [s for s in self.samples if start - 0.01 <= s[0] <= end + 0.01]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        return (inside[-1][1] - inside[0][1]) / 1e6 / (inside[-1][0] - inside[0][0])


def restart_sessions(api: Any, workspace_ids: list[int]) -> None:
    for ws_id in workspace_ids:
        r = api.put(f"/workspaces/{ws_id}/start/", {"job_type": "local_test_job"})
        if r.status_code != 200:
            fail(f"start answered {r.status_code}: {r.text}")


def browser_figures(
    base: str, server: Server, token: str, chromium: str, rounds: int, pressure: CPUPressure
) -> tuple[float, int, list[tuple[float, float, float]]]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        context = browser.new_context()
        page = context.new_page()
        page.goto(base + "/login")
        page.fill("#username", "bench")
        page.press("#username", "Enter")
        page.wait_for_url(base + "/")
        # A cold load now (no cache), counting every byte the page receives.
        frames: list[int] = []
        page.on(
            "websocket",
            lambda ws: ws.on(
                "framereceived", lambda f: frames.append(len(f if isinstance(f, bytes) else f.encode()))
            ),
        )
        cdp = context.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
        page.goto(base + "/")
        page.wait_for_selector(f"#workspaces li.workspace >> nth={WORKSPACES - 1}")
        page.wait_for_selector("#live[data-state=live]")
        page.wait_for_selector(f".session[data-status=running] >> nth={SESSIONS - 1}")
        page.wait_for_load_state("networkidle")
        fcp = page.evaluate("performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? -1")
        bodies = page.evaluate(
            "[...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')]"
            ".reduce((n, e) => n + e.decodedBodySize, 0)"
        )
        total = int(bodies) + sum(frames)
        # Status changes: stop each running session, see its card change.
        page.evaluate(OBSERVE)
        pressure.thread.start()
        api = server.client(token)
        for round_ in range(rounds):
            jobs = [j for j in api.get("/jobs/").json()["data"]["jobs"] if j["status"] == "running"]
            for job in jobs:
                api.put(f"/jobs/{job['id']}/stop/")
                running = f"!!document.querySelector('#job-{job['id']}[data-status=running]')"
                deadline = time.time() + 30  # (polled: the page's CSP forbids wait_for_function's eval)
                while page.evaluate(running):
                    if time.time() > deadline:
                        fail(f"job {job['id']} still shows running 30 s after its stop")
                    page.wait_for_timeout(20)
            if round_ + 1 < rounds:
                # (each card gone, so each session ended, before its workspace starts another)
                for job in jobs:
                    deadline = time.time() + 30
                    while page.evaluate(f"!!document.getElementById('job-{job['id']}')"):
                        if time.time() > deadline:
                            fail(f"job {job['id']} still shown 30 s after its stop")
                        page.wait_for_timeout(20)
                restart_sessions(api, [j["workspace_id"] for j in jobs])
                page.wait_for_selector(
                    f".session[data-status=running] >> nth={SESSIONS - 1}", timeout=120_000
                )
        page.wait_for_timeout(1000)
        seen = page.evaluate("window.benchSeen")
        published = page.evaluate("window.benchEvents")
        # (published at, received by the page at, shown at)
        delays = [
            (*published[f"{job_id}:{status}"], at)
            for job_id, status, at in seen
            if f"{job_id}:{status}" in published
        ]
        pressure.stopped.set()
        browser.close()
        return float(fcp), total, delays


def stall_reports(log_path: str) -> str:
    """The server log's stall warnings, each with the stacks under it."""
    out, inside = [], False
    with open(log_path) as f:
        for line in f:
            if line.startswith("["):
                inside = "uws.looplag" in line
            if inside:
                out.append(line)
    return "".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--renders", type=int, default=200)
    parser.add_argument(
        "--rounds", type=int, default=1, help="times the sessions are stopped (and started again)"
    )
    parser.add_argument("--stall-ms", type=float, default=0, help="log event-loop stalls this long (0: off)")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        fail("Chromium is not installed (apt-get install chromium)")
    os.makedirs(WORK, exist_ok=True)
    config = CONFIG + f"c.UWSApp.loop_stall_seconds = {args.stall_ms / 1000}\n"
    server = Server("sqlite", config, directory=tempfile.mkdtemp(dir=WORK), extra_args=["--dev"]).start()
    stalls = ""
    try:
        token = set_up(server)
        http = sign_in(server.base, "bench")
        renders(server.base, http, 20)  # (warm-up)
        times = sorted(renders(server.base, http, args.renders))
        page_bytes = len(http.get(server.base + "/", headers=HTML, timeout=10).content)
        pressure = CPUPressure()
        fcp, total, delays = browser_figures(server.base, server, token, chromium, args.rounds, pressure)
        if args.stall_ms:
            stalls = stall_reports(server.log_path)
    finally:
        server.close()
    p50, p95 = statistics.median(times) * 1000, times[int(0.95 * (len(times) - 1))] * 1000
    print(f"home page, {WORKSPACES} workspaces and {SESSIONS} running sessions:")
    print(
        f"  server render GET / ({args.renders} requests, {page_bytes} bytes): p50 {p50:.1f} ms, p95 {p95:.1f} ms (target p50 <= 20 ms)"
    )
    print(f"  first contentful paint: {fcp:.0f} ms (target <= 500 ms)")
    print(f"  first load transfer, uncompressed: {total / 1000:.1f} KB (target <= 200 KB)")
    if delays:
        whole = sorted(shown - sent for sent, _, shown in delays)
        wire = sorted(received - sent for sent, received, _ in delays)
        page = sorted(shown - received for _, received, shown in delays)
        ms = lambda values: (  # noqa: E731
            f"p50 {statistics.median(values) * 1000:.1f} ms, p95 {values[int(0.95 * (len(values) - 1))] * 1000:.1f} ms, "
            f"max {values[-1] * 1000:.1f} ms"
        )
        print(
            f"  status change, server publish to page ({len(whole)} changes): {ms(whole)} (target <= 100 ms)"
        )
        print(f"    of which publish to the page's socket: {ms(wire)}; socket to DOM: {ms(page)}")
        whole_pressure = (
            pressure.between(pressure.samples[0][0], pressure.samples[-1][0]) if pressure.samples else None
        )
        if whole_pressure is not None:
            sent, _, shown = max(delays, key=lambda d: d[2] - d[0])
            worst = pressure.between(sent, shown)
            print(
                f"    CPU pressure (time some task waited for a CPU) over the changes: {whole_pressure:.0%}; "
                f"during the slowest one: {'unknown' if worst is None else format(worst, '.0%')}"
            )
    else:
        print("  status change: none observed")
    if args.stall_ms:
        print(f"event-loop stalls of {args.stall_ms:.0f} ms or more:\n{stalls or '  none'}")


if __name__ == "__main__":
    main()
