"""The audit log: one JSON line per security-relevant event, appended to a file of its own.

Every line has the same six fields, in this order, and `details` when there is more to say:

    {"time": "2024-05-01T12:00:00.123Z", "action": "workspace.delete", "outcome": "success",
     "actor": "alice", "object": "workspace:12", "source": "192.0.2.7", "details": {...}}

- `time`: UTC, milliseconds, a literal Z (the API's datetime format);
- `action`: one of ACTIONS (dotted names; the README lists them);
- `outcome`: "success"; "refused" (401, 403, or 404 for an object the caller does not own: the
  server does not tell another user's object from none, on purpose); "failure" (anything else);
- `actor`: the username; null when nobody was authenticated; "system" for the server itself
  (the culler, a time limit); "cli:<OS account>" for the `uws` command line;
- `object`: what was acted on, as "<kind>:<id>" ("workspace:12", "job:5", "user:alice"), or the
  request's path (never its query string) for a refused request;
- `source`: the client's address as the server believes it (X-Forwarded-For only from
  `FrontServer.trusted_proxies`); null for the server's own actions and the command line.

Nothing the server handles as a credential is ever written: no token, cookie, ticket, client
token or request body, and no query string (links carry `?token=`). `details` holds only values
the server chooses (ids, statuses, counts) and the messages of refusals, which never repeat input.

Each line is one `write` to a file opened with O_APPEND: no buffer to lose, lines from the
server and the command line never interleave, and no fsync (the page cache absorbs it; events
are rare, and nothing is written for a successful read). A line that cannot be written (disk
full, file gone read-only) is dropped: the request it belongs to is answered as usual, and the
server log says so once, then once more when lines are written again.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import pwd
import stat
from typing import Any

from traitlets import Bool, Unicode
from traitlets.config import LoggingConfigurable

from .keys import PRIVATE_FILE

# The vocabulary. A new event gets a name here (and in the README's "Audit log"): dotted, the
# kind of object first, so that `grep '"action": "session.'` finds every session event.
ACTIONS = frozenset(
    {
        "login",  # POST /tokens/
        "token.create",  # a scoped API token made: POST /tokens/api/ (details: its id and scopes)
        "token.revoke",  # logout, DELETE /tokens/ (details.all: every token of the user), or
        # DELETE /tokens/api/<id>/ (details.token)
        "workspace.create",
        "workspace.delete",
        "workspace.share",  # POST /shared_workspaces/: a copy offered to each recipient
        "share.accept",
        "share.delete",  # a pending share declined by its recipient or cancelled by its sharer
        "session.start",
        "session.stop",  # by the owner, or by "system": idle culling, time limit
        "session.extend",  # PUT /jobs/<id>/extend/ (details.minutes)
        "access.refused",  # a 401 or 403 of a request with no action of its own above
        # Administration: "admin.<object kind>.<verb>", from the command line and /admin/.
        "admin.client_token.create",
        "admin.quota.set",
        "admin.user.activate",
        "admin.user.deactivate",
        "admin.job.stop",  # PUT /admin/jobs/<id>/stop/
        "admin.job.list",  # GET /admin/jobs/: an admin read every user's sessions
        "admin.user.list",  # GET /admin/users/
        "admin.user.update",  # PUT /admin/users/<name>/ (details.fields: what it set)
        "admin.token.revoke",  # DELETE /admin/users/<name>/tokens/ (details.count)
    }
)
OUTCOMES = ("success", "refused", "failure")
SYSTEM = "system"
# Longest text kept in any field: an object path or a message is cut here.
MAX_TEXT = 200


def outcome_of(status: int, refused: bool = False) -> str:
    """An HTTP answer's outcome: what the `outcome` field says about a request."""
    if status < 400:
        return "success"
    if refused or status in (401, 403):
        return "refused"
    return "failure"


def cli_actor() -> str:
    """Who runs a `uws` command: the OS account, and whoever became it through sudo."""
    try:
        name = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        name = str(os.geteuid())
    by = os.environ.get("SUDO_USER")
    return f"cli:{name}" + (f" (sudo by {by})" if by and by != name else "")


