"""What websockets need beside their handlers: the single-use tickets browsers open them with
(they cannot set the UWS-Authorization header), and the count of each user's open websockets."""

from __future__ import annotations

import collections
import secrets
import time
from typing import Any

from traitlets import Integer
from traitlets.config import LoggingConfigurable

from .auth.tokens import CurrentUser

TICKET_SECONDS = 60
# Unredeemed tickets one user may hold: far more than a browser opening its sockets needs, and
# it keeps one user's flood of POST /ws_tickets/ from growing the store without bound.
MAX_TICKETS_PER_USER = 100


class TicketStore:
    """Single-use tickets, kept in the order they were issued. Every ticket lives equally long,
    so that is also the order they expire in: clearing the expired ones looks only at the oldest
    few, however many are outstanding."""

    def __init__(self) -> None:
        self._tickets: collections.OrderedDict[str, tuple[float, CurrentUser, str]] = (
            collections.OrderedDict()
        )
        self._per_user: collections.Counter[int] = collections.Counter()

    def _forget(self, entry: tuple[float, CurrentUser, str]) -> None:
        user_id = entry[1].id
        self._per_user[user_id] -= 1
        if self._per_user[user_id] <= 0:
            del self._per_user[user_id]

    def _expire(self, now: float) -> None:
        while self._tickets:
            ticket, entry = next(iter(self._tickets.items()))
            if entry[0] >= now:
                return
            del self._tickets[ticket]
            self._forget(entry)

    def issue(self, user: CurrentUser, header: str) -> str | None:
        """A new ticket; None when the user already holds as many as they may."""
        now = time.monotonic()
        self._expire(now)
        if self._per_user[user.id] >= MAX_TICKETS_PER_USER:
            return None
        ticket = secrets.token_urlsafe(24)
        self._tickets[ticket] = (now + TICKET_SECONDS, user, header)
        self._per_user[user.id] += 1
        return ticket

    def redeem(self, ticket: str) -> tuple[CurrentUser, str] | None:
        entry = self._tickets.pop(ticket, None)
        if entry is None:
            return None
        self._forget(entry)
        if entry[0] < time.monotonic():
            return None
        return entry[1], entry[2]


class WebSocketCounter(LoggingConfigurable):
    """Open websockets per user (event streams and relayed session websockets alike), held to
    `max_per_user` so one user cannot hold the server's connections."""

    max_per_user = Integer(
        100,
        help="""Websockets one user may have open at once: event streams plus relayed session
        websockets (counted against the session's owner). More are refused with 429.""",
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.open: collections.Counter[int] = collections.Counter()
        self.refusal = f"Too many open websockets (at most {self.max_per_user} per user); close some first."

    def acquire(self, user_id: int) -> bool:
        if self.open[user_id] >= self.max_per_user:
            return False
        self.open[user_id] += 1
        return True

    def release(self, user_id: int) -> None:
        self.open[user_id] -= 1
        if self.open[user_id] <= 0:
            del self.open[user_id]
