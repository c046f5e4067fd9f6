"""The wire protocol between the server and each per-session helper (`uws-session-helper`).

Transport: ZeroMQ. The server binds a ROUTER socket (UWSApp.session_channel_url: an ipc:// path
by default, tcp:// for helpers on other hosts) while it leads (high availability: only the
leading server binds). Each helper connects a DEALER socket whose routing identity is
b"job-<job id>.<32 random hex digits>", new for every helper process, to every endpoint it is
given (UWSApp.session_channel_peers, else session_channel_url alone), with ZMQ_IMMEDIATE: a
message goes only to a server that is there, never into the queue of one that is not. ZeroMQ
reconnects by itself, so a helper whose server went away keeps running, and says "hello" to
whichever server binds next as soon as that connection is made.

The identity only names the job whose secret checks the message: anyone who can connect may
claim any identity. The server sends a job's messages to the identity of the last peer whose
message for that job verified, never to an identity a peer merely claims, and the random part
keeps a peer from taking over (ROUTER_HANDOVER) a helper's identity it cannot see. Frames larger
than MAX_MESSAGE_BYTES make the receiving socket drop the connection (ZMQ_MAXMSGSIZE). On
tcp:// the connection is encrypted with CURVE: the helper is given the server's public key
(--server-key) and makes a key pair of its own; client authentication stays with the HMAC.

Every message is two frames: [payload, signature]. payload is UTF-8 JSON; signature is the hex
HMAC-SHA256 of payload under the job's secret. The secret reaches the helper on its standard
input (never on a command line, in the environment of other users, or in a log). A message
whose signature does not verify, or whose job_id differs from the sender's identity, is dropped.
The second line of the helper's standard input is the session token ({token}), derived by the
server; no message carries it.

Payload fields, always: "type", "job_id" (int), "seq" (int, increasing per sender), "time"
(float, UNIX seconds), "sender" (random, one per process) and "started" (when that process
started). A receiver takes each sender's messages only in increasing seq, and a new sender
only if it started no earlier than the one before; messages older than MAX_AGE_SECONDS are
dropped. So a captured message (say, "stop") cannot be replayed to the process that took it.

Terms (replay protection across a restart or a handover to another server): each time a server
binds, it starts a term with a random "epoch". The receivers' memory of seqs is lost with the
process that held it, so freshness is proven instead of remembered:
  - every server message carries "epoch"; every helper message carries "epoch" (the term that
    last welcomed the helper, "" before any) and "nonce" (random, new at each connection);
  - the server handles a helper message only when its epoch is the current term's. Any other
    (a helper that has not heard of this term yet, or a message captured in an earlier one) is
    answered with "welcome" {"epoch", "nonce": the message's nonce} to the identity it came
    from, and dropped;
  - the helper takes a "welcome" only when it echoes its current nonce, and then adopts the
    epoch (a new one: it sends "hello" under it); other server messages count only when they
    carry the epoch it adopted. Every "hello" the server takes is answered with "welcome" too,
    so after each (re)connection the helper knows the server has heard it.
A message captured before a handover carries an old epoch (or an old nonce): the new server, or
the helper, refuses it, whatever the clocks say. Helpers without "epoch" in their messages
(started by a server of an earlier version) are taken as before, with the in-memory guard.

Helper -> server ("type"):
  "hello"      {"state": STATE}            on start, after every (re)connection, and under a new
                                           term once welcomed to it
  "progress"   {"message": str}            human-readable progress
  "ready"      {"state": STATE}            the app answers HTTP; STATE["ready"] is set
  "heartbeat"  {"state": STATE, "metrics": METRICS}   every heartbeat_seconds
  "exited"     {"state": STATE}            the app ended; STATE["exit"] is set. Re-sent until
                                           acknowledged (the helper lingers up to linger_seconds)
  "log"        {"data": str, "skipped": int}   new bytes of the app's output (its log_file), base64,
                                           at most LOG_CHUNK_BYTES before encoding; "skipped":
                                           bytes of output left out just before them (the app
                                           wrote faster than the helper forwards). At most one
                                           every LOG_INTERVAL_SECONDS while the app runs; what is
                                           left is sent before "exited". The owner's claim like
                                           the rest: the server bounds and rate-limits it.
Server -> helper:
  "ack"        {"ack_seq": int}            acknowledges one message (the helper needs it only
                                           for "exited")
  "stop"       {"grace_seconds": float}    end the whole process tree: TERM, grace, KILL
  "report"     {}                          send "hello" again now
  "extend"     {"time_limit_seconds": int} the session's new time limit (from its start);
                                           repeated while heartbeats report another one
  "welcome"    {"epoch": str, "nonce": str} the server's term, for the helper whose nonce it
                                           echoes (see Terms above)

STATE = {"phase": "starting" | "running" | "ready" | "exited",
         "helper_pid": int, "app_pid": int | null, "started_at": float,
         "ready": null | {"host": str, "port": int, "path": str},   (the owner's claim: the
                          server picks the host itself and refuses a claim naming another, and
                          checks the port; the link token is the server's)
         "exit": null | {"exit_code": int | null, "reason": "completed" | "failed" | "stopped" |
                          "time_limit" | "launch_failed", "log_tail": str, "ended_at": float,
                          "message": str (optional: why the launch failed, for the owner)},
         "time_limit_seconds": int | null}
METRICS = {"cpu_seconds": float, "rss_bytes": int, "processes": int}

The job itself is described by <job dir>/job.json (written by the spawner, readable by the
session's OS account):
  {"job_id": int, "command": [str, ...] (placeholders {host}, {port}, {base_url}, {token}),
   "env": {str: str}, "cwd": str (the workspace directory), "log_file": str,
   "readiness": null | {"path": str (URL path probed, with placeholders), "timeout_seconds": float},
   "url_path": str ({port} and {base_url}; reported in STATE["ready"]["path"]),
   "base_url": str, "time_limit_seconds": int | null, "heartbeat_seconds": float,
   "grace_seconds": float, "linger_seconds": float,
   "listen": "slurm_node" (optional: the app listens on the node's address, not 127.0.0.1),
   "node_addresses": {node: address} (optional: the server's node address map)}
When the app exits the helper also writes <job dir>/exit.json (STATE["exit"]) so a server that
was down at that moment still finds evidence of how the session ended.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import time
from typing import Any

PROTOCOL_VERSION = 1
# As munge (which Slurm needs anyway), senders' and receivers' clocks may differ by 5 minutes.
MAX_AGE_SECONDS = 300.0
# Largest frame either end accepts. The biggest real message, "exited" with a 4 KiB log tail
# escaped as JSON (at most 6 bytes a character), stays well below it.
MAX_MESSAGE_BYTES = 64 * 1024
# Output forwarded in one "log" message (21,848 bytes once base64-encoded), and how often. The
# helper never has more than LOG_BACKLOG_BYTES of output waiting: it skips ahead instead.
LOG_CHUNK_BYTES = 16 * 1024
LOG_INTERVAL_SECONDS = 0.25
LOG_BACKLOG_BYTES = 256 * 1024
SENDER = secrets.token_hex(8)
STARTED = time.time()


def new_epoch() -> str:
    """A server term's epoch, or a helper's connection nonce: random, never reused."""
    return secrets.token_hex(16)


_IDENTITY_RE = re.compile(rb"job-([0-9]{1,18})(?:\.[0-9a-f]{32})?")


def identity(job_id: int) -> bytes:
    """A helper's routing identity: the job id and a part nobody else can guess."""
    return f"job-{job_id}.{os.urandom(16).hex()}".encode()