def _text(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return value[:MAX_TEXT] + "…"
    return value


def format_line(
    action: str,
    actor: str | None,
    obj: str | None,
    outcome: str,
    source: str | None,
    details: dict[str, Any],
    now: _dt.datetime | None = None,
) -> bytes:
    """One audit line, newline included. json.dumps escapes every control character, so a line
    is always exactly one line, whatever a username or a path holds."""
    when = now or _dt.datetime.now(_dt.UTC)
    entry: dict[str, Any] = {
        "time": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
        "action": action,
        "outcome": outcome,
        "actor": _text(actor),
        "object": _text(obj),
        "source": source or None,
    }
    if details:
        entry["details"] = {key: _text(value) for key, value in details.items()}
    return (json.dumps(entry, ensure_ascii=True, default=str) + "\n").encode("utf-8", "replace")


class AuditLog(LoggingConfigurable):
    """The audit log: one JSON line per security-relevant event, in a file of its own."""

    # `record` is the one entry point; handlers call it through BaseHandler.audit, which fills
    # in the actor and the source address.

    enabled = Bool(
        True,
        help="""Keep an audit log: one JSON line per login, token revocation, workspace
        created, deleted or shared, share accepted or deleted, session started or stopped,
        administrative action and refused request (see the README's "Audit log"). On by
        default: a trail nobody turned on is the one missing when it is needed.""",
    ).tag(config=True)
    path = Unicode(
        "",
        help="""File the audit log is appended to. Default: <data_dir>/audit.log, beside the
        database, in a directory other accounts cannot list. The file is created 0600 whatever
        the umask (a looser existing one is tightened). The server reopens it on SIGHUP, so
        logrotate can rename it and then signal the server (postrotate: kill -HUP <pid>; or
        use copytruncate). If it cannot be opened or written (a missing directory, a full
        disk), the server keeps serving, drops the lines, and says so once in its own log.
        Commands such as `uws user deactivate` append to the same file.""",
    ).tag(config=True)

    def __init__(self, data_dir: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.file_path = os.path.abspath(self.path or os.path.join(data_dir or ".", "audit.log"))
        self._fd: int | None = None
        self._failing = False  # the last write or open failed (and the log said so)
        self.dropped = 0  # lines lost since the last one written

    # ---- the file ----------------------------------------------------------------------------
    def open(self, create_owner_from_parent: bool = False) -> bool:
        """(Re)open the file; the old descriptor is closed only once the new one is open, so a
        failed reopen keeps writing where it did. `create_owner_from_parent`: a file this call
        creates gets the owner of its directory (the command line, run as root, must not leave
        a file the server's account cannot append to)."""
        if not self.enabled:
            return False
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            existed = os.path.lexists(self.file_path)
            fd = os.open(self.file_path, flags, PRIVATE_FILE)
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) & ~PRIVATE_FILE:
                os.fchmod(fd, stat.S_IMODE(st.st_mode) & PRIVATE_FILE)
            if create_owner_from_parent and not existed and os.geteuid() == 0:
                parent = os.stat(os.path.dirname(self.file_path))
                os.fchown(fd, parent.st_uid, parent.st_gid)
        except OSError as e:
            self._fail(f"cannot open it: {e.strerror or e}")
            return False
        old, self._fd = self._fd, fd
        if old is not None:
            os.close(old)
        return True

    def reopen(self) -> None:
        """SIGHUP: after logrotate has renamed the file, new lines go to a new one."""
        if self.open():
            self.log.info("Audit log reopened: %s", self.file_path)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _fail(self, why: str) -> None:
        if not self._failing:
            self._failing = True
            self.log.error(
                "Audit log %s: %s. Audit lines are dropped until it can be written (the server "
                "goes on serving; send SIGHUP to reopen it once it is fixed).",
                self.file_path,
                why,
            )

    # ---- lines -------------------------------------------------------------------------------
    def record(
        self,
        action: str,
        actor: str | None,
        obj: str | None,
        outcome: str = "success",
        source: str | None = None,
        **details: Any,
    ) -> None:
        """Append one line. Never raises: an audit line that cannot be written does not fail
        what it records."""
        if self._fd is None:
            if not self.enabled:
                return
            self.dropped += 1
            return
        line = format_line(action, actor, obj, outcome, source, details)
        try:
            os.write(self._fd, line)
        except OSError as e:
            self.dropped += 1
            self._fail(f"cannot write to it: {e.strerror or e}")
            return
        if self._failing:
            self._failing = False
            self.log.warning(
                "Audit log %s is written again; %d lines were lost", self.file_path, self.dropped
            )
        self.dropped = 0
