"""The scope logic (uws.auth.scopes) and that every API handler declares, for each method it
serves, the scope prepare() checks."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tornado import web
from tornado.routing import Rule

from uws import models
from uws.auth.scopes import ADMIN_SCOPES, USER_SCOPES, CurrentUser, parse_scopes, require_scope
from uws.errors import APIError
from uws.handlers import api_host_routes
from uws.handlers.base import HANDLER_METHODS, BaseHandler
from uws.keys import SessionTokens
from uws.models import job_view

ALICE = CurrentUser(1, "alice", "a@x.org", "Alice", "L")
ADMIN = replace(ALICE, is_admin=True)


def test_login_tokens_hold_the_owners_rights() -> None:
    assert ALICE.rights() == USER_SCOPES
    assert ADMIN.rights() == ADMIN_SCOPES


def test_a_token_holds_its_scopes_within_the_owners_rights() -> None:
    read_only = replace(ALICE, scopes=frozenset({"read"}))
    assert read_only.rights() == {"read"}
    assert read_only.may("read") and not read_only.may("workspaces") and not read_only.may("sessions")
    # A non-admin's token naming admin (made while they were an admin) holds nothing of it.
    assert replace(ALICE, scopes=frozenset({"admin", "read"})).rights() == {"read"}
    # An admin token reads the metrics too.
    assert replace(ADMIN, scopes=frozenset({"admin"})).rights() == {"admin", "metrics"}


def test_demotion_takes_admin_from_every_token() -> None:
    token = replace(ADMIN, scopes=frozenset({"admin", "sessions"}))
    assert token.may("admin") and token.may("metrics")
    demoted = replace(token, is_admin=False)
    assert demoted.rights() == {"sessions"}
    assert not replace(ADMIN, is_admin=False).may("admin")


def test_covers() -> None:
    read_only = replace(ALICE, scopes=frozenset({"read"}))
    assert ALICE.covers(None) and ALICE.covers(frozenset({"read", "sessions"}))
    assert read_only.covers(frozenset({"read"}))
    assert not read_only.covers(None)
    assert not read_only.covers(frozenset({"read", "workspaces"}))
    # For a non-admin, admin in a token's scopes is no right at all, so it is covered.
    assert ALICE.covers(frozenset({"admin"}))


def test_require_scope_messages() -> None:
    require_scope(ALICE, None)
    require_scope(ALICE, "read")
    with pytest.raises(APIError) as e:
        require_scope(replace(ALICE, scopes=frozenset({"read"})), "workspaces")
    assert (e.value.status, e.value.message) == (403, "This token does not have the 'workspaces' scope.")
    with pytest.raises(APIError) as e:
        require_scope(ALICE, "admin")
    assert (e.value.status, e.value.message) == (403, "Only administrators may do this.")
    with pytest.raises(APIError) as e:
        require_scope(replace(ADMIN, scopes=frozenset({"read"})), "admin")
    assert (e.value.status, e.value.message) == (403, "This token does not have the 'admin' scope.")


@pytest.mark.parametrize(
    "caller,value,status,fragment",
    [
        (ALICE, None, 400, "non-empty list"),
        (ALICE, [], 400, "non-empty list"),
        (ALICE, "read", 400, "non-empty list"),
        (ALICE, ["read", 3], 400, "non-empty list"),
        (ALICE, ["read", "root"], 400, "Unknown scope(s): root."),
        (ALICE, ["admin"], 403, "Only administrators"),
        (ALICE, ["metrics"], 403, "Only administrators"),
        (replace(ALICE, scopes=frozenset({"read"})), ["read", "sessions"], 403, "does not hold: sessions"),
        (replace(ADMIN, scopes=frozenset({"read"})), ["admin"], 403, "does not hold: admin"),
    ],
)
def test_parse_scopes_refuses(caller: CurrentUser, value: object, status: int, fragment: str) -> None:
    with pytest.raises(APIError) as e:
        parse_scopes(value, caller)
    assert e.value.status == status and fragment in e.value.message


def test_parse_scopes_accepts_a_subset() -> None:
    assert parse_scopes(["read", "read", "sessions"], ALICE) == {"read", "sessions"}
    assert parse_scopes(["admin", "metrics"], ADMIN) == {"admin", "metrics"}


def test_job_view_gives_the_link_token_only_with_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = SessionTokens(b"k" * 32)
    monkeypatch.setattr(models, "session_tokens", tokens)
    link = {"url_domain": "http://x", "url_path": f"/passthrough/7/?a=1&token={tokens.token(7)}"}
    job = {"id": 7, "job_details": {"metrics": {}, "current_job_details": {"connection_details": link}}}
    assert job_view(job, True) is job
    stripped = job_view(job, False)
    assert (
        stripped["job_details"]["current_job_details"]["connection_details"]["url_path"]
        == "/passthrough/7/?a=1"
    )
    assert link["url_path"].endswith(f"token={tokens.token(7)}")  # the original is left alone
    # A stored event's link has no token: the owner's view adds the job's own, never another's.
    whole = job_view(stripped, True)["job_details"]["current_job_details"]["connection_details"]
    assert whole["url_path"] == f"/passthrough/7/?a=1&token={tokens.token(7)}"
    forged = {**link, "url_path": "/passthrough/7/?token=forged"}
    job["job_details"]["current_job_details"]["connection_details"] = forged
    assert job_view(job, True)["job_details"]["current_job_details"]["connection_details"]["url_path"] == (
        f"/passthrough/7/?token={tokens.token(7)}"
    )
    assert job_view({"id": 1, "job_details": {"current_job_details": {}}}, False)["id"] == 1


def api_handlers() -> list[type[BaseHandler]]:
    found = []
    for route in api_host_routes("path"):
        target = route.target if isinstance(route, Rule) else route[1]
        if isinstance(target, type) and issubclass(target, BaseHandler) and target not in found:
            found.append(target)
    return found


def test_every_method_of_every_handler_names_its_scope() -> None:
    """prepare() looks each request's method up in required_scopes: a method served without an
    entry would be a 500, so each must be declared (and a write never inherits GET's `read`)."""
    problems = []
    checked = 0
    for handler in api_handlers():
        if not handler.auth_required:
            continue
        for method in HANDLER_METHODS:
            served = getattr(handler, method.lower()) is not getattr(web.RequestHandler, method.lower())
            if served and method not in handler.required_scopes:
                problems.append(f"{handler.__name__}.{method.lower()}")
            checked += served
    assert checked >= 20, "too few handler methods found: the route table was not read"
    assert not problems, f"no scope declared for {problems}"


def test_writes_need_more_than_read() -> None:
    for handler in api_handlers():
        for method, scope in handler.required_scopes.items():
            if method not in ("GET", "HEAD") and handler.auth_required:
                assert scope != "read" or handler.__name__ == "TicketHandler", (handler.__name__, method)
