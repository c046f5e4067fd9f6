"""Path handling that never follows a symlink where it writes, chowns or deletes.

Every write walks the destination one component at a time with O_NOFOLLOW directory file
descriptors, so a symlink swapped in after validation still cannot redirect it (S1, S3, S4).
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


def split_destination(name: str) -> list[str]:
    """Components of a relative destination name, or UnsafePath."""
    if not name or name.startswith("/") or "\x00" in name:
        raise UnsafePath(name)
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", "..") or len(part.encode("utf-8", "surrogateescape")) > 255:
            raise UnsafePath(name)
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
    fd = os.open(root, DIR_FLAGS)
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
        _clear_final(parts[-1], dir_fd)
        fd = os.open(
            parts[-1],
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            mode,
            dir_fd=dir_fd,
        )
        try:
            view = memoryview(content)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        finally:
            os.close(fd)
        chown_at(parts[-1], dir_fd, account)


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

    def allowed(st: os.stat_result, bits: int) -> bool:
        mode = st.st_mode
        if st.st_uid == account.uid:
            return (mode >> 6) & bits == bits
        if st.st_gid in account.groups:
            return (mode >> 3) & bits == bits
        return mode & bits == bits

    current = "/"
    components = [p for p in path.split("/") if p]
    try:
        for part in components:
            if not allowed(os.stat(current), 1):
                return False
            current = os.path.join(current, part)
        st = os.stat(current)
    except OSError:
        return False
    need = 4 | (1 if stat.S_ISDIR(st.st_mode) else 0)
    return allowed(st, need)


def chown_tree(path: str, account: Account | None) -> None:
    """Chown a tree to the account without following or descending into symlinks."""
    if account is None or not is_root():
        return
    os.chown(path, account.uid, account.gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), account.uid, account.gid, follow_symlinks=False)


def scan(path: str) -> tuple[int, list[dict[str, str]], list[dict[str, str]]]:
    """Bytes of regular files (hidden ones included), and the visible files and symlinks."""
    total = 0
    files: list[dict[str, str]] = []
    links: list[dict[str, str]] = []
    stack = [("", path, False)]
    while stack:
        rel, current, hidden = stack.pop()
        try:
            entries = list(os.scandir(current))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            name_rel = f"{rel}/{entry.name}"
            is_hidden = hidden or entry.name.startswith(".")
            try:
                if entry.is_symlink():
                    if not is_hidden:
                        links.append({"name": name_rel})
                elif entry.is_dir(follow_symlinks=False):
                    stack.append((name_rel, entry.path, is_hidden))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
                    if not is_hidden:
                        files.append({"name": name_rel})
            except OSError:
                continue
    files.sort(key=lambda f: f["name"])
    links.sort(key=lambda f: f["name"])
    return total, files, links


def copy_tree(src: str, dst: str, account: Account | None, keep_link) -> None:  # noqa: ANN001
    """Copy src into the existing directory dst: dot entries skipped, links copied as links
    only when keep_link(target) says so, nothing followed, everything owned by the account."""
    src_fd = os.open(src, DIR_FLAGS)
    dst_fd = os.open(dst, DIR_FLAGS)
    try:
        _copy_dir(src_fd, dst_fd, account, keep_link)
    finally:
        os.close(src_fd)
        os.close(dst_fd)


def _copy_dir(src_fd: int, dst_fd: int, account: Account | None, keep_link) -> None:  # noqa: ANN001
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
            child_src = os.open(name, DIR_FLAGS, dir_fd=src_fd)
            child_dst = os.open(name, DIR_FLAGS, dir_fd=dst_fd)
            try:
                _copy_dir(child_src, child_dst, account, keep_link)
            finally:
                os.close(child_src)
                os.close(child_dst)
        elif stat.S_ISREG(st.st_mode):
            fin = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_fd)
            try:
                fout = os.open(
                    name,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    st.st_mode & 0o777,
                    dir_fd=dst_fd,
                )
                try:
                    while True:
                        chunk = os.read(fin, 1 << 20)
                        if not chunk:
                            break
                        os.write(fout, chunk)
                finally:
                    os.close(fout)
            finally:
                os.close(fin)
            chown_at(name, dst_fd, account)


__all__ = ["UnsafePath", "errors"]
