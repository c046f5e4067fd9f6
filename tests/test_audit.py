"""The audit log (uws.audit) end to end: each security-relevant event is one JSON line with the
right actor, action, object, outcome and source; refusals too; X-Forwarded-For only from trusted
proxies; reopened on SIGHUP after a logrotate-style rename; 0600 whatever the umask; a file that
cannot be written never fails a request; and no credential the tests used is ever in it."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import stat
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from helpers.api import create, login, start, unique_name, user_id, wait_for, wait_ready, wait_status
from helpers.configs import LOCAL_CONFIG, SESSION_CONFIG
from helpers.harness import Client, Server, running_server

FIELDS = ["time", "action", "outcome", "actor", "object", "source"]
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
FORGED = "203.0.113.9"

# Sessions of SESSION_CONFIG, plus one the culler stops after 2 idle seconds.
AUDIT_CONFIG = (
    SESSION_CONFIG
    + """
c.UWSApp.cull_interval_seconds = 0.5
c.UWSApp.job_types["web_idle"] = {"name": "Idle web app", "job_type": "CommandJob",
    "environment_details": {"main_resource": {**c.UWSApp.job_types["web"]["environment_details"]["main_resource"],
                                              "idle_timeout_seconds": "2"}}}
"""
)


@pytest.fixture(scope="module")
def aserver(backend: str) -> Iterator[Server]:
    """The default audit log (<data_dir>/audit.log), no trusted proxies."""
    yield from running_server(backend, AUDIT_CONFIG)


def audit_path(server: Server) -> str:
    return os.path.join(server.dir, "uws-data", "audit.log")


def read_lines(path: str) -> list[dict[str, Any]]:
    """Every line of an audit file, each checked for the fields every line has, in order."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return []
    lines = [json.loads(line) for line in text.splitlines()]
    for line in lines:
        assert list(line)[:6] == FIELDS and set(line) <= {*FIELDS, "details"}, line
        assert TIME.match(line["time"]), line
    return lines


def barrier(server: Server) -> str:
    """A refused request (no credentials) on a path of its own: its line is written after every
    line of the requests before it, so it marks where they end."""
    path = f"/workspaces/{secrets.randbelow(10**12) + 10**12}/"
    assert requests.get(server.base + path, timeout=5).status_code == 401
    return path


def settled(server: Server, path: str) -> list[dict[str, Any]]:
    """Every line of the requests made so far (the last one the barrier's)."""
    end = barrier(server)
    return wait_for(lambda: (found := read_lines(path)) and found[-1]["object"] == end and found)


def lines_of(server: Server, action: Callable[[], Any], path: str | None = None) -> list[dict[str, Any]]:
    """The audit lines the requests `action` makes write, and nothing else."""
    path = path or audit_path(server)
    mark = len(settled(server, path))
    action()
    return settled(server, path)[mark:-1]


def one_line(server: Server, action: Callable[[], Any], path: str | None = None) -> dict[str, Any]:
    lines = lines_of(server, action, path)
    assert len(lines) == 1, lines
    return lines[0]


def fields(line: dict[str, Any]) -> tuple[Any, ...]:
    return line["action"], line["outcome"], line["actor"], line["object"], line["source"]


# ---- events ---------------------------------------------------------------------------------
def test_login_workspace_and_logout_are_one_line_each(aserver: Server) -> None:
    name = unique_name()
    holder: dict[str, Client] = {}

    def log_in() -> None:
        holder["c"] = login(aserver, aserver.client_token, name)

    line = one_line(aserver, log_in)
    assert fields(line) == ("login", "success", name, f"user:{name}", "127.0.0.1")
    alice = holder["c"]
    made: dict[str, Any] = {}
    line = one_line(aserver, lambda: made.update(create(alice)))
    assert fields(line) == ("workspace.create", "success", name, f"workspace:{made['id']}", "127.0.0.1")
    # Reads and writes that are not security events write nothing.
    assert (
        lines_of(aserver, lambda: (alice.get("/workspaces/"), alice.put(f"/workspaces/{made['id']}/", {})))
        == []
    )
    line = one_line(aserver, lambda: alice.delete(f"/workspaces/{made['id']}/"))
    assert fields(line) == ("workspace.delete", "success", name, f"workspace:{made['id']}", "127.0.0.1")
    second = login(aserver, aserver.client_token, name)
    line = one_line(aserver, lambda: alice.delete("/tokens/"))
    assert fields(line) == ("token.revoke", "success", name, f"user:{name}", "127.0.0.1")
    assert line["details"] == {"all": False}
    line = one_line(aserver, lambda: second.delete("/tokens/?all=true"))
    assert line["action"] == "token.revoke" and line["details"] == {"all": True}


