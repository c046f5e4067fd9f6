"""A watch on the event loop, for finding what stalls it (UWSApp.loop_stall_seconds).

Everything the server does runs on one loop: a callback that blocks it (a synchronous file
read, a process scan, a long garbage collection) delays every request and every pushed event
by as long. The loop marks each of its turns; a thread checks the mark, and when the loop has
not come round for `threshold` seconds it samples the loop thread's stack (sys._current_frames),
which names the blocking call while it still blocks. Once the loop runs again, the stall is
logged with its length and the stacks seen, at most a few different ones.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import threading
import time
import traceback

log = logging.getLogger("uws.looplag")

# Different stacks kept per stall.
MAX_STACKS = 3


class LoopWatch:
    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.tick = threshold / 4
        self.stalls = 0
        self._last = 0.0  # (start() sets it, and _loop_thread, on the loop's thread)
        self._stacks: list[str] = []
        self._gc_seconds = 0.0
        self._gc_began = 0.0
        self._stopped = threading.Event()
        self._loop_thread = 0
        self._handle: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """On the loop's thread, with the loop running."""
        self._loop_thread = threading.get_ident()
        self._loop = asyncio.get_running_loop()
        self._last = time.monotonic()
        gc.callbacks.append(self._gc)
        self._handle = self._loop.call_later(self.tick, self._turn)
        self._thread = threading.Thread(target=self._watch, name="uws-looplag", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopped.set()
        if self._handle is not None:
            self._handle.cancel()
        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        # Collections on the loop's thread count towards its stall (they show in no stack).
        if threading.get_ident() != self._loop_thread:
            return
        if phase == "start":
            self._gc_began = time.perf_counter()
        else:
            self._gc_seconds += time.perf_counter() - self._gc_began

    def _turn(self) -> None:
        now = time.monotonic()
        late = now - self._last - self.tick
        if late >= self.threshold:
            self.stalls += 1
            log.warning(
                "The event loop was blocked for %.0f ms (%.0f ms of it garbage collection)%s",
                late * 1000,
                self._gc_seconds * 1000,
                "".join(f"\n-- the loop's thread was at:\n{s}" for s in self._stacks) or " (no stack seen)",
            )
        self._stacks = []
        self._gc_seconds = 0.0
        self._last = now
        self._handle = self._loop.call_later(self.tick, self._turn)

    def _watch(self) -> None:
        while not self._stopped.wait(self.tick):
            if time.monotonic() - self._last - self.tick < self.threshold / 2:
                continue
            frame = sys._current_frames().get(self._loop_thread)
            if frame is None:
                continue
            stack = "".join(traceback.format_stack(frame)[-12:])
            if stack not in self._stacks and len(self._stacks) < MAX_STACKS:
                self._stacks.append(stack)
