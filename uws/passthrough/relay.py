"""The one HTTP relay: a request to a session, and its answer back to the browser.

Every entry point relays through `relay` (the front door, connections already handed to
Tornado, and the full handler for bodies and token exchanges); they differ only in how bytes
reach the browser, which each says through an `Answer`. What changes on the way (headers,
cookies, the path) is uws.passthrough.wire's; the answer when the session does not answer
(502, or 504 when it is too slow) is decided here, once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Protocol

from ..errors import error_body
from . import wire
from .head import Head, ResponseHead
from .upstream import UpstreamError

if TYPE_CHECKING:
    from .service import ProxyService, Target

log = logging.getLogger("uws.proxy")


class Answer(Protocol):
    """Where a relayed answer goes: the browser's connection, as one entry point holds it."""

    def start(self, head: ResponseHead, headers: Head) -> None:
        """The session's answer begins: its head, and its headers as the browser gets them."""

    def write(self, chunk: bytes) -> Awaitable[None] | None:
        """A piece of the body; awaited before the next is read from the session."""

    def end(self) -> None:
        """The whole answer has been relayed."""

    def fail(self, status: int, body: bytes) -> bool:
        """The session did not answer (fully): send this JSON error if nothing of the answer
        went out yet (True), or else cut the connection, as a truncated body must not pass for
        whole (False)."""


async def relay(
    service: ProxyService,
    target: Target,
    method: str,
    path: str,
    headers: Head,
    body: AsyncIterator[bytes] | None,
    answer: Answer,
    keep_length: bool = True,
) -> int:
    """Relay one request (`path` as the browser sent it, `headers` as wire.forward_headers made
    them) and stream the answer to `answer`; the status the browser was sent."""
    status = 0

    def on_head(head: ResponseHead) -> None:
        nonlocal status
        status = head.code
        answer.start(head, wire.response_headers(head.headers, keep_length, target, path))

    def on_chunk(chunk: bytes) -> Awaitable[None] | None:
        service.touch(target, bytes_out=len(chunk))
        return answer.write(chunk)

    service.touch(target)
    try:
        await service.pool.fetch(
            target.host,
            target.port,
            method,
            wire.upstream_uri(target, path),
            headers,
            body,
            on_head,
            on_chunk,
            *service.timeouts,
        )
    except UpstreamError as e:
        log.debug("Passthrough to job %s failed: %s", target.job_id, e)
        service.counts.upstream_error(e.timeout)
        failure = wire.upstream_failure(e.timeout)
        if answer.fail(failure.status, error_body(failure.message)):
            status = failure.status
        service.counts.answered(status)
        return status
    answer.end()
    service.counts.answered(status)
    return status
