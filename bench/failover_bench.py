"""Failover figures: two servers of one installation (PostgreSQL, one data directory) behind
HAProxy, as the README's "High availability" section sets them up.

With sessions running, a client creating workspaces through HAProxy and /ws/events subscribers
listening, the leader is killed with SIGKILL `--kills` times (each time the killed server is
started again and stands by). Printed:
  - per kill, the seconds from the SIGKILL to the first write acknowledged through HAProxy, and
    their median and worst;
  - sessions lost (not answering through HAProxy within 30 s of a kill), acknowledged writes
    missing from the database, and events a subscriber missed or got twice;
  - GET /workspaces/ throughput (wrk, 100 workspaces) on the leader with the standby running
    and with it stopped, in interleaved rounds: what the second server costs.

Needs PostgreSQL (UWS_TEST_DB_URL, default postgresql://postgres@127.0.0.1:5432/test), haproxy
and wrk (Debian packages).

    python bench/failover_bench.py [--kills 5] [--sessions 10] [--rounds 3] [--duration 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time

os.environ.setdefault("UWS_TEST_DB_URL", "postgresql://postgres@127.0.0.1:5432/test")

from api_bench import wrk  # noqa: E402

from common import WORK  # noqa: E402, F401  (puts tests/ on sys.path)
from helpers.api import create, start, wait_for, wait_ready  # noqa: E402
from helpers.failover import (  # noqa: E402
    Subscriber,
    Writer,
    ha_cluster,
    kill_leader,
    reachable,
    role,
    stored_events,
    users,
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    args = parser.parse_args()
    for tool in ("haproxy", "wrk"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            raise SystemExit(f"{tool} is needed: apt-get install {tool}")

    with ha_cluster() as (first, second, proxy):
        (name, owner), (other_name, other) = users(proxy, first.new_client_token(), 2)
        jobs = [start(owner, create(owner)["id"], job_type="echo") for _ in range(args.sessions)]
        links = {}
        for job in jobs:
            details = wait_ready(owner, job["id"], 60)["job_details"]["current_job_details"]
            links[job["id"]] = (
                details["connection_details"]["url_domain"] + details["connection_details"]["url_path"]
            )

        subscribers = [Subscriber(proxy.base, owner.token), Subscriber(proxy.base, other.token)]
        writer = Writer(owner, limit=100_000)
        for thread in (*subscribers, writer):
            thread.start()
        wait_for(lambda: all(s.ids for s in subscribers) and writer.acknowledged, 20)

        servers = (first, second)
        to_first_write = []
        sessions_lost = 0
        for k in range(args.kills):
            killed, survivor, moment = kill_leader(servers)
            seconds = writer.first_write_after(moment, 60)
            to_first_write.append(seconds)
            deadline = time.monotonic() + 30
            codes = reachable(links)
            while set(codes.values()) != {200} and time.monotonic() < deadline:
                time.sleep(0.2)
                codes = reachable(links)
            lost = sum(1 for code in codes.values() if code != 200)
            sessions_lost += lost
            killed.start()
            print(
                f"kill {k + 1}: first write {seconds:.2f} s after SIGKILL; sessions not answering: {lost}; "
                f"restarted server is {role(killed)}"
            )
            time.sleep(1)

        writer.stop.set()
        writer.join(30)
        time.sleep(1)
        for s in subscribers:
            s.stop.set()
            s.join(10)

        acknowledged = {ws_id for _, _, ws_id in writer.acknowledged}
        stored = {row[0] for row in first.sql("SELECT id FROM workspaces")}
        writes_lost = len(acknowledged - stored)
        missed = doubled = 0
        for username, s in ((name, subscribers[0]), (other_name, subscribers[1])):
            received = [i for i in s.ids[1:] if i != -1]
            doubled += len(received) - len(set(received))
            last = received[-1] if received else s.ids[0]
            missed += len(set(stored_events(first, username, s.ids[0], last)) - set(received))
            missed += s.ids.count(-1)  # a snapshot instead of the missed events

        print()
        print(
            f"first write after the leader's SIGKILL: median {statistics.median(to_first_write):.2f} s, "
            f"worst {max(to_first_write):.2f} s (targets: <= 5 s, <= 10 s)"
        )
        print(
            f"sessions lost: {sessions_lost}; acknowledged writes lost: {writes_lost} of {len(acknowledged)}; "
            f"events missed: {missed}, doubled: {doubled} (targets: 0)"
        )
        print(f"writes refused or failed during the run (retried by the client): {writer.failures}")

        # What the standby costs the leader: GET /workspaces/ with it running and with it stopped.
        for _ in range(100 - len(owner.get("/workspaces/").json()["data"]["workspaces"])):
            create(owner)
        leader = next(s for s in servers if role(s) == "leader")
        standby = next(s for s in servers if s is not leader)
        url = leader.base + "/workspaces/"
        with_standby, alone = [], []
        for _ in range(args.rounds):
            with_standby.append(wrk(url, owner.token, args.duration, 16)[0])
            standby.stop()
            alone.append(wrk(url, owner.token, args.duration, 16)[0])
            standby.start()
        a, b = statistics.median(alone), statistics.median(with_standby)
        print(
            f"GET /workspaces/ on the leader, c=16: alone {a:,.0f} req/s, with a standby {b:,.0f} req/s "
            f"(cost {100 * (a - b) / a:+.1f}%, target <= 5%); rounds: alone {[round(x) for x in alone]}, "
            f"with standby {[round(x) for x in with_standby]}"
        )
        through = wrk(proxy.base + "/workspaces/", owner.token, args.duration, 16)[0]
        print(f"the same through HAProxy: {through:,.0f} req/s")


if __name__ == "__main__":
    main()
