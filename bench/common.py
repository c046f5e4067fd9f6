"""What the benchmark scripts share: a `uws` server process on SQLite in a work directory,
started and stopped by the tests' harness (tests/helpers/harness.py)."""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.path.join(HERE, ".work")

# The benchmarks run as scripts (python bench/x.py), so only bench/ is on sys.path; the helpers
# they share with the tests live in tests/helpers/ (test code, kept out of the uws package).
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from helpers.harness import Server  # noqa: E402


def start_server(workdir: str, config_text: str, code: str | None = None) -> tuple[Server, float]:
    """Start `uws` with this config, its data in `workdir` (an existing, empty directory, which
    Server.close() removes); return it and the seconds from start to the first answered request.
    `code`: another checkout of UWS to run instead of this one (its directory goes first on
    PYTHONPATH), to compare two versions side by side."""
    env = {"PYTHONPATH": os.path.abspath(code)} if code else None
    server = Server("sqlite", config_text, directory=workdir, env=env).start(poll_seconds=0.005)
    return server, server.startup_seconds
