"""Globus login (contract 2.1, 3.2 B13) against a fake Globus Auth + Groups service.

Each config gets one `uws` server per backend (module scope); the fake runs in this process and
the servers reach it through globus-sdk's service-URL environment overrides.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from fake_globus import GROUPS_SCOPE, FakeGlobus
from helpers.harness import IS_ROOT, Client, Server

INVALID = "Incorrect authentication credentials."
NOT_MEMBER = (
    "User is not a member of any allowed Globus groups. Please contact your administrator for access."
)
NO_GROUPS_TOKEN = "Groups token not available for authentication."
TOKEN_RE = re.compile(r"^[0-9a-f]{40}$")

GROUP_A = "6f0c1b7e-0000-4000-8000-00000000000a"
GROUP_B = "6f0c1b7e-0000-4000-8000-00000000000b"
OTHER_GROUP = "6f0c1b7e-0000-4000-8000-0000000000ff"
REDIRECT = "https://portal.example.org/globus/callback"


def globus_config(fake: FakeGlobus, mode: str, groups: list[str], extra: str = "") -> str:
    return f"""
c.UWSApp.authenticator_class = "globus"
c.GlobusAuthenticator.client_id = {fake.client_id!r}
c.GlobusAuthenticator.client_secret = {fake.client_secret!r}
c.GlobusAuthenticator.mode = {mode!r}
c.GlobusAuthenticator.allowed_globus_groups = {groups!r}
c.LocalFileSystemStorage.root_dir = "@DIR@/workspaces"
{extra}
"""


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGlobus]:
    f = FakeGlobus().start()
    yield f
    f.stop()


def _server(backend: str, fake: FakeGlobus, config: str) -> Server:
    return Server(backend, config, env=fake.env()).start()


@pytest.fixture(scope="module")
def token_server(backend: str, fake: FakeGlobus) -> Iterator[Server]:
    srv = _server(backend, fake, globus_config(fake, "token", []))
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def linking_server(backend: str, fake: FakeGlobus) -> Iterator[Server]:
    """Existing users may be taken over by email; storage accounts come from the OS when root."""
    extra = "c.GlobusAuthenticator.link_existing_users_by_email = True\n"
    if IS_ROOT:
        extra += 'c.UWSApp.storage_accounts_from = "local"\n'
    srv = _server(backend, fake, globus_config(fake, "token", [], extra))
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def groups_server(backend: str, fake: FakeGlobus) -> Iterator[Server]:
    # A short read timeout so the stalled-Groups test is quick (S10).
    config = globus_config(fake, "token", [GROUP_A, GROUP_B], "c.GlobusAuthenticator.read_timeout = 1.0")
    srv = _server(backend, fake, config)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def oauth_server(backend: str, fake: FakeGlobus) -> Iterator[Server]:
    srv = _server(backend, fake, globus_config(fake, "oauth", [GROUP_A]))
    yield srv
    srv.close()


def uniq(prefix: str = "g") -> str:
    return f"{prefix}{secrets.token_hex(4)}"


def login(server: Server, auth_token: Any) -> Any:
    return server.client().post("/tokens/", {"auth_token": auth_token})


def login_ok(server: Server, auth_token: str) -> Client:
    r = login(server, auth_token)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body == {"success": True, "message": "Successful authentication.", "token": body["token"]}
    assert TOKEN_RE.match(body["token"])
    return server.client(body["token"])


def assert_error(r: Any, status: int, message: str) -> None:
    assert r.status_code == status, r.text
    assert r.json() == {"success": False, "message": message}
    if status == 401:
        assert r.headers.get("WWW-Authenticate") == "Token"


def users_matching(observer: Client, search: str) -> list[dict[str, Any]]:
    r = observer.get("/users/", params={"search": search})
    assert r.status_code == 200, r.text
    return r.json()["data"]["users"]


def observer(server: Server, fake: FakeGlobus, groups: list[str] | None = None) -> Client:
    """Another Globus user, to look others up in GET /users/."""
    ident = fake.add_identity(f"{uniq('obs')}@example.net", "Obi Server", groups=groups)
    return login_ok(server, fake.add_token(ident))


def db_rows(server: Server) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table of the server's database."""
    from sqlalchemy import MetaData

    from uws.db import make_engine

    engine = make_engine(server.db_url)
    try:
        meta = MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            return {
                name: [dict(row._mapping) for row in conn.execute(table.select())]
                for name, table in meta.tables.items()
            }
    finally:
        engine.dispose()


