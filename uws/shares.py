"""Shared workspaces: a share is a copy of the sharer's workspace owned by the recipient. The
requests (list, create, accept, delete) are here; the copying is in uws.share_copies."""

from __future__ import annotations

import builtins
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import aliased

from . import orm
from .auth.tokens import CurrentUser
from .errors import DIR_FAILURE_DELETE, APIError, not_found_for_user
from .models import share_model
from .quotas import check_disk, disk_limit
from .sessions.status import WorkspaceStatus
from .share_copies import ShareCopies
from .utils import utcnow

if TYPE_CHECKING:
    from .auth.accounts import AccountCache
    from .db import Database
    from .mail import Mailer
    from .storage.local import LocalFileSystemStorage
    from .workspaces import WorkspaceService

log = logging.getLogger("uws.shares")


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _record_shares(
    session: Any, ws_id: int, recipients: list[orm.User], size: int
) -> tuple[list[dict[str, Any]], list[int]]:
    """The copies' workspaces (initializing) and share mappings; the share models and the copies' ids."""
    # Each copy is charged to its recipient now, before any byte is copied, so shares
    # made meanwhile see it; the copy itself stops at what the quota leaves.
    for recipient in recipients:
        maximum, used = disk_limit(session, recipient.id, lock=True)
        whose = f"of user {recipient.first_name} {recipient.last_name} "
        check_disk(maximum, used, size, whose)
    last_job = session.scalar(
        select(orm.Job).where(orm.Job.workspace_id == ws_id).order_by(orm.Job.id.desc()).limit(1)
    )
    options: dict[str, Any] = {}
    job_type = ""
    if last_job is not None:
        job_type = last_job.job_type
        request = (last_job.job_details or {}).get("request_job_details", {})
        options = dict(request.get("resource_options", {}) or {})
    orig = session.get(orm.Workspace, ws_id)
    orig_owner = session.get(orm.User, orig.user_id)
    models, copy_ids = [], []
    for recipient in recipients:
        copy = orm.Workspace(
            user_id=recipient.id,
            name=orig.name,
            description=orig.description,
            default_job_type=orig.default_job_type,
            request_details=orig.request_details,
            current_details=orig.current_details,
            status=WorkspaceStatus.INITIALIZING,
            disk_space=size,
        )
        session.add(copy)
        session.flush()
        mapping = orm.SharedWorkspaceMapping(
            original_workspace_id=orig.id,
            shared_workspace_id=copy.id,
            last_resource_options=options,
            last_job_type=job_type,
            is_accepted=False,
        )
        session.add(mapping)
        session.flush()
        copy_owner = session.get(orm.User, recipient.id)
        models.append(share_model(mapping, (orig, orig_owner), (copy, copy_owner)))
        copy_ids.append(copy.id)
    return models, copy_ids


