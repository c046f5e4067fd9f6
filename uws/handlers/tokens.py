"""POST /tokens/ (login through the configured Authenticator) and DELETE /tokens/ (logout)."""

from __future__ import annotations

from .base import BaseHandler


class TokensHandler(BaseHandler):
    auth_required = False

    async def post(self) -> None:
        authenticator = self.authenticator
        body = authenticator.parse_body(self.body)
        payload = await authenticator.login(self.app, body)
        self.send_json(payload)

    async def delete(self) -> None:
        header = self.request.headers.get("UWS-Authorization")
        user = await self.auth.authenticate(header)
        everything = bool(self.query_bool("all"))
        await self.auth.revoke(header, user.id, everything)
        # A logout also ends the browser's access to the user's sessions.
        await self.proxy.end_cookies(user.id)
        # Open websockets of this user re-check their own token and close with 4401 if revoked.
        self.events.publish(user.id, "token_revoked", {})
        self.ok("Successful logout.")


default_handlers = [(r"/tokens/?", TokensHandler)]
