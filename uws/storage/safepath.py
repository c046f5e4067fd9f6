"""Path handling that never follows a symlink where it reads, writes or chowns a file.

Every access walks the path one component at a time with O_NOFOLLOW directory file
descriptors, so a symlink swapped in after validation still cannot redirect it (S1, S3, S4).
Whole trees (chown, scan, remove, copy) are uws/storage/trees.py's.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from .. import errors
from ..auth.accounts import Account

RESERVED_FIRST = re.compile(r"^\.\d+$")
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(ValueError):
    pass


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


class DirWriter:
    """Writes files and symlinks below one directory: the directory is opened once, from /
    (open_dir_fd), and each parent directory below it once, component by component with
    O_NOFOLLOW, created when missing (owned by the account); later writes into the same parent
    reuse its fd. A symlink on the way is never passed through, whenever it appeared: a
    directory swapped for one after it was opened is left behind with its old fd, as a walk
    begun just before the swap would have been. Use as a context manager (it closes the fds)."""

    def __init__(self, root: str, account: Account | None) -> None:
        self.account = account
        self.dirs: dict[tuple[str, ...], int] = {(): open_dir_fd(root)}

    def __enter__(self) -> DirWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        dirs, self.dirs = self.dirs, {}
        for fd in dirs.values():
            os.close(fd)

    def parent(self, parts: list[str]) -> int:
        """The fd of the directory that will hold parts[-1]."""
        return self._dir(tuple(parts[:-1]), parts)

    def _dir(self, key: tuple[str, ...], parts: list[str]) -> int:
        fd = self.dirs.get(key)
        if fd is not None:
            return fd
        parent = self._dir(key[:-1], parts)
        name = key[-1]
        try:
            os.mkdir(name, 0o755, dir_fd=parent)
            chown_at(name, parent, self.account)
        except FileExistsError:
            pass
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        except OSError as e:
            raise UnsafePath("/".join(parts)) from e
        self.dirs[key] = fd
        return fd

    def write_file(self, parts: list[str], content: bytes, mode: int = 0o644) -> None:
        dir_fd = self.parent(parts)
        fd = create_file_at(parts[-1], dir_fd, self.account, mode)
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

    def make_symlink(self, parts: list[str], source: str) -> None:
        dir_fd = self.parent(parts)
        _clear_final(parts[-1], dir_fd)
        os.symlink(source, parts[-1], dir_fd=dir_fd)
        chown_at(parts[-1], dir_fd, self.account)


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
    """One file (DirWriter, for several in one directory tree)."""
    with DirWriter(root, account) as writer:
        writer.write_file(parts, content, mode)


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


__all__ = ["UnsafePath", "errors"]
