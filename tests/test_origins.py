"""One browser origin per session (the default passthrough_mode, "origin"), and what path mode
still guarantees, over HTTP against real servers and real session apps (tests/apps/origin_app.py).

glibc here may not resolve *.localhost, so requests go to 127.0.0.1 with the session's host
name in the Host header, as a browser that resolves it sends them. Cookies are passed by hand:
requests' cookie jar files them under 127.0.0.1, which would mix sessions up.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from urllib.parse import urlsplit

import pytest
import requests
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from helpers.api import at, launch, login, wait_status
from helpers.configs import ORIGIN_CONFIG, PATH_CONFIG
from helpers.harness import Client, Server, running_server


def session_cookie(r: requests.Response, job_id: int) -> str:
    (value,) = [c for c in r.raw.headers.getlist("Set-Cookie") if c.startswith(f"uws-session-{job_id}=")]
    return value


def open_link(session: dict) -> str:
    """Follow the session's link as a new browser tab does; the cookie it gets (name=value)."""
    r = at(session["url_domain"] + session["url_path"])
    assert r.status_code == 200 and f"secret of job {session['id']}" in r.text, r.text
    return session_cookie(r, session["id"]).split(";")[0]


@pytest.fixture(scope="module")
def oserver(backend: str):
    yield from running_server(backend, ORIGIN_CONFIG)


@pytest.fixture(scope="module")
def alice(oserver: Server) -> Client:
    return login(oserver, oserver.client_token)


@pytest.fixture(scope="module")
def bob(oserver: Server) -> Client:
    return login(oserver, oserver.client_token)


@pytest.fixture(scope="module")
def sessions(alice: Client, bob: Client):
    a, b = launch(alice), launch(bob)
    yield a, b
    for user, s in ((alice, a), (bob, b)):
        user.put(f"/jobs/{s['id']}/stop")
        wait_status(user, s["id"], "complete")


# ---- the session's origin and its link ----------------------------------------------------------
def test_connection_details_name_an_origin_of_the_sessions_own(oserver: Server, sessions) -> None:
    a, b = sessions
    for s in (a, b):
        assert re.fullmatch(rf"http://j{s['id']}-[0-9a-f]{{16}}\.localhost:{oserver.port}", s["url_domain"])
        assert s["url_path"].startswith("/page?token=") and s["url_path"].count("?") == 1
    assert a["url_domain"] != b["url_domain"]


def test_link_gives_a_host_only_cookie(sessions) -> None:
    a, _ = sessions
    r = at(a["url_domain"] + a["url_path"])
    assert r.status_code == 200
    cookie = session_cookie(r, a["id"]).lower()
    attributes = [part.strip() for part in cookie.split(";")[1:]]
    assert "httponly" in attributes and "path=/" in attributes and "samesite=lax" in attributes
    assert not any(part.startswith("domain") for part in attributes)


def test_a_cookie_opens_only_its_own_session(sessions) -> None:
    a, b = sessions
    cookie_a = open_link(a)
    # Relayed on the fast path (a bodyless GET), and through Tornado (a POST).
    assert at(a["url_domain"] + "/secret", headers={"Cookie": cookie_a}).text == f"secret of job {a['id']}"
    assert at(a["url_domain"] + "/poke", "POST", headers={"Cookie": cookie_a}, data=b"x").status_code == 200
    for method in ("GET", "POST"):
        r = at(
            b["url_domain"] + "/secret",
            method,
            headers={"Cookie": cookie_a.replace(f"-{a['id']}=", f"-{b['id']}=")},
        )
        assert r.status_code == 403 and r.json() == {
            "success": False,
            "message": "You do not have access to this session.",
        }
        # The right job id on a host name with another label: refused too.
        wrong = a["url_domain"].replace(f"j{a['id']}-", f"j{a['id']}-0")
        r = at(wrong + "/secret", method, headers={"Cookie": cookie_a})
        assert r.status_code == 403 and r.json()["success"] is False


