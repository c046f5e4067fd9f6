"""User tokens: issued at login or made as scoped API tokens, stored only hashed, optionally
expiring, revocable. What a token lets a request do is uws.auth.scopes'."""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, select

from .. import orm
from ..errors import APIError, not_authenticated
from ..utils import hash_token, isoformat, new_token, utcnow
from .scopes import ADMIN_SCOPES, USER_SCOPES, CurrentUser, parse_scopes

__all__ = ["ADMIN_SCOPES", "USER_SCOPES", "CurrentUser", "TokenService", "user_from_row"]

# The longest an API token may be made for (expires_in, seconds): ten years.
MAX_EXPIRES_IN = 10 * 365 * 24 * 3600
MAX_NOTE_LENGTH = 255


def user_from_row(
    row: orm.User, admin_users: Iterable[str] = (), token: orm.ApiToken | None = None
) -> CurrentUser:
    """The request's user: an admin if the database or c.UWSApp.admin_users says so, holding
    the token's scopes (None: a login token, the owner's full rights)."""
    scopes = None if token is None or token.scopes is None else frozenset(token.scopes)
    return CurrentUser(
        row.id,
        row.username,
        row.email,
        row.first_name,
        row.last_name,
        is_admin=is_admin(row, admin_users),
        scopes=scopes,
        token_id=token.id if token is not None else 0,
    )


def is_admin(row: orm.User, admin_users: Iterable[str]) -> bool:
    return bool(row.is_admin) or row.username in admin_users


def token_model(token: orm.ApiToken, current_id: int) -> dict[str, Any]:
    """A token as GET /tokens/api/ lists it: never its key or its hash."""
    return {
        "id": token.id,
        "note": token.note or "",
        "scopes": None if token.scopes is None else sorted(token.scopes),
        "datetime_created": isoformat(token.datetime_created),
        "expires_at": isoformat(token.expires_at),
        "current": token.id == current_id,
    }


def parse_expires_in(value: Any, default_seconds: int) -> int:
    """Seconds a new API token lives (0: until revoked, only as the server's default)."""
    if value is None:
        return default_seconds
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_EXPIRES_IN:
        raise APIError(400, f"expires_in must be a whole number of seconds from 1 to {MAX_EXPIRES_IN}.")
    return value


