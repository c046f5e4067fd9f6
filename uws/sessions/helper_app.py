"""The app a session helper runs: its command made from job.json, started in a session (process
group) of its own, probed for HTTP, measured, and ended together with every process it started.

Part of the helper (uws.sessions.helper), so it too imports neither tornado nor the server's
modules.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from typing import Any, NamedTuple

import psutil

from uws.sessions import proctree

PREFIX = "uws-session-helper:"
LOG_TAIL_BYTES = 4096
KILL_GIVE_UP = 5.0  # seconds after SIGKILL before reporting anyway (unkillable processes)


def log(text: str) -> None:
    try:
        sys.stderr.write(f"{PREFIX} {text}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host`, the address the app will listen on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def substitute(text: str, values: dict[str, str]) -> str:
    """Replace only the placeholders in `values` (other braces stay as they are)."""
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def probe_http(host: str, port: int, path: str, timeout: float) -> bool:
    """True when something answers HTTP on host:port with a status below 500."""
    if not path.startswith("/"):
        path = "/" + path
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    request = f"GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: uws-session-helper\r\n\r\n"
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(request.encode("latin-1", "replace"))
            data = b""
            while b"\n" not in data and len(data) < 1024:
                chunk = s.recv(1024)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return False
    parts = data.split(b"\r\n", 1)[0].split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return False
    return int(parts[1]) < 500


def open_regular_file(path: str) -> int | None:
    """A read-only descriptor of `path` if it is a regular file, else None. Never blocks: the
    app writes the files the helper reads and could put a FIFO in their place, and a helper
    stuck opening one would no longer enforce the time limit."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return None
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return fd
    os.close(fd)
    return None


def read_tail(path: str, size: int = LOG_TAIL_BYTES) -> str:
    fd = open_regular_file(path)
    if fd is None:
        return ""
    try:
        with open(fd, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            f.seek(max(0, end - size))
            return f.read(size).decode("utf-8", "replace")
    except OSError:
        return ""


def write_json_atomic(path: str, data: Any) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class AppCommand(NamedTuple):
    """What to run, and where the app answers, with job.json's placeholders filled in. (A
    NamedTuple, not a dataclass: dataclasses imports inspect and ast, a sixth of the helper's
    start-up and a megabyte of every helper's memory.)"""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    url_path: str
    readiness_path: str


def app_command(job: dict[str, Any], job_dir: str, public: dict[str, str], token: str) -> AppCommand:
    """The command of job.json (ValueError when it is malformed). `public` are the placeholders
    the helper may report (port, base_url); the token fills in only what the app itself gets."""
    values = {**public, "token": token}
    command = job.get("command")
    if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
        raise ValueError("job.json: command must be a non-empty list of strings")
    if not isinstance(job["env"], dict):
        raise ValueError("job.json: env must be an object")
    argv = [substitute(a, values) for a in command]
    env = dict(os.environ)
    env.update({str(k): substitute(str(v), values) for k, v in job["env"].items()})
    cwd = str(job.get("cwd") or job_dir)
    # What the helper reports carries no token (the server adds it to the owner's link), so
    # url_path is filled in without it.
    url_path = substitute(str(job["url_path"] or ""), public)
    readiness = job["readiness"]
    readiness_path = ""
    if readiness is not None:
        if not isinstance(readiness, dict):
            raise ValueError("job.json: readiness must be null or an object")
        readiness_path = substitute(str(readiness.get("path") or "/"), values)
    return AppCommand(argv, env, cwd, url_path, readiness_path)


class SessionApp:
    """The app's process and every process it starts: measured while they run, then ended:
    SIGTERM to the whole tree, SIGKILL to whatever outlives the grace period (and to anything
    started after), and given up on KILL_GIVE_UP seconds after that."""

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        self.proc: subprocess.Popen[bytes] | None = None
        self.cpu_seconds = 0.0
        # Ending the tree: reason chosen when ending starts; TERM sent; KILL at kill_at.
        self.ending_reason: str | None = None
        self.kill_at = 0.0
        self.killed_at: float | None = None
        self.next_tree_check = 0.0

    def start(self, command: AppCommand, log_file: str) -> subprocess.Popen[bytes]:
        if os.path.dirname(log_file):
            os.makedirs(os.path.dirname(log_file), exist_ok=True)
        with open(log_file, "ab") as out:
            self.proc = subprocess.Popen(
                command.argv,
                cwd=command.cwd,
                env=command.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        return self.proc

    def metrics(self) -> dict[str, Any]:
        cpu = 0.0
        rss = 0
        count = 0
        for p in proctree.tree(self.proc):
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    mem = p.memory_info()
            except psutil.Error:
                continue  # vanished mid-scan
            cpu += t.user + t.system + t.children_user + t.children_system
            rss += mem.rss
            count += 1
        self.cpu_seconds = max(self.cpu_seconds, cpu)  # never goes back when a process ends
        return {"cpu_seconds": round(self.cpu_seconds, 3), "rss_bytes": rss, "processes": count}

    def begin_end(self, reason: str, grace: float) -> None:
        now = time.monotonic()
        if self.ending_reason is not None:
            self.kill_at = min(self.kill_at, now + grace)
            return
        self.ending_reason = reason
        self.kill_at = now + grace
        self.next_tree_check = now
        procs = proctree.tree(self.proc)
        if procs:
            log(f"job {self.job_id}: ending the process tree ({reason}, {len(procs)} processes)")
            proctree.signal_tree(self.proc, signal.SIGTERM, procs)

    def ended(self, now: float) -> bool:
        """One step of ending the tree; True once nothing is left of it (or it is given up on)."""
        if now < self.next_tree_check:
            return False
        self.next_tree_check = now + 0.1
        if self.proc is not None:
            self.proc.poll()
        procs = proctree.tree(self.proc)
        if not procs and (self.proc is None or self.proc.returncode is not None):
            return True
        if self.killed_at is None and now >= self.kill_at:
            log(f"job {self.job_id}: {len(procs)} processes survived SIGTERM; sending SIGKILL")
            proctree.signal_tree(self.proc, signal.SIGKILL, procs)
            self.killed_at = now
        elif self.killed_at is not None:
            proctree.signal_tree(self.proc, signal.SIGKILL, procs)  # anything spawned meanwhile
            if now - self.killed_at > KILL_GIVE_UP:
                log(f"job {self.job_id}: {len(procs)} processes would not die; reporting anyway")
                if self.proc is not None and self.proc.returncode is None:
                    self.proc.poll()
                return True
        return False

    def kill(self) -> None:
        """SIGKILL to the whole tree at once: a helper dying of a bug must not leave it running."""
        if self.proc is not None:
            proctree.signal_tree(self.proc, signal.SIGKILL, proctree.tree(self.proc))
