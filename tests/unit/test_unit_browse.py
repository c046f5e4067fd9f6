"""uws.storage.browse in process: how a path is resolved (symlinks walked by the server itself,
`..` in their targets, loops, job directories, allowed roots, another workspace) and the
download's Content-Disposition. The end-to-end tests are in tests/test_workspace_files.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest

from uws.auth.accounts import Account
from uws.handlers.files import content_disposition
from uws.storage import browse

ME = Account("me", os.getuid(), os.getgid(), frozenset({os.getgid()}))


@pytest.fixture
def place(tmp_path: Path) -> Iterator[browse.Place]:
    """<tmp>/storage/me/1 (the workspace), <tmp>/storage/other/2, <tmp>/datasets (allowed),
    <tmp>/elsewhere (not)."""
    storage, ws = tmp_path / "storage", tmp_path / "storage" / "me" / "1"
    for d in (
        ws / "sub",
        ws / ".7",
        storage / "other" / "2",
        tmp_path / "datasets" / "d",
        tmp_path / "elsewhere",
    ):
        d.mkdir(parents=True)
    (ws / "sub" / "f").write_text("inside")
    (ws / ".7" / "session.log").write_text("token=abc")
    (storage / "other" / "2" / "g").write_text("other's")
    (tmp_path / "datasets" / "d" / "x").write_text("data")
    (tmp_path / "elsewhere" / "y").write_text("elsewhere")
    real = str(tmp_path.resolve())
    yield browse.Place(f"{real}/storage/me/1", (f"{real}/datasets",), f"{real}/storage", ME)


def read(place: browse.Place, path: str) -> bytes:
    fd, size = browse.open_file(place, path.split("/"))
    try:
        return os.read(fd, size + 1)
    finally:
        os.close(fd)


def link(place: browse.Place, name: str, target: str) -> None:
    os.symlink(target, os.path.join(place.workspace, name))


def test_symlinks_are_walked_to_where_they_lead(place: browse.Place) -> None:
    link(place, "rel", "sub/f")
    link(place, "dotdot", "sub/../sub/./f")
    link(place, "chain", "rel")
    link(place, "abs_in", os.path.join(place.workspace, "sub"))
    link(place, "data", "../../../datasets/d")
    link(place, "in_sub_up", "sub/..")
    assert read(place, "rel") == read(place, "dotdot") == read(place, "chain") == b"inside"
    assert read(place, "abs_in/f") == b"inside"
    assert read(place, "data/x") == b"data"
    assert read(place, "in_sub_up/sub/f") == b"inside"


@pytest.mark.parametrize(
    "target",
    [
        "../../other/2/g",  # another workspace
        "../../../elsewhere/y",  # outside everything
        "/etc/passwd",
        ".7/session.log",  # a job directory
        "sub/../.7/session.log",
        "loop",
        "missing",
        "sub/f/",  # a file used as a directory
    ],
)
def test_symlinks_that_lead_elsewhere_are_not_allowed(place: browse.Place, target: str) -> None:
    link(place, "loop", "loop")
    link(place, "l", target)
    with pytest.raises(browse.NotAllowed):
        read(place, "l")


def test_too_many_links_is_not_allowed(place: browse.Place) -> None:
    link(place, "l0", "sub/f")
    for i in range(1, browse.MAX_LINKS + 2):
        link(place, f"l{i}", f"l{i - 1}")
    assert read(place, f"l{browse.MAX_LINKS - 1}") == b"inside"
    with pytest.raises(browse.NotAllowed):
        read(place, f"l{browse.MAX_LINKS + 1}")


def test_job_directories_are_hidden_but_look_alikes_are_not(place: browse.Place) -> None:
    os.mkdir(os.path.join(place.workspace, ".7x"))
    listing = browse.list_directory(place, [], 100)
    assert [e["name"] for e in listing["entries"]] == [".7x", "sub"]
    with pytest.raises(browse.NotAllowed):
        browse.list_directory(place, [".7"], 100)
    # Only at the top: a .7 deeper down is the user's own.
    os.mkdir(os.path.join(place.workspace, "sub", ".7"))
    assert ".7" in [e["name"] for e in browse.list_directory(place, ["sub"], 100)["entries"]]


def test_fifos_are_refused_unopened(place: browse.Place) -> None:
    os.mkfifo(os.path.join(place.workspace, "p"))
    with pytest.raises(browse.NotRegular):
        read(place, "p")


@pytest.mark.parametrize("name", ["a.txt", 'q"uote\\.txt', "new\r\nSet-Cookie: x=1", "ünï €%41;=.txt"])
def test_content_disposition_keeps_the_name_out_of_the_header_syntax(name: str) -> None:
    header = content_disposition(name)
    assert all(" " <= c < "\x7f" for c in header)
    fallback, encoded = header.removeprefix('attachment; filename="').split("\"; filename*=UTF-8''")
    assert '"' not in fallback and "\\" not in fallback and ";" not in encoded
    assert unquote(encoded, errors="strict") == name


def test_a_listing_of_link_chains_stops_following_at_its_budget(
    place: browse.Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every link of a listing is resolved, each within MAX_STEPS; a directory full of long
    chains through ".." (each reopening its path from /) is bounded as a whole: past the
    listing's budget the rest are shown as not followed, and the listing still answers."""
    hops = "/".join(["sub/.."] * 40)
    for i in range(20):
        link(place, f"l{i:02}", f"{hops}/sub/f")
    whole = browse.list_directory(place, [], 100)["entries"]
    assert all(e["target_allowed"] for e in whole if e["name"].startswith("l"))
    one = sum(len(place.workspace.split("/")) for _ in range(40)) + 100  # about one link's cost
    monkeypatch.setattr(browse, "LISTING_STEPS", 5 * one)
    entries = {e["name"]: e for e in browse.list_directory(place, [], 100)["entries"]}
    followed = [n for n, e in entries.items() if n.startswith("l") and e["target_allowed"]]
    assert 1 <= len(followed) < 20
    assert entries["sub"]["type"] == "directory"  # (the rest of the listing is whole)
