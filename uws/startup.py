"""What the server does once it is assembled, as it starts serving and until it stops: the
process tuned for a long-running server, the listening socket, the log lines that say where it
listens and how it runs, the warnings about the deployment (uws.deployment, as `uws check-config`
finds them), and the wait for a signal to stop."""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import __version__

if TYPE_CHECKING:
    from .app import UWSApp

# Strong references to the background checks (the event loop keeps only weak ones).
_checks: set[asyncio.Task[None]] = set()


def tune_runtime() -> None:
    # Start-up made many long-lived objects; moving them out of the collector's sight and
    # collecting less often keeps full collections from stalling requests.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    # Database and file system threads hand the GIL back and forth with the event loop; the
    # default 5 ms switch interval would let a thread holding the SQLite write lock wait that
    # long for its turn.
    sys.setswitchinterval(0.0005)


async def listen(app: UWSApp) -> None:
    """The HTTP server on app.ip:app.port, its connections taken in by app.front."""
    from .forwarded import TrustingHTTPServer

    front = app.front
    server = TrustingHTTPServer(
        app.webapp,
        trust=front.trust,
        # API handlers refuse oversize bodies themselves (a JSON 413, counted as the body
        # streams in); the passthrough streams bodies of any size to sessions.
        max_body_size=1 << 40,
        # Tornado's header timeout: its wait for each request head, idle time included.
        idle_connection_timeout=front.head_timeout,
    )
    front.attach(app.webapp.parts, server)
    await front.listen(app.port, app.ip)


async def until_stopped(reopen_logs: Callable[[], None]) -> None:
    """Returns on SIGTERM or SIGINT; SIGHUP (logrotate's) calls `reopen_logs` meanwhile."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reopen_logs)
    await stop.wait()


def log_started(app: UWSApp) -> None:
    url = app.public_url or f"http://{app.ip}:{app.port}"
    app.log.info(
        "UWS %s listening on %s (database %s)",
        __version__,
        url,
        app.db.engine.url.render_as_string(hide_password=True),
    )
    if app.passthrough_mode == "path":
        app.log.warning(
            "Sessions are served under /passthrough/<id>/ on one origin (passthrough_mode = "
            "'path'): a page in one session can act in any other session the same browser "
            "opens. Use this only for a single user or fully trusted users."
        )
    else:
        app.log.info("Sessions are served from their own origins under *.%s", app.session_host)
    if app.web_ui is not None:
        app.log.info("Web interface: open %s%s in a browser", url, app.web_ui.prefix)
    if app.authenticator_class == "dev":
        app.log.warning(
            "Development login: anyone who can reach this server logs in as any user, without a "
            "client token. Never use it on a shared machine. Try:\n"
            '  TOKEN=$(curl -s -X POST %s/tokens/ -d \'{"user_info": {"username": "alice", '
            '"email": "alice@example.org"}}\' | python3 -c \'import json,sys; print(json.load(sys.stdin)["token"])\')\n'
            '  curl -s -H "UWS-Authorization: Token $TOKEN" %s/workspaces/',
            url,
            url,
        )


def check_deployment_later(app: UWSApp) -> None:
    """Log the deployment's problems as warnings, in the background: the checks start the
    session helper's interpreter and ask the resource, which takes a moment."""
    task = asyncio.ensure_future(_log_deployment(app))
    _checks.add(task)
    task.add_done_callback(_checks.discard)


async def _log_deployment(app: UWSApp) -> None:
    from .deployment import check_deployment

    try:
        found = await check_deployment(app)
    except Exception:
        app.log.exception("Checking the deployment failed")
        return
    for note in found.notes:
        app.log.info("deployment: %s", note)
    for problem in found.problems:
        app.log.warning("deployment: %s", problem)
    if not found.problems:
        app.log.info("deployment: %s", found.summary())
