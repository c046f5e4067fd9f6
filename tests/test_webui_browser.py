"""The web interface end to end, in headless Chromium (Debian's, driven by Playwright): sign in
with the development login, create a workspace, upload a file (its progress bar seen moving on
a slowed upload), upload into a folder opened in the file browser, rename the workspace,
download the file, start a LocalTestJob and watch its card go pending, running, ended without
a reload (across a dropped event stream), start a web app, follow its output live, open it on
its own origin, extend it, stop it, share the workspace and accept a share from another user,
make and revoke an API token, stop a session from the administration page, sign out; and, on
the administration page, deactivate, reactivate, promote, demote, set quotas and revoke tokens
of a user. Bad input in each form shows the server's message by its field. Every page, and
every dialog while open, passes axe-core's check (no serious or critical violation), at desktop
and phone width. A screenshot of each page visited goes to $UWS_TEST_OUTPUT (default
tests/output/, which git ignores).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator

import pytest

from helpers.browser import (
    Shots,
    assert_accessible,
    chromium_path,
    launched_chromium,
    login_key,
    sign_in,
    watch_upload_progress,
)
from helpers.configs import ORIGIN_MODE, webui_server
from helpers.harness import Server

CHROMIUM = chromium_path()
playwright_sync = pytest.importorskip(
    "playwright.sync_api", reason="playwright is installed with the test extras"
)
pytest.importorskip(
    "axe_playwright_python.sync_playwright", reason="axe-playwright-python is installed with the test extras"
)

CONFIG = (
    f"""
