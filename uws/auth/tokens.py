"""User tokens: issued at login, stored only hashed, optionally expiring, revocable."""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select

from .. import orm
from ..errors import not_authenticated
from ..utils import hash_token, new_token, utcnow

# What a user may do through the API. Every user holds the first three; admins hold all five.
# A token carries a subset of its owner's rights (scopes); the original API's login tokens carry
# no scope list and so hold everything their owner holds.
USER_SCOPES = frozenset({"read", "workspaces", "sessions"})
ADMIN_SCOPES = USER_SCOPES | {"admin", "metrics"}


@dataclass(frozen=True)
class CurrentUser:
    id: int
    username: str
    email: str
    first_name: str
    last_name: str
    is_admin: bool = False
    # The token's scopes; None for a token with its owner's full rights.
    scopes: frozenset[str] | None = None

    def rights(self) -> frozenset[str]:
        """What this request may do: the owner's rights now, narrowed by the token's scopes."""
        held = ADMIN_SCOPES if self.is_admin else USER_SCOPES
        if self.scopes is None:
            return held
        granted = set(self.scopes)
        if "admin" in granted:
            granted |= {"metrics"}  # an admin token may read the metrics too
        return held & granted

    def may(self, scope: str) -> bool:
        return scope in self.rights()


def user_from_row(row: orm.User) -> CurrentUser:
    return CurrentUser(row.id, row.username, row.email, row.first_name, row.last_name)


class TokenService:
    """Checks `UWS-Authorization` headers.

    Lookups are cached for `cache_seconds` so that busy clients do not cost a query per request;
    logout in this process drops the entry at once, and changes made by another process (such
    as `uws` CLI commands) are seen within `cache_seconds`.
    """

    def __init__(self, db: Any, expiry_seconds: int = 0, cache_seconds: float = 2.0) -> None:
        self.db = db
        self.expiry_seconds = expiry_seconds
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, CurrentUser | None, _dt.datetime | None, bool]] = {}

    @staticmethod
    def parse_header(header: str | None) -> str:
        if header is None:
            raise not_authenticated("Authentication credentials were not provided.")
        parts = header.split()
        if len(parts) != 2 or parts[0].lower() not in ("token", "bearer"):
            raise not_authenticated("Invalid auth header format.")
        return parts[1]

    async def authenticate(self, header: str | None) -> CurrentUser:
        key = self.parse_header(header)
        digest = hash_token(key)
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is None or now - cached[0] > self.cache_seconds:
            user, expires_at, active = await self.db.run(lambda s: self._lookup(s, digest))
            cached = (now, user, expires_at, active)
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[digest] = cached
        _, user, expires_at, active = cached
        if user is None:
            raise not_authenticated("Invalid token provided.")
        if expires_at is not None and expires_at <= utcnow():
            raise not_authenticated("Token has expired.")
        if not active:
            raise not_authenticated("User inactive or deleted.")
        return user

    @staticmethod
    def _lookup(session: Any, digest: str) -> tuple[CurrentUser | None, _dt.datetime | None, bool]:
        row = session.execute(
            select(orm.ApiToken, orm.User)
            .join(orm.User, orm.User.id == orm.ApiToken.user_id)
            .where(orm.ApiToken.token_hash == digest)
        ).first()
        if row is None:
            return None, None, False
        token, user = row
        return user_from_row(user), token.expires_at, user.is_active

    def issue(self, session: Any, user_id: int) -> tuple[str, _dt.datetime | None]:
        """Add a new key for the user to the session; the key is returned once, never stored."""
        key = new_token()
        expires_at = None
        if self.expiry_seconds:
            expires_at = utcnow() + _dt.timedelta(seconds=self.expiry_seconds)
        session.add(orm.ApiToken(user_id=user_id, token_hash=hash_token(key), expires_at=expires_at))
        return key, expires_at

    async def revoke(self, header: str | None, user_id: int, everything: bool) -> None:
        digest = hash_token(self.parse_header(header))

        def _revoke(session: Any) -> list[str]:
            query = delete(orm.ApiToken).where(orm.ApiToken.user_id == user_id)
            if not everything:
                query = query.where(orm.ApiToken.token_hash == digest)
            hashes = session.scalars(
                select(orm.ApiToken.token_hash).where(orm.ApiToken.user_id == user_id)
            ).all()
            session.execute(query)
            return list(hashes) if everything else [digest]

        for h in await self.db.run(_revoke):
            self._cache.pop(h, None)


def create_client_token(session: Any, name: str) -> str:
    key = new_token()
    existing = session.scalar(select(orm.ClientToken).where(orm.ClientToken.name == name))
    if existing is not None:
        existing.token_hash = hash_token(key)
        existing.revoked = False
    else:
        session.add(orm.ClientToken(name=name, token_hash=hash_token(key)))
    return key


def client_token_valid(session: Any, key: Any) -> bool:
    if not isinstance(key, str) or not key:
        return False
    row = session.scalar(select(orm.ClientToken).where(orm.ClientToken.token_hash == hash_token(key)))
    return row is not None and not row.revoked