def job_id_from_identity(ident: bytes) -> int | None:
    """The job id an identity claims (b"job-N", as helpers before the random part, or
    b"job-N.<hex>"); None for anything else."""
    match = _IDENTITY_RE.fullmatch(ident)
    return int(match.group(1)) if match else None


def sign(secret: str, payload: bytes) -> bytes:
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest().encode()


def encode(secret: str, message: dict[str, Any]) -> list[bytes]:
    message.setdefault("time", time.time())
    message.setdefault("sender", SENDER)
    message.setdefault("started", STARTED)
    payload = json.dumps(message, separators=(",", ":")).encode()
    return [payload, sign(secret, payload)]


def decode(secret: str, frames: list[bytes]) -> dict[str, Any] | None:
    """The verified message, or None when it is malformed or its signature is wrong."""
    if len(frames) != 2:
        return None
    payload, signature = frames
    if not hmac.compare_digest(sign(secret, payload), signature):
        return None
    try:
        message = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return None
    return message


class ReplayGuard:
    """Remembers, per peer, the last sender and seq accepted, and refuses what could be a
    replay: an old message, a seq not above the last, or a sender older than the last."""

    def __init__(self) -> None:
        self.last: dict[Any, tuple[float, str, int]] = {}

    def accept(self, peer: Any, message: dict[str, Any]) -> bool:
        sender, started, seq, sent = (message.get(k) for k in ("sender", "started", "seq", "time"))
        if not (
            isinstance(sender, str)
            and isinstance(started, int | float)
            and isinstance(seq, int)
            and isinstance(sent, int | float)
        ):
            return False
        if abs(time.time() - sent) > MAX_AGE_SECONDS:
            return False
        previous = self.last.get(peer)
        if previous is not None:
            last_started, last_sender, last_seq = previous
            if sender == last_sender and seq <= last_seq:
                return False
            if sender != last_sender and started < last_started:
                return False
        self.last[peer] = (started, sender, seq)
        return True

    def forget(self, peer: Any) -> None:
        self.last.pop(peer, None)