def test_share_accept_and_decline(aserver: Server) -> None:
    alice = login(aserver, aserver.client_token)
    bob = login(aserver, aserver.client_token)
    w = create(alice)
    bob_id = user_id(alice, bob)
    answers: list[dict[str, Any]] = []

    def share() -> None:
        r = alice.post("/shared_workspaces/", {"original_workspace_id": w["id"], "shared_user_ids": [bob_id]})
        assert r.status_code == 200, r.text
        answers.extend(r.json()["data"]["shared_workspaces"])

    line = one_line(aserver, share)
    copy_id = answers[0]["shared_workspace_id"]["id"]
    assert fields(line) == ("workspace.share", "success", alice.username, f"workspace:{w['id']}", "127.0.0.1")
    assert line["details"] == {"recipients": [bob.username], "copy_ids": [copy_id]}
    line = one_line(aserver, lambda: bob.put(f"/shared_workspaces/{copy_id}/accept/"))
    assert fields(line) == ("share.accept", "success", bob.username, f"workspace:{copy_id}", "127.0.0.1")
    # A second share, declined by its recipient.
    w2 = create(alice)
    r = alice.post("/shared_workspaces/", {"original_workspace_id": w2["id"], "shared_user_ids": [bob_id]})
    copy2 = r.json()["data"]["shared_workspaces"][0]["shared_workspace_id"]["id"]
    line = one_line(aserver, lambda: bob.delete(f"/shared_workspaces/{copy2}/"))
    assert fields(line) == ("share.delete", "success", bob.username, f"workspace:{copy2}", "127.0.0.1")


def test_session_start_and_stop_by_owner(aserver: Server) -> None:
    alice = login(aserver, aserver.client_token)
    w = create(alice)
    job: dict[str, Any] = {}
    line = one_line(aserver, lambda: job.update(start(alice, w["id"], job_type="web")))
    assert fields(line) == ("session.start", "success", alice.username, f"workspace:{w['id']}", "127.0.0.1")
    assert line["details"] == {"job_id": job["id"], "job_type": "web"}
    wait_ready(alice, job["id"])
    line = one_line(aserver, lambda: alice.put(f"/jobs/{job['id']}/stop/"))
    assert fields(line) == ("session.stop", "success", alice.username, f"job:{job['id']}", "127.0.0.1")
    wait_status(alice, job["id"], "complete")


def test_the_server_s_own_stops_are_the_system_s(aserver: Server) -> None:
    """A time limit reached and an idle session culled: actor "system", no source address."""
    alice = login(aserver, aserver.client_token)
    short = start(alice, create(alice)["id"], job_type="short")
    idle = start(alice, create(alice)["id"], job_type="web_idle")
    for job, reason in ((short, "time_limit"), (idle, "idle")):
        wait_status(alice, job["id"], "complete", timeout=30)
        found = wait_for(
            lambda job=job: [
                line for line in read_lines(audit_path(aserver)) if line["object"] == f"job:{job['id']}"
            ]
        )
        assert len(found) == 1, found
        assert fields(found[0]) == ("session.stop", "success", "system", f"job:{job['id']}", None)
        assert found[0]["details"]["reason"] == reason


