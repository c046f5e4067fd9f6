"""What the benchmark scripts share: a `uws` server process on SQLite in a work directory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import psutil
import requests

WORK = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".work")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(workdir: str, config_text: str) -> tuple[subprocess.Popen, str, float]:
    """Start `uws` with this config; return the process, its base URL and the seconds from
    start to the first answered request."""
    port = free_port()
    config = os.path.join(workdir, "uws_config.py")
    with open(config, "w") as f:
        f.write(config_text)
    base = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uws",
            "--config",
            config,
            "--port",
            str(port),
            "--db-url",
            f"sqlite:///{workdir}/uws.sqlite",
        ],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while True:
        try:
            requests.get(base + "/status/", timeout=1)
            return proc, base, time.perf_counter() - t0
        except requests.ConnectionError:
            if proc.poll() is not None:
                raise SystemExit("the server exited") from None
            time.sleep(0.005)


def stop_server(proc: subprocess.Popen, workdir: str) -> None:
    """Stop the server and the sessions it started (sessions outlive servers by design)."""
    proc.terminate()
    proc.wait()
    for other in psutil.process_iter(["cmdline"]):
        if workdir in " ".join(other.info["cmdline"] or []):
            try:
                for p in [other, *other.children(recursive=True)]:
                    p.kill()
            except psutil.Error:
                pass
