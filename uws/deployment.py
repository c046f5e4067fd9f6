"""The deployment as the configuration meets this machine: what `uws check-config` checks beyond
the file, and what start-up logs as warnings.

- The session helper starts: its interpreter, run as a session account as the spawner runs it
  (through sudo for SudoSpawner, so the sudoers rule is tried too), imports uws and its helper.
- Session accounts can reach the session channel's socket and enter root_dir, and the server can
  make both.
- The resource answers (Slurm's controller, slurmrestd).

Which session account is tried: the one named (check-config --account), else a member of
session_group, else the owner of a workspace directory under root_dir. With none of them, the
permission bits are read as they would apply to an account in session_group and nothing else.
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import plugins
from .auth.accounts import Account, account_of, login_defs_uid_range
from .sessions.channel import ChannelError, default_url, group_id
from .spawners import SpawnerFactory
from .spawners.access import EXECUTE, barrier, helper_access_problem
from .spawners.helper_log import start_failure
from .spawners.local import LocalProcessSpawner

if TYPE_CHECKING:
    from .app import UWSApp

PROBE_SECONDS = 30.0  # the helper's interpreter starting once (sudo included)
HEALTH_SECONDS = 30.0


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)  # sessions would fail: check-config exits 1
    notes: list[str] = field(default_factory=list)  # what could not be checked, and why
    helper_started_as: str = ""  # whom the session helper's interpreter started as, if it did

    def summary(self) -> str:
        """One line for a deployment without problems."""
        tried = f"; the session helper starts as {self.helper_started_as}" if self.helper_started_as else ""
        return f"no problems found{tried}."


@dataclass
class Place:
    """Where sessions run, as the configuration puts it on this machine."""

    root_dir: str
    channel_url: str
    channel_gid: int
    data_dir: str
    factory: SpawnerFactory


async def check_deployment(app: UWSApp, account_name: str = "") -> Findings:
    """Every check; the blocking ones off the event loop."""
    loop = asyncio.get_running_loop()
    found, place = await loop.run_in_executor(None, local_findings, app, account_name)
    if place is not None:
        try:
            answer = await asyncio.wait_for(place.factory.resource().health(), HEALTH_SECONDS)
        except Exception as e:
            answer = (False, f"{type(e).__name__}: {e}")
        if answer is not None and not answer[0]:
            found.problems.append(f"The session resource does not answer: {answer[1]}")
    return found


def local_findings(app: UWSApp, account_name: str) -> tuple[Findings, Place | None]:
    found = Findings()
    place = where_sessions_run(app, found)
    if place is None:
        return found, None
    check_server_dirs(place, found)
    account = session_account(app, place, account_name, found)
    stand_in = account or Account("", -1, -1, frozenset({place.channel_gid}))
    spawner = place.factory.make(0, stand_in, place.root_dir)
    if not isinstance(spawner, LocalProcessSpawner):
        return found, place  # helpers run elsewhere (a batch queue): the resource is asked
    if spawner.helper_runs_as_server():
        probe_helper(spawner, "the server's account", found)
        return found, place
    if account is None:
        who = f"An OS account in group {group_name(place.channel_gid)}"
        found.notes.append(
            "No session account was found to try the session helper with (no member of "
            "session_group, no workspace under root_dir yet): `uws check-config --account NAME` tries one."
        )
        problem = helper_access_problem(spawner.python, spawner.helper_pythonpath, stand_in, who)
        if problem:
            found.problems.append(problem)
    else:
        who = f"The OS account {account.username}"
        if place.channel_url.startswith("ipc://") and place.channel_gid not in account.groups:
            found.problems.append(
                f"{who} is not a member of session_group ({group_name(place.channel_gid)}): its"
                " sessions could not reach the session channel."
            )
        probe_helper(spawner, f"the OS account {account.username}", found)
    check_reach(place, stand_in, who, found)
    return found, place


def where_sessions_run(app: UWSApp, found: Findings) -> Place | None:
    storage = plugins.load_class(plugins.STORAGE, app.storage_class)(parent=app)
    root_dir = os.path.abspath(getattr(storage, "root_dir", "") or os.path.join(app.data_dir, "workspaces"))
    channel_url = app.session_channel_url or default_url(app.data_dir)
    try:
        gid = group_id(app.session_group)
    except ChannelError as e:
        found.problems.append(str(e))
        return None
    factory = SpawnerFactory(app, app.spawner_class, channel_url, tuple(app.session_channel_peers))
    return Place(root_dir, channel_url, gid, os.path.realpath(app.data_dir), factory)


def check_server_dirs(place: Place, found: Findings) -> None:
    """The server makes root_dir and the channel's directory, and works in both."""
    dirs = [("root_dir", place.root_dir)]
    if place.channel_url.startswith("ipc://"):
        dirs.append(("the session channel's directory", os.path.dirname(place.channel_url[len("ipc://") :])))
    for what, path in dirs:
        existing = path
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        wanted = os.R_OK | os.W_OK | os.X_OK if existing == path else os.W_OK | os.X_OK
        if not os.access(existing, wanted):
            verb = "use" if existing == path else f"create it ({existing} is not writable)"
            found.problems.append(f"The server's account cannot {verb}: {what} {path}.")
    if os.geteuid() != 0 and place.channel_gid not in (os.getegid(), *os.getgroups()):
        found.problems.append(
            f"The server's account is not a member of session_group ({group_name(place.channel_gid)}):"
            " it could not give the session channel to that group."
        )


