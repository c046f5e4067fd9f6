"""Tornado handlers: REST and websockets; the passthrough's are in uws/passthrough/handlers.py.

Each module ends with its own route list (`default_handlers`); this joins them in the order
they are tried, so the routes can be imported without building the application.
"""

from __future__ import annotations

import re
from typing import Any

from tornado.routing import PathMatches, Rule

from ..passthrough import handlers as passthrough
from . import admin, files, jobs, logs, meta, metrics, pages, quota, shares, tokens, users, workspaces, ws

# The API's routes (a path matching none of them is a JSON 404: base.NotFoundHandler).
default_handlers: list[Any] = []
# (logs before jobs: /jobs/<id>/<action>/ would take /jobs/<id>/log/; files before workspaces:
# /workspaces/<id>/<action>/ would take /workspaces/<id>/files/.)
for _module in (ws, tokens, files, workspaces, logs, jobs, meta, metrics, users, quota, shares, admin):
    default_handlers.extend(_module.default_handlers)


def api_host_routes(passthrough_mode: str, pages_prefix: str | None = None) -> list[Any]:
    """Every route on the API's host name: websocket upgrades first (/jobs/<id>/ is both a REST
    path and the job stream), then the API, then the passthrough's, then the web interface's
    pages under `pages_prefix` (None: no pages), which never take a path from the API."""
    return [
        *passthrough.upgrade_handlers(passthrough_mode),
        *ws.upgrade_handlers,
        *default_handlers,
        *passthrough.default_handlers(passthrough_mode),
        *(pages.default_handlers(pages_prefix) if pages_prefix is not None else []),
    ]


def api_path_patterns(passthrough_mode: str) -> list[re.Pattern[str]]:
    """The path patterns of the API's routes (and the passthrough's), pages left out."""
    found = []
    for route in api_host_routes(passthrough_mode):
        rule = route if isinstance(route, Rule) else Rule(PathMatches(route[0]), route[1])
        if isinstance(rule.matcher, PathMatches):
            found.append(rule.matcher.regex)
    return found


# Origin mode: every path on a session's own host name (j<id>-<label>.<session_host>).
session_host_routes = passthrough.session_host_handlers
