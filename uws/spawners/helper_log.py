"""A session helper that ended before it reported to the server: its cause, from the first
lines of the error output it left in helper.log, made into the job's end (a bounded message,
with the fix where the cause is a known deployment mistake).

helper.log holds what sudo, the interpreter and the helper write to standard error. The helper
reads the job secret and the session token from standard input and never writes them; the
service still removes them from whatever reaches the job (uws.sessions.launch)."""

from __future__ import annotations

import re
from typing import Any

from ..sessions.helper_app import PREFIX
from .access import PYTHON_FIX

HEAD_BYTES = 8192  # read from helper.log: its first lines are the cause
CAUSE_LINES = 5
CAUSE_CHARS = 500
LOG_TAIL_CHARS = 2000

# Causes that come from the deployment, not the session, and what fixes them.
# sudo's words when it cannot run the interpreter, env(1)'s (with helper_pythonpath), Python's.
INTERPRETER = re.compile(
    r"unable to execute|command not found|env: .*: (Permission denied|No such file or directory)"
    r"|No module named '?(uws|zmq|psutil)\b"
)
SUDO_REFUSED = re.compile(r"sudo: (a password is required|sorry, user .* is not allowed)")
SUDO_FIX = (
    "The server's account needs a sudoers rule that lets it run the session helper as session "
    "accounts without a password (see the README's Sessions section)."
)
UNPRINTABLE = re.compile(r"[^\t\n\x20-\x7e\xa0-\uffff]")
# Written by every helper as it starts: not a cause.
HELPER_STARTED = re.compile(re.escape(PREFIX) + r" job \d+: helper pid \d+")


def cause_lines(text: str) -> list[str]:
    """The first lines that say something, a Python traceback cut down to its exception."""
    lines: list[str] = []
    in_traceback = False
    for line in text.splitlines():
        if not line.strip() or HELPER_STARTED.match(line):
            continue
        if line.startswith("Traceback (most recent call last):"):
            in_traceback = True
            continue
        if in_traceback and line[:1].isspace():
            continue
        in_traceback = False
        lines.append(line.strip())
        if len(lines) == CAUSE_LINES:
            break
    return lines


def bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def start_failure(raw: bytes | None, exit_code: int | None) -> dict[str, Any]:
    """How the session ended, for a helper that exited before reporting, from the head of its
    helper.log (`raw`): as the helper's own exit.json would say it, with the cause as message."""
    text = UNPRINTABLE.sub("?", (raw or b"")[:HEAD_BYTES].decode("utf-8", "replace"))
    cause = bounded("; ".join(cause_lines(text)), CAUSE_CHARS)
    message = "The session helper could not start"
    message += f": {cause.rstrip('.')}." if cause else ", and left no error output."
    if INTERPRETER.search(cause):
        message += f" {PYTHON_FIX}"
    elif SUDO_REFUSED.search(cause):
        message += f" {SUDO_FIX}"
    return {
        "reason": "launch_failed",
        "message": message,
        "exit_code": exit_code,
        "log_tail": bounded(text.strip(), LOG_TAIL_CHARS),
    }
