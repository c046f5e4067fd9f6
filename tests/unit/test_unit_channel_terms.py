"""The session channel's terms (uws/sessions/channel.py, "Terms" in protocol.py), in process over
real ZeroMQ sockets: a SessionChannel binds, closes and binds again (a server that leads, stands
by and leads again), or another one binds after it (a handover); what a helper signed under an
earlier term is refused, and the helper is welcomed to the new one instead."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import zmq
import zmq.asyncio

from uws.sessions import protocol
from uws.sessions.channel import SessionChannel

from helpers.channel import Recorder, eventually

SECRET = "t" * 64
JOB = 9


def job_recorder() -> Recorder:
    return Recorder(JOB, SECRET)


class FakeHelper:
    """A DEALER speaking the helper's side of terms (what uws.sessions.helper_link does)."""

    def __init__(self, url: str) -> None:
        self.sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTING_ID, protocol.identity(JOB))
        self.sock.connect(url)
        self.seq = 0
        self.epoch = ""
        self.nonce = protocol.new_epoch()

    def frames(self, mtype: str, **fields: Any) -> list[bytes]:
        self.seq += 1
        message = {"type": mtype, "job_id": JOB, "seq": self.seq, "epoch": self.epoch, "nonce": self.nonce}
        return protocol.encode(SECRET, {**message, **fields})

    async def send(self, mtype: str, **fields: Any) -> list[bytes]:
        frames = self.frames(mtype, **fields)
        await self.sock.send_multipart(frames)
        return frames

    async def receive(self, mtype: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
        """The next message (of type mtype: a repeated hello may have more welcomes coming)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0 and await self.sock.poll(int(left * 1000)), "nothing from the server"
            message = protocol.decode(SECRET, await self.sock.recv_multipart())
            assert message is not None
            if mtype is None or message["type"] == mtype:
                return message

    async def join(self) -> str:
        """hello under whatever term it knows, then under the one it is welcomed to. Repeated
        until answered: a hello sent before the old connection is noticed as gone is lost with
        it (the real helper says hello on every new connection instead)."""
        self.nonce = protocol.new_epoch()
        for _ in range(50):
            await self.send("hello", state={})
            if await self.sock.poll(100):
                break
        welcome = await self.receive("welcome")
        while welcome["nonce"] != self.nonce:  # (answers to what was sent before)
            welcome = await self.receive("welcome")
        if welcome["epoch"] != self.epoch:
            self.epoch = welcome["epoch"]
            await self.send("hello", state={})
            await self.receive("welcome")  # heard, under its term
        return self.epoch

    def close(self) -> None:
        self.sock.close(0)


def run(body: Callable[[str, str], Awaitable[None]]) -> None:
    """body(url, key_file) in an event loop, with a socket directory of its own."""
    # ipc paths are limited to ~100 bytes: a short directory, not pytest's tmp_path.
    short = tempfile.mkdtemp(prefix="uwsct-", dir="/tmp")
    try:
        asyncio.run(body(f"ipc://{short}/ch/sessions.sock", os.path.join(short, "channel.key")))
    finally:
        shutil.rmtree(short, ignore_errors=True)


def test_a_message_captured_before_a_handover_is_refused_by_the_new_leader() -> None:
    """Server A takes two messages; A goes, B binds the same endpoint with an empty memory.
    The second message, replayed to B, is not handled (B's in-memory guard alone would take it:
    it has never seen that sender); its sender is asked for a fresh hello instead, and the
    helper's own messages under B's term are handled."""

    async def body(url: str, key_file: str) -> None:
        a_seen, b_seen = job_recorder(), job_recorder()
        a = SessionChannel(url, a_seen.secret_for, a_seen.handler, key_file=key_file)
        a.bind()
        helper = FakeHelper(url)
        epoch_a = await helper.join()
        assert epoch_a == a.epoch
        await helper.send("progress", message="one")
        captured = await helper.send("progress", message="two")
        await eventually(lambda: [m.get("message") for m in a_seen.messages] == [None, "one", "two"])
        a.close()

        b = SessionChannel(url, b_seen.secret_for, b_seen.handler, key_file=key_file)
        b.bind()
        try:
            assert b.epoch not in ("", epoch_a)
            attacker = zmq.asyncio.Context.instance().socket(zmq.DEALER)
            attacker.setsockopt(zmq.LINGER, 0)
            attacker.setsockopt(zmq.ROUTING_ID, protocol.identity(JOB))
            attacker.connect(url)
            await attacker.send_multipart(captured)
            await eventually(lambda: b.challenged == 1)
            # The replayer is only told B's term, for a nonce it cannot sign anything with.
            assert await attacker.poll(2000)
            challenge = protocol.decode(SECRET, await attacker.recv_multipart())
            assert challenge is not None and challenge["type"] == "welcome"
            assert challenge["epoch"] == b.epoch and challenge["nonce"] == protocol.decode(
                SECRET, captured
            ).get("nonce")
            assert b_seen.messages == [] and JOB not in b.peers
            attacker.close(0)

            assert await helper.join() == b.epoch  # the helper, reconnected, is welcomed to B
            await helper.send("progress", message="three")
            await eventually(lambda: [m.get("message") for m in b_seen.messages] == [None, "three"])
            assert await b.send(JOB, SECRET, {"type": "report"})
            report = await helper.receive("report")
            assert report["type"] == "report" and report["epoch"] == b.epoch
        finally:
            helper.close()
            b.close()

    run(body)


def test_a_channel_binds_again_after_close_with_a_new_term() -> None:
    """Lead, stand by, lead again on one SessionChannel: the socket is let go of and taken
    again, and the second term forgets the first's peers and refuses its messages."""

    async def body(url: str, key_file: str) -> None:
        seen = job_recorder()
        channel = SessionChannel(url, seen.secret_for, seen.handler, key_file=key_file)
        channel.bind()
        helper = FakeHelper(url)
        try:
            first = await helper.join()
            captured = await helper.send("progress", message="first term")
            await eventually(lambda: len(seen.messages) == 2)
            channel.close()
            assert not channel.bound and channel.peers == {} and channel.epoch == ""
            channel.bind()
            assert channel.bound and channel.epoch not in ("", first)
            for _ in range(50):  # replayed on the same socket, once it has reconnected
                await helper.sock.send_multipart(captured)
                if await helper.sock.poll(100):
                    break
            assert channel.challenged >= 1
            assert len(seen.messages) == 2
            assert await helper.join() == channel.epoch
            await eventually(lambda: len(seen.messages) == 3)
        finally:
            helper.close()
            channel.close()

    run(body)


def test_a_tcp_channel_binds_its_port_again_at_once() -> None:
    """A tcp:// port let go of by close() is freed by ZeroMQ's I/O thread a moment later:
    bind_when_free waits for it instead of failing the new term."""

    async def body(_url: str, key_file: str) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        seen = job_recorder()
        channel = SessionChannel(f"tcp://127.0.0.1:{port}", seen.secret_for, seen.handler, key_file=key_file)
        try:
            for _ in range(3):
                await channel.bind_when_free()
                assert channel.bound
                channel.close()
        finally:
            channel.close()

    run(body)


def test_helpers_of_earlier_versions_are_taken_as_before() -> None:
    """A message without "epoch" (a helper started by a server before terms) is handled under
    the in-memory guard alone, so such sessions survive the upgrade."""

    async def body(url: str, key_file: str) -> None:
        seen = job_recorder()
        channel = SessionChannel(url, seen.secret_for, seen.handler, key_file=key_file)
        channel.bind()
        sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, protocol.identity(JOB))
        sock.connect(url)
        try:
            frames = protocol.encode(SECRET, {"type": "hello", "job_id": JOB, "seq": 1, "state": {}})
            await sock.send_multipart(frames)
            await eventually(lambda: seen.messages)
            await sock.send_multipart(frames)  # a replay to the same term: the guard's
            await asyncio.sleep(0.2)
            assert len(seen.messages) == 1 and channel.challenged == 0
            assert not await sock.poll(100), "an old helper was sent a welcome it cannot read"
        finally:
            sock.close(0)
            channel.close()

    run(body)
