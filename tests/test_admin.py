"""Admins end to end: /admin/ (users with quota, usage and running sessions; jobs by status and
user; stopping another user's session; changing and deactivating users; revoking their tokens),
`uws user set-admin` and c.UWSApp.admin_users, against a server with real session processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from helpers.api import create, get_job, login, start, unique_name, wait_for, wait_ready, wait_status
from helpers.configs import SESSION_CONFIG
from helpers.harness import Client, Server, running_server

CONFIG_ADMIN = unique_name("adm")
ONLY_ADMINS = {"success": False, "message": "Only administrators may do this."}


@pytest.fixture(scope="module")
def aserver(backend: str) -> Iterator[Server]:
    yield from running_server(backend, SESSION_CONFIG + f'c.UWSApp.admin_users = {{"{CONFIG_ADMIN}"}}\n')


@pytest.fixture(scope="module")
def admin(aserver: Server) -> Client:
    return login(aserver, aserver.client_token, CONFIG_ADMIN)


@pytest.fixture
def user(aserver: Server) -> Client:
    return login(aserver, aserver.client_token)


def admin_user(admin: Client, username: str) -> dict:
    r = admin.get("/admin/users/")
    assert r.status_code == 200, r.text
    return next(u for u in r.json()["data"]["users"] if u["username"] == username)


def running_web_session(user: Client) -> dict:
    w = create(user, workspace_details={"files": [{"name": "a.txt", "content": "x" * 1000}]})
    job = start(user, w["id"], job_type="web")
    return wait_ready(user, job["id"])


def test_non_admins_get_403_on_every_admin_endpoint(aserver: Server, admin: Client, user: Client) -> None:
    other = login(aserver, aserver.client_token)
    job = running_web_session(other)
    before = admin_user(admin, other.username)  # type: ignore[attr-defined]
    name = other.username  # type: ignore[attr-defined]
    for method, path, body in (
        ("GET", "/admin/users/", None),
        ("GET", "/admin/jobs/", None),
        ("GET", f"/admin/jobs/?user={name}&status=running", None),
        ("PUT", f"/admin/jobs/{job['id']}/stop/", None),
        ("PUT", f"/admin/users/{name}/", {"is_active": False, "max_disk_bytes": 0}),
        ("DELETE", f"/admin/users/{name}/tokens/", None),
    ):
        r = user.request(method, path, body)
        assert (r.status_code, r.json()) == (403, ONLY_ADMINS), (method, path)
    # Nothing changed: the other user still works, with the same quota, and their job goes on.
    assert other.get("/workspaces/").status_code == 200
    after = admin_user(admin, name)
    assert after["quota"]["disk_bytes"]["maximum"] == before["quota"]["disk_bytes"]["maximum"] is None
    assert after["is_active"] and not after["is_admin"]
    assert get_job(other, job["id"])["status"] == "running"
    other.put(f"/jobs/{job['id']}/stop/")
    wait_status(other, job["id"], "complete")


def test_admin_lists_users_with_quota_usage_and_running_sessions(admin: Client, user: Client) -> None:
    name = user.username  # type: ignore[attr-defined]
    r = admin.put(f"/admin/users/{name}/", {"max_disk_bytes": 10**9, "max_core_hours": 5})
    assert r.status_code == 200, r.text
    job = running_web_session(user)
    entry = admin_user(admin, name)
    assert entry["is_active"] and not entry["is_admin"]
    assert entry["quota"]["disk_bytes"] == {"used": entry["quota"]["disk_bytes"]["used"], "maximum": 10**9}
    assert entry["quota"]["disk_bytes"]["used"] >= 1000
    assert entry["quota"]["core_hours"]["maximum"] == "5.00000"
    assert [s["id"] for s in entry["running_sessions"]] == [job["id"]]
    assert entry["running_sessions"][0]["status"] == "running"
    assert admin_user(admin, CONFIG_ADMIN)["is_admin"]
    # The user sees the same maximums at /quota/.
    assert user.get("/quota/").json()["data"]["quota"] == entry["quota"]
    user.put(f"/jobs/{job['id']}/stop/")


def test_admin_job_filter(aserver: Server, admin: Client, user: Client) -> None:
    name = user.username  # type: ignore[attr-defined]
    job = running_web_session(user)
    r = admin.get(f"/admin/jobs/?user={name}&status=running")
    assert r.status_code == 200, r.text
    (entry,) = r.json()["data"]["jobs"]
    assert entry["user"] == name and entry["job"]["id"] == job["id"]
    # An admin is not the owner: the link carries no session token.
    assert (
        "token=" not in entry["job"]["job_details"]["current_job_details"]["connection_details"]["url_path"]
    )
    r = admin.get(f"/admin/jobs/?user={name}&status=complete")
    assert r.json()["data"]["jobs"] == []
    assert r.json()["message"] == "Job matching given parameters could not be found."
    everyone = admin.get("/admin/jobs/").json()["data"]["jobs"]
    assert job["id"] in [e["job"]["id"] for e in everyone]
    for query, fragment in (
        ("status=sleeping", "status: sleeping"),
        ("user=nobody-here", "no user named nobody-here"),
    ):
        r = admin.get(f"/admin/jobs/?{query}")
        assert r.status_code == 400 and r.json()["success"] is False and fragment in r.json()["message"], (
            query
        )
    user.put(f"/jobs/{job['id']}/stop/")


def test_admin_stops_another_users_session_which_stays_theirs(
    aserver: Server, admin: Client, user: Client
) -> None:
    job = running_web_session(user)
    details = job["job_details"]["current_job_details"]["connection_details"]
    app_url = details["url_domain"] + details["url_path"]
    assert requests.get(app_url, timeout=5).status_code == 200
    r = admin.put(f"/admin/jobs/{job['id']}/stop/")
    assert r.json() == {"message": "Job queued to stop.", "success": True}
    done = wait_status(user, job["id"], "complete", "failed", timeout=30)
    assert done["status"] == "complete"
    # Still the owner's job, in the owner's workspace; the admin owns none of it.
    assert [j["id"] for j in user.get("/jobs/").json()["data"]["jobs"]] == [job["id"]]
    assert admin.get(f"/jobs/{job['id']}/").json()["data"]["jobs"] == []
    assert admin.get(f"/workspaces/{job['workspace_id']}/").json()["data"]["workspaces"] == []
    assert admin_user(admin, CONFIG_ADMIN)["running_sessions"] == []
    # The session no longer answers through the passthrough.
    assert requests.get(app_url, timeout=5).status_code in (403, 503)
    r = admin.put(f"/admin/jobs/{job['id']}/stop/")
    assert r.status_code == 400 and r.json()["message"] == "This job is not running or pending."
    r = admin.put("/admin/jobs/999999/stop/")
    assert (r.status_code, r.json()) == (404, {"success": False, "message": "Job 999999 not found."})


def test_bad_user_changes_are_4xx_and_change_nothing(admin: Client, user: Client) -> None:
    name = user.username  # type: ignore[attr-defined]
    before = admin_user(admin, name)
    for body in (
        {},
        {"max_disk_bytes": "lots"},
        {"max_disk_bytes": 1.5},
        {"max_disk_bytes": -1},
        {"max_core_hours": "5"},
        {"max_core_hours": True},
        {"is_active": "no"},
        {"is_admin": 1},
        {"is_active": False, "colour": "blue"},
        {"is_active": False, "max_disk_bytes": "x"},
    ):
        r = admin.put(f"/admin/users/{name}/", body)
        assert r.status_code == 400 and r.json()["success"] is False, (body, r.text)
    r = admin.put("/admin/users/nobody-here/", {"is_active": False})
    assert (r.status_code, r.json()) == (404, {"success": False, "message": "User nobody-here not found."})
    r = admin.delete("/admin/users/nobody-here/tokens/")
    assert r.status_code == 404
    r = admin.put(f"/admin/users/{CONFIG_ADMIN}/", {"is_admin": False})
    assert r.status_code == 400 and "admin_users" in r.json()["message"]
    assert admin_user(admin, name) == before
    assert user.get("/workspaces/").status_code == 200
    assert admin_user(admin, CONFIG_ADMIN)["is_admin"]


def test_deactivation_and_revocation_end_access_at_once(aserver: Server, admin: Client, user: Client) -> None:
    name = user.username  # type: ignore[attr-defined]
    assert user.get("/workspaces/").status_code == 200  # now in the server's token cache
    r = admin.put(f"/admin/users/{name}/", {"is_active": False})
    assert r.status_code == 200 and r.json()["data"]["user"]["is_active"] is False
    assert user.get("/workspaces/").json() == {"success": False, "message": "User inactive or deleted."}
    assert admin.put(f"/admin/users/{name}/", {"is_active": True}).status_code == 200
    assert user.get("/workspaces/").status_code == 200
    second = login(aserver, aserver.client_token, name)
    r = admin.delete(f"/admin/users/{name}/tokens/")
    assert r.json() == {"message": f"Revoked 2 token(s) of {name}.", "success": True}
    for c in (user, second):
        assert c.get("/workspaces/").json() == {"success": False, "message": "Invalid token provided."}


def test_set_admin_cli_and_its_effect_on_admin_tokens(aserver: Server, admin: Client) -> None:
    me = login(aserver, aserver.client_token)
    name = me.username  # type: ignore[attr-defined]
    assert me.get("/admin/users/").status_code == 403
    assert aserver.cli("user", "set-admin", name).stdout.strip() == f"{name}: admin"
    # Another process's change: seen within the token cache's 2 seconds.
    wait_for(lambda: me.get("/admin/users/").status_code == 200, timeout=5)
    r = me.post("/tokens/api/", {"scopes": ["admin"], "note": "ops"})
    assert r.status_code == 200, r.text
    admin_token = Client(aserver.base, r.json()["data"]["token"]["token"])
    assert admin_token.get("/admin/users/").status_code == 200
    assert admin_token.get("/workspaces/").status_code == 403  # admin only, not read
    assert aserver.cli("user", "set-admin", name, "--unset").stdout.strip() == f"{name}: not an admin"
    wait_for(lambda: admin_token.get("/admin/users/").status_code == 403, timeout=5)
    assert admin_token.get("/admin/users/").json() == ONLY_ADMINS
    assert me.get("/admin/users/").json() == ONLY_ADMINS
    assert me.post("/tokens/api/", {"scopes": ["admin"]}).status_code == 403
    # Demoted by an admin through the API: at once (this process drops its cached lookups).
    aserver.cli("user", "set-admin", name)
    wait_for(lambda: admin_token.get("/admin/users/").status_code == 200, timeout=5)
    assert admin.put(f"/admin/users/{name}/", {"is_admin": False}).status_code == 200
    assert admin_token.get("/admin/users/").json() == ONLY_ADMINS
    # Names in c.UWSApp.admin_users cannot be demoted in the database.
    result = aserver.cli("user", "set-admin", CONFIG_ADMIN, "--unset", check=False)
    assert result.returncode == 1 and "admin_users" in result.stderr
    assert admin.get("/admin/users/").status_code == 200
    assert aserver.cli("user", "set-admin", "nobody-here", check=False).returncode == 1
