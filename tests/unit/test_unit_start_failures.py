"""Start failures, in process: the cause read from a helper's output, and whether an account can
reach the helper's interpreter from the permission bits."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from uws.auth.accounts import Account
from uws.spawners.access import EXECUTE, PYTHON_FIX, barrier, helper_access_problem
from uws.spawners.helper_log import CAUSE_CHARS, start_failure

STRANGER = Account("stranger", 54321, 54321, frozenset({54321}))


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every account may enter (pytest's own tmp_path may sit in a closed one)."""
    path = tempfile.mkdtemp(prefix="uws-unit-")
    os.chmod(path, 0o755)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


def test_sudo_refusing_to_execute_the_python_says_how_to_fix_it() -> None:
    raw = b"sudo: unable to execute /root/venv/bin/python: Permission denied\n"
    ended = start_failure(raw, 1)
    assert ended["reason"] == "launch_failed" and ended["exit_code"] == 1
    assert ended["message"] == (
        "The session helper could not start: sudo: unable to execute /root/venv/bin/python:"
        f" Permission denied. {PYTHON_FIX}"
    )


def test_env_refusing_to_execute_the_python_says_how_to_fix_it() -> None:
    """With helper_pythonpath the interpreter is run through env(1), which says it instead."""
    raw = "env: ‘/root/venv/bin/python’: Permission denied\n".encode()
    assert start_failure(raw, 126)["message"].endswith(f"Permission denied. {PYTHON_FIX}")


def test_a_traceback_comes_down_to_its_exception_and_the_helpers_own_line_is_left_out() -> None:
    raw = (
        b"uws-session-helper: job 7: helper pid 123, endpoint ipc:///srv/uws-channel/sessions.sock\n"
        b"Traceback (most recent call last):\n"
        b'  File "<frozen runpy>", line 198, in _run_module_as_main\n'
        b"    import zmq\n"
        b"ModuleNotFoundError: No module named 'zmq'\n"
    )
    message = start_failure(raw, 1)["message"]
    assert message.startswith(
        "The session helper could not start: ModuleNotFoundError: No module named 'zmq'."
    )
    assert "helper pid" not in message and PYTHON_FIX in message


def test_the_cause_is_bounded_and_printable() -> None:
    raw = b"\x1b[31merror\x1b[0m " + b"x" * 5000 + b"\n" + b"more\n" * 100
    ended = start_failure(raw, 2)
    assert "\x1b" not in ended["message"] and "\x1b" not in ended["log_tail"]
    assert len(ended["message"]) < CAUSE_CHARS + 100
    assert len(ended["log_tail"]) <= 2000


def test_no_output_says_so() -> None:
    assert start_failure(b"", 9)["message"] == "The session helper could not start, and left no error output."
    assert start_failure(None, None)["exit_code"] is None


def test_a_closed_directory_on_the_way_is_the_barrier(open_dir: Path) -> None:
    closed = open_dir / "home"
    closed.mkdir(mode=0o700)
    python = closed / "python3"
    python.write_text("")
    python.chmod(0o755)
    assert barrier(str(python), STRANGER, EXECUTE) == str(closed)
    # Through a symlink in an open directory, as a virtualenv's python points into a home.
    link = open_dir / "python"
    link.symlink_to(python)
    assert barrier(str(link), STRANGER, EXECUTE) == str(closed)
    problem = helper_access_problem(str(link), "", STRANGER)
    assert problem is not None and f"({closed} is closed to it)" in problem and PYTHON_FIX in problem
    closed.chmod(0o711)
    assert barrier(str(link), STRANGER, EXECUTE) is None
    python.chmod(0o700)
    assert barrier(str(link), STRANGER, EXECUTE) == str(python)
    # Its owner, its group and root pass where the bits let them; a directory the server opens
    # at start counts as open.
    owner = Account("owner", os.stat(python).st_uid, -1, frozenset())
    assert barrier(str(link), owner, EXECUTE) is None
    closed.chmod(0o700)
    assert barrier(str(python), STRANGER, EXECUTE, frozenset({str(closed)})) == str(python)
    assert barrier(str(python), Account("root", 0, 0, frozenset()), EXECUTE) is None


def test_pythonpath_entries_must_be_readable(open_dir: Path) -> None:
    lib = open_dir / "lib"
    lib.mkdir(mode=0o711)  # enter, not list: imports would fail
    problem = helper_access_problem("/usr/bin/python3", str(lib), STRANGER)
    assert problem is not None and f"cannot read {lib} on the session helper's PYTHONPATH" in problem
    lib.chmod(0o755)
    assert helper_access_problem("/usr/bin/python3", str(lib), STRANGER) is None
