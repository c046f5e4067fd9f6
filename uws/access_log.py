"""The server's log: its format, and Tornado's access log line (shared by the handlers and the
passthrough's fast path), with credentials in request URIs redacted."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tornado import web

log = logging.getLogger("tornado.access")


def setup_logging(level: int, debug: bool, app_log: logging.Logger) -> None:
    """The format of every line. Access lines of answered requests only with --debug (those of
    refused or failed ones always); credentials redacted from Tornado's lines too."""
    logging.basicConfig(
        level=level,
        format="[%(levelname)1.1s %(asctime)s %(name)s] %(message)s",
        datefmt="%H:%M:%S",
    )
    app_log.setLevel(level)
    log.setLevel(logging.DEBUG if debug else logging.WARNING)
    for name in ("tornado.access", "tornado.application", "tornado.general"):
        logging.getLogger(name).addFilter(RedactCredentials())


def log_request(handler: web.RequestHandler) -> None:
    """The Tornado application's log_function."""
    request = handler.request
    log_access(
        handler.get_status(),
        request.method or "",
        request.uri or "",
        request.remote_ip or "",
        request.request_time(),
    )


def log_access(status: int, method: str, uri: str, remote_ip: str, seconds: float) -> None:
    """One line per request, credentials in the URI redacted."""
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    if not log.isEnabledFor(level):
        return
    log.log(level, "%d %s %s (%s) %.2fms", status, method, redact(uri), remote_ip, 1000.0 * seconds)


# Query parameters that are credentials: websocket tickets and session link tokens.
CREDENTIAL_PARAMS = re.compile(r"([?&;](?:ticket|token)=)[^&#;]*", re.IGNORECASE)


def redact(uri: str) -> str:
    """uri with the values of credential query parameters replaced by [redacted]."""
    return CREDENTIAL_PARAMS.sub(r"\1[redacted]", uri)


class RedactCredentials(logging.Filter):
    """Redacts credential query parameters from a logger's records: Tornado's error lines quote
    the request URI."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True
