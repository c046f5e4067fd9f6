"""The servers sharing one database: the secrets they must share, checked at start-up.

Every server of an installation signs and checks the same things: browser and passthrough
cookies (cookie_secret), session link tokens (session_key), and, on a tcp:// session channel,
helpers encrypt to the server's CURVE key (session_channel.key). A server started with other
files would sign what the others reject: users logged out at every failover, session links
that stop working, helpers that cannot reach it. So the first server records a fingerprint of
each (an HMAC under the secret, which tells nothing about it) in the `cluster` table, and a
server whose fingerprints differ refuses to start, naming the file to copy.

The row also holds the leadership lock's key (uws.leadership): random, made with the row.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from typing import Any

from sqlalchemy.exc import IntegrityError

from . import orm
from .db import Database
from .keys import read_key

CLUSTER_ROW = 1
FINGERPRINT_INPUT = b"uws cluster fingerprint"
# The shared files, as named in the data directory.
COOKIE_SECRET = "cookie_secret"
SESSION_KEY = "session_key"
CHANNEL_KEY = "session_channel.key"


class ClusterMismatch(RuntimeError):
    """This server's secrets are not the installation's: it must not start."""


def fingerprint(secret: bytes) -> str:
    return hmac.new(secret, FINGERPRINT_INPUT, hashlib.sha256).hexdigest()


def local_fingerprints(data_dir: str) -> dict[str, str]:
    """This server's fingerprint of each shared secret it has. The session channel's key file
    exists only with a tcp:// channel; only its public key is used, which is enough to tell
    two key pairs apart."""
    found = {
        name: fingerprint(read_key(os.path.join(data_dir, name))) for name in (COOKIE_SECRET, SESSION_KEY)
    }
    try:
        with open(os.path.join(data_dir, CHANNEL_KEY), "rb") as f:
            public = f.read().split(b"\n", 1)[0].strip()
    except FileNotFoundError:
        public = b""
    if public:
        found[CHANNEL_KEY] = fingerprint(public)
    return found


def mismatch_message(names: list[str], data_dir: str, since: Any) -> str:
    listed = ", ".join(names)
    copies = " and ".join(os.path.join(data_dir, name) for name in names)
    return (
        f"This server's {listed} differ{'s' if len(names) == 1 else ''} from that of the other "
        f"servers sharing this database (recorded by the first of them, {since:%Y-%m-%d %H:%M} UTC). "
        "Every server of one installation needs the same secrets: copy "
        f"{listed} from the data directory of a server already running to {copies}, and start "
        "again. (To replace the secrets of the whole installation on purpose: stop every "
        "server, start one with c.Leadership.replace_secrets = True, then give the others "
        "its files.)"
    )


def join_cluster(db: Database, data_dir: str, replace: bool = False) -> int:
    """Check this server's secrets against the installation's, recording them when it is the
    first (or they are new, e.g. a session channel key once the channel moves to tcp://, or
    `replace`); return the leadership lock's key. Raises ClusterMismatch."""
    mine = local_fingerprints(data_dir)

    def _join(session: Any) -> tuple[int, list[str], Any]:
        row = session.get(orm.Cluster, CLUSTER_ROW)
        if row is None:
            # A positive 63-bit key: pg_try_advisory_lock takes a bigint.
            row = orm.Cluster(id=CLUSTER_ROW, lock_key=secrets.randbits(62) + 1, fingerprints=mine)
            session.add(row)
            session.flush()
            return row.lock_key, [], row.datetime_created
        recorded = dict(row.fingerprints or {})
        differ = [name for name, value in mine.items() if recorded.get(name, value) != value]
        if differ and not replace:
            return row.lock_key, differ, row.datetime_created
        if replace or any(name not in recorded for name in mine):
            row.fingerprints = {**recorded, **mine}
        return row.lock_key, [], row.datetime_created

    try:
        lock_key, differ, since = db.call(_join)
    except IntegrityError:
        # Another server made the row at the same moment: check against its.
        lock_key, differ, since = db.call(_join)
    if differ:
        raise ClusterMismatch(mismatch_message(differ, data_dir, since))
    return lock_key
