"""The web interface end to end, in headless Chromium (Debian's, driven by Playwright): sign in
with the development login, create a workspace, start a LocalTestJob and watch its card go
pending, running, ended without a reload (across a dropped event stream), start a web app,
open it on its own origin, stop it, sign out. Bad input in each form shows the server's
message by its field. A screenshot of each page visited goes to $UWS_TEST_OUTPUT (default
tests/output/, which git ignores).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator

import pytest

from helpers.configs import CHROMIUM_ARGS, ORIGIN_MODE
from helpers.harness import TESTS, Server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or ""
if not CHROMIUM:
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)
playwright_sync = pytest.importorskip(
    "playwright.sync_api", reason="playwright is installed with the test extras"
)

OUTPUT = os.environ.get("UWS_TEST_OUTPUT") or os.path.join(TESTS, "output")
CONFIG = (
    f"""
c.LocalFileSystemStorage.root_dir = "@DIR@/workspaces"
c.UWSApp.spawner_class = "local"
c.JobService.heartbeat_seconds = 1
c.UWSApp.stop_grace_seconds = 2
c.UWSApp.job_types = {{
    "local_test_job": {{"name": "Local Test Job", "job_type": "LocalTestJob",
                       "environment_details": {{"main_resource": {{"sleep_seconds": "4"}}}}}},
    "web": {{"name": "Web app", "job_type": "CommandJob", "environment_details": {{"main_resource": {{
        "command": ["{sys.executable}", "-m", "http.server", "{{port}}", "--bind", "{{host}}"],
        "readiness_path": "/", "url_path": "/?token={{token}}"}}}}}},
}}
"""
    + ORIGIN_MODE
)
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def server(backend: str) -> Iterator[Server]:
    srv = Server(backend, CONFIG, extra_args=["--dev"]).start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="module")
def chromium():
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Shots:
    """Numbered screenshots of the pages a test visits."""

    def __init__(self, name: str) -> None:
        self.dir = os.path.join(OUTPUT, name)
        os.makedirs(self.dir, exist_ok=True)
        self.count = 0

    def __call__(self, page, what: str) -> None:
        self.count += 1
        page.screenshot(path=os.path.join(self.dir, f"{self.count:02d}-{what}.png"), full_page=True)


def statuses_seen(card) -> list[str]:
    return card.locator(".timeline li").evaluate_all("items => items.map(li => li.dataset.status)")


def test_sign_in_create_start_watch_open_stop(chromium, server: Server, backend: str) -> None:
    shot = Shots(f"webui-{backend}")
    context = chromium.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    expect = playwright_sync.expect
    try:
        # Signed out, the home page sends the browser to sign in.
        page.goto(server.base + "/")
        assert page.url == server.base + "/login"
        shot(page, "login")
        page.fill("#username", "not a name!")
        page.click("button[type=submit]")
        expect(page.locator("#username-error")).to_have_text("Invalid username in user_info.")
        assert page.locator("#username").get_attribute("aria-invalid") == "true"
        shot(page, "login-refused")
        page.fill("#username", "webuser")
        page.press("#username", "Enter")  # (the keyboard is enough)
        page.wait_for_url(server.base + "/")
        expect(page.locator("#live")).to_have_attribute("data-state", "live")
        expect(page.locator("#quota")).to_contain_text("Disk")
        shot(page, "home-empty")

        # A new workspace: the server's refusal by its field first, then made.
        page.fill("#ws-name", "x" * 300)
        page.click("#create-form button[type=submit]")
        expect(page.locator("#ws-name-error")).to_have_text("name must be at most 256 characters.")
        page.fill("#ws-name", "e2e workspace")
        page.fill("#ws-description", "made in the browser test")
        page.click("#create-form button[type=submit]")
        link = page.get_by_role("link", name="e2e workspace")
        expect(link).to_be_visible()
        expect(page.locator("#ws-name-error")).to_be_hidden()
        shot(page, "home-with-workspace")
        link.click()
        page.wait_for_url("**/w/*")
        expect(page.locator("#job-type option")).to_have_count(2)
        page.evaluate("window.loadedOnce = true")

        # Bad resource options: the server's message by the option's field.
        page.fill("#param-time_limit_min", "0")
        page.click("#start-form button[type=submit]")
        expect(page.locator("#param-time_limit_min-error")).to_contain_text("time_limit_min")
        shot(page, "start-refused")
        page.fill("#param-time_limit_min", "10")

        # A LocalTestJob: pending, running, ended, seen live (the stream dropped on the way).
        page.select_option("#job-type", "local_test_job")
        page.click("#start-form button[type=submit]")
        card = page.locator("#sessions article").first
        expect(card).to_be_visible()
        expect(card).to_have_attribute("data-status", "running")
        shot(page, "local-test-job-running")
        page.evaluate("window.uwsEvents.socket.close()")  # (it reconnects, resuming after the last id)
        expect(page.locator("#live")).to_have_attribute("data-state", "live")
        expect(card).to_have_attribute("data-status", "complete", timeout=WAIT_MS)
        assert statuses_seen(card) == ["pending", "running", "complete"]
        assert page.evaluate("window.loadedOnce") is True  # no reload on the way
        shot(page, "local-test-job-ended")

        # A web app: open it on its own origin in a new tab, then stop it.
        page.select_option("#job-type", "web")
        page.click("#start-form button[type=submit]")
        web = page.locator("#sessions article").first
        expect(web).to_have_attribute("data-status", "running")
        expect(web.locator(".time-left")).to_be_visible()
        open_link = web.get_by_role("link", name="Open")
        href = open_link.get_attribute("href") or ""
        assert ".localhost:" in href and "token=" in href, href
        shot(page, "web-app-running")
        with context.expect_page() as opened:
            open_link.click()
        tab = opened.value
        tab.wait_for_load_state()
        assert "Directory listing" in tab.content()
        assert tab.url.split("/")[2] == href.split("/")[2]  # (its own origin)
        shot(tab, "web-app-tab")
        tab.close()
        web.get_by_role("button", name="Stop").focus()
        page.keyboard.press("Enter")
        expect(web).to_have_attribute("data-status", "complete")
        assert statuses_seen(web)[-1] == "complete"
        shot(page, "web-app-stopped")

        # Phone width: nothing wider than the screen. With maximums set, quota use shows as bars.
        server.cli("quota", "set", "webuser", "--disk-bytes", "100000", "--core-hours", "10")
        page.set_viewport_size({"width": 375, "height": 800})
        page.goto(server.base + "/")
        expect(page.locator("#live")).to_have_attribute("data-state", "live")
        expect(page.locator("#quota meter")).to_have_count(2)
        expect(page.get_by_label("Disk:")).to_have_attribute("max", "100000")
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        shot(page, "home-phone")

        page.click("text=Sign out")
        page.wait_for_url(server.base + "/login")
        assert not [c for c in context.cookies() if c["name"] == "uws-browser"]
        shot(page, "signed-out")
    finally:
        context.close()
