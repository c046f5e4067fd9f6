"""Workspaces: the listing (cached per user, with its events), the checks every request shares,
deletion and status transitions. The requests that write files are in uws.workspace_writes, those
that read them (listings, downloads) in uws.workspace_files.

File system work runs on threads. Slow work (deletion, share copies) runs in the background and
is driven by the workspace status in the database, so it resumes after a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, delete, exists, select

from . import orm
from .auth.accounts import Account
from .auth.tokens import CurrentUser
from .errors import DIR_FAILURE_DELETE, APIError, not_found_for_user
from .models import workspace_model
from .sessions.status import ACTIVE, WorkspaceStatus
from .utils import utcnow
from .workspace_files import WorkspaceFiles
from .workspace_writes import WorkspaceWrites, WriteRules

if TYPE_CHECKING:
    from .auth.accounts import AccountCache
    from .db import Database
    from .events import EventBus
    from .quotas import QuotaService
    from .shares import ShareService
    from .storage.local import LocalFileSystemStorage

log = logging.getLogger("uws.workspaces")

PUT_TYPES = ("start", "upload")
ACTIVE_JOB_STATUSES = ACTIVE  # the old name, for code that still imports it


def unaccepted_share_clause() -> Any:
    return exists().where(
        and_(
            orm.SharedWorkspaceMapping.shared_workspace_id == orm.Workspace.id,
            orm.SharedWorkspaceMapping.is_accepted.is_(False),
        )
    )


# What _publish remembers of a workspace whose deletion it has announced (hash() is never -1).
DELETED = -1


class WorkspaceService:
    # Set by UWSApp.init_services once built: the account cache runs its work on this service's tasks.
    accounts: AccountCache
    # Set by UWSApp.init_services once built: shares are built from this service.
    shares: ShareService

    def __init__(
        self,
        db: Database,
        storage: LocalFileSystemStorage,
        events: EventBus,
        quotas: QuotaService,
        rules: WriteRules,
        fs_executor: Executor,
        background_fs_executor: Executor,
    ) -> None:
        self.db = db
        self.storage = storage
        self.events = events
        # Threads for the file work requests wait on; the background ones for copies and deletions.
        self.fs_executor = fs_executor
        self.background_fs_executor = background_fs_executor
        # user id -> list of workspace models in id order (this process sees every write while it
        # serves alone; see forget_cache)
        self._cache: dict[int, list[dict[str, Any]]] = {}
        self._cache_bytes: dict[int, bytes] = {}
        self._generation: dict[int, int] = {}
        self._background: set[asyncio.Task[Any]] = set()
        # user id -> workspaces changed, to publish at the end of the current operation
        self._pending_events: dict[int, set[int]] = {}
        # user id -> workspace id -> digest of the model this process published last
        self._published: dict[int, dict[int, int]] = {}
        self.writes = WorkspaceWrites(self, quotas, rules)
        self.files = WorkspaceFiles(self)

    # ---- cache and events -------------------------------------------------------------------
    def invalidate(self, *user_ids: int) -> None:
        """Call after a write has committed. The generation bump keeps a load that began before
        the write from storing what it read. Changes a user can see go through `changed`."""
        for uid in user_ids:
            self._generation[uid] = self._generation.get(uid, 0) + 1
            self._cache.pop(uid, None)
            self._cache_bytes.pop(uid, None)

    def changed(self, user_id: int, *ws_ids: int) -> None:
        """Call after a write to these workspaces of the user has committed: the cached listing
        goes, and each one's state goes out as an event, whether anyone listens now or not (a
        client resuming /ws/events later, on any process, reads it from the events table).
        The changes of one operation are published together, each workspace once."""
        self.invalidate(user_id)
        pending = self._pending_events.get(user_id)
        if pending is None:
            pending = self._pending_events[user_id] = set()
            self.spawn(self._publish_changes(user_id))
        pending.update(ws_ids)

    def created(self, user_id: int, model: dict[str, Any]) -> None:
        """As `changed`, for a workspace whose model the caller has just built."""
        self.invalidate(user_id)
        self._publish(user_id, model["id"], model)

    def forget_cached(self) -> None:
        """Drop every cached listing, and what was last announced. This process owns every
        write only while it leads (uws.leadership): another server may have written since."""
        self._generation = {uid: n + 1 for uid, n in self._generation.items()}
        self._cache.clear()
        self._cache_bytes.clear()
        # What this process last announced may not be last any more: another leader announced
        # since. A workspace back at what this one announced must be announced again.
        self._published.clear()

    async def _publish_changes(self, user_id: int) -> None:
        await asyncio.sleep(0)  # coalesce the changes of one operation
        ws_ids = sorted(self._pending_events.pop(user_id, ()))
        if not ws_ids:
            return

        def _load(session: Any) -> tuple[dict[int, dict[str, Any]], set[int]]:
            rows = session.scalars(
                select(orm.Workspace).where(orm.Workspace.id.in_(ws_ids), orm.Workspace.user_id == user_id)
            ).all()
            hidden = set(
                session.scalars(
                    select(orm.SharedWorkspaceMapping.shared_workspace_id).where(
                        orm.SharedWorkspaceMapping.shared_workspace_id.in_(ws_ids),
                        orm.SharedWorkspaceMapping.is_accepted.is_(False),
                    )
                )
            )
            return {ws.id: workspace_model(ws) for ws in rows if ws.id not in hidden}, {ws.id for ws in rows}

        models, present = await self.db.run(_load)
        for ws_id in ws_ids:
            if ws_id in models:
                self._publish(user_id, ws_id, models[ws_id])
            elif ws_id not in present:
                self._publish(user_id, ws_id, None)
            # (an unaccepted share is in no listing yet: nothing to tell)

    def _publish(self, user_id: int, ws_id: int, model: dict[str, Any] | None) -> None:
        """A workspace's event (None: it is gone), unless this process published the same thing
        last (a client that resumes elsewhere may get one such repeat, with a new id)."""
        published = self._published.setdefault(user_id, {})
        if model is None:
            # Once: the deletion's own change and any later one (a rescan, a quota update) that
            # finds the row gone would otherwise each announce it.
            if published.get(ws_id) != DELETED:
                published[ws_id] = DELETED
                self.events.publish(user_id, "workspace_deleted", {"id": ws_id})
            return
        digest = hash(json.dumps(model, sort_keys=True))
        if published.get(ws_id) != digest:
            published[ws_id] = digest
            self.events.publish(user_id, "workspace", model)

    async def models_for(self, user_id: int) -> list[dict[str, Any]]:
        cached = self._cache.get(user_id)
        if cached is not None:
            return cached

        def _load(session: Any) -> list[dict[str, Any]]:
            rows = session.scalars(
                select(orm.Workspace)
                .where(orm.Workspace.user_id == user_id, ~unaccepted_share_clause())
                .order_by(orm.Workspace.id)
            ).all()
            return [workspace_model(ws) for ws in rows]

        generation = self._generation.get(user_id, 0)
        models = await self.db.run(_load)
        if self._generation.get(user_id, 0) == generation:
            self._cache[user_id] = models
        return models

    async def list_response(self, user_id: int, ws_id: int | None, filters: dict[str, str]) -> bytes:
        """The whole GET /workspaces/ answer; the unfiltered one is kept serialised."""
        if ws_id is None and not filters:
            cached = self._cache_bytes.get(user_id)
            if cached is not None and user_id in self._cache:
                return cached
        generation = self._generation.get(user_id, 0)
        models = await self.models_for(user_id)
        if ws_id is not None:
            selected = [m for m in models if m["id"] == ws_id]
        else:
            selected = [m for m in models if all(m[k] == v for k, v in filters.items())]
        message = "Successful." if selected else "Workspace matching given parameters could not be found."
        body = json.dumps({"message": message, "success": True, "data": {"workspaces": selected}}).encode()
        if ws_id is None and not filters and self._generation.get(user_id, 0) == generation:
            self._cache_bytes[user_id] = body
        return body

    # ---- shared checks -------------------------------------------------------------------
    async def account(self, username: str) -> Account:
        return await self.accounts.get(username)

    async def owned_for_put(
        self, user: CurrentUser, ws_id: int, put_type: str | None
    ) -> tuple[Account, orm.Workspace]:
        """The checks common to every workspace PUT, in the contract's order (2.4 a-f)."""
        account = await self.account(user.username)

        def _get(session: Any) -> tuple[orm.Workspace | None, bool]:
            ws = session.get(orm.Workspace, ws_id)
            if ws is None or ws.user_id != user.id:
                return None, False
            pending_share = session.scalar(
                select(orm.SharedWorkspaceMapping.id).where(
                    orm.SharedWorkspaceMapping.shared_workspace_id == ws_id,
                    orm.SharedWorkspaceMapping.is_accepted.is_(False),
                )
            )
            return ws, pending_share is not None

        ws, unaccepted = await self.db.run(_get)
        if ws is None:
            raise not_found_for_user(f"Workspace {ws_id} not found for user.")
        if unaccepted:
            raise APIError(400, f"Workspace {ws_id} is a shared workspace and has not been accepted.")
        if put_type is not None and put_type.lower() not in PUT_TYPES:
            raise APIError(400, "Invalid PUT type passed.")
        if ws.status == WorkspaceStatus.DELETING:
            raise APIError(400, f"Workspace {ws_id} is being deleted.")
        if ws.status == WorkspaceStatus.INITIALIZING:
            raise APIError(400, f"Workspace {ws_id} is still initializing.")
        return account, ws

    async def to_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.fs_executor, fn, *args)

    async def to_background_thread(self, fn: Any, *args: Any) -> Any:
        """For work that may take long (copies, deletions), so it never delays requests."""
        return await asyncio.get_running_loop().run_in_executor(self.background_fs_executor, fn, *args)

    # ---- delete ----------------------------------------------------------------------------
    async def delete(self, user: CurrentUser, ws_id: int) -> None:
        def _check(session: Any) -> tuple[orm.Workspace | None, bool, bool, bool]:
            ws = session.get(orm.Workspace, ws_id)
            if ws is None or ws.user_id != user.id:
                return None, False, False, False
            incoming = session.scalar(
                select(orm.SharedWorkspaceMapping.id).where(
                    orm.SharedWorkspaceMapping.shared_workspace_id == ws_id,
                    orm.SharedWorkspaceMapping.is_accepted.is_(False),
                )
            )
            outgoing = session.scalar(
                select(orm.SharedWorkspaceMapping.id).where(
                    orm.SharedWorkspaceMapping.original_workspace_id == ws_id,
                    orm.SharedWorkspaceMapping.is_accepted.is_(False),
                )
            )
            active = session.scalar(
                select(orm.Job.id).where(orm.Job.workspace_id == ws_id, orm.Job.status.in_(ACTIVE))
            )
            return ws, incoming is not None, outgoing is not None, active is not None

        ws, incoming, outgoing, active = await self.db.run(_check)
        if ws is None:
            raise not_found_for_user(f"Workspace {ws_id} not found for user.")
        if ws.status == WorkspaceStatus.DELETING:
            return
        if incoming:
            raise APIError(400, f"Workspace {ws_id} is a shared workspace and has not been accepted.")
        if outgoing:
            raise APIError(
                400,
                f"Workspace {ws_id} has shared workspaces associated with it, that have not yet "
                "been accepted. Please cancel those shares to delete this workspace.",
            )
        if active:
            raise APIError(400, "Cannot delete workspace, jobs are running for this workspace.")
        await self.account(user.username)
        if ws.file_path and not self.storage.valid_workspace_dir(ws.file_path):
            await self.set_status(ws_id, user.id, WorkspaceStatus.ERROR, "Invalid workspace directory.")
            raise APIError(500, DIR_FAILURE_DELETE)

        def _mark(session: Any) -> bool:
            row = session.get(orm.Workspace, ws_id, with_for_update=True)
            if row is None or row.status == WorkspaceStatus.DELETING:
                return False
            row.status = WorkspaceStatus.DELETING
            return True

        queued = await self.db.run(_mark)
        self.changed(user.id, ws_id)
        if queued:
            self.spawn(self.run_deletion(ws_id))

    async def set_status(self, ws_id: int, user_id: int, status: str, message: str = "") -> None:
        def _set(session: Any) -> None:
            row = session.get(orm.Workspace, ws_id)
            if row is not None:
                row.status = status
                row.status_message = message

        await self.db.run(_set)
        self.changed(user_id, ws_id)

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def run_deletion(self, ws_id: int) -> None:
        ws = await self.db.run(lambda s: s.get(orm.Workspace, ws_id))
        if ws is None:
            return
        try:
            if ws.file_path:
                await self.to_background_thread(self.storage.delete_dir, ws.file_path)
        except Exception as e:
            log.exception("Deleting workspace %s failed", ws_id)
            await self.set_status(ws_id, ws.user_id, WorkspaceStatus.ERROR, f"Deletion failed: {e}")
            return

        def _remove(session: Any) -> None:
            session.execute(delete(orm.Workspace).where(orm.Workspace.id == ws_id))

        await self.db.run(_remove)
        self.changed(ws.user_id, ws_id)

    async def rescan(self, ws_id: int, user_id: int, modified: bool = False) -> None:
        """Refresh disk use and file lists (after an upload, or a job's end)."""
        path = await self.db.run(lambda s: (row := s.get(orm.Workspace, ws_id)) and row.file_path)
        if not path or not self.storage.valid_workspace_dir(path):
            return
        disk, current = await self.to_thread(self.storage.scan, path)

        def _save(session: Any) -> None:
            row = session.get(orm.Workspace, ws_id)
            if row is not None:
                row.disk_space = disk
                row.current_details = current
                if modified:
                    row.datetime_last_modified = utcnow()

        await self.db.run(_save)
        self.changed(user_id, ws_id)

    async def resume(self) -> None:
        """Pick up background work a previous run left unfinished (B9)."""
        deleting = await self.db.run(
            lambda s: list(
                s.scalars(select(orm.Workspace.id).where(orm.Workspace.status == WorkspaceStatus.DELETING))
            )
        )
        for ws_id in deleting:
            self.spawn(self.run_deletion(ws_id))
        await self.shares.resume()

    async def drain(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
