"""What the tests do to a running server, through its API: log in, create workspaces, start
sessions, and wait for what follows. Shared by the test modules and bench/hostile_bench.py."""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests

from helpers.harness import IS_ROOT, Client, Server


def _letters(n: int) -> str:
    out = ""
    while True:
        n, digit = divmod(n, 26)
        out += chr(ord("a") + digit)
        if not n:
            return out


# OS accounts this test run makes start with this, so that the run removes its own accounts at
# the end and leaves alone those of another run on the same machine.
ACCOUNT_PREFIX = f"uwst{_letters(os.getpid())}"


def unique_name(prefix: str = "u") -> str:
    return f"{ACCOUNT_PREFIX}{prefix}{secrets.token_hex(3)}"


def login(server: Server, client_token: str, username: str | None = None, **info: str) -> Client:
    username = username or unique_name()
    user_info = {"username": username, "email": info.pop("email", f"{username}@example.org"), **info}
    r = server.client().post("/tokens/", {"client_token": client_token, "user_info": user_info})
    assert r.status_code == 200, r.text
    c = server.client(r.json()["token"])
    c.username = username  # type: ignore[attr-defined]
    return c


def user_id(c: Client, other: Client) -> int:
    """`other`'s user id, as `c` finds it by searching the users (to share with them)."""
    users = c.get(f"/users/?search={other.username}@").json()["data"]["users"]
    return next(u["id"] for u in users if u["username"] == other.username)


# ---- workspaces ------------------------------------------------------------------------------
DATETIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def create(c: Client, **body: Any) -> dict:
    body.setdefault("name", "ws")
    body.setdefault("description", "")
    r = c.post("/workspaces/", body)
    assert r.status_code == 200, r.text
    return r.json()["data"]["workspace"]


def ws_dir(server: Server, c: Client, ws_id: int) -> str:
    owner = c.username if IS_ROOT else __import__("pwd").getpwuid(os.getuid()).pw_name
    return os.path.join(server.dir, "workspaces", owner, str(ws_id))


def get_ws(c: Client, ws_id: int) -> dict | None:
    items = c.get(f"/workspaces/{ws_id}").json()["data"]["workspaces"]
    return items[0] if items else None


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """The first truthy value of `predicate()`, polled until `timeout` seconds have passed."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached")


# ---- sessions --------------------------------------------------------------------------------
def get_job(c: Client, job_id: int) -> dict:
    (job,) = c.get(f"/jobs/{job_id}").json()["data"]["jobs"]
    return job


def wait_status(c: Client, job_id: int, *statuses: str, timeout: float = 20) -> dict:
    return wait_for(lambda: (j := get_job(c, job_id))["status"] in statuses and j, timeout)


def wait_ready(c: Client, job_id: int, timeout: float = 30) -> dict:
    """The job once its web app answers (connection_details present)."""
    return wait_for(
        lambda: "connection_details" in (j := get_job(c, job_id))["job_details"]["current_job_details"] and j,
        timeout,
    )


def start(c: Client, ws_id: int, **body: Any) -> dict:
    r = c.put(f"/workspaces/{ws_id}/start/", body)
    assert r.status_code == 200, r.text
    assert r.json()["message"] == "Successful start."
    return r.json()["data"]["job"]


# ---- sessions on origins of their own --------------------------------------------------------
# glibc here may not resolve *.localhost, so requests go to 127.0.0.1 with the session's host
# name in the Host header, as a browser that resolves it sends them.
def loopback(url: str) -> tuple[str, str]:
    """`url` with its host name swapped for 127.0.0.1, and the Host header it needs."""
    parts = urlsplit(url)
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme}://127.0.0.1:{parts.port}{parts.path or '/'}{query}", parts.netloc


def at(url: str, method: str = "GET", headers: dict[str, str] | None = None, **kw: Any) -> requests.Response:
    """A request to `url` as a browser resolving its host name to this machine sends it."""
    direct, host = loopback(url)
    kw.setdefault("timeout", 30)
    return requests.request(
        method, direct, headers={"Host": host, **(headers or {})}, allow_redirects=False, **kw
    )


def launch(owner: Client) -> dict:
    """A ready `page` session (configs.PAGE_JOB_TYPES) in a new workspace: its id and
    connection details."""
    w = create(owner)
    job = start(owner, w["id"], job_type="page")
    details = wait_ready(owner, job["id"], 30)["job_details"]["current_job_details"]["connection_details"]
    return {"id": job["id"], **details}