def mapping_of(server: Server, sub: str) -> dict[str, Any]:
    rows = [r for r in db_rows(server)["external_user_mappings"] if r["external_user_id"] == sub]
    assert len(rows) == 1, rows
    return rows[0]


# ---- token mode -------------------------------------------------------------------------------


def test_token_login_gives_a_working_uws_token(token_server: Server, fake: FakeGlobus) -> None:
    ident = fake.add_identity(f"{uniq('ada')}@example.org", "Ada Lovelace King")
    globus_token = fake.add_token(ident)
    client = login_ok(token_server, globus_token)
    assert client.token != globus_token
    r = client.get("/workspaces/")
    assert r.status_code == 200, r.text
    assert r.json()["success"] is True
    # The server introspected exactly this token with its own client credentials.
    calls = [
        r for r in fake.requests_to("/v2/oauth2/token/introspect") if r.form.get("token") == [globus_token]
    ]
    assert len(calls) == 1
    assert fake.client_authenticated(calls[0].headers)


def test_second_login_maps_to_the_same_user(token_server: Server, fake: FakeGlobus) -> None:
    local = uniq("ada")
    ident = fake.add_identity(f"{local}@example.org", "Ada Lovelace King")
    first = login_ok(token_server, fake.add_token(ident))
    second = login_ok(token_server, fake.add_token(ident))
    assert first.token != second.token
    assert first.get("/workspaces/").status_code == 200
    assert second.get("/workspaces/").status_code == 200
    # One user only, and each of them sees the other's key's user as "self" (excluded).
    assert users_matching(first, local) == []
    assert users_matching(second, local) == []
    found = users_matching(observer(token_server, fake), local)
    assert len(found) == 1
    assert found[0]["username"] == local
    assert found[0]["email"] == f"{local}@example.org"
    assert (found[0]["first_name"], found[0]["last_name"]) == ("Ada", "Lovelace King")


def test_same_email_local_part_gets_a_suffix(token_server: Server, fake: FakeGlobus) -> None:
    local = uniq("carol")
    users = [
        fake.add_identity(f"{local}@{domain}", f"Carol {domain}") for domain in ("a.org", "b.org", "c.org")
    ]
    for ident in users:
        login_ok(token_server, fake.add_token(ident))
    # A repeated login of the second identity keeps its suffixed name (found by Globus id).
    login_ok(token_server, fake.add_token(users[1]))
    found = users_matching(observer(token_server, fake), local)
    assert sorted((u["username"], u["email"]) for u in found) == [
        (local, f"{local}@a.org"),
        (f"{local}1", f"{local}@b.org"),
        (f"{local}2", f"{local}@c.org"),
    ]


def add_user(server: Server, username: str, email: str) -> int:
    """A user made outside Globus (the client-token login, or migrated from the original)."""
    from sqlalchemy.orm import Session

    from uws import orm
    from uws.db import make_engine

    engine = make_engine(server.db_url)
    try:
        with Session(engine) as session:
            user = orm.User(username=username, email=email, first_name="Dave", last_name="Pre")
            session.add(user)
            session.commit()
            return user.id
    finally:
        engine.dispose()