def test_session_hosts_never_reach_the_api(oserver: Server, alice: Client, sessions) -> None:
    a, _ = sessions
    r = at(a["url_domain"] + "/workspaces/", headers=alice.headers())
    assert r.status_code == 404 and "workspaces" not in r.text  # the session app's own 404
    port = oserver.port
    for host in (
        f"nosuchjob.localhost:{port}",
        f"j{a['id']}.localhost:{port}",
        f"x.j{a['id']}-ab.localhost:{port}",
    ):
        r = at(f"http://{host}/workspaces/", headers=alice.headers())
        assert r.status_code == 404 and r.json() == {
            "success": False,
            "message": "No session has this address.",
        }


def test_passthrough_paths_on_the_api_origin_are_refused(oserver: Server, alice: Client, sessions) -> None:
    a, _ = sessions
    token = a["url_path"].split("token=")[1]
    for path in (f"/passthrough/{a['id']}/secret", f"/passthrough/{a['id']}/secret?token={token}"):
        r = requests.get(oserver.base + path, headers=alice.headers(), timeout=10)
        assert r.status_code == 404 and "own host names" in r.json()["message"]


# ---- what reaches the app ---------------------------------------------------------------------
def test_uws_credentials_and_client_forwarding_claims_stay_out(alice: Client, sessions) -> None:
    a, _ = sessions
    cookie_a = open_link(a)
    sent = {
        "Cookie": f"{cookie_a}; app-cookie=kept",
        "Authorization": "token for-the-app",
        "X-Forwarded-For": "203.0.113.9",
        "X-Real-Ip": "203.0.113.9",
        "X-Scheme": "https",
        "Forwarded": "for=203.0.113.9",
        **alice.headers(),
    }
    for method, extra in (("GET", {}), ("GET", {"Content-Length": "0"})):  # fast path, then Tornado
        r = at(a["url_domain"] + "/headers", method, headers={**sent, **extra})
        got = {name.lower(): value for name, value in r.json()}
        assert got["cookie"] == "app-cookie=kept"
        assert got["authorization"] == "token for-the-app"  # this origin's own, for the app
        assert "uws-authorization" not in got and "x-real-ip" not in got and "forwarded" not in got
        # (Which client address X-Forwarded-For names is the server's xheaders setting's call.)
        assert "x-scheme" not in got and "," not in got["x-forwarded-for"]


def test_origin_mode_answers_keep_no_cookie_for_other_hosts(sessions) -> None:
    a, _ = sessions
    r = at(a["url_domain"] + "/tossing", headers={"Cookie": open_link(a)})
    cookies = [c.split("=")[0] for c in r.raw.headers.getlist("Set-Cookie")]
    assert sorted(cookies) == ["own-default", "own-path", "tossed-root"]  # all host-only here
    assert r.headers["Service-Worker-Allowed"] == "/"  # the session's own origin: its business


# ---- requests other pages make with the cookie ----------------------------------------------------
def test_websockets_from_another_origin_do_not_ride_on_the_cookie(sessions) -> None:
    a, b = sessions
    cookie_b = open_link(b)
    url = urlsplit(b["url_domain"])

    async def connect(origin: str) -> str:
        request = HTTPRequest(
            f"ws://127.0.0.1:{url.port}/ws",
            headers={"Host": url.netloc, "Cookie": cookie_b, "Origin": origin},
            request_timeout=10,
        )
        conn = await websocket_connect(request)
        message = await conn.read_message()
        conn.close()
        return message

    assert asyncio.run(connect(b["url_domain"])) == f"secret of job {b['id']}"
    with pytest.raises(HTTPClientError) as e:
        asyncio.run(connect(a["url_domain"]))
    assert e.value.code == 403