class ShareService:
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
        self.copies = ShareCopies(db, storage, workspaces, accounts, mailer)

    # ---- read ------------------------------------------------------------------------------
    async def list(self, user: CurrentUser, ws_id: int | None, is_accepted: bool | None) -> dict[str, Any]:
        def _list(session: Any) -> dict[str, Any]:
            orig_ws = aliased(orm.Workspace)
            copy_ws = aliased(orm.Workspace)
            query = (
                select(orm.SharedWorkspaceMapping, copy_ws, orig_ws)
                .join(copy_ws, copy_ws.id == orm.SharedWorkspaceMapping.shared_workspace_id)
                .outerjoin(orig_ws, orig_ws.id == orm.SharedWorkspaceMapping.original_workspace_id)
                .where(or_(copy_ws.user_id == user.id, orig_ws.user_id == user.id))
                .order_by(orm.SharedWorkspaceMapping.id)
            )
            if ws_id is not None:
                query = query.where(orm.SharedWorkspaceMapping.shared_workspace_id == ws_id)
            elif is_accepted is not None:
                query = query.where(orm.SharedWorkspaceMapping.is_accepted.is_(is_accepted))
            rows = session.execute(query).all()
            users: dict[int, orm.User] = {}

            def owner(ws: orm.Workspace) -> orm.User:
                if ws.user_id not in users:
                    users[ws.user_id] = session.get(orm.User, ws.user_id)
                return users[ws.user_id]

            sent, received = [], []
            for mapping, copy, original in rows:
                model = share_model(
                    mapping,
                    (original, owner(original)) if original is not None else None,
                    (copy, owner(copy)),
                )
                if original is not None and original.user_id == user.id:
                    sent.append(model)
                if copy.user_id == user.id:
                    received.append(model)
            return {"original_workspaces": sent, "shared_workspaces": received}

        return await self.db.run(_list)

    # ---- create ----------------------------------------------------------------------------
    async def create(self, user: CurrentUser, body: dict[str, Any]) -> builtins.list[dict[str, Any]]:
        """Share a workspace: one copy per recipient, charged now and filled in the background."""
        if "original_workspace_id" not in body or "shared_user_ids" not in body:
            raise APIError(400, "Missing required fields.")
        original = await self._shareable_original(user, body["original_workspace_id"])
        recipients = await self._recipients(user, body["shared_user_ids"])
        await self._check_can_receive(original.id, recipients)
        size = await self.copies.size(original)
        models, copy_ids = await self.db.run(
            lambda session: _record_shares(session, original.id, recipients, size)
        )
        self.workspaces.invalidate(user.id, *(recipient.id for recipient in recipients))
        for copy_id in copy_ids:
            self.copies.start(copy_id)
        return models

    async def _shareable_original(self, user: CurrentUser, raw_id: Any) -> orm.Workspace:
        ws_id = _as_int(raw_id)

        def _original(session: Any) -> tuple[orm.Workspace | None, bool]:
            if ws_id is None:
                return None, False
            ws = session.get(orm.Workspace, ws_id)
            if ws is None or ws.user_id != user.id:
                return None, False
            pending = session.scalar(
                select(orm.SharedWorkspaceMapping.id).where(
                    orm.SharedWorkspaceMapping.shared_workspace_id == ws_id,
                    orm.SharedWorkspaceMapping.is_accepted.is_(False),
                )
            )
            return ws, pending is not None

        original, unaccepted = await self.db.run(_original)
        if original is None:
            raise not_found_for_user(f"Workspace {raw_id} not found for user.")
        if unaccepted:
            raise APIError(400, f"Workspace {ws_id} is a shared workspace and has not been accepted.")
        if original.status == WorkspaceStatus.DELETING:
            raise APIError(400, f"Workspace {ws_id} is being deleted.")
        if original.status == WorkspaceStatus.INITIALIZING:
            raise APIError(400, f"Workspace {ws_id} is still initializing.")
        return original

    async def _recipients(self, user: CurrentUser, ids: Any) -> builtins.list[orm.User]:
        """The active users named by shared_user_ids, in their order."""
        if not isinstance(ids, list):
            raise APIError(400, "shared_user_ids is not a list.")
        user_ids = [_as_int(i) for i in ids]
        if any(i is None for i in user_ids) or len(set(user_ids)) != len(user_ids):
            raise APIError(400, "Invalid user id provided.")
        cap = self.storage.max_share_recipients
        if len(user_ids) > cap:
            raise APIError(400, f"A workspace can be shared with at most {cap} users at once.")

        def _recipients(session: Any) -> builtins.list[orm.User] | None:
            found = []
            for uid in user_ids:
                row = session.get(orm.User, uid)
                if row is None or not row.is_active:
                    return None
                found.append(row)
            return found

        recipients = await self.db.run(_recipients)
        if recipients is None:
            raise APIError(400, "Invalid user id provided.")
        if user.id in user_ids:
            raise APIError(400, "Cannot share a workspace with yourself.")
        return recipients

    async def _check_can_receive(self, ws_id: int, recipients: builtins.list[orm.User]) -> None:
        """No recipient has a pending share of this workspace, and each has a file-system account."""
        user_ids = [recipient.id for recipient in recipients]

        def _duplicates(session: Any) -> int | None:
            return session.scalar(
                select(orm.Workspace.user_id)
                .join(
                    orm.SharedWorkspaceMapping,
                    orm.SharedWorkspaceMapping.shared_workspace_id == orm.Workspace.id,
                )
                .where(
                    orm.SharedWorkspaceMapping.original_workspace_id == ws_id,
                    orm.SharedWorkspaceMapping.is_accepted.is_(False),
                    orm.Workspace.user_id.in_(user_ids),
                )
            )

        duplicate = await self.db.run(_duplicates)
        if duplicate is not None:
            raise APIError(400, f"Workspace {ws_id} already has a pending share for user {duplicate}.")
        for recipient in recipients:
            try:
                await self.accounts.get(recipient.username)
            except APIError:
                raise APIError(
                    400,
                    f"User {recipient.first_name} {recipient.last_name} does not have permission on the file system.",
                ) from None

    # ---- accept / delete -------------------------------------------------------------------
    async def accept(self, user: CurrentUser, copy_id: int, put_type: str) -> None:
        def _accept(session: Any) -> str:
            mapping = session.scalar(
                select(orm.SharedWorkspaceMapping).where(
                    orm.SharedWorkspaceMapping.shared_workspace_id == copy_id
                )
            )
            copy = session.get(orm.Workspace, copy_id)
            if mapping is None or copy is None or copy.user_id != user.id:
                return "missing"
            if put_type.lower() != "accept":
                return "bad put"
            if not mapping.is_accepted:
                mapping.is_accepted = True
                copy.datetime_created = utcnow()
            return "ok"

        result = await self.db.run(_accept)
        if result == "missing":
            raise not_found_for_user(f"Shared workspace {copy_id} not found.")
        if result == "bad put":
            raise APIError(400, "Invalid PUT type passed.")
        self.workspaces.changed(user.id, copy_id)

    async def delete(self, user: CurrentUser, copy_id: int) -> None:
        def _load(session: Any) -> tuple[Any, ...] | None:
            mapping = session.scalar(
                select(orm.SharedWorkspaceMapping).where(
                    orm.SharedWorkspaceMapping.shared_workspace_id == copy_id
                )
            )
            copy = session.get(orm.Workspace, copy_id)
            if mapping is None or copy is None:
                return None
            original = (
                session.get(orm.Workspace, mapping.original_workspace_id)
                if mapping.original_workspace_id
                else None
            )
            copy_owner = session.get(orm.User, copy.user_id)
            return mapping, copy, original, copy_owner

        loaded = await self.db.run(_load)
        if loaded is None:
            raise not_found_for_user(f"Shared workspace {copy_id} not found.")
        mapping, copy, original, copy_owner = loaded
        if copy.user_id != user.id and (original is None or original.user_id != user.id):
            raise APIError(403, f"User does not have permissions for shared workspace {copy_id}.")
        if mapping.is_accepted:
            raise APIError(400, f"Shared workspace {copy_id} has been accepted and cannot be deleted.")
        await self.accounts.get(copy_owner.username)
        storage = self.storage
        untouched = copy.status == WorkspaceStatus.INITIALIZING or not copy.file_path
        if not untouched and not storage.valid_workspace_dir(copy.file_path):
            raise APIError(500, DIR_FAILURE_DELETE)

        def _mark(session: Any) -> str:
            row = session.get(orm.Workspace, copy_id)
            if row is None:
                return "gone"
            if untouched:
                # A bulk delete: a concurrent cancel of the same share just finds nothing.
                gone = session.execute(delete(orm.Workspace).where(orm.Workspace.id == copy_id))
                return "removed" if gone.rowcount else "gone"
            if row.status == WorkspaceStatus.DELETING:
                return "already"
            row.status = WorkspaceStatus.DELETING
            return "queued"

        result = await self.db.run(_mark)
        self.workspaces.changed(copy.user_id, copy_id)
        self.workspaces.invalidate(user.id)
        if result == "removed":
            # The copy may have been mid-way: clear whatever directory it had started.
            try:
                account = await self.accounts.get(copy_owner.username)
                path = storage.workspace_dir(account, copy_id)
                if storage.valid_workspace_dir(path):
                    await self.workspaces.to_background_thread(storage.delete_dir, path)
            except Exception:
                log.exception("Could not clear the directory of cancelled share %s", copy_id)
        elif result == "queued":
            self.workspaces.spawn(self.workspaces.run_deletion(copy_id))

    async def resume(self) -> None:
        await self.copies.resume()
