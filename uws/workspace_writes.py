"""The requests that write a workspace's files: create, update and upload.

A create builds the directory aside and adopts it in one transaction with the row, so a failure
removes both. Each write checks the disk quota first and refreshes the listing after.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import orm
from .auth.tokens import CurrentUser
from .errors import DIR_FAILURE_JOBS, APIError
from .models import workspace_model
from .sessions.status import WorkspaceStatus
from .utils import utcnow

if TYPE_CHECKING:
    from .quotas import QuotaService
    from .workspaces import WorkspaceService


@dataclass(frozen=True)
class WriteRules:
    """UWSApp's options that writes are checked against: the job types a workspace may default
    to, and the caps on what it stores (max_description_length, max_details_bytes; 0: no limit)."""

    job_types: dict[str, Any]
    max_description_length: int
    max_details_bytes: int


def check_name_fields(body: dict[str, Any]) -> None:
    if "name" in body:
        if not isinstance(body["name"], str):
            raise APIError(400, "name must be a string.")
        if len(body["name"]) > 256:
            raise APIError(400, "name must be at most 256 characters.")
    if "description" in body and not isinstance(body["description"], str):
        raise APIError(400, "description must be a string.")


def check_stored_sizes(body: dict[str, Any], max_description_length: int, max_details_bytes: int) -> None:
    """Descriptions and details are stored as sent and go out again in every listing: capped."""
    limit = max_description_length
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
        check_json_size(details, "workspace_details", max_details_bytes)


def check_json_size(value: Any, field: str, limit: int) -> None:
    if not limit:
        return
    try:
        size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace"))
    except (RecursionError, ValueError):
        raise APIError(400, f"{field} is nested too deeply.") from None
    if size > limit:
        raise APIError(400, f"{field} must be at most {limit} bytes of JSON.")


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


class WorkspaceWrites:
    def __init__(self, workspaces: WorkspaceService, quotas: QuotaService, rules: WriteRules) -> None:
        self.workspaces = workspaces
        self.quotas = quotas
        self.rules = rules
        self.db = workspaces.db
        self.storage = workspaces.storage
        # One write at a time per workspace, so that what each checked still holds when it writes.
        self.locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)

    def after_write(self, user_id: int, limited: bool) -> None:
        """Quota warnings (80%, 90%) after anything that added files, for users with a maximum."""
        if limited:
            self.workspaces.spawn(self.quotas.warn_if_near(user_id, self.workspaces.events))

    def check_job_type(self, value: Any) -> None:
        if value and (not isinstance(value, str) or value not in self.rules.job_types):
            raise APIError(400, f"{value} is not in the list of available job types.")

    def check_stored_sizes(self, body: dict[str, Any]) -> None:
        check_stored_sizes(body, self.rules.max_description_length, self.rules.max_details_bytes)

    # ---- create ----------------------------------------------------------------------------
    async def create(self, user: CurrentUser, body: dict[str, Any]) -> dict[str, Any]:
        if "name" not in body or "description" not in body:
            raise APIError(400, "Missing required fields.")
        check_name_fields(body)
        self.check_stored_sizes(body)
        default_job_type = body.get("default_job_type")
        self.check_job_type(default_job_type)
        details = body.get("workspace_details", {})
        if not isinstance(details, dict):
            raise APIError(400, "Workspace details not JSON.")
        account = await self.workspaces.account(user.username)
        if not account.username.strip():
            raise APIError(500, "Please report this error to your system administrator and try again.")
        plan = await self.workspaces.to_thread(self.storage.plan, account, details, None)
        limited = await self.quotas.check_disk_write(user.id, sum(len(f.content) for f in plan.files))
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
        staging, disk, current = await self.workspaces.to_thread(_build)

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
            self.workspaces.created(user.id, model)
            self.after_write(user.id, limited)
        except BaseException:
            # Nothing is left behind: the row was rolled back; remove the directory wherever it is.
            await self.workspaces.to_thread(storage.remove_staging_dir, staging)
            for path in adopted:
                await self.workspaces.to_thread(storage.delete_dir, path)
            raise
        finally:
            self.workspaces.invalidate(user.id)
        return model

    # ---- update ----------------------------------------------------------------------------
    async def update(self, user: CurrentUser, ws_id: int, body_bytes: bytes, parse: Any) -> None:
        account, ws = await self.workspaces.owned_for_put(user, ws_id, None)
        body = parse()
        check_name_fields(body)
        self.check_stored_sizes(body)
        if "default_job_type" in body:
            self.check_job_type(body["default_job_type"])
        details = body.get("workspace_details", {})
        if not isinstance(details, dict):
            raise APIError(400, "Workspace details not JSON.")
        if not self.storage.valid_workspace_dir(ws.file_path):
            raise APIError(500, DIR_FAILURE_JOBS)
        async with self.locks[ws_id]:
            plan = await self.workspaces.to_thread(self.storage.plan, account, details, ws.file_path)
            limited = await self.quotas.check_disk_write(user.id, sum(len(f.content) for f in plan.files))
            if plan.files or plan.symlinks:
                await self.workspaces.to_thread(self.storage.apply, account, ws.file_path, plan)
            disk, current = await self.workspaces.to_thread(self.storage.scan, ws.file_path)

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
                self.workspaces.changed(user.id, ws_id)

    # ---- upload ----------------------------------------------------------------------------
    async def upload(
        self, user: CurrentUser, ws_id: int, uploads: list[tuple[str, bytes]], path: str = ""
    ) -> None:
        """The files into the folder `path` of the workspace ("" for its top)."""
        account, ws = await self.workspaces.owned_for_put(user, ws_id, "upload")
        folder = self.workspaces.files.request_parts(path)
        if not uploads:
            raise APIError(400, "No files found in request.")
        if not self.storage.valid_workspace_dir(ws.file_path):
            raise APIError(500, DIR_FAILURE_JOBS)
        limit = self.storage.max_upload_bytes
        total = sum(len(b) for _, b in uploads)
        if limit and total > limit:
            raise APIError(413, "Request body too large.")
        async with self.locks[ws_id]:
            await self.workspaces.to_thread(
                self.storage.validate_uploads, ws.file_path, [n for n, _ in uploads], folder
            )
            limited = await self.quotas.check_disk_write(user.id, total)
            await self.workspaces.to_thread(self.storage.save_uploads, account, ws.file_path, uploads, folder)
            try:
                await self.workspaces.rescan(ws_id, user.id, modified=True)
                self.after_write(user.id, limited)
            finally:
                self.workspaces.changed(user.id, ws_id)
