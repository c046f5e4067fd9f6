"""POST /tokens/ (login through the configured Authenticator), DELETE /tokens/ (logout), and
the scoped API tokens: POST and GET /tokens/api/, DELETE /tokens/api/<id>/."""

from __future__ import annotations

from typing import Any

from ..admin import end_access
from ..auth.accounts import valid_username
from ..errors import APIError
from .base import ID, BaseHandler
from .browser import authenticate_request


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
        key = payload.get("token") if isinstance(payload, dict) else None
        if not isinstance(key, str):
            # No login yet: an OAuth flow's first step answers with the URL to sign in at.
            self.audit("login", claimed_user(body), step="authorize_url")
            self.send_json(payload)
            return
        # Who logged in, for the audit line: the new token's user (which also puts the token in
        # the cache its first request will look in).
        self.user = await self.auth.authenticate(f"Token {key}")
        self.audit("login", f"user:{self.user.username}")
        self.send_json(payload)

    async def delete(self) -> None:
        # (POST is open, so prepare() authenticated nothing: a logout by the header's token, or
        # by a browser session's cookie with its XSRF token.)
        user, header = await authenticate_request(self)
        self.user = user
        self.audit("token.revoke", f"user:{user.username}")
        everything = bool(self.query_bool("all"))
        self.audit("token.revoke", f"user:{user.username}", all=everything)
        # Any token may log itself out; only one with its owner's full rights may log out all.
        if everything and not user.covers(None):
            raise APIError(403, "Only a token with its owner's full rights may revoke all tokens.")
        await self.auth.revoke(header, user.id, everything)
        # A logout also ends the browser's access to the user's sessions, and open websockets
        # of this user re-check their own token (closing with 4401 if it was revoked).
        await end_access(self.auth, self.proxy, self.events, user.id)
        self.ok("Successful logout.")


class ApiTokensHandler(BaseHandler):
    # POST checks the new token's scopes against the request's own rights (parse_scopes).
    required_scopes = {"GET": "read", "POST": None}

    async def get(self) -> None:
        self.ok("Successful.", {"tokens": await self.auth.list_tokens(self.user)})

    async def post(self) -> None:
        self.audit("token.create", f"user:{self.user.username}")
        token = await self.auth.create_api_token(self.user, self.json_body())
        self.audit("token.create", f"user:{self.user.username}", token=token["id"], scopes=token["scopes"])
        self.ok("Successful. The token is shown only this once.", {"token": token})


class ApiTokenHandler(BaseHandler):
    # revoke_token lets a token revoke itself or tokens with no more rights than its own.
    required_scopes = {"DELETE": None}

    async def delete(self, token_id: str) -> None:
        self.audit("token.revoke", f"user:{self.user.username}", token=int(token_id))
        await self.auth.revoke_token(self.user, int(token_id))
        self.ok(f"Token {token_id} revoked.")


default_handlers = [
    (r"/tokens/?", TokensHandler),
    (r"/tokens/api/?", ApiTokensHandler),
    (rf"/tokens/api/{ID}/?", ApiTokenHandler),
]
