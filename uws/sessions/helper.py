"""uws-session-helper: the small process that runs one interactive session for the server.

    python -m uws.session_helper --job-dir DIR --endpoint ENDPOINT
        (standard input: the job secret on the first line, the session token on the second)

It reads <DIR>/job.json, starts the app in its own session (process group), waits for it to
answer HTTP when a readiness probe is configured, reports to the server over ZeroMQ (see
uws.sessions.protocol for the messages) and ends the whole process tree on "stop", at the time
limit, or when the readiness probe times out. When the app is gone it writes <DIR>/exit.json,
sends "exited" until the server acknowledges it (or linger_seconds pass) and exits.

The helper is meant to stay small: it imports neither tornado nor the server's modules, and its
event loop is a zmq.Poller with a short timeout plus Popen.poll().
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Any

import psutil
import zmq

from uws.sessions import proctree, protocol

PREFIX = "uws-session-helper:"
LOG_TAIL_BYTES = 4096
IDLE_POLL = 0.2  # seconds: the loop's longest sleep
ENDING_POLL = 0.05  # seconds: while waiting for the tree to end
EXITED_RESEND = 0.5  # seconds between re-sends of "exited"
KILL_GIVE_UP = 5.0  # seconds after SIGKILL before reporting anyway (unkillable processes)

DEFAULTS: dict[str, Any] = {
    "env": {},
    "readiness": None,
    "url_path": "",
    "base_url": "/",
    "time_limit_seconds": None,
    "heartbeat_seconds": 10.0,
    "grace_seconds": 5.0,
    "linger_seconds": 60.0,
}


def log(text: str) -> None:
    try:
        sys.stderr.write(f"{PREFIX} {text}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def substitute(text: str, values: dict[str, str]) -> str:
    """Replace only the placeholders in `values` (other braces stay as they are)."""
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def probe_http(port: int, path: str, timeout: float) -> bool:
    """True when something answers HTTP on 127.0.0.1:port with a status below 500."""
    if not path.startswith("/"):
        path = "/" + path
    request = f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: uws-session-helper\r\n\r\n"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
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


def read_tail(path: str, size: int = LOG_TAIL_BYTES) -> str:
    try:
        with open(path, "rb") as f:
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


class Helper:
    server_key = ""  # the server's CURVE public key (Z85) on a tcp:// channel

    def __init__(
        self, job_dir: str, endpoint: str, secret: str, job: dict[str, Any], token: str = ""
    ) -> None:
        self.job_dir = job_dir
        self.endpoint = endpoint
        self.secret = secret
        # The server derives the session token and checks links against it. Without one the app
        # still gets a random token, so it is never left open.
        self.token = token or os.urandom(16).hex()
        self.job = {**DEFAULTS, **job}
        self.job_id = int(job["job_id"])
        self.seq = 0
        self.phase = "starting"
        self.started_at = time.time()
        self.started_mono = time.monotonic()
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] | None = None
        self.exit: dict[str, Any] | None = None
        self.port = 0
        self.readiness_path = ""
        self.url_path = ""
        self.readiness_deadline = 0.0
        self.next_probe = 0.0
        self.probe_delay = 0.02
        self.next_heartbeat = 0.0
        self.cpu_seconds = 0.0
        # Ending the tree: reason chosen when ending starts; TERM sent; KILL at kill_at.
        self.ending_reason: str | None = None
        self.kill_at = 0.0
        self.killed_at: float | None = None
        self.next_tree_check = 0.0
        # Lingering after "exited".
        self.exited_seqs: list[int] = []
        self.acked = False
        self.linger_until = 0.0
        self.next_resend = 0.0
        # Connection bookkeeping.
        self.connects = 0
        self.connected = False
        self.last_heard = time.monotonic()
        self.signalled: int | None = None
        self.dropped = 0
        self.replay_guard = protocol.ReplayGuard()
        self.rejected = 0
        self.subreaper = False
        self.ctx: zmq.Context | None = None
        self.sock: zmq.Socket | None = None
        self.monitor: zmq.Socket | None = None
        self.poller = zmq.Poller()

    # -- numbers from job.json ----------------------------------------------------------------

    def num(self, key: str, minimum: float = 0.0) -> float:
        try:
            return max(minimum, float(self.job[key]))
        except (TypeError, ValueError):
            return max(minimum, float(DEFAULTS[key]))

    @property
    def time_limit(self) -> int | None:
        value = self.job.get("time_limit_seconds")
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            return None
        return int(value)

    # -- messages ----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "helper_pid": os.getpid(),
            "app_pid": self.proc.pid if self.proc else None,
            "started_at": self.started_at,
            "ready": self.ready,
            "exit": self.exit,
            "time_limit_seconds": self.time_limit,
        }

    def send(self, mtype: str, **fields: Any) -> int:
        self.seq += 1
        message = {"type": mtype, "job_id": self.job_id, "seq": self.seq, **fields}
        assert self.sock is not None
        try:
            self.sock.send_multipart(protocol.encode(self.secret, message), flags=zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log(f"job {self.job_id}: send queue full, dropped {mtype} ({self.dropped} dropped so far)")
        return self.seq

    def send_state(self, mtype: str) -> int:
        return self.send(mtype, state=self.state())

    def connect(self) -> None:
        self.ctx = zmq.Context(io_threads=1)
        sock = self.ctx.socket(zmq.DEALER)
        # A fresh random identity: nobody can claim it first, or take it over, to get this
        # job's messages.
        sock.setsockopt(zmq.ROUTING_ID, protocol.identity(self.job_id))
        sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        if self.server_key:
            # tcp://: encrypted, and only the server holding the matching secret key is spoken to.
            public, secret = zmq.curve_keypair()
            sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_key.encode())
            sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        sock.setsockopt(zmq.LINGER, 500)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sock.setsockopt(zmq.IMMEDIATE, 0)
        sock.setsockopt(zmq.SNDHWM, 200)
        sock.setsockopt(zmq.RCVHWM, 200)
        for opt, value in (("HEARTBEAT_IVL", 5000), ("HEARTBEAT_TIMEOUT", 15000)):
            if hasattr(zmq, opt):  # ZMTP-level pings: notice a vanished tcp peer
                sock.setsockopt(getattr(zmq, opt), value)
        self.monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        sock.connect(self.endpoint)
        self.sock = sock
        self.poller.register(sock, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.disable_monitor()
        if self.monitor is not None:
            self.monitor.close(linger=0)
        if self.sock is not None:
            self.sock.close()
        if self.ctx is not None:
            self.ctx.term()

    def on_monitor(self) -> None:
        # Parsed here rather than with zmq.utils.monitor, which pulls in asyncio (~4 MB).
        assert self.monitor is not None
        while True:
            try:
                frames = self.monitor.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2 or len(frames[0]) != 6:
                continue
            event, _value = struct.unpack("=hi", frames[0])
            if event == zmq.EVENT_CONNECTED:
                self.connects += 1
                self.connected = True
                if self.connects > 1:  # the first hello was queued before the first connection
                    log(f"job {self.job_id}: reconnected to the server")
                    self.send_state("hello")
            elif event == zmq.EVENT_DISCONNECTED and self.connected:
                self.connected = False
                log(f"job {self.job_id}: lost the server; messages queue until it is back")

    def on_socket(self) -> None:
        assert self.sock is not None
        while True:
            try:
                frames = self.sock.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            message = protocol.decode(self.secret, frames)
            if (
                message is None
                or message.get("job_id", self.job_id) != self.job_id
                or not self.replay_guard.accept("server", message)
            ):
                self.rejected += 1
                if self.rejected <= 10 or self.rejected % 100 == 0:
                    log(
                        f"job {self.job_id}: dropped a message that failed verification (signature, "
                        f"job, age or order; {len(frames)} frames; {self.rejected} so far)"
                    )
                continue
            self.handle(message)

    def handle(self, message: dict[str, Any]) -> None:
        now = time.monotonic()
        silent_for = now - self.last_heard
        self.last_heard = now
        mtype = message["type"]
        if (
            mtype != "report"
            and self.phase != "exited"
            and silent_for > max(3 * self.num("heartbeat_seconds"), 10.0)
        ):
            self.send_state("hello")  # the server may have restarted: tell it everything
        if mtype == "ack":
            ack_seq = message.get("ack_seq")
            if self.exited_seqs and isinstance(ack_seq, int) and ack_seq >= self.exited_seqs[0]:
                self.acked = True
        elif mtype == "report":
            self.send_state("hello")
        elif mtype == "stop":
            grace = message.get("grace_seconds")
            if isinstance(grace, bool) or not isinstance(grace, int | float) or grace < 0:
                grace = self.num("grace_seconds")
            if self.phase == "exited":
                if not self.acked:
                    self.resend_exited()
            else:
                log(f"job {self.job_id}: stop requested (grace {grace:g} s)")
                self.begin_end("stopped", float(grace))
        else:
            log(f"job {self.job_id}: ignored a message of unknown type {mtype!r}")

    # -- the app -----------------------------------------------------------------------------

    def launch(self) -> bool:
        """Start the app; False (with ending_reason "launch_failed") when it could not start."""
        job = self.job
        self.port = free_port()
        # What the helper reports carries no token (the server adds it to the owner's link), so
        # url_path is filled in without it.
        public = {"port": str(self.port), "base_url": str(job["base_url"] or "/")}
        values = {**public, "token": self.token}
        log_file = str(job.get("log_file") or os.path.join(self.job_dir, "session.log"))
        job["log_file"] = log_file
        try:
            command = job.get("command")
            if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
                raise ValueError("job.json: command must be a non-empty list of strings")
            if not isinstance(job["env"], dict):
                raise ValueError("job.json: env must be an object")
            argv = [substitute(a, values) for a in command]
            env = dict(os.environ)
            env.update({str(k): substitute(str(v), values) for k, v in job["env"].items()})
            cwd = str(job.get("cwd") or self.job_dir)
            self.url_path = substitute(str(job["url_path"] or ""), public)
            readiness = job["readiness"]
            if readiness is not None:
                if not isinstance(readiness, dict):
                    raise ValueError("job.json: readiness must be null or an object")
                self.readiness_path = substitute(str(readiness.get("path") or "/"), values)
            if os.path.dirname(log_file):
                os.makedirs(os.path.dirname(log_file), exist_ok=True)
            with open(log_file, "ab") as out:
                self.proc = subprocess.Popen(
                    argv,
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            log(f"job {self.job_id}: could not start the app: {e}")
            try:
                with open(log_file, "a") as out:
                    out.write(f"{PREFIX} could not start the app: {e}\n")
            except OSError:
                pass
            self.ending_reason = "launch_failed"
            return False
        now = time.monotonic()
        self.started_at = time.time()
        self.started_mono = now
        self.next_heartbeat = now + self.num("heartbeat_seconds", 0.05)
        log(f"job {self.job_id}: started the app, pid {self.proc.pid}, port {self.port}")
        if self.job["readiness"] is None:
            self.phase = "running"
        else:
            timeout = self.num_from(self.job["readiness"], "timeout_seconds", 60.0)
            self.readiness_deadline = now + timeout
            self.next_probe = now + self.probe_delay
        return True

    @staticmethod
    def num_from(obj: dict[str, Any], key: str, default: float) -> float:
        value = obj.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return default
        return max(0.0, float(value))

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

    def check_ending(self, now: float) -> None:
        if now < self.next_tree_check:
            return
        self.next_tree_check = now + 0.1
        if self.proc is not None:
            self.proc.poll()
        procs = proctree.tree(self.proc)
        if not procs and (self.proc is None or self.proc.returncode is not None):
            self.finish()
            return
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
                self.finish()

    def finish(self) -> None:
        code = self.proc.returncode if self.proc is not None else None
        reason = self.ending_reason or ("completed" if code == 0 else "failed")
        self.exit = {
            "exit_code": code,
            "reason": reason,
            "log_tail": read_tail(str(self.job["log_file"])),
            "ended_at": time.time(),
        }
        self.phase = "exited"
        log(f"job {self.job_id}: the app ended ({reason}, exit code {code})")
        try:
            write_json_atomic(os.path.join(self.job_dir, "exit.json"), self.exit)
        except OSError as e:
            log(f"job {self.job_id}: could not write exit.json: {e}")
        self.linger_until = time.monotonic() + self.num("linger_seconds")
        self.resend_exited()

    def resend_exited(self) -> None:
        self.exited_seqs.append(self.send_state("exited"))
        self.next_resend = time.monotonic() + EXITED_RESEND

    # -- the loop ----------------------------------------------------------------------------

    def tick(self, now: float) -> bool:
        """One pass of the periodic work; True when the helper is done."""
        if self.signalled is not None and self.phase != "exited":
            log(f"job {self.job_id}: received signal {self.signalled}; ending the session")
            self.signalled = None
            self.begin_end("stopped", self.num("grace_seconds"))
        if self.phase == "exited":
            if self.acked:
                log(f"job {self.job_id}: the server acknowledged the end; exiting")
                return True
            if self.signalled is not None:
                # exit.json already holds the outcome for a server that comes back later.
                log(f"job {self.job_id}: received signal {self.signalled} after the end; exiting")
                return True
            if now >= self.linger_until:
                log(f"job {self.job_id}: no acknowledgement within linger_seconds; exiting")
                return True
            if now >= self.next_resend:
                self.resend_exited()
            return False
        assert self.proc is not None
        if self.ending_reason is None:
            code = self.proc.poll()
            limit = self.time_limit
            if code is not None:
                # The app ended by itself: leftovers in its tree get the usual grace.
                self.begin_end("completed" if code == 0 else "failed", self.num("grace_seconds"))
            elif limit is not None and now - self.started_mono >= limit:
                log(f"job {self.job_id}: time limit of {limit} s reached")
                self.begin_end("time_limit", self.num("grace_seconds"))
            elif self.phase == "starting" and now >= self.next_probe:
                if probe_http(
                    self.port, self.readiness_path, timeout=min(2.0, max(0.1, self.readiness_deadline - now))
                ):
                    self.phase = "ready"
                    # The server decides the host itself and checks the port: this is only a claim.
                    self.ready = {"port": self.port, "path": self.url_path}
                    log(f"job {self.job_id}: the app answers HTTP on port {self.port}")
                    self.send_state("ready")
                elif time.monotonic() >= self.readiness_deadline:
                    log(f"job {self.job_id}: the app did not answer HTTP in time")
                    self.send("progress", message="Webserver did not become ready in time.")
                    self.begin_end("launch_failed", self.num("grace_seconds"))
                else:
                    self.next_probe = time.monotonic() + self.probe_delay
                    self.probe_delay = min(0.25, self.probe_delay * 1.5)
        if self.ending_reason is not None:
            self.check_ending(now)
            if self.phase == "exited":
                return False
        if now >= self.next_heartbeat:
            self.send("heartbeat", state=self.state(), metrics=self.metrics())
            self.next_heartbeat = now + self.num("heartbeat_seconds", 0.05)
        return False

    def wait_time(self, now: float) -> float:
        if self.phase == "exited":
            due = min(self.next_resend, self.linger_until)
        elif self.ending_reason is not None:
            return ENDING_POLL
        else:
            due = self.next_heartbeat
            if self.phase == "starting":
                due = min(due, self.next_probe)
        return min(IDLE_POLL, max(0.0, due - now))

    def on_signal(self, signum: int, frame: Any) -> None:
        self.signalled = signum

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self.on_signal)
        self.subreaper = proctree.become_subreaper()
        self.connect()
        try:
            return self.loop()
        except BaseException:
            # A bug must not leave the app running unsupervised: end the tree before dying.
            if self.proc is not None and self.phase != "exited":
                proctree.signal_tree(self.proc, signal.SIGKILL, proctree.tree(self.proc))
            raise

    def loop(self) -> int:
        launched = self.launch()
        self.send_state("hello")
        if not launched:
            self.finish()
        elif self.phase == "starting":
            self.send("progress", message="Webserver not ready.")
        while True:
            now = time.monotonic()
            events = dict(self.poller.poll(int(self.wait_time(now) * 1000)))
            if self.monitor in events:
                self.on_monitor()
            if self.sock in events:
                self.on_socket()
            if self.tick(time.monotonic()):
                break
        self.close()
        return 0


def read_credentials() -> tuple[str, str]:
    """The job secret and the session token, one per line on standard input: never on the
    command line or in job.json, which other accounts may read."""
    try:
        lines = [sys.stdin.buffer.readline(4096) for _ in range(2)]
    except (OSError, ValueError):
        return "", ""
    secret, token = (line.decode("utf-8", "replace").strip() for line in lines)
    return secret, token


def load_job(job_dir: str) -> dict[str, Any]:
    with open(os.path.join(job_dir, "job.json")) as f:
        job = json.load(f)
    if not isinstance(job, dict):
        raise ValueError("job.json is not an object")
    job_id = job.get("job_id")
    if isinstance(job_id, bool) or not isinstance(job_id, int):
        raise ValueError("job.json: job_id must be an integer")
    return job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="uws-session-helper",
        description="Run one UWS session: start the app, report to the server, end it on request. "
        "The job secret is read from the first line of standard input, the session token from the second.",
    )
    parser.add_argument("--job-dir", required=True, help="directory holding job.json")
    parser.add_argument("--endpoint", required=True, help="the server's ZeroMQ endpoint (ipc:// or tcp://)")
    parser.add_argument("--server-key", default="", help="the server's CURVE public key (Z85), for tcp://")
    args = parser.parse_args(argv)
    secret, token = read_credentials()
    if not secret:
        log("no job secret on standard input")
        return 2
    try:
        job = load_job(args.job_dir)
    except (OSError, ValueError) as e:
        log(f"cannot read job.json in {args.job_dir}: {e}")
        return 2
    log(f"job {job['job_id']}: helper pid {os.getpid()}, endpoint {args.endpoint}")
    try:
        helper = Helper(os.path.abspath(args.job_dir), args.endpoint, secret, job, token)
        helper.server_key = args.server_key
        return helper.run()
    except zmq.ZMQError as e:
        log(f"job {job['job_id']}: ZeroMQ error: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
