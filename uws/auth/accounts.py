"""Storage accounts: the OS account whose name owns a user's workspace files."""

from __future__ import annotations

import grp
import os
import pwd
import re
import subprocess
import threading
from dataclasses import dataclass

from ..errors import NO_STORAGE_ACCOUNT, APIError

USERNAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")


@dataclass(frozen=True)
class Account:
    """An OS account: files are chowned to (uid, gid) when the server runs as root."""

    username: str
    uid: int
    gid: int
    groups: frozenset[int]


def valid_username(name: object) -> bool:
    return isinstance(name, str) and bool(USERNAME_RE.match(name))


def _account(entry: pwd.struct_passwd) -> Account:
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


class NoAccounts(AccountProvider):
    """For authentication methods that cannot give storage accounts (Globus, B13)."""


class ServerAccount(AccountProvider):
    """Everything belongs to the server's own OS account (development, single-user machines)."""

    def account(self, username: str) -> Account:
        return _account(pwd.getpwuid(os.getuid()))


class OSAccounts(AccountProvider):
    """An OS account of the same name, created with useradd when allowed."""

    def __init__(self, create: bool = False) -> None:
        self.create = create
        self.groups: tuple[str, ...] = ()  # supplementary groups of the accounts it creates
        self._lock = threading.Lock()

    def account(self, username: str) -> Account:
        if not valid_username(username):
            raise APIError(400, NO_STORAGE_ACCOUNT)
        try:
            return _account(pwd.getpwnam(username))
        except KeyError:
            pass
        if not self.create:
            raise APIError(400, NO_STORAGE_ACCOUNT)
        with self._lock:
            try:
                return _account(pwd.getpwnam(username))
            except KeyError:
                pass
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
            try:
                return _account(pwd.getpwnam(username))
            except KeyError:
                raise APIError(400, NO_STORAGE_ACCOUNT) from None
