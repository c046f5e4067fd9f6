"""The per-session helper (`python -m uws.session_helper`), driven over its real ZeroMQ protocol.

Each test binds its own ROUTER on an ipc:// path, writes job.json, starts the helper as a real
subprocess with the secret and the session token on its standard input, and plays the server's part
(terms included: each bind is a new one, and the helper is welcomed to it; see protocol.py).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import zmq

from uws.sessions import protocol

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def gone(pid: int) -> bool:
    """The process no longer runs (a zombie nobody reaps counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class Session:
    """One helper process and the ROUTER socket standing in for the server: like the server, it
    answers what was signed under another term (and every "hello") with "welcome", and hands
    the test only what was signed under its own."""

    def __init__(self, command: list[str], job_id: int = 7, **job: Any) -> None:
        self.dir = tempfile.mkdtemp(prefix="uwsh-")  # short: ipc paths are limited to ~100 bytes
        self.workspace = os.path.join(self.dir, "ws")
        os.mkdir(self.workspace)
        self.endpoint = f"ipc://{self.dir}/channel"
        self.ctx = zmq.Context()
        self.router: zmq.Socket | None = None
        self.ident = b""  # the helper's routing identity, learnt from its first message
        self.epoch = ""
        self.welcomes = 0
        self.welcoming = True  # False: a server that has not answered yet
        self.seen: list[str] = []  # the type of every message received, any term
        self.bind()
        self.secret = os.urandom(16).hex()
        self.token = os.urandom(20).hex()
        self.job_id = job_id
        self.job = {
            "job_id": job_id,
            "command": command,
            "env": {},
            "cwd": self.workspace,
            "log_file": os.path.join(self.dir, "app.log"),
            "readiness": None,
            "url_path": "",
            "base_url": f"/jobs/{job_id}/",
            "time_limit_seconds": None,
            "heartbeat_seconds": 0.5,
            "grace_seconds": 2.0,
            "linger_seconds": 10.0,
            **job,
        }
        with open(os.path.join(self.dir, "job.json"), "w") as f:
            json.dump(self.job, f)
        self.stderr_path = os.path.join(self.dir, "helper.stderr")
        self.stderr = open(self.stderr_path, "wb")
        self.seq = 0
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uws.session_helper", "--job-dir", self.dir, "--endpoint", self.endpoint],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
            cwd=ROOT,
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{self.secret}\n{self.token}\n".encode())
        self.proc.stdin.close()

    def bind(self) -> None:
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind(self.endpoint)
        self.epoch = protocol.new_epoch()

    def welcome(self, nonce: str) -> None:
        self.welcomes += 1
        self.send("welcome", nonce=nonce)

    def unbind(self) -> None:
        assert self.router is not None
        self.router.close(linger=0)
        self.router = None

    def recv(self, mtype: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
        """The next verified message (of type mtype, skipping others)."""
        assert self.router is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.router.poll(int(left * 1000)):
                raise AssertionError(f"no {mtype or 'message'} from the helper within {timeout} s")
            ident, *frames = self.router.recv_multipart()
            assert protocol.job_id_from_identity(ident) == self.job_id
            assert self.ident in (b"", ident), "the helper's identity changed"
            self.ident = ident
            message = protocol.decode(self.secret, frames)
            assert message is not None, "the helper's message does not verify"
            assert message["job_id"] == self.job_id
            assert isinstance(message["nonce"], str) and len(message["nonce"]) == 32
            self.seen.append(message["type"])
            if message["epoch"] != self.epoch:
                if self.welcoming:
                    self.welcome(message["nonce"])
                continue
            if message["type"] == "hello":
                self.welcome(message["nonce"])
            if mtype is None or message["type"] == mtype:
                return message

    def send(self, mtype: str, secret: str | None = None, **fields: Any) -> None:
        assert self.router is not None
        self.seq += 1
        message = {"type": mtype, "job_id": self.job_id, "seq": self.seq, "epoch": self.epoch, **fields}
        frames = protocol.encode(secret or self.secret, message)
        self.router.send_multipart([self.ident, *frames])

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def helper_log(self) -> str:
        with open(self.stderr_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def exit_json(self) -> dict[str, Any]:
        with open(os.path.join(self.dir, "exit.json")) as f:
            return json.load(f)

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
            self.stderr.close()
            log = self.helper_log()
        finally:
            if self.router is not None:
                self.router.close(linger=0)
            self.ctx.term()
            shutil.rmtree(self.dir, ignore_errors=True)
        assert self.secret not in log, "the helper logged its secret"
        assert self.token not in log, "the helper logged the session token"


@pytest.fixture
def session_factory() -> Iterator[Any]:
    made: list[Session] = []

    def make(command: list[str], **job: Any) -> Session:
        s = Session(command, **job)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def test_http_app_becomes_ready(session_factory: Any) -> None:
    s = session_factory(
        [sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1"],
        readiness={"path": "/?probe={token}", "timeout_seconds": 15},
        url_path="{base_url}lab",
    )
    hello = s.recv()
    assert hello["type"] == "hello"
    state = hello["state"]
    assert state["phase"] == "starting"
    assert state["helper_pid"] == s.proc.pid
    assert isinstance(state["app_pid"], int) and state["ready"] is None and state["exit"] is None

    ready = s.recv("ready", timeout=15)["state"]
    assert ready["phase"] == "ready"
    info = ready["ready"]
    # The port, path and the address the app listens on (loopback off a Slurm node): the
    # server checks the host against its own answer, and adds the token to the link.
    assert info == {"port": info["port"], "path": "/jobs/7/lab", "host": "127.0.0.1"}
    with urllib.request.urlopen(f"http://127.0.0.1:{info['port']}/", timeout=5) as r:
        assert r.status == 200
    # The probe reached the app with the server's token substituted into readiness.path.
    with open(s.job["log_file"]) as f:
        assert f"GET /?probe={s.token} " in f.read()

    beat = s.recv("heartbeat", timeout=5)
    assert beat["state"]["phase"] == "ready"
    assert beat["metrics"]["rss_bytes"] > 0
    assert beat["metrics"]["processes"] >= 1
    assert beat["metrics"]["cpu_seconds"] >= 0

    s.send("report")
    again = s.recv("hello")
    assert again["state"]["ready"] == info
    assert again["seq"] > beat["seq"] > hello["seq"]

    s.send("stop", grace_seconds=3)
    exited = s.recv("exited", timeout=10)
    assert exited["state"]["exit"]["reason"] == "stopped"
    assert gone(ready["app_pid"])
    s.send("ack", ack_seq=exited["seq"])
    assert s.wait_exit(5) == 0


def test_substitution_cwd_and_completed_exit(session_factory: Any) -> None:
    script = "import os, sys; print('ARGS', *sys.argv[1:], os.environ['APP_X'], os.getcwd())"
    s = session_factory(
        [sys.executable, "-c", script, "{port}", "{base_url}", "{token}", "{other}"],
        env={"APP_X": "p={port}"},
    )
    assert s.recv("hello")["state"]["phase"] in ("running", "exited")
    exited = s.recv("exited")
    end = exited["state"]["exit"]
    assert end["reason"] == "completed" and end["exit_code"] == 0
    m = re.search(r"ARGS (\d+) (\S+) ([0-9a-f]+) (\S+) p=(\d+) (\S+)", end["log_tail"])
    assert m, end["log_tail"]
    assert m.group(3) == s.token  # the server's, from standard input
    assert m.group(2) == "/jobs/7/"
    assert m.group(4) == "{other}"  # unknown braces are left alone
    assert m.group(1) == m.group(5)
    assert os.path.realpath(m.group(6)) == os.path.realpath(s.workspace)
    assert s.exit_json() == end
    s.send("ack", ack_seq=exited["seq"])
    assert s.wait_exit(5) == 0


def test_failed_exit_log_tail_and_exited_resent_until_linger(session_factory: Any) -> None:
    s = session_factory(
        ["sh", "-c", "echo hello-from-app; echo oops-on-stderr >&2; exit 3"],
        linger_seconds=1.6,
    )
    first = s.recv("exited")
    end = first["state"]["exit"]
    assert end["reason"] == "failed"
    assert end["exit_code"] == 3
    assert "hello-from-app" in end["log_tail"] and "oops-on-stderr" in end["log_tail"]
    assert end["ended_at"] > 0
    assert first["state"]["phase"] == "exited"
    assert s.exit_json() == end
    # Never acknowledged: re-sent about every 0.5 s, then the helper gives up after linger_seconds.
    again = s.recv("exited", timeout=2)
    assert again["seq"] > first["seq"]
    assert again["state"]["exit"] == end
    assert s.wait_exit(5) == 0


def test_stop_ends_the_whole_tree(session_factory: Any) -> None:
    s = session_factory(["sh", "-c", "sleep 300 & sleep 300"])
    hello = s.recv("hello")
    assert hello["state"]["phase"] == "running"
    app = hello["state"]["app_pid"]
    assert wait_for(lambda: len(psutil.Process(app).children(recursive=True)) >= 1, 5)
    pids = [app] + [p.pid for p in psutil.Process(app).children(recursive=True)]
    beat = s.recv("heartbeat")
    assert beat["metrics"]["processes"] >= 2

    # A forged stop (wrong key) is ignored: the session keeps running and reporting.
    s.send("stop", secret="not-the-secret", grace_seconds=0)
    time.sleep(0.8)
    assert s.proc.poll() is None
    assert not any(gone(p) for p in pids)
    assert s.recv("heartbeat")["state"]["phase"] == "running"
    assert "failed verification" in s.helper_log()

    s.send("stop", grace_seconds=2)
    exited = s.recv("exited", timeout=10)
    assert exited["state"]["exit"]["reason"] == "stopped"
    assert exited["state"]["exit"]["exit_code"] == -15
    assert all(gone(p) for p in pids)
    # Not acknowledged yet: re-sent; an ack for the re-sent one ends the helper.
    again = s.recv("exited", timeout=2)
    s.send("ack", ack_seq=again["seq"])
    assert s.wait_exit(5) == 0
    assert s.exit_json()["reason"] == "stopped"


def test_stop_escalates_to_kill(session_factory: Any) -> None:
    # TERM is ignored by the shell and (inherited) by its child: SIGKILL after the grace period.
    s = session_factory(["sh", "-c", "trap '' TERM; sleep 300 & wait"])
    app = s.recv("hello")["state"]["app_pid"]
    assert wait_for(lambda: len(psutil.Process(app).children()) >= 1, 5)
    pids = [app] + [p.pid for p in psutil.Process(app).children(recursive=True)]
    started = time.monotonic()
    s.send("stop", grace_seconds=0.5)
    end = s.recv("exited", timeout=10)["state"]["exit"]
    assert time.monotonic() - started >= 0.5
    assert end["reason"] == "stopped" and end["exit_code"] == -9
    assert all(gone(p) for p in pids)


def test_leftovers_of_a_finished_app_are_ended(session_factory: Any) -> None:
    # The app exits at once, leaving an orphan behind: it is ended before "exited" is sent.
    s = session_factory(["sh", "-c", "sleep 300 & echo $! > child.pid; exit 0"], grace_seconds=1)
    end = s.recv("exited", timeout=8)["state"]["exit"]
    assert end["reason"] == "completed" and end["exit_code"] == 0
    with open(os.path.join(s.workspace, "child.pid")) as f:
        assert gone(int(f.read()))


def test_time_limit(session_factory: Any) -> None:
    s = session_factory(["sleep", "60"], time_limit_seconds=1)
    hello = s.recv("hello")
    assert hello["state"]["time_limit_seconds"] == 1
    end = s.recv("exited", timeout=6)["state"]["exit"]
    assert end["reason"] == "time_limit"
    assert end["ended_at"] - hello["state"]["started_at"] >= 1
    assert gone(hello["state"]["app_pid"])


def test_readiness_timeout_is_launch_failed(session_factory: Any) -> None:
    s = session_factory(["sleep", "60"], readiness={"path": "/", "timeout_seconds": 1})
    hello = s.recv("hello")
    assert hello["state"]["phase"] == "starting"
    progress = s.recv("progress")
    assert progress["message"]
    exited = s.recv("exited", timeout=8)
    assert exited["state"]["exit"]["reason"] == "launch_failed"
    assert exited["state"]["ready"] is None
    assert gone(hello["state"]["app_pid"])


def test_command_that_cannot_start(session_factory: Any) -> None:
    s = session_factory(["/nonexistent/uws-no-such-binary"])
    hello = s.recv("hello")
    assert hello["state"]["app_pid"] is None
    end = s.recv("exited")["state"]["exit"]
    assert end["reason"] == "launch_failed" and end["exit_code"] is None
    assert "uws-no-such-binary" in end["log_tail"]


def test_survives_the_server_going_away(session_factory: Any) -> None:
    s = session_factory(["sleep", "60"], heartbeat_seconds=0.3)
    app = s.recv("hello")["state"]["app_pid"]
    s.recv("heartbeat")
    s.unbind()
    time.sleep(1.0)
    assert s.proc.poll() is None and not gone(app)
    s.bind()  # a "restarted server" on the same endpoint
    hello = s.recv("hello", timeout=6)
    assert hello["state"]["phase"] == "running" and hello["state"]["app_pid"] == app
    beat = s.recv("heartbeat", timeout=3)
    assert beat["seq"] > hello["seq"] or beat["seq"] < hello["seq"]  # queued ones may come first
    s.send("stop", grace_seconds=1)
    assert s.recv("exited", timeout=6)["state"]["exit"]["reason"] == "stopped"


def test_helper_signal_ends_the_session(session_factory: Any) -> None:
    s = session_factory(["sleep", "60"])
    app = s.recv("hello")["state"]["app_pid"]
    s.proc.terminate()
    assert s.recv("exited", timeout=6)["state"]["exit"]["reason"] == "stopped"
    assert gone(app)


def test_replayed_and_stale_messages_are_refused(session_factory: Any) -> None:
    """Whoever captures a signed "stop" cannot replay it: a seq already seen, a message older
    than five minutes, and one from an older server process are all dropped."""
    s = session_factory([sys.executable, "-c", "import time; time.sleep(60)"])
    s.recv("hello")
    assert s.router is not None
    s.seq += 1
    stop = protocol.encode(
        s.secret, {"type": "stop", "job_id": s.job_id, "seq": s.seq, "epoch": s.epoch, "grace_seconds": 1}
    )
    report = {"type": "report", "job_id": s.job_id, "epoch": s.epoch}
    s.send("report")  # a later seq from the same sender: the stop above is now a replay
    s.recv("hello")
    s.router.send_multipart([s.ident, *stop])
    stale = protocol.encode(s.secret, {**report, "seq": s.seq + 10, "time": time.time() - 600})
    s.router.send_multipart([s.ident, *stale])
    older = protocol.encode(s.secret, {**report, "seq": 1, "sender": "old", "started": 0.0})
    s.router.send_multipart([s.ident, *older])
    with pytest.raises(AssertionError):
        s.recv("hello", timeout=1.5)  # no "report" got through
    assert s.proc.poll() is None  # ...and no "stop"
    assert s.helper_log().count("dropped a message that failed verification") == 3
    s.send("stop", grace_seconds=1)  # the real server's next message still works
    assert s.recv("exited", timeout=10)["state"]["exit"]["reason"] == "stopped"


def test_messages_of_an_earlier_term_are_refused(session_factory: Any) -> None:
    """A "stop" captured before the server restarted (or another took over) is refused by the
    helper once it has been welcomed to the new term, though its seq is the highest it has seen
    and its sender started later; so is a welcome that does not echo the helper's nonce."""
    s = session_factory(["sleep", "60"], heartbeat_seconds=0.3)
    app = s.recv("hello")["state"]["app_pid"]
    s.recv("heartbeat")
    captured = protocol.encode(
        s.secret,
        {"type": "stop", "job_id": s.job_id, "seq": 10**6, "epoch": s.epoch, "started": time.time() + 60},
    )
    s.unbind()
    s.bind()  # the next term
    assert s.recv("hello", timeout=6)["state"]["app_pid"] == app
    assert s.router is not None
    s.router.send_multipart([s.ident, *captured])
    s.seq += 1
    forged = protocol.encode(
        s.secret, {"type": "welcome", "job_id": s.job_id, "seq": s.seq, "epoch": "x" * 32, "nonce": "n" * 32}
    )
    s.router.send_multipart([s.ident, *forged])
    s.recv("heartbeat", timeout=3)
    time.sleep(0.5)
    assert s.proc.poll() is None and not gone(app), "a stop of the earlier term was obeyed"
    assert s.helper_log().count("dropped a message that failed verification") == 2
    assert s.recv("heartbeat", timeout=3)["epoch"] == s.epoch  # still in this term
    s.send("stop", grace_seconds=1)  # this term's own
    assert s.recv("exited", timeout=6)["state"]["exit"]["reason"] == "stopped"


def test_output_waits_for_the_welcome(session_factory: Any) -> None:
    """The app's output is forwarded only to a server that has welcomed the helper: nothing is
    sent into a term that would drop it, and all of it arrives once welcomed."""
    s = session_factory(
        [sys.executable, "-c", "print('first line', flush=True); import time; time.sleep(60)"],
        heartbeat_seconds=0.3,
    )
    s.welcoming = False
    with pytest.raises(AssertionError):
        s.recv(timeout=1.5)  # nothing under this term yet...
    assert "hello" in s.seen and "heartbeat" in s.seen and "log" not in s.seen  # ...and no output
    s.welcoming = True
    s.recv("hello", timeout=3)  # under this term, once welcomed
    chunk = s.recv("log", timeout=3)
    assert base64.b64decode(chunk["data"]).startswith(b"first line\n") and chunk["skipped"] == 0


def test_no_secret_is_an_error() -> None:
    d = tempfile.mkdtemp(prefix="uwsh-")
    try:
        with open(os.path.join(d, "job.json"), "w") as f:
            json.dump({"job_id": 1, "command": ["true"]}, f)
        r = subprocess.run(
            [sys.executable, "-m", "uws.session_helper", "--job-dir", d, "--endpoint", f"ipc://{d}/c"],
            input=b"",
            capture_output=True,
            timeout=20,
            cwd=ROOT,
        )
        assert r.returncode != 0
        assert b"uws-session-helper:" in r.stderr and b"secret" in r.stderr
        assert not os.path.exists(os.path.join(d, "exit.json"))
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_helper_imports_stay_light() -> None:
    code = (
        "import sys, uws.session_helper; "
        "print(' '.join(m for m in ('tornado', 'sqlalchemy', 'traitlets', 'uws.app') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""
