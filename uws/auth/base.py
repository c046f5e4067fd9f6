"""The Authenticator contract and the API-client (client token) login flow."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sqlalchemy import select
from traitlets import Bool, Integer, Unicode, default
from traitlets.config import LoggingConfigurable

from .. import orm
from ..errors import APIError, not_authenticated
from .accounts import AccountProvider, OSAccounts, ServerAccount, login_defs_uid_range, valid_username
from .tokens import client_token_valid


class Authenticator(LoggingConfigurable):
    """Handles POST /tokens/. Subclasses implement `login` and may report health."""

    # The config key of this method (e.g. "main_auth"): names it in /status/ and user mappings.
    key = Unicode("main_auth")

    def parse_body(self, raw: bytes) -> dict[str, Any]:
        """/tokens/ reports parse errors as the decoder error's repr, and treats non-objects as {}."""
        from ..handlers.base import decode_json

        try:
            body = decode_json(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, repr(e)) from None
        return body if isinstance(body, dict) else {}

    async def login(self, app: Any, body: dict[str, Any]) -> dict[str, Any]:
        """Return the response payload (with a new token) or raise APIError."""
        raise NotImplementedError

    def account_provider(self) -> AccountProvider:
        return AccountProvider()

    async def health(self) -> tuple[bool, str]:
        return True, "Connected successfully."

    async def reserved_username(self, app: Any, username: str) -> bool:
        """Whether the name is an OS account no user may map onto (looked up off the loop)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, app.account_provider.reserved, username)

    async def issue_token(self, app: Any, user_id: int) -> dict[str, Any]:
        def _issue(session: Any) -> tuple[str, Any]:
            return app.token_service.issue(session, user_id)

        key, expires_at = await app.db.run(_issue)
        payload: dict[str, Any] = {
            "success": True,
            "message": "Successful authentication.",
            "token": key,
        }
        if expires_at is not None:
            from ..utils import isoformat

            payload["expires_at"] = isoformat(expires_at)
        return payload


RESERVED_USERNAME = "Invalid username in user_info: it names a system account."


def find_or_create_user(session: Any, info: dict[str, Any]) -> orm.User:
    """Within the client-token flow the username is the identity; profiles are set once."""
    user = session.scalar(select(orm.User).where(orm.User.username == info["username"]))
    if user is not None:
        return user
    user = orm.User(
        username=info["username"],
        email=info["email"],
        first_name=str(info.get("first_name") or "")[:150],
        last_name=str(info.get("last_name") or "")[:150],
    )
    session.add(user)
    session.flush()
    return user


class ClientTokenAuthenticator(Authenticator):
    """The API-client flow: a trusted back end vouches for a user with its client token."""

    validate_username = True

    async def login(self, app: Any, body: dict[str, Any]) -> dict[str, Any]:
        if "client_token" not in body:
            raise APIError(400, "Missing client_token. Please have admin generate a token for you.")
        if "user_info" not in body:
            raise APIError(400, "Missing user_info. Please provide user_info to get user_token.")
        token = body["client_token"]
        if not await app.db.run(lambda s: client_token_valid(s, token)):
            raise not_authenticated("Incorrect authentication credentials.")
        info = body["user_info"]
        if (
            not isinstance(info, dict)
            or not isinstance(info.get("username"), str)
            or not isinstance(info.get("email"), str)
        ):
            raise APIError(400, "Missing username or email in user_info.")
        if self.validate_username and not valid_username(info["username"]):
            raise APIError(400, "Invalid username in user_info.")
        if await self.reserved_username(app, info["username"]):
            raise APIError(400, RESERVED_USERNAME)

        def _login(session: Any) -> int:
            try:
                with session.begin_nested():
                    return find_or_create_user(session, info).id
            except Exception:
                # Another login created the same user at the same moment: take that one.
                session.rollback()
                return find_or_create_user(session, info).id

        user_id = await app.db.run(_login)
        app.accounts.provision(info["username"])
        return await self.issue_token(app, user_id)


class LocalAuthenticator(ClientTokenAuthenticator):
    """Users log in through an API client; each maps to the OS account of the same name."""

    create_system_users = Bool(
        False,
        config=True,
        help="""Create a missing OS account (with useradd) for a user the first time it is
        needed. Only valid usernames are ever created. Requires the server to run as root.
        The original config's `create_external_users` with `operating_system: linux` sets this.""",
    )
    min_account_uid = Integer(
        config=True,
        help="""Lowest uid a user's OS account may have. Accounts below it (system accounts such
        as daemon or www-data) are refused as logins and as storage accounts, as are root and
        the server's own account whatever this says. Default: UID_MIN from /etc/login.defs
        (1000 when it is not set).""",
    )
    max_account_uid = Integer(
        config=True,
        help="""Highest uid a user's OS account may have (above it: nobody and other
        special accounts). Default: UID_MAX from /etc/login.defs (60000 when it is not set).""",
    )

    @default("min_account_uid")
    def _min_account_uid(self) -> int:
        return login_defs_uid_range()[0]

    @default("max_account_uid")
    def _max_account_uid(self) -> int:
        return login_defs_uid_range()[1]

    def account_provider(self) -> AccountProvider:
        return OSAccounts(
            create=self.create_system_users, min_uid=self.min_account_uid, max_uid=self.max_account_uid
        )


class DevAuthenticator(ClientTokenAuthenticator):
    """For trying UWS out: no client token needed, every user's files belong to the server's
    own OS account. Never use it on a shared machine."""

    async def login(self, app: Any, body: dict[str, Any]) -> dict[str, Any]:
        if "client_token" not in body:
            body = {**body, "client_token": None}
        if body.get("client_token") is None:
            return await self._login_without_client_token(app, body)
        return await super().login(app, body)

    async def _login_without_client_token(self, app: Any, body: dict[str, Any]) -> dict[str, Any]:
        info = body.get("user_info")
        if not isinstance(info, dict):
            raise APIError(400, "Missing user_info. Please provide user_info to get user_token.")
        if not isinstance(info.get("username"), str) or not isinstance(info.get("email"), str):
            raise APIError(400, "Missing username or email in user_info.")
        if not valid_username(info["username"]):
            raise APIError(400, "Invalid username in user_info.")
        user_id = await app.db.run(lambda s: find_or_create_user(s, info).id)
        return await self.issue_token(app, user_id)

    def account_provider(self) -> AccountProvider:
        return ServerAccount()


class PSCAuthenticator(ClientTokenAuthenticator):
    """PSC's API-client login. Logging in works as for local users; provisioning PSC storage
    accounts is not available in this version, so storage operations are refused."""

    validate_username = False
    health_check_url = Unicode("", config=True, help="URL whose 200 answer means PSC is reachable.")

    async def health(self) -> tuple[bool, str]:
        from ..health import check_url

        return await check_url(self.health_check_url)
