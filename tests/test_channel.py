"""The session channel holds up against peers that can connect but have no job secret, and
against a failing database; helpers start isolated from their job directory.

The first tests drive uws.sessions.channel.SessionChannel in this process over real ZeroMQ
sockets (no server needed); the rest talk to a real server with real sessions.
"""

from __future__ import annotations

import asyncio
import grp
import os
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import zmq
import zmq.asyncio
from traitlets import TraitError

from uws.sessions import protocol
from uws.sessions.channel import ChannelError, SessionChannel, check_peers, prepare_socket_dir
from uws.spawners.base import Spawner

from helpers.api import create, get_job, login, start, unique_name, wait_for, wait_status, ws_dir
from helpers.channel import Recorder, eventually
from helpers.configs import SESSION_CONFIG, SESSION_GROUP, SUDO_AVAILABLE
from helpers.harness import ROOT, Server, free_port, running_server

SECRET = "s" * 64
JOB = 7


# ---- in-process: one SessionChannel and DEALER sockets standing in for helpers ----------------


def job_recorder() -> Recorder:
    return Recorder(JOB, SECRET)


def with_channel(
    tmp_path: Any, body: Callable[[SessionChannel, Recorder, str], Awaitable[None]], url: str = ""
) -> None:
    # ipc paths are limited to ~100 bytes; pytest's tmp_path can be longer.
    short = os.path.join("/tmp", f"uwsc-{os.getpid()}-{time.monotonic_ns() % 10**8}")
    url = url or f"ipc://{short}/ch.sock"

    async def run() -> None:
        recorder = job_recorder()
        channel = SessionChannel(
            url, recorder.secret_for, recorder.handler, key_file=str(tmp_path / "channel.key")
        )
        channel.bind()
        try:
            await body(channel, recorder, url)
        finally:
            channel.close()

    try:
        asyncio.run(run())
    finally:
        if os.path.isdir(short):
            for name in os.listdir(short):
                os.unlink(os.path.join(short, name))
            os.rmdir(short)


def dealer(url: str, ident: bytes, **options: Any) -> zmq.asyncio.Socket:
    sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, ident)
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    sock.connect(url)
    return sock


def signed(seq: int, **fields: Any) -> list[bytes]:
    return protocol.encode(SECRET, {"type": "progress", "job_id": JOB, "seq": seq, **fields})


def test_identities_are_unguessable_and_parsed_strictly() -> None:
    a, b = protocol.identity(12), protocol.identity(12)
    assert a != b and a.startswith(b"job-12.")
    assert protocol.job_id_from_identity(a) == 12
    assert protocol.job_id_from_identity(b"job-12") == 12  # helpers started before the upgrade
    for bad in (b"job-", b"job-1x", b"job-1.zz", b"job-1." + b"a" * 31, b"xjob-1", b"job-" + b"9" * 19):
        assert protocol.job_id_from_identity(bad) is None


def test_oversized_frame_is_dropped_by_the_socket(tmp_path: Any) -> None:
    """A correctly signed message over the cap never reaches the handler: the socket drops the
    connection (ZMQ_MAXMSGSIZE); the helper's next normal message gets through."""

    async def body(channel: SessionChannel, recorder: Recorder, url: str) -> None:
        sock = dealer(url, protocol.identity(JOB))
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        await sock.send_multipart(signed(1, message="x" * (protocol.MAX_MESSAGE_BYTES + 1)))
        assert await monitor.poll(10_000), "the server kept the connection of an oversized frame"
        await sock.send_multipart(signed(2, message="small"))
        await eventually(lambda: recorder.messages)
        assert [m["seq"] for m in recorder.messages] == [2]
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)

    with_channel(tmp_path, body)


