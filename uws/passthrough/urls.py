"""Where sessions live in the browser: their host names and the links that lead to them.

Two ways to reach a session (UWSApp.passthrough_mode):
- "origin" (the default): each session has a host name of its own, j<id>-<label>.<session_host>,
  so the browser's same-origin policy keeps one session's pages out of every other session.
  The label is random per job, so a session's origin cannot be guessed from its id.
- "path": /passthrough/<id>/ on the server's own origin. Every session shares one origin there,
  so any session's page can script any other the same browser has open: for single-user or
  trusted installations only.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

# j<id>-<label>: ids as the API's routes take them (no job has an id past 64 bits), labels as
# new_host_label makes them.
_SESSION_LABEL = re.compile(r"j([0-9]{1,18})-([a-z0-9]{1,40})")
MEMO_SIZE = 4096  # Host headers whose session SessionHosts.job remembers
MEMO_HOST_LENGTH = 300  # and the longest it remembers (a DNS name is at most 253, a port 6 more)


def new_host_label() -> str:
    """The random part of a new job's host name (64 bits, lower-case hex: valid in DNS)."""
    return secrets.token_hex(8)


def host_name(host: str) -> str:
    """A Host header without its port, lower case (host names are case-blind)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class SessionHosts:
    """Host names of sessions: j<id>-<label>.<domain>, any port."""

    def __init__(self, domain: str) -> None:
        self.suffix = "." + domain.lower().strip(".")
        # Host headers already read that name a session: every passthrough request asks, and a
        # browser sends the same few again and again. Only a session's short name is kept (what
        # else a client sends, of any length, is worked out again each time), and the memo is
        # emptied when full.
        self._jobs: dict[str, tuple[int, str]] = {}

    def is_session_host(self, host: str) -> bool:
        """Whether a Host header names something under the session domain (a session, or a
        name that only looks like one): such requests never reach the API."""
        return host_name(host).endswith(self.suffix)

    def job(self, host: str) -> tuple[int, str] | None:
        """(job id, label) of a session's Host header, or None."""
        known = self._jobs.get(host)
        if known is not None:
            return known
        name = host_name(host)
        if not name.endswith(self.suffix):
            return None
        match = _SESSION_LABEL.fullmatch(name[: -len(self.suffix)])
        if match is None:
            return None
        job = (int(match.group(1)), match.group(2))
        if len(host) <= MEMO_HOST_LENGTH:
            if len(self._jobs) >= MEMO_SIZE:
                self._jobs.clear()
            self._jobs[host] = job
        return job

    def name(self, job_id: int, label: str) -> str:
        return f"j{job_id}-{label}{self.suffix}"


class SessionURLs:
    """Where browsers find sessions: the links connection_details carries, and the origin each
    session's app is told it serves from."""

    def __init__(self, mode: str, public_origin: str, passthrough_url: str, session_host: str) -> None:
        self.mode = mode  # UWSApp.passthrough_mode: "origin" or "path"
        self.public_origin = public_origin
        self.passthrough_url = passthrough_url
        self.hosts = SessionHosts(session_host)

    def base(self) -> str:
        """scheme://host[:port] that session links start from, before origin mode swaps the host."""
        return (self.passthrough_url or self.public_origin).rstrip("/")

    def origin(self, job_id: int, label: str) -> str:
        """A session's own origin: the scheme and port of passthrough_url (or public_url, or the
        server's own), the host name j<id>-<label>.<session_host>."""
        scheme, _, rest = self.base().partition("://")
        authority = rest.split("/", 1)[0]
        port = ""
        if not authority.endswith("]") and ":" in authority:
            port = ":" + authority.rsplit(":", 1)[1]
        return f"{scheme}://{self.hosts.name(job_id, label)}{port}"

    def app_origin(self, job_id: int, label: str) -> str:
        """The origin a session's app serves pages from (its own, or the server's in path mode)."""
        return self.origin(job_id, label) if self.mode == "origin" else self.public_origin

    def connection_url(self, job_id: int, ready: dict[str, Any], label: str) -> tuple[str, str]:
        """url_domain and url_path of a ready session, through this server's passthrough.

        url_domain is an origin (no path, no trailing slash); url_path starts with '/' and has
        at most one '?', so clients can insert /tree/<path> before the query. Stored without
        the token: models.job_model adds it when the job is shown to its owner."""
        from ..models import link_with_token

        path = ready.get("path") or "/"
        if not path.startswith("/"):
            path = "/" + path
        if self.mode == "origin":
            return self.origin(job_id, label), link_with_token(path, "")
        prefix = f"/passthrough/{job_id}"
        if not path.startswith(prefix + "/"):
            path = prefix + path
        return self.base(), link_with_token(path, "")
