"""/workspaces/ and /workspaces/<id>/[<put_type>/]."""

from __future__ import annotations

import asyncio
from typing import Any

from tornado import httputil

from ..errors import APIError
from ..workspace_writes import check_json_size
from .base import ID, BaseHandler

FILTER_KEYS = ("name", "description", "status")


class WorkspaceListMixin(BaseHandler):
    async def get(self, ws_id: str | None = None) -> None:
        filters = {}
        if ws_id is None:
            for key in FILTER_KEYS:
                value = self.query_value(key)
                if value is not None:
                    filters[key] = value
        body = await self.workspaces.list_response(
            self.user.id, int(ws_id) if ws_id is not None else None, filters
        )
        self.send_json(body)


class WorkspacesHandler(WorkspaceListMixin):
    required_scopes = {"GET": "read", "POST": "workspaces"}

    async def post(self) -> None:
        self.audit("workspace.create")
        model = await self.workspaces.writes.create(self.user, self.json_body())
        self.audit("workspace.create", f"workspace:{model['id']}")
        self.ok("Successful.", {"workspace": model})


class WorkspaceHandler(WorkspaceListMixin):
    required_scopes = {"GET": "read", "PUT": "workspaces", "DELETE": "workspaces"}

    async def put(self, ws_id: str) -> None:
        await self.workspaces.writes.update(self.user, int(ws_id), self.body, self.json_body)
        self.ok("Update successful.")

    async def delete(self, ws_id: str) -> None:
        self.audit("workspace.delete", f"workspace:{ws_id}")
        await self.workspaces.delete(self.user, int(ws_id))
        self.ok(f"Workspace {ws_id} queued for deletion.")


class WorkspaceActionHandler(BaseHandler):
    """PUT /workspaces/<id>/<put_type>/: upload here; start arrives with the sessions work."""

    required_scopes = {"PUT": "workspaces"}

    def required_scope(self) -> str | None:
        # Starting a session is the sessions scope's; every other PUT here changes the workspace.
        if self.request.method == "PUT" and self.path_args[1].lower() == "start":
            return "sessions"
        return super().required_scope()

    def body_limit(self) -> int:
        if self.request.method == "PUT" and self.path_args[1].lower() == "upload":
            return self.config.max_body_size
        return super().body_limit()

    async def put(self, ws_id: str, put_type: str) -> None:
        workspace_id = int(ws_id)
        kind = put_type.lower()
        if kind == "upload":
            folder = self.query_value("path") or ""
            await self.workspaces.writes.upload(self.user, workspace_id, await self.uploaded_files(), folder)
            self.ok("Successful upload.")
            return
        if kind == "start":
            self.audit("session.start", f"workspace:{ws_id}")
            job = await self.jobs.start(
                self.user, workspace_id, self.start_body, self.request.headers.get("Idempotency-Key")
            )
            self.audit("session.start", f"workspace:{ws_id}", job_id=job["id"], job_type=job["job_type"])
            self.ok("Successful start.", {"job": job})
            return
        await self.workspaces.owned_for_put(self.user, workspace_id, put_type)
        raise APIError(400, "Invalid PUT type passed.")

    def start_body(self) -> dict[str, Any]:
        body = self.json_body()
        if isinstance(body.get("job_details"), dict):
            # Stored with the job and sent back in every listing (the portal polls them).
            check_json_size(body["job_details"], "job_details", self.config.max_details_bytes)
        return body

    async def uploaded_files(self) -> list[tuple[str, bytes]]:
        content_type = self.request.headers.get("Content-Type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            return []
        # Up to max_body_size (100 MiB by default): joined and parsed off the event loop.
        chunks, self._chunks = self.body_chunks(), []
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, parse_multipart, content_type, chunks)


def parse_multipart(content_type: str, chunks: list[bytes]) -> list[tuple[str, bytes]]:
    args: dict = {}
    files: dict = {}
    try:
        httputil.parse_body_arguments(content_type, b"".join(chunks), args, files)
    except Exception:
        return []
    return [(f.filename, f.body) for parts in files.values() for f in parts if f.filename]


default_handlers = [
    (r"/workspaces/?", WorkspacesHandler),
    (rf"/workspaces/{ID}/?", WorkspaceHandler),
    (rf"/workspaces/{ID}/([^/]+)/?", WorkspaceActionHandler),
]