def test_receive_loop_is_supervised(tmp_path: Any) -> None:
    """Whatever ends the receive loop, it is started again and later messages are handled."""

    class Escaped(BaseException):
        """Not an Exception: gets past the per-message guard, as a bug in it would."""

    async def body(channel: SessionChannel, recorder: Recorder, url: str) -> None:
        original = channel._dispatch
        calls = 0

        async def failing_once(frames: list[bytes]) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise Escaped()
            await original(frames)

        channel._dispatch = failing_once  # type: ignore[method-assign]
        sock = dealer(url, protocol.identity(JOB))
        await sock.send_multipart(signed(1))
        await eventually(lambda: channel.restarts == 1)
        await sock.send_multipart(signed(2))
        await eventually(lambda: recorder.messages)
        assert [m["seq"] for m in recorder.messages] == [2]
        sock.close(0)

    with_channel(tmp_path, body)


def test_sends_go_only_to_the_peer_whose_message_verified(tmp_path: Any) -> None:
    """A peer claiming the job's identity without its secret gets nothing; the helper, once it
    has spoken, gets what was sent before (a restart's "report") and after."""

    async def body(channel: SessionChannel, recorder: Recorder, url: str) -> None:
        squatter = dealer(url, f"job-{JOB}".encode())
        await squatter.send_multipart([b"{}", b"junk"])
        await eventually(lambda: channel.dropped)
        assert await channel.send(JOB, SECRET, {"type": "report"}) is False
        helper = dealer(url, protocol.identity(JOB))
        await helper.send_multipart(signed(1))
        await eventually(lambda: recorder.messages)
        assert await channel.send(JOB, SECRET, {"type": "stop", "grace_seconds": 1}) is True
        got = []
        while len(got) < 2 and await helper.poll(5000):
            got.append(protocol.decode(SECRET, await helper.recv_multipart()))
        assert [m and m["type"] for m in got] == ["report", "stop"]
        assert not await squatter.poll(300)
        squatter.close(0)
        helper.close(0)

    with_channel(tmp_path, body)


def test_ipc_socket_is_reachable_only_through_its_group(tmp_path: Any) -> None:
    async def body(channel: SessionChannel, recorder: Recorder, url: str) -> None:
        path = url[len("ipc://") :]
        st = os.stat(os.path.dirname(path))
        assert stat.S_IMODE(st.st_mode) == 0o750
        assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660

    with_channel(tmp_path, body)


def test_socket_directory_must_be_the_sockets_own(tmp_path: Any) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "something-else").write_text("")
    with pytest.raises(ChannelError, match="nothing but"):
        prepare_socket_dir(str(shared / "s.sock"), os.getegid())
    assert stat.S_IMODE(shared.stat().st_mode) != 0o750  # left as it was
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ChannelError):
        prepare_socket_dir(str(tmp_path / "link" / "s.sock"), os.getegid())
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "s.sock").write_text("")
    with pytest.raises(ChannelError, match="not a socket"):
        prepare_socket_dir(str(tmp_path / "plain" / "s.sock"), os.getegid())


@pytest.mark.parametrize("url", ["ipc://@uws-abstract", "inproc://x", "udp://127.0.0.1:1", "ipc://"])
def test_endpoints_without_access_control_are_refused(url: str) -> None:
    async def nothing(*args: Any) -> None:
        return None

    with pytest.raises(ChannelError):
        SessionChannel(url, nothing, nothing)


def test_tcp_channel_is_encrypted_with_curve(tmp_path: Any) -> None:
    """On tcp:// only a CURVE client that knows the server's public key gets through; the
    server's key pair is kept in a 0600 file and stays the same across restarts."""

    url = f"tcp://127.0.0.1:{free_port()}"

    async def body(channel: SessionChannel, recorder: Recorder, url: str) -> None:
        key_file = tmp_path / "channel.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert channel.public_key in key_file.read_bytes().split()
        plain = dealer(url, protocol.identity(JOB))
        await plain.send_multipart(signed(1))
        public, secret = zmq.curve_keypair()
        curve = dealer(
            url,
            protocol.identity(JOB),
            CURVE_SERVERKEY=channel.public_key,
            CURVE_PUBLICKEY=public,
            CURVE_SECRETKEY=secret,
        )
        await curve.send_multipart(signed(2))
        await eventually(lambda: recorder.messages)
        await asyncio.sleep(0.3)  # time for the plain one, were it let in
        assert [m["seq"] for m in recorder.messages] == [2]
        plain.close(0)
        curve.close(0)

    with_channel(tmp_path, body, url=url)
    first = (tmp_path / "channel.key").read_bytes()
    with_channel(tmp_path, body, url=f"tcp://127.0.0.1:{free_port()}")
    assert (tmp_path / "channel.key").read_bytes() == first


