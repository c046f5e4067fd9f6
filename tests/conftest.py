"""Test harness: every test talks HTTP to a real `uws` server process.

Servers are started as subprocesses on a free loopback port, with a real database: SQLite always,
and PostgreSQL too when UWS_TEST_DB_URL is set (each server gets its own schema there).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PG_URL = os.environ.get("UWS_TEST_DB_URL", "")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])
IS_ROOT = os.geteuid() == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uws_command() -> list[str]:
    return [sys.executable, "-m", "uws"]


class Client:
    """requests with the server's base URL and, optionally, a user token."""

    def __init__(self, base: str, token: str | None = None) -> None:
        self.base = base
        self.token = token
        self.session = requests.Session()

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {}
        if self.token:
            h["UWS-Authorization"] = f"Token {self.token}"
        h.update(extra or {})
        return h

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        raw: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> requests.Response:
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        return self.session.request(
            method,
            self.base + path,
            data=data,
            headers=self.headers(headers),
            timeout=30,
            allow_redirects=False,
            **kw,
        )

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> requests.Response:
        return self.request("POST", path, body, **kw)

    def put(self, path: str, body: Any = None, **kw: Any) -> requests.Response:
        return self.request("PUT", path, body, **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self.request("DELETE", path, **kw)


class Server:
    """One running `uws` process with its own data directory and database."""

    def __init__(
        self,
        backend: str,
        config_text: str,
        suffix: str = ".py",
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.backend = backend
        self.dir = tempfile.mkdtemp(prefix="uws-test-")
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config_path = os.path.join(self.dir, "uws_config" + suffix)
        with open(self.config_path, "w") as f:
            f.write(config_text.replace("@DIR@", self.dir).replace("@PORT@", str(self.port)))
        self.schema = ""
        if backend == "postgresql":
            self.schema = "uws_" + secrets.token_hex(6)
            run_sql(f"CREATE SCHEMA {self.schema}")
            sep = "&" if "?" in PG_URL else "?"
            self.db_url = f"{PG_URL}{sep}options=-csearch_path%3D{self.schema}"
        else:
            self.db_url = f"sqlite:///{self.dir}/uws.sqlite"
        self.extra_args = extra_args or []
        self.env = dict(os.environ, **(env or {}))
        self.log_path = os.path.join(self.dir, "server.log")
        self.proc: subprocess.Popen | None = None

    def args(self) -> list[str]:
        return [
            "--config",
            self.config_path,
            "--port",
            str(self.port),
            "--db-url",
            self.db_url,
            *self.extra_args,
        ]

    def cli(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = uws_command() + list(argv) + ["--config", self.config_path, "--db-url", self.db_url]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=self.dir, env=self.env, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"{cmd} failed: {result.stdout}\n{result.stderr}")
        return result

    def start(self) -> Server:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            uws_command() + self.args(), cwd=self.dir, stdout=log, stderr=subprocess.STDOUT, env=self.env
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log()}")
            try:
                requests.get(self.base + "/status/", timeout=1)
                return self
            except requests.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not start: {self.log()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() not in (None, 0, -9):
            # It died on its own (not killed by a test): keep the why in the test's output.
            print(f"server exited with {self.proc.returncode}:\n{self.log()}", file=sys.stderr)
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> None:
        self.stop()
        kill_sessions(self.dir)
        if self.schema:
            run_sql(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-5000:]
        except OSError:
            return ""

    def sql(self, statement: str) -> list[tuple]:
        """Run SQL on this server's database directly (to set up states the API cannot reach)."""
        if self.backend == "sqlite":
            import sqlite3

            conn = sqlite3.connect(self.db_url[len("sqlite:///") :], timeout=30)
            try:
                rows = conn.execute(statement).fetchall()
                conn.commit()
                return rows
            finally:
                conn.close()
        import psycopg

        url = PG_URL.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"SET search_path TO {self.schema}")
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description else []

    def client(self, token: str | None = None) -> Client:
        return Client(self.base, token)


def kill_sessions(directory: str) -> None:
    """Sessions outlive their server by design; a test server's sessions end with the test."""
    import psutil

    victims = []
    inside = directory.rstrip("/") + "/"
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "uws.session_helper" in cmdline and directory in cmdline:
            try:
                victims += [proc, *proc.children(recursive=True)]
            except psutil.Error:
                pass
        elif (proc.info["cwd"] or "").startswith(inside):
            # A session app whose helper a test killed: an orphan now, which Slurm's
            # proctrack/linuxproc (used on the test cluster) does not find to end with its job.
            victims.append(proc)
    for proc in victims:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(victims, timeout=5)


def run_sql(sql: str) -> None:
    import psycopg

    url = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


def shared_dir() -> str:
    """A world-readable copy of uws and of the tests' session apps, for sessions that run as
    other OS accounts (this checkout may sit where they cannot read it)."""
    shared = os.path.join(tempfile.gettempdir(), f"uws-helper-lib-{os.getpid()}")
    if not os.path.isdir(shared):
        shutil.copytree(
            os.path.join(ROOT, "uws"),
            os.path.join(shared, "uws"),
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        shutil.copytree(
            os.path.join(HERE, "apps"),
            os.path.join(shared, "apps"),
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        for dirpath, _, filenames in os.walk(shared):
            os.chmod(dirpath, 0o755)
            for name in filenames:
                os.chmod(os.path.join(dirpath, name), 0o644)
    return shared


SESSION_GROUP = f"uwstg{os.getpid()}"


def session_python_config() -> str:
    """As root, sessions run as other OS accounts (SudoSpawner); those accounts cannot read this
    checkout's virtualenv (often under /root), so helpers run on the system Python (with Debian's
    python3-zmq and python3-psutil, which .ci/run installs) and a world-readable copy of uws."""
    if not IS_ROOT:
        return ""
    probe = subprocess.run(["/usr/bin/python3", "-c", "import zmq, psutil"], capture_output=True)
    if probe.returncode != 0:
        return 'c.UWSApp.spawner_class = "local"\n'
    shared = shared_dir()
    # Only members of the session group reach the session channel; accounts the server creates
    # join it.
    subprocess.run(["groupadd", "--", SESSION_GROUP], capture_output=True)
    return (
        f'c.Spawner.python = "/usr/bin/python3"\nc.Spawner.helper_pythonpath = "{shared}"\n'
        f'c.UWSApp.session_group = "{SESSION_GROUP}"\n'
    )


SUDO_AVAILABLE = IS_ROOT and "spawner_class" not in session_python_config()

# Most modules reach sessions under /passthrough/<id>/ on the server's own origin (path mode,
# set explicitly as an installation must); test_origins.py, test_browser_isolation.py and
# test_jupyterlab.py run the default, one origin per session, with ORIGIN_MODE.
PATH_MODE = 'c.UWSApp.passthrough_mode = "path"\n'
ORIGIN_MODE = 'c.UWSApp.passthrough_mode = "origin"\n'

# The project's own start-up contract (api-contract 5.3): local logins, OS accounts created on
# demand when the tests run as root; otherwise every user's files belong to the test runner.
LOCAL_CONFIG = (
    """
c.UWSApp.authenticator_class = "local"
c.LocalAuthenticator.create_system_users = {create}
c.UWSApp.storage_accounts_from = "{accounts}"
c.LocalFileSystemStorage.root_dir = "@DIR@/workspaces"
c.UWSApp.max_body_size = 2 * 1024 * 1024
c.UWSApp.job_types = {{
    "local_test_job": {{"name": "Local Test Job", "job_type": "LocalTestJob", "environment_details": {{"main_resource": {{}}}}}},
    "jupyter_lab": {{"name": "Jupyter Lab", "job_type": "JupyterLabJob", "environment_details": {{"main_resource": {{}}}}}},
}}
""".format(create=IS_ROOT, accounts="local" if IS_ROOT else "dev")
    + session_python_config()
    + PATH_MODE
)


def running_server(backend: str, config: str) -> Iterator[Server]:
    """A started server with a client token (`.client_token`), closed afterwards: the body of
    the modules' own server fixtures."""
    srv = Server(backend, config).start()
    try:
        srv.client_token = srv.cli("create-client-token", "portal").stdout.strip().splitlines()[-1]
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def server(backend: str) -> Iterator[Server]:
    srv = Server(backend, LOCAL_CONFIG).start()
    yield srv
    srv.close()


@pytest.fixture(scope="session")
def client_token(server: Server) -> str:
    return server.cli("create-client-token", "portal").stdout.strip().splitlines()[-1]


def unique_name(prefix: str = "u") -> str:
    return f"uwst{prefix}{secrets.token_hex(3)}"


def login(server: Server, client_token: str, username: str | None = None, **info: str) -> Client:
    username = username or unique_name()
    user_info = {"username": username, "email": info.pop("email", f"{username}@example.org"), **info}
    r = server.client().post("/tokens/", {"client_token": client_token, "user_info": user_info})
    assert r.status_code == 200, r.text
    c = server.client(r.json()["token"])
    c.username = username  # type: ignore[attr-defined]
    return c


@pytest.fixture
def alice(server: Server, client_token: str) -> Client:
    return login(server, client_token, first_name="Alice", last_name="Liddell")


@pytest.fixture
def bob(server: Server, client_token: str) -> Client:
    return login(server, client_token, first_name="Bob", last_name="Builder")


@pytest.fixture(scope="session", autouse=True)
def remove_test_os_accounts() -> Iterator[None]:
    """OS accounts the tests made (names start with 'uwst') are removed at the end."""
    yield
    if not IS_ROOT:
        return
    import pwd

    for entry in pwd.getpwall():
        if entry.pw_name.startswith("uwst"):
            subprocess.run(["userdel", "-r", "--", entry.pw_name], capture_output=True)
    subprocess.run(["groupdel", "--", SESSION_GROUP], capture_output=True)
