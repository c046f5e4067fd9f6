"""UWSApp, the assembler: the command line and configuration, then start-up in two lists of
steps, `assemble` (build the components, each given what it uses) and `serve` (start them in the
event loop, then shut down). Its options are declared in uws/app_options.py."""

from __future__ import annotations

import logging
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

import uvloop
from traitlets import List, default
from traitlets.config import Application, Configurable, catch_config_error

from . import __version__, plugins
from .access_log import log_request, setup_logging
from .app_options import MovedOptions, UWSAppOptions
from .auth.accounts import AccountCache
from .cli import SERVER_ALIASES, SERVER_FLAGS, SUBCOMMANDS, configurable_classes
from .config_json import ConfigError, original_form
from .configuration import api_host_problems, read_config
from .startup import check_deployment_later, listen, log_started, tune_runtime, until_stopped

if TYPE_CHECKING:
    from .metrics import ServerMetrics
    from .passthrough import SessionURLs

HERE = os.path.dirname(os.path.abspath(__file__))


# The options are mixed in from plain HasTraits classes: traitlets configures and documents
# them as UWSApp's (c.UWSApp.<name>), as it only names Configurable classes.
class UWSApp(Application, UWSAppOptions, MovedOptions):
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

    # ---- configuration and assembly ---------------------------------------------------------
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
        from .sessions.channel import check_peers
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
        peers = tuple(check_peers(self.session_channel_url, self.session_channel_peers))
        self.spawner_factory = SpawnerFactory(self, self.spawner_class, self.session_channel_url, peers)
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

    def init_leadership(self) -> None:
        """Who leads among the servers sharing the database (uws.leadership), once this server's
        secrets are known to be the installation's (uws.cluster): else it does not start."""
        from .cluster import ClusterMismatch
        from .leadership import Leadership

        self.leadership = Leadership(self.db, self.start_leading, self.stop_leading, parent=self)
        try:
            self.leadership.join(self.data_dir)
        except ClusterMismatch as e:
            self.log.error("%s", e)
            self.exit(1)

    def forget_cached_state(self) -> None:
        """Drop what this process cached of the database, for when it starts serving again after
        another process served (and wrote) meanwhile: leadership's start_leading calls it. The
        workspace listings and passthrough targets are kept while a process serves alone (it sees
        every write), so they would go stale; tokens and users are re-read within 2 s anyway."""
        self.workspaces.forget_cached()
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

        parts = LiveParts(
            self.proxy, self.events, self.websockets, self.jobs.live, self.front, self.leadership
        )
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
        self.assemble()
        # uvloop: asyncio's event loop written in C. A small request relayed by the passthrough
        # costs the server about a fifth less time on it than on asyncio's own loop.
        uvloop.run(self.serve())

    def assemble(self) -> None:
        """Builds the server, in order (each step uses what the earlier ones built); nothing runs
        yet. A step that cannot go on logs why and exits: 1 for the machine or a service, 2 for
        the configuration."""
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
        self.init_leadership()
        self.init_health()
        self.init_webapp()

    async def serve(self) -> None:
        """The assembled server's life, step by step, until SIGTERM or SIGINT. A new start-up step
        goes in this list, and what undoes it in shut_down."""
        tune_runtime()
        self.loop_watch = None
        if self.loop_stall_seconds > 0:
            from .looplag import LoopWatch

            self.loop_watch = LoopWatch(self.loop_stall_seconds)
            self.loop_watch.start()
        await self.leadership.begin()  # (before the port opens: a lone server's first answer leads)
        await listen(self)
        await self.leadership.run()  # start_leading if leading; the lock watched or tried for
        log_started(self)
        check_deployment_later(self)
        await until_stopped(self.reopen_logs)
        self.log.info("Shutting down")
        await self.shut_down()

    async def start_leading(self) -> None:
        """The work only the leader does (uws.leadership), besides answering requests: workspace
        work left unfinished by the last leader, the sessions (their channel, reconciliation,
        logs), the idle culler and the ending warnings; started on gaining the lead, stopped by
        stop_leading on losing it. What this process cached while it last led may be stale:
        another server has led since."""
        self.forget_cached_state()
        await self.workspaces.resume()
        await self.jobs.begin()
        self.culler.begin()
        self.ending_warnings.begin()

    async def stop_leading(self) -> None:
        """The leader's work stopped, on losing the lead or at shutdown; start_leading may follow."""
        self.ending_warnings.close()
        self.culler.close()
        await self.jobs.end()

    async def shut_down(self) -> None:
        """Undoes serve's steps: no new connections, the leader's work stopped and the lead
        given up (a standby takes over at once), file work finished, then the database and the
        audit log closed."""
        self.front.close()
        await self.leadership.close()
        await self.workspaces.drain()
        await self.events.flush()
        self.db.close()
        self.audit_log.close()
        if self.loop_watch is not None:
            self.loop_watch.close()

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