# ---- refusals -------------------------------------------------------------------------------
def test_failed_logins(aserver: Server) -> None:
    name = unique_name()
    info = {"username": name, "email": f"{name}@example.org"}
    wrong = {"client_token": "0" * 40, "user_info": info}
    line = one_line(aserver, lambda: aserver.client().post("/tokens/", wrong))
    assert fields(line) == ("login", "refused", None, f"user:{name}", "127.0.0.1")
    assert line["details"] == {"status": 401, "reason": "Incorrect authentication credentials."}
    missing = {"client_token": aserver.client_token}
    line = one_line(aserver, lambda: aserver.client().post("/tokens/", missing))
    assert fields(line) == ("login", "failure", None, None, "127.0.0.1")
    assert line["details"] == {"status": 400}


def test_refused_access(aserver: Server) -> None:
    alice = login(aserver, aserver.client_token)
    bob = login(aserver, aserver.client_token)
    w = create(alice)
    line = one_line(aserver, lambda: aserver.client("f" * 40).get("/jobs/"))
    assert fields(line) == ("access.refused", "refused", None, "/jobs/", "127.0.0.1")
    assert line["details"] == {"method": "GET", "status": 401, "reason": "Invalid token provided."}
    # Another user's workspace: the same 404 as none at all, and a refusal in the log.
    line = one_line(aserver, lambda: bob.delete(f"/workspaces/{w['id']}/"))
    assert fields(line) == ("workspace.delete", "refused", bob.username, f"workspace:{w['id']}", "127.0.0.1")
    assert line["details"] == {"status": 404}
    line = one_line(aserver, lambda: bob.put(f"/workspaces/{w['id']}/upload/"))
    assert fields(line) == (
        "access.refused",
        "refused",
        bob.username,
        f"/workspaces/{w['id']}/upload/",
        "127.0.0.1",
    )
    # A websocket opened with a ticket that is no ticket.
    line = one_line(aserver, lambda: requests.get(f"{aserver.base}/ws/events?ticket=bogus", timeout=5))
    assert fields(line) == ("access.refused", "refused", None, "/ws/events", "127.0.0.1")
    assert line["details"]["status"] == 401


def test_refused_passthrough(aserver: Server) -> None:
    alice = login(aserver, aserver.client_token)
    bob = login(aserver, aserver.client_token)
    job = start(alice, create(alice)["id"], job_type="web")
    details = wait_ready(alice, job["id"])["job_details"]["current_job_details"]["connection_details"]
    url = f"{aserver.base}/passthrough/{job['id']}/"
    # Bob's own token, and a link token that is not the session's.
    for request, actor in (
        (lambda: requests.get(url, headers=bob.headers(), timeout=5), bob.username),
        (lambda: requests.get(url + "?token=" + "0" * 40, timeout=5), None),
    ):
        line = one_line(aserver, request)
        assert fields(line) == ("access.refused", "refused", actor, f"job:{job['id']}", "127.0.0.1")
        assert line["details"]["status"] == 403
    # The owner's link lets her in, and writes nothing.
    assert (
        lines_of(aserver, lambda: requests.get(details["url_domain"] + details["url_path"], timeout=5)) == []
    )
    alice.put(f"/jobs/{job['id']}/stop/")


