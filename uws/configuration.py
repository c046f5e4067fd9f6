"""What UWSApp does with its configuration beyond declaring it: reading it (either format), the
options that moved to the class they configure (their old UWSApp names still work, with a
warning naming the new place), and the checks made on a configuration before anything starts."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from traitlets.config import Config

from . import config_json, plugins
from .config_json import ConfigError
from .config_validation import validate

if TYPE_CHECKING:
    from .app import UWSApp

NO_LOGIN_METHOD = (
    "no login method configured: set c.UWSApp.authenticator_class (e.g. 'local' or 'globus') in the "
    "config file, or pass --dev for the development login (no client token; never on a shared machine)"
)

# Options that moved to the class they configure: old UWSApp name -> (class, new name). The old
# names keep working (with a warning naming the new place) for configs written before the move.
MOVED_OPTIONS = {
    "proxy_connect_timeout": ("ProxyService", "connect_timeout"),
    "proxy_request_timeout": ("ProxyService", "request_timeout"),
    "proxy_websocket_max_message_size": ("ProxyService", "websocket_max_message_size"),
    "idle_timeout_seconds": ("IdleCuller", "timeout_seconds"),
    "idle_warning_seconds": ("IdleCuller", "warning_seconds"),
    "cull_interval_seconds": ("IdleCuller", "interval_seconds"),
    "stop_grace_seconds": ("Spawner", "grace_seconds"),
    "status_check_timeout": ("StatusReporter", "check_timeout"),
    "build": ("StatusReporter", "build"),
    "head_timeout": ("FrontServer", "head_timeout"),
    "max_connections": ("FrontServer", "max_connections"),
    "trusted_proxies": ("FrontServer", "trusted_proxies"),
    "max_websockets_per_user": ("WebSocketCounter", "max_per_user"),
    "max_concurrent_starts": ("JobService", "max_concurrent_starts"),
    "max_running_jobs_per_user": ("JobService", "max_running_jobs_per_user"),
    "heartbeat_seconds": ("JobService", "heartbeat_seconds"),
    "reconcile_seconds": ("JobService", "reconcile_seconds"),
    "lost_contact_seconds": ("JobService", "lost_contact_seconds"),
}


def read_config(app: UWSApp, require_login: bool = True) -> list[str]:
    """Loads app.config_file into the app, the command line over it; its warnings. Raises
    ConfigError listing every problem. `require_login` is off for subcommands that only use
    the database."""
    found: list[str] = []
    if app.config_file:
        if app.config_file.endswith(".json"):
            cfg, found = config_json.load(app.config_file)
            app.update_config(cfg)
        else:
            if not os.path.exists(app.config_file):
                raise ConfigError([f"config file {app.config_file} not found"])
            app.load_config_file(app.config_file)
        # The command line wins over the file.
        app.update_config(app.cli_config)
    forward_moved_options(app.config, found)
    problems, warnings = validate(app.as_original_config())
    problems += class_problems(app)
    if require_login and not app.authenticator_class:
        # Fail closed: a config that forgets the line must not fall back to a login anyone can use.
        problems.append(NO_LOGIN_METHOD)
    if problems:
        raise ConfigError(problems)
    return found + [w for w in warnings if w not in found]


def moved(old: str) -> str:
    """The help text of a deprecated UWSApp option."""
    cls, new = MOVED_OPTIONS[old]
    return f"Deprecated: use c.{cls}.{new} (c.UWSApp.{old} still works)."


def forward_moved_options(config: Config, warnings: list[str]) -> None:
    """c.UWSApp.<old name> configures the class the option moved to, unless the config also
    sets it there (the new name wins); either way a warning is added to `warnings`."""
    old_section = config.UWSApp
    for old, (cls, new) in MOVED_OPTIONS.items():
        if old not in old_section:
            continue
        section = config[cls]
        if new in section:
            message = f"c.UWSApp.{old} is ignored: c.{cls}.{new} is set"
        else:
            section[new] = old_section[old]
            message = f"c.UWSApp.{old} is deprecated: use c.{cls}.{new}"
        if message not in warnings:
            warnings.append(message)


def class_problems(app: UWSApp) -> list[str]:
    """Class names that are neither an entry point nor importable, found before start-up."""
    problems = []
    for option, group in (
        ("authenticator_class", plugins.AUTHENTICATORS),
        ("storage_accounts_from", plugins.AUTHENTICATORS),
        ("storage_class", plugins.STORAGE),
        ("spawner_class", plugins.SPAWNERS),
    ):
        name = getattr(app, option)
        if name:
            try:
                plugins.load_class(group, name)
            except plugins.PluginError as e:
                problems.append(f"UWSApp.{option}: {e}")
    return problems


def api_host_problems(app: UWSApp) -> list[str]:
    """An API host name under the session domain would be routed to sessions (and share cookies
    with them): the server refuses to start."""
    if app.passthrough_mode != "origin":
        return []
    from urllib.parse import urlsplit

    for url in (app.public_origin(), app.passthrough_url):
        name = (urlsplit(url).hostname or "").lower() if url else ""
        if name and app.session_urls.hosts.is_session_host(name):
            return [f"The API's host name {name!r} is under UWSApp.session_host {app.session_host!r}"]
    return []
