"""The copies behind shares: what a copy is charged, and the background copy of the original's
files into the recipient's directory (resumed at start-up, cleaned up when it fails)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from . import orm
from .errors import APIError
from .quotas import disk_limit
from .sessions.status import WorkspaceStatus
from .storage.trees import TooLarge

if TYPE_CHECKING:
    from .auth.accounts import AccountCache
    from .db import Database
    from .mail import Mailer
    from .storage.local import LocalFileSystemStorage
    from .workspaces import WorkspaceService

log = logging.getLogger("uws.shares")


class ShareCopies:
    def __init__(
        self,
        db: Database,
        storage: LocalFileSystemStorage,
        workspaces: WorkspaceService,
        accounts: AccountCache,
        mailer: Mailer,
    ) -> None:
        self.db = db
        self.storage = storage
        self.workspaces = workspaces
        self.accounts = accounts
        self.mailer = mailer

    async def size(self, original: orm.Workspace) -> int:
        """Bytes a copy of the original takes: counted afresh, as sessions write without
        updating the recorded size."""
        storage = self.storage
        if storage.valid_workspace_dir(original.file_path):
            try:
                disk, _ = await self.workspaces.to_background_thread(storage.scan, original.file_path)
                return disk
            except (OSError, APIError):
                log.warning("Could not measure workspace %s; using its recorded size", original.id)
        return original.disk_space or 0

    def start(self, copy_id: int) -> None:
        self.workspaces.spawn(self.initialise(copy_id))

    async def resume(self) -> None:
        """Start again the copies a stop interrupted."""
        ids = await self.db.run(
            lambda s: list(
                s.scalars(
                    select(orm.Workspace.id).where(orm.Workspace.status == WorkspaceStatus.INITIALIZING)
                )
            )
        )
        for copy_id in ids:
            self.start(copy_id)

    async def initialise(self, copy_id: int) -> None:
        """Copy the original's files into the recipient's directory, then idle (or error)."""

        def _load(session: Any) -> tuple[Any, ...] | None:
            mapping = session.scalar(
                select(orm.SharedWorkspaceMapping).where(
                    orm.SharedWorkspaceMapping.shared_workspace_id == copy_id
                )
            )
            copy = session.get(orm.Workspace, copy_id)
            if mapping is None or copy is None or copy.status != WorkspaceStatus.INITIALIZING:
                return None
            original = (
                session.get(orm.Workspace, mapping.original_workspace_id)
                if mapping.original_workspace_id
                else None
            )
            recipient = session.get(orm.User, copy.user_id)
            maximum, used = disk_limit(session, copy.user_id)
            # What the quota leaves once this copy's own charge is taken back.
            room = None if maximum is None else max(0, maximum - used + (copy.disk_space or 0))
            return copy, original, recipient, room

        loaded = await self.db.run(_load)
        if loaded is None:
            return
        copy, original, recipient, room = loaded
        storage = self.storage
        status, message, path = WorkspaceStatus.IDLE, "", ""
        try:
            account = await self.accounts.get(recipient.username)
            if original is None or not storage.valid_workspace_dir(original.file_path):
                raise OSError("the original workspace is gone")
            path = storage.workspace_dir(account, copy_id)
            background = self.workspaces.to_background_thread
            if storage.valid_workspace_dir(path):
                await background(storage.delete_dir, path)
            path = await background(storage.create_workspace_dir, account, copy_id)
            await background(storage.copy_workspace, original.file_path, path, account, room)
            disk, current = await background(storage.scan, path)
        except Exception as e:
            if isinstance(e, TooLarge):
                log.warning("Shared workspace %s is larger than its recipient's disk quota", copy_id)
                message = "Copy failed: the workspace is larger than the recipient's remaining disk quota."
            else:
                log.exception("Copying shared workspace %s failed", copy_id)
                message = f"Copy failed: {e}"
            status, disk, current = WorkspaceStatus.ERROR, 0, None
            path = await self._discard_partial(path, copy_id)

        def _finish(session: Any) -> None:
            row = session.get(orm.Workspace, copy_id)
            if row is None or row.status != WorkspaceStatus.INITIALIZING:
                return  # cancelled meanwhile
            row.status = status
            row.status_message = message
            if path:
                row.file_path = path
            if current is not None:
                row.current_details = current
            row.disk_space = disk  # a failed copy holds no files, so it is charged nothing

        await self.db.run(_finish)
        self.workspaces.changed(recipient.id, copy_id)
        self.mailer.share_invitation(recipient, copy)

    async def _discard_partial(self, path: str, copy_id: int) -> str:
        """Remove what a failed copy wrote, as the recipient is charged nothing for it; the
        directory path the copy keeps ("" once removed)."""
        storage = self.storage
        if path and storage.valid_workspace_dir(path):
            try:
                await self.workspaces.to_background_thread(storage.delete_dir, path)
                return ""
            except Exception:
                log.exception("Could not clear the failed copy of shared workspace %s", copy_id)
        return path
