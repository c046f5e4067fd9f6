"""Tornado handlers: REST and websockets; the passthrough's are in uws/passthrough/handlers.py.

Each module ends with its own route list (`default_handlers`); this joins them in the order
they are tried, so the routes can be imported without building the application.
"""

from __future__ import annotations

from typing import Any

from ..passthrough import handlers as passthrough
from . import admin, files, jobs, logs, meta, metrics, quota, shares, tokens, users, workspaces, ws

# The API's routes (a path matching none of them is a JSON 404: base.NotFoundHandler).
default_handlers: list[Any] = []
# (logs before jobs: /jobs/<id>/<action>/ would take /jobs/<id>/log/; files before workspaces:
# /workspaces/<id>/<action>/ would take /workspaces/<id>/files/.)
for _module in (ws, tokens, files, workspaces, logs, jobs, meta, metrics, users, quota, shares, admin):
    default_handlers.extend(_module.default_handlers)


def api_host_routes(passthrough_mode: str) -> list[Any]:
    """Every route on the API's host name: websocket upgrades first (/jobs/<id>/ is both a REST
    path and the job stream), then the API, then the passthrough's."""
    return [
        *passthrough.upgrade_handlers(passthrough_mode),
        *ws.upgrade_handlers,
        *default_handlers,
        *passthrough.default_handlers(passthrough_mode),
    ]


# Origin mode: every path on a session's own host name (j<id>-<label>.<session_host>).
session_host_routes = passthrough.session_host_handlers
