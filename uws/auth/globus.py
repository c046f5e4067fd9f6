"""Globus login through globus-sdk: token mode and OAuth mode (contract 2.1).

The Globus calls themselves (globus-sdk on worker threads) are in uws.auth.globus_api.

- Users are found by their Globus identity id (`sub`) through an ExternalUserMapping. A new user
  gets the local part of the Globus email as username; a collision gets a numeric suffix. An
  existing user with that name and email is taken over only with link_existing_users_by_email.
- With `allowed_globus_groups`, group membership is checked at every login and the result is
  recorded in the mapping's `external_user_details` (B13); Groups API failures fail closed.
- The Globus tokens are never stored.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from traitlets import Bool, Enum, Float, List, Unicode

from .. import orm
from ..errors import APIError, not_authenticated
from ..utils import isoformat, utcnow
from .accounts import AccountProvider, NoAccounts
from .base import Authenticator
from .globus_api import (
    AUTH_RESOURCE_SERVER,
    GROUPS_RESOURCE_SERVER,
    INVALID_CREDENTIALS,
    SERVER_ERROR,
    GlobusAPI,
    GroupsUnavailable,
)

log = logging.getLogger("uws.auth.globus")

NO_GROUPS_TOKEN = "Groups token not available for authentication."
NOT_A_MEMBER = (
    "User is not a member of any allowed Globus groups. Please contact your administrator for access."
)

# Names a Globus login never gets as-is (a collision suffix is added instead).
RESERVED_USERNAMES = frozenset({"admin", "root"})
MAX_USERNAME = 32
_INVALID_USERNAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


def username_base(email: str, fallback: str = "") -> str:
    """The local part of an email (or of a Globus username), as a valid account name."""
    source = email if "@" in email else fallback
    local = source.rsplit("@", 1)[0] if source else ""
    name = _INVALID_USERNAME_CHARS.sub("_", local.lower()).strip(".-")
    if not name:
        name = "globus_user"
    if not (name[0].isascii() and (name[0].isalpha() or name[0] == "_")):
        name = "u" + name
    return name[:MAX_USERNAME]


def username_candidate(base: str, n: int) -> str:
    """base, base1, base2, ...: always at most 32 characters."""
    if n == 0:
        return base
    suffix = str(n)
    return base[: MAX_USERNAME - len(suffix)] + suffix


def split_name(name: str) -> tuple[str, str]:
    first, _, last = name.strip().partition(" ")
    return first[:150], last.strip()[:150]


class GlobusAuthenticator(Authenticator):
    """Users log in with Globus; optionally only members of given Globus groups."""

    client_id = Unicode("", config=True, help="Globus Auth client id of this server.")
    client_secret = Unicode("", config=True, help="Globus Auth client secret of this server.")
    mode = Enum(
        ["token", "oauth"],
        "token",
        config=True,
        help="""'token': clients send a Globus access token with the groups scope
        ({"auth_token": ...}); 'oauth': clients get an authorize URL, then send the code.""",
    )
    allowed_globus_groups = List(
        Unicode(),
        config=True,
        help="""Globus group ids whose members may log in; empty lets every Globus user in.
        Membership is checked at every login.""",
    )
    health_check_url = Unicode("", config=True, help="URL whose 200 answer means Globus is reachable.")
    connect_timeout = Float(5.0, config=True, help="Seconds to connect to Globus Auth and Groups.")
    read_timeout = Float(30.0, config=True, help="Seconds to wait for each Globus answer.")
    link_existing_users_by_email = Bool(
        False,
        config=True,
        help="""On a Globus identity's first login, take over an existing UWS user not yet
        linked to Globus whose username is the email's local part and whose email matches
        (for users created by the API-client login or migrated from the original server).
        Only turn this on when every identity provider your Globus logins accept verifies
        email addresses: otherwise an identity claiming someone's email gets their account.
        Off: such a login gets a new user with a numbered username.""",
    )

    def account_provider(self) -> AccountProvider:
        return NoAccounts()

    async def health(self) -> tuple[bool, str]:
        from ..health import check_url

        return await check_url(self.health_check_url)

    # ---- login -----------------------------------------------------------------------------
    async def login(self, app: Any, body: dict[str, Any]) -> dict[str, Any]:
        if self.mode == "oauth":
            redirect_url = body.get("redirect_url")
            if not isinstance(redirect_url, str) or not redirect_url:
                raise APIError(400, "Missing redirect url.")
            code = body.get("code")
            if code is None:
                # (`state`: what the web interface's sign-in expects back on the redirect)
                state = body.get("state")
                state = state if isinstance(state, str) and state else "_default"
                return {"auth_uri": await self._globus().authorize_url(redirect_url, state)}
            if not isinstance(code, str) or not code:
                raise not_authenticated(INVALID_CREDENTIALS)
            tokens = await self._globus().exchange_code(redirect_url, code)
            groups_token = tokens.get(GROUPS_RESOURCE_SERVER)
            identity_token = (
                groups_token or tokens.get(AUTH_RESOURCE_SERVER) or next(iter(tokens.values()), None)
            )
            if not identity_token:
                raise not_authenticated(INVALID_CREDENTIALS)
        else:
            if "auth_token" not in body:
                raise APIError(400, "Missing auth_token.")
            token = body["auth_token"]
            if not isinstance(token, str) or not token.strip():
                raise not_authenticated(INVALID_CREDENTIALS)
            groups_token = identity_token = token.strip()

        identity = await self._globus().identity(identity_token)
        # The result of this login's group check, recorded on the user's mapping (B13).
        details: dict[str, Any] = {
            "groups_checked_at": isoformat(utcnow()),
            "allowed_globus_groups": sorted(self.allowed_globus_groups),
            "member_of_allowed_groups": [],
            "group_check_passed": True,
        }
        if self.allowed_globus_groups:
            if not groups_token:
                raise APIError(403, NO_GROUPS_TOKEN)
            member_of = await self._allowed_groups_of(groups_token)
            details["member_of_allowed_groups"] = member_of
            details["group_check_passed"] = bool(member_of)
            if not member_of:
                await self._record_denied(app, identity, details)
                raise APIError(403, NOT_A_MEMBER)
        user_id = await self._find_or_create(app, identity, details, app.account_provider.reserved)
        return await self.issue_token(app, user_id)

    def _globus(self) -> GlobusAPI:
        return GlobusAPI(self.client_id, self.client_secret, self.connect_timeout, self.read_timeout)

    async def _allowed_groups_of(self, groups_token: str) -> list[str]:
        """The allowed groups the token's identity is an active member of; none on failure."""
        try:
            mine = await self._globus().my_groups(groups_token)
        except GroupsUnavailable as e:
            log.warning("Globus Groups API failed; treating the user as a member of no group: %s", e)
            return []
        return sorted(set(self.allowed_globus_groups) & mine)

    # ---- users ---------------------------------------------------------------------------
    def _mapping(self, session: Any, sub: str) -> orm.ExternalUserMapping | None:
        return session.scalar(
            select(orm.ExternalUserMapping).where(
                orm.ExternalUserMapping.authenticator == self.key,
                orm.ExternalUserMapping.external_user_id == sub,
            )
        )

    async def _record_denied(self, app: Any, identity: dict[str, str], details: dict[str, Any]) -> None:
        """Record a failed group check for a known user, so later checks see it (B13)."""

        def _record(session: Any) -> None:
            mapping = self._mapping(session, identity["sub"])
            if mapping is not None:
                mapping.external_user_details = {**(mapping.external_user_details or {}), **details}
                mapping.datetime_updated = utcnow()

        try:
            await app.db.run(_record)
        except Exception:
            log.exception("Could not record the failed Globus group check")

    async def _find_or_create(
        self, app: Any, identity: dict[str, str], details: dict[str, Any], reserved: Callable[[str], bool]
    ) -> int:
        # Each attempt is one transaction. A concurrent login may take the same identity or
        # username first (unique constraints): the next attempt then sees it.
        for _attempt in range(5):
            try:
                return await app.db.run(
                    lambda session: self._find_or_create_sync(session, identity, details, reserved)
                )
            except IntegrityError:
                log.info("Concurrent Globus login for %s; retrying", identity["sub"])
        raise APIError(500, SERVER_ERROR)

    def _find_or_create_sync(
        self,
        session: Any,
        identity: dict[str, str],
        details: dict[str, Any],
        reserved: Callable[[str], bool],
    ) -> int:
        mapping = self._mapping(session, identity["sub"])
        if mapping is not None:
            mapping.external_username = identity["username"][:255]
            mapping.external_user_details = {**(mapping.external_user_details or {}), **details}
            mapping.datetime_updated = utcnow()
            session.flush()
            return mapping.user_id

        email = identity["email"][:320]
        base = username_base(email, identity["username"])
        user: orm.User | None = None
        n = 0
        while user is None:
            # Past a thousand taken names, stop counting and pick a random suffix.
            candidate = username_candidate(base, n if n <= 1000 else 1000 + secrets.randbelow(10**9))
            n += 1
            # A name that is root's, a system account's or the server's own is never given out
            # when storage accounts come from the OS: the user would act as that account.
            if candidate in RESERVED_USERNAMES or reserved(candidate):
                continue
            existing = session.scalar(select(orm.User).where(orm.User.username == candidate))
            if existing is None:
                first, last = split_name(identity["name"])
                user = orm.User(username=candidate, email=email, first_name=first, last_name=last)
                session.add(user)
                session.flush()
            elif (
                self.link_existing_users_by_email
                and email
                and existing.email.lower() == email.lower()
                and not self._has_mapping(session, existing)
            ):
                # Trusted to be the same person (same email), not yet linked to Globus.
                user = existing
        session.add(
            orm.ExternalUserMapping(
                user_id=user.id,
                authenticator=self.key,
                external_user_id=identity["sub"][:255],
                external_username=identity["username"][:255],
                external_user_details=details,
                datetime_updated=utcnow(),
            )
        )
        session.flush()
        return user.id

    def _has_mapping(self, session: Any, user: orm.User) -> bool:
        return (
            session.scalar(
                select(orm.ExternalUserMapping.id).where(
                    orm.ExternalUserMapping.user_id == user.id,
                    orm.ExternalUserMapping.authenticator == self.key,
                )
            )
            is not None
        )