c.JobService.heartbeat_seconds = 1
c.UWSApp.stop_grace_seconds = 2
c.UWSApp.job_types = {{
    "local_test_job": {{"name": "Local Test Job", "job_type": "LocalTestJob",
                       "environment_details": {{"main_resource": {{"sleep_seconds": "4"}}}}}},
    "web": {{"name": "Web app", "job_type": "CommandJob", "environment_details": {{"main_resource": {{
        "command": ["{sys.executable}", "-m", "http.server", "{{port}}", "--bind", "{{host}}"],
        "readiness_path": "/", "url_path": "/?token={{token}}"}}}}, "max_time_limit_min": 30}},
}}
c.UWSApp.admin_users = {{"webuser"}}
"""
    + ORIGIN_MODE
)
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def server(backend: str) -> Iterator[Server]:
    yield from webui_server(backend, CONFIG)


@pytest.fixture(scope="module")
def chromium():
    yield from launched_chromium(playwright_sync, CHROMIUM)


def statuses_seen(card) -> list[str]:
    return card.locator(".timeline li").evaluate_all("items => items.map(li => li.dataset.status)")


def friend_shares_with(server: Server, username: str, name: str) -> None:
    """Another user (signed in through the API) shares a new workspace of theirs, `name`, with
    `username`."""
    friend = server.client()
    login = friend.post("/tokens/", {"user_info": {"username": "webfriend", "email": "webfriend@localhost"}})
    friend = server.client(login.json()["token"])
    users = friend.get("/users/", params={"search": f"{username}@"}).json()["data"]["users"]
    (target,) = [u for u in users if u["username"] == username]
    ws = friend.post("/workspaces/", {"name": name, "description": "shared to webuser"})
    original = ws.json()["data"]["workspace"]["id"]
    r = friend.post(
        "/shared_workspaces/", {"original_workspace_id": original, "shared_user_ids": [target["id"]]}
    )
    assert r.status_code == 200, r.text


def test_sign_in_create_start_watch_open_stop(chromium, server: Server, backend: str) -> None:
    shot = Shots(f"webui-{backend}")
    context = chromium.new_context(viewport={"width": 1100, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    expect = playwright_sync.expect
    try:
        # Signed out, the home page sends the browser to sign in.
        page.goto(server.base + "/")
        assert page.url == server.base + "/login"
        shot(page, "login")
        assert_accessible(page, "login")
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
        expect(page.locator("#inbox")).to_contain_text("Nothing waiting")
        shot(page, "home-empty")
        assert_accessible(page, "home")
        # The first Tab reaches the skip link, and focus is visible.
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.className") == "skip"
        assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"

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
        ws_id = int((link.get_attribute("href") or "").rstrip("/").split("/")[-1])
        me = server.client(login_key(server, "webuser"))  # (the REST API's view, beside the page's)
        r = me.put(f"/workspaces/{ws_id}/", {"workspace_details": {"files": [{"name": "results/notes.txt"}]}})
        assert r.status_code == 200, r.text
        link.click()
        page.wait_for_url("**/w/*")
        expect(page.locator("#job-type option")).to_have_count(2)
        page.evaluate("window.loadedOnce = true")

        # A file: uploaded with a progress bar that moves (the upload slowed down to see it),
        # listed, downloaded.
        expect(page.get_by_role("button", name="results/")).to_be_visible()
        page.click("#upload-form button[type=submit]")
        expect(page.locator("#upload-files-error")).to_have_text("Choose one or more files to upload.")
        content = b"made in the browser\n" * 5000
        page.set_input_files(
            "#upload-files", {"name": "data.txt", "mimeType": "text/plain", "buffer": content}
        )
        seen = watch_upload_progress(page, context)
        page.click("#upload-form button[type=submit]")
        expect(page.locator("#upload-status")).to_have_text("Uploaded data.txt.")
        assert page.locator("#upload-progress").evaluate("p => p.value") == 100
        midway = [(value, text) for value, text in seen() if 0 < value < 100]
        assert midway and all(re.fullmatch(r".+ of 100\.\d KB", text) for _, text in midway), midway
        assert [value for value, _ in midway] == sorted(value for value, _ in midway), midway
        file_link = page.get_by_role("link", name="data.txt")
        expect(file_link).to_be_visible()
        with page.expect_download() as downloading:
            file_link.click()
        download = downloading.value
        assert download.suggested_filename == "data.txt"
        with open(download.path(), "rb") as f:
            assert f.read() == content

        # Into a folder: open it, upload there (the form says where), listed there and on disk there.
        page.get_by_role("button", name="results/").click()
        expect(page.locator("#file-path [aria-current]")).to_have_text("results")
        expect(page.locator("#upload-into")).to_have_text("(into the folder results)")
        page.set_input_files(
            "#upload-files", {"name": "sub é.txt", "mimeType": "text/plain", "buffer": b"deeper"}
        )
        page.click("#upload-form button[type=submit]")
        expect(page.locator("#upload-status")).to_have_text("Uploaded sub é.txt into results.")
        expect(page.locator("#files").get_by_role("link", name="sub é.txt")).to_be_visible()
        listed = me.get(f"/workspaces/{ws_id}/files/", params={"path": "results"}).json()["data"]
        assert sorted(e["name"] for e in listed["entries"]) == ["notes.txt", "sub é.txt"]
        assert me.get(f"/workspaces/{ws_id}/files/results/sub%20%C3%A9.txt").content == b"deeper"
        page.get_by_role("button", name="Top folder").click()
        expect(page.locator("#upload-into")).to_have_text("(into the workspace's top folder)")
        expect(page.get_by_role("link", name="data.txt")).to_be_visible()

        # Renamed: the server's refusal by its field first; the title follows the event.
        page.fill("#edit-name", "y" * 300)
        page.click("#edit-form button[type=submit]")
        expect(page.locator("#edit-name-error")).to_have_text("name must be at most 256 characters.")
        page.fill("#edit-name", "e2e renamed")
        page.click("#edit-form button[type=submit]")
        expect(page.locator("#ws-title")).to_have_text("e2e renamed")
        expect(page.locator("#edit-name-error")).to_be_hidden()
        shot(page, "workspace-files")
        assert_accessible(page, "workspace")

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

        # A web app: open it on its own origin in a new tab, follow its output, extend it, stop it.
        page.select_option("#job-type", "web")
        page.click("#start-form button[type=submit]")
        web = page.locator("#sessions article").first
        expect(web).to_have_attribute("data-status", "running")
        expect(web.locator(".time-left")).to_be_visible()
        # The output viewer, open and following before the app is asked anything: the request's
        # log line, written after, can only come live (and is appended to what was there).
        web.locator("summary", has_text="Output").click()
        expect(web.locator("details.log-view")).to_have_attribute("data-state", "following")
        before = web.locator("pre.log").text_content() or ""
        assert "GET /?token=" not in before
        open_link = web.get_by_role("link", name="Open")
        href = open_link.get_attribute("href") or ""
        assert ".localhost:" in href and "token=" in href, href
        with context.expect_page() as opened:
            open_link.click()
        tab = opened.value
        tab.wait_for_load_state()
        assert "Directory listing" in tab.content()
        assert tab.url.split("/")[2] == href.split("/")[2]  # (its own origin)
        shot(tab, "web-app-tab")
        tab.close()
        expect(web.locator("pre.log")).to_contain_text("GET /?token=")
        assert (web.locator("pre.log").text_content() or "").startswith(before)
        expect(web.locator(".time-left")).to_have_text(re.compile(r"^(9|10):\d\d$"))
        web.get_by_label("Add time").select_option("15")
        web.get_by_role("button", name="Extend").click()
        expect(web.locator(".time-left")).to_have_text(re.compile(r"^2[45]:\d\d$"))  # (10 + 15 minutes)
        web.get_by_role("button", name="Extend").click()  # (10 + 15 + 15 minutes: past the 30 allowed)
        expect(web.locator(".field-error")).to_have_text(
            "The time limit would become 40 minutes; the maximum for this job type is 30 minutes."
        )
        shot(page, "web-app-running")
        assert_accessible(page, "workspace with a running session")
        web.get_by_role("button", name="Stop").focus()
        page.keyboard.press("Enter")
        expect(web).to_have_attribute("data-status", "complete")
        assert statuses_seen(web)[-1] == "complete"
        shot(page, "web-app-stopped")

        # Shared with webfriend (who shares a workspace back) through the dialog's search.
        shared_name, unwanted = "from a friend", "not wanted"
        friend_shares_with(server, "webuser", shared_name)
        friend_shares_with(server, "webuser", unwanted)
        page.click("#share-open")
        page.fill("#share-search", "webfriend@")
        expect(page.locator("#share-people input[type=checkbox]")).to_have_count(1)
        assert_accessible(page, "share dialog")
        page.check("#share-people input[type=checkbox]")
        page.click("#share-form button[type=submit]")
        expect(page.locator("#share-status")).to_contain_text("Shared with")
        expect(page.locator("#share-dialog")).to_be_hidden()
        assert page.evaluate("document.activeElement.id") == "share-open"  # (focus returns)
        # The deletion's question, open: accessible too, and Escape leaves it (nothing deleted).
        page.click("#delete-open")
        expect(page.locator("#delete-dialog")).to_be_visible()
        assert_accessible(page, "delete dialog")
        page.keyboard.press("Escape")
        expect(page.locator("#delete-dialog")).to_be_hidden()
        assert page.evaluate("document.activeElement.id") == "delete-open"

        # An administrator (webuser is one here) stops another web app from the administration page.
        page.select_option("#job-type", "web")
        page.click("#start-form button[type=submit]")
        expect(page.locator("#sessions article").first).to_have_attribute("data-status", "running")
        page.click("text=Administration")
        page.wait_for_url("**/administration")
        row = page.locator("#admin-jobs tr[data-status=running]")
        expect(row).to_have_count(1)
        expect(page.locator("#admin-users")).to_contain_text("webfriend")
        assert_accessible(page, "administration")
        shot(page, "administration")
        row.get_by_role("button", name="Stop").click()
        expect(page.locator("#admin-jobs")).to_contain_text("No active sessions.")

        # API tokens: none without a scope (the server says why), one made (its key shown once), revoked.
        page.click("text=API tokens")
        page.wait_for_url("**/account")
        page.uncheck("input[value=read]")
        page.click("#token-form button[type=submit]")
        expect(page.locator("#token-scopes-error")).to_contain_text("scopes")
        page.fill("#token-note", "backup script")
        page.check("input[value=read]")
        page.click("#token-form button[type=submit]")
        expect(page.locator("#new-token")).to_be_visible()
        key = page.locator("#new-token-key").input_value()
        assert len(key) == 40 and server.client(key).get("/workspaces/").status_code == 200
        assert_accessible(page, "account")
        shot(page, "account")
        page.get_by_role("button", name="Revoke backup script").click()
        expect(page.locator("#tokens")).not_to_contain_text("backup script")
        assert server.client(key).get("/workspaces/").status_code == 401

        # A share from another user: in the inbox, accepted, then among the workspaces.
        page.goto(server.base + "/")
        expect(page.locator("#inbox")).to_contain_text(shared_name)
        page.get_by_role("button", name=f"Decline {unwanted}").click()
        expect(page.locator("#inbox")).not_to_contain_text(unwanted)
        page.get_by_role("button", name=f"Accept {shared_name}").click()
        expect(page.locator("#inbox")).to_contain_text("Nothing waiting")
        expect(page.get_by_role("link", name=shared_name)).to_be_visible()
        shot(page, "share-accepted")

        # Phone width: nothing wider than the screen, and still accessible. With maximums set,
        # quota use shows as bars.
        server.cli("quota", "set", "webuser", "--disk-bytes", "100000000", "--core-hours", "10")
        page.set_viewport_size({"width": 375, "height": 800})
        page.goto(server.base + "/")
        expect(page.locator("#live")).to_have_attribute("data-state", "live")
        expect(page.locator("#quota meter")).to_have_count(2)
        expect(page.get_by_label("Disk:")).to_have_attribute("max", "100000000")
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        assert_accessible(page, "home at phone width")
        shot(page, "home-phone")
        page.get_by_role("link", name="e2e renamed").click()
        page.wait_for_url("**/w/*")
        expect(page.get_by_role("link", name="data.txt")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        assert_accessible(page, "workspace at phone width")
        shot(page, "workspace-phone")
        page.click("#share-open")
        expect(page.locator("#share-people")).to_contain_text("webfriend")
        assert_accessible(page, "share dialog at phone width")
        page.click("#share-cancel")

        # Deletion asks first (cancelled: nothing happens); refused while a share waits, with
        # the server's message; the workspace shared to webuser is deleted.
        page.click("#delete-open")
        assert_accessible(page, "delete dialog at phone width")
        shot(page, "delete-dialog-phone")
        page.click("#delete-dialog button[value=cancel]")
        expect(page.locator("#delete-dialog")).to_be_hidden()
        page.click("#delete-open")
        page.click("#delete-confirm")
        expect(page.locator("#delete-error")).to_contain_text("shared workspaces associated with it")
        page.goto(server.base + "/")
        page.get_by_role("link", name=shared_name).click()
        page.wait_for_url("**/w/*")
        page.click("#delete-open")
        page.click("#delete-confirm")
        page.wait_for_url(server.base + "/")
        expect(page.get_by_role("link", name=shared_name)).to_have_count(0)
        expect(page.get_by_role("link", name="e2e renamed")).to_have_count(1)

        page.click("text=Sign out")
        page.wait_for_url(server.base + "/login")
        assert not [c for c in context.cookies() if c["name"] == "uws-browser"]
        shot(page, "signed-out")
    finally:
        context.close()


def test_administration_user_actions(chromium, server: Server) -> None:
    """An administrator deactivates and reactivates a user, makes and unmakes them an admin,
    sets their quotas and revokes their tokens from the administration page, with the keyboard
    where it matters; each effect is read back through the REST API. Refusals show in the row
    they concern; a non-admin reaches neither the page nor the API."""
    target = "webtarget"
    target_key = login_key(server, target)
    admin = server.client(login_key(server, "webuser"))

    def state(username: str = target) -> dict:
        (user,) = [u for u in admin.get("/admin/users/").json()["data"]["users"] if u["username"] == username]
        return user

    user_id = state()["id"]
    context = chromium.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    expect = playwright_sync.expect
    focus_key = "document.activeElement.dataset.focusKey"
    try:
        sign_in(page, server, "webuser")
        page.goto(server.base + "/administration")
        row = page.locator(f"#admin-user-{target}")
        status = page.locator("#admin-status")
        dialog = page.locator("#confirm-dialog")
        expect(row.locator(".state")).to_have_text("active")

        # Deactivate asks first: Escape leaves it (focus back on the button), the keyboard confirms.
        row.get_by_role("button", name=f"Deactivate {target}").click()
        expect(dialog).to_contain_text(f"Deactivate {target}?")
        assert_accessible(page, "confirmation dialog")
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()
        assert page.evaluate(focus_key) == f"active-{user_id}"
        assert state()["is_active"] is True
        page.keyboard.press("Enter")
        expect(dialog).to_be_visible()
        assert page.evaluate("document.activeElement.textContent") == "Cancel"
        page.keyboard.press("Tab")
        page.keyboard.press("Enter")
        expect(status).to_have_text(f"Deactivated {target}.")
        expect(row.locator(".state")).to_have_text("deactivated")
        assert page.evaluate(focus_key) == f"active-{user_id}"  # (on the button, now Reactivate)
        assert state()["is_active"] is False
        refused = server.client(target_key).get("/workspaces/").json()
        assert refused == {"success": False, "message": "User inactive or deleted."}
        row.get_by_role("button", name=f"Reactivate {target}").click()  # (gives back: no question)
        expect(row.locator(".state")).to_have_text("active")
        assert state()["is_active"] is True
        assert server.client(target_key).get("/workspaces/").status_code == 200

        # Admin, and no longer (asked first); a refusal shows in the row it concerns.
        row.get_by_role("button", name=f"Make admin {target}").click()
        expect(row.locator(".state")).to_have_text("active, admin")
        assert state()["is_admin"] is True
        assert server.client(target_key).get("/admin/users/").status_code == 200
        row.get_by_role("button", name=f"Remove admin {target}").click()
        page.click("#confirm-ok")
        expect(row.locator(".state")).to_have_text("active")
        assert state()["is_admin"] is False
        assert server.client(target_key).get("/admin/users/").status_code == 403
        me = page.locator("#admin-user-webuser")
        me.get_by_role("button", name="Remove admin webuser").click()
        page.click("#confirm-ok")
        expect(me.locator(".field-error")).to_have_text(
            "webuser is an admin through c.UWSApp.admin_users: remove the name there to demote."
        )
        expect(row.locator(".field-error")).to_be_hidden()

        # Quotas: a bad value refused by its field, then both set, then the disk maximum removed.
        row.get_by_role("button", name=f"Quotas of {target}").click()
        quotas = page.locator("#quota-dialog")
        expect(quotas).to_be_visible()
        page.fill("#quota-disk", "-1")
        page.fill("#quota-hours", "12")
        page.press("#quota-hours", "Enter")
        expect(page.locator("#quota-disk-error")).to_contain_text("max_disk_bytes must be")
        assert page.locator("#quota-disk").get_attribute("aria-invalid") == "true"
        assert state()["quota"]["disk_bytes"]["maximum"] is None
        assert_accessible(page, "quota dialog with a refusal")
        page.fill("#quota-disk", "2.5")
        page.press("#quota-disk", "Enter")
        expect(quotas).to_be_hidden()
        expect(row.locator(".disk")).to_have_text("0 bytes of 2.5 GB")
        expect(row.locator(".core-hours")).to_have_text("0.00 of 12.00")
        quota = state()["quota"]
        assert (
            quota["disk_bytes"]["maximum"] == 2_500_000_000 and quota["core_hours"]["maximum"] == "12.00000"
        )
        assert page.evaluate(focus_key) == f"quota-{user_id}"
        page.keyboard.press("Enter")
        expect(page.locator("#quota-disk")).to_have_value("2.5")
        page.fill("#quota-disk", "")
        page.click("#quota-form button[type=submit]")
        expect(row.locator(".disk")).to_have_text("0 bytes (no limit)")
        assert state()["quota"]["disk_bytes"]["maximum"] is None
        assert state()["quota"]["core_hours"]["maximum"] == "12.00000"

        # Every token revoked, after the question.
        row.get_by_role("button", name=f"Revoke tokens {target}").click()
        expect(dialog).to_contain_text(f"Revoke every token of {target}?")
        page.click("#confirm-ok")
        expect(status).to_have_text(f"Revoked 1 token(s) of {target}.")
        assert server.client(target_key).get("/workspaces/").status_code == 401

        # At phone width, the page (and its dialog) still fits and is accessible.
        page.set_viewport_size({"width": 375, "height": 800})
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        row.get_by_role("button", name=f"Quotas of {target}").click()
        assert_accessible(page, "administration with its quota dialog at phone width")
        page.click("#quota-cancel")
        expect(quotas).to_be_hidden()

        # A user who is not an admin: the page is refused (and not offered), so is the API.
        other = context.browser.new_context()
        try:
            theirs = other.new_page()
            sign_in(theirs, server, target)
            expect(theirs.locator("nav")).not_to_contain_text("Administration")
            answer = theirs.goto(server.base + "/administration")
            assert answer is not None and answer.status == 403
        finally:
            other.close()
        target_client = server.client(login_key(server, target))
        assert target_client.get("/admin/users/").status_code == 403
        r = target_client.put(f"/admin/users/{target}/", {"is_admin": True})
        assert r.status_code == 403 and r.json()["success"] is False
        assert target_client.delete("/admin/users/webuser/tokens/").status_code == 403
        assert state()["is_admin"] is False
    finally:
        context.close()


def test_pending_card_shows_start_sooner_suggestions(chromium, server: Server) -> None:
    """A pending session's card lists the scheduler's start-sooner suggestions, each shape with
    its expected start. Slurm makes them (tests/test_slurm_accounting.py checks that end to
    end); here the card module renders a pending job as /ws/events delivers it, in the page."""
    page = chromium.new_page()
    try:
        page.goto(server.base + "/login")
        text = page.evaluate(
            """async () => {
                const { Store, sessionCard } = await import('/static/sessions.js');
                const job = {id: 7, job_type: 'echo', status: 'pending', workspace_id: 1,
                    job_details: {current_job_details: {message: 'Slurm queue (Resources)',
                        suggestions: [{resource_options: {num_cpus: 1}, expected_start: '2030-01-02T03:04:05Z'},
                                      {resource_options: {time_limit_min: 30}, expected_start: '2030-01-02T03:05:00Z'}]}}};
                const store = new Store(() => {});
                store.noteJob(job);
                const card = document.createElement('article');
                card.append(...sessionCard(store, job, () => {}));
                return card.querySelector('.suggestions').innerText;
            }"""
        )
        assert "Would start sooner as a smaller session:" in text
        assert "1 CPU: expected to start" in text and "30 minutes: expected to start" in text
        running = page.evaluate(
            """async () => {
                const { Store, sessionCard } = await import('/static/sessions.js');
                const job = {id: 8, job_type: 'echo', status: 'running', workspace_id: 1,
                    job_details: {current_job_details: {suggestions: [{resource_options: {num_cpus: 1},
                        expected_start: '2030-01-02T03:04:05Z'}]}}};
                const store = new Store(() => {});
                store.noteJob(job);
                const card = document.createElement('article');
                card.append(...sessionCard(store, job, () => {}));
                return card.querySelector('.suggestions') === null;
            }"""
        )
        assert running, "a running session's card shows no suggestions"
    finally:
        page.close()
