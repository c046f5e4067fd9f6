"""Tornado's access log line, shared by the handlers and the passthrough's fast path."""

from __future__ import annotations

import logging
import re

log = logging.getLogger("tornado.access")


def log_access(status: int, method: str, uri: str, remote_ip: str, seconds: float) -> None:
    """One line per request; websocket tickets in the URI are redacted (they are credentials)."""
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    if not log.isEnabledFor(level):
        return
    uri = re.sub(r"(ticket=)[^&]*", r"\1[redacted]", uri)
    log.log(level, "%d %s %s (%s) %.2fms", status, method, uri, remote_ip, 1000.0 * seconds)
