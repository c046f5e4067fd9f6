"""uws-session-helper: the small process that runs one interactive session for the server.

    python -m uws.session_helper --job-dir DIR --endpoint ENDPOINT [--endpoint ENDPOINT ...]
        (standard input: the job secret on the first line, the session token on the second)

It reads <DIR>/job.json, starts the app in its own session (process group), waits for it to
answer HTTP when a readiness probe is configured, reports to the server over ZeroMQ (see
uws.sessions.protocol for the messages) and ends the whole process tree on "stop", at the time
limit, or when the readiness probe times out. When the app is gone it writes <DIR>/exit.json,
sends "exited" until the server acknowledges it (or linger_seconds pass) and exits.

The helper is meant to stay small: it imports neither tornado nor the server's modules, and its
event loop is a zmq.Poller with a short timeout plus Popen.poll(). This module holds the session's
state and the loop; helper_app the app's process tree, helper_link the ZeroMQ link to the server.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import zmq

from uws.sessions import proctree
from uws.sessions.helper_app import (
    PREFIX,
    SessionApp,
    app_command,
    free_port,
    log,
    probe_http,
    read_tail,
    write_json_atomic,
)
from uws.sessions.helper_link import ServerLink
from uws.sessions.helper_node import LOOPBACK, NodeAddressError, listen_host
from uws.sessions.helper_output import OutputForwarder

IDLE_POLL = 0.2  # seconds: the loop's longest sleep
HELLO_RETRY = 0.002  # seconds between tries of a due "hello" on a connection just made
ENDING_POLL = 0.05  # seconds: while waiting for the tree to end
EXITED_RESEND = 0.5  # seconds between re-sends of "exited"

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


class Helper:
    """The session's state (starting, ready, running, exited), what it reports and when, and
    the loop that drives it: the app is a SessionApp, the server is reached through a
    ServerLink."""

    server_key = ""  # the server's CURVE public key (Z85) on a tcp:// channel

    def __init__(
        self, job_dir: str, endpoint: str | list[str], secret: str, job: dict[str, Any], token: str = ""
    ) -> None:
        self.job_dir = job_dir
        self.secret = secret
        # The server derives the session token and checks links against it. Without one the app
        # still gets a random token, so it is never left open.
        self.token = token or os.urandom(16).hex()
        self.job = {**DEFAULTS, **job}
        self.job_id = int(job["job_id"])
        self.link = ServerLink(endpoint, secret, self.job_id)
        self.app = SessionApp(self.job_id)
        self.output: OutputForwarder | None = None  # the app's output, forwarded as "log"
        self.seq = 0
        self.phase = "starting"
        self.started_at = time.time()
        self.started_mono = time.monotonic()
        self.ready: dict[str, Any] | None = None
        self.exit: dict[str, Any] | None = None
        self.port = 0
        self.host = LOOPBACK  # where the app listens (its node's address on Slurm)
        self.failure_message: str | None = None  # what the owner reads when the launch failed
        self.readiness_path = ""
        self.url_path = ""
        self.readiness_deadline = 0.0
        self.next_probe = 0.0
        self.probe_delay = 0.02
        self.next_heartbeat = 0.0
        # Lingering after "exited".
        self.exited_seqs: list[int] = []
        self.acked = False
        self.linger_until = 0.0
        self.next_resend = 0.0
        self.last_heard = time.monotonic()
        self.signalled: int | None = None
        self.subreaper = False
        # Said on every connection, and under every new term (see "Terms" in protocol.py);
        # retried until a connected server takes it.
        self.hello_due = True
        # What waits for the server to welcome this helper: the latest progress message, and
        # the rest of the output once the app has ended (sent before "exited").
        self.held_progress: str | None = None
        self.flush_due = False

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

    @staticmethod
    def num_from(obj: dict[str, Any], key: str, default: float) -> float:
        value = obj.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return default
        return max(0.0, float(value))

    # -- messages ----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "helper_pid": os.getpid(),
            "app_pid": self.app.proc.pid if self.app.proc else None,
            "started_at": self.started_at,
            "ready": self.ready,
            "exit": self.exit,
            "time_limit_seconds": self.time_limit,
        }

    def send(self, mtype: str, **fields: Any) -> int:
        self.seq += 1
        self.link.send({"type": mtype, "job_id": self.job_id, "seq": self.seq, **fields})
        return self.seq

    def send_state(self, mtype: str) -> int:
        return self.send(mtype, state=self.state())

    def send_log(self, data: str, skipped: int) -> bool:
        # Output waits (the forwarder keeps its place) until the server has welcomed this
        # helper: a server that has not would drop it.
        if not self.link.confirmed:
            return False
        self.seq += 1
        return self.link.send(
            {"type": "log", "job_id": self.job_id, "seq": self.seq, "data": data, "skipped": skipped}
        )

    def send_progress(self, text: str) -> None:
        if self.link.confirmed:
            self.send("progress", message=text)
        else:
            self.held_progress = text

    def say_hello(self) -> None:
        """Send "hello" now if a server is connected; otherwise it stays due."""
        if not self.link.connected:
            return
        self.seq += 1
        sent = self.link.send(
            {"type": "hello", "job_id": self.job_id, "seq": self.seq, "state": self.state()}
        )
        self.hello_due = not sent

    def welcomed(self, epoch_changed: bool) -> None:
        """The server has heard this helper under its term: what waited for that goes now."""
        if self.flush_due and self.output is not None:
            # First: the server records the end on "hello" or "exited", and no output after it.
            self.flush_due = False
            self.output.flush(self.send_log)
        if epoch_changed:
            self.hello_due = True  # the server takes only what is said under its term
            self.say_hello()
        if self.held_progress is not None and self.phase == "starting":
            self.send("progress", message=self.held_progress)
        self.held_progress = None
        if self.phase == "exited" and not self.acked:
            self.resend_exited()

    def handle(self, message: dict[str, Any]) -> None:
        now = time.monotonic()
        silent_for = now - self.last_heard
        self.last_heard = now
        mtype = message["type"]
        if (
            mtype not in ("report", "welcome")
            and self.phase != "exited"
            and silent_for > max(3 * self.num("heartbeat_seconds"), 10.0)
        ):
            self.send_state("hello")  # the server may have restarted: tell it everything
        if mtype == "welcome":
            self.welcomed(bool(message.get("epoch_changed")))
        elif mtype == "ack":
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
                self.app.begin_end("stopped", float(grace))
        elif mtype == "extend":
            seconds = message.get("time_limit_seconds")
            if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds <= 0:
                log(f"job {self.job_id}: ignored an extension without a valid time limit")
            elif self.phase != "exited" and seconds != self.time_limit:
                log(f"job {self.job_id}: time limit moved to {seconds} s")
                self.job["time_limit_seconds"] = seconds
                self.next_heartbeat = 0.0  # the next turn of the loop confirms it
        else:
            log(f"job {self.job_id}: ignored a message of unknown type {mtype!r}")

    # -- the app -----------------------------------------------------------------------------

    def launch(self) -> bool:
        """Start the app; False (with ending_reason "launch_failed") when it could not start."""
        job = self.job
        log_file = str(job.get("log_file") or os.path.join(self.job_dir, "session.log"))
        job["log_file"] = log_file
        self.output = OutputForwarder(log_file)
        try:
            self.host = listen_host(job)
            self.port = free_port(self.host)
            public = {"port": str(self.port), "base_url": str(job["base_url"] or "/"), "host": self.host}
            command = app_command(job, self.job_dir, public, self.token)
            self.url_path, self.readiness_path = command.url_path, command.readiness_path
            proc = self.app.start(command, log_file)
            self.output.open()
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            log(f"job {self.job_id}: could not start the app: {e}")
            if isinstance(e, NodeAddressError):
                self.failure_message = str(e)
            try:
                with open(log_file, "a") as out:
                    out.write(f"{PREFIX} could not start the app: {e}\n")
            except OSError:
                pass
            self.app.ending_reason = "launch_failed"
            return False
        now = time.monotonic()
        self.started_at = time.time()
        self.started_mono = now
        self.next_heartbeat = now + self.num("heartbeat_seconds", 0.05)
        log(f"job {self.job_id}: started the app, pid {proc.pid}, at {self.host}:{self.port}")
        if self.job["readiness"] is None:
            self.phase = "running"
        else:
            timeout = self.num_from(self.job["readiness"], "timeout_seconds", 60.0)
            self.readiness_deadline = now + timeout
            self.next_probe = now + self.probe_delay
        return True

    def finish(self) -> None:
        proc = self.app.proc
        code = proc.returncode if proc is not None else None
        reason = self.app.ending_reason or ("completed" if code == 0 else "failed")
        if self.output is not None:
            # Before "exited": the server has the whole output when it records the end. A server
            # that has not welcomed this helper yet gets it when it does (welcomed()).
            if self.link.confirmed:
                self.output.flush(self.send_log)
            else:
                self.flush_due = True
        self.exit = {
            "exit_code": code,
            "reason": reason,
            "log_tail": read_tail(str(self.job["log_file"])),
            "ended_at": time.time(),
        }
        if self.failure_message:
            self.exit["message"] = self.failure_message
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
            self.app.begin_end("stopped", self.num("grace_seconds"))
        if self.phase == "exited":
            return self.tick_exited(now)
        if self.app.ending_reason is None:
            self.watch_app(now)
        if self.app.ending_reason is not None:
            if self.app.ended(now):
                self.finish()
            if self.phase == "exited":
                return False
        if self.output is not None:
            self.output.forward_due(now, self.send_log)
        if now >= self.next_heartbeat:
            self.send("heartbeat", state=self.state(), metrics=self.app.metrics())
            self.next_heartbeat = now + self.num("heartbeat_seconds", 0.05)
        return False

    def tick_exited(self, now: float) -> bool:
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

    def watch_app(self, now: float) -> None:
        """The running app: its own end, the time limit, and (while starting) the readiness probe."""
        proc = self.app.proc
        assert proc is not None
        code = proc.poll()
        limit = self.time_limit
        if code is not None:
            # The app ended by itself: leftovers in its tree get the usual grace.
            self.app.begin_end("completed" if code == 0 else "failed", self.num("grace_seconds"))
        elif limit is not None and now - self.started_mono >= limit:
            log(f"job {self.job_id}: time limit of {limit} s reached")
            self.app.begin_end("time_limit", self.num("grace_seconds"))
        elif self.phase == "starting" and now >= self.next_probe:
            if probe_http(
                self.host,
                self.port,
                self.readiness_path,
                timeout=min(2.0, max(0.1, self.readiness_deadline - now)),
            ):
                self.phase = "ready"
                # The server decides the host itself and checks the port: this is only a claim.
                self.ready = {"host": self.host, "port": self.port, "path": self.url_path}
                log(f"job {self.job_id}: the app answers HTTP on port {self.port}")
                self.send_state("ready")
            elif time.monotonic() >= self.readiness_deadline:
                log(f"job {self.job_id}: the app did not answer HTTP in time")
                self.send_progress("Webserver did not become ready in time.")
                self.app.begin_end("launch_failed", self.num("grace_seconds"))
            else:
                self.next_probe = time.monotonic() + self.probe_delay
                self.probe_delay = min(0.25, self.probe_delay * 1.5)

    def wait_time(self, now: float) -> float:
        if self.hello_due and self.link.connected:
            return HELLO_RETRY  # the connection is up, its pipe is attached a moment later
        if self.phase == "exited":
            due = min(self.next_resend, self.linger_until)
        elif self.app.ending_reason is not None:
            return ENDING_POLL
        else:
            due = self.next_heartbeat
            if self.output is not None:
                due = min(due, self.output.next_send)
            if self.phase == "starting":
                due = min(due, self.next_probe)
        return min(IDLE_POLL, max(0.0, due - now))

    def on_signal(self, signum: int, frame: Any) -> None:
        self.signalled = signum

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self.on_signal)
        self.subreaper = proctree.become_subreaper()
        self.link.connect(self.server_key)
        try:
            return self.loop()
        except BaseException:
            # A bug must not leave the app running unsupervised: end the tree before dying.
            if self.phase != "exited":
                self.app.kill()
            raise

    def on_connect(self) -> None:
        self.hello_due = True

    def loop(self) -> int:
        launched = self.launch()
        self.say_hello()
        if not launched:
            self.finish()
        elif self.phase == "starting":
            self.send_progress("Webserver not ready.")
        while True:
            from_monitor, from_server = self.link.wait(self.wait_time(time.monotonic()))
            if from_monitor:
                self.link.read_monitor(self.on_connect)
            if self.hello_due:
                self.say_hello()
            if from_server:
                self.link.receive(self.handle)
            if self.tick(time.monotonic()):
                break
        self.link.close()
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="uws-session-helper",
        description="Run one UWS session: start the app, report to the server, end it on request. "
        "The job secret is read from the first line of standard input, the session token from the second.",
    )
    parser.add_argument("--job-dir", required=True, help="directory holding job.json")
    parser.add_argument(
        "--endpoint",
        required=True,
        action="append",
        help="a server's ZeroMQ endpoint (ipc:// or tcp://); repeated for every server that may lead",
    )
    parser.add_argument("--server-key", default="", help="the server's CURVE public key (Z85), for tcp://")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    secret, token = read_credentials()
    if not secret:
        log("no job secret on standard input")
        return 2
    try:
        job = load_job(args.job_dir)
    except (OSError, ValueError) as e:
        log(f"cannot read job.json in {args.job_dir}: {e}")
        return 2
    log(f"job {job['job_id']}: helper pid {os.getpid()}, endpoints {' '.join(args.endpoint)}")
    try:
        helper = Helper(os.path.abspath(args.job_dir), args.endpoint, secret, job, token)
        helper.server_key = args.server_key
        return helper.run()
    except zmq.ZMQError as e:
        log(f"job {job['job_id']}: ZeroMQ error: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
