"""Configuration (both formats), the CLI subcommands and the database schema lifecycle."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile

import pytest

from helpers.api import unique_name
from helpers.configs import LOCAL_CONFIG
from helpers.harness import IS_ROOT, ROOT, Server, free_port, uws_command

REFERENCE = os.path.join(os.path.dirname(ROOT), "shared", "reference", "original-config")
EXAMPLE = os.path.join(ROOT, "example_config.json")


def run_uws(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        uws_command() + list(args), capture_output=True, text=True, cwd=cwd or ROOT, timeout=60
    )


def test_check_config_accepts_shipped_examples() -> None:
    for path in [EXAMPLE, os.path.join(ROOT, "uws_config.py")] + (
        [os.path.join(REFERENCE, n) for n in ("example_config.json", "test_config.json")]
        if os.path.isdir(REFERENCE)
        else []
    ):
        # The examples describe other machines: only the files are checked here.
        r = run_uws("check-config", path, "--file-only")
        assert r.returncode == 0, (path, r.stdout, r.stderr)
        assert "valid" in r.stdout


def test_example_config_warns_about_globus_storage() -> None:
    r = run_uws("check-config", EXAMPLE)
    assert "cannot provide storage accounts" in r.stdout


def test_check_config_lists_every_problem(tmp_path) -> None:
    bad = {
        "api_user_authentication": "missing_auth",
        "main_storage": "s",
        "main_resource": "r",
        "available_user_authentication": {
            "a": {"user_authentication_type": "Kerberos", "connection_details": {}}
        },
        "available_storage": {"s": {"storage_type": "LocalFileSystemStorage", "user_authentication": "a"}},
        "available_resources": {
            "r": {
                "resource_type": "SlurmAPIResource",
                "storage": "nope",
                "user_authentication": "a",
                "connection_details": {},
            }
        },
        "available_job_types": {"j": {"name": "J", "job_type": "Nope", "environment_details": {}}},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(bad))
    r = run_uws("check-config", str(path))
    assert r.returncode == 2
    for fragment in [
        "missing top-level key 'parameters'",
        "api_user_authentication 'missing_auth' not found in available_user_authentication",
        "available_user_authentication.a.user_authentication_type: unknown type 'Kerberos'",
        "available_storage.s.root_dir is required",
        "available_resources.r.storage 'nope' not found in available_storage",
        "available_resources.r.connection_details.root_url is required",
        "available_resources.r.connection_details.api_token is required",
        "available_job_types.j.job_type: unknown type 'Nope'",
    ]:
        assert fragment in r.stderr, (fragment, r.stderr)
    # the server refuses to start on it, with the same list
    r = run_uws("--config", str(path), "--port", str(free_port()))
    assert r.returncode == 2 and "unknown type 'Kerberos'" in r.stderr


def test_generate_config_documents_options() -> None:
    r = run_uws("generate-config")
    assert r.returncode == 0
    out = r.stdout
    for option in [
        "c.UWSApp.max_body_size",
        "c.LocalFileSystemStorage.root_dir",
        "c.LocalAuthenticator.create_system_users",
        "c.GlobusAuthenticator.allowed_globus_groups",
        "c.UWSApp.token_expiry_seconds",
        "c.LocalFileSystemStorage.allowed_symlink_roots",
        "c.Spawner.python",
        "c.SudoSpawner.sudo",
        "c.UWSApp.idle_timeout_seconds",
        "c.UWSApp.session_channel_url",
        "c.UWSApp.lost_contact_seconds",
        "c.SlurmBase.poll_interval",
        "c.SlurmBase.sudo",
        "c.SlurmBase.accounting_command",
        "c.SlurmBase.suggestion_seconds",
        "c.SlurmBase.operator_username",
        "c.SlurmRestSpawner.url",
        "c.SlurmRestSpawner.token_command",
        "c.ProxyService.request_timeout",
        "c.IdleCuller.timeout_seconds",
        "c.Spawner.grace_seconds",
        "c.JobService.max_running_jobs_per_user",
        "c.JobService.max_concurrent_starts",
        "c.JobService.heartbeat_seconds",
        "c.JobService.lost_contact_seconds",
        "c.StatusReporter.build",
    ]:
        assert option in out, option
    assert "Largest request body in bytes" in out


@pytest.mark.parametrize("subcommand", ["check-config", "upgrade-db", "create-client-token", "quota", "user"])
def test_subcommand_help_lists_its_options(subcommand: str) -> None:
    """--help of a subcommand whose --config and --db-url are UWSApp's options (it crashed with
    KeyError: 'UWSApp' before)."""
    result = subprocess.run(
        uws_command() + [subcommand, "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout and "--db-url" in result.stdout


def test_moved_options_keep_their_old_names(tmp_path) -> None:
    """Options now on the class they configure still work under their old UWSApp names, with a
    warning that names the new place; both names at once: the new one wins."""
    path = tmp_path / "uws_config.py"
    path.write_text(
        'c.UWSApp.authenticator_class = "dev"\n'
        "c.UWSApp.stop_grace_seconds = 2\n"
        "c.UWSApp.idle_timeout_seconds = 60\n"
        "c.ProxyService.connect_timeout = 3\n"
        "c.UWSApp.proxy_connect_timeout = 4\n"
    )
    r = run_uws("check-config", str(path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "warning: c.UWSApp.proxy_connect_timeout is ignored: c.ProxyService.connect_timeout is set",
        "warning: c.UWSApp.idle_timeout_seconds is deprecated: use c.IdleCuller.timeout_seconds",
        "warning: c.UWSApp.stop_grace_seconds is deprecated: use c.Spawner.grace_seconds",
        f"{path}: valid",
        # The development login runs every session as the server's own account.
        "deployment: no problems found; the session helper starts as the server's account.",
    ]


def test_unknown_class_names_are_config_problems(tmp_path) -> None:
    path = tmp_path / "uws_config.py"
    path.write_text(
        'c.UWSApp.authenticator_class = "dev"\n'
        'c.UWSApp.spawner_class = "nope"\n'
        'c.UWSApp.storage_class = "uws.storage.nowhere.Storage"\n'
    )
    r = run_uws("check-config", str(path))
    assert r.returncode == 2
    assert "UWSApp.spawner_class: unknown name 'nope' in uws.spawners: use one of" in r.stderr
    assert "UWSApp.storage_class: cannot import 'uws.storage.nowhere.Storage'" in r.stderr
    # The server refuses to start on it, with the same list.
    r = run_uws("--config", str(path), "--port", str(free_port()))
    assert r.returncode == 2 and "unknown name 'nope'" in r.stderr


def test_server_runs_original_test_config(backend: str) -> None:
    """An existing deployment's config.json, unchanged: root_dir "." is the config's directory."""
    with open(os.path.join(ROOT, "tests", "data", "test_config.json")) as f:
        text = f.read()
    srv = Server(backend, text, suffix=".json").start()
    try:
        ct = srv.new_client_token()
        assert list(srv.client().get("/job_types/").json()["data"]["job_types"]) == ["test_job"]
        # A user without an OS account cannot get storage (no create_external_users)...
        r = srv.client().post(
            "/tokens/", {"client_token": ct, "user_info": {"username": "uwstnoaccount", "email": "n@x"}}
        )
        c = srv.client(r.json()["token"])
        r = c.post("/workspaces/", {"name": "x", "description": ""})
        assert r.status_code == 400
        assert r.json()["message"] == "User could not be found/created on main storage system."
        # ...nor one named after the server's own account (or root, or a system account)...
        me = pwd.getpwuid(os.getuid()).pw_name
        r = srv.client().post(
            "/tokens/", {"client_token": ct, "user_info": {"username": me, "email": "me@x"}}
        )
        assert r.status_code == 400, r.text
        if not IS_ROOT:
            return  # files can be given to another person's account only by a root server
        # ...one with a person's OS account can, under <config dir>/<username>/<id>.
        me = unique_name("cfg")
        subprocess.run(["useradd", "--no-create-home", "--", me], check=True, capture_output=True)
        r = srv.client().post(
            "/tokens/", {"client_token": ct, "user_info": {"username": me, "email": "me@x"}}
        )
        c = srv.client(r.json()["token"])
        w = c.post(
            "/workspaces/",
            {
                "name": "x",
                "description": "",
                "workspace_details": {"files": [{"name": "a.txt", "content": "a"}]},
            },
        ).json()["data"]["workspace"]
        assert os.path.isfile(os.path.join(srv.dir, me, str(w["id"]), "a.txt"))
    finally:
        srv.close()


def test_server_runs_original_example_config(backend: str) -> None:
    with open(EXAMPLE) as f:
        text = f.read()
    srv = Server(backend, text, suffix=".json").start()
    try:
        status = srv.client().get("/status/").json()
        auth = status["dependencies"]["api_user_authentication"]
        assert auth == {"connected": False, "message": "No health_check_url configured."}
        assert list(srv.client().get("/job_types").json()["data"]["job_types"]) == [
            "jupyter_lab",
            "local_test_job",
        ]
    finally:
        srv.close()


def test_embedded_defaults_print_how_to_start() -> None:
    """`uws --dev` (what scripts/serve runs): embedded defaults and the development login."""
    cwd = tempfile.mkdtemp(prefix="uws-defaults-")
    port = free_port()
    proc = subprocess.Popen(
        uws_command() + ["--dev", "--port", str(port)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        import time

        import requests

        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                requests.get(f"http://127.0.0.1:{port}/status", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.05)
        r = requests.post(
            f"http://127.0.0.1:{port}/tokens/",
            data=json.dumps({"user_info": {"username": "dev", "email": "dev@localhost"}}),
            timeout=5,
        )
        token = r.json()["token"]
        r = requests.post(
            f"http://127.0.0.1:{port}/workspaces/",
            data='{"name": "a", "description": "b"}',
            headers={"UWS-Authorization": f"Token {token}"},
            timeout=5,
        )
        assert r.status_code == 200, r.text
        assert os.path.isfile(os.path.join(cwd, "uws-data", "uws.sqlite"))
        assert os.path.isdir(os.path.join(cwd, "uws-data", "workspaces"))
    finally:
        proc.terminate()
        out = proc.communicate(timeout=10)[0]
        shutil.rmtree(cwd, ignore_errors=True)
    assert "curl" in out and "/tokens/" in out and "UWS-Authorization: Token" in out


def test_migrations_match_models_and_head() -> None:
    """The shipped migrations build exactly the models' schema, and HEAD_REVISION is Alembic's head."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from uws import db, orm

    directory = tempfile.mkdtemp()
    engine = db.make_engine(f"sqlite:///{directory}/m.sqlite")
    from alembic import command

    command.upgrade(db.alembic_config(engine), "head")
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), orm.Base.metadata)
    assert diff == []
    assert ScriptDirectory.from_config(db.alembic_config(engine)).get_current_head() == db.HEAD_REVISION
    assert db.current_revision(engine) == db.HEAD_REVISION
    shutil.rmtree(directory)


