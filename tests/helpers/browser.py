"""Headless Chromium for the browser tests: Debian's package, driven by Playwright; and what the
web interface's browser tests do with it: screenshots, axe-core's check, signing in, an upload
slowed down to watch its progress."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from helpers.configs import CHROMIUM_ARGS
from helpers.harness import TESTS, Server

OUTPUT = os.environ.get("UWS_TEST_OUTPUT") or os.path.join(TESTS, "output")


def chromium_path() -> str:
    """Debian's Chromium; the calling test module is skipped, saying why, where there is none."""
    path = shutil.which("chromium") or shutil.which("chromium-browser") or ""
    if not path:
        pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)
    return path


def launched_chromium(playwright_sync: Any, path: str) -> Iterator[Any]:
    """The body of the modules' `chromium` fixtures: one browser, closed afterwards."""
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
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

    def __call__(self, page: Any, what: str) -> None:
        self.count += 1
        page.screenshot(path=os.path.join(self.dir, f"{self.count:02d}-{what}.png"), full_page=True)


_axe: list[Any] = []


def assert_accessible(page: Any, what: str) -> None:
    """axe-core finds nothing serious or critical on the page as it is now."""
    if not _axe:
        from axe_playwright_python.sync_playwright import Axe  # (the calling module skips without it)

        _axe.append(Axe())
    found = _axe[0].run(page).response["violations"]
    bad = [v for v in found if v["impact"] in ("serious", "critical")]
    assert not bad, f"{what}: " + "; ".join(
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}" for v in bad
    )


def login_key(server: Server, username: str) -> str:
    """A login token of `username` (the development login, through the API)."""
    r = server.client().post(
        "/tokens/", {"user_info": {"username": username, "email": f"{username}@localhost"}}
    )
    assert r.status_code == 200, r.text
    return r.json()["token"]


def sign_in(page: Any, server: Server, username: str) -> None:
    """The development login's form, filled in and sent with the keyboard."""
    page.goto(server.base + "/login")
    page.fill("#username", username)
    page.press("#username", "Enter")
    page.wait_for_url(server.base + "/")


def watch_upload_progress(page: Any, context: Any) -> Callable[[], list[tuple[float, str]]]:
    """Slows the page's uploads to 200 KB/s (Chromium's network emulation) and records the
    progress bar's value with the status line's text at each change; returns a function that
    reads them, which also lifts the slowdown."""
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 200_000},
    )
    page.evaluate(
        """() => {
            window.progressSeen = [];
            const bar = document.getElementById('upload-progress');
            new MutationObserver(() => window.progressSeen.push([bar.value, document.getElementById('upload-status').textContent]))
                .observe(document.getElementById('upload-status'), { childList: true, characterData: true, subtree: true });
        }"""
    )

    def seen() -> list[tuple[float, str]]:
        cdp.send(
            "Network.emulateNetworkConditions",
            {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
        )
        cdp.detach()
        return [(value, text) for value, text in page.evaluate("window.progressSeen")]

    return seen
