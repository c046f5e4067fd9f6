"""Who a request comes from: the UWS-Authorization header, or a browser session's cookie.

The one place both are read (BaseHandler.prepare and the pages call `authenticate_request`).
A request with the header is authenticated by it alone, as always, so existing clients never
meet the cookie's rules. A request with the cookie and no header must carry the session's XSRF
token for anything but GET, HEAD and OPTIONS: another site's form or script can make the
browser send the cookie, but cannot read the token from a page of this server.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ..errors import APIError
from ..webui import BROWSER_COOKIE, XSRF_HEADER, XSRF_REFUSED

if TYPE_CHECKING:
    from tornado import web

    from ..auth.scopes import CurrentUser
    from ..webui import WebUI
    from .components import Components

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOGIN_KEY = re.compile(r"[0-9a-f]{40}")


def browser_key(handler: web.RequestHandler, web_ui: WebUI | None) -> str | None:
    """The login token the browser session's signed cookie carries; None without a valid one."""
    if web_ui is None or BROWSER_COOKIE not in handler.request.cookies:
        return None
    value = handler.get_signed_cookie(BROWSER_COOKIE, max_age_days=web_ui.session_days)
    if value is None:
        return None
    key = value.decode("ascii", "replace")
    return key if LOGIN_KEY.fullmatch(key) else None


async def authenticate_request(handler: Any, xsrf: str | None = None) -> tuple[CurrentUser, str]:
    """(user, credential) of a request to `handler` (a RequestHandler with Components); the
    credential is the `Token <key>` that later checks (logout) use. `xsrf`:
    the token a form sent, beside the X-XSRFToken header scripts send."""
    parts: Components = handler
    header = handler.request.headers.get("UWS-Authorization")
    key = browser_key(handler, parts.web_ui) if header is None else None
    if key is None:
        return await parts.auth.authenticate(header), header or ""
    credential = f"Token {key}"
    user = await parts.auth.authenticate(credential)
    if handler.request.method not in SAFE_METHODS:
        assert parts.web_ui is not None  # (browser_key found a cookie only with the web interface on)
        candidate = handler.request.headers.get(XSRF_HEADER) or xsrf
        if not parts.web_ui.xsrf_valid(key, candidate):
            raise APIError(403, XSRF_REFUSED)
    return user, credential
