"""uws/sessions/protocol.py in process: two frames [payload, hex HMAC-SHA256 of the payload under
the job's secret], identities b"job-<id>.<32 random hex digits>" (b"job-<id>" of older helpers
still read), frames capped at MAX_MESSAGE_BYTES, and the replay rules (seq increasing per sender, a
new sender only if it started no earlier, nothing older than MAX_AGE_SECONDS)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from typing import Any

import pytest

from uws.sessions import protocol
from uws.sessions.protocol import (
    MAX_AGE_SECONDS,
    MAX_MESSAGE_BYTES,
    ReplayGuard,
    decode,
    encode,
    identity,
    job_id_from_identity,
)

SECRET = "s3cret-of-job-12"


# ---- frames -------------------------------------------------------------------------------------


def test_encode_is_json_and_a_hex_hmac_sha256() -> None:
    payload, signature = encode(
        SECRET, {"type": "hello", "job_id": 12, "seq": 1, "state": {"phase": "starting"}}
    )
    message = json.loads(payload)
    assert message["type"] == "hello" and message["job_id"] == 12 and message["seq"] == 1
    assert message["state"] == {"phase": "starting"}
    expected = hmac.new(SECRET.encode(), payload, hashlib.sha256).hexdigest()
    assert signature == expected.encode() and len(signature) == 64
    assert b" " not in payload  # compact


def test_encode_fills_in_time_sender_and_started() -> None:
    before = time.time()
    payload, _ = encode(SECRET, {"type": "progress", "job_id": 12, "seq": 2, "message": "x"})
    message = json.loads(payload)
    assert before <= message["time"] <= time.time()
    assert message["sender"] == protocol.SENDER and len(protocol.SENDER) == 16
    assert message["started"] == protocol.STARTED <= message["time"]
    # given values are kept
    payload, _ = encode(
        SECRET, {"type": "ack", "job_id": 12, "seq": 3, "time": 5.0, "sender": "s", "started": 1.0}
    )
    assert {k: json.loads(payload)[k] for k in ("time", "sender", "started")} == {
        "time": 5.0,
        "sender": "s",
        "started": 1.0,
    }


def test_round_trip() -> None:
    original = {
        "type": "ready",
        "job_id": 12,
        "seq": 4,
        "state": {"ready": {"host": "127.0.0.1", "port": 8888, "path": "/lab/", "token": "t"}},
        "note": "unicode ✓",
    }
    decoded = decode(SECRET, encode(SECRET, dict(original)))
    assert decoded is not None
    assert {k: decoded[k] for k in original} == original


@pytest.mark.parametrize(
    "tamper",
    [
        lambda p, s: [p.replace(b'"stop"', b'"report"'), s],  # payload changed
        lambda p, s: [p, s[:-1] + (b"0" if s[-1:] != b"0" else b"1")],  # signature changed
        lambda p, s: [p, s.upper()],  # not the hex form the protocol names
        lambda p, s: [p, b""],
        lambda p, s: [p],
        lambda p, s: [p, s, b"extra"],
        lambda p, s: [p + b" ", s],
    ],
)
def test_tampered_frames_are_refused(tamper: Any) -> None:
    payload, signature = encode(SECRET, {"type": "stop", "job_id": 12, "seq": 5, "grace_seconds": 1})
    assert decode(SECRET, [payload, signature]) is not None
    assert decode(SECRET, tamper(payload, signature)) is None


def test_another_jobs_secret_is_refused() -> None:
    frames = encode("secret-of-job-13", {"type": "stop", "job_id": 12, "seq": 1})
    assert decode(SECRET, frames) is None


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"[1, 2]", b'"hello"', b'{"job_id": 12}', b'{"type": 5}', b"\xff\xfe", b""],
)
def test_signed_but_malformed_payloads_are_refused(payload: bytes) -> None:
    signature = hmac.new(SECRET.encode(), payload, hashlib.sha256).hexdigest().encode()
    assert decode(SECRET, [payload, signature]) is None


@pytest.mark.parametrize("job_id", [0, 7, 12, 123456789])
def test_identity_round_trip(job_id: int) -> None:
    ident = identity(job_id)
    prefix = f"job-{job_id}.".encode()
    assert ident.startswith(prefix)
    assert re.fullmatch(rb"[0-9a-f]{32}", ident[len(prefix) :])  # 128 random bits, lower-case hex
    assert job_id_from_identity(ident) == job_id


def test_identities_are_new_every_time() -> None:
    """A peer cannot guess (and so cannot take over) the identity of a job's helper."""
    idents = {identity(12) for _ in range(50)}
    assert len(idents) == 50
    assert {job_id_from_identity(i) for i in idents} == {12}


@pytest.mark.parametrize("job_id", [0, 7, 12, 123456789])
def test_old_identities_are_still_read(job_id: int) -> None:
    """Helpers started before the random part was added still name their job."""
    assert job_id_from_identity(f"job-{job_id}".encode()) == job_id


HEX = b"0123456789abcdef" * 2


@pytest.mark.parametrize(
    "ident",
    [
        b"job-",
        b"job-1a",
        b"job--1",
        b"job-+1",
        b"Job-1",
        b"x-1",
        b"job-1 ",
        b"job-\xff",
        b"",
        b"job-1.",  # a dot without the random part
        b"job-1." + HEX[:-1],  # one hex digit short
        b"job-1." + HEX + b"0",  # one too many
        b"job-1." + HEX.upper(),  # upper case is not how identity() writes it
        b"job-1." + HEX[:-1] + b"g",
        b"job-1." + HEX + b"\n",
        b"job-1:" + HEX,
        b"job-." + HEX,
        b"job-1." + HEX + b"." + HEX,
        b"job-1234567890123456789",  # more digits than any job id
        b"job-1234567890123456789." + HEX,
    ],
)
def test_other_identities(ident: bytes) -> None:
    assert job_id_from_identity(ident) is None


