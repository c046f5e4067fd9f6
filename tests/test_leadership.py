"""Several servers sharing one PostgreSQL database (and data directory): one leads, the others
stand by and take over when it stops, dies or loses the database; servers that must not join
refuse to start (uws.leadership, uws.cluster, uws.db).

Leadership needs PostgreSQL (its advisory lock): those tests are skipped on SQLite, where a
server is always the leader."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests

from uws.db import HEAD_REVISION, Database, prepare

from helpers.api import create, login, start, wait_ready
from helpers.configs import PROXY_CONFIG
from helpers.harness import Server, second_server
from helpers.tcpproxy import TCPProxy

CONFIG = (
    PROXY_CONFIG
    + """
c.UWSApp.metrics_public = True
"""
)
STANDBY_PREFIX = "This server is a standby; "
# From the leader's end to the standby's lead: retry_seconds (0.5) and a start; generous here,
# as the machine may be busy. (The failover benchmark measures it.)
TAKEOVER_SECONDS = 5.0


def client_token(srv: Server) -> str:
    """A client token, made in process (what `uws create-client-token` does, seconds sooner)."""
    from uws.auth.tokens import create_client_token

    database = Database(srv.db_url)
    try:
        return database.call(lambda s: create_client_token(s, "portal"))
    finally:
        database.close()


def needs_postgresql(backend: str) -> None:
    if backend != "postgresql":
        pytest.skip("leadership needs PostgreSQL (its advisory lock); a SQLite server always leads")


def role(srv: Server) -> str:
    return requests.get(srv.base + "/status/", timeout=5).json()["role"]


def waited(condition: Callable[[], bool], seconds: float) -> float:
    """Seconds until `condition` held; fails after `seconds`."""
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < seconds, f"not within {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - t0


def leads(srv: Server) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return requests.get(srv.base + "/status/leader", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    return check


def metric(srv: Server, name: str) -> float:
    text = requests.get(srv.base + "/metrics", timeout=5).text
    (line,) = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.split()[1])


def assert_standby_refusal(r: requests.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["Retry-After"] == "1"
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"success", "message"} and body["success"] is False
    assert body["message"].startswith(STANDBY_PREFIX)


@pytest.fixture
def pair(backend: str) -> Iterator[tuple[Server, Server]]:
    """Two servers of one installation, the first started first (so it leads)."""
    needs_postgresql(backend)
    first = Server(backend, CONFIG).start()
    second = second_server(first, CONFIG)
    try:
        first.client_token = client_token(first)
        second.start()
        yield first, second
    finally:
        second.close()
        first.close()


def test_a_lone_server_leads(server: Server) -> None:
    """SQLite, or PostgreSQL with no other server: the leader, from its first request."""
    assert role(server) == "leader"
    r = requests.get(server.base + "/status/leader", timeout=5)
    assert r.status_code == 200
    assert r.json() == {"message": "This server leads.", "success": True, "data": {"role": "leader"}}


def test_one_leads_the_other_stands_by(backend: str) -> None:
    needs_postgresql(backend)
    first = Server(backend, CONFIG).start()
    second = second_server(first, CONFIG)
    try:
        alice = login(first, client_token(first))
        ws = create(alice)
        # A session, reached through the leader's passthrough with its link (and then its cookie).
        job = start(alice, ws["id"], job_type="echo")
        details = wait_ready(alice, job["id"])["job_details"]["current_job_details"]["connection_details"]
        browser = requests.Session()
        assert browser.get(details["url_domain"] + details["url_path"], timeout=10).status_code == 200
        session_path = details["url_path"].split("?")[0]
        assert browser.get(first.base + session_path, timeout=10).status_code == 200
        second.start()
        assert role(first) == "leader" and role(second) == "standby"
        assert requests.get(first.base + "/status/leader", timeout=5).status_code == 200
        assert_standby_refusal(requests.get(second.base + "/status/leader", timeout=5))
        assert metric(first, "uws_leader") == 1 and metric(second, "uws_leader") == 0
        # The standby refuses the API (with valid credentials too), logins, websockets and the
        # passthrough (its fast path included: the browser's cookie is valid there too): only
        # the leader acts.
        headers = {"UWS-Authorization": f"Token {alice.token}"}
        assert_standby_refusal(requests.get(second.base + "/workspaces/", headers=headers, timeout=5))
        assert_standby_refusal(
            requests.put(second.base + f"/workspaces/{ws['id']}/", json={}, headers=headers, timeout=5)
        )
        assert_standby_refusal(requests.post(second.base + "/tokens/", json={}, timeout=5))
        upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}  # fmt: skip
        assert_standby_refusal(requests.get(second.base + "/ws/events", headers=upgrade, timeout=5))
        for _ in range(2):  # (the second on a connection Tornado serves)
            assert_standby_refusal(browser.get(second.base + session_path, timeout=5))
        # The leader serves them.
        assert requests.get(first.base + "/workspaces/", headers=headers, timeout=5).status_code == 200
        assert browser.get(first.base + session_path, timeout=10).status_code == 200
    finally:
        second.close()
        first.close()


def test_the_standby_takes_over_when_the_leader_stops_or_dies(pair: tuple[Server, Server]) -> None:
    first, second = pair
    alice = login(first, first.client_token)
    # Stopped (SIGTERM): it frees the lock as it goes.
    first.stop()
    took = waited(leads(second), TAKEOVER_SECONDS)
    print(f"takeover after SIGTERM: {took:.2f} s")
    alice.base = second.base
    ws = create(alice)
    # Started again, it joins as a standby.
    first.start()
    assert role(first) == "standby" and role(second) == "leader"
    # Killed (SIGKILL): the database frees its lock when its connection closes with it.
    assert second.proc is not None
    second.proc.kill()
    second.proc.wait()
    took = waited(leads(first), TAKEOVER_SECONDS)
    print(f"takeover after SIGKILL: {took:.2f} s")
    alice.base = first.base
    assert [w["id"] for w in alice.get("/workspaces/").json()["data"]["workspaces"]] == [ws["id"]]
    # And the killed one, started again, stands by.
    second.start()
    assert role(second) == "standby" and role(first) == "leader"


def test_different_secret_is_refused(backend: str) -> None:
    """A server whose cookie_secret is not the installation's does not start, and says which."""
    needs_postgresql(backend)
    first = Server(backend, CONFIG).start()
    other = Server(backend, CONFIG, shared_with=first, same_directory=False)
    try:
        data = os.path.join(other.dir, "uws-data")
        os.makedirs(data, mode=0o700)
        with open(os.path.join(first.dir, "uws-data", "session_key"), "rb") as f:
            session_key = f.read()
        for name, content in (
            ("session_key", session_key),
            ("cookie_secret", secrets.token_hex(32).encode()),
        ):
            fd = os.open(os.path.join(data, name), os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(content)
        with pytest.raises(RuntimeError, match="server exited") as refused:
            other.start()
        message = str(refused.value)
        assert "This server's cookie_secret differs from that of the other servers" in message
        assert "session_key" not in message.split("differs")[0]
        assert role(first) == "leader"
    finally:
        other.close()
        first.close()


def test_database_newer_than_the_code_is_refused(backend: str) -> None:
    """Neither the server nor `uws upgrade-db` touches a database a newer version upgraded."""
    srv = Server(backend, CONFIG)
    try:
        database = Database(srv.db_url)
        prepare(database.engine)  # (a new database, as a server makes it: quicker than `uws`)
        database.close()
        srv.sql("UPDATE alembic_version SET version_num = '0099_from_the_future'")
        with pytest.raises(RuntimeError, match="'0099_from_the_future', newer than this server's code") as e:
            srv.start()
        assert f"knows up to {HEAD_REVISION!r}" in str(e.value)
        upgrade = srv.cli("upgrade-db", check=False)
        assert upgrade.returncode == 1 and "'0099_from_the_future'" in upgrade.stderr
        assert "Traceback" not in upgrade.stderr
        assert srv.sql("SELECT version_num FROM alembic_version") == [("0099_from_the_future",)]
    finally:
        srv.close()


def through(url: str, port: int) -> str:
    """`url` with its host and port replaced by 127.0.0.1:`port`."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"))


def test_leader_that_loses_the_database_steps_down(backend: str) -> None:
    """Its way to the database cut, the leader steps down at once: its requests get 503 with
    Retry-After, never a hang, and the standby takes over. With the database back it stands
    by; when it leads again (the other killed), it serves what the other wrote, nothing it had
    cached before."""
    needs_postgresql(backend)
    first = Server(backend, CONFIG)
    database = urlsplit(first.db_url)
    proxy = TCPProxy(database.hostname or "127.0.0.1", database.port or 5432)
    first.db_url = through(first.db_url, proxy.port)
    second = second_server(first, CONFIG)
    second.db_url = first.db_url.replace(f"127.0.0.1:{proxy.port}", database.netloc.rpartition("@")[2])
    try:
        first.start()
        alice = login(first, client_token(first))
        second.start()
        assert alice.get("/workspaces/").json()["data"]["workspaces"] == []  # (cached now)
        proxy.cut()
        t0 = time.monotonic()
        slowest = 0.0
        while leads(first)():
            began = time.monotonic()
            r = alice.get("/jobs/")
            slowest = max(slowest, time.monotonic() - began)
            # The database's error while it still leads, a standby's refusal once it does not.
            assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
            assert time.monotonic() - t0 < 3, "still leading 3 s after losing the database"
        print(f"stepped down {time.monotonic() - t0:.2f} s after the cut")
        for _ in range(5):
            began = time.monotonic()
            r = alice.get("/jobs/")
            slowest = max(slowest, time.monotonic() - began)
            assert_standby_refusal(r)
        assert slowest < 2, f"a request took {slowest:.2f} s"
        assert role(first) == "standby"
        took = waited(leads(second), TAKEOVER_SECONDS)
        print(f"the other took over {took:.2f} s after the step-down")
        alice.base = second.base
        ws = create(alice)
        proxy.restore()
        time.sleep(1)  # (the first's tries for the lock, through the proxy again, fail)
        assert role(first) == "standby" and role(second) == "leader"
        assert second.proc is not None
        second.proc.kill()
        second.proc.wait()
        took = waited(leads(first), TAKEOVER_SECONDS)
        print(f"the first leads again {took:.2f} s after the other's kill")
        alice.base = first.base
        assert [w["id"] for w in alice.get("/workspaces/").json()["data"]["workspaces"]] == [ws["id"]]
    finally:
        second.close()
        first.close()
        proxy.close()