def test_no_credential_is_ever_written(aserver: Server) -> None:
    """Every secret these requests carry (client token, user tokens, a websocket ticket, a
    session's link token and access cookie) is looked for in the whole file."""
    alice = login(aserver, aserver.client_token)
    assert alice.token is not None
    revoked = login(aserver, aserver.client_token, alice.username)
    assert revoked.token is not None
    revoked.delete("/tokens/")
    revoked.get("/workspaces/")  # 401 with a revoked token
    ticket = alice.post("/ws_tickets/").json()["data"]["ticket"]
    requests.get(f"{aserver.base}/ws/events?ticket={ticket}", timeout=5)  # redeemed (no upgrade)
    requests.get(f"{aserver.base}/ws/events?ticket={ticket}", timeout=5)  # refused: used
    job = start(alice, create(alice)["id"], job_type="web")
    details = wait_ready(alice, job["id"])["job_details"]["current_job_details"]["connection_details"]
    link_token = details["url_path"].split("token=", 1)[1]
    browser = requests.Session()
    browser.get(details["url_domain"] + details["url_path"], timeout=5)
    cookies = [cookie.value for cookie in browser.cookies]
    assert cookies
    bob = login(aserver, aserver.client_token)
    requests.get(
        f"{aserver.base}/passthrough/{job['id']}/?token={link_token[::-1]}", headers=bob.headers(), timeout=5
    )
    aserver.client().post("/tokens/", {"client_token": aserver.client_token[::-1], "user_info": {}})
    alice.put(f"/jobs/{job['id']}/stop/")
    settled(aserver, audit_path(aserver))
    with open(audit_path(aserver), encoding="utf-8") as f:
        text = f.read()
    # The refusals these requests met are there, without what they carried.
    assert '"object": "/ws/events"' in text and f'"object": "job:{job["id"]}"' in text
    for secret in (aserver.client_token, alice.token, revoked.token, bob.token, ticket, link_token, *cookies):
        assert secret and secret not in text
    assert "token=" not in text and "ticket=" not in text


# ---- where lines go ---------------------------------------------------------------------------
def test_an_untrusted_client_cannot_choose_its_source(aserver: Server) -> None:
    name = unique_name()
    body = {"client_token": aserver.client_token, "user_info": {"username": name, "email": f"{name}@x.org"}}
    headers = {"X-Forwarded-For": FORGED, "X-Real-Ip": FORGED}
    line = one_line(aserver, lambda: aserver.client().post("/tokens/", body, headers=headers))
    assert line["action"] == "login" and line["source"] == "127.0.0.1"


TRUSTING_CONFIG = (
    LOCAL_CONFIG + 'c.FrontServer.trusted_proxies = ["127.0.0.1/32"]\nc.AuditLog.path = "@DIR@/audit.log"\n'
)


@pytest.fixture(scope="module")
def tserver(backend: str) -> Iterator[Server]:
    """Behind a trusted proxy on 127.0.0.1, with the audit log at a path of its own, started
    with a umask that would leave new files readable and writable by everyone."""
    old = os.umask(0)
    try:
        server = Server(backend, TRUSTING_CONFIG).start()
    finally:
        os.umask(old)
    try:
        server.client_token = server.new_client_token()
        yield server
    finally:
        server.close()


def tpath(server: Server) -> str:
    return os.path.join(server.dir, "audit.log")


def test_a_trusted_proxy_names_the_source(tserver: Server) -> None:
    name = unique_name()
    body = {"client_token": tserver.client_token, "user_info": {"username": name, "email": f"{name}@x.org"}}
    # The left part is whatever the client told the proxy: the proxy's own hop is believed.
    headers = {"X-Forwarded-For": f"198.51.100.1, {FORGED}"}
    line = one_line(tserver, lambda: tserver.client().post("/tokens/", body, headers=headers), tpath(tserver))
    assert fields(line) == ("login", "success", name, f"user:{name}", FORGED)


def test_the_file_is_private_whatever_the_umask(tserver: Server) -> None:
    settled(tserver, tpath(tserver))
    assert stat.S_IMODE(os.stat(tpath(tserver)).st_mode) == 0o600


def test_admin_commands_are_logged(tserver: Server) -> None:
    alice = login(tserver, tserver.client_token)
    before = len(settled(tserver, tpath(tserver)))
    tserver.cli("user", "deactivate", alice.username)
    tserver.cli("quota", "set", alice.username, "--disk-bytes", "1000")
    tserver.cli("user", "activate", "no-such-user", check=False)
    lines = read_lines(tpath(tserver))[before:]
    actor = lines[0]["actor"]
    assert actor.startswith("cli:")
    assert [fields(line) for line in lines] == [
        ("admin.user.deactivate", "success", actor, f"user:{alice.username}", None),
        ("admin.quota.set", "success", actor, f"user:{alice.username}", None),
        ("admin.user.activate", "failure", actor, "user:no-such-user", None),
    ]
    assert lines[1]["details"] == {"disk_bytes": 1000, "core_hours": None}
    assert stat.S_IMODE(os.stat(tpath(tserver)).st_mode) == 0o600


