"""The Spawner contract.

A spawner launches `uws-session-helper` for one job, in the job's directory inside the
workspace; the helper starts the app and reports over the session channel. The spawner's own
job is the part the channel cannot do: start the helper as the right account, tell from the
outside whether it still exists (poll), and end it when the channel cannot (stop).

get_state()/load_state() round-trip through the database, so a restarted server re-attaches.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

from traitlets import Float, TraitError, Unicode, validate
from traitlets.config import LoggingConfigurable

from ..auth.accounts import Account
from ..storage import safepath

# exit.json holds an exit code, a reason and a short log tail; anything bigger is not the helper's.
EXIT_FILE_MAX_BYTES = 1 << 20

log = logging.getLogger("uws.spawners")


class LaunchError(Exception):
    """A session could not be launched, for a reason the user can read (and maybe fix)."""


class Spawner(LoggingConfigurable):
    python = Unicode(
        sys.executable,
        config=True,
        help="""Python interpreter that runs uws-session-helper for each session (it must have
        the uws package installed). Default: the server's own interpreter.""",
    )
    helper_pythonpath = Unicode(
        "",
        config=True,
        help="""PYTHONPATH for the helper, when `python` does not have the uws package installed
        (for example the system Python with python3-zmq and python3-psutil, and uws in a
        directory every session account can read): absolute directories separated by ':'.
        The helper then starts with `python -P -s` (Python 3.11 or later) instead of `-I`.""",
    )

    @validate("helper_pythonpath")
    def _absolute_pythonpath(self, proposal: Any) -> str:
        value = proposal["value"]
        # An empty or relative entry would mean the helper's working directory: the job
        # directory, which the session's account controls.
        if value and not all(os.path.isabs(entry) for entry in value.split(":")):
            raise TraitError(f"helper_pythonpath entries must be absolute directories: {value!r}")
        return value

    grace_seconds = Float(
        5.0,
        config=True,
        help="""Seconds a stopping session gets between SIGTERM and SIGKILL, whether it is stopped
        or ends by itself (its app exits, its time limit is reached). Formerly
        c.UWSApp.stop_grace_seconds, which still works.""",
    )

    # Whether poll() is cheap enough to run on every reconcile pass, helper alive or not.
    poll_while_alive = False
    # Whether start_failure() can tell, moments after start(), that the helper has already
    # ended (a helper on this machine; not one waiting in a batch queue).
    watches_start = False
    # The server's CURVE public key (Z85) for a tcp:// session channel; set by the app.
    channel_server_key = ""
    # Every endpoint the helper connects to (UWSApp.session_channel_peers); empty: channel_url.
    channel_peers: tuple[str, ...] = ()
    # The group that may reach an ipc:// session channel (None for tcp://); set by the app.
    channel_gid: int | None = None

    def __init__(
        self, job_id: int, account: Account, workspace_dir: str, channel_url: str, **kw: Any
    ) -> None:
        super().__init__(**kw)
        self.job_id = job_id
        self.account = account
        self.workspace_dir = workspace_dir
        self.channel_url = channel_url
        self.job_dir = os.path.join(workspace_dir, f".{job_id}")
        self.pid: int | None = None
        self.create_time: float | None = None
        self.messages: list[str] = []

    # ---- the contract ----------------------------------------------------------------------
    async def start(self, spec: dict[str, Any], secret: str) -> int:
        """Launch the helper; return the resource job id (a PID for local spawners).

        `secret` is what the helper reads on standard input (the job secret and the session
        token, one per line): it must reach the helper only that way, never on a command line
        or in a file other accounts can read."""
        raise NotImplementedError

    async def session_host(self, port: int) -> str | None:
        """The host at which the passthrough reaches the session's app on `port`, from what the
        server itself knows (never from the helper, which the session's owner controls); None
        when `port` cannot be the session's. A spawner that cannot tell refuses."""
        return None

    async def poll(self) -> dict[str, Any] | None:
        """None while the session exists; otherwise how it ended:
        {"exit_code", "reason", "log_tail"} from the helper's exit.json, or
        {"reason": "disappeared"} when nothing tells."""
        raise NotImplementedError

    async def stop(self) -> None:
        """End the session from the outside (used when its helper cannot be reached)."""
        raise NotImplementedError

    async def start_failure(self) -> dict[str, Any] | None:
        """For a helper that has not reported yet (watches_start): None while it runs; once it
        has ended, how, as poll() says it, with the cause it left in its output when it wrote no
        exit.json. Called every few tenths of a second: cheap while the helper runs."""
        return None

    async def set_time_limit(self, seconds: int) -> bool:
        """Move the session's time limit to `seconds` from its start where the resource keeps
        it (a scheduler); False when the session's helper keeps it instead (and is told by the
        server). Raises LaunchError when the resource refuses."""
        return False

    async def usage(self) -> float | None:
        """Core seconds the resource allocated to the session, for resources that account that
        way (Slurm: CPUs × elapsed); None means the server counts requested CPUs × the wall
        clock from running to end."""
        return None

    def ended_at(self) -> float | None:
        """When the session ended, as the resource recorded it (epoch seconds), for a session
        found ended after the fact (a scheduler's accounting); None: the server's clock counts."""
        return None

    async def end_state(self, helper_exit: dict[str, Any]) -> dict[str, Any]:
        """How the session ended, for a helper that reported it was signalled from outside; a
        resource that knows why (a scheduler's time limit) says so here."""
        return helper_exit

    async def health(self) -> tuple[bool, str] | None:
        """Whether the resource answers, for /status/ (None: nothing to ask)."""
        return None

    async def stop_unrecorded(self) -> bool:
        """End a helper this spawner may have started for the job although the launch was never
        recorded (the server died in between); True when one was found. The default: the
        resource cannot tell, so nothing is found."""
        return False

    async def reap(self) -> None:
        """Collect the helper's exit status once it has finished (no zombies)."""

    def get_state(self) -> dict[str, Any]:
        return {"pid": self.pid, "create_time": self.create_time, "job_dir": self.job_dir}

    def load_state(self, state: dict[str, Any]) -> None:
        self.pid = state.get("pid")
        self.create_time = state.get("create_time")
        self.job_dir = state.get("job_dir") or self.job_dir

    async def progress(self) -> AsyncIterator[str]:
        for message in self.messages:
            yield message

    # ---- shared helpers ----------------------------------------------------------------------
    def helper_invocation(self) -> list[str]:
        """The interpreter running the helper's module, before the helper's own arguments."""
        # The helper runs in the job directory, which the session's account can write, and is
        # handed the job secret: nothing there (nor the account's own site-packages or PYTHON*
        # variables) may stand in for a uws module. -I keeps the working directory, the user's
        # site-packages and the environment out of sys.path. It would ignore PYTHONPATH too, so
        # with helper_pythonpath the helper gets -P (no working directory on sys.path) and -s
        # (no user site-packages) instead, and the PYTHONPATH entries are absolute (checked).
        if self.helper_pythonpath:
            # Through env(1): sudo resets the environment, and the PYTHONPATH must survive it.
            prefix, flags = ["env", f"PYTHONPATH={self.helper_pythonpath}"], ["-P", "-s"]
        else:
            prefix, flags = [], ["-I"]
        return [*prefix, self.python, *flags, "-m", "uws.session_helper"]

    def helper_command(self) -> list[str]:
        # One argument: a Z85 key may begin with "-", which argparse would take for an option.
        key = [f"--server-key={self.channel_server_key}"] if self.channel_server_key else []
        # Every server that may lead: the helper reaches whichever binds (see protocol.py).
        endpoints = [arg for url in self.channel_peers or (self.channel_url,) for arg in ("--endpoint", url)]
        return [*self.helper_invocation(), "--job-dir", self.job_dir, *endpoints, *key]

    def check_channel_access(self) -> None:
        """Refuse to start a helper that could not reach the ipc:// session channel (its
        account outside session_group): it would only leave the session pending. A helper that
        runs as the server's own account reaches the socket whatever the session's account is."""
        if self.channel_gid is None or self.helper_runs_as_server() or self.account.uid in (os.geteuid(), 0):
            return
        if self.channel_gid not in self.account.groups and not self._in_group_now():
            log.warning(
                "Refusing to launch job %s: account %s (groups %s, now %s) lacks the channel's group %s",
                self.job_id,
                self.account.username,
                sorted(self.account.groups),
                self._groups_now(),
                self.channel_gid,
            )
            raise LaunchError(
                f"The OS account {self.account.username} is not a member of the server's session group,"
                " so its sessions cannot report to the server. Please contact your administrator."
            )

    def helper_runs_as_server(self) -> bool:
        """Whether the session's helper runs as the server's own account (not the session's)."""
        return False

    def _in_group_now(self) -> bool:
        """The account's groups as the OS has them now: the account record may have been read
        before the account joined the session group."""
        return self.channel_gid in self._groups_now()

    def _groups_now(self) -> list[int]:
        try:
            return sorted(os.getgrouplist(self.account.username, self.account.gid))
        except (OSError, KeyError):
            return []

    def prepare_job_dir(self, spec: dict[str, Any]) -> None:
        """Create <workspace>/.<job id>/ and job.json, owned by the session's account, without
        following any symlink (S3)."""
        fd = safepath.open_dir_fd(self.workspace_dir)
        try:
            name = f".{self.job_id}"
            try:
                os.mkdir(name, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            safepath.chown_at(name, fd, self.account)
        finally:
            os.close(fd)
        safepath.write_file(self.job_dir, ["job.json"], json.dumps(spec, indent=1).encode(), self.account)

    def read_exit(self) -> dict[str, Any] | None:
        # The job directory is the user's: read through directory fds, so a .N swapped for a
        # symlink (to another user's job, say) is not followed.
        raw = safepath.read_file(self.job_dir, "exit.json", EXIT_FILE_MAX_BYTES)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None
