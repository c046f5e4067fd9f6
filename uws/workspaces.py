"""Workspace operations: validation, storage work and status transitions.

File system work runs on threads. A create is one transaction around the directory work, so a
failure removes both the row and the directory. Slow work (deletion, share copies) runs in the
background and is driven by the workspace status in the database, so it resumes after a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from typing import Any

from sqlalchemy import and_, delete, exists, select

from . import orm
from .auth.accounts import Account
from .auth.tokens import CurrentUser
from .errors import APIError
from .models import workspace_model
from .sessions.status import ACTIVE, WorkspaceStatus
from .utils import utcnow

log = logging.getLogger("uws.workspaces")

DIR_FAILURE_JOBS = (
    "Please contact a system administrator there is a failure with the workspace directory that "
    "will not allow for jobs to be created."
)
DIR_FAILURE_DELETE = (
    "Please contact a system administrator there is a failure with the workspace directory that "
    "will not allow for this workspace to be deleted."
)
PUT_TYPES = ("start", "upload")
ACTIVE_JOB_STATUSES = ACTIVE  # the old name, for code that still imports it


def check_name_fields(body: dict[str, Any]) -> None:
    if "name" in body:
        if not isinstance(body["name"], str):
            raise APIError(400, "name must be a string.")
        if len(body["name"]) > 256:
            raise APIError(400, "name must be at most 256 characters.")
    if "description" in body and not isinstance(body["description"], str):
        raise APIError(400, "description must be a string.")


def check_stored_sizes(body: dict[str, Any], app: Any) -> None:
    """Descriptions and details are stored as sent and go out again in every listing: capped."""
    limit = app.max_description_length
    if limit and isinstance(body.get("description"), str) and len(body["description"]) > limit:
        raise APIError(400, f"description must be at most {limit} characters.")
    details = body.get("workspace_details")
    if isinstance(details, dict):
        files = details.get("files")
        if isinstance(files, list):
            # File content is written to disk, never stored: only the rest counts.
            stored = [
                {k: v for k, v in f.items() if k != "content"} if isinstance(f, dict) else f for f in files
            ]
            details = {**details, "files": stored}
        check_json_size(details, "workspace_details", app.max_details_bytes)


def check_json_size(value: Any, field: str, limit: int) -> None:
    if not limit:
        return
    try:
        size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace"))
    except (RecursionError, ValueError):
        raise APIError(400, f"{field} is nested too deeply.") from None
    if size > limit:
        raise APIError(400, f"{field} must be at most {limit} bytes of JSON.")


def unaccepted_share_clause() -> Any:
    return exists().where(
        and_(
            orm.SharedWorkspaceMapping.shared_workspace_id == orm.Workspace.id,
            orm.SharedWorkspaceMapping.is_accepted.is_(False),
        )
    )


class WorkspaceService:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.db = app.db
        self.storage = app.storage
        # user id -> list of workspace models in id order (this process owns every write)
        self._cache: dict[int, list[dict[str, Any]]] = {}
        self._cache_bytes: dict[int, bytes] = {}
        self._generation: dict[int, int] = {}
        self.locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._background: set[asyncio.Task[Any]] = set()
        self._pending_events: set[int] = set()
        self._published: dict[int, dict[int, dict[str, Any]]] = {}

    # ---- cache -------------------------------------------------------------------------
    def after_write(self, user_id: int, limited: bool) -> None:
        """Quota warnings (80%, 90%) after anything that added files, for users with a maximum."""
        if limited:
            self.spawn(self.app.quotas.warn_if_near(user_id, self.app.events))

    def invalidate(self, *user_ids: int) -> None:
        """Call after a write has committed. The generation bump keeps a load that began before
        the write from storing what it read."""
        for uid in user_ids:
            self._generation[uid] = self._generation.get(uid, 0) + 1
            self._cache.pop(uid, None)
            self._cache_bytes.pop(uid, None)
            if self.app.events.has_subscribers(uid) and uid not in self._pending_events:
                self._pending_events.add(uid)
                self.spawn(self._publish_changes(uid))

    async def _publish_changes(self, user_id: int) -> None:
        """Workspace events for whoever is listening: what changed since the last publication."""
        await asyncio.sleep(0)  # coalesce the invalidations of one operation
        self._pending_events.discard(user_id)
        models = {m["id"]: m for m in await self.models_for(user_id)}
        before = self._published.get(user_id)
        self._published[user_id] = models
        if before is None:
            before = {}
        for ws_id, model in models.items():
            if before.get(ws_id) != model:
                self.app.events.publish(user_id, "workspace", model)
        for ws_id in before.keys() - models.keys():
            self.app.events.publish(user_id, "workspace_deleted", {"id": ws_id})

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
        return await self.app.accounts.get(username)

    def check_job_type(self, value: Any) -> None:
        if value and (not isinstance(value, str) or value not in self.app.job_types):
            raise APIError(400, f"{value} is not in the list of available job types.")

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
            raise APIError(404, f"Workspace {ws_id} not found for user.")
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
        return await asyncio.get_running_loop().run_in_executor(self.app.fs_executor, fn, *args)

    async def to_background_thread(self, fn: Any, *args: Any) -> Any:
        """For work that may take long (copies, deletions), so it never delays requests."""
        return await asyncio.get_running_loop().run_in_executor(self.app.background_fs_executor, fn, *args)

    # ---- create ----------------------------------------------------------------------------
    async def create(self, user: CurrentUser, body: dict[str, Any]) -> dict[str, Any]:
        if "name" not in body or "description" not in body:
            raise APIError(400, "Missing required fields.")
        check_name_fields(body)
        check_stored_sizes(body, self.app)
        default_job_type = body.get("default_job_type")
        self.check_job_type(default_job_type)
        details = body.get("workspace_details", {})
        if not isinstance(details, dict):
            raise APIError(400, "Workspace details not JSON.")
        account = await self.account(user.username)
        if not account.username.strip():
            raise APIError(500, "Please report this error to your system administrator and try again.")
        plan = await self.to_thread(self.storage.plan, account, details, None)
        limited = await self.app.quotas.check_disk_write(user.id, sum(len(f.content) for f in plan.files))
        storage = self.storage

        def _build() -> tuple[str, int, dict[str, Any]]:
            staging = storage.create_staging_dir(account)
            try:
                storage.apply(account, staging, plan)
                disk, current = storage.scan(staging)
            except BaseException:
                storage.remove_staging_dir(staging)
                raise
            return staging, disk, current

        # The directory is built first, outside any transaction, so the write lock is held only
        # for the insert and a rename.
        staging, disk, current = await self.to_thread(_build)

        adopted: list[str] = []

        def _create(session: Any) -> orm.Workspace:
            ws = orm.Workspace(
                user_id=user.id,
                name=body["name"],
                description=body["description"],
                default_job_type=default_job_type if isinstance(default_job_type, str) else None,
                status=WorkspaceStatus.IDLE,
                request_details={"files": plan.request_files, "symlinks": plan.request_symlinks},
                current_details=current,
                disk_space=disk,
            )
            session.add(ws)
            session.flush()
            ws.file_path = storage.adopt_staging_dir(staging, account, ws.id)
            adopted.append(ws.file_path)
            return ws  # flushed by the commit; the model is built after it, outside the write lock

        try:
            model = workspace_model(await self.db.run(_create))
            self.after_write(user.id, limited)
        except BaseException:
            # Nothing is left behind: the row was rolled back; remove the directory wherever it is.
            await self.to_thread(storage.remove_staging_dir, staging)
            for path in adopted:
                await self.to_thread(storage.delete_dir, path)
            raise
        finally:
            self.invalidate(user.id)
        return model

    # ---- update ----------------------------------------------------------------------------
    async def update(self, user: CurrentUser, ws_id: int, body_bytes: bytes, parse: Any) -> None:
        account, ws = await self.owned_for_put(user, ws_id, None)
        body = parse()
        check_name_fields(body)
        check_stored_sizes(body, self.app)
        if "default_job_type" in body:
            self.check_job_type(body["default_job_type"])
        details = body.get("workspace_details", {})
        if not isinstance(details, dict):
            raise APIError(400, "Workspace details not JSON.")
        if not self.storage.valid_workspace_dir(ws.file_path):
            raise APIError(500, DIR_FAILURE_JOBS)
        async with self.locks[ws_id]:
            plan = await self.to_thread(self.storage.plan, account, details, ws.file_path)
            limited = await self.app.quotas.check_disk_write(user.id, sum(len(f.content) for f in plan.files))
            if plan.files or plan.symlinks:
                await self.to_thread(self.storage.apply, account, ws.file_path, plan)
            disk, current = await self.to_thread(self.storage.scan, ws.file_path)

            def _save(session: Any) -> None:
                row = session.get(orm.Workspace, ws_id)
                if row is None:
                    return
                if "name" in body:
                    row.name = body["name"]
                if "description" in body:
                    row.description = body["description"]
                if "default_job_type" in body:
                    value = body["default_job_type"]
                    row.default_job_type = value if isinstance(value, str) else None
                row.request_details = merge_request_details(row.request_details, plan)
                row.current_details = current
                row.disk_space = disk
                row.datetime_last_modified = utcnow()

            try:
                await self.db.run(_save)
                self.after_write(user.id, limited)
            finally:
                self.invalidate(user.id)

    # ---- upload ----------------------------------------------------------------------------
    async def upload(self, user: CurrentUser, ws_id: int, uploads: list[tuple[str, bytes]]) -> None:
        account, ws = await self.owned_for_put(user, ws_id, "upload")
        if not uploads:
            raise APIError(400, "No files found in request.")
        if not self.storage.valid_workspace_dir(ws.file_path):
            raise APIError(500, DIR_FAILURE_JOBS)
        limit = self.storage.max_upload_bytes
        total = sum(len(b) for _, b in uploads)
        if limit and total > limit:
            raise APIError(413, "Request body too large.")
        async with self.locks[ws_id]:
            await self.to_thread(self.storage.validate_uploads, ws.file_path, [n for n, _ in uploads])
            limited = await self.app.quotas.check_disk_write(user.id, total)
            await self.to_thread(self.storage.save_uploads, account, ws.file_path, uploads)
            try:
                await self.rescan(ws_id, user.id, modified=True)
                self.after_write(user.id, limited)
            finally:
                self.invalidate(user.id)

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
            raise APIError(404, f"Workspace {ws_id} not found for user.")
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
        self.invalidate(user.id)
        if queued:
            self.spawn(self.run_deletion(ws_id))

    async def set_status(self, ws_id: int, user_id: int, status: str, message: str = "") -> None:
        def _set(session: Any) -> None:
            row = session.get(orm.Workspace, ws_id)
            if row is not None:
                row.status = status
                row.status_message = message

        await self.db.run(_set)
        self.invalidate(user_id)

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
        self.invalidate(ws.user_id)

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
        self.invalidate(user_id)

    async def resume(self) -> None:
        """Pick up background work a previous run left unfinished (B9)."""
        deleting = await self.db.run(
            lambda s: list(
                s.scalars(select(orm.Workspace.id).where(orm.Workspace.status == WorkspaceStatus.DELETING))
            )
        )
        for ws_id in deleting:
            self.spawn(self.run_deletion(ws_id))
        await self.app.shares.resume()

    async def drain(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


def merge_request_details(existing: dict[str, Any] | None, plan: Any) -> dict[str, Any]:
    """Append new entries; an entry with the same name replaces the earlier one (2.2)."""
    existing = existing or {}

    def merge(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
        names = {e["name"] for e in new}
        return [e for e in old if e.get("name") not in names] + new

    return {
        "files": merge(list(existing.get("files", [])), plan.request_files),
        "symlinks": merge(list(existing.get("symlinks", [])), plan.request_symlinks),
    }
