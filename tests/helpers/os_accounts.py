"""Removing the OS accounts a test run made, all at once.

A run makes a few hundred accounts (each test user gets one). `userdel` takes about 0.1 s each,
almost all of it waiting, so removing them one by one cost the suite 30 to 60 s at its end. Here
the account files are rewritten once, under the same lock `userdel` takes (lckpwdf), with only the
lines of this run's accounts left out; homes and mail spools go after."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable

# name:... files and the field that lists a group's members (None: no member list)
ACCOUNT_FILES: tuple[tuple[str, int | None], ...] = (
    ("/etc/passwd", None),
    ("/etc/shadow", None),
    ("/etc/group", 3),
    ("/etc/gshadow", 3),
    ("/etc/subuid", None),
    ("/etc/subgid", None),
)


def _rewrite(path: str, drop: Callable[[str], bool], members_field: int | None) -> None:
    """Rewrite `path` without the entries whose name `drop` picks, and (in group files) without
    such names in member lists; the new file takes the old one's mode and owner, then its place."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.read().splitlines()
    kept = []
    for line in lines:
        fields = line.split(":")
        if drop(fields[0]):
            continue
        if members_field is not None and len(fields) > members_field and fields[members_field]:
            fields[members_field] = ",".join(m for m in fields[members_field].split(",") if not drop(m))
            # gshadow also lists group administrators, in the field before the members
            if path.endswith("gshadow") and fields[2]:
                fields[2] = ",".join(m for m in fields[2].split(",") if not drop(m))
            line = ":".join(fields)
        kept.append(line)
    if len(kept) == len(lines) and kept == lines:
        return
    st = os.stat(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".uws-test-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(kept) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chown(tmp, st.st_uid, st.st_gid)
        os.chmod(tmp, st.st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def remove_accounts(prefix: str, groups: Iterable[str] = ()) -> None:
    """Remove every account whose name starts with `prefix` (their own groups with them), and the
    named groups. Falls back to userdel and groupdel when the lock cannot be taken."""
    import pwd

    extra = set(groups)
    doomed = [e for e in pwd.getpwall() if e.pw_name.startswith(prefix)]

    def drop(name: str) -> bool:
        return name.startswith(prefix) or name in extra

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.lckpwdf() != 0:
        for entry in doomed:
            subprocess.run(["userdel", "-r", "--", entry.pw_name], capture_output=True)
        for group in extra:
            subprocess.run(["groupdel", "--", group], capture_output=True)
        return
    try:
        for path, members_field in ACCOUNT_FILES:
            _rewrite(path, drop, members_field)
    finally:
        libc.ulckpwdf()
    for entry in doomed:
        home = entry.pw_dir
        # Only a home of the account's own, never a shared directory it was given.
        if home and os.path.basename(home.rstrip("/")) == entry.pw_name and os.path.isdir(home):
            shutil.rmtree(home, ignore_errors=True)
        try:
            os.unlink(os.path.join("/var/mail", entry.pw_name))
        except OSError:
            pass
