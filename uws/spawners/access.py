"""Whether a session's OS account can reach a path, from the path's permission bits: the
interpreter that runs the session helper, the directories on its PYTHONPATH, the session
channel's socket and the workspaces root.

The kernel has the last word. Where the bits alone cannot tell (a POSIX ACL, a path the server
cannot stat), the answer is "reachable", so a deployment is never refused on a guess; the
launch itself then tells (uws.spawners.helper_log reads the helper's own error output).
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque

from ..auth.accounts import Account
from ..storage.safepath import permits

READ, WRITE, EXECUTE = 4, 2, 1
# As the kernel's own limit on symlinks followed in one path (ELOOP).
MAX_SYMLINKS = 40

PYTHON_FIX = (
    "Set c.Spawner.python to a Python that every session account can run (for example "
    "/usr/bin/python3, with python3-zmq and python3-psutil installed) and "
    "c.Spawner.helper_pythonpath to a directory that they can all read holding the uws package."
)


def _has_acl(path: str) -> bool:
    try:
        os.getxattr(path, "system.posix_acl_access")
    except OSError as e:
        # No ACL (ENODATA), or a file system without them: the bits are the whole story.
        return e.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP)
    return True


def allows(path: str, account: Account, wanted: int) -> bool:
    """Whether `account` has every `wanted` bit (READ | WRITE | EXECUTE) on `path` (a path
    without symlinks), as the kernel decides from the owner, group and other bits."""
    if account.uid == 0:
        return True
    try:
        st = os.stat(path)
    except OSError:
        return True  # the server cannot tell
    if _has_acl(path):
        return True
    return permits(st, account, wanted)


def barrier(path: str, account: Account, final: int = 0, opened: frozenset[str] = frozenset()) -> str | None:
    """The first directory on the way to `path` (symlinks followed, as the kernel follows them)
    that `account` may not enter, or `path` itself when it lacks the `final` bits there; None
    when nothing stops it, or when the server cannot tell (a part missing or unreadable).
    Directories in `opened` count as open (the server opens them before sessions start)."""
    if account.uid == 0 or not os.path.isabs(path):
        return None
    parts = deque(part for part in path.split("/") if part)
    current, followed = "/", 0
    while parts:
        if current not in opened and not allows(current, account, EXECUTE):
            return current
        name = parts.popleft()
        if name == ".":
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, name)
        try:
            st = os.lstat(candidate)
            target = os.readlink(candidate) if stat.S_ISLNK(st.st_mode) else None
        except OSError:
            return None
        if target is None:
            current = candidate
            continue
        followed += 1
        if followed > MAX_SYMLINKS:
            return None
        if target.startswith("/"):
            current = "/"
        parts.extendleft(reversed([part for part in target.split("/") if part]))
    if final and not allows(current, account, final):
        return current
    return None


def helper_access_problem(python: str, pythonpath: str, account: Account, who: str = "") -> str | None:
    """Why `account` (`who`, in words) could not run the session helper with this interpreter
    and PYTHONPATH, saying how to fix it; None when the permissions allow it."""
    who = who or f"The OS account {account.username}"
    closed = barrier(python, account, EXECUTE)
    if closed is not None:
        return (
            f"{who} cannot run the session helper's Python {python} ({closed} is closed to it). {PYTHON_FIX}"
        )
    for entry in filter(None, pythonpath.split(":")):
        closed = barrier(entry, account, READ | EXECUTE)
        if closed is not None:
            return (
                f"{who} cannot read {entry} on the session helper's PYTHONPATH ({closed} is closed"
                f" to it). {PYTHON_FIX}"
            )
    return None
