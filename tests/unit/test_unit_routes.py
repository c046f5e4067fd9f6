"""The route table, imported without building the application, against share/uws/openapi.yaml;
the one writer of the JSON error envelope; and the settings handlers reach the server through."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from tornado import web
from tornado.routing import PathMatches, Rule
from tornado.websocket import WebSocketHandler

from uws.errors import APIError, error_body
from uws.handlers import api_host_routes, session_host_routes
from uws.handlers.base import UpgradeMatches
from uws.handlers.components import Components, WebConfig, web_settings

DOC_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "share", "uws", "openapi.yaml")
METHODS = ("get", "put", "post", "delete", "patch", "head")
MODES = ("path", "origin")


@pytest.fixture(scope="session")
def remove_test_os_accounts() -> Iterator[None]:
    """Overrides tests/conftest.py's: in-process tests create no OS accounts, and must not
    remove those of an end-to-end run going on at the same time."""
    yield


def load_document() -> dict[str, Any]:
    with open(DOC_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "7", path)


def rules(mode: str) -> list[tuple[re.Pattern[str], type, bool]]:
    """(path regex, handler, only for websocket upgrades) of every route on the API's host."""
    found = []
    for route in api_host_routes(mode):
        rule = route if isinstance(route, Rule) else Rule(PathMatches(route[0]), route[1])
        assert isinstance(rule.matcher, PathMatches)
        found.append((rule.matcher.regex, rule.target, isinstance(rule.matcher, UpgradeMatches)))
    return found


def served_methods(handler: type) -> set[str]:
    return {m for m in METHODS if getattr(handler, m) is not getattr(web.RequestHandler, m)}


def first_match(mode: str, path: str) -> tuple[type, bool] | None:
    """The handler that serves a plain (not upgrade) request for `path`: the first that matches."""
    for regex, handler, upgrade in rules(mode):
        if not upgrade and regex.fullmatch(path):
            return handler, upgrade
    return None


@pytest.mark.parametrize("mode", MODES)
def test_every_documented_operation_has_a_route(mode: str) -> None:
    problems = []
    for path, item in load_document()["paths"].items():
        documented = {m for m in item if m in METHODS}
        forms = [concrete(path)] + ([concrete(path)[:-1]] if path.endswith("/") else [])
        for form in forms:
            match = first_match(mode, form)
            if match is None:
                problems.append(f"{form}: no route")
            elif path.startswith("/passthrough/") and mode == "origin":
                # Sessions are on their own host names; this path only says so, to any method.
                assert match[0].__name__ == "SessionElsewhereHandler"
            elif documented - served_methods(match[0]):
                problems.append(f"{form}: {match[0].__name__} lacks {documented - served_methods(match[0])}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("mode", MODES)
def test_every_route_is_documented(mode: str) -> None:
    doc = load_document()
    documented = [concrete(p) for p in doc["paths"]]
    described = [concrete(p) for p in re.findall(r"`(/[^`\s]*)`", doc["info"]["description"])]
    problems = []
    for regex, handler, upgrade in rules(mode):
        if upgrade or issubclass(handler, WebSocketHandler):
            # Websocket routes are described in the document's text, not as operations.
            if not any(regex.fullmatch(p) for p in described):
                problems.append(f"websocket route {regex.pattern} is not described")
        elif not any(regex.fullmatch(p) for p in documented):
            problems.append(f"route {regex.pattern} ({handler.__name__}) has no documented path")
    assert not problems, "\n".join(problems)


def test_job_stream_shares_the_rest_paths_only_on_upgrade() -> None:
    upgrades = [(regex, handler) for regex, handler, upgrade in rules("path") if upgrade]
    assert any(regex.fullmatch("/jobs/7/") and h.__name__ == "JobStreamHandler" for regex, h in upgrades)
    assert first_match("path", "/jobs/7/")[0].__name__ == "JobsHandler"  # type: ignore[index]
    # Upgrades are tried before every plain route.
    kinds = [upgrade for _, _, upgrade in rules("path")]
    assert kinds == sorted(kinds, reverse=True)


def test_session_hosts_send_everything_to_the_session() -> None:
    names = {
        route.target.__name__ if isinstance(route, Rule) else route[1].__name__
        for route in session_host_routes
    }
    assert names == {"PassthroughHandler", "PassthroughWebSocket"}


def test_ids_past_4300_digits_are_no_route() -> None:
    assert first_match("path", "/workspaces/" + "7" * 4300 + "/") is not None
    assert first_match("path", "/workspaces/" + "7" * 4301 + "/") is None


def test_error_envelope_bytes() -> None:
    """The exact bytes the contract's clients (and tests/test_conventions.py) rely on."""
    assert error_body("Not found.") == b'{"success": false, "message": "Not found."}'
    assert json.loads(error_body('a "quoted" \u00e9')) == {"success": False, "message": 'a "quoted" \u00e9'}


def accessor_names() -> set[str]:
    return {name for name, value in vars(Components).items() if isinstance(value, property)}


def test_the_app_provides_every_accessor() -> None:
    """web_settings fills a key for every accessor handlers use, and a WebConfig whose
    fields are the app's configured values."""
    fields = WebConfig.__dataclass_fields__
    values: dict[str, Any] = {name: f"<{name}>" for name in fields}
    values.update({name: object() for name in accessor_names()})
    values.update(
        auth_service=object(),
        cors_allowed_origins=["*"],
        session_urls=SimpleNamespace(base=lambda: "https://example.org", hosts=object()),
        proxy=SimpleNamespace(
            connect_timeout="<proxy_connect_timeout>",
            request_timeout="<proxy_request_timeout>",
            websocket_max_message_size="<proxy_websocket_max_message_size>",
        ),
        health=SimpleNamespace(report=object()),
        web_ui=SimpleNamespace(cookie_secret="<cookie_secret>"),
    )
    fake = SimpleNamespace(**values)
    settings = web_settings(fake)  # type: ignore[arg-type]
    parts = Components()
    parts.settings = settings
    for name in accessor_names():
        getattr(parts, name)  # a KeyError names a missing setting
    assert parts.auth is fake.auth_service
    assert parts.config.sessions_base == "https://example.org"
    assert parts.config.cors_allowed_origins == ("*",)
    assert parts.config.max_json_body_size == "<max_json_body_size>"


def test_every_handler_answers_an_exception_the_same_way() -> None:
    """API handlers and pages answer through one exception_answer: their own error, a client's
    mistake, 503 with Retry-After while the database cannot answer, else 500."""
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from uws.handlers import base, pages

    handler = SimpleNamespace(request=SimpleNamespace(method="GET", path="/x"))
    own = APIError(409, "Busy.")
    assert base.exception_answer(handler, own) is own  # type: ignore[arg-type]
    assert base.exception_answer(handler, web.HTTPError(404)).status == 404  # type: ignore[arg-type]
    lost = base.exception_answer(handler, PoolTimeout())  # type: ignore[arg-type]
    assert (lost.status, lost.headers) == (503, {"Retry-After": "1"})
    assert base.exception_answer(handler, ValueError("bug")).status == 500  # type: ignore[arg-type]
    # Pages take the same path (they answered 500 while the database was down).
    assert "exception_answer" in pages.PageHandler._handle_request_exception.__code__.co_names
