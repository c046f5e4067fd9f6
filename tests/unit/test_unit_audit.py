"""The audit log's line format and file handling (uws.audit), in process."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import stat
from pathlib import Path

import pytest

import uws
from uws.audit import ACTIONS, MAX_TEXT, AuditLog, format_line, outcome_of

WHEN = _dt.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=_dt.UTC)


def test_a_line_has_the_six_fields_in_order() -> None:
    line = format_line("workspace.delete", "alice", "workspace:12", "success", "192.0.2.7", {}, WHEN)
    assert line == (
        b'{"time": "2024-05-01T12:00:00.123Z", "action": "workspace.delete", "outcome": "success", '
        b'"actor": "alice", "object": "workspace:12", "source": "192.0.2.7"}\n'
    )


def test_details_follow_and_empty_values_are_null() -> None:
    line = json.loads(format_line("login", None, None, "failure", "", {"status": 400}, WHEN))
    assert list(line) == ["time", "action", "outcome", "actor", "object", "source", "details"]
    assert (line["actor"], line["object"], line["source"], line["details"]) == (
        None,
        None,
        None,
        {"status": 400},
    )


def test_a_line_is_one_line_whatever_it_holds() -> None:
    hostile = 'a\nb\rc\u2028d\x00e"f'
    raw = format_line("access.refused", hostile, "/x\n{}", "refused", "::1", {"reason": hostile}, WHEN)
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1 and raw.isascii()
    assert len(raw.decode().splitlines()) == 1  # (str.splitlines breaks at U+2028 too)
    assert json.loads(raw)["actor"] == hostile


def test_long_text_is_cut() -> None:
    line = json.loads(format_line("access.refused", "u", "/" + "x" * 5000, "refused", None, {}, WHEN))
    assert len(line["object"]) == MAX_TEXT + 1 and line["object"].endswith("…")


@pytest.mark.parametrize(
    ("status", "refused", "outcome"),
    [(200, False, "success"), (401, False, "refused"), (403, False, "refused"), (404, True, "refused")]
    + [(404, False, "failure"), (400, False, "failure"), (500, False, "failure")],
)
def test_outcome_of(status: int, refused: bool, outcome: str) -> None:
    assert outcome_of(status, refused) == outcome


def test_every_action_the_code_writes_is_in_the_vocabulary() -> None:
    """The names handlers, services and commands pass are ACTIONS' (a typo would split a
    series an auditor greps for)."""
    root = Path(uws.__file__).parent
    used: set[str] = set()
    for path in root.rglob("*.py"):
        text = path.read_text()
        used |= set(re.findall(r'(?:\.audit|\.record)\(\s*"([a-z_.]+)"', text))
    assert used and used <= ACTIONS, used - ACTIONS
    assert all(re.fullmatch(r"[a-z_]+(\.[a-z_]+)*", name) for name in ACTIONS)


def test_created_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        audit = AuditLog(str(tmp_path))
        assert audit.open()
    finally:
        os.umask(old)
    audit.record("login", "alice", "user:alice", "success", "127.0.0.1")
    audit.close()
    path = tmp_path / "audit.log"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["actor"] == "alice"


def test_a_looser_file_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text("")
    path.chmod(0o644)
    audit = AuditLog(path=str(path))
    assert audit.open()
    audit.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_failing_file_is_reported_once_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    audit = AuditLog(path="/dev/full")  # every write: ENOSPC
    assert audit.open()
    with caplog.at_level(logging.ERROR):
        for _ in range(5):
            audit.record("login", "alice", "user:alice")
    audit.close()
    assert audit.dropped == 5
    assert sum("cannot write to it" in r.getMessage() for r in caplog.records) == 1


def test_a_failed_reopen_keeps_the_file_it_had(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "audit.log"
    path.parent.mkdir()
    audit = AuditLog(path=str(path))
    assert audit.open()
    os.rename(path, tmp_path / "audit.log.1")
    path.parent.rmdir()  # logrotate's directory gone: the reopen fails
    audit.reopen()
    audit.record("login", "alice", "user:alice")
    audit.close()
    assert json.loads((tmp_path / "audit.log.1").read_text())["actor"] == "alice"


def test_disabled_writes_nothing(tmp_path: Path) -> None:
    audit = AuditLog(str(tmp_path), enabled=False)
    assert not audit.open()
    audit.record("login", "alice", "user:alice")
    assert not (tmp_path / "audit.log").exists()
