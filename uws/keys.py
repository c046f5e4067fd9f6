"""The server's private files, and the session link tokens derived from one of them.

Everything here guards sessions: a file other accounts can read gives them every session. So
private files are created 0600 whatever the umask, and an existing one with a looser mode is
tightened when the server reads it.

A session's link token (the `?token=` of its link, and the token its app is started with) is
derived from a key kept in such a file, never stored: the database holds no token, and the
passthrough compares a presented token with the one it derives.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat

log = logging.getLogger("uws.keys")

PRIVATE_FILE = 0o600
KEY_MIN_BYTES = 32


def tighten(path: str, mode: int = PRIVATE_FILE) -> None:
    """Take away the permission bits beyond `mode` from an existing file or directory (never
    through a symlink: a link planted in its place is left alone, not followed)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        return
    if stat.S_IMODE(st.st_mode) & ~mode:
        os.chmod(path, stat.S_IMODE(st.st_mode) & mode)
        log.info("Tightened the permissions of %s to %o", path, stat.S_IMODE(st.st_mode) & mode)


def create_private(path: str) -> None:
    """Make sure `path` exists, as a 0600 file if it is new (empty) or a regular file, whatever
    the umask."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE))
    except FileExistsError:
        pass
    tighten(path)


def read_key(path: str) -> bytes:
    """The key in a private file, made (random, hex) on first use; a key shorter than
    KEY_MIN_BYTES is replaced."""
    tighten(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            data = f.read().strip()
        if len(data) >= KEY_MIN_BYTES:
            return data
        log.warning("%s holds a key shorter than %d bytes; making a new one", path, KEY_MIN_BYTES)
    except FileNotFoundError:
        pass
    data = secrets.token_hex(KEY_MIN_BYTES).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tighten(path)
    return data


def secure_data_dir(data_dir: str, passed_through: list[str], sessions_as_others: bool) -> None:
    """No other account may list the data directory (its files are 0600 in any case). When
    sessions run as other accounts and must pass through it, to one of `passed_through` (the
    session socket, the workspaces root) inside it, it is 0711 (enter, not list); otherwise 0700."""
    data = os.path.realpath(data_dir)
    passed = any(os.path.realpath(p).startswith(data + os.sep) for p in passed_through)
    mode = 0o711 if passed and sessions_as_others else 0o700
    if os.stat(data).st_mode & 0o777 != mode:
        os.chmod(data, mode)


class SessionTokens:
    """Link tokens of sessions: HMAC-SHA256 of the job id under a key in <data_dir>/session_key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def load(cls, data_dir: str) -> SessionTokens:
        return cls(read_key(os.path.join(data_dir, "session_key")))

    def token(self, job_id: int) -> str:
        return hmac.new(self._key, b"session-token:%d" % job_id, hashlib.sha256).hexdigest()[:40]

    def matches(self, job_id: int, candidate: str | None) -> bool:
        """Whether a presented token is the job's (constant-time; any string is safe to pass)."""
        if not candidate:
            return False
        return hmac.compare_digest(self.token(job_id).encode(), candidate.encode("utf-8", "replace"))
