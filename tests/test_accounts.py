"""Which OS accounts a UWS username may map onto, and that no login method runs unless named."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile

import pytest
import requests

from helpers.api import unique_name
from helpers.configs import shared_dir
from helpers.harness import IS_ROOT, Server, free_port, uws_command

RESERVED = "Invalid username in user_info: it names a system account."
NO_LOGIN = "c.UWSApp.authenticator_class"


def post_login(server: Server, client_token: str, username: str) -> requests.Response:
    info = {"username": username, "email": "someone@example.org"}
    return server.client().post("/tokens/", {"client_token": client_token, "user_info": info})


def user_rows(server: Server, username: str) -> int:
    return server.sql(f"SELECT COUNT(*) FROM users WHERE username = '{username}'")[0][0]


# ---- usernames ---------------------------------------------------------------------------------


@pytest.mark.skipif(not IS_ROOT, reason="storage accounts come from the OS only when the tests run as root")
def test_root_system_and_server_accounts_are_refused_as_usernames(server: Server, client_token: str) -> None:
    own = pwd.getpwuid(os.getuid()).pw_name  # the server runs as the test runner
    names = ["root", "daemon", "nobody", own]
    names += [n for n in ("www-data", "sys", "bin") if _exists(n)]
    for name in names:
        r = post_login(server, client_token, name)
        assert r.status_code == 400, (name, r.text)
        assert r.json() == {"success": False, "message": RESERVED}
        assert user_rows(server, name) == 0, name


@pytest.mark.skipif(not IS_ROOT, reason="storage accounts come from the OS only when the tests run as root")
def test_people_accounts_still_log_in_and_get_storage(server: Server, client_token: str) -> None:
    name = unique_name("acct")
    r = post_login(server, client_token, name)
    assert r.status_code == 200, r.text
    c = server.client(r.json()["token"])
    r = c.post("/workspaces/", {"name": "w", "description": ""})
    assert r.status_code == 200, r.text
    assert pwd.getpwnam(name).pw_uid >= 1000


@pytest.mark.parametrize("name", ["mallory\n", "mallory\r\n", "\nmallory", "mal\nlory"])
def test_username_with_a_line_break_is_refused(server: Server, client_token: str, name: str) -> None:
    r = post_login(server, client_token, name)
    assert r.status_code == 400, r.text
    assert r.json() == {"success": False, "message": "Invalid username in user_info."}
    assert server.sql("SELECT COUNT(*) FROM users WHERE username LIKE '%mal%lory%'")[0][0] == 0


def test_username_check_matches_the_whole_name() -> None:
    from uws.auth.accounts import valid_username

    assert valid_username("mallory")
    assert valid_username("a" * 32)
    for bad in ("mallory\n", "a" * 33, "", "-x", "x y", "x\x00"):
        assert not valid_username(bad), repr(bad)


def test_uid_range_comes_from_login_defs(tmp_path) -> None:
    from uws.auth.accounts import login_defs_uid_range

    defs = tmp_path / "login.defs"
    defs.write_text("# comment\nUID_MIN\t\t 2000\nUID_MAX 0x7000\nGID_MIN 5\n")
    assert login_defs_uid_range(str(defs)) == (2000, 0x7000)
    defs.write_text("UID_MIN nonsense\n")
    assert login_defs_uid_range(str(defs)) == (1000, 60000)
    assert login_defs_uid_range(str(tmp_path / "missing")) == (1000, 60000)


LOOKUP_AS_OTHER_ACCOUNT = """
import sys
sys.path.insert(0, sys.argv[1])
from uws.auth.accounts import OSAccounts
from uws.errors import APIError
accounts = OSAccounts()
for name in sys.argv[2:]:
    try:
        print(name, accounts.reserved(name), accounts.account(name).uid)
    except APIError as e:
        print(name, accounts.reserved(name), "refused:", e.message)
