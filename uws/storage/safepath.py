"""Path handling that never follows a symlink where it reads, writes, chowns, scans or deletes.

Every access walks the path one component at a time with O_NOFOLLOW directory file
descriptors, so a symlink swapped in after validation still cannot redirect it (S1, S3, S4).
Tree walks hold one directory fd per tree whatever the depth, and climb back up with ".."
checked against the directory they came from, so a user cannot exhaust the server's fds or
its stack with a deep tree, nor move a directory away mid-walk to redirect it.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .. import errors
from ..auth.accounts import Account

RESERVED_FIRST = re.compile(r"^\.\d+$")
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(ValueError):
    pass


class TreeChanged(OSError):
    """A directory was moved while the server was walking through it."""


class TooLarge(OSError):
    """A copy grew past the bytes it was allowed."""


def split_relative(name: str) -> list[str]:
    """Components of a relative path name, or UnsafePath: no empty, "." or ".." component, no
    NUL, each at most 255 bytes of UTF-8."""
    if not name or name.startswith("/") or "\x00" in name:
        raise UnsafePath(name)
    parts = name.split("/")
    for part in parts:
        try:
            # Strict UTF-8: a lone surrogate is not text a file system name can hold.
            size = len(part.encode("utf-8"))
        except UnicodeEncodeError:
            raise UnsafePath(name) from None
        if part in ("", ".", "..") or size > 255:
            raise UnsafePath(name)
    return parts


def split_destination(name: str) -> list[str]:
    """Components of a relative destination name (not under a name the server reserves), or
    UnsafePath."""
    parts = split_relative(name)
    if RESERVED_FIRST.match(parts[0]) or parts[0].endswith("_venv"):
        raise UnsafePath(name)
    return parts


def existing_parent_is_safe(root: str, parts: list[str]) -> bool:
    """No existing parent component is a symlink (or a non-directory), and the final
    component, if it exists, is not a directory."""
    path = root
    for part in parts[:-1]:
        path = os.path.join(path, part)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return True
        if not stat.S_ISDIR(st.st_mode):
            return False
    try:
        st = os.lstat(os.path.join(path, parts[-1]))
    except FileNotFoundError:
        return True
    return not stat.S_ISDIR(st.st_mode)


def is_root() -> bool:
    return os.geteuid() == 0


def chown_at(name: str, dir_fd: int, account: Account | None) -> None:
    if account is not None and is_root():
        os.chown(name, account.uid, account.gid, dir_fd=dir_fd, follow_symlinks=False)


@contextmanager
def open_parent(root: str, parts: list[str], account: Account | None) -> Iterator[int]:
    """Yield an fd for the directory that will hold parts[-1], creating missing parents
    (owned by the account) and refusing to pass through any symlink."""
    fd = open_dir_fd(root)
    try:
        for part in parts[:-1]:
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
                chown_at(part, fd, account)
            except FileExistsError:
                pass
            try:
                child = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                raise UnsafePath("/".join(parts)) from e
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _clear_final(name: str, dir_fd: int) -> None:
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise UnsafePath(name)
    os.unlink(name, dir_fd=dir_fd)


def write_file(
    root: str, parts: list[str], content: bytes, account: Account | None, mode: int = 0o644
) -> None:
    with open_parent(root, parts, account) as dir_fd:
        fd = create_file_at(parts[-1], dir_fd, account, mode)
        try:
            view = memoryview(content)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        except OSError:
            os.unlink(parts[-1], dir_fd=dir_fd)  # no half-written file (a full disk, say)
            raise
        finally:
            os.close(fd)


def create_file_at(name: str, dir_fd: int, account: Account | None, mode: int = 0o644) -> int:
    """A new, empty file in dir_fd, owned by the account (whatever was there is replaced; a
    directory there is refused), open for writing."""
    _clear_final(name, dir_fd)
    fd = os.open(
        name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd
    )
    try:
        if account is not None and is_root():
            os.fchown(fd, account.uid, account.gid)
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_symlink(root: str, parts: list[str], source: str, account: Account | None) -> None:
    with open_parent(root, parts, account) as dir_fd:
        _clear_final(parts[-1], dir_fd)
        os.symlink(source, parts[-1], dir_fd=dir_fd)
        chown_at(parts[-1], dir_fd, account)


def inside(path: str, root: str) -> bool:
    """Whether path is root or lies under it (both already real paths)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def readable_by(path: str, account: Account) -> bool:
    """Could the account read path: search permission on every directory on the way, read
    permission on the target (and search too when it is a directory)."""
    if account.uid == 0:
        return True
    current = "/"
    components = [p for p in path.split("/") if p]
    try:
        for part in components:
            if not permits(os.stat(current), account, 1):
                return False
            current = os.path.join(current, part)
        st = os.stat(current)
    except OSError:
        return False
    need = 4 | (1 if stat.S_ISDIR(st.st_mode) else 0)
    return permits(st, account, need)


def permits(st: os.stat_result, account: Account, bits: int) -> bool:
    """Whether the mode bits of st give the account `bits` (4 read, 1 search) as the kernel
    would (owner, else group, else other; POSIX ACLs are not consulted)."""
    if account.uid == 0:
        return True
    mode = st.st_mode
    if st.st_uid == account.uid:
        return (mode >> 6) & bits == bits
    if st.st_gid == account.gid or st.st_gid in account.groups:
        return (mode >> 3) & bits == bits
    return mode & bits == bits


# ---- directory fds ---------------------------------------------------------------------------
def open_dir_fd(path: str) -> int:
    """An fd for the absolute directory path, opened from / one component at a time: a symlink
    anywhere on the way fails (OSError) instead of being followed. The caller closes it.
    Storage paths are built from the real path of the storage root, so none is legitimate."""
    if not os.path.isabs(path):
        raise UnsafePath(path)
    fd = os.open("/", DIR_FLAGS)
    try:
        for part in path.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                raise UnsafePath(path)
            child = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def open_dir(path: str) -> Iterator[int]:
    fd = open_dir_fd(path)
    try:
        yield fd
    finally:
        os.close(fd)


def read_file(
    dir_path: str, name: str, max_bytes: int, tail: bool = False, head: bool = False
) -> bytes | None:
    """A regular file's bytes (its last max_bytes with tail=True, its first with head=True),
    read through directory fds; None when it is missing, not a plain file, hard-linked, or
    (without tail or head) too big."""
    try:
        with open_dir(dir_path) as dir_fd:
            # O_NONBLOCK: a FIFO put there must not hang the reading thread.
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except (OSError, UnsafePath):
        return None
    try:
        st = os.fstat(fd)
        # A second link would be another user's file linked into a directory the user owns.
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            return None
        if tail:
            os.lseek(fd, max(0, st.st_size - max_bytes), os.SEEK_SET)
        elif st.st_size > max_bytes and not head:
            return None
        chunks, left = [], max_bytes
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


# ---- tree walks ------------------------------------------------------------------------------
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


__all__ = ["UnsafePath", "errors"]
