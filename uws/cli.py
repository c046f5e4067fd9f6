"""The `uws` command line: the server's aliases and flags, its subcommands (each reads the same
configuration as the server), and the classes whose options the command line and
generate-config know."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from traitlets import Bool, Float, Integer, Unicode
from traitlets.config import Application, Configurable

from . import plugins
from .config_json import ConfigError

SERVER_ALIASES = {
    "config": "UWSApp.config_file",
    "ip": "UWSApp.ip",
    "port": "UWSApp.port",
    "db-url": "UWSApp.db_url",
    "log-level": "Application.log_level",
}
SERVER_FLAGS = {
    "debug": (
        {"Application": {"log_level": logging.DEBUG}, "UWSApp": {"debug": True}},
        "Log debug messages and show more detail.",
    ),
    "dev": (
        {"UWSApp": {"authenticator_class": "dev"}},
        """Development login: no client token needed, and every user's files belong to the
            server's own OS account. Never on a shared machine.""",
    ),
}
SUBCOMMANDS = {
    "check-config": (
        "uws.cli.CheckConfigApp",
        "Validate a configuration file and list every problem, then check this machine's deployment.",
    ),
    "generate-config": ("uws.cli.GenerateConfigApp", "Print a uws_config.py with every option and its help."),
    "upgrade-db": ("uws.cli.UpgradeDBApp", "Create or upgrade the database to the current schema."),
    "create-client-token": ("uws.cli.CreateClientTokenApp", "Create (or renew) an API client token."),
    "quota": ("uws.cli.QuotaApp", "Show or set a user's disk and core-hour maximums."),
    "user": ("uws.cli.UserApp", "List users, deactivate and reactivate one, or make one an admin."),
}


def configurable_classes() -> list[type[Configurable]]:
    """UWSApp's `classes`: every configurable class of the server, and every class the entry
    points name (another package's spawner too); their bases (SlurmBase) are added by traitlets."""
    from .app import UWSApp
    from .audit import AuditLog
    from .events import EventBus
    from .health import StatusReporter
    from .leadership import Leadership
    from .mail import Mailer
    from .passthrough import ProxyService
    from .passthrough.front import FrontServer
    from .sessions.culler import IdleCuller
    from .sessions.ending import EndingWarnings
    from .sessions.logs import SessionLogs
    from .sessions.service import JobService
    from .spawners.base import Spawner
    from .websockets import WebSocketCounter
    from .webui import WebUI

    found: list[type[Configurable]] = [UWSApp, FrontServer, ProxyService, WebSocketCounter, JobService]
    found += [WebUI, EventBus]
    found += [SessionLogs, IdleCuller, EndingWarnings, StatusReporter, Mailer, AuditLog, Spawner, Leadership]
    for group in (plugins.AUTHENTICATORS, plugins.STORAGE, plugins.SPAWNERS):
        found += [cls for cls in plugins.all_classes(group) if cls not in found]
    return found


class _ConfiguredApp(Application):
    """A subcommand that needs the server's configuration (for the database URL)."""

    aliases = {"config": "UWSApp.config_file", "db-url": "UWSApp.db_url"}
    # Database-only subcommands run without a login method; check-config requires one.
    require_login = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from .app import UWSApp

        # The options its aliases set (--config, --db-url) are UWSApp's: --help lists them there.
        self.classes = [*self.classes, UWSApp]

    def server_app(self) -> Any:
        from .app import UWSApp

        app = UWSApp(parent=None, config=self.config)
        app.cli_config = self.cli_config
        app.load_uws_config(require_login=self.require_login)
        return app

    def database(self) -> Any:
        from . import db

        app = self.server = self.server_app()
        return db, db.open_database(app.data_dir, app.db_url)

    def audit(self, action: str, obj: str, outcome: str = "success", **details: Any) -> None:
        """One line in the server's audit log (uws.audit) about what this command did, as
        "cli:<OS account>" from no address. After database(), whose configuration it reads."""
        from .audit import AuditLog, cli_actor

        audit_log = AuditLog(self.server.data_dir, parent=self.server)
        # (Run as root, a file this makes is given to the data directory's owner: the server.)
        if audit_log.open(create_owner_from_parent=True):
            audit_log.record(action, cli_actor(), obj, outcome, None, **details)
            audit_log.close()