def test_upgrade_db_and_outdated_database(backend: str) -> None:

    srv = Server(backend, LOCAL_CONFIG)
    try:
        assert srv.cli("upgrade-db").stdout.strip() == "created"
        assert srv.cli("upgrade-db").stdout.strip() == "up to date"
        srv.sql("UPDATE alembic_version SET version_num = '0000_older'")
        srv.port = free_port()
        with pytest.raises(RuntimeError, match="uws upgrade-db"):
            srv.start()
    finally:
        srv.close()


def test_quota_cli_and_api(server: Server, alice) -> None:
    r = alice.get("/quota/")
    assert r.json()["data"]["quota"]["disk_bytes"]["maximum"] is None
    server.cli("quota", "set", alice.username, "--disk-bytes", "100")
    q = alice.get("/quota").json()["data"]["quota"]
    assert q["disk_bytes"]["maximum"] == 100
    r = alice.post(
        "/workspaces/",
        {
            "name": "big",
            "description": "",
            "workspace_details": {"files": [{"name": "a.txt", "content": "x" * 150}]},
        },
    )
    assert r.status_code == 400
    assert r.json()["message"] == "Disk quota exceeded: used 0 bytes, requested 150 bytes, maximum 100 bytes."
    assert (
        alice.post(
            "/workspaces/",
            {
                "name": "small",
                "description": "",
                "workspace_details": {"files": [{"name": "a.txt", "content": "x" * 60}]},
            },
        ).status_code
        == 200
    )
    r = alice.post(
        "/workspaces/",
        {
            "name": "more",
            "description": "",
            "workspace_details": {"files": [{"name": "a.txt", "content": "x" * 60}]},
        },
    )
    assert r.json()["message"] == "Disk quota exceeded: used 60 bytes, requested 60 bytes, maximum 100 bytes."
    out = server.cli("quota", "show", alice.username).stdout
    assert "disk 60 of 100 bytes" in out
    server.cli("quota", "set", alice.username, "--disk-bytes", "-1")
    assert alice.get("/quota").json()["data"]["quota"]["disk_bytes"]["maximum"] is None
    assert server.cli("quota", "show", "uwst-no-such-user", check=False).returncode == 1


def test_version_flag() -> None:
    r = subprocess.run([sys.executable, "-m", "uws", "--version"], capture_output=True, text=True, timeout=30)
    assert r.stdout.strip()
