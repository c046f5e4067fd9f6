"""The web interface's pages (uws.webui): sign-in and sign-out, home, a workspace, static files.

Pages are server-rendered shells; their scripts (share/uws/static/) use the REST API and
/ws/events like any other client, signed in by the browser session's cookie. Routes live under
WebUI.prefix and come after every API route, so no page ever answers an API path.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from typing import Any

from tornado import web

from ..admin import end_access
from ..auth.scopes import CurrentUser
from ..errors import APIError
from ..webui import BROWSER_COOKIE, OAUTH_STATE_COOKIE, WebUI, login_mode
from .auditing import record_answer
from .base import ID, exception_answer, send_error, set_cors_headers, write_json_error
from .browser import authenticate_request
from .components import Components

# Scripts, styles and images only from this server; no frames, no plugins, forms only to it.
# ('self' covers the same host's ws:// and wss:// in connect-src, where /ws/events is.)
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
OAUTH_STATE_SECONDS = 600
log = logging.getLogger("uws.web")


class PageHandler(Components, web.RequestHandler):
    """An HTML page. Its refusals and Tornado's own errors are the API's JSON envelope, as
    everywhere else on the server."""

    @property
    def pages(self) -> WebUI:
        web_ui = self.web_ui
        assert web_ui is not None  # (routed only when the web interface is on)
        return web_ui

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.set_header("Cache-Control", "no-store")
        self.clear_header("Server")

    def page_path(self, name: str) -> str:
        return self.pages.prefix + name

    def secure(self) -> bool:
        """Whether the browser reached us over https (directly, or through a trusted proxy that
        says so): then cookies are Secure."""
        return self.request.protocol == "https" or self.pages.public_url.startswith("https://")

    def own_origin(self) -> str:
        return self.pages.public_url or f"{self.request.protocol}://{self.request.host}"

    async def signed_in(self) -> tuple[CurrentUser, str] | None:
        """The browser session's user and login token; None when it has none (or it ended)."""
        try:
            user, credential = await authenticate_request(self)
        except APIError:
            return None
        return user, credential.split()[-1]

    def render_page(self, name: str, status: int = 200, **context: Any) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(self.pages.render(name, **context))

    async def show(self, template: str, **context: Any) -> None:
        """A signed-in page, or the way to the sign-in page."""
        signed = await self.signed_in()
        if signed is None:
            self.clear_cookie(BROWSER_COOKIE, path="/")
            self.redirect(self.page_path("login"))
            return
        user, key = signed
        context.update(self.context_for(user))
        self.render_page(template, user=user, xsrf=self.pages.xsrf_token(key), **context)

    def context_for(self, user: CurrentUser) -> dict[str, Any]:
        """What a page shows that depends on who is signed in (raises APIError to refuse)."""
        return {}

    async def begin_session(self, body: dict[str, Any]) -> None:
        """Log in through the configured Authenticator with `body` (what POST /tokens/ takes),
        and hold the new login token in the browser session's cookie. Raises its APIError."""
        payload = await self.authenticator.login(self.app, body)
        key = payload.get("token") if isinstance(payload, dict) else None
        if not isinstance(key, str):
            raise APIError(400, "The login method did not sign the user in.")
        user = await self.auth.limit_to_browser(key, self.pages.session_days * 86400)
        self.set_signed_cookie(
            BROWSER_COOKIE,
            key,
            expires_days=self.pages.session_days,
            path="/",
            httponly=True,
            samesite="Lax",
            secure=self.secure(),
        )
        record_answer(self, ("login", f"user:{user.username}", {"browser": True}), user, None, 200)

    def login_failed(self, error: APIError, claimed: str | None = None) -> None:
        record_answer(self, ("login", claimed, {"browser": True}), None, error, error.status)

    def _handle_request_exception(self, e: BaseException) -> None:
        send_error(self, exception_answer(self, e))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        write_json_error(self, status_code)


class HomeHandler(PageHandler):
    async def get(self) -> None:
        if self.request.path == "/" and "text/html" not in self.request.headers.get("Accept", ""):
            # GET / was the API's JSON 404 before there were pages: clients that are not
            # browsers still get it, as every unknown path answers it.
            set_cors_headers(self, self.config.cors_allowed_origins)
            raise APIError(404, "Not found.")
        await self.show("home.html", workspace_id=None)


class WorkspacePageHandler(PageHandler):
    async def get(self, workspace_id: str) -> None:
        await self.show("workspace.html", workspace_id=int(workspace_id))


# The scopes a token can hold, as the account page explains them (admins see theirs too).
SCOPE_TEXT = (
    ("read", "see your workspaces, sessions and files"),
    ("workspaces", "create, change, upload to, share and delete workspaces"),
    ("sessions", "start and stop sessions, and reach into them"),
)
ADMIN_SCOPE_TEXT = (("admin", "administer users and sessions"), ("metrics", "read the server's metrics"))


class AccountPageHandler(PageHandler):
    """The user's API tokens."""

    async def get(self) -> None:
        await self.show("account.html")

    def context_for(self, user: CurrentUser) -> dict[str, Any]:
        return {"scopes": SCOPE_TEXT + (ADMIN_SCOPE_TEXT if user.is_admin else ())}


class AdminPageHandler(PageHandler):
    """Users and active sessions, for admins (scripts use /admin/, which checks again)."""

    async def get(self) -> None:
        await self.show("admin.html")

    def context_for(self, user: CurrentUser) -> dict[str, Any]:
        if not user.may("admin"):
            raise APIError(403, "Only administrators can see this page.")
        return {}