def test_existing_user_with_same_name_and_email_is_not_taken_over(
    token_server: Server, fake: FakeGlobus
) -> None:
    """Whether an identity provider verified the email is not known here: by default a first
    Globus login never becomes an existing user, however well the email matches."""
    local = uniq("erin")
    user_id = add_user(token_server, local, f"{local}@example.org")
    ident = fake.add_identity(f"{local}@example.org", "Erin Claims")
    client = login_ok(token_server, fake.add_token(ident))
    mapped = mapping_of(token_server, ident.sub)["user_id"]
    assert mapped != user_id
    names = {u["id"]: u["username"] for u in db_rows(token_server)["users"]}
    assert (names[user_id], names[mapped]) == (local, f"{local}1")
    assert client.get("/workspaces/").json()["data"]["workspaces"] == []


def test_existing_user_with_same_name_and_email_is_linked_when_allowed(
    linking_server: Server, fake: FakeGlobus
) -> None:
    local = uniq("dave")
    user_id = add_user(linking_server, local, f"{local}@example.org")
    # The same person (username and email match, no Globus link yet) is linked, not duplicated...
    first = fake.add_identity(f"{local.upper()}@Example.org", "Dave Globus")
    login_ok(linking_server, fake.add_token(first))
    assert mapping_of(linking_server, first.sub)["user_id"] == user_id
    # ...but a second Globus identity with the same email is a different user.
    second = fake.add_identity(f"{local}@example.org", "Dave Other")
    login_ok(linking_server, fake.add_token(second))
    other = mapping_of(linking_server, second.sub)["user_id"]
    assert other != user_id
    names = {u["id"]: u["username"] for u in db_rows(linking_server)["users"]}
    assert (names[user_id], names[other]) == (local, f"{local}1")
    # Profile fields of the existing user are left alone.
    row = next(u for u in db_rows(linking_server)["users"] if u["id"] == user_id)
    assert (row["first_name"], row["last_name"]) == ("Dave", "Pre")


@pytest.mark.skipif(not IS_ROOT, reason="storage accounts come from the OS only when the tests run as root")
def test_system_account_names_are_never_given_out(linking_server: Server, fake: FakeGlobus) -> None:
    """With OS storage accounts, an email whose local part is a system account's name (or root's,
    or the server's own) gets a numbered name instead, which is no such account."""
    watcher = observer(linking_server, fake)
    for local in ("daemon", "nobody", pwd.getpwuid(os.getuid()).pw_name):
        email = f"{local}@{uniq('corp')}.example"
        login_ok(linking_server, fake.add_token(fake.add_identity(email, "Sys Tem")))
        assert [u["username"] for u in users_matching(watcher, email)] == [f"{local}1"]


