"""What the session channel's tests share: a recorder standing in for the server's message
handler, with one job's secret, and a wait inside the event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


class Recorder:
    """The channel's secret lookup (one job, one secret) and handler (keeps every message)."""

    def __init__(self, job: int, secret: str) -> None:
        self.job = job
        self.secret = secret
        self.messages: list[dict[str, Any]] = []

    async def secret_for(self, job_id: int) -> str | None:
        return self.secret if job_id == self.job else None

    async def handler(self, job_id: int, message: dict[str, Any]) -> None:
        self.messages.append(message)


async def eventually(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """The first truthy value of `predicate()`, polled in the running loop until `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")
