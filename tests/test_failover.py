"""Failover as the README's "High availability" section sets it up: two servers on one
PostgreSQL database and one data directory, behind HAProxy (Debian's package), which sends every
request to the server whose /status/leader answers 200.

With 20 sessions running, a client creating workspaces and reading /jobs/ through HAProxy, and
/ws/events subscribers listening, the leader is killed with SIGKILL, and later the new leader
too. Every session survives and stays reachable, every acknowledged write is in the database,
every subscriber gets every event once, and a killed server started again stands by.

How soon writes succeed again is measured, not asserted here: bench/failover_bench.py."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from helpers.api import create, get_job, start, wait_for, wait_ready
from helpers.failover import (
    Subscriber,
    Writer,
    ha_cluster,
    kill_leader,
    reachable,
    role,
    session_helpers,
    stored_events,
    users,
)
from helpers.haproxy import HAProxy, haproxy_path
from helpers.harness import Server

SESSIONS = 20
# Time each phase may take on a busy 2-core machine; the benchmark measures the real figures.
TAKEOVER_LIMIT = 30.0


@pytest.fixture
def cluster(backend: str) -> Iterator[tuple[Server, Server, HAProxy]]:
    if backend != "postgresql":
        pytest.skip("failover needs PostgreSQL (leadership is an advisory lock there)")
    if haproxy_path() is None:
        pytest.skip("needs haproxy (Debian package haproxy)")
    with ha_cluster() as servers:
        yield servers


def test_sessions_writes_and_events_survive_two_leader_kills(cluster: tuple[Server, Server, HAProxy]) -> None:
    first, second, proxy = cluster
    made = users(proxy, first.new_client_token(), 2)
    names = [name for name, _ in made]
    clients = [client for _, client in made]

    jobs = []
    for i in range(SESSIONS):
        owner = clients[i % 2]
        jobs.append((owner, start(owner, create(owner)["id"], job_type="echo")))
    links: dict[int, str] = {}
    for owner, job in jobs:
        ready = wait_ready(owner, job["id"], 60)["job_details"]["current_job_details"]["connection_details"]
        links[job["id"]] = ready["url_domain"] + ready["url_path"]
    assert set(reachable(links).values()) == {200}
    helpers_before = session_helpers(first.dir)
    assert len(helpers_before) == SESSIONS

    subscribers = [Subscriber(proxy.base, c.token) for c in clients]
    writer = Writer(clients[0])
    for thread in (*subscribers, writer):
        thread.start()
    wait_for(lambda: all(s.ids for s in subscribers) and writer.acknowledged, 20)

    servers = (first, second)
    for _ in range(2):
        killed, survivor, moment = kill_leader(servers)
        writer.first_write_after(moment, TAKEOVER_LIMIT)
        wait_for(lambda s=survivor: role(s) == "leader", TAKEOVER_LIMIT)  # (it answered that write)
        # Every session answers through the new leader, without having been restarted.
        wait_for(lambda: set(reachable(links).values()) == {200}, TAKEOVER_LIMIT)
        # The killed server, started again, joins as a standby.
        killed.start()
        assert role(killed) == "standby"
        time.sleep(1)  # writes and events flow through the new leader for a while

    writer.stop.set()
    writer.join(30)
    time.sleep(1)  # the last events reach the subscribers
    for s in subscribers:
        s.stop.set()
        s.join(10)

    # Every acknowledged write is in the database.
    acknowledged = {ws_id for _, _, ws_id in writer.acknowledged}
    stored = {row[0] for row in first.sql("SELECT id FROM workspaces")}
    assert acknowledged and acknowledged <= stored, sorted(acknowledged - stored)[:10]

    # Every session is still the same running session: the same helper processes, none restarted.
    assert session_helpers(first.dir) == helpers_before
    for owner, job in jobs:
        status = get_job(owner, job["id"])["status"]
        assert status == "running", (job["id"], status)

    # Each subscriber got every event of its user once, in order, across both handovers.
    for name, s in zip(names, subscribers, strict=True):
        assert s.connections >= 3, s.connections  # it really did resume twice
        assert -1 not in s.ids, "a resumed stream fell back to a snapshot: events were lost"
        received = s.ids[1:]  # the first message is the opening snapshot
        assert len(received) == len(set(received)), "an event arrived twice"
        assert received == sorted(received)
        last = received[-1] if received else s.ids[0]
        assert received == stored_events(first, name, s.ids[0], last), name
    assert len(subscribers[0].ids) > 10  # the writer's user saw its writes as events