class CheckConfigApp(_ConfiguredApp):
    name = "uws check-config"
    description = """Validate a configuration file, then check the deployment on this machine
    (uws.deployment): uws check-config FILE [--account NAME] [--file-only]. Exit code 0: both
    fine; 1: the file is valid, but sessions would fail here; 2: the file is not valid."""
    require_login = True
    aliases = {**_ConfiguredApp.aliases, "account": "CheckConfigApp.account"}
    flags = {
        **Application.flags,
        "file-only": ({"CheckConfigApp": {"file_only": True}}, "Check the file only, not this machine."),
    }
    account = Unicode(
        "", config=True, help="A session account to try the session helper as (default: one found here)."
    )
    file_only = Bool(False, config=True, help="Check the file only, not this machine.")

    def start(self) -> None:
        if self.extra_args:
            self.config.UWSApp.config_file = self.extra_args[0]
        try:
            app = self.server_app()
        except ConfigError as e:
            print(str(e), file=sys.stderr)
            self.exit(2)
        for warning in app.config_warnings:
            print(f"warning: {warning}")
        print(f"{app.config_file or 'embedded defaults'}: valid")
        if self.file_only:
            return
        from .deployment import check_deployment

        found = asyncio.run(check_deployment(app, self.account))
        for note in found.notes:
            print(f"note: {note}")
        for problem in found.problems:
            print(f"deployment problem: {problem}", file=sys.stderr)
        if found.problems:
            self.exit(1)
        print(f"deployment: {found.summary()}")


class GenerateConfigApp(Application):
    name = "uws generate-config"
    description = "Print a uws_config.py that documents every option, all commented out."

    def start(self) -> None:
        from .app import UWSApp

        print(UWSApp().generate_config_file())


class UpgradeDBApp(_ConfiguredApp):
    name = "uws upgrade-db"
    description = "Create the database, or upgrade it to this version's schema (SQLite is backed up first)."

    def start(self) -> None:
        db, database = self.database()
        try:
            print(db.upgrade(database.engine, database.url))
        except db.DatabaseNewer as e:
            print(str(e), file=sys.stderr)
            self.exit(1)


class CreateClientTokenApp(_ConfiguredApp):
    name = "uws create-client-token"
    description = "uws create-client-token NAME: create or renew an API client's token; printed last."

    def start(self) -> None:
        if len(self.extra_args) != 1:
            print("usage: uws create-client-token NAME", file=sys.stderr)
            self.exit(2)
        from .auth.tokens import create_client_token

        db, database = self.database()
        db.prepare(database.engine)
        name = self.extra_args[0]
        key = database.call(lambda s: create_client_token(s, name))
        self.audit("admin.client_token.create", f"client_token:{name}")
        print(f"Client token for {name} (shown once, store it safely):")
        print(key)


