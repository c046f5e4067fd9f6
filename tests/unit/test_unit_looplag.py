"""uws/looplag.py: a blocked event loop is reported with how long and with what blocked it; a
loop that keeps turning is not."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from uws.looplag import LoopWatch


def block_the_loop_for(seconds: float) -> None:
    time.sleep(seconds)


async def watched(work: float, blocked: float) -> LoopWatch:
    watch = LoopWatch(0.05)
    watch.start()
    try:
        await asyncio.sleep(0.1)
        if blocked:
            block_the_loop_for(blocked)
        await asyncio.sleep(work)
    finally:
        watch.close()
    return watch


def test_a_stall_is_logged_with_the_blocking_call(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="uws.looplag"):
        watch = asyncio.run(watched(0.1, 0.3))
    assert watch.stalls == 1
    (record,) = caplog.records
    assert "blocked for" in record.getMessage()
    assert "block_the_loop_for" in record.getMessage()
    assert "time.sleep(seconds)" in record.getMessage()


def test_a_turning_loop_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="uws.looplag"):
        watch = asyncio.run(watched(0.3, 0))
    assert watch.stalls == 0
    assert not caplog.records
