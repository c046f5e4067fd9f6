"""Reading a workspace for its owner through the API: directory listings and file downloads.

A request names a path relative to the workspace. The server (root) resolves it itself, one
component at a time, from directory fds opened with O_NOFOLLOW, the way the kernel would
resolve it, but reading each symlink (readlink) and walking its target instead of letting
open() follow it. So the walk always knows the physical path of the directory it holds, and
the fd it ends with is the object at that path at the moment it was opened: a directory a
session swaps for a symlink between a check and an open cannot redirect it, as there is no
check apart from the open. What the walk ends on is used only when its path lies inside the
workspace (but not in a job directory) or inside one of the storage's allowed symlink roots
(never in the storage root outside this workspace), and when the owner's OS account could read
it by its mode bits (the server reads as root, the owner should not gain from that).
Everything else answers the same way as a missing file (NotAllowed), so a request cannot tell
what exists outside.

Job directories (`.<job id>` at the top of the workspace) are never listed or read: they hold
the helper's secret (`.secret` under Slurm), the session's output (`session.log`, where apps
such as JupyterLab print their link with the session token), `helper.log`, `job.json` and
`exit.json`. The session token opens the session, which a read-only API token must not reach.
"""

from __future__ import annotations

import datetime as _dt
import errno
import os
import stat
from dataclasses import dataclass
from typing import Any

from ..auth.accounts import Account
from ..utils import UTC, isoformat
from . import safepath
from .safepath import DIR_FLAGS, RESERVED_FIRST

# As the kernel's MAXSYMLINKS: more links than this on one path is a loop.
MAX_LINKS = 40
# Components walked for one path, links' targets included: bounds the work a request can cause.
MAX_STEPS = 4096
# The same for a whole listing, whose every symlink is resolved: steps, a ".." counted as the
# directories it reopens from "/". Past it, the remaining links are shown as not followed, so a
# directory of link chains costs its owner's request seconds, not the shared readers minutes.
LISTING_STEPS = 65536
# O_NONBLOCK: opening a FIFO swapped in at the last moment returns at once (it is refused by
# its fstat); O_NOCTTY: a terminal never becomes the server's.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# What a walk that fails on the way means: not there (or not a directory, or a loop).
MISSING = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES, errno.ENAMETOOLONG, errno.ESTALE)


class NotAllowed(Exception):
    """Missing, outside what may be read, hidden, or not the owner's to read: one answer."""


class NotRegular(Exception):
    """A FIFO, socket or device: never opened for reading."""


class ServerCannotRead(Exception):
    """The owner may read it, but the server's own account may not (a server not run as root)."""


@dataclass(frozen=True)
class Place:
    """Where one workspace's reads may go, as real paths, and whose rights they have."""

    workspace: str
    allowed_roots: tuple[str, ...]
    storage_root: str
    account: Account

    def hidden(self, path: str) -> bool:
        """Inside one of the workspace's job directories."""
        rest = path[len(self.workspace) + 1 :].split("/", 1)[0]
        return bool(rest) and RESERVED_FIRST.match(rest) is not None

    def may_read(self, path: str) -> bool:
        if safepath.inside(path, self.workspace):
            return not self.hidden(path)
        if safepath.inside(path, self.storage_root):
            return False  # another workspace (another user's, or another of the owner's)
        return any(safepath.inside(path, root) for root in self.allowed_roots)

    def checks_search(self, path: str) -> bool:
        """Whether the walk checks the owner's search permission on this directory: every one
        but the workspace's own ancestors, which the operator sets up (0711 and the like)."""
        return not (path != self.workspace and safepath.inside(self.workspace, path))


@dataclass
class Resolved:
    fd: int
    path: str
    st: os.stat_result


def _join(stack: list[str]) -> str:
    return "/" + "/".join(stack)


def _readlink(name: str, dir_fd: int) -> str | None:
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError:
        return None


class _Walk:
    """One resolution: the directory fd held, its physical path, and what is left to walk."""

    def __init__(
        self, place: Place, fd: int, stack: list[str], parts: list[str], max_steps: int = MAX_STEPS
    ) -> None:
        self.place = place
        self.fd = fd
        self.stack = stack
        self.pending = list(reversed(parts))
        self.links = 0
        self.steps = 0
        self.max_steps = max_steps

    def move(self, fd: int, stack: list[str]) -> None:
        os.close(self.fd)
        self.fd, self.stack = fd, stack

    def follow(self, target: str) -> None:
        self.links += 1
        if self.links > MAX_LINKS or not target:
            raise NotAllowed
        if target.startswith("/"):
            self.move(os.open("/", DIR_FLAGS), [])
        self.pending.extend(reversed(target.split("/")))

    def enter(self, name: str) -> None:
        """Step into the directory name (or follow it, when it is a symlink)."""
        try:
            child = os.open(name, DIR_FLAGS, dir_fd=self.fd)
        except OSError as e:
            if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            target = _readlink(name, self.fd)
            if target is None:
                raise NotAllowed from None  # a file in the middle of the path
            self.follow(target)
            return
        stack = [*self.stack, name]
        self.move(child, stack)
        if self.place.checks_search(_join(stack)) and not safepath.permits(
            os.fstat(child), self.place.account, 1
        ):
            raise NotAllowed

    def finish(self, name: str) -> Resolved | None:
        """Open the last component; None when it was a symlink (now being followed)."""
        st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            target = _readlink(name, self.fd)
            if target is None:
                self.pending.append(name)  # swapped meanwhile: look again
            else:
                self.follow(target)
            return None
        path = _join([*self.stack, name])
        if not self.place.may_read(path):
            raise NotAllowed
        if stat.S_ISDIR(st.st_mode):
            flags, bits = DIR_FLAGS, 5
        elif stat.S_ISREG(st.st_mode):
            flags, bits = FILE_FLAGS, 4
        else:
            raise NotRegular
        try:
            fd = os.open(name, flags, dir_fd=self.fd)
        except OSError as e:
            if e.errno in (errno.ENOTDIR, errno.ELOOP):
                self.pending.append(name)  # swapped for a link meanwhile: look again
                return None
            if e.errno == errno.EACCES and safepath.permits(st, self.place.account, bits):
                raise ServerCannotRead from None
            raise
        try:
            opened = os.fstat(fd)
            if stat.S_IFMT(opened.st_mode) != stat.S_IFMT(st.st_mode):
                raise NotRegular if not stat.S_ISDIR(opened.st_mode) else NotAllowed
            if not safepath.permits(opened, self.place.account, bits):
                raise NotAllowed
        except BaseException:
            os.close(fd)
            raise
        return Resolved(fd, path, opened)

    def run(self) -> Resolved:
        while True:
            self.steps += 1
            if self.steps > self.max_steps:
                raise NotAllowed
            if not self.pending:
                # The path ended on a directory we hold (no components, or a trailing "/").
                path, st = _join(self.stack), os.fstat(self.fd)
                if not self.place.may_read(path) or (
                    path != self.place.workspace and not safepath.permits(st, self.place.account, 5)
                ):
                    raise NotAllowed
                return Resolved(os.dup(self.fd), path, st)
            name = self.pending.pop()
            if name in ("", "."):
                continue
            if name == "..":
                self.steps += len(self.stack)  # (reopened from "/", one directory at a time)
                self.move(safepath.open_dir_fd(_join(self.stack[:-1])), self.stack[:-1])
            elif not self.pending:
                found = self.finish(name)
                if found is not None:
                    return found
            else:
                self.enter(name)