def test_helper_command_is_isolated() -> None:
    plain = Spawner(1, None, "/w", "ipc:///x/s.sock")  # type: ignore[arg-type]
    command = plain.helper_command()
    assert command[1:4] == ["-I", "-m", "uws.session_helper"]
    with_path = Spawner(1, None, "/w", "tcp://h:1", helper_pythonpath="/opt/uws:/opt/lib")  # type: ignore[arg-type]
    with_path.channel_server_key = "k" * 40
    command = with_path.helper_command()
    assert command[:2] == ["env", "PYTHONPATH=/opt/uws:/opt/lib"]
    assert command[3:7] == ["-P", "-s", "-m", "uws.session_helper"]
    assert command[-1] == "--server-key=" + "k" * 40
    for bad in ("relative/dir", "/opt/uws:", "/opt/uws::/x", ":/opt/uws"):
        with pytest.raises(TraitError):
            Spawner(1, None, "/w", "ipc:///x", helper_pythonpath=bad)  # type: ignore[arg-type]


def test_helpers_are_given_every_peer_endpoint() -> None:
    """With session_channel_peers the helper gets each endpoint (and the key, still one
    argument with '=': a Z85 key may begin with '-'); without, the channel's own URL."""
    spawner = Spawner(1, None, "/w", "tcp://*:7000")  # type: ignore[arg-type]
    spawner.channel_server_key = "-" + "k" * 39
    spawner.channel_peers = ("tcp://a:7000", "tcp://b:7000")
    command = spawner.helper_command()
    assert command[-5:] == [
        "--endpoint",
        "tcp://a:7000",
        "--endpoint",
        "tcp://b:7000",
        "--server-key=-" + "k" * 39,
    ]
    assert command.count("--endpoint") == 2
    assert check_peers("tcp://*:7000", ["tcp://a:7000", "tcp://b:7000", "tcp://a:7000"]) == [
        "tcp://a:7000",
        "tcp://b:7000",
    ]
    for url, peers, why in (
        ("tcp://a:1", ["ipc:///x/s.sock"], "be tcp:// or both ipc://"),
        ("ipc:///x/s.sock", ["tcp://a:1"], "be tcp:// or both ipc://"),
        ("tcp://*:1", ["tcp://*:1"], "names no host"),
        ("tcp://a:1", ["http://a:1"], "is not ipc://"),
    ):
        with pytest.raises(ChannelError, match=why):
            check_peers(url, peers)


# ---- a real server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cserver(backend: str):
    url = 'c.UWSApp.session_channel_url = "ipc://@DIR@/channel/sessions.sock"\n'
    yield from running_server(backend, SESSION_CONFIG + url)


def channel_url(srv: Server) -> str:
    return "ipc://" + os.path.join(srv.dir, "channel", "sessions.sock")


def send_junk(srv: Server, ident: bytes) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, ident)
    sock.connect(channel_url(srv))
    sock.send_multipart([b"{}", b"no-secret"])
    return sock


def test_server_socket_modes(cserver: Server) -> None:
    path = channel_url(cserver)[len("ipc://") :]
    st = os.stat(os.path.dirname(path))
    assert stat.S_IMODE(st.st_mode) == 0o750 and st.st_uid == os.geteuid()
    assert st.st_gid == (grp.getgrnam(SESSION_GROUP).gr_gid if SUDO_AVAILABLE else os.getegid())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660


