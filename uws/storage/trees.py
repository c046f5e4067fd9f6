"""Operations on whole directory trees: chown, scan, remove and copy, all built on one walk
that never follows a symlink (S1, S3, S4).

A walk holds one directory fd per tree whatever the depth, and climbs back up with ".." checked
against the directory it came from, so a user cannot exhaust the server's fds or its stack with a
deep tree, nor move a directory away mid-walk to redirect it. Single files and paths are
uws/storage/safepath.py's."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Sequence
from typing import Any

from ..auth.accounts import Account
from .safepath import DIR_FLAGS, chown_at, create_file_at, is_root, open_dir, open_dir_fd


class TreeChanged(OSError):
    """A directory was moved while the server was walking through it."""


class TooLarge(OSError):
    """A copy grew past the bytes it was allowed."""


Visit = Callable[[tuple[int, ...], list[str], Any], list[tuple[str, Any]]]
Leave = Callable[[tuple[int, ...], str], None]
SKIPPED = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES)


def _ident(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _idents(fds: list[int]) -> list[tuple[int, int]]:
    return [_ident(fd) for fd in fds]


def _open_all(fds: list[int], name: str) -> list[int] | None:
    """name opened as a directory in every tree, or None when it is gone or not a directory
    (a symlink included) in one of them."""
    opened: list[int] = []
    try:
        for fd in fds:
            opened.append(os.open(name, DIR_FLAGS, dir_fd=fd))
    except OSError as e:
        for fd in opened:
            os.close(fd)
        if e.errno in SKIPPED:
            return None
        raise
    return opened


def _replace(current: list[int], new: list[int]) -> None:
    for i, fd in enumerate(new):
        os.close(current[i])
        current[i] = fd


def walk(fds: Sequence[int], visit: Visit, leave: Leave | None = None, state: Any = None) -> None:
    """Depth-first walk of one tree, or of several in lockstep (a copy's source and
    destination), below the given directory fds (which stay the caller's).

    visit(fds, path components, state) is called once per directory and returns the
    subdirectories to enter, each with the state its own visit gets; leave(fds, name) is called
    in the parent after a subdirectory is done or could not be entered. Iterative, with one fd
    per tree, so depth costs neither stack nor file descriptors."""
    current = [os.dup(fd) for fd in fds]
    parts: list[str] = []
    try:
        stack = [(_idents(current), list(reversed(visit(tuple(current), parts, state))))]
        while stack:
            pending = stack[-1][1]
            if pending:
                name, child_state = pending.pop()
                children = _open_all(current, name)
                if children is None:
                    if leave is not None:
                        leave(tuple(current), name)
                    continue
                _replace(current, children)
                parts.append(name)
                stack.append((_idents(current), list(reversed(visit(tuple(current), parts, child_state)))))
                continue
            stack.pop()
            if not stack:
                break
            parents = _open_all(current, "..")
            if parents is not None:
                _replace(current, parents)
            if parents is None or _idents(current) != stack[-1][0]:
                raise TreeChanged(errno.ESTALE, "a directory was moved during the walk")
            name = parts.pop()
            if leave is not None:
                leave(tuple(current), name)
    finally:
        for fd in current:
            os.close(fd)


def chown_tree(path: str, account: Account | None) -> None:
    """Chown a tree to the account without following or descending into symlinks."""
    if account is None or not is_root():
        return

    def visit(fds: tuple[int, ...], parts: list[str], state: Any) -> list[tuple[str, Any]]:
        subdirs = []
        with os.scandir(fds[0]) as entries:
            for entry in entries:
                os.chown(entry.name, account.uid, account.gid, dir_fd=fds[0], follow_symlinks=False)
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append((entry.name, None))
        return subdirs

    with open_dir(path) as fd:
        os.fchown(fd, account.uid, account.gid)
        walk([fd], visit)


def scan(path: str, list_depth: int = 0) -> tuple[int, list[dict[str, str]], list[dict[str, str]]]:
    """Bytes of regular files (hidden ones included), and the visible files and symlinks.
    Below list_depth components (0: no limit) bytes still count but names are not listed."""
    total = 0
    files: list[dict[str, str]] = []
    links: list[dict[str, str]] = []

    def visit(fds: tuple[int, ...], parts: list[str], hidden: bool) -> list[tuple[str, Any]]:
        nonlocal total
        listed = not hidden and (not list_depth or len(parts) < list_depth)
        prefix = "".join("/" + p for p in parts) if listed else ""
        subdirs = []
        with os.scandir(fds[0]) as entries:
            for entry in entries:
                entry_hidden = hidden or entry.name.startswith(".")
                try:
                    if entry.is_symlink():
                        if listed and not entry_hidden:
                            links.append({"name": f"{prefix}/{entry.name}"})
                    elif entry.is_dir(follow_symlinks=False):
                        subdirs.append((entry.name, entry_hidden))
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                        if listed and not entry_hidden:
                            files.append({"name": f"{prefix}/{entry.name}"})
                except OSError:
                    continue
        return subdirs

    try:
        top = open_dir_fd(path)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return 0, [], []
    try:
        walk([top], visit, state=False)
    finally:
        os.close(top)
    files.sort(key=lambda f: f["name"])
    links.sort(key=lambda f: f["name"])
    return total, files, links


def remove_tree(path: str) -> None:
    """Delete a directory tree (a missing one is fine) without following any symlink."""

    def visit(fds: tuple[int, ...], parts: list[str], state: Any) -> list[tuple[str, Any]]:
        subdirs = []
        with os.scandir(fds[0]) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append((entry.name, None))
                else:
                    _remove_entry(entry.name, fds[0])
        return subdirs

    def leave(fds: tuple[int, ...], name: str) -> None:
        _remove_entry(name, fds[0], directory=True)

    parent, name = os.path.split(path.rstrip("/"))
    with open_dir(parent) as parent_fd:
        try:
            top = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            return
        try:
            walk([top], visit, leave)
        finally:
            os.close(top)
        _remove_entry(name, parent_fd, directory=True)


def _remove_entry(name: str, dir_fd: int, directory: bool = False) -> None:
    try:
        if directory:
            try:
                os.rmdir(name, dir_fd=dir_fd)
                return
            except NotADirectoryError:
                pass  # swapped for a file or link meanwhile: removed as one
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def copy_tree(
    src: str,
    dst: str,
    account: Account | None,
    keep_link: Callable[[str], bool],
    max_bytes: int | None = None,
) -> None:
    """Copy src into the existing directory dst: dot entries skipped, links copied as links
    only when keep_link(target) says so, nothing followed, everything owned by the account.
    More than max_bytes of file content (None: no limit) raises TooLarge."""
    copied = 0

    def copy_file(name: str, mode: int, src_fd: int, dst_fd: int) -> None:
        nonlocal copied
        fin = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=src_fd)
        try:
            if not stat.S_ISREG(os.fstat(fin).st_mode):
                return  # swapped for something else since the lstat
            fout = create_file_at(name, dst_fd, account, mode & 0o777)
            try:
                while chunk := os.read(fin, 1 << 20):
                    copied += len(chunk)
                    if max_bytes is not None and copied > max_bytes:
                        raise TooLarge(errno.EDQUOT, f"more than {max_bytes} bytes to copy")
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fout, view) :]
            finally:
                os.close(fout)
        finally:
            os.close(fin)

    def visit(fds: tuple[int, ...], parts: list[str], state: Any) -> list[tuple[str, Any]]:
        src_fd, dst_fd = fds
        subdirs = []
        for name in sorted(os.listdir(src_fd)):
            if name.startswith("."):
                continue
            st = os.lstat(name, dir_fd=src_fd)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(name, dir_fd=src_fd)
                if keep_link(target):
                    os.symlink(target, name, dir_fd=dst_fd)
                    chown_at(name, dst_fd, account)
            elif stat.S_ISDIR(st.st_mode):
                os.mkdir(name, 0o755, dir_fd=dst_fd)
                chown_at(name, dst_fd, account)
                subdirs.append((name, None))
            elif stat.S_ISREG(st.st_mode):
                copy_file(name, st.st_mode, src_fd, dst_fd)
        return subdirs

    with open_dir(src) as src_fd, open_dir(dst) as dst_fd:
        walk([src_fd, dst_fd], visit)
