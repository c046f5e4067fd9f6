"""uws.storage.safepath.DirWriter in process: the workspace directory is opened from / once per
create or upload, not once per file, and every write still refuses a symlink on its way. The
end-to-end tests are in tests/test_workspaces.py and tests/test_storage_limits.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from uws.auth.accounts import Account
from uws.storage import safepath

ME = Account("me", os.getuid(), os.getgid(), frozenset({os.getgid()}))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_many_files_one_walk_from_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = str(tmp_path.resolve())
    opened: list[str] = []
    real_open = os.open

    def counting_open(path: str, *args: object, **kwargs: object) -> int:
        opened.append(path)
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", counting_open)
    before = open_fds()
    with safepath.DirWriter(root, ME) as writer:
        for i in range(20):
            writer.write_file(["dir", "sub", f"f{i}"], f"content {i}".encode())
        writer.write_file(["top"], b"top", mode=0o600)
    monkeypatch.undo()
    assert open_fds() == before
    # "/" once for the whole writer, "dir" and "sub" once each, then one open per file.
    assert opened.count("/") == 1
    assert opened.count("dir") == 1 and opened.count("sub") == 1
    assert len(opened) == len(Path(root).parts) + 2 + 21
    assert (tmp_path / "dir" / "sub" / "f7").read_text() == "content 7"
    assert (tmp_path / "top").stat().st_mode & 0o777 == 0o600


def test_symlinked_parent_refused(tmp_path: Path) -> None:
    ws, elsewhere = tmp_path / "ws", tmp_path / "elsewhere"
    ws.mkdir()
    elsewhere.mkdir()
    (ws / "link").symlink_to(elsewhere)
    before = open_fds()
    with safepath.DirWriter(str(ws.resolve()), ME) as writer:
        with pytest.raises(safepath.UnsafePath):
            writer.write_file(["link", "f"], b"x")
        with pytest.raises(safepath.UnsafePath):
            writer.write_file(["link", "deeper", "f"], b"x")
        writer.write_file(["ok"], b"x")
    assert open_fds() == before
    assert list(elsewhere.iterdir()) == []
    assert (ws / "ok").read_bytes() == b"x"


def test_symlink_in_the_root_path_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    with pytest.raises(OSError):
        safepath.DirWriter(str(tmp_path.resolve() / "alias"), ME)


def test_file_where_a_directory_goes_and_back(tmp_path: Path) -> None:
    root = str(tmp_path.resolve())
    with safepath.DirWriter(root, ME) as writer:
        writer.write_file(["a"], b"file")
        with pytest.raises(safepath.UnsafePath):
            writer.write_file(["a", "b"], b"x")
        writer.write_file(["d", "f"], b"x")
        with pytest.raises(safepath.UnsafePath):
            writer.write_file(["d"], b"x")
        writer.make_symlink(["d", "l"], "/nonexistent")
    assert os.readlink(tmp_path / "d" / "l") == "/nonexistent"
    assert (tmp_path / "a").read_bytes() == b"file"