def check_reach(place: Place, account: Account, who: str, found: Findings) -> None:
    """A session's account enters root_dir (its workspaces are inside) and reaches the channel's
    socket. The data directory counts as open: the server opens it (0711) at start when one of
    them is inside it."""
    opened = frozenset({place.data_dir})
    closed = barrier(place.root_dir, account, EXECUTE, opened)
    if closed is not None:
        found.problems.append(
            f"{who} cannot enter root_dir {place.root_dir} ({closed} is closed to it): its"
            " sessions could not start in their workspaces."
        )
    if place.channel_url.startswith("ipc://"):
        socket_dir = os.path.dirname(place.channel_url[len("ipc://") :])
        closed = barrier(os.path.dirname(socket_dir), account, EXECUTE, opened)
        if closed is not None:
            found.problems.append(
                f"{who} cannot reach the session channel in {socket_dir} ({closed} is closed to"
                " it): set c.UWSApp.session_channel_url to an ipc:// path session accounts can reach."
            )


def session_account(app: UWSApp, place: Place, named: str, found: Findings) -> Account | None:
    """The account to try sessions as (see the module's docstring); None when none is known."""
    if named:
        try:
            return account_of(pwd.getpwnam(named))
        except KeyError:
            found.problems.append(f"--account {named}: no such OS account")
            return None
    if (app.storage_accounts_from or app.authenticator_class) == "dev":
        return account_of(pwd.getpwuid(os.getuid()))  # every session runs as the server's account
    low, high = login_defs_uid_range()
    for names in candidate_names(app, place):
        for name in sorted(names):
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                continue
            if entry.pw_uid != 0 and low <= entry.pw_uid <= high:
                return account_of(entry)
    return None


def candidate_names(app: UWSApp, place: Place) -> Iterator[list[str]]:
    """Names that may be session accounts, most likely first (each source read only when the
    ones before it named no account)."""
    if app.session_group:
        yield list(grp.getgrgid(place.channel_gid).gr_mem)
    try:
        yield os.listdir(place.root_dir)
    except OSError:
        pass
    if app.session_group:  # accounts whose primary group it is: the whole account database
        yield [entry.pw_name for entry in pwd.getpwall() if entry.pw_gid == place.channel_gid]


def probe_helper(spawner: LocalProcessSpawner, who: str, found: Findings) -> None:
    """Start the helper's interpreter on the helper's module as the spawner starts it (`--help`:
    it imports everything the helper needs, then exits)."""
    argv = spawner.launch_prefix() + spawner.helper_invocation() + ["--help"]
    try:
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd="/",
            env=spawner.helper_env(),
            timeout=PROBE_SECONDS,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        found.problems.append(f"As {who}: the session helper could not start: {' '.join(argv)}: {e}")
        return
    if result.returncode == 0:
        found.helper_started_as = who
    else:
        ended = start_failure(result.stdout, result.returncode)
        found.problems.append(f"As {who}: {ended['message']} (exit code {result.returncode})")


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