def field_of(message: str, fields: tuple[str, ...]) -> str | None:
    """The form field a server message is about (it names it), for the message to go next to it."""
    lowered = message.lower()
    return next((f for f in fields if f in lowered), None)


class LoginHandler(PageHandler):
    async def get(self) -> None:
        if await self.signed_in() is not None:
            self.redirect(self.page_path(""))
            return
        self.login_page()

    def login_page(self, status: int = 200, **context: Any) -> None:
        mode = login_mode(self.authenticator)
        form_xsrf = self.xsrf_token.decode() if mode == "dev" else ""
        self.render_page("login.html", status, mode=mode, form_xsrf=form_xsrf, **context)

    async def post(self) -> None:
        """The development login's form: a username (and an email, else username@localhost)."""
        if login_mode(self.authenticator) != "dev":
            raise APIError(405, 'Method "POST" not allowed.', {"Allow": "GET"})
        username = self.get_body_argument("username", "").strip()
        email = self.get_body_argument("email", "").strip()
        values = {"username": username, "email": email}
        try:
            self.check_xsrf_cookie()
        except web.HTTPError:
            self.login_page(403, error="The form has expired: please sign in again.", values=values)
            return
        try:
            await self.begin_session({"user_info": {**values, "email": email or f"{username}@localhost"}})
        except APIError as e:
            self.login_failed(e)
            field = field_of(e.message, ("username", "email")) or "username"
            self.login_page(e.status, error=e.message, error_field=field, values=values)
            return
        self.redirect(self.page_path(""), status=303)


class GlobusStartHandler(PageHandler):
    """Sign in with Globus: off to Globus' own page, with a state the callback must bring back."""

    async def get(self) -> None:
        if login_mode(self.authenticator) != "globus":
            raise APIError(404, "Not found.")
        state = secrets.token_urlsafe(24)
        payload = await self.authenticator.login(
            self.app, {"redirect_url": self.callback_url(), "state": state}
        )
        self.set_signed_cookie(
            OAUTH_STATE_COOKIE,
            state,
            expires=time.time() + OAUTH_STATE_SECONDS,
            path=self.page_path("login/"),
            httponly=True,
            samesite="Lax",
            secure=self.secure(),
        )
        self.redirect(str(payload["auth_uri"]))

    def callback_url(self) -> str:
        return self.own_origin() + self.page_path("login/callback")


class GlobusCallbackHandler(GlobusStartHandler):
    async def get(self) -> None:
        if login_mode(self.authenticator) != "globus":
            raise APIError(404, "Not found.")
        expected = self.get_signed_cookie(
            OAUTH_STATE_COOKIE, max_age_days=OAUTH_STATE_SECONDS / 86400, min_version=2
        )
        self.clear_cookie(OAUTH_STATE_COOKIE, path=self.page_path("login/"))
        state = self.get_query_argument("state", "")
        code = self.get_query_argument("code", "")
        if expected is None or not secrets.compare_digest(expected, state.encode()):
            self.sign_in_failed(APIError(400, "The sign-in expired or did not start here: please try again."))
            return
        if not code:
            self.sign_in_failed(APIError(400, self.get_query_argument("error_description", "No code given.")))
            return
        try:
            await self.begin_session({"redirect_url": self.callback_url(), "code": code})
        except APIError as e:
            self.sign_in_failed(e)
            return
        self.redirect(self.page_path(""))

    def sign_in_failed(self, error: APIError) -> None:
        self.login_failed(error)
        self.render_page("login.html", error.status, mode="globus", form_xsrf="", error=error.message)


class LogoutHandler(PageHandler):
    async def post(self) -> None:
        user, credential = await authenticate_request(self, self.get_body_argument("_xsrf", None))
        await self.auth.revoke(credential, user.id, False)
        # As DELETE /tokens/: the user's session cookies end too, and open websockets close.
        await end_access(self.auth, self.proxy, self.events, user.id)
        record_answer(self, ("token.revoke", f"user:{user.username}", {"browser": True}), user, None, 200)
        self.clear_cookie(BROWSER_COOKIE, path="/")
        self.redirect(self.page_path("login"), status=303)


class StaticHandler(web.StaticFileHandler):
    """share/uws/static: scripts and styles, cached for good when asked for with ?v=<version>."""

    def initialize(self) -> None:  # type: ignore[override]
        web_ui = self.settings["web_ui"]
        super().initialize(path=web_ui.static_dir)

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.clear_header("Server")

    def set_extra_headers(self, path: str) -> None:
        if "v" not in self.request.arguments:
            # (modules import each other without the version: asked again each time, answered
            # 304 while unchanged)
            self.set_header("Cache-Control", "no-cache")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        write_json_error(self, status_code)


def default_handlers(prefix: str) -> list[Any]:
    """The pages under `prefix` ("/" or "/ui/")."""
    at = re.escape(prefix)
    return [
        (at, HomeHandler),
        (rf"{at}login/?", LoginHandler),
        (rf"{at}login/globus/?", GlobusStartHandler),
        (rf"{at}login/callback/?", GlobusCallbackHandler),
        (rf"{at}logout/?", LogoutHandler),
        (rf"{at}w/{ID}/?", WorkspacePageHandler),
        (rf"{at}account/?", AccountPageHandler),
        (rf"{at}administration/?", AdminPageHandler),
        (rf"{at}static/([A-Za-z0-9._-]+)", StaticHandler),
    ]
