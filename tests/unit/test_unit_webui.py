"""The web interface's parts that need no server: where pages may live, XSRF tokens, how
people sign in with each login method, and the passthrough keeping the browser's credentials."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from traitlets import TraitError

from uws.auth.base import DevAuthenticator, LocalAuthenticator
from uws.auth.globus import GlobusAuthenticator
from uws.handlers import api_host_routes, api_path_patterns
from uws.handlers.pages import HomeHandler, StaticHandler
from uws.passthrough.wire import UWS_COOKIES
from uws.webui import BROWSER_COOKIE, OAUTH_STATE_COOKIE, PAGE_PATHS, WebUI, login_mode, page_route_problems

SHARE = os.path.join(os.path.dirname(__file__), "..", "..", "share", "uws")


@pytest.fixture(scope="session")
def remove_test_os_accounts() -> Iterator[None]:
    """In-process tests create no OS accounts (tests/conftest.py's fixture is not needed)."""
    yield


def web_ui(**kw: object) -> WebUI:
    return WebUI(SHARE, b"s" * 32, "", **kw)


@pytest.mark.parametrize("mode", ["path", "origin"])
def test_default_pages_take_no_api_path(mode: str) -> None:
    assert page_route_problems("/", api_path_patterns(mode)) == []
    # ...and the check finds a prefix that would.
    assert page_route_problems("/workspaces/", api_path_patterns(mode)) == ["/workspaces/"]
    assert "/jobs/login" not in page_route_problems("/jobs/", api_path_patterns(mode))  # (no such API path)


@pytest.mark.parametrize("mode", ["path", "origin"])
def test_api_paths_still_reach_the_api_with_pages_on(mode: str) -> None:
    """Pages come after every API route, so the API's paths answer as before."""
    routes = api_host_routes(mode, "/")
    page_classes = {r[1] for r in routes[len(api_host_routes(mode)) :]}
    assert HomeHandler in page_classes and StaticHandler in page_classes
    for path in ("/workspaces/", "/jobs/7/", "/tokens/", "/status/", "/quota/", "/ws/events/"):
        first = next(r[1] for r in routes if isinstance(r, tuple) and re.fullmatch(r[0] + "$", path))
        assert first not in page_classes, path
    assert len(PAGE_PATHS) == 9


def test_prefix_is_normalised_and_checked() -> None:
    assert web_ui(prefix="/ui").prefix == "/ui/"
    assert web_ui().prefix == "/"
    for bad in ("ui", "/a b/", "//x", "/<script>/"):
        with pytest.raises(TraitError):
            web_ui(prefix=bad)
    with pytest.raises(TraitError):
        web_ui(session_days=0)


def test_xsrf_token_is_bound_to_the_session() -> None:
    ui = web_ui()
    a, b = "a" * 40, "b" * 40
    assert ui.xsrf_valid(a, ui.xsrf_token(a))
    assert not ui.xsrf_valid(b, ui.xsrf_token(a))
    assert not ui.xsrf_valid(a, None) and not ui.xsrf_valid(a, "") and not ui.xsrf_valid(a, "é")
    assert a not in ui.xsrf_token(a)
    # Another server (another secret) makes other tokens.
    other = WebUI(SHARE, b"t" * 32, "")
    assert other.xsrf_token(a) != ui.xsrf_token(a)
    assert other.cookie_secret != ui.cookie_secret


def test_login_mode_by_authenticator() -> None:
    assert login_mode(DevAuthenticator()) == "dev"
    assert login_mode(LocalAuthenticator()) == "portal"
    assert login_mode(GlobusAuthenticator(mode="token")) == "portal"
    assert login_mode(GlobusAuthenticator(mode="oauth")) == "globus"
    assert login_mode(SimpleNamespace(mode="oauth")) == "portal"


def test_templates_escape_what_they_are_given() -> None:
    ui = web_ui()
    user = SimpleNamespace(username="<img src=x onerror=alert(1)>")
    page = ui.render("home.html", user=user, xsrf="t0k", workspace_id=None)
    assert "<img src=x" not in page and "&lt;img src=x" in page
    assert '<meta name="uws-xsrf" content="t0k">' in page
    login = ui.render("login.html", mode="dev", form_xsrf="f", error='"><b>', error_field="username")
    assert '"><b>' not in login


def test_passthrough_never_relays_the_browser_sessions_cookies() -> None:
    for name in (BROWSER_COOKIE, OAUTH_STATE_COOKIE):
        assert f"{name}=value".startswith(UWS_COOKIES)
    assert not "_xsrf=1".startswith(UWS_COOKIES)  # (apps such as Jupyter have cookies of that name)