def test_database_error_does_not_stop_the_channel(cserver: Server) -> None:
    """A message whose secret lookup fails in the database is logged and skipped; sessions
    started afterwards still become running."""
    c = login(cserver, cserver.client_token)
    w = create(c)
    cserver.sql("ALTER TABLE jobs RENAME TO jobs_away")
    try:
        sock = send_junk(cserver, b"job-424242")  # not cached: the server asks the database
        try:
            wait_for(lambda: "Handling a session message failed" in cserver.log(), timeout=5)
        except AssertionError:
            pass  # the code before this fix logged nothing: the receive loop just ended
        sock.close(0)
    finally:
        cserver.sql("ALTER TABLE jobs_away RENAME TO jobs")
    job = start(c, w["id"], job_type="local_test_job", job_details={})
    try:
        wait_status(c, job["id"], "running", "complete")
    except AssertionError:
        raise AssertionError(f"the new session never ran; server log:\n{cserver.log()}") from None


def test_squatter_on_a_job_identity_gets_nothing(cserver: Server) -> None:
    """A peer without the secret connecting as b"job-<N>" receives none of the server's
    messages for job N, and the stop reaches the real helper."""
    c = login(cserver, cserver.client_token)
    w = create(c)
    job = start(c, w["id"], job_type="web")
    wait_for(lambda: "connection_details" in get_job(c, job["id"])["job_details"]["current_job_details"], 30)
    dropped = cserver.log().count("Dropped")
    squatter = send_junk(cserver, f"job-{job['id']}".encode())
    try:
        try:  # the server has read the squatter's frame, so its identity is attached
            wait_for(lambda: cserver.log().count("Dropped") > dropped, timeout=5)
        except AssertionError:
            pass  # repeated warnings are rate-limited: one may not be logged
        assert c.put(f"/jobs/{job['id']}/stop").status_code == 200
        done = wait_status(c, job["id"], "complete")
        assert done["job_details"]["current_job_details"]["message"] == "Job stopped."
        assert not squatter.poll(500), "the squatter received a message meant for the helper"
    finally:
        squatter.close(0)
    with open(os.path.join(ws_dir(cserver, c, w["id"]), f".{job['id']}", "helper.log")) as f:
        assert "stop requested" in f.read()  # through the channel, not the spawner's fallback


def test_planted_uws_package_in_the_job_directory_is_not_run(cserver: Server) -> None:
    """The job directory of the next session is predictable and the owner's to write; a uws
    package planted there must not stand in for the helper's."""
    c = login(cserver, cserver.client_token)
    w = create(c)
    first = start(c, w["id"], job_type="local_test_job", job_details={})
    wait_status(c, first["id"], "running", "complete")
    root = ws_dir(cserver, c, w["id"])
    planted = []
    for job_id in range(first["id"] + 1, first["id"] + 6):
        package = os.path.join(root, f".{job_id}", "uws")
        os.makedirs(package)
        os.chmod(package, 0o777)  # so a session account can leave its mark
        for name in ("__init__.py", "session_helper.py"):
            with open(os.path.join(package, name), "w") as f:
                f.write(f"open(__file__ + '.ran', 'w').close()\nraise SystemExit('planted {name} ran')\n")
        planted.append(package)
    job = start(c, w["id"], job_type="local_test_job", job_details={})
    assert job["id"] <= first["id"] + 5
    status = wait_status(c, job["id"], "running", "complete", "failed")["status"]
    assert not [name for p in planted for name in os.listdir(p) if name.endswith(".ran")]
    assert status in ("running", "complete")


def test_misconfigured_channel_stops_the_server_with_a_message(backend: str) -> None:
    srv = Server(backend, SESSION_CONFIG + 'c.UWSApp.session_group = "uwst-no-such-group"\n')
    try:
        with pytest.raises(RuntimeError, match="is not a group on this machine"):
            srv.start()
        assert "Traceback" not in srv.log()
    finally:
        srv.close()


