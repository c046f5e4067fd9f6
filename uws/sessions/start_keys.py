"""Idempotency keys of session starts, kept in the database (orm.StartKey) with the job each
started: a retry that reaches another server process (after a failover, say) finds that job
instead of starting a second session. Only a SHA-256 of user, workspace and key is stored.
The functions taking a Session run on the database thread."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from sqlalchemy import delete
from sqlalchemy.orm import Session

from .. import orm
from ..models import job_model

# A key names its start for this long after it began (as the original's retry window).
KEY_SECONDS = 600


class KeyTaken(Exception):
    """Another process recorded a start with the same key first."""


def key_hash(user_id: int, ws_id: int, key: str) -> str:
    return hashlib.sha256(f"{user_id}\0{ws_id}\0{key}".encode("utf-8", "surrogatepass")).hexdigest()


def record(session: Session, user_id: int, ws_id: int, key: str, job_id: int) -> None:
    """In the transaction that creates the job: the key now names it. Two processes starting
    with the same key at once: the second one's flush fails on the primary key (IntegrityError)."""
    now = time.time()
    session.execute(
        delete(orm.StartKey).where(orm.StartKey.created < now - KEY_SECONDS),
        execution_options={"synchronize_session": False},
    )
    session.add(
        orm.StartKey(key_hash=key_hash(user_id, ws_id, key), user_id=user_id, job_id=job_id, created=now)
    )
    session.flush()


def lookup(session: Session, user_id: int, ws_id: int, key: str) -> dict[str, Any] | None:
    """The job model of the start this key names, if one began within KEY_SECONDS."""
    row = session.get(orm.StartKey, key_hash(user_id, ws_id, key))
    if row is None or row.user_id != user_id or row.created < time.time() - KEY_SECONDS:
        return None
    job = session.get(orm.Job, row.job_id)
    return None if job is None else job_model(job)


def forget(session: Session, user_id: int, ws_id: int, key: str, job_id: int) -> None:
    """A start that failed: its key may be retried for real (as the first attempt's process
    would let it)."""
    session.execute(
        delete(orm.StartKey).where(
            orm.StartKey.key_hash == key_hash(user_id, ws_id, key), orm.StartKey.job_id == job_id
        ),
        execution_options={"synchronize_session": False},
    )