def test_usernames_are_sanitised(token_server: Server, fake: FakeGlobus) -> None:
    tag = secrets.token_hex(3)
    cases = {
        f"Dr.Who+{tag}@example.org": f"dr.who_{tag}",
        f"9lives{tag}@example.org": f"u9lives{tag}",
        f"Long{tag}{'x' * 40}@example.org": (f"long{tag}{'x' * 40}")[:32],
    }
    watcher = observer(token_server, fake)
    for email, expected in cases.items():
        login_ok(token_server, fake.add_token(fake.add_identity(email, "Some Body")))
        found = users_matching(watcher, email)
        assert [u["username"] for u in found] == [expected]
        assert re.match(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$", found[0]["username"])


def test_reserved_admin_name_is_never_taken(token_server: Server, fake: FakeGlobus) -> None:
    email = f"admin@{uniq('corp')}.example"
    login_ok(token_server, fake.add_token(fake.add_identity(email, "Not Admin")))
    found = users_matching(observer(token_server, fake), email)
    assert [u["username"] for u in found] == ["admin1"]


def test_identity_without_email_or_name(token_server: Server, fake: FakeGlobus) -> None:
    name = uniq("noemail")
    ident = fake.add_identity(None, None, username=f"{name}@globusid.org")
    client = login_ok(token_server, fake.add_token(ident))
    assert client.get("/workspaces/").status_code == 200
    rows = [u for u in db_rows(token_server)["users"] if u["username"] == name]
    assert len(rows) == 1
    assert (rows[0]["email"], rows[0]["first_name"], rows[0]["last_name"]) == ("", "", "")


def test_expired_and_invalid_tokens_are_401(token_server: Server, fake: FakeGlobus) -> None:
    ident = fake.add_identity(f"{uniq('old')}@example.org")
    expired = fake.add_token(ident, active=False)
    for bad in (expired, "not-a-globus-token", "", 12345, None):
        assert_error(login(token_server, bad), 401, INVALID)


def test_missing_auth_token_is_400(token_server: Server, fake: FakeGlobus) -> None:
    c = token_server.client()
    assert_error(c.post("/tokens/", {}), 400, "Missing auth_token.")
    assert_error(c.post("/tokens/", {"token": "x", "redirect_url": REDIRECT}), 400, "Missing auth_token.")
    # A body that is not a JSON object counts as {} on /tokens/.
    assert_error(c.post("/tokens/", ["auth_token"]), 400, "Missing auth_token.")
    # Open endpoint: a garbled UWS-Authorization header is ignored.
    r = c.post("/tokens/", {}, headers={"UWS-Authorization": "garbage"})
    assert_error(r, 400, "Missing auth_token.")


def test_server_misconfiguration_is_500_not_401(token_server: Server, fake: FakeGlobus) -> None:
    ident = fake.add_identity(f"{uniq('mis')}@example.org")
    token = fake.add_token(ident)
    saved = fake.client_secret
    fake.client_secret = "rotated-elsewhere"  # Auth now rejects the server's credentials
    try:
        assert_error(login(token_server, token), 500, "A server error occurred.")
    finally:
        fake.client_secret = saved
    login_ok(token_server, token)


def test_globus_tokens_are_never_stored(
    token_server: Server, groups_server: Server, fake: FakeGlobus
) -> None:
    tokens = []
    for server, groups in ((token_server, None), (groups_server, [GROUP_A])):
        token = fake.add_token(fake.add_identity(f"{uniq('sec')}@example.org", groups=groups))
        login_ok(server, token)
        tokens.append(token)
        dump = repr(db_rows(server))
        assert token not in dump
        assert token.split("-", 1)[1] not in dump
    assert len(tokens) == 2


# ---- allowed groups ---------------------------------------------------------------------------


def test_group_member_logs_in_and_the_check_is_recorded(groups_server: Server, fake: FakeGlobus) -> None:
    ident = fake.add_identity(f"{uniq('mem')}@example.org", groups=[OTHER_GROUP, GROUP_B])
    token = fake.add_token(ident)
    client = login_ok(groups_server, token)
    assert client.get("/workspaces/").status_code == 200
    # The groups call used the user's own token.
    assert any(
        r.headers.get("authorization") == f"Bearer {token}" for r in fake.requests_to("/v2/groups/my_groups")
    )
    details = mapping_of(groups_server, ident.sub)["external_user_details"]
    assert details["group_check_passed"] is True
    assert details["member_of_allowed_groups"] == [GROUP_B]
    assert details["allowed_globus_groups"] == sorted([GROUP_A, GROUP_B])


def test_non_member_is_403(groups_server: Server, fake: FakeGlobus) -> None:
    for groups in ([], [OTHER_GROUP], {GROUP_A: "invited", GROUP_B: "pending"}):
        ident = fake.add_identity(f"{uniq('out')}@example.org", groups=groups)
        assert_error(login(groups_server, fake.add_token(ident)), 403, NOT_MEMBER)
        # No user was created for a refused identity.
        assert not [
            m for m in db_rows(groups_server)["external_user_mappings"] if m["external_user_id"] == ident.sub
        ]


def test_only_active_memberships_count(groups_server: Server, fake: FakeGlobus) -> None:
    # Even when Groups lists invited/pending memberships, only an active one lets a user in.
    fake.groups_ignore_statuses = True
    try:
        ident = fake.add_identity(
            f"{uniq('inv')}@example.org", groups={GROUP_A: "invited", GROUP_B: "pending"}
        )
        assert_error(login(groups_server, fake.add_token(ident)), 403, NOT_MEMBER)
        ident.groups[GROUP_B] = "active"
        login_ok(groups_server, fake.add_token(ident))
    finally:
        fake.groups_ignore_statuses = False


def test_invalid_token_is_401_before_any_group_check(groups_server: Server, fake: FakeGlobus) -> None:
    before = len(fake.requests_to("/v2/groups/my_groups"))
    expired = fake.add_token(fake.add_identity(f"{uniq('exp')}@example.org", groups=[GROUP_A]), active=False)
    assert_error(login(groups_server, expired), 401, INVALID)
    assert_error(login(groups_server, "bogus"), 401, INVALID)
    assert len(fake.requests_to("/v2/groups/my_groups")) == before


def test_removed_member_is_refused_and_the_refusal_recorded(groups_server: Server, fake: FakeGlobus) -> None:
    ident = fake.add_identity(f"{uniq('left')}@example.org", groups=[GROUP_A])
    login_ok(groups_server, fake.add_token(ident))
    assert mapping_of(groups_server, ident.sub)["external_user_details"]["group_check_passed"] is True
    ident.groups[GROUP_A] = "removed"
    assert_error(login(groups_server, fake.add_token(ident)), 403, NOT_MEMBER)
    details = mapping_of(groups_server, ident.sub)["external_user_details"]
    assert details["group_check_passed"] is False
    assert details["member_of_allowed_groups"] == []


@pytest.mark.parametrize("status", [500, 503, 401])
def test_groups_api_failure_fails_closed(groups_server: Server, fake: FakeGlobus, status: int) -> None:
    ident = fake.add_identity(f"{uniq('fc')}@example.org", groups=[GROUP_A])
    fake.groups_fail_status = status
    try:
        assert_error(login(groups_server, fake.add_token(ident)), 403, NOT_MEMBER)
    finally:
        fake.groups_fail_status = None
    login_ok(groups_server, fake.add_token(ident))


def test_token_without_groups_scope_is_refused(groups_server: Server, fake: FakeGlobus) -> None:
    ident = fake.add_identity(f"{uniq('scope')}@example.org", groups=[GROUP_A])
    auth_only = fake.add_token(ident, resource_server="auth.globus.org", scope="openid profile email")
    assert_error(login(groups_server, auth_only), 403, NOT_MEMBER)


def test_stalled_groups_api_times_out_and_fails_closed(groups_server: Server, fake: FakeGlobus) -> None:
    ident = fake.add_identity(f"{uniq('slow')}@example.org", groups=[GROUP_A])
    fake.groups_delay = 4.0
    try:
        started = time.monotonic()
        assert_error(login(groups_server, fake.add_token(ident)), 403, NOT_MEMBER)
        # read_timeout is 1 s, one retry: well under the 4 s x 2 a hang would take.
        assert time.monotonic() - started < 4.0
    finally:
        fake.groups_delay = 0.0


# ---- OAuth mode -------------------------------------------------------------------------------


def test_oauth_missing_redirect_is_400(oauth_server: Server) -> None:
    c = oauth_server.client()
    for body in ({}, {"code": "abc"}, {"redirect_url": ""}, {"auth_token": "x"}):
        assert_error(c.post("/tokens/", body), 400, "Missing redirect url.")


def test_oauth_without_code_returns_the_authorize_url(oauth_server: Server, fake: FakeGlobus) -> None:
    r = oauth_server.client().post("/tokens/", {"redirect_url": REDIRECT})
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body) == ["auth_uri"]
    url = urlsplit(body["auth_uri"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == fake.url + "/v2/oauth2/authorize"
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert query["client_id"] == fake.client_id
    assert query["redirect_uri"] == REDIRECT
    assert query["response_type"] == "code"
    assert GROUPS_SCOPE in query["scope"].split()
    assert "openid" in query["scope"].split()
    assert "client_secret" not in body["auth_uri"] and fake.client_secret not in body["auth_uri"]


def test_oauth_code_exchange_logs_in(oauth_server: Server, fake: FakeGlobus) -> None:
    local = uniq("oa")
    ident = fake.add_identity(f"{local}@example.org", "Olive Auth", groups=[GROUP_A])
    code = fake.add_code(ident, REDIRECT)
    client = login_ok_body(oauth_server, {"redirect_url": REDIRECT, "code": code})
    assert client.get("/workspaces/").status_code == 200
    exchange = [r for r in fake.requests_to("/v2/oauth2/token") if r.form.get("code") == [code]]
    assert len(exchange) == 1
    assert exchange[0].form["grant_type"] == ["authorization_code"]
    assert exchange[0].form["redirect_uri"] == [REDIRECT]
    assert fake.client_authenticated(exchange[0].headers)
    # The groups-scoped token was the one checked against Groups.
    groups_token = next(
        t.value
        for t in fake.tokens.values()
        if t.identity is ident and t.resource_server == "groups.api.globus.org"
    )
    assert any(
        r.headers.get("authorization") == f"Bearer {groups_token}"
        for r in fake.requests_to("/v2/groups/my_groups")
    )
    # The same identity via a second code maps to the same user.
    login_ok_body(oauth_server, {"redirect_url": REDIRECT, "code": fake.add_code(ident, REDIRECT)})
    found = users_matching(observer_oauth(oauth_server, fake), local)
    assert [(u["username"], u["first_name"], u["last_name"]) for u in found] == [(local, "Olive", "Auth")]


def test_oauth_bad_or_reused_code_is_401(oauth_server: Server, fake: FakeGlobus) -> None:
    c = oauth_server.client()
    assert_error(c.post("/tokens/", {"redirect_url": REDIRECT, "code": "made-up"}), 401, INVALID)
    ident = fake.add_identity(f"{uniq('re')}@example.org", groups=[GROUP_A])
    code = fake.add_code(ident, REDIRECT)
    # A redirect different from the one the code was issued for is refused by Globus.
    assert_error(c.post("/tokens/", {"redirect_url": REDIRECT + "/other", "code": code}), 401, INVALID)
    code = fake.add_code(ident, REDIRECT)
    login_ok_body(oauth_server, {"redirect_url": REDIRECT, "code": code})
    assert_error(c.post("/tokens/", {"redirect_url": REDIRECT, "code": code}), 401, INVALID)


def test_oauth_without_groups_token_is_403(oauth_server: Server, fake: FakeGlobus) -> None:
    ident = fake.add_identity(f"{uniq('ng')}@example.org", groups=[GROUP_A])
    code = fake.add_code(ident, REDIRECT, with_groups_token=False)
    r = oauth_server.client().post("/tokens/", {"redirect_url": REDIRECT, "code": code})
    assert_error(r, 403, NO_GROUPS_TOKEN)


def test_oauth_non_member_is_403(oauth_server: Server, fake: FakeGlobus) -> None:
    ident = fake.add_identity(f"{uniq('nm')}@example.org", groups=[GROUP_B])  # allowed only on groups_server
    code = fake.add_code(ident, REDIRECT)
    r = oauth_server.client().post("/tokens/", {"redirect_url": REDIRECT, "code": code})
    assert_error(r, 403, NOT_MEMBER)


def login_ok_body(server: Server, body: dict[str, Any]) -> Client:
    r = server.client().post("/tokens/", body)
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    assert TOKEN_RE.match(token)
    return server.client(token)


def observer_oauth(server: Server, fake: FakeGlobus) -> Client:
    ident = fake.add_identity(f"{uniq('obs')}@example.net", "Obi Server", groups=[GROUP_A])
    return login_ok_body(server, {"redirect_url": REDIRECT, "code": fake.add_code(ident, REDIRECT)})


# ---- start-up ---------------------------------------------------------------------------------


def test_globus_sdk_is_not_imported_at_start_up() -> None:
    code = (
        "import sys, uws.app, uws.auth.globus as g\n"
        "a = g.GlobusAuthenticator(client_id='x', client_secret='y', mode='oauth')\n"
        "assert 'globus_sdk' not in sys.modules, 'globus_sdk imported eagerly'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
