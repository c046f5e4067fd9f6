"""The web interface for people: its options, its templates, and browser sessions.

A browser session is a login token like any other (stored hashed, revocable, listed by
GET /tokens/api/), made by the configured Authenticator and held in a signed, HttpOnly cookie.
Page scripts never see the token: they call the API with the cookie, and every call that
changes something also carries an XSRF token bound to the session (uws.handlers.browser checks
both, for pages and API alike).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from traitlets import Bool, Integer, TraitError, Unicode
from traitlets import validate as validate_trait
from traitlets.config import LoggingConfigurable

# The browser session's cookie. Named apart from the passthrough's uws-session-<id> cookies; the
# passthrough strips both from what it relays (uws.passthrough.wire).
BROWSER_COOKIE = "uws-browser"
# The state of a Globus sign-in under way (OAuth's `state`), for the callback to compare.
OAUTH_STATE_COOKIE = "uws-oauth-state"
XSRF_HEADER = "X-XSRFToken"
XSRF_REFUSED = "Missing or wrong X-XSRFToken header: a request signed in by the browser cookie needs it."
# Page paths under the prefix, for the check that none of them is an API path.
PAGE_PATHS = (
    "",
    "login",
    "login/callback",
    "login/globus",
    "logout",
    "w/7",
    "account",
    "administration",
    "static/app.js",
)
# How people sign in, by login method: a form (dev), Globus' own page (oauth), or a portal.
LOGIN_MODES = ("dev", "globus", "portal")


class WebUI(LoggingConfigurable):
    """The pages people use in a browser: sign in, their workspaces and sessions."""

    enabled = Bool(
        True,
        help="""Serve the web interface (sign-in, workspaces and sessions in a browser). Off: only
        the API is served, and the paths the pages would have answer the API's JSON 404.""",
    ).tag(config=True)
    prefix = Unicode(
        "/",
        help="""Path the web interface's pages live under, e.g. "/ui/" (home at /ui/, sign-in at
        /ui/login). The API keeps its own paths; a prefix under which a page would take an API
        path is refused at start. At "/" the home page is served to browsers (requests that
        accept text/html); other clients still get the API's JSON 404 there.""",
    ).tag(config=True)
    session_days = Integer(
        14,
        help="""Days a browser stays signed in. The browser session is a login token that expires
        then (or earlier, with UWSApp.token_expiry_seconds); signing out ends it at once.""",
    ).tag(config=True)

    @validate_trait("prefix")
    def _check_prefix(self, proposal: Any) -> str:
        value = str(proposal["value"]).strip()
        if not value.startswith("/") or not re.fullmatch(r"/[A-Za-z0-9._~/-]*", value) or "//" in value:
            raise TraitError(f'WebUI.prefix must be a path such as "/" or "/ui/", not {value!r}')
        return value if value.endswith("/") else value + "/"

    @validate_trait("session_days")
    def _check_days(self, proposal: Any) -> int:
        if proposal["value"] < 1:
            raise TraitError("WebUI.session_days must be at least 1")
        return int(proposal["value"])

    def __init__(self, share_dir: str, secret: bytes, public_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.static_dir = os.path.join(share_dir, "static")
        self.templates = Environment(
            loader=FileSystemLoader(os.path.join(share_dir, "templates")),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        # Cookies and XSRF tokens are signed with a key of their own, derived from the server's
        # cookie secret (so a value made for one purpose never passes for another).
        self.cookie_secret = hmac.new(secret, b"uws browser sessions", hashlib.sha256).hexdigest()
        self._xsrf_key = hmac.new(secret, b"uws browser xsrf", hashlib.sha256).digest()
        self.public_url = public_url.rstrip("/")
        self.asset_version = self._asset_version()

    def _asset_version(self) -> str:
        """A digest of the static files, appended to their URLs: a new version is fetched anew,
        an unchanged one is cached for good."""
        digest = hashlib.sha256()
        if os.path.isdir(self.static_dir):
            for name in sorted(os.listdir(self.static_dir)):
                with open(os.path.join(self.static_dir, name), "rb") as f:
                    digest.update(name.encode() + b"\0" + f.read())
        return digest.hexdigest()[:12]

    def xsrf_token(self, key: str) -> str:
        """The XSRF token of the browser session whose login token is `key`: only a page the
        server rendered for that session holds it."""
        return hmac.new(self._xsrf_key, key.encode(), hashlib.sha256).hexdigest()

    def xsrf_valid(self, key: str, candidate: str | None) -> bool:
        if not candidate or not candidate.isascii():
            return False
        return hmac.compare_digest(self.xsrf_token(key), candidate)

    def render(self, name: str, **context: Any) -> str:
        return self.templates.get_template(name).render(
            prefix=self.prefix, asset_version=self.asset_version, **context
        )


def login_mode(authenticator: Any) -> str:
    """How people sign in with this login method (LOGIN_MODES)."""
    from .auth.base import DevAuthenticator

    if isinstance(authenticator, DevAuthenticator):
        return "dev"
    if getattr(authenticator, "mode", None) == "oauth" and hasattr(authenticator, "allowed_globus_groups"):
        return "globus"
    return "portal"


def page_route_problems(prefix: str, api_patterns: list[re.Pattern[str]]) -> list[str]:
    """The pages under `prefix` that an API route would answer instead (none, for a usable
    prefix): API routes are tried first, so such a page could never be reached."""
    problems = []
    for page in PAGE_PATHS:
        path = prefix + page
        if any(pattern.fullmatch(path) for pattern in api_patterns):
            problems.append(path)
    return problems
