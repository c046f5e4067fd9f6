"""What websockets need beside their handlers: the single-use tickets browsers open them with
(they cannot set the UWS-Authorization header), and the count of each user's open websockets."""

from __future__ import annotations

import collections
import secrets
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select
from traitlets import Integer
from traitlets.config import LoggingConfigurable

from . import orm
from .auth.tokens import CurrentUser
from .errors import APIError
from .utils import hash_token

if TYPE_CHECKING:
    from .auth.tokens import TokenService
    from .db import Database

TICKET_SECONDS = 60
# Unredeemed tickets one user may hold: far more than a browser opening its sockets needs, and
# it keeps one user's flood of POST /ws_tickets/ from growing the store without bound.
MAX_TICKETS_PER_USER = 100


class TicketStore:
    """Single-use tickets, kept in the database so that any server process sharing it redeems
    them (a browser's socket may reach another process than its POST /ws_tickets/ did). A row
    holds the ticket's SHA-256, its user, the id of the token it stands for and its expiry:
    never the token's key (a browser's is its session's login key). The socket re-checks that
    token by id for as long as it is open (uws.handlers.ws), as it would the key."""

    def __init__(self, db: Database, auth: TokenService) -> None:
        self.db = db
        self.auth = auth

    async def issue(self, user: CurrentUser) -> str | None:
        """A new ticket for the token `user` came with; None when the user already holds as
        many as they may."""
        ticket = secrets.token_urlsafe(24)

        def _issue(session: Any) -> bool:
            now = time.time()
            # Expired tickets go as new ones come (the index on expires_at keeps this cheap).
            session.execute(delete(orm.WebSocketTicket).where(orm.WebSocketTicket.expires_at < now))
            held = session.scalar(select(func.count()).where(orm.WebSocketTicket.user_id == user.id))
            if held >= MAX_TICKETS_PER_USER:
                return False
            session.add(
                orm.WebSocketTicket(
                    ticket_hash=hash_token(ticket),
                    user_id=user.id,
                    token_id=user.token_id,
                    expires_at=now + TICKET_SECONDS,
                )
            )
            return True

        return ticket if await self.db.run(_issue) else None

    async def redeem(self, ticket: str) -> CurrentUser | None:
        """The user (as of now, through the ticket's token) of an unused, unexpired ticket,
        which is used up here: deleting the row is what makes it single-use on every process."""
        digest = hash_token(ticket)

        def _redeem(session: Any) -> CurrentUser | None:
            # Read first: a made-up ticket (anyone may send one) costs a read, never a write,
            # which on SQLite would queue behind, and hold up, every other writer.
            row = session.execute(
                select(orm.WebSocketTicket.token_id, orm.WebSocketTicket.expires_at).where(
                    orm.WebSocketTicket.ticket_hash == digest
                )
            ).first()
            if row is None:
                return None
            used = session.execute(
                delete(orm.WebSocketTicket).where(orm.WebSocketTicket.ticket_hash == digest)
            )
            if used.rowcount != 1 or row.expires_at < time.time():
                return None  # (another process redeemed it first, or it is too old)
            user, expires_at, active = self.auth.lookup_id(session, row.token_id)
            try:
                return self.auth.valid(user, expires_at, active)
            except APIError:
                return None

        return await self.db.run(_redeem)


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
