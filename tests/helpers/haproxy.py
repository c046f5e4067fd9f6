"""HAProxy (Debian's package) in front of several `uws` processes, as the README's "High
availability" section sets it up: every request goes to the one process whose `GET
/status/leader` answers 200, so a standby takes traffic only once it leads."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence

import requests

from .harness import free_port

# The health check's interval is what mostly decides how soon traffic follows a new leader: the
# check must see the old one fail once and the new one pass once.
CHECK_INTERVAL_MS = 200

CONFIG = """
global
    maxconn 2000

defaults
    mode http
    timeout connect 1s
    timeout client 1h
    timeout server 1h
    # Websockets (the event streams, relayed session sockets) live as long as the client wants.
    timeout tunnel 1h
    timeout http-request 30s
    # A request whose connection to a server fails outright is sent to another server.
    option redispatch
    retries 2
    retry-on conn-failure empty-response

frontend uws
    bind 127.0.0.1:{port}
    default_backend leader

backend leader
    option httpchk GET /status/leader
    http-check expect status 200
    default-server inter {interval}ms fastinter {interval}ms downinter {interval}ms fall 1 rise 1
{servers}
"""


def haproxy_path() -> str | None:
    return shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)


class HAProxy:
    """One haproxy process routing 127.0.0.1:<port> to the given server ports."""

    def __init__(self, server_ports: Sequence[int], port: int | None = None) -> None:
        """`port`: where it listens (chosen beforehand when the servers' public_url names it)."""
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.dir = tempfile.mkdtemp(prefix="uws-test-haproxy-")
        servers = "\n".join(
            f"    server uws{i} 127.0.0.1:{port} check" for i, port in enumerate(server_ports)
        )
        self.config_path = os.path.join(self.dir, "haproxy.cfg")
        with open(self.config_path, "w") as f:
            f.write(CONFIG.format(port=self.port, interval=CHECK_INTERVAL_MS, servers=servers))
        self.log_path = os.path.join(self.dir, "haproxy.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> HAProxy:
        """Start it and return once it routes a request to a leader."""
        binary = haproxy_path()
        if binary is None:
            raise RuntimeError("haproxy is not installed (Debian package haproxy)")
        log = open(self.log_path, "ab")
        # -db: stay in the foreground, so the test owns the process and its exit.
        self.proc = subprocess.Popen(
            [binary, "-db", "-f", self.config_path], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited: {self.log()}")
            try:
                if requests.get(self.base + "/status/leader", timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"haproxy found no leader within {timeout} s: {self.log()}")

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
