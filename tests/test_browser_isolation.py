"""In headless Chromium: a page in one user's session cannot read another user's session.

The victim's browser has opened their own session (so it holds that session's cookie) and then
a page of the attacker's session. Script on the attacker's page tries to read the victim's
session by fetch with credentials, through an iframe and over a websocket.

- Origin mode (the default): each session is an origin of its own, so the browser's
  same-origin policy blocks the fetch and iframe reads, and the passthrough refuses a websocket
  whose Origin is not the session's own (websockets are not covered by the same-origin policy).
- Path mode: all sessions share the server's origin, so those reads SUCCEED (shown below, as
  documented). What path mode does guarantee: a session's answers cannot set cookies for other
  sessions' paths or the whole host, register a service worker over other sessions' paths
  (Service-Worker-Allowed is dropped), or wipe the origin's data (Clear-Site-Data is dropped).

Chromium resolves *.localhost to loopback itself. It also takes each j<id>-<label>.localhost for
a site of its own, so SameSite=Lax keeps the victim's cookie off the attacker's subrequests here;
under a real domain (j1.sessions.example.org, j2.sessions.example.org: one site) it would be
sent, which is why test_origins.py checks the passthrough's own Origin check on websockets and
posts directly. Playwright drives the system's Chromium
(never a downloaded one).
"""

from __future__ import annotations

import pytest

from helpers.api import launch, login
from helpers.browser import chromium_path, launched_chromium
from helpers.configs import ORIGIN_CONFIG, PATH_CONFIG
from helpers.harness import Server, running_server

CHROMIUM = chromium_path()
playwright_sync = pytest.importorskip(
    "playwright.sync_api", reason="playwright is installed with the test extras"
)


READ_BY_FETCH = """async (url) => {
    try {
        const r = await fetch(url, {credentials: 'include'});
        return 'read:' + await r.text();
    } catch (e) {
        return 'blocked:' + e.name;
    }
}"""
READ_BY_IFRAME = """(url) => new Promise((resolve) => {
    const frame = document.createElement('iframe');
    frame.onload = () => {
        try {
            resolve('read:' + frame.contentDocument.body.innerText);
        } catch (e) {
            resolve('blocked:' + e.name);
        }
    };
    frame.src = url;
    document.body.appendChild(frame);
    setTimeout(() => resolve('timeout'), 15000);
})"""
READ_BY_WEBSOCKET = """(url) => new Promise((resolve) => {
    const ws = new WebSocket(url);
    ws.onmessage = (e) => { resolve('read:' + e.data); ws.close(); };
    ws.onerror = () => resolve('blocked:error');
    ws.onclose = () => resolve('blocked:closed');
    setTimeout(() => resolve('timeout'), 15000);
})"""
REGISTER_WORKER = """async ([script, scope]) => {
    try {
        await navigator.serviceWorker.register(script, {scope});
        return 'registered';
    } catch (e) {
        return 'refused:' + e.name;
    }
}"""


@pytest.fixture(scope="module")
def chromium():
    yield from launched_chromium(playwright_sync, CHROMIUM)


def attack(chromium, server: Server) -> tuple[dict, dict, dict[str, str], object]:
    """The attacker's and victim's sessions, what script on the attacker's page read of the
    victim's session, and the victim's browser context (still open)."""
    attacker, victim = login(server, server.client_token), login(server, server.client_token)
    a, b = launch(attacker), launch(victim)
    context = chromium.new_context()
    page = context.new_page()
    page.set_default_timeout(30_000)
    # The victim opens their own session, then a link to the attacker's.
    assert page.goto(b["url_domain"] + b["url_path"]).status == 200
    assert f"secret of job {b['id']}" in page.inner_text("#secret")
    assert page.goto(a["url_domain"] + a["url_path"]).status == 200
    b_base = b["url_domain"] + b["url_path"].split("/page?")[0]
    ws_base = b_base.replace("http://", "ws://", 1)
    results = {
        "fetch": page.evaluate(READ_BY_FETCH, b_base + "/secret"),
        "iframe": page.evaluate(READ_BY_IFRAME, b_base + "/page"),
        "websocket": page.evaluate(READ_BY_WEBSOCKET, ws_base + "/ws"),
    }
    return a, b, results, context


@pytest.fixture(scope="module")
def oserver(backend: str):
    yield from running_server(backend, ORIGIN_CONFIG)


@pytest.fixture(scope="module")
def pserver(backend: str):
    yield from running_server(backend, PATH_CONFIG)


def test_origin_mode_keeps_sessions_apart(chromium, oserver: Server) -> None:
    a, b, results, context = attack(chromium, oserver)
    try:
        secret = f"secret of job {b['id']}"
        assert not any(secret in r for r in results.values()), results
        assert results["fetch"] == "blocked:TypeError"  # CORS: no cross-origin read
        assert results["iframe"] == "blocked:TypeError"  # contentDocument is null across origins
        assert results["websocket"].startswith("blocked:")  # the passthrough refused the upgrade
        # The victim's own page still reads its session (the cookie is fine where it belongs).
        page = context.new_page()
        assert page.goto(b["url_domain"] + "/secret").status == 200
        assert page.inner_text("body") == secret
        # Each session's cookie stayed on its own host.
        hosts = {c["name"]: c["domain"] for c in context.cookies() if c["name"].startswith("uws-session-")}
        assert hosts == {
            f"uws-session-{a['id']}": a["url_domain"].split("//")[1].split(":")[0],
            f"uws-session-{b['id']}": b["url_domain"].split("//")[1].split(":")[0],
        }
    finally:
        context.close()


def test_path_mode_does_not_keep_sessions_apart(chromium, pserver: Server) -> None:
    """Documented: one origin for all sessions. This shows the reads path mode cannot stop."""
    _, b, results, context = attack(chromium, pserver)
    context.close()
    secret = f"secret of job {b['id']}"
    assert results["fetch"] == f"read:{secret}"
    assert results["iframe"] == f"read:{secret}"
    assert results["websocket"] == f"read:{secret}"


def test_path_mode_answers_cannot_reach_other_sessions(chromium, pserver: Server) -> None:
    owner = login(pserver, pserver.client_token)
    s = launch(owner)
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(30_000)
        assert page.goto(s["url_domain"] + s["url_path"]).status == 200
        base = f"/passthrough/{s['id']}"
        assert page.goto(s["url_domain"] + base + "/tossing").status == 200
        cookies = {c["name"]: c["path"] for c in context.cookies()}
        assert "tossed-root" not in cookies and "tossed-domain" not in cookies
        assert cookies["own-path"] == base + "/"
        # A worker may not take the whole origin (it would see navigations to other sessions).
        result = page.evaluate(REGISTER_WORKER, [base + "/sw.js", "/"])
        assert result == "refused:SecurityError", result
    finally:
        context.close()