def test_helper_speaks_curve_with_the_server_key(tmp_path: Any) -> None:
    """A real helper given --server-key reaches a tcp:// channel; its "hello" verifies."""
    import json
    import subprocess
    import sys

    job_dir = tmp_path / "job"
    job_dir.mkdir()
    job = {
        "job_id": JOB,
        "command": [sys.executable, "-c", "import time; time.sleep(30)"],
        "cwd": str(job_dir),
    }
    (job_dir / "job.json").write_text(json.dumps(job))

    async def body(channel: SessionChannel, recorder: Recorder, url: str) -> None:
        helper = subprocess.Popen(
            [sys.executable, "-m", "uws.session_helper", "--job-dir", str(job_dir), "--endpoint", url]
            + ["--server-key", channel.public_key.decode()],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,  # this checkout's uws
        )
        try:
            assert helper.stdin is not None
            helper.stdin.write(SECRET.encode() + b"\n")
            helper.stdin.close()
            await eventually(lambda: any(m["type"] == "hello" for m in recorder.messages))
            assert await channel.send(JOB, SECRET, {"type": "stop", "grace_seconds": 1})
            await eventually(lambda: any(m["type"] == "exited" for m in recorder.messages))
        finally:
            helper.kill()
            helper.wait()

    with_channel(tmp_path, body, url=f"tcp://127.0.0.1:{free_port()}")


@pytest.mark.skipif(not SUDO_AVAILABLE, reason="needs root and sudo (sessions as other OS accounts)")
def test_account_outside_the_session_group_gets_a_clear_refusal(cserver: Server) -> None:
    """An existing OS account the server did not create, not in session_group, could not reach
    the channel: its start is refused with a message instead of a session pending forever."""
    import subprocess

    name = unique_name("ng")
    subprocess.run(["useradd", "--create-home", "--", name], check=True, capture_output=True)
    c = login(cserver, cserver.client_token, username=name)
    w = create(c)
    r = c.put(f"/workspaces/{w['id']}/start/", {"job_type": "local_test_job", "job_details": {}})
    assert r.status_code == 500 and r.json()["success"] is False
    assert "not a member of the server's session group" in r.json()["message"]


def test_helper_follows_the_leader_across_its_endpoints(tmp_path: Any) -> None:
    """A real helper given two endpoints, only one bound, reaches that one; when its server
    goes and another binds the other endpoint, the helper says hello to it within a second or
    two (not at its next heartbeat), under the new term, and obeys its stop."""
    import json
    import subprocess
    import sys

    job_dir = tmp_path / "job"
    job_dir.mkdir()
    job = {
        "job_id": JOB,
        "command": [sys.executable, "-c", "import time; time.sleep(60)"],
        "cwd": str(job_dir),
        "heartbeat_seconds": 30,  # no heartbeat gets there first
    }
    (job_dir / "job.json").write_text(json.dumps(job))
    short = os.path.join("/tmp", f"uwsf-{os.getpid()}-{time.monotonic_ns() % 10**8}")
    second = f"ipc://{short}-b/ch.sock"

    async def body(channel: SessionChannel, recorder: Recorder, url: str) -> None:
        helper = subprocess.Popen(
            [sys.executable, "-m", "uws.session_helper", "--job-dir", str(job_dir)]
            + ["--endpoint", url, "--endpoint", second],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,  # this checkout's uws
        )
        other = job_recorder()
        successor = SessionChannel(second, other.secret_for, other.handler, key_file=str(tmp_path / "k"))
        try:
            assert helper.stdin is not None
            helper.stdin.write(SECRET.encode() + b"\n")
            helper.stdin.close()
            hello = await eventually(lambda: [m for m in recorder.messages if m["type"] == "hello"])
            assert hello[0]["epoch"] == channel.epoch
            channel.close()
            await asyncio.sleep(1.5)  # the helper retries the first endpoint meanwhile
            successor.bind()
            t0 = time.monotonic()
            await eventually(lambda: any(m["type"] == "hello" for m in other.messages), timeout=5)
            assert time.monotonic() - t0 < 2.5
            assert other.messages[0]["epoch"] == successor.epoch
            assert other.messages[0]["state"]["app_pid"] == hello[0]["state"]["app_pid"]
            assert await successor.send(JOB, SECRET, {"type": "stop", "grace_seconds": 1})
            await eventually(lambda: any(m["type"] == "exited" for m in other.messages))
        finally:
            helper.kill()
            helper.wait()
            successor.close()
            for path in (short + "-b",):
                for name in os.listdir(path) if os.path.isdir(path) else []:
                    os.unlink(os.path.join(path, name))
                if os.path.isdir(path):
                    os.rmdir(path)

    with_channel(tmp_path, body)
