"""POST /tokens/ (login through the configured Authenticator) and DELETE /tokens/ (logout)."""

from __future__ import annotations

from typing import Any

from ..auth.accounts import valid_username
from .base import BaseHandler


def claimed_user(body: dict[str, Any]) -> str | None:
    """The audit object of a login that fails: the username the body claims, when it is one (a
    client-token login names its user; a Globus login carries only its token, never logged)."""
    info = body.get("user_info")
    username = info.get("username") if isinstance(info, dict) else None
    return f"user:{username}" if isinstance(username, str) and valid_username(username) else None


class TokensHandler(BaseHandler):
    auth_required = False

    async def post(self) -> None:
        authenticator = self.authenticator
        self.audit("login")
        body = authenticator.parse_body(self.body)
        self.audit("login", claimed_user(body))
        payload = await authenticator.login(self.app, body)
        # Who logged in, for the audit line: the new token's user (which also puts the token in
        # the cache its first request will look in).
        self.user = await self.auth.authenticate(f"Token {payload['token']}")
        self.audit("login", f"user:{self.user.username}")
        self.send_json(payload)

    async def delete(self) -> None:
        header = self.request.headers.get("UWS-Authorization")
        user = self.user = await self.auth.authenticate(header)
        self.audit("token.revoke", f"user:{user.username}")
        everything = bool(self.query_bool("all"))
        self.audit("token.revoke", f"user:{user.username}", all=everything)
        await self.auth.revoke(header, user.id, everything)
        # A logout also ends the browser's access to the user's sessions.
        await self.proxy.end_cookies(user.id)
        # Open websockets of this user re-check their own token and close with 4401 if revoked.
        self.events.publish(user.id, "token_revoked", {})
        self.ok("Successful logout.")


default_handlers = [(r"/tokens/?", TokensHandler)]
