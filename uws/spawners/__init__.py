"""Spawners start, poll and stop sessions on a resource (JupyterHub's contract, adapted)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..plugins import SPAWNERS, load_class

if TYPE_CHECKING:
    from traitlets.config import Configurable

    from ..auth.accounts import Account
    from ..sessions.channel import SessionChannel
    from .base import Spawner


class SpawnerFactory:
    """Makes the spawner of one job: the configured class (UWSApp.spawner_class), or the class a
    job recorded when it started, so a restarted server re-attaches with the same one."""

    def __init__(
        self, parent: Configurable, choice: str, channel_url: str, channel_peers: tuple[str, ...] = ()
    ) -> None:
        # Spawners are configured (c.Spawner.*, c.SudoSpawner.*) through their parent's config.
        self.parent = parent
        self.choice = choice
        self.channel_url = channel_url
        self.channel_peers = channel_peers
        # Set once the session channel is bound (its key and socket group go to every helper).
        self.channel: SessionChannel | None = None

    def spawner_class(self, account: Account, name: str | None = None) -> type[Spawner]:
        choice = name or self.choice
        if not choice:
            # Sessions of other OS accounts can only be started through sudo.
            choice = "sudo" if account.uid != os.getuid() else "local"
        return load_class(SPAWNERS, choice)

    def make(self, job_id: int, account: Account, workspace_dir: str, name: str | None = None) -> Spawner:
        cls = self.spawner_class(account, name)
        spawner: Spawner = cls(job_id, account, workspace_dir, self.channel_url, parent=self.parent)
        spawner.channel_peers = self.channel_peers
        if self.channel is not None:
            spawner.channel_server_key = self.channel.public_key.decode()
            spawner.channel_gid = self.channel.socket_gid
        return spawner

    def resource(self) -> Spawner:
        """A spawner of no job, to ask about the resource itself (its health, its settings)."""
        from ..auth.accounts import Account

        return self.make(0, Account("", -1, -1, frozenset()), "")

    def grace_seconds(self, spawner: Any = None) -> float:
        """Seconds a stopping session gets between SIGTERM and SIGKILL (Spawner.grace_seconds,
        as configured for the job's spawner class, or the configured class when none is at hand)."""
        return float((self.resource() if spawner is None else spawner).grace_seconds)
