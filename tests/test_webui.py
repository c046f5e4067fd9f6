"""The web interface over HTTP, without a browser: signing in and out, the browser session's
cookie and XSRF token, what pages contain, and that the API's paths stay the API's.

The server runs the development login (`uws --dev`); a Globus sign-in goes through
tests/fake_globus.py, the stand-in for Globus (which cannot be reached from here).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
from collections.abc import Iterator

import pytest
import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from fake_globus import FakeGlobus
from helpers.api import unique_name
from helpers.configs import webui_server
from helpers.harness import Server

CONFIG = """
# Lets this test say it came over https (X-Forwarded-Proto), as nginx in front would.
c.FrontServer.trusted_proxies = ["127.0.0.1"]
c.UWSApp.admin_users = {"webadmin"}
"""
XSRF_REFUSED = "Missing or wrong X-XSRFToken header: a request signed in by the browser cookie needs it."
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
STATIC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "share", "uws", "static")


@pytest.fixture(scope="module")
def server(backend: str) -> Iterator[Server]:
    yield from webui_server(backend, CONFIG)


def sign_in(server: Server, username: str, **headers: str) -> tuple[requests.Session, requests.Response]:
    """The development login's form, as a browser fills it in: (its cookies, the answer)."""
    http = requests.Session()
    form = http.get(server.base + "/login", headers=HTML, timeout=10)
    assert form.status_code == 200, form.text
    form_xsrf = re.search(r'name="_xsrf" value="([^"]+)"', form.text)
    assert form_xsrf is not None
    answer = http.post(
        server.base + "/login",
        data={"username": username, "_xsrf": form_xsrf.group(1)},
        headers={**HTML, **headers},
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 303, answer.text
    return http, answer


class Browser:
    """What a browser holds after signing in: its cookies (a requests.Session) and the XSRF
    token the home page gave its scripts."""

    def __init__(self, server: Server, username: str | None = None) -> None:
        self.server = server
        self.username = username or unique_name("b")
        self.http, self.login = sign_in(server, self.username)
        home = self.http.get(server.base + "/", headers=HTML, timeout=10)
        assert home.status_code == 200
        self.home = home.text
        self.xsrf = meta_xsrf(home.text)

    def cookie(self) -> str:
        return self.http.cookies["uws-browser"]

    def key(self) -> str:
        """The login token inside the signed cookie (Tornado's format: the value, base64)."""
        # (as the Cookie header quotes it: '=' of the base64 padding written as \075)
        value = self.cookie().strip('"').replace("\\075", "=").split("|")[4].split(":", 1)[1]
        return base64.b64decode(value).decode()

    def api(self, method: str, path: str, body: object = None, xsrf: str | None = None) -> requests.Response:
        headers = {"X-XSRFToken": xsrf} if xsrf is not None else {}
        data = json.dumps(body) if body is not None else None
        return self.http.request(method, self.server.base + path, data=data, headers=headers, timeout=10)


def meta_xsrf(page: str) -> str:
    found = re.search(r'<meta name="uws-xsrf" content="([0-9a-f]+)">', page)
    assert found is not None, page
    return found.group(1)


def set_cookie_of(response: requests.Response, name: str) -> str:
    cookies = [c for c in response.raw.headers.getlist("Set-Cookie") if c.startswith(name + "=")]
    assert len(cookies) == 1, response.raw.headers.getlist("Set-Cookie")
    return cookies[0]


def test_browser_cookie_is_httponly_lax_and_secure_over_https(server: Server) -> None:
    plain = set_cookie_of(Browser(server).login, "uws-browser")
    assert "HttpOnly" in plain and "SameSite=Lax" in plain and "Path=/" in plain
    assert "Secure" not in plain  # (a browser would drop a Secure cookie over http)
    _, answer = sign_in(server, unique_name("b"), **{"X-Forwarded-Proto": "https"})
    over_https = set_cookie_of(answer, "uws-browser")
    assert "Secure" in over_https and "HttpOnly" in over_https and "SameSite=Lax" in over_https


def test_cookie_authenticated_writes_need_the_sessions_xsrf_token(server: Server) -> None:
    alice, bob = Browser(server), Browser(server)
    body = {"name": "by-cookie", "description": ""}
    for wrong in (None, "", "0" * 64, bob.xsrf):
        r = alice.api("POST", "/workspaces/", body, xsrf=wrong)
        assert r.status_code == 403, (wrong, r.text)
        assert r.json() == {"success": False, "message": XSRF_REFUSED}
    assert alice.api("GET", "/workspaces/").json()["data"]["workspaces"] == []  # nothing was made
    r = alice.api("POST", "/workspaces/", body, xsrf=alice.xsrf)
    assert r.status_code == 200, r.text
    assert [w["name"] for w in alice.api("GET", "/workspaces/").json()["data"]["workspaces"]] == ["by-cookie"]
    # A request with UWS-Authorization is the header's alone: no XSRF token, cookie or not.
    token = server.client().post("/tokens/", {"user_info": {"username": alice.username, "email": "a@x"}})
    header = {"UWS-Authorization": f"Token {token.json()['token']}"}
    r = alice.http.post(server.base + "/workspaces/", data=json.dumps(body), headers=header, timeout=10)
    assert r.status_code == 200, r.text
    # The browser session shows in the token list as the web browser's, never with its key.
    listed = alice.api("GET", "/tokens/api/").json()["data"]["tokens"]
    assert [t["note"] for t in listed if t["current"]] == ["web browser"]
    assert all(t["expires_at"] for t in listed if t["note"] == "web browser")


def test_pages_never_hold_the_api_token(server: Server) -> None:
    alice = Browser(server)
    key = alice.key()
    assert re.fullmatch(r"[0-9a-f]{40}", key)
    assert alice.api("GET", "/quota/", None).status_code == 200  # (it is the session's token)
    assert server.client(key).get("/workspaces/").status_code == 200
    ws = alice.api("POST", "/workspaces/", {"name": "w", "description": ""}, xsrf=alice.xsrf).json()
    pages = ["/", f"/w/{ws['data']['workspace']['id']}", "/w/999999", "/account"]
    statics = re.findall(r'(?:src|href)="(/static/[^"]+)"', alice.home)
    assert len(statics) == 2, statics
    statics += [f"/static/{name}" for name in os.listdir(STATIC)]
    assert len(statics) >= 14, statics
    for path in pages + statics:
        r = alice.http.get(server.base + path, headers=HTML, timeout=10)
        assert r.status_code == 200, (path, r.text)
        assert key not in r.text, path
        assert alice.cookie() not in r.text, path
    assert alice.xsrf != key
    page = alice.http.get(server.base + "/", headers=HTML, timeout=10)
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"


def test_administration_page_is_for_admins_only(server: Server) -> None:
    user, admin = Browser(server), Browser(server, "webadmin")
    assert "/administration" not in user.home and 'href="/administration"' in admin.home
    r = user.http.get(server.base + "/administration", headers=HTML, timeout=10)
    assert r.status_code == 403, r.text
    assert r.json() == {"success": False, "message": "Only administrators can see this page."}
    r = admin.http.get(server.base + "/administration", headers=HTML, timeout=10)
    assert r.status_code == 200 and 'id="admin-jobs"' in r.text
    assert meta_xsrf(r.text) == admin.xsrf
    # What its scripts call: the admin API, refused to the user's cookie (and XSRF token) as well.
    only_admins = {"success": False, "message": "Only administrators may do this."}
    for method, path, body in (
        ("GET", "/admin/users/", None),
        ("PUT", "/admin/users/webadmin/", {"is_active": False}),
        ("DELETE", "/admin/users/webadmin/tokens/", None),
    ):
        r = user.api(method, path, body, xsrf=user.xsrf)
        assert (r.status_code, r.json()) == (403, only_admins), (method, path)
    assert admin.api("GET", "/admin/users/").status_code == 200
    r = admin.api("PUT", "/admin/users/nobody-here/", {"is_active": False}, xsrf=admin.xsrf)
    assert (r.status_code, r.json()["message"]) == (404, "User nobody-here not found.")
    # Signed out, it is the way to sign in, as every page.
    r = requests.get(server.base + "/administration", headers=HTML, allow_redirects=False, timeout=10)
    assert r.status_code == 302 and r.headers["Location"] == "/login"


def test_account_page_offers_the_scopes_the_user_holds(server: Server) -> None:
    def offered(browser: Browser) -> list[str]:
        page = browser.http.get(server.base + "/account", headers=HTML, timeout=10)
        assert page.status_code == 200, page.text
        return re.findall(r'name="scopes" value="([a-z]+)"', page.text)

    assert offered(Browser(server)) == ["read", "workspaces", "sessions"]
    assert offered(Browser(server, "webadmin")) == ["read", "workspaces", "sessions", "admin", "metrics"]


def test_upload_and_download_with_the_browser_cookie(server: Server) -> None:
    """What the workspace page's upload (XMLHttpRequest, multipart) and download links do."""
    alice, bob = Browser(server), Browser(server)
    ws = alice.api("POST", "/workspaces/", {"name": "files", "description": ""}, xsrf=alice.xsrf).json()
    upload = f"{server.base}/workspaces/{ws['data']['workspace']['id']}/upload/"
    files = {"files": ("notes é.txt", b"hello from the page\n")}
    r = alice.http.put(upload, files=files, timeout=10)
    assert r.status_code == 403 and r.json()["message"] == XSRF_REFUSED
    r = alice.http.put(upload, files=files, headers={"X-XSRFToken": bob.xsrf}, timeout=10)
    assert r.status_code == 403
    listing = f"{server.base}/workspaces/{ws['data']['workspace']['id']}/files/"
    assert alice.http.get(listing, timeout=10).json()["data"]["entries"] == []  # nothing was written
    r = alice.http.put(upload, files=files, headers={"X-XSRFToken": alice.xsrf}, timeout=10)
    assert r.status_code == 200, r.text
    assert [e["name"] for e in alice.http.get(listing, timeout=10).json()["data"]["entries"]] == [
        "notes é.txt"
    ]
    r = alice.http.get(listing + "notes%20%C3%A9.txt", timeout=10)
    assert r.status_code == 200 and r.content == b"hello from the page\n"
    assert r.headers["Content-Disposition"].startswith("attachment; ")
    assert bob.http.get(listing + "notes%20%C3%A9.txt", timeout=10).status_code == 404


def test_sign_out_revokes_the_session(server: Server) -> None:
    alice = Browser(server)
    cookie, key = alice.cookie(), alice.key()
    r = alice.http.post(server.base + "/logout", allow_redirects=False, timeout=10)
    assert r.status_code == 403 and r.json()["message"] == XSRF_REFUSED  # another site's form
    assert alice.api("GET", "/workspaces/").status_code == 200
    r = alice.http.post(
        server.base + "/logout", data={"_xsrf": alice.xsrf}, allow_redirects=False, timeout=10
    )
    assert r.status_code == 303 and r.headers["Location"] == "/login"
    assert 'uws-browser=""' in r.headers["Set-Cookie"]
    # The cookie kept (replayed) opens nothing: its token is gone.
    stale = requests.Session()
    stale.cookies.set("uws-browser", cookie)
    r = stale.get(server.base + "/workspaces/", timeout=10)
    assert r.status_code == 401 and r.json()["success"] is False
    assert server.client(key).get("/workspaces/").status_code == 401
    r = stale.get(server.base + "/", headers=HTML, allow_redirects=False, timeout=10)
    assert r.status_code == 302 and r.headers["Location"] == "/login"


def test_page_websockets_use_a_ticket_and_close_at_sign_out(server: Server) -> None:
    alice = Browser(server)
    assert alice.api("POST", "/ws_tickets/").status_code == 403  # (a write: it needs the token)
    ticket = alice.api("POST", "/ws_tickets/", xsrf=alice.xsrf).json()["data"]["ticket"]
    url = server.base.replace("http://", "ws://") + f"/ws/events/?ticket={ticket}"

    async def scenario() -> int | None:
        conn = await websocket_connect(HTTPRequest(url, connect_timeout=5))
        first = json.loads(await asyncio.wait_for(conn.read_message(), 10))  # type: ignore[arg-type]
        assert first["type"] == "snapshot"
        r = alice.http.post(server.base + "/logout", data={"_xsrf": alice.xsrf}, allow_redirects=False)
        assert r.status_code == 303
        while await asyncio.wait_for(conn.read_message(), 40) is not None:
            pass
        return conn.close_code

    assert asyncio.run(scenario()) == 4401


@pytest.mark.parametrize("path", ["/", "/nope", "/workspaces/abc/", "/w/abc", "/static/nope.js", "/login/x"])
def test_api_like_paths_keep_the_json_404(server: Server, path: str) -> None:
    r = requests.get(server.base + path, timeout=10)  # (Accept: */*, as API clients send)
    assert r.status_code == 404 and r.json() == {"success": False, "message": "Not found."}
    if path != "/":
        r = requests.get(server.base + path, headers=HTML, timeout=10)
        assert r.status_code == 404 and r.json() == {"success": False, "message": "Not found."}


def test_pages_answer_browsers_and_refuse_other_methods(server: Server) -> None:
    r = requests.get(server.base + "/", headers=HTML, allow_redirects=False, timeout=10)
    assert r.status_code == 302 and r.headers["Location"] == "/login"
    r = requests.post(server.base + "/", headers=HTML, timeout=10)
    assert r.status_code == 405 and r.json()["success"] is False
    r = requests.get(server.base + "/static/..%2Fuws_config.py", timeout=10)
    assert r.status_code in (403, 404) and r.json()["success"] is False
    r = requests.get(server.base + "/static/uws.css?v=1", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/css")
    assert "max-age" in r.headers["Cache-Control"]


def test_bad_sign_in_shows_the_servers_message_by_the_field(server: Server) -> None:
    http = requests.Session()
    form = http.get(server.base + "/login", timeout=10).text
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
    r = http.post(server.base + "/login", data={"username": "no such/name", "_xsrf": xsrf}, timeout=10)
    assert r.status_code == 400
    assert '<p class="field-error" id="username-error">Invalid username in user_info.</p>' in r.text
    assert 'value="no such/name"' in r.text and "uws-browser" not in http.cookies
    # Without the form's own XSRF token (another site's form) nobody is signed in.
    r = requests.post(server.base + "/login", data={"username": unique_name("b")}, timeout=10)
    assert r.status_code == 403 and "uws-browser" not in r.cookies


# ---- Globus --------------------------------------------------------------------------------
GLOBUS_CONFIG = """
c.UWSApp.authenticator_class = "globus"
c.GlobusAuthenticator.client_id = {client_id!r}
c.GlobusAuthenticator.client_secret = {client_secret!r}
c.GlobusAuthenticator.mode = "oauth"
c.LocalFileSystemStorage.root_dir = "@DIR@/workspaces"
"""


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGlobus]:
    f = FakeGlobus().start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def globus_server(backend: str, fake: FakeGlobus) -> Iterator[Server]:
    config = GLOBUS_CONFIG.format(client_id=fake.client_id, client_secret=fake.client_secret)
    srv = Server(backend, config, env=fake.env()).start()
    try:
        yield srv
    finally:
        srv.close()


def test_globus_sign_in_through_the_browser_redirect(globus_server: Server, fake: FakeGlobus) -> None:
    base = globus_server.base
    http = requests.Session()
    assert 'href="/login/globus"' in http.get(base + "/login", timeout=10).text
    r = http.get(base + "/login/globus", allow_redirects=False, timeout=10)
    assert r.status_code == 302
    location = r.headers["Location"]
    assert location.startswith(fake.url) and "/v2/oauth2/authorize" in location
    assert location.count("state=") == 1, location  # (ours, in place of the SDK's default)
    state = re.search(r"[?&]state=([^&]+)", location).group(1)  # type: ignore[union-attr]
    callback = base + "/login/callback"
    identity = fake.add_identity(f"{unique_name('g')}@example.org")
    # A callback with another state (a sign-in started elsewhere) signs nobody in.
    code = fake.add_code(identity, callback)
    r = http.get(base + "/login/callback", params={"code": code, "state": "forged"}, timeout=10)
    assert r.status_code == 400 and "uws-browser" not in http.cookies
    # The state is single use: sign in again from the start.
    r = http.get(base + "/login/globus", allow_redirects=False, timeout=10)
    state = re.search(r"[?&]state=([^&]+)", r.headers["Location"]).group(1)  # type: ignore[union-attr]
    code = fake.add_code(identity, callback)
    r = http.get(base + "/login/callback", params={"code": code, "state": state}, allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"] == "/", r.text
    assert "HttpOnly" in set_cookie_of(r, "uws-browser")
    home = http.get(base + "/", headers=HTML, timeout=10)
    assert home.status_code == 200 and "Signed in as" in home.text
    assert http.get(base + "/quota/", timeout=10).status_code == 200
