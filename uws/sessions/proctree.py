"""The session helper's view of its app's process tree: finding it, and signalling all of it.

Part of the helper (uws.sessions.helper), so it too imports neither tornado nor the server's
modules. `app` is the helper's Popen of the app, whose pid is also the app's process group id.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import psutil

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Orphans of the app then become our children, so the whole tree stays visible (Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def tree(app: subprocess.Popen[Any] | None) -> list[psutil.Process]:
    """The app and every process below it (with the subreaper, orphans too); not zombies."""
    try:
        me = psutil.Process()
        found = me.children(recursive=True)
    except psutil.Error:
        return []
    alive = []
    for p in found:
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                if p.ppid() == me.pid and (app is None or p.pid != app.pid):
                    os.waitpid(p.pid, os.WNOHANG)  # an orphan that was handed to us
                continue
            alive.append(p)
        except (psutil.Error, ChildProcessError):
            continue
    return alive


def group_is_ours(app: subprocess.Popen[Any] | None, procs: list[psutil.Process]) -> bool:
    """The app's process group id cannot belong to anyone else: the app is not reaped yet,
    or a process of the tree is still in the group (a pid in use as a pgid is not reused)."""
    if app is None:
        return False
    if app.returncode is None:
        return True
    for p in procs:
        try:
            if os.getpgid(p.pid) == app.pid:
                return True
        except OSError:
            continue
    return False


def signal_tree(app: subprocess.Popen[Any] | None, sig: int, procs: list[psutil.Process]) -> None:
    if app is not None and group_is_ours(app, procs):
        try:
            os.killpg(app.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.Error:
            pass
