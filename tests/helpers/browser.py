"""Headless Chromium for the browser tests: Debian's package, driven by Playwright."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from helpers.configs import CHROMIUM_ARGS


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
