"""Storage accounts: the OS account whose name owns a user's workspace files."""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import pwd
import re
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from ..errors import NO_STORAGE_ACCOUNT, APIError

log = logging.getLogger("uws.auth.accounts")

# Matched whole (fullmatch): "$" would also accept a trailing newline.
USERNAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
LOGIN_DEFS = "/etc/login.defs"
# shadow-utils' own defaults when login.defs does not say.
DEFAULT_UID_RANGE = {"UID_MIN": 1000, "UID_MAX": 60000}


@dataclass(frozen=True)
class Account:
    """An OS account: files are chowned to (uid, gid) when the server runs as root."""

    username: str
    uid: int
    gid: int
    groups: frozenset[int]


def valid_username(name: object) -> bool:
    return isinstance(name, str) and USERNAME_RE.fullmatch(name) is not None


def login_defs_uid_range(path: str = LOGIN_DEFS) -> tuple[int, int]:
    """UID_MIN and UID_MAX from login.defs: the uids useradd gives to people's accounts."""
    values = dict(DEFAULT_UID_RANGE)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] in values:
                    try:
                        values[parts[0]] = int(parts[1], 0)
                    except ValueError:
                        pass
    except OSError:
        pass
    return values["UID_MIN"], values["UID_MAX"]


def account_of(entry: pwd.struct_passwd) -> Account:
    groups = {entry.pw_gid}
    try:
        groups.update(os.getgrouplist(entry.pw_name, entry.pw_gid))
    except OSError:
        groups.update(g.gr_gid for g in grp.getgrall() if entry.pw_name in g.gr_mem)
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, frozenset(groups))


class AccountProvider:
    """Maps a UWS username to its storage account. Subclasses decide how."""

    def account(self, username: str) -> Account:
        raise APIError(400, NO_STORAGE_ACCOUNT)

    def reserved(self, username: str) -> bool:
        """True when the name is an OS account no UWS user may have (blocking: NSS lookup)."""
        return False


class NoAccounts(AccountProvider):
    """For authentication methods that cannot give storage accounts (Globus, B13)."""


class ServerAccount(AccountProvider):
    """Everything belongs to the server's own OS account (development, single-user machines)."""

    def account(self, username: str) -> Account:
        return account_of(pwd.getpwuid(os.getuid()))


class OSAccounts(AccountProvider):
    """An OS account of the same name, created with useradd when allowed.

    Only people's accounts qualify: never root, a system account (uid outside
    [min_uid, max_uid]) or the server's own account. Sessions and files of such a user would
    run as, or belong to, that account (the server's own account even gets the local spawner,
    with the database and every workspace in reach)."""

    def __init__(self, create: bool = False, min_uid: int | None = None, max_uid: int | None = None) -> None:
        self.create = create
        self.groups: tuple[str, ...] = ()  # supplementary groups of the accounts it creates
        default_min, default_max = login_defs_uid_range()
        self.min_uid = default_min if min_uid is None else min_uid
        self.max_uid = default_max if max_uid is None else max_uid
        self._lock = threading.Lock()

    def usable(self, entry: pwd.struct_passwd) -> bool:
        uid = entry.pw_uid
        return uid != 0 and uid != os.getuid() and self.min_uid <= uid <= self.max_uid

    def reserved(self, username: str) -> bool:
        if not valid_username(username):
            return False  # never an account: account() refuses it anyway
        try:
            return not self.usable(pwd.getpwnam(username))
        except KeyError:
            return False

    def _existing(self, username: str) -> Account | None:
        try:
            entry = pwd.getpwnam(username)
        except KeyError:
            return None
        if not self.usable(entry):
            log.warning("Refusing OS account %s (uid %d) as a user's storage account", username, entry.pw_uid)
            raise APIError(400, NO_STORAGE_ACCOUNT)
        return account_of(entry)

    def account(self, username: str) -> Account:
        if not valid_username(username):
            raise APIError(400, NO_STORAGE_ACCOUNT)
        found = self._existing(username)
        if found is not None:
            return found
        if not self.create:
            raise APIError(400, NO_STORAGE_ACCOUNT)
        with self._lock:
            found = self._existing(username)
            if found is not None:
                return found
            # The name always follows "--" so it can never be read as an option (S9).
            result = subprocess.run(
                [
                    "useradd",
                    "--create-home",
                    "--shell",
                    "/bin/bash",
                    *(["--groups", ",".join(self.groups)] if self.groups else []),
                    "--",
                    username,
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if result.returncode != 0 and "already exists" not in result.stderr:
                raise APIError(400, NO_STORAGE_ACCOUNT)
            found = self._existing(username)
            if found is None:
                raise APIError(400, NO_STORAGE_ACCOUNT)
            return found


class AccountCache:
    """Storage accounts of users, looked up off the event loop (a lookup may run useradd) and
    kept for a minute, so a burst of requests from one user costs one lookup."""

    SECONDS = 60.0

    def __init__(
        self,
        provider: AccountProvider,
        executor: Executor,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self.provider = provider
        self.executor = executor
        # Runs a background task the server waits for at shutdown.
        self.spawn = spawn
        self._accounts: dict[str, tuple[float, Account]] = {}

    async def get(self, username: str) -> Account:
        """The user's storage account; APIError(400) when there is none."""
        cached = self._accounts.get(username)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self.SECONDS:
            return cached[1]
        loop = asyncio.get_running_loop()
        account = await loop.run_in_executor(self.executor, self.provider.account, username)
        self._accounts[username] = (now, account)
        return account

    def provision(self, username: str) -> None:
        """After login, make sure the storage account exists; failures are only logged."""

        async def _provision() -> None:
            try:
                await self.get(username)
            except APIError:
                log.warning("No storage account for %s could be found or created", username)
            except Exception:
                log.exception("Provisioning the storage account of %s failed", username)

        self.spawn(_provision())
