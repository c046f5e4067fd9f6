"""The server end of the ZeroMQ channel to session helpers (see protocol.py)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import zmq
import zmq.asyncio

from . import protocol

log = logging.getLogger("uws.channel")

SecretLookup = Callable[[int], Awaitable[str | None]]
Handler = Callable[[int, dict[str, Any]], Awaitable[None]]


class SessionChannel:
    def __init__(self, url: str, secret_for: SecretLookup, handler: Handler) -> None:
        self.url = url
        self.secret_for = secret_for
        self.handler = handler
        self.socket: Any = None
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.guard = protocol.ReplayGuard()

    def bind(self) -> None:
        """Bind the ROUTER socket; call from the running event loop."""
        self.socket = zmq.asyncio.Context.instance().socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting helper takes over its identity
        if self.url.startswith("ipc://"):
            path = self.url[len("ipc://") :]
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if os.path.exists(path):
                os.unlink(path)  # left by a previous run; helpers reconnect to the new socket
        self.socket.bind(self.url)
        if self.url.startswith("ipc://"):
            # Helpers of every session account must reach it; messages are authenticated by HMAC.
            os.chmod(self.url[len("ipc://") :], 0o777)
        self._task = asyncio.ensure_future(self._receive_loop())

    async def _receive_loop(self) -> None:
        while True:
            try:
                frames = await self.socket.recv_multipart()
            except asyncio.CancelledError:
                return
            except zmq.ZMQError:
                log.exception("session channel receive failed")
                await asyncio.sleep(0.1)
                continue
            if len(frames) < 3:
                self.dropped += 1
                continue
            ident, body = frames[0], frames[1:]
            job_id = protocol.job_id_from_identity(ident)
            secret = await self.secret_for(job_id) if job_id is not None else None
            message = protocol.decode(secret, body) if secret else None
            if message is None or message.get("job_id") != job_id or not self.guard.accept(job_id, message):
                self.dropped += 1
                log.warning(
                    "Dropped a session message that failed verification (signature, job, age or order; sender %r)",
                    ident[:40],
                )
                continue
            if message.get("type") == "exited":
                await self.send(job_id, secret, {"type": "ack", "ack_seq": message.get("seq")})
            try:
                await self.handler(job_id, message)
            except Exception:
                log.exception("Handling %s from job %s failed", message.get("type"), job_id)

    async def send(self, job_id: int, secret: str, message: dict[str, Any]) -> None:
        if self.socket is None:
            return
        self._seq += 1
        message = {**message, "job_id": job_id, "seq": self._seq}
        try:
            await self.socket.send_multipart([protocol.identity(job_id), *protocol.encode(secret, message)])
        except zmq.ZMQError:
            log.debug("Job %s helper not connected; %s not delivered", job_id, message["type"])

    def close(self) -> None:
        if self._task:
            self._task.cancel()
        if self.socket is not None:
            self.socket.close(0)
