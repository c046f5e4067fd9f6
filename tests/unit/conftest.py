"""Fixtures for the in-process tests: no server, no OS accounts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def remove_test_os_accounts() -> Iterator[None]:
    """Overrides tests/conftest.py's: in-process tests create no OS accounts, and must not
    remove those of an end-to-end run going on at the same time."""
    yield