class QuotaApp(_ConfiguredApp):
    name = "uws quota"
    description = """uws quota show USER | uws quota set USER [--disk-bytes N] [--core-hours H].
    A maximum of -1 removes the limit. Users read theirs at GET /quota/."""

    aliases = {
        **_ConfiguredApp.aliases,
        "disk-bytes": "QuotaApp.disk_bytes",
        "core-hours": "QuotaApp.core_hours",
    }
    disk_bytes = Integer(None, allow_none=True, config=True, help="Maximum disk bytes (-1: unlimited).")
    core_hours = Float(None, allow_none=True, config=True, help="Maximum core hours (-1: unlimited).")
    json = Bool(False, config=True, help="Print JSON.")
    user = Unicode("")

    def start(self) -> None:
        if len(self.extra_args) != 2 or self.extra_args[0] not in ("show", "set"):
            print(
                "usage: uws quota show USER | uws quota set USER [--disk-bytes N] [--core-hours H]",
                file=sys.stderr,
            )
            self.exit(2)
        action, username = self.extra_args
        from . import orm
        from .quotas import disk_used, set_quota

        db, database = self.database()
        db.prepare(database.engine)

        def _run(session: Any) -> str:
            if action == "set":
                disk = self.disk_bytes
                hours = self.core_hours
                quota = set_quota(
                    session,
                    username,
                    None if disk is None or disk < 0 else disk,
                    None if hours is None or hours < 0 else hours,
                    clear_disk=disk is not None and disk < 0,
                    clear_core_hours=hours is not None and hours < 0,
                )
                session.flush()
            from sqlalchemy import select

            user = session.scalar(select(orm.User).where(orm.User.username == username))
            if user is None:
                raise LookupError(f"no user named {username!r}")
            quota = session.get(orm.Quota, user.id)
            disk_max = quota.max_disk_bytes if quota else None
            hours_max = quota.max_core_hours if quota else None
            used_hours = quota.used_core_hours if quota else 0.0
            return (
                f"{username}: disk {disk_used(session, user.id)} of "
                f"{'unlimited' if disk_max is None else disk_max} bytes; core hours "
                f"{used_hours:.5f} of {'unlimited' if hours_max is None else f'{hours_max:.5f}'}"
            )

        audited: dict[str, Any] = {"disk_bytes": self.disk_bytes, "core_hours": self.core_hours}
        try:
            print(database.call(_run))
        except LookupError as e:
            if action == "set":
                self.audit("admin.quota.set", f"user:{username}", outcome="failure", **audited)
            print(str(e), file=sys.stderr)
            self.exit(1)
        if action == "set":
            self.audit("admin.quota.set", f"user:{username}", outcome="success", **audited)


USER_USAGE = "usage: uws user activate|deactivate USER | uws user set-admin USER [--unset] | uws user list"


class UserApp(_ConfiguredApp):
    name = "uws user"
    description = """uws user deactivate USER | uws user activate USER | uws user set-admin USER
    [--unset] | uws user list. A deactivated user's tokens stop working (within 2 s) and the user
    is hidden from /users/. set-admin makes a user an admin (--unset: no longer one), which a
    running server sees within 2 s, on every token the user holds; users named in
    c.UWSApp.admin_users stay admins whatever this says."""
    flags = {
        **Application.flags,
        "unset": ({"UserApp": {"unset": True}}, "With set-admin: the user is no longer an admin."),
    }
    unset = Bool(False, config=True, help="With set-admin: the user is no longer an admin.")

    def start(self) -> None:
        args = self.extra_args
        if (
            not args
            or args[0] not in ("activate", "deactivate", "set-admin", "list")
            or (args[0] != "list" and len(args) != 2)
        ):
            print(USER_USAGE, file=sys.stderr)
            self.exit(2)
        from sqlalchemy import select

        from . import orm

        app = self.server_app()
        if args[0] == "set-admin" and self.unset and args[1] in app.admin_users:
            print(
                f"{args[1]} is an admin through c.UWSApp.admin_users: remove the name there to demote.",
                file=sys.stderr,
            )
            self.exit(1)
        db, database = self.database()
        db.prepare(database.engine)

        def _run(session: Any) -> str:
            if args[0] == "list":
                rows = session.scalars(select(orm.User).order_by(orm.User.id))
                return "\n".join(
                    f"{u.id}\t{u.username}\t{u.email}\t{'active' if u.is_active else 'inactive'}"
                    + ("\tadmin" if u.is_admin or u.username in app.admin_users else "")
                    for u in rows
                )
            user = session.scalar(select(orm.User).where(orm.User.username == args[1]))
            if user is None:
                raise LookupError(f"no user named {args[1]!r}")
            if args[0] == "set-admin":
                user.is_admin = not self.unset
                return f"{user.username}: {'admin' if user.is_admin else 'not an admin'}"
            user.is_active = args[0] == "activate"
            return f"{user.username}: {'active' if user.is_active else 'inactive'}"

        action = f"admin.user.{args[0]}"
        details: dict[str, Any] = {}
        if args[0] == "set-admin":
            action, details = "admin.user.update", {"fields": ["is_admin"], "is_admin": not self.unset}
        try:
            print(database.call(_run))
        except LookupError as e:
            if args[0] != "list":
                self.audit(action, f"user:{args[1]}", "failure", **details)
            print(str(e), file=sys.stderr)
            self.exit(1)
        if args[0] != "list":
            self.audit(action, f"user:{args[1]}", **details)