"""


@pytest.mark.skipif(not IS_ROOT, reason="needs two OS accounts")
def test_the_servers_own_account_is_refused_when_it_is_not_root() -> None:
    """A server running as an ordinary account (here: the lookup itself, run as such an account,
    since a whole test server as another account cannot read this checkout's data directories)
    refuses that account as a user's, and still maps other people's accounts."""
    me, other = unique_name("self"), unique_name("peer")
    for name in (me, other):
        subprocess.run(["useradd", "--no-create-home", "--", name], check=True, capture_output=True)
    try:
        result = subprocess.run(
            ["/usr/bin/python3", "-c", LOOKUP_AS_OTHER_ACCOUNT, shared_dir(), me, other],
            user=me,
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
        assert result.returncode == 0, result.stderr
        lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
        assert lines[me] == "True refused: User could not be found/created on main storage system."
        assert lines[other] == f"False {pwd.getpwnam(other).pw_uid}"
    finally:
        for name in (me, other):
            subprocess.run(["userdel", "--", name], capture_output=True)


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


# ---- no default login method --------------------------------------------------------------------


def run_uws(args: list[str], cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run(uws_command() + args, capture_output=True, text=True, cwd=cwd, timeout=60)


@pytest.fixture
def workdir() -> str:
    path = tempfile.mkdtemp(prefix="uws-nologin-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_embedded_defaults_without_a_login_method_do_not_start(workdir: str) -> None:
    r = run_uws(["--port", str(free_port())], workdir)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert NO_LOGIN in r.stderr and "--dev" in r.stderr
    assert not os.path.exists(os.path.join(workdir, "uws-data"))


def test_a_config_naming_no_login_method_does_not_start(workdir: str) -> None:
    config = os.path.join(workdir, "uws_config.py")
    with open(config, "w") as f:
        f.write(f'c.LocalFileSystemStorage.root_dir = "{workdir}/workspaces"\n')
    r = run_uws(["--config", config, "--port", str(free_port())], workdir)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert NO_LOGIN in r.stderr
    r = run_uws(["check-config", config], workdir)
    assert r.returncode == 2 and NO_LOGIN in r.stderr
    # Subcommands that only use the database do not need one.
    r = run_uws(["upgrade-db", "--config", config, "--db-url", f"sqlite:///{workdir}/u.sqlite"], workdir)
    assert r.returncode == 0, r.stderr


def test_dev_login_only_when_named(workdir: str) -> None:
    config = f'c.UWSApp.authenticator_class = "local"\nc.LocalFileSystemStorage.root_dir = "{workdir}/ws"\n'
    srv = Server("sqlite", config).start()
    try:
        r = srv.client().post("/tokens/", {"user_info": {"username": "dev", "email": "dev@localhost"}})
        assert r.status_code == 400
        assert r.json()["message"].startswith("Missing client_token.")
    finally:
        srv.close()
    # --dev names it: a login without a client token works (what scripts/serve passes).
    srv = Server("sqlite", config.replace('"local"', '"globus"'), extra_args=["--dev"]).start()
    try:
        r = srv.client().post("/tokens/", {"user_info": {"username": "dev", "email": "dev@localhost"}})
        assert r.status_code == 200, r.text
    finally:
        srv.close()


def test_scripts_serve_adds_dev_only_without_a_config(tmp_path) -> None:
    """scripts/serve's choice of arguments, with `uws` replaced by a script printing them (the
    real one would install a virtualenv)."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shutil.copy(os.path.join(root, "scripts", "serve"), repo / "scripts" / "serve")
    (repo / "scripts" / "_venv.sh").write_text('cd "$(dirname "$0")/.."\n')
    (repo / ".venv" / "bin").mkdir(parents=True)
    fake = repo / ".venv" / "bin" / "uws"
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)

    def serve(*args: str) -> str:
        out = subprocess.run(["bash", str(repo / "scripts" / "serve"), *args], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert serve() == "--dev"
    assert serve("--port", "8001") == "--dev --port 8001"
    assert serve("--config", "uws_config.py") == "--config uws_config.py"
    assert serve("--config=uws_config.py", "--port", "1") == "--config=uws_config.py --port 1"
    assert serve("user", "list") == "user list"
