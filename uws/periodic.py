"""Checks the server repeats on its event loop (idle culling, time-left warnings, reconciling
sessions): one run every so many seconds, for as long as the server runs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any


async def every(
    seconds: Callable[[], float], check: Callable[[], Awaitable[Any]], what: str, log: logging.Logger
) -> None:
    """Run `check` every `seconds()` (read anew each time, so a changed setting applies) until
    cancelled. A run that fails is logged and the next one goes ahead: one bad session must not
    end the check for all the others."""
    while True:
        await asyncio.sleep(seconds())
        try:
            await check()
        except Exception:
            log.exception("%s failed; trying again later", what)