def test_posts_from_another_origin_do_not_ride_on_the_cookie(sessions) -> None:
    a, b = sessions
    cookie_b = open_link(b)
    before = int(at(b["url_domain"] + "/pokes", headers={"Cookie": cookie_b}).text)
    r = at(
        b["url_domain"] + "/poke", "POST", headers={"Cookie": cookie_b, "Origin": a["url_domain"]}, data=b"x"
    )
    assert r.status_code == 403
    r = at(
        b["url_domain"] + "/poke", "POST", headers={"Cookie": cookie_b, "Origin": b["url_domain"]}, data=b"x"
    )
    assert r.status_code == 200
    assert int(at(b["url_domain"] + "/pokes", headers={"Cookie": cookie_b}).text) == before + 1


# ---- cookies end with the login -------------------------------------------------------------------
def session_base(s: dict) -> str:
    """Where a session's paths start: its origin, or /passthrough/<id> on the server's (path mode)."""
    return s["url_domain"] + s["url_path"].split("/page?")[0]


def refused_within(url: str, cookie: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if at(url, headers={"Cookie": cookie}).status_code == 403:
            return True
        time.sleep(0.25)
    return False


def check_logout_ends_cookies(server: Server, everything: bool) -> None:
    carol = login(server, server.client_token)
    s = launch(carol)
    cookie, url = open_link(s), session_base(s) + "/secret"
    assert at(url, headers={"Cookie": cookie}).status_code == 200
    query = "?all=true" if everything else ""
    assert carol.delete(f"/tokens/{query}").status_code == 200
    assert at(url, headers={"Cookie": cookie}).status_code == 403
    assert at(url, "POST", headers={"Cookie": cookie}).status_code == 403
    # The link still works (and gives a new cookie): the session itself goes on.
    assert at(url, headers={"Cookie": open_link(s)}).status_code == 200
    carol = login(server, server.client_token, carol.username)
    carol.put(f"/jobs/{s['id']}/stop")


def check_deactivation_ends_cookies(server: Server) -> None:
    dave = login(server, server.client_token)
    s = launch(dave)
    cookie, url = open_link(s), session_base(s) + "/secret"
    assert at(url, headers={"Cookie": cookie}).status_code == 200
    server.cli("user", "deactivate", dave.username)
    try:
        assert refused_within(url, cookie, 10)
    finally:
        server.cli("user", "activate", dave.username)
    dave.put(f"/jobs/{s['id']}/stop")


@pytest.mark.parametrize("everything", [False, True])
def test_logout_ends_the_session_cookies(oserver: Server, everything: bool) -> None:
    check_logout_ends_cookies(oserver, everything)


def test_deactivation_ends_the_session_cookies(oserver: Server) -> None:
    check_deactivation_ends_cookies(oserver)


# ---- garbled cookies ------------------------------------------------------------------------------
def check_non_ascii_cookie(server: Server, s: dict) -> None:
    base = urlsplit(session_base(s))
    name = f"uws-session-{s['id']}".encode()
    for head in (
        b"GET %s/secret HTTP/1.1\r\nHost: %s\r\nCookie: %s=\xc3\xa9.abc\r\n\r\n",  # the front door
        b"GET %s/secret HTTP/1.1\r\nHost: %s\r\nCookie: %s=1.2.3.\xe9\r\nContent-Length: 0\r\n\r\n",  # Tornado
    ):
        with socket.create_connection(("127.0.0.1", base.port), timeout=10) as conn:
            conn.sendall(head % (base.path.encode(), base.netloc.encode(), name))
            answer = b""
            while not answer.rstrip().endswith(b"}"):
                data = conn.recv(65536)
                if not data:
                    break
                answer += data
        assert answer.split(b" ", 2)[1:2] == [b"403"], answer
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["success"] is False
    assert "Traceback" not in server.log()


def test_non_ascii_cookie_is_a_403_not_a_traceback(oserver: Server, sessions) -> None:
    check_non_ascii_cookie(oserver, sessions[0])


# ---- path mode: what it still guarantees -----------------------------------------------------------
@pytest.fixture(scope="module")
def pserver(backend: str):
    yield from running_server(backend, PATH_CONFIG)


@pytest.fixture(scope="module")
def path_session(pserver: Server):
    owner = login(pserver, pserver.client_token)
    s = launch(owner)
    yield {**s, "owner": owner}
    owner.put(f"/jobs/{s['id']}/stop")


def test_path_mode_warns_at_start_up(pserver: Server) -> None:
    assert re.search(r"WARNING.*Sessions are served under /passthrough/<id>/ on one origin", pserver.log())


def test_path_mode_links(pserver: Server, path_session: dict) -> None:
    assert path_session["url_domain"] == pserver.base
    assert path_session["url_path"].startswith(f"/passthrough/{path_session['id']}/page?token=")


@pytest.mark.parametrize("route", ["fast", "tornado"])
def test_path_mode_answers_lose_what_acts_beyond_the_session(
    pserver: Server, path_session: dict, route: str
) -> None:
    base = f"{pserver.base}/passthrough/{path_session['id']}"
    extra = {"Content-Length": "0"} if route == "tornado" else {}
    r = requests.get(base + "/tossing", headers={**path_session["owner"].headers(), **extra}, timeout=10)
    assert r.status_code == 200 and r.text == "tossing"
    assert sorted(c.split("=")[0] for c in r.raw.headers.getlist("Set-Cookie")) == ["own-default", "own-path"]
    assert "Service-Worker-Allowed" not in r.headers and "Clear-Site-Data" not in r.headers


@pytest.mark.parametrize("route", ["front", "handler"])
def test_path_mode_websocket_switch_loses_what_acts_beyond_the_session(
    pserver: Server, path_session: dict, route: str
) -> None:
    """The app's 101 answer is filtered like any other answer: the front door's splice (the
    owner's header) and the handler's (a link's token) both."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    url = f"ws://127.0.0.1:{pserver.port}/passthrough/{path_session['id']}/ws-tossing"
    headers = path_session["owner"].headers()
    if route == "handler":
        url += "?token=" + path_session["url_path"].split("token=", 1)[1]
        headers = {}

    async def switch() -> tuple[list[str], dict[str, str]]:
        conn = await websocket_connect(HTTPRequest(url, headers=headers))
        assert await conn.read_message() == f"secret of job {path_session['id']}"
        conn.close()
        return conn.headers.get_list("Set-Cookie"), dict(conn.headers.get_all())

    cookies, got = asyncio.run(switch())
    names = sorted(c.split("=")[0] for c in cookies if not c.startswith("uws-session-"))
    assert names == ["own-default", "own-path"]
    assert "Service-Worker-Allowed" not in got and "Clear-Site-Data" not in got


def test_path_mode_keeps_the_origins_authorization_from_apps(pserver: Server, path_session: dict) -> None:
    base = f"{pserver.base}/passthrough/{path_session['id']}"
    headers = {**path_session["owner"].headers(), "Authorization": "Basic c2VjcmV0OnB3", "Cookie": "portal=1"}
    got = {n.lower(): v for n, v in requests.get(base + "/headers", headers=headers, timeout=10).json()}
    assert "authorization" not in got and "uws-authorization" not in got


def test_path_mode_non_ascii_cookie_is_a_403(pserver: Server, path_session: dict) -> None:
    check_non_ascii_cookie(pserver, path_session)


def test_path_mode_logout_ends_the_session_cookies(pserver: Server) -> None:
    check_logout_ends_cookies(pserver, everything=False)


def test_path_mode_deactivation_ends_the_session_cookies(pserver: Server) -> None:
    check_deactivation_ends_cookies(pserver)


# ---- in-process: the pieces ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("set_cookie", "request_path", "kept_in_path_mode", "kept_in_origin_mode"),
    [
        ("a=1; Path=/passthrough/7/", "/passthrough/7/x", True, True),
        ("a=1; Path=/passthrough/7", "/passthrough/7/x", True, True),
        ("a=1", "/passthrough/7/lab/x", True, True),  # default path /passthrough/7/lab
        ("a=1", "/passthrough/7", False, True),  # default path /passthrough: every job's
        ("a=1; Path=/", "/passthrough/7/x", False, True),
        ("a=1; Path=/passthrough/77/", "/passthrough/7/x", False, True),
        ("a=1; Path=/passthrough/7/; Path=/", "/passthrough/7/x", False, True),  # the last one counts
        ("a=1; Path=/passthrough/7x", "/passthrough/7/x", False, True),
        ("a=1; Domain=localhost", "/passthrough/7/x", False, False),
        ("a=1; path=/passthrough/7/; DOMAIN=", "/passthrough/7/x", False, False),
    ],
)
def test_which_session_cookies_reach_the_browser(
    set_cookie: str, request_path: str, kept_in_path_mode: bool, kept_in_origin_mode: bool
) -> None:
    from uws.passthrough.wire import cookie_stays_in_session

    assert cookie_stays_in_session(set_cookie, "/passthrough/7", request_path) is kept_in_path_mode
    assert cookie_stays_in_session(set_cookie, None, request_path) is kept_in_origin_mode


def test_session_host_names() -> None:
    from uws.passthrough.urls import SessionHosts

    hosts = SessionHosts("Sessions.Example.org")
    assert hosts.name(12, "ab12") == "j12-ab12.sessions.example.org"
    assert hosts.job("j12-ab12.sessions.example.org:8443") == (12, "ab12")
    assert hosts.job("J12-AB12.Sessions.Example.Org") == (12, "ab12")
    for other in (
        "sessions.example.org",
        "j12.sessions.example.org",
        "x.j12-ab.sessions.example.org",
        "j12-ab12.sessions.example.org.evil",
        "j-ab.sessions.example.org",
        "j12-ab_1.sessions.example.org",
    ):
        assert hosts.job(other) is None, other
    assert hosts.is_session_host("x.y.sessions.example.org") and not hosts.is_session_host("example.org")


def test_passthrough_domain_of_an_original_config() -> None:
    from uws.config_validation import session_domain

    assert session_domain("sessions.example.org") == "sessions.example.org"
    assert session_domain("https://sessions.example.org:8443/") == "sessions.example.org"
    assert session_domain("127.0.0.1:8000") is None and session_domain("bad name") is None


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ('c.UWSApp.session_host = "bad host:80"', "session_host must be a DNS name"),
        ('c.UWSApp.public_url = "http://api.localhost:1"', "is under UWSApp.session_host"),
    ],
)
def test_unusable_session_host_is_refused_at_start_up(setting: str, message: str) -> None:
    srv = Server("sqlite", ORIGIN_CONFIG + setting + "\n")
    try:
        with pytest.raises(RuntimeError, match="server exited"):
            srv.start()
        assert message in srv.log()
    finally:
        srv.close()


def test_which_origins_the_session_cookie_counts_from() -> None:
    from uws.passthrough.admission import cookie_counts
    from uws.passthrough.head import Head

    def counts(method: str, **headers: str) -> bool:
        head = Head()
        for name, value in headers.items():
            head.add(name.replace("_", "-"), value)
        return cookie_counts(method, head)

    host = "j7-ab.sessions.example.org"
    assert counts("GET", Host=host, Origin="https://j8-cd.sessions.example.org")  # reads: the SOP's job
    assert counts("POST", Host=host)  # no page behind it
    assert counts("POST", Host=host, Origin=f"https://{host}")
    assert counts("POST", Host=host, Origin=f"https://{host}:8443")  # a proxy may drop the port
    assert not counts("POST", Host=host, Origin="https://j8-cd.sessions.example.org")
    assert not counts("GET", Host=host, Upgrade="websocket", Origin="https://j8-cd.sessions.example.org")
    assert not counts("POST", Host=host, Origin="null")
