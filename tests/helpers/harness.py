"""The test harness: a real `uws` server process and an HTTP client for it.

Servers are started as subprocesses on a free loopback port, with a real database: SQLite always,
and PostgreSQL too when UWS_TEST_DB_URL is set (each server gets its own schema there). The
benchmarks (bench/common.py) start their servers with this too, so nothing here imports pytest.
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

import requests

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(TESTS)
PG_URL = os.environ.get("UWS_TEST_DB_URL", "")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])
IS_ROOT = os.geteuid() == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uws_command(python: str | None = None) -> list[str]:
    return [python or sys.executable, "-m", "uws"]


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
        kw.setdefault("timeout", 30)
        return self.session.request(
            method, self.base + path, data=data, headers=self.headers(headers), allow_redirects=False, **kw
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
    """One running `uws` process with its own data directory and database, or (`shared_with`)
    another's: the high-availability tests run two processes on one database and one data
    directory, as two machines would share them."""

    def __init__(
        self,
        backend: str,
        config_text: str,
        suffix: str = ".py",
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        directory: str | None = None,
        python: str | None = None,
        shared_with: Server | None = None,
        same_directory: bool = True,
    ) -> None:
        """`directory`: an existing, empty directory to use instead of a new temporary one (the
        benchmarks choose where their servers' data goes); removed by close() all the same.
        `python`: the interpreter to run the server with (default: this one). `shared_with`: a
        server whose database this one uses too, and (`same_directory`) its directory, so its
        data directory: another server of the same installation, as high availability runs
        them. That one owns them (its close() removes them); each keeps its own config file and
        log."""
        self.backend = backend
        self.shared_with = shared_with
        self.own_directory = not (shared_with and same_directory)
        if shared_with and same_directory:
            self.dir = shared_with.dir
        else:
            self.dir = directory or tempfile.mkdtemp(prefix="uws-test-")
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        own = f"-{self.port}" if shared_with else ""
        self.config_path = os.path.join(self.dir, f"uws_config{own}{suffix}")
        with open(self.config_path, "w") as f:
            f.write(config_text.replace("@DIR@", self.dir).replace("@PORT@", str(self.port)))
        self.schema = ""
        if shared_with is not None:
            self.db_url, self.schema = shared_with.db_url, shared_with.schema
        elif backend == "postgresql":
            self.schema = "uws_" + secrets.token_hex(6)
            run_sql(f"CREATE SCHEMA {self.schema}")
            sep = "&" if "?" in PG_URL else "?"
            self.db_url = f"{PG_URL}{sep}options=-csearch_path%3D{self.schema}"
        else:
            self.db_url = f"sqlite:///{self.dir}/uws.sqlite"
        self.extra_args = extra_args or []
        self.python = python
        self.env = dict(os.environ, **(env or {}))
        self.log_path = os.path.join(self.dir, f"server{own}.log")
        self.proc: subprocess.Popen | None = None
        self.startup_seconds = 0.0

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
        cmd = uws_command(self.python) + list(argv) + ["--config", self.config_path, "--db-url", self.db_url]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=self.dir, env=self.env, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"{cmd} failed: {result.stdout}\n{result.stderr}")
        return result

    def start(self, poll_seconds: float = 0.05) -> Server:
        """Start the process and return once it answers; `startup_seconds` is how long that took
        (measured to within `poll_seconds`, which the start-up benchmark makes small)."""
        log = open(self.log_path, "ab")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            uws_command(self.python) + self.args(),
            cwd=self.dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log()}")
            try:
                requests.get(self.base + "/status/", timeout=1)
                self.startup_seconds = time.perf_counter() - t0
                return self
            except requests.ConnectionError:
                time.sleep(poll_seconds)
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
        if self.shared_with is not None:
            # The database and the sessions are the owner's, and the directory too unless its own.
            if self.own_directory and not os.environ.get("UWS_TEST_KEEP"):
                shutil.rmtree(self.dir, ignore_errors=True)
            return
        kill_sessions(self.dir)
        if self.schema:
            run_sql(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
        if not os.environ.get("UWS_TEST_KEEP"):
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

    def new_client_token(self, name: str = "portal") -> str:
        """A client token made with the CLI, as an operator makes one for a portal."""
        return self.cli("create-client-token", name).stdout.strip().splitlines()[-1]


def second_server(first: Server, config_text: str) -> Server:
    """Another server of `first`'s installation, as high availability runs them: the same
    database and directory (so data directory and workspaces root: a shared file system in
    production); a port, configuration file and log of its own."""
    return Server(first.backend, config_text, shared_with=first)


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


def running_server(
    backend: str, config: str, extra_args: list[str] | None = None, client_token: bool = True
) -> Iterator[Server]:
    """A started server (run with `extra_args`) with a client token (`.client_token`; none when
    not asked for, which saves a CLI run), closed afterwards: the body of the modules' own
    server fixtures."""
    srv = Server(backend, config, extra_args=extra_args).start()
    try:
        if client_token:
            srv.client_token = srv.new_client_token()
        yield srv
    finally:
        srv.close()
