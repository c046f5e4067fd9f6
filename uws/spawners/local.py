"""LocalProcessSpawner (sessions as the server's own user) and SudoSpawner (as the workspace
owner's OS account, through sudo)."""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import signal
import subprocess
from typing import Any

import psutil
from traitlets import List, Unicode

from ..storage import safepath
from .access import helper_access_problem
from .base import LaunchError, Spawner
from .helper_log import HEAD_BYTES, start_failure

log = logging.getLogger("uws.spawners")

# Where a session app may listen for the passthrough's connections to 127.0.0.1.
LOOPBACK_OR_ANY = frozenset({"127.0.0.1", "0.0.0.0", "::1", "::", "::ffff:127.0.0.1"})
LOOPBACK_OR_ANY_HEX = frozenset(
    {
        "0100007F",
        "00000000",
        "00000000000000000000000001000000",
        "00000000000000000000000000000000",
        "0000000000000000FFFF00000100007F",
    }
)
TCP_LISTEN = "0A"


def listening_uids(port: int) -> set[int]:
    """Owners of the sockets listening on loopback or all addresses at `port`, from
    /proc/net/tcp{,6}, which anyone may read (psutil needs the processes' fds for the pids)."""
    uids = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) < 8 or fields[3] != TCP_LISTEN:
                continue
            address, _, hex_port = fields[1].rpartition(":")
            if int(hex_port, 16) == port and address in LOOPBACK_OR_ANY_HEX:
                uids.add(int(fields[7]))
    return uids


class LocalProcessSpawner(Spawner):
    """Sessions run as the server's own OS user, on this machine. For development and
    single-user machines."""

    # Popen objects of helpers this process started, so their exit is reaped (no zombies).
    _children: dict[int, subprocess.Popen] = {}
    watches_start = True
    exit_code: int | None = None  # the helper's, once this process has reaped it

    def launch_prefix(self) -> list[str]:
        return []

    def helper_runs_as_server(self) -> bool:
        return not self.launch_prefix()

    async def start(self, spec: dict[str, Any], secret: str) -> int:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._start_sync, spec, secret)

    def _start_sync(self, spec: dict[str, Any], secret: str) -> int:
        self.check_channel_access()
        self.check_helper_access()
        self.prepare_job_dir(spec)
        # A fresh file, created through directory fds: the user may have swapped the job
        # directory for a symlink since prepare_job_dir.
        with safepath.open_dir(self.job_dir) as dir_fd:
            fd = safepath.create_file_at("helper.log", dir_fd, self.account)
        log_file = os.fdopen(fd, "ab")
        try:
            proc = subprocess.Popen(
                self.launch_prefix() + self.helper_command(),
                stdin=subprocess.PIPE,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.job_dir,
                start_new_session=True,  # the session outlives the server
                env=self.helper_env(),
            )
        finally:
            log_file.close()
        assert proc.stdin is not None
        proc.stdin.write((secret + "\n").encode())
        proc.stdin.close()
        self._children[proc.pid] = proc
        self.pid = proc.pid
        try:
            self.create_time = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            self.create_time = None
        return proc.pid

    def check_helper_access(self) -> None:
        """Refuse to start a helper whose account could not run it (its Python under a home
        directory closed to other accounts, say): it could only fail, every time."""
        if self.helper_runs_as_server():
            return
        problem = helper_access_problem(self.python, self.helper_pythonpath, self.account)
        if problem is not None:
            log.warning("Refusing to launch job %s: %s", self.job_id, problem)
            raise LaunchError(problem)

    async def start_failure(self) -> dict[str, Any] | None:
        if self._alive():
            return None
        return await asyncio.get_running_loop().run_in_executor(None, self._ended_before_report)

    def _ended_before_report(self) -> dict[str, Any]:
        exit_info = self.read_exit()
        if exit_info is not None:
            return exit_info
        return start_failure(
            safepath.read_file(self.job_dir, "helper.log", HEAD_BYTES, head=True), self.exit_code
        )

    async def reap(self) -> None:
        child = self._children.get(self.pid) if self.pid is not None else None
        if child is None:
            return
        # The helper lingers until the server acknowledges its exit report, then ends.
        for _ in range(600):
            if child.poll() is not None:
                self._children.pop(child.pid, None)
                return
            await asyncio.sleep(0.1)

    async def session_host(self, port: int) -> str | None:
        listens = await asyncio.get_running_loop().run_in_executor(None, self.listens_on, port)
        return "127.0.0.1" if listens else None

    def listens_on(self, port: int) -> bool:
        """Whether a process of the session (the helper this spawner started, and every process
        below it) listens on 127.0.0.1:`port`. Where the server may not see another account's
        sockets (SudoSpawner, server not root), a listening socket of the session's account
        counts: the owner can only point the passthrough at their own processes."""
        if not self._alive():
            return False
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return False
        hidden = False
        for proc in procs:
            try:
                connections = proc.net_connections(kind="inet")
            except psutil.AccessDenied:
                hidden = True
                continue
            except psutil.Error:
                continue
            for c in connections:
                if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
                    if c.laddr.ip in LOOPBACK_OR_ANY:
                        return True
        return hidden and self.account.uid != os.geteuid() and self.account.uid in listening_uids(port)

    def helper_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        try:
            entry = pwd.getpwnam(self.account.username)
            env.update(HOME=entry.pw_dir, USER=entry.pw_name, LOGNAME=entry.pw_name)
        except KeyError:
            pass
        return env

    def _alive(self) -> bool:
        if self.pid is None:
            return False
        child = self._children.get(self.pid)
        if child is not None:
            if child.poll() is None:
                return True
            self.exit_code = child.returncode
            self._children.pop(self.pid, None)
            return False
        try:
            proc = psutil.Process(self.pid)
            if self.create_time is not None and abs(proc.create_time() - self.create_time) > 1:
                return False  # the PID now belongs to another process
            return proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    async def stop_unrecorded(self) -> bool:
        """The helper is found by its job directory on its command line (its PID was never
        recorded); it is stopped as usual, and whatever of its process tree survives that (the
        app of a helper that had to be killed) is killed too."""
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(None, self._find_helper)
        if found is None:
            return False
        helper, tree = found
        self.pid, self.create_time = helper.pid, helper.create_time()
        await self.stop()
        await loop.run_in_executor(None, _kill_survivors, tree)
        return True

    def _find_helper(self) -> tuple[psutil.Process, list[psutil.Process]] | None:
        """The outermost process running this job's helper (sudo's, for SudoSpawner), and its
        descendants."""
        matches = {}
        for proc in psutil.process_iter(["cmdline"]):
            argv = proc.info["cmdline"] or []
            if "uws.session_helper" in argv and any(
                argv[i : i + 2] == ["--job-dir", self.job_dir] for i in range(len(argv) - 1)
            ):
                matches[proc.pid] = proc
        for proc in matches.values():
            try:
                if proc.ppid() not in matches:
                    return proc, proc.children(recursive=True)
            except psutil.Error:
                continue
        return None

    async def poll(self) -> dict[str, Any] | None:
        if self._alive():
            return None
        exit_info = self.read_exit()
        return exit_info if exit_info is not None else {"reason": "disappeared"}

    async def stop(self) -> None:
        """SIGTERM to the helper (it ends its app's process tree), then SIGKILL after the grace."""
        if not self._alive():
            return
        self._signal(signal.SIGTERM)
        for _ in range(int(self.grace_seconds * 10) + 20):
            await asyncio.sleep(0.1)
            if not self._alive():
                return
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)  # type: ignore[arg-type]
        except ProcessLookupError:
            pass