def resolve(
    place: Place,
    parts: list[str],
    start: tuple[int, str] | None = None,
    budget: list[int] | None = None,
) -> Resolved:
    """The object at parts (relative to the workspace, or to `start`: a directory fd and its
    path), opened: a directory, or a regular file opened for reading. The caller closes its fd.
    `budget`: [steps left] shared by the resolutions of one request, and spent by this one.
    Raises NotAllowed, NotRegular or ServerCannotRead."""
    if start is None:
        fd, base = safepath.open_dir_fd(place.workspace), place.workspace
    else:
        fd, base = os.dup(start[0]), start[1]
    max_steps = MAX_STEPS if budget is None else min(MAX_STEPS, budget[0])
    walk = _Walk(place, fd, [p for p in base.split("/") if p], parts, max_steps)
    try:
        return walk.run()
    except OSError as e:
        if e.errno in MISSING:
            raise NotAllowed from None
        raise
    finally:
        os.close(walk.fd)
        if budget is not None:
            budget[0] -= walk.steps


# ---- listings --------------------------------------------------------------------------------
def modified_time(st: os.stat_result) -> str | None:
    return isoformat(_dt.datetime.fromtimestamp(st.st_mtime, UTC))


def _entry(
    place: Place, dir_fd: int, dir_path: str, name: str, st: os.stat_result, budget: list[int]
) -> dict[str, Any]:
    modified = modified_time(st)
    if stat.S_ISDIR(st.st_mode):
        return {"name": name, "type": "directory", "size": None, "modified": modified}
    if not stat.S_ISLNK(st.st_mode):
        kind = "file" if stat.S_ISREG(st.st_mode) else "other"
        return {"name": name, "type": kind, "size": st.st_size, "modified": modified}
    entry: dict[str, Any] = {
        "name": name,
        "type": "symlink",
        "size": None,
        "modified": modified,
        "target_allowed": False,
        "target_type": None,
    }
    try:
        target = resolve(place, [name], (dir_fd, dir_path), budget)
    except (NotAllowed, NotRegular, ServerCannotRead):
        return entry
    try:
        is_dir = stat.S_ISDIR(target.st.st_mode)
        entry.update(
            target_allowed=True,
            target_type="directory" if is_dir else "file",
            size=None if is_dir else target.st.st_size,
            modified=modified_time(target.st),
        )
    finally:
        os.close(target.fd)
    return entry


def list_directory(place: Place, parts: list[str], max_entries: int) -> dict[str, Any]:
    """The entries of the directory at parts: at most max_entries (then `truncated`, and which
    ones is the file system's order), directories first, then by name. Job directories and
    names that are not UTF-8 (which no API path can name) are left out."""
    found = resolve(place, parts)
    try:
        if not stat.S_ISDIR(found.st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory")
        top = found.path == place.workspace
        entries: list[dict[str, Any]] = []
        truncated = False
        budget = [LISTING_STEPS]
        with os.scandir(found.fd) as scan:
            for item in scan:
                name = item.name
                if top and RESERVED_FIRST.match(name):
                    continue
                try:
                    name.encode("utf-8")
                except UnicodeEncodeError:
                    continue
                if len(entries) >= max_entries:
                    truncated = True
                    break
                try:
                    st = item.stat(follow_symlinks=False)
                except OSError:
                    continue  # gone meanwhile
                entries.append(_entry(place, found.fd, found.path, name, st, budget))
    finally:
        os.close(found.fd)
    entries.sort(key=lambda e: (e["type"] != "directory", e["name"]))
    return {"entries": entries, "truncated": truncated}


def open_file(place: Place, parts: list[str]) -> tuple[int, int]:
    """A regular file at parts opened for reading, and its size; IsADirectoryError for a
    directory. The caller closes the fd."""
    found = resolve(place, parts)
    if stat.S_ISDIR(found.st.st_mode):
        os.close(found.fd)
        raise IsADirectoryError(errno.EISDIR, "is a directory")
    return found.fd, found.st.st_size
