"""What UWSApp hands to its components, in process: its options (declared in uws/app_options.py)
are UWSApp's own, options that moved off UWSApp reach the class they configure under their old
names too (with a warning naming the new place), and the account cache, session links and spawner
factory work apart from the app."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from traitlets import TraitError
from traitlets.config import Config

from uws.app import UWSApp
from uws.app_options import MovedOptions, UWSAppOptions
from uws.auth.accounts import Account, AccountCache, AccountProvider
from uws.configuration import MOVED_OPTIONS
from uws.errors import APIError
from uws.health import StatusReporter, build_id
from uws.passthrough import ProxyService, SessionURLs
from uws.passthrough.front import FrontServer
from uws.sessions.culler import IdleCuller
from uws.sessions.service import JobService
from uws.sessions.servicebase import JobParts, JobSettings
from uws.spawners import SpawnerFactory
from uws.websockets import WebSocketCounter


@pytest.fixture(scope="session")
def remove_test_os_accounts() -> Iterator[None]:
    """Overrides tests/conftest.py's: in-process tests create no OS accounts, and must not
    remove those of an end-to-end run going on at the same time."""
    yield


def configured(tmp_path: Any, **uws: Any) -> UWSApp:
    config = Config()
    for name, value in uws.items():
        cls, _, option = name.partition("__")
        if option:
            config[cls][option] = value
        else:
            config.UWSApp[name] = value
    config.UWSApp.data_dir = str(tmp_path)
    app = UWSApp(config=config)
    app.cli_config = Config()
    app.load_uws_config(require_login=False)
    return app


def proxy_of(app: UWSApp, tmp_path: Any) -> ProxyService:
    return ProxyService(None, str(tmp_path), "origin", None, parent=app)  # type: ignore[arg-type]


def culler_of(app: UWSApp) -> IdleCuller:
    return IdleCuller(None, None, None, None, {}, None, parent=app)  # type: ignore[arg-type]


def reporter_of(app: UWSApp) -> StatusReporter:
    factory = SpawnerFactory(app, "local", "")
    return StatusReporter(app.as_original_config(), None, None, factory, parent=app)  # type: ignore[arg-type]


def jobs_of(app: UWSApp, tmp_path: Any) -> JobService:
    """Only its options are read: it is given no parts."""
    settings = JobSettings(
        job_types=app.job_types,
        job_templates={},
        parameters=app.parameters,
        resources=app.resources,
        main_resource_key=app.main_resource_key,
        passthrough_mode=app.passthrough_mode,
        session_channel_url=f"ipc://{tmp_path}/channel/sessions.sock",
        session_group=app.session_group,
        channel_key_file="",
        log_dir=f"{tmp_path}/session-logs",
    )
    parts = JobParts(None, None, None, None, None, None, None, None, None, None)  # type: ignore[arg-type]
    return JobService(parts, settings, parent=app)


def job_options(jobs: JobService) -> tuple[Any, ...]:
    return (
        jobs.max_concurrent_starts,
        jobs.max_running_jobs_per_user,
        jobs.heartbeat_seconds,
        jobs.reconcile_seconds,
        jobs.lost_contact_seconds,
    )


def test_old_names_configure_the_new_place(tmp_path: Any) -> None:
    app = configured(
        tmp_path,
        proxy_connect_timeout=2.5,
        proxy_request_timeout=3.0,
        proxy_websocket_max_message_size=1000,
        idle_timeout_seconds=60.0,
        idle_warning_seconds=10.0,
        cull_interval_seconds=1.0,
        stop_grace_seconds=2.0,
        status_check_timeout=1.0,
        build="b1",
        max_concurrent_starts=3,
        max_running_jobs_per_user=4,
        heartbeat_seconds=0.5,
        reconcile_seconds=2.0,
        lost_contact_seconds=60.0,
        head_timeout=7.0,
        max_connections=50,
        trusted_proxies=["10.0.0.0/8"],
        max_websockets_per_user=9,
    )
    front = FrontServer(parent=app)
    assert (front.head_timeout, front.max_connections, front.trust.trusts("10.1.2.3")) == (7.0, 50, True)
    assert WebSocketCounter(parent=app).max_per_user == 9
    proxy = proxy_of(app, tmp_path)
    assert (proxy.connect_timeout, proxy.request_timeout, proxy.websocket_max_message_size) == (
        2.5,
        3.0,
        1000,
    )
    culler = culler_of(app)
    assert (culler.timeout_seconds, culler.warning_seconds, culler.interval_seconds) == (60.0, 10.0, 1.0)
    assert SpawnerFactory(app, "local", "").grace_seconds() == 2.0
    reporter = reporter_of(app)
    assert (reporter.check_timeout, reporter.build) == (1.0, "b1")
    assert job_options(jobs_of(app, tmp_path)) == (3, 4, 0.5, 2.0, 60.0)
    for old, (cls, new) in MOVED_OPTIONS.items():
        assert f"c.UWSApp.{old} is deprecated: use c.{cls}.{new}" in app.config_warnings


def test_new_names_win_and_need_no_warning(tmp_path: Any) -> None:
    app = configured(
        tmp_path,
        ProxyService__request_timeout=4.0,
        Spawner__grace_seconds=1.5,
        JobService__max_running_jobs_per_user=7,
    )
    assert proxy_of(app, tmp_path).request_timeout == 4.0
    assert SpawnerFactory(app, "local", "").grace_seconds() == 1.5
    assert jobs_of(app, tmp_path).max_running_jobs_per_user == 7
    assert app.config_warnings == []
    app = configured(tmp_path, ProxyService__request_timeout=4.0, proxy_request_timeout=9.0)
    assert proxy_of(app, tmp_path).request_timeout == 4.0
    assert app.config_warnings == [
        "c.UWSApp.proxy_request_timeout is ignored: c.ProxyService.request_timeout is set"
    ]
    app = configured(tmp_path, JobService__heartbeat_seconds=2.0, heartbeat_seconds=9.0)
    assert jobs_of(app, tmp_path).heartbeat_seconds == 2.0
    assert app.config_warnings == [
        "c.UWSApp.heartbeat_seconds is ignored: c.JobService.heartbeat_seconds is set"
    ]


def test_defaults_are_unchanged(tmp_path: Any) -> None:
    app = configured(tmp_path)
    proxy = proxy_of(app, tmp_path)
    assert (proxy.connect_timeout, proxy.request_timeout, proxy.websocket_max_message_size) == (
        5.0,
        3600.0,
        0,  # (no longer used: websockets are spliced as bytes)
    )
    culler = culler_of(app)
    assert (culler.timeout_seconds, culler.warning_seconds, culler.interval_seconds) == (0.0, 300.0, 30.0)
    assert SpawnerFactory(app, "local", "").grace_seconds() == 5.0
    assert job_options(jobs_of(app, tmp_path)) == (20, 10, 5.0, 10.0, 900.0)
    assert reporter_of(app).build == build_id()


def test_mixed_in_options_are_uwsapps_own(tmp_path: Any) -> None:
    """Declared on mixins, every option is still c.UWSApp.<name>: in a config, with its validator
    and default, and in generate-config with its full help (not as an inherited one)."""
    names = set(UWSAppOptions.class_trait_names()) | set(MovedOptions.class_trait_names())
    assert set(MOVED_OPTIONS) <= names and {"port", "session_host", "job_types"} <= names
    assert names <= set(UWSApp.class_traits(config=True))
    generated = UWSApp().generate_config_file()
    assert "# UWSApp(Application) configuration" in generated
    for name in names:
        # Full help ends with the default; an inherited option's would end with "See also".
        assert re.search(rf"\n#  Default: [^\n]*\n# c\.UWSApp\.{name} = ", generated), name
    assert "The URL browsers use to reach this server" in generated
    app = configured(tmp_path, port=8123, session_host="Sessions.Example.ORG")
    assert (app.port, app.session_host) == (8123, "sessions.example.org")
    assert app.data_dir == str(tmp_path) and app.job_types == UWSApp(config=Config()).job_types
    with pytest.raises(TraitError):
        configured(tmp_path, session_host="https://sessions.example.org")


class CountingProvider(AccountProvider):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def account(self, username: str) -> Account:
        self.calls.append(username)
        if username == "nobody":
            return super().account(username)  # refuses: APIError 400
        return Account(username, 5000, 5000, frozenset())


def test_account_cache() -> None:
    provider = CountingProvider()
    tasks: list[Coroutine[Any, Any, None]] = []

    async def run() -> None:
        with ThreadPoolExecutor(1) as pool:
            cache = AccountCache(provider, pool, tasks.append)
            first = await cache.get("alice")
            assert await cache.get("alice") is first
            assert provider.calls == ["alice"]
            with pytest.raises(APIError):
                await cache.get("nobody")
            # Provisioning runs in the background and only logs a refusal.
            cache.provision("bob")
            cache.provision("nobody")
            assert provider.calls == ["alice", "nobody"]
            for task in tasks:
                await task
            assert provider.calls == ["alice", "nobody", "bob", "nobody"]
            assert (await cache.get("bob")).uid == 5000

    asyncio.run(run())


def test_session_urls() -> None:
    urls = SessionURLs("origin", "http://127.0.0.1:8000", "", "sessions.localhost")
    assert urls.base() == "http://127.0.0.1:8000"
    assert urls.origin(12, "abc") == "http://j12-abc.sessions.localhost:8000"
    assert urls.app_origin(12, "abc") == "http://j12-abc.sessions.localhost:8000"
    assert urls.connection_url(12, {"path": "lab?x=1"}, "abc") == (
        "http://j12-abc.sessions.localhost:8000",
        "/lab?x=1",
    )
    assert urls.hosts.job("J12-abc.Sessions.localhost:8000") == (12, "abc")
    path = SessionURLs("path", "http://127.0.0.1:8000", "https://portal.example.org/", "localhost")
    assert path.base() == "https://portal.example.org"
    assert path.app_origin(12, "abc") == "http://127.0.0.1:8000"
    assert path.connection_url(12, {}, "abc") == ("https://portal.example.org", "/passthrough/12/")
    assert path.connection_url(12, {"path": "/passthrough/12/lab"}, "") == (
        "https://portal.example.org",
        "/passthrough/12/lab",
    )
    # A bracketed IPv6 authority has no port to carry over.
    assert SessionURLs("origin", "http://[::1]", "", "localhost").origin(3, "x") == "http://j3-x.localhost"