@pytest.mark.parametrize("junk", [b"\x00", b"\xff"])
def test_the_largest_real_message_fits_in_a_frame(tmp_path: Any, junk: bytes) -> None:
    """An "exited" message with the helper's log tail (its last LOG_TAIL_BYTES bytes, each at
    worst a 6-byte JSON escape such as \\u0000 or \\ufffd) stays below the frame cap."""
    from uws.sessions.helper_app import LOG_TAIL_BYTES, read_tail

    log = tmp_path / "app.log"
    log.write_bytes(junk * (3 * LOG_TAIL_BYTES))
    tail = read_tail(str(log))
    assert len(json.dumps(tail)) == 6 * LOG_TAIL_BYTES + 2  # every byte escaped, 6 bytes each
    state = {
        "phase": "exited",
        "helper_pid": 2**22,
        "app_pid": 2**22,
        "started_at": time.time(),
        "ready": {"port": 65535, "path": "/lab/tree/" + "x" * 200},
        "exit": {
            "exit_code": -9,
            "reason": "launch_failed",
            "log_tail": tail,
            "ended_at": time.time(),
        },
        "time_limit_seconds": 10**6,
    }
    frames = encode(SECRET, {"type": "exited", "job_id": 2**62, "seq": 10**9, "state": state})
    assert all(len(frame) < MAX_MESSAGE_BYTES for frame in frames)
    assert decode(SECRET, frames) is not None


# ---- replay rules -------------------------------------------------------------------------------


def msg(seq: Any, sender: Any = "a", started: Any = 100.0, sent: Any = None) -> dict[str, Any]:
    return {
        "type": "heartbeat",
        "seq": seq,
        "sender": sender,
        "started": started,
        "time": time.time() if sent is None else sent,
    }


def test_seq_must_increase_per_sender() -> None:
    guard = ReplayGuard()
    assert guard.accept("job-1", msg(1))
    assert guard.accept("job-1", msg(2))
    assert not guard.accept("job-1", msg(2))  # the same message again
    assert not guard.accept("job-1", msg(1))  # an older one
    assert guard.accept("job-1", msg(10))  # gaps are fine (lost messages)
    assert not guard.accept("job-1", msg(9))


def test_peers_are_independent() -> None:
    guard = ReplayGuard()
    assert guard.accept("job-1", msg(5))
    assert guard.accept("job-2", msg(1))  # another peer's count
    assert not guard.accept("job-1", msg(5))


def test_a_restarted_sender_is_taken_and_the_old_one_refused() -> None:
    guard = ReplayGuard()
    assert guard.accept("job-1", msg(50, sender="old", started=100.0))
    # a restarted process counts from 1 again
    assert guard.accept("job-1", msg(1, sender="new", started=200.0))
    assert guard.accept("job-1", msg(2, sender="new", started=200.0))
    # the old process's messages, even with a higher seq, are refused now
    assert not guard.accept("job-1", msg(51, sender="old", started=100.0))
    # a sender started at the same moment is not older
    assert guard.accept("job-1", msg(1, sender="twin", started=200.0))


def test_old_and_future_messages_are_refused() -> None:
    guard = ReplayGuard()
    now = time.time()
    assert not guard.accept("job-1", msg(1, sent=now - MAX_AGE_SECONDS - 5))
    assert not guard.accept("job-1", msg(1, sent=now + MAX_AGE_SECONDS + 5))
    assert guard.accept("job-1", msg(1, sent=now - MAX_AGE_SECONDS + 5))  # within the clock skew
    assert guard.accept("job-1", msg(2, sent=now + MAX_AGE_SECONDS - 5))


def test_a_refused_message_changes_nothing() -> None:
    guard = ReplayGuard()
    assert guard.accept("job-1", msg(1))
    assert not guard.accept("job-1", msg(100, sent=time.time() - 10 * MAX_AGE_SECONDS))
    assert guard.accept("job-1", msg(2))  # the stale seq 100 did not move the count
    assert not guard.accept("job-1", msg(5, sender="older", started=50.0))
    assert guard.accept("job-1", msg(3))  # nor did the older sender


@pytest.mark.parametrize(
    "message",
    [
        {"type": "x"},
        msg("1"),
        msg(1.0),
        msg(None),
        msg(1, sender=None),
        msg(1, sender=7),
        msg(1, started="100"),
        msg(1, sent="now"),
    ],
)
def test_incomplete_messages_are_refused(message: dict[str, Any]) -> None:
    guard = ReplayGuard()
    assert not guard.accept("job-1", message)
    assert "job-1" not in guard.last


def test_forget_starts_the_peer_afresh() -> None:
    guard = ReplayGuard()
    assert guard.accept("job-1", msg(9, sender="new", started=200.0))
    guard.forget("job-1")
    guard.forget("job-unknown")  # no error
    assert guard.accept("job-1", msg(1, sender="old", started=100.0))


def test_encoded_messages_pass_the_guard_in_order() -> None:
    """What encode() writes carries everything the guard needs."""
    guard = ReplayGuard()
    frames = [encode(SECRET, {"type": "heartbeat", "job_id": 12, "seq": n}) for n in (1, 2, 3)]
    decoded = [decode(SECRET, f) for f in frames]
    # The channel keys the guard by the job an identity names, not the identity itself: a
    # replay from a fresh identity of the same job is refused as well.
    peer = job_id_from_identity(identity(12))
    assert all(guard.accept(peer, m) for m in decoded)
    assert not any(guard.accept(job_id_from_identity(identity(12)), m) for m in decoded)