def test_api_tokens_and_the_admin_api_are_logged(tserver: Server) -> None:
    """Scoped tokens made and revoked, and every admin action through /admin/ (reads of other
    users' data included), each one line naming the admin; the new token's key is not in it."""
    admin = login(tserver, tserver.client_token)
    tserver.cli("user", "set-admin", admin.username)
    wait_for(lambda: admin.get("/admin/users/").status_code == 200, 5)  # token cache: 2 s
    alice = login(tserver, tserver.client_token)
    made: dict[str, Any] = {}
    line = one_line(
        tserver, lambda: made.update(admin.post("/tokens/api/", {"scopes": ["read"]}).json()), tpath(tserver)
    )
    token = made["data"]["token"]
    assert fields(line) == ("token.create", "success", admin.username, f"user:{admin.username}", "127.0.0.1")
    assert line["details"] == {"token": token["id"], "scopes": ["read"]}
    line = one_line(tserver, lambda: admin.delete(f"/tokens/api/{token['id']}/"), tpath(tserver))
    assert fields(line)[:4] == ("token.revoke", "success", admin.username, f"user:{admin.username}")
    assert token["token"] not in open(tpath(tserver)).read()
    actions = [
        (lambda: admin.get("/admin/users/"), ("admin.user.list", "success", admin.username, None)),
        (lambda: admin.get("/admin/jobs/"), ("admin.job.list", "success", admin.username, None)),
        (
            lambda: admin.put(f"/admin/users/{alice.username}/", {"max_disk_bytes": 10**6}),
            ("admin.user.update", "success", admin.username, f"user:{alice.username}"),
        ),
        (
            lambda: admin.delete(f"/admin/users/{alice.username}/tokens/"),
            ("admin.token.revoke", "success", admin.username, f"user:{alice.username}"),
        ),
        (
            lambda: admin.put("/admin/jobs/999999999/stop/"),
            ("admin.job.stop", "failure", admin.username, "job:999999999"),
        ),
    ]
    bob = login(tserver, tserver.client_token)
    # A non-admin is refused before any handler runs: an access.refused line.
    actions.append(
        (lambda: bob.get("/admin/users/"), ("access.refused", "refused", bob.username, "/admin/users/"))
    )
    for request, expected in actions:
        assert fields(one_line(tserver, request, tpath(tserver)))[:4] == expected


def test_sighup_reopens_after_a_rename(tserver: Server) -> None:
    path = tpath(tserver)
    old_lines = settled(tserver, path)
    os.rename(path, path + ".1")
    assert tserver.proc is not None
    tserver.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: os.path.exists(path))
    name = unique_name()
    line = one_line(tserver, lambda: login(tserver, tserver.client_token, name), path)
    assert line["actor"] == name
    assert read_lines(path + ".1") == old_lines  # the renamed file keeps what it had, no more
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "Audit log reopened" in tserver.log()


@pytest.mark.parametrize(
    ("where", "complaint"),
    [("/dev/full", "cannot write to it"), ("@DIR@/uws_config.py/audit.log", "cannot open it")],
)
def test_an_unwritable_log_never_fails_a_request(backend: str, where: str, complaint: str) -> None:
    """A full disk (/dev/full answers every write with ENOSPC) or a path that cannot be opened:
    every request is answered as usual, and the server log says so once."""
    server = Server(backend, LOCAL_CONFIG + f'c.AuditLog.path = "{where}"\n').start()
    try:
        token = server.new_client_token()
        for _ in range(3):
            alice = login(server, token)
            create(alice)
            assert alice.delete("/tokens/").status_code == 200
            assert server.client("0" * 40).get("/workspaces/").status_code == 401
        assert server.log().count(complaint) == 1, server.log()
        assert "Audit lines are dropped" in server.log()
    finally:
        server.close()