def parse_note(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_NOTE_LENGTH:
        raise APIError(400, f"note must be text of at most {MAX_NOTE_LENGTH} characters.")
    return value


class TokenService:
    """Checks `UWS-Authorization` headers, and makes, lists and revokes tokens.

    Lookups are cached for `cache_seconds` so that busy clients do not cost a query per request;
    a revocation, deactivation or demotion in this process drops the entries at once, and
    changes made by another process (such as `uws` CLI commands) are seen within `cache_seconds`.
    """

    def __init__(
        self,
        db: Any,
        expiry_seconds: int = 0,
        cache_seconds: float = 2.0,
        admin_users: Iterable[str] = (),
    ) -> None:
        self.db = db
        self.expiry_seconds = expiry_seconds
        self.cache_seconds = cache_seconds
        self.admin_users = frozenset(admin_users)
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
        return self.valid(user, expires_at, active)

    async def authenticate_token_id(self, token_id: int) -> CurrentUser:
        """As authenticate, for the token with this id (never cached): what a websocket opened
        with a ticket re-checks, the ticket having kept the token's id and not its key."""
        user, expires_at, active = await self.db.run(lambda s: self.lookup_id(s, token_id))
        return self.valid(user, expires_at, active)

    @staticmethod
    def valid(user: CurrentUser | None, expires_at: _dt.datetime | None, active: bool) -> CurrentUser:
        if user is None:
            raise not_authenticated("Invalid token provided.")
        if expires_at is not None and expires_at <= utcnow():
            raise not_authenticated("Token has expired.")
        if not active:
            raise not_authenticated("User inactive or deleted.")
        return user

    def _lookup(self, session: Any, digest: str) -> tuple[CurrentUser | None, _dt.datetime | None, bool]:
        return self._lookup_where(session, orm.ApiToken.token_hash == digest)

    def lookup_id(self, session: Any, token_id: int) -> tuple[CurrentUser | None, _dt.datetime | None, bool]:
        return self._lookup_where(session, orm.ApiToken.id == token_id)

    def _lookup_where(
        self, session: Any, condition: Any
    ) -> tuple[CurrentUser | None, _dt.datetime | None, bool]:
        row = session.execute(
            select(orm.ApiToken, orm.User)
            .join(orm.User, orm.User.id == orm.ApiToken.user_id)
            .where(condition)
        ).first()
        if row is None:
            return None, None, False
        token, user = row
        return user_from_row(user, self.admin_users, token), token.expires_at, user.is_active

    def forget_user(self, user_id: int) -> None:
        """Drop the cached lookups of a user's tokens, so that a change to the user (deactivated,
        demoted) counts from this process's next request on."""
        for digest in [
            d for d, entry in self._cache.items() if entry[1] is not None and entry[1].id == user_id
        ]:
            self._cache.pop(digest, None)

    def forget_cache(self) -> None:
        self._cache.clear()

    def issue(self, session: Any, user_id: int) -> tuple[str, _dt.datetime | None]:
        """Add a new login key (full rights) to the session; returned once, never stored."""
        key, token = self._add(session, user_id, None, self.expiry_seconds, "")
        return key, token.expires_at

    async def limit_to_browser(self, key: str, seconds: int) -> CurrentUser:
        """Make the login token `key` a browser session's: it ends after `seconds` at the
        latest (sooner if the server's token expiry says so), and GET /tokens/api/ lists it as
        the web browser's. Returns its user."""
        digest = hash_token(key)
        ends = utcnow() + _dt.timedelta(seconds=seconds)

        def _limit(session: Any) -> None:
            token = session.scalar(select(orm.ApiToken).where(orm.ApiToken.token_hash == digest))
            if token is None:
                raise not_authenticated("Invalid token provided.")
            if token.expires_at is None or token.expires_at > ends:
                token.expires_at = ends
            token.note = "web browser"

        await self.db.run(_limit)
        self._cache.pop(digest, None)
        return await self.authenticate(f"Token {key}")

    @staticmethod
    def _add(
        session: Any, user_id: int, scopes: frozenset[str] | None, expires_in: int, note: str
    ) -> tuple[str, orm.ApiToken]:
        key = new_token()
        expires_at = utcnow() + _dt.timedelta(seconds=expires_in) if expires_in else None
        token = orm.ApiToken(
            user_id=user_id,
            token_hash=hash_token(key),
            expires_at=expires_at,
            scopes=None if scopes is None else sorted(scopes),
            note=note,
        )
        session.add(token)
        session.flush()
        return key, token

    async def create_api_token(self, caller: CurrentUser, body: dict[str, Any]) -> dict[str, Any]:
        """POST /tokens/api/: a new token with a subset of the calling request's rights. The
        answer holds the key, once; nothing is created when any field is wrong."""
        scopes = parse_scopes(body.get("scopes"), caller)
        expires_in = parse_expires_in(body.get("expires_in"), self.expiry_seconds)
        note = parse_note(body.get("note"))

        def _create(session: Any) -> dict[str, Any]:
            key, token = self._add(session, caller.id, scopes, expires_in, note)
            return {**token_model(token, caller.token_id), "token": key}

        return await self.db.run(_create)

    async def list_tokens(self, caller: CurrentUser) -> list[dict[str, Any]]:
        """GET /tokens/api/: every token of the caller (login tokens have scopes null)."""

        def _list(session: Any) -> list[dict[str, Any]]:
            rows = session.scalars(
                select(orm.ApiToken).where(orm.ApiToken.user_id == caller.id).order_by(orm.ApiToken.id)
            )
            return [token_model(t, caller.token_id) for t in rows]

        return await self.db.run(_list)

    async def revoke_token(self, caller: CurrentUser, token_id: int) -> None:
        """DELETE /tokens/api/<id>/: one of the caller's tokens. A token may revoke itself, or
        a token that holds no right it does not hold itself (a read-only token cannot log out a
        full-rights one)."""

        def _revoke(session: Any) -> str:
            token = session.get(orm.ApiToken, token_id)
            if token is None or token.user_id != caller.id:
                raise APIError(404, f"Token {token_id} not found for user.")
            scopes = None if token.scopes is None else frozenset(token.scopes)
            if token.id != caller.token_id and not caller.covers(scopes):
                raise APIError(403, "This token cannot revoke a token with more rights than its own.")
            session.delete(token)
            return str(token.token_hash)

        self._cache.pop(await self.db.run(_revoke), None)

    async def revoke(self, header: str | None, user_id: int, everything: bool) -> None:
        """DELETE /tokens/: the token of the header, or (everything) all of the user's."""
        if everything:
            await self.revoke_all(user_id)
            return
        digest = hash_token(self.parse_header(header))
        await self.db.run(
            lambda s: s.execute(
                delete(orm.ApiToken).where(orm.ApiToken.user_id == user_id, orm.ApiToken.token_hash == digest)
            )
        )
        self._cache.pop(digest, None)

    async def revoke_all(self, user_id: int) -> int:
        """Every token of the user (logout ?all=true, or an admin's DELETE); how many there were."""

        def _revoke(session: Any) -> list[str]:
            hashes = session.scalars(
                select(orm.ApiToken.token_hash).where(orm.ApiToken.user_id == user_id)
            ).all()
            session.execute(delete(orm.ApiToken).where(orm.ApiToken.user_id == user_id))
            return list(hashes)

        hashes = await self.db.run(_revoke)
        for digest in hashes:
            self._cache.pop(digest, None)
        self.forget_user(user_id)
        return len(hashes)


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