def _kill_survivors(procs: list[psutil.Process]) -> None:
    for proc in procs:
        try:
            if proc.is_running():  # psutil checks that the PID still names the same process
                proc.kill()
        except psutil.Error:  # gone, or another account's (a non-root server): the helper's job
            pass
    psutil.wait_procs(procs, timeout=5)


class SudoSpawner(LocalProcessSpawner):
    """Sessions run as the workspace owner's OS account through sudo, so the server need not be
    root. It needs a sudoers rule letting the server's account run the helper as session users,
    for example (visudo -f /etc/sudoers.d/uws):

        Defaults:uws !requiretty
        uws ALL=(%uwsusers) NOPASSWD: /usr/bin/python3 -I -m uws.session_helper *

    where `uws` is the server's account and `uwsusers` the group of session users (set
    UWSApp.session_group to it, so their helpers can reach the session channel). With
    helper_pythonpath the command is `/usr/bin/env PYTHONPATH=<path> /usr/bin/python3 -P -s -m
    uws.session_helper *`."""

    sudo = List(
        Unicode(),
        ["sudo", "-n", "-H"],
        config=True,
        help="The sudo command and options put before `-u USER -- <helper command>`.",
    )

    def launch_prefix(self) -> list[str]:
        return [*self.sudo, "-u", self.account.username, "--"]

    def _signal(self, sig: int) -> None:
        # sudo relays SIGTERM to the helper; when the server is not root it cannot signal the
        # session user's helper directly, so sudo itself sends the signal.
        if os.geteuid() == 0:
            super()._signal(sig)
            return
        helper = self._helper_pid()
        if helper is not None:
            subprocess.run([*self.launch_prefix(), "kill", f"-{int(sig)}", str(helper)], capture_output=True)

    def _helper_pid(self) -> int | None:
        try:
            children = psutil.Process(self.pid).children()
        except psutil.Error:
            return None
        return children[0].pid if children else None
