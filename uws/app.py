"""UWSApp: command line, configuration, start-up steps and shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

import uvloop
from traitlets import Bool, Dict, Enum, Float, Integer, List, Set, TraitError, Unicode, default
from traitlets import validate as validate_trait
from traitlets.config import Application, Configurable, catch_config_error

from . import __version__, plugins
from .access_log import log_request, setup_logging
from .auth.accounts import AccountCache
from .cli import SERVER_ALIASES, SERVER_FLAGS, SUBCOMMANDS, configurable_classes
from .config_json import (
    ConfigError,
    default_job_types,
    default_parameters,
    default_resources,
    original_form,
)
from .configuration import api_host_problems, moved, read_config
from .startup import check_deployment_later, log_started, tune_runtime

if TYPE_CHECKING:
    from .metrics import ServerMetrics
    from .passthrough import SessionURLs

HERE = os.path.dirname(os.path.abspath(__file__))


class UWSApp(Application):
    name = "uws"
    version = __version__
    description = """The User Workspaces Server: workspaces and interactive sessions over HTTP.

    With no --config it runs on embedded defaults: a SQLite database and workspaces under
    ./uws-data. A login method must be named: c.UWSApp.authenticator_class in the config, or
    --dev for the development login that needs no client token (what scripts/serve does)."""

    aliases = SERVER_ALIASES
    flags = SERVER_FLAGS
    subcommands = SUBCOMMANDS
    classes: List[type[Configurable]] = List()

    @default("log_level")
    def _log_level(self) -> int:
        return logging.INFO

    @default("classes")
    def _classes(self) -> list[type[Configurable]]:
        return configurable_classes()

    # ---- options ---------------------------------------------------------------------------
    config_file = Unicode(
        "",
        config=True,
        help="""Configuration file: a traitlets Python file (uws_config.py) or an existing
        deployment's config.json in the original server's format. Empty: embedded defaults.""",
    )
    ip = Unicode("127.0.0.1", config=True, help="Address to listen on; 0.0.0.0 for every interface.")
    port = Integer(8000, config=True, help="Port to listen on.")
    debug = Bool(False, config=True, help="Development mode: more logging.")
    data_dir = Unicode(
        "",
        config=True,
        help="""Directory for the embedded defaults: the SQLite database and the workspaces root
        when they are not configured. Default: ./uws-data.""",
    )

    @default("data_dir")
    def _data_dir(self) -> str:
        return os.path.abspath("uws-data")

    db_url = Unicode(
        "",
        config=True,
        help="""SQLAlchemy database URL. SQLite (the default, sqlite:///<data_dir>/uws.sqlite)
        suits one server; use postgresql://user@host/db in production.""",
    )
    public_url = Unicode(
        "",
        config=True,
        help="""The URL browsers use to reach this server (scheme://host[:port]), e.g. behind a
        TLS proxy. Default: http://<ip>:<port>.""",
    )
    passthrough_url = Unicode(
        "",
        config=True,
        help="""Scheme and port of session links (scheme://host[:port]). With
        passthrough_mode 'origin', only its scheme and port are used (each session has its own
        host name under session_host); with 'path', it is connection_details.url_domain itself.
        Default: public_url.""",
    )
    passthrough_mode = Enum(
        ["origin", "path"],
        "origin",
        config=True,
        help="""How browsers reach sessions. 'origin' (the default): each session is served from
        a host name of its own, https://j<job id>-<random>.<session_host>/, so the browser keeps
        one session's pages from reading or driving any other; this needs a wildcard DNS record
        (and a wildcard TLS certificate) for *.<session_host> pointing at this server. 'path':
        every session under /passthrough/<job id>/ on the server's own origin, where a page in
        one session can act in every other session the same browser opens: only for
        single-user or fully trusted installations.""",
    )
    session_host = Unicode(
        "localhost",
        config=True,
        help="""The domain under which sessions get their host names (passthrough_mode
        'origin'), e.g. 'sessions.example.org' for https://j12-3f9c0a1b2d4e5f60.sessions.example.org/.
        Use a domain of its own where nothing else sets cookies, not the API's host or a parent
        of it. The default, 'localhost', suits development: browsers resolve *.localhost to this
        machine.""",
    )

    @validate_trait("session_host")
    def _check_session_host(self, proposal: Any) -> str:
        from .hostnames import session_domain_name

        value = session_domain_name(str(proposal["value"]))
        if value is None:
            raise TraitError(
                f"session_host must be a DNS name without scheme or port, not {proposal['value']!r}"
            )
        return value

    authenticator_class = Unicode(
        "",
        config=True,
        help="""How users log in (POST /tokens/): 'local' (API client token, OS accounts),
        'globus' (Globus Auth), 'psc', 'dev' (no client token; development only, also set by
        --dev), another entry point of the group uws.authenticators, or the import path of
        an Authenticator subclass. There is no default: the server does not start until a
        login method is named.""",
    )
    storage_class = Unicode(
        "local",
        config=True,
        help="""Where workspaces live: 'local', 'hubmap', another entry point of the group
        uws.storage, or the import path of a storage class.""",
    )
    storage_accounts_from = Unicode(
        "",
        config=True,
        help="""Which authentication method provides storage (OS) accounts: 'local', 'dev',
        'globus' or 'psc'. Default: the same as authenticator_class. Globus and PSC cannot
        provide accounts here, so workspace operations are then refused.""",
    )
    api_auth_key = Unicode("main_auth", config=True, help="Name of the login method in /status/.")
    storage_key = Unicode("main_storage", config=True, help="Name of the storage in /status/.")
    main_resource_key = Unicode(
        "main_resource",
        config=True,
        help="""The resource every session runs on; also the key looked up in each job type's
        environment_details.""",
    )
    resources = Dict(
        config=True,
        help="""Compute resources by key, each in the original config.json form: resource_type
        (LocalResource, SlurmAPIResource), passthrough_domain, parameter_mapping,
        connection_details.""",
    )

    @default("resources")
    def _resources(self) -> dict[str, Any]:
        return default_resources(self.main_resource_key)

    job_types = Dict(
        config=True,
        help="""Job types by id, in the original config.json form: {"name", "job_type",
        "environment_details": {<resource key>: {...}}}. Their order is the order of
        GET /job_types/.""",
    )

    @default("job_types")
    def _job_types(self) -> dict[str, Any]:
        return default_job_types(self.main_resource_key)

    parameters: List[Any] = List(
        config=True,
        help="""Resource options users may request when starting a session, served verbatim by
        GET /parameters/ and used to validate PUT /workspaces/<id>/start/.""",
    )

    @default("parameters")
    def _parameters(self) -> list[Any]:
        return default_parameters()

    user_authentication_methods = Dict(
        config=True, help="Every login method of an original config.json, for /status/ health."
    )
    storage_methods = Dict(config=True, help="Every storage of an original config.json, for /status/.")
    cors_allowed_origins = List(
        Unicode(),
        ["*"],
        config=True,
        help="""Origins allowed to call the API from a browser. '*' (the default) is safe
        because credentials travel in a header, never a cookie.""",
    )
    max_body_size = Integer(
        100 * 1024 * 1024,
        config=True,
        help="""Largest request body in bytes for uploads (PUT /workspaces/<id>/upload/); larger
        ones get 413. Every other request has max_json_body_size. An original deployment's
        DATA_UPLOAD_MAX_MEMORY_SIZE sets this.""",
    )
    max_json_body_size = Integer(
        1024 * 1024,
        config=True,
        help="""Largest JSON request body in bytes (every request but uploads, POST /tokens/
        included, which anyone may send); larger ones get 413 before they are read.""",
    )
    max_description_length = Integer(
        10_000,
        config=True,
        help="Most characters a workspace description may have (0: no limit); longer gets 400.",
    )
    max_details_bytes = Integer(
        64 * 1024,
        config=True,
        help="""Largest job_details of a session start, and workspace_details of a workspace
        (the files' content not counted: it goes to disk, not to the database), in bytes of
        JSON (0: no limit). They are stored and sent back in every listing; larger gets 400.""",
    )
    token_expiry_seconds = Integer(
        0, config=True, help="Seconds a login token stays valid; 0 means until logout."
    )
    admin_users = Set(
        Unicode(),
        set(),
        config=True,
        help="""Usernames that are admins: they may use the /admin/ endpoints (every user, job
        and quota) and give their API tokens the admin and metrics scopes. Admins can also be
        made with `uws user set-admin NAME` (kept in the database). A name in this set is an
        admin whatever the database says, and cannot be demoted there; removing it from the
        set (and restarting) takes its admin rights away, from every token it holds, unless
        `uws user set-admin` made it an admin too.""",
    )
    users_min_search_length = Integer(
        0, config=True, help="Minimum length of ?search= on GET /users/ (0 lists everyone)."
    )
    session_channel_url = Unicode(
        "",
        config=True,
        help="""ZeroMQ endpoint where session helpers reach the server. Default:
        ipc://<data_dir>-channel/sessions.sock (helpers on this machine). An ipc:// socket gets a
        directory of its own (made if missing, mode 0750, group session_group): nothing else may
        be in it. Use tcp://<address>:<port> when sessions run on other hosts (Slurm); the
        connection is then encrypted with CURVE (the server's key pair is kept in
        <data_dir>/session_channel.key). It must stay the same across restarts so running
        sessions reconnect.""",
    )
    session_group = Unicode(
        "",
        help="""OS group whose members may connect to the ipc:// session channel: the group of
        the accounts sessions run as (the one a SudoSpawner sudoers rule names, e.g. uwsusers).
        The server's account must be a member (or root). OS accounts the server creates
        (create_system_users) are added to it. Empty: the server's own group only, which suits
        the local spawner (sessions as the server's own account).""",
    ).tag(config=True)
    spawner_class = Unicode(
        "",
        config=True,
        help="""How sessions are started: 'local' (as the server's own user), 'sudo' (as the
        workspace owner's OS account, through sudo), 'slurm' (as Slurm batch jobs submitted with
        sbatch as the workspace owner; see SlurmSpawner), 'slurm_rest' (Slurm batch jobs
        submitted through slurmrestd's REST API; see SlurmRestSpawner), another entry point of
        the group uws.spawners, or an import path.
        Default: 'sudo' when users have their own OS accounts, else 'local'.""",
    )
    background_fs_threads = Integer(
        2,
        config=True,
        help="""Threads for slow file work in the background (share copies, workspace deletion),
        kept apart from the threads that serve creates, uploads, updates and rescans.""",
    )
    metrics_enabled = Bool(
        True,
        config=True,
        help="""Collect metrics and serve them at GET /metrics in Prometheus' text format. Off:
        nothing is counted and /metrics answers 404.""",
    )
    metrics_public = Bool(
        False,
        config=True,
        help="""Let anyone who can reach the server read GET /metrics, without a token. By
        default it needs an admin's token, or a token with the 'metrics' scope held by an admin
        (what a Prometheus server should be given). Turn this on only where the server's port
        is reachable from trusted machines alone: the metrics tell how busy the server is.""",
    )
    # Deprecated names of options now on the class they configure (uws/configuration.py).
    head_timeout = Float(30.0, config=True, help=moved("head_timeout"))
    max_connections = Integer(10000, config=True, help=moved("max_connections"))
    trusted_proxies = List(Unicode(), [], config=True, help=moved("trusted_proxies"))
    max_websockets_per_user = Integer(100, config=True, help=moved("max_websockets_per_user"))
    proxy_connect_timeout = Float(5.0, config=True, help=moved("proxy_connect_timeout"))
    proxy_request_timeout = Float(3600.0, config=True, help=moved("proxy_request_timeout"))
    proxy_websocket_max_message_size = Integer(
        64 << 20, config=True, help=moved("proxy_websocket_max_message_size")
    )
    idle_timeout_seconds = Float(0, config=True, help=moved("idle_timeout_seconds"))
    idle_warning_seconds = Float(300, config=True, help=moved("idle_warning_seconds"))
    cull_interval_seconds = Float(30, config=True, help=moved("cull_interval_seconds"))
    stop_grace_seconds = Float(5.0, config=True, help=moved("stop_grace_seconds"))
    status_check_timeout = Float(5.0, config=True, help=moved("status_check_timeout"))
    build = Unicode("", config=True, help=moved("build"))
    max_concurrent_starts = Integer(20, config=True, help=moved("max_concurrent_starts"))
    max_running_jobs_per_user = Integer(10, config=True, help=moved("max_running_jobs_per_user"))
    heartbeat_seconds = Float(5.0, config=True, help=moved("heartbeat_seconds"))
    reconcile_seconds = Float(10.0, config=True, help=moved("reconcile_seconds"))
    lost_contact_seconds = Float(900.0, config=True, help=moved("lost_contact_seconds"))

    # ---- start-up --------------------------------------------------------------------------
    @catch_config_error
    def initialize(self, argv: list[str] | None = None) -> None:
        super().initialize(argv)
        if self.subapp is not None:
            return
        self.load_uws_config()

    def load_uws_config(self, require_login: bool = True) -> None:
        """Read the config file; `require_login` is off for subcommands that only use the database."""
        self.config_warnings = read_config(self, require_login)

    def as_original_config(self) -> dict[str, Any]:
        """The configuration in the original format, so one validator serves both formats."""
        return original_form(self)

    def init_db(self) -> None:
        from . import db

        self.db = db.open_database(self.data_dir, self.db_url)
        db.prepare(self.db.engine)

    def init_auth(self) -> None:
        from .auth.tokens import TokenService

        cls = plugins.load_class(plugins.AUTHENTICATORS, self.authenticator_class)
        self.authenticator = cls(parent=self, key=self.api_auth_key)
        self.token_service = self.auth_service = TokenService(
            self.db, self.token_expiry_seconds, admin_users=self.admin_users
        )
        accounts_from = self.storage_accounts_from or self.authenticator_class
        if accounts_from == self.authenticator_class:
            self.account_provider = self.authenticator.account_provider()
        else:
            other = plugins.load_class(plugins.AUTHENTICATORS, accounts_from)(parent=self)
            self.account_provider = other.account_provider()
        if self.session_group and hasattr(self.account_provider, "groups"):
            # So that sessions of the accounts it creates can reach the session channel.
            self.account_provider.groups = (self.session_group,)

    def init_storage(self) -> None:
        cls = plugins.load_class(plugins.STORAGE, self.storage_class)
        self.storage = cls(parent=self)
        if not self.storage.root_dir:
            self.storage.root_dir = os.path.join(self.data_dir, "workspaces")
        self.storage.root_dir = os.path.abspath(self.storage.root_dir)
        self.storage.ensure_root()
        self.fs_executor = ThreadPoolExecutor(2, thread_name_prefix="uws-fs")
        # Share copies and deletions can take minutes: never on the pool every request waits for.
        self.background_fs_executor = ThreadPoolExecutor(
            max(1, self.background_fs_threads), thread_name_prefix="uws-fs-background"
        )

    def init_services(self) -> None:
        """Each service is given the components and option values it uses. One built after a
        service that uses it is set on that service as soon as it exists."""
        from .events import EventBus
        from .mail import Mailer
        from .quotas import QuotaService
        from .shares import ShareService
        from .websockets import TicketStore, WebSocketCounter
        from .workspace_writes import WriteRules
        from .workspaces import WorkspaceService

        self.share_dir = os.path.join(os.path.dirname(HERE), "share", "uws")
        if not os.path.isdir(self.share_dir):
            self.share_dir = os.path.join(sys.prefix, "share", "uws")
        self.quotas = QuotaService(self.db)
        self.mailer = Mailer(parent=self)
        self.events = EventBus(self.db, parent=self)
        self.workspaces = WorkspaceService(
            self.db,
            self.storage,
            self.events,
            self.quotas,
            WriteRules(self.job_types, self.max_description_length, self.max_details_bytes),
            self.fs_executor,
            self.background_fs_executor,
        )
        self.accounts = self.workspaces.accounts = AccountCache(
            self.account_provider, self.fs_executor, self.workspaces.spawn
        )
        self.shares = self.workspaces.shares = ShareService(
            self.db, self.storage, self.workspaces, self.accounts, self.mailer
        )
        self.tickets = TicketStore(self.db, self.auth_service)
        self.websockets = WebSocketCounter(parent=self)
        self.init_sessions()

    def init_audit(self) -> None:
        """The audit log, open before anything can be audited. A file that cannot be opened is
        logged (once) and does not stop the server."""
        from .audit import AuditLog

        self.audit_log = AuditLog(self.data_dir, parent=self)
        self.audit_log.open()

    def init_sessions(self) -> None:
        """The session side of init_services: the channel's place, spawners, jobs, passthrough, culler."""
        from . import models
        from .keys import SessionTokens, secure_data_dir
        from .passthrough import ProxyService
        from .sessions.channel import default_url as default_channel_url
        from .sessions.culler import IdleCuller
        from .sessions.ending import EndingWarnings
        from .sessions.jobtypes import load_templates
        from .sessions.service import JobService
        from .sessions.servicebase import JobParts, JobSettings
        from .spawners import SpawnerFactory

        self.job_templates = load_templates(self.share_dir)
        self.session_channel_url = self.session_channel_url or default_channel_url(self.data_dir)
        inside = [self.storage.root_dir]
        if self.session_channel_url.startswith("ipc://"):
            inside.append(self.session_channel_url[len("ipc://") :])
        secure_data_dir(self.data_dir, inside, self.spawner_class not in ("local", "LocalProcessSpawner"))
        self.session_tokens = models.session_tokens = SessionTokens.load(self.data_dir)
        self.spawner_factory = SpawnerFactory(self, self.spawner_class, self.session_channel_url)
        parts = JobParts(
            db=self.db,
            events=self.events,
            accounts=self.accounts,
            workspaces=self.workspaces,
            quotas=self.quotas,
            storage=self.storage,
            spawner_factory=self.spawner_factory,
            session_urls=self.session_urls,
            session_tokens=self.session_tokens,
            audit_log=self.audit_log,
        )
        settings = JobSettings(
            job_types=self.job_types,
            job_templates=self.job_templates,
            parameters=self.parameters,
            resources=self.resources,
            main_resource_key=self.main_resource_key,
            passthrough_mode=self.passthrough_mode,
            session_channel_url=self.session_channel_url,
            session_group=self.session_group,
            channel_key_file=os.path.join(self.data_dir, "session_channel.key"),
            log_dir=os.path.join(self.data_dir, "session-logs"),
        )
        self.jobs = JobService(parts, settings, parent=self)
        self.spawner_factory.channel = self.jobs.channel
        self.proxy = self.jobs.proxy = ProxyService(
            self.db, self.data_dir, self.passthrough_mode, self.session_tokens, parent=self
        )
        self.culler = IdleCuller(
            self.db, self.events, self.jobs, self.proxy, self.job_types, self.session_tokens, parent=self
        )
        from .admin import AdminService

        self.admin = AdminService(self.db, self.auth_service, self.proxy, self.events, self.jobs)
        self.ending_warnings = EndingWarnings(self.db, self.events, self.jobs, parent=self)
        from .webui import WebUI

        web_ui = WebUI(self.share_dir, self.proxy.secret, self.public_url, parent=self)
        self.web_ui = web_ui if web_ui.enabled else None

    def forget_cached_state(self) -> None:
        """Drop what this process cached of the database, for when it starts serving again after
        another process served (and wrote) meanwhile: leadership's start_leading calls it. The
        workspace listings and passthrough targets are kept while a process serves alone (it sees
        every write), so they would go stale; tokens and users are re-read within 2 s anyway."""
        self.workspaces.forget_cache()
        self.proxy.forget_cache()
        self.auth_service.forget_cache()

    def init_health(self) -> None:
        from .health import StatusReporter

        self.health = StatusReporter(
            self.as_original_config(), self.authenticator, self.storage, self.spawner_factory, parent=self
        )

    def init_webapp(self) -> None:
        from .handlers import api_host_routes, session_host_routes
        from .handlers.base import NotFoundHandler
        from .handlers.components import web_settings
        from .passthrough.front import FrontServer
        from .passthrough.handed_off import UWSWebApplication

        try:
            self.front = FrontServer(parent=self)
        except ValueError as e:
            self.log.error("%s", e)
            self.exit(1)

        pages_prefix = self.web_ui.prefix if self.web_ui is not None else None
        routes = api_host_routes(self.passthrough_mode, pages_prefix)
        if pages_prefix is not None:
            from .handlers import api_path_patterns
            from .webui import page_route_problems

            taken = page_route_problems(pages_prefix, api_path_patterns(self.passthrough_mode))
            if taken:
                self.log.error(
                    "WebUI.prefix %r puts pages on API paths (%s): choose another prefix.",
                    pages_prefix,
                    ", ".join(taken),
                )
                self.exit(2)
        session_routes = session_host_routes if self.passthrough_mode == "origin" else []
        self.init_metrics([*routes, *session_routes])
        self.webapp = UWSWebApplication(
            routes,
            websocket_ping_interval=30,
            log_function=self.metrics.log_function(log_request) if self.metrics else log_request,
            default_handler_class=NotFoundHandler,
            debug=False,
            compress_response=False,
            **web_settings(self),
        )
        if session_routes:
            # Every path on a session's host goes to that session, before any API route is tried.
            host = ".*" + re.escape(self.session_urls.hosts.suffix)
            self.webapp.add_handlers(host, cast(list[Any], session_routes))

    def init_metrics(self, routes: list[Any]) -> None:
        """The server's metrics (uws.metrics), told of what happens where it happens; None when
        metrics_enabled is off."""
        self.metrics: ServerMetrics | None = None
        if not self.metrics_enabled:
            return
        from .metrics import LiveParts, ServerMetrics

        parts = LiveParts(self.proxy, self.events, self.websockets, self.jobs.live, self.front)
        self.metrics = self.jobs.observer = ServerMetrics(self.db, parts, routes)

    def public_origin(self) -> str:
        return self.public_url or f"http://{self.ip}:{self.port}"

    @cached_property
    def session_urls(self) -> SessionURLs:
        """Session links and host names, from options that do not change once the server runs
        (built on first use: the routes need it too, before or without the services)."""
        from .passthrough import SessionURLs

        return SessionURLs(
            self.passthrough_mode, self.public_origin(), self.passthrough_url, self.session_host
        )

    # ---- run -------------------------------------------------------------------------------
    def start(self) -> None:
        if self.subapp is not None:
            self.subapp.start()
            return
        setup_logging(cast(int, self.log_level), self.debug, self.log)
        for warning in self.config_warnings:
            self.log.warning("config: %s", warning)
        try:
            self.init_db()
        except Exception as e:
            self.log.error("%s", e)
            self.exit(1)
        problems = api_host_problems(self)
        if problems:
            self.log.error("%s", ConfigError(problems))
            self.exit(2)
        self.init_auth()
        self.init_storage()
        self.init_audit()
        from .sessions.channel import ChannelError

        try:
            self.init_services()
        except ChannelError as e:
            self.log.error("%s", e)
            self.exit(1)
        self.init_health()
        self.init_webapp()
        # uvloop: asyncio's event loop written in C. A small request relayed by the passthrough
        # costs the server about a fifth less time on it than on asyncio's own loop.
        uvloop.run(self.serve())

    async def serve(self) -> None:
        tune_runtime()
        from .forwarded import TrustingHTTPServer

        front = self.front
        server = TrustingHTTPServer(
            self.webapp,
            trust=front.trust,
            # API handlers refuse oversize bodies themselves (a JSON 413, counted as the body
            # streams in); the passthrough streams bodies of any size to sessions.
            max_body_size=1 << 40,
            # Tornado's header timeout: its wait for each request head, idle time included.
            idle_connection_timeout=front.head_timeout,
        )
        front.attach(self.webapp.parts, server)
        await front.listen(self.port, self.ip)
        await self.workspaces.resume()
        await self.jobs.begin()
        self.culler.begin()
        self.ending_warnings.begin()
        log_started(self)
        check_deployment_later(self)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reopen_logs)
        await stop.wait()
        self.log.info("Shutting down")
        front.close()
        self.jobs.close()
        self.culler.close()
        self.ending_warnings.close()
        await self.workspaces.drain()
        await self.events.flush()
        self.db.close()
        self.audit_log.close()

    def reopen_logs(self) -> None:
        """SIGHUP, as logrotate sends it: every file the server appends to is opened anew (a
        log file of another part is reopened here too, so one signal serves them all)."""
        self.audit_log.reopen()


main = UWSApp.launch_instance


def cli() -> None:
    try:
        main()
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        sys.exit(2)
