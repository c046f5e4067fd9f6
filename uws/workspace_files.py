"""Browsing a workspace's files and downloading one (GET /workspaces/<id>/files/...).

The file system work is uws.storage.browse's; this checks who asks, turns its refusals into
answers, and runs every read on threads of its own: a slow disk (or a hung network mount) then
holds those threads, never the event loop or the threads other requests' file work waits for.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .auth.tokens import CurrentUser
from .errors import APIError
from .storage import browse, safepath

if TYPE_CHECKING:
    from .workspaces import WorkspaceService

# Downloads read a chunk per thread hop; several downloads (and listings) at once share these.
READ_THREADS = 4
INVALID_PATH = (
    "Invalid path: a path relative to the workspace, names separated by '/', without empty, '.' "
    "or '..' names."
)
NOT_FOUND = "File not found in workspace."
SERVER_CANNOT_READ = (
    "The server is not allowed to read this file (it belongs to the workspace owner's account)."
)


@dataclass
class Download:
    fd: int
    size: int
    name: str


class WorkspaceFiles:
    def __init__(self, workspaces: WorkspaceService) -> None:
        self.workspaces = workspaces
        self.storage = workspaces.storage
        self.executor = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="uws-files")

    def request_parts(self, path: str) -> list[str]:
        """The components of a path a client asked for ([] for the workspace's top), or 400."""
        path = path[:-1] if path.endswith("/") else path
        if not path:
            return []
        try:
            parts = safepath.split_relative(path)
        except safepath.UnsafePath:
            raise APIError(400, INVALID_PATH) from None
        if len(parts) > self.storage.max_path_depth:
            raise APIError(400, f"Invalid path: at most {self.storage.max_path_depth} components.")
        return parts

    async def place(self, user: CurrentUser, ws_id: int) -> browse.Place:
        # The checks every workspace request makes: another user's workspace is the same 404
        # as a missing one (audited as a refusal), then unaccepted, deleting, initializing.
        account, ws = await self.workspaces.owned_for_put(user, ws_id, None)
        if not ws.file_path or not self.storage.valid_workspace_dir(ws.file_path):
            raise APIError(500, "Please report this error to your system administrator and try again.")
        return self.storage.browse_place(account, ws.file_path)

    async def run(self, fn: Any, *args: Any) -> Any:
        """fn on the download threads, its refusals as answers."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        except browse.NotAllowed:
            raise APIError(404, NOT_FOUND) from None
        except browse.NotRegular:
            raise APIError(400, "Not a regular file: only regular files can be downloaded.") from None
        except browse.ServerCannotRead:
            raise APIError(403, SERVER_CANNOT_READ) from None

    async def listing(self, user: CurrentUser, ws_id: int, path: str) -> dict[str, Any]:
        parts = self.request_parts(path)
        place = await self.place(user, ws_id)
        try:
            found = await self.run(browse.list_directory, place, parts, self.storage.max_listing_entries)
        except NotADirectoryError:
            raise APIError(
                400, f"Not a directory: download it with GET /workspaces/{ws_id}/files/<path>."
            ) from None
        return {"path": "/".join(parts), **found}

    async def open(self, user: CurrentUser, ws_id: int, path: str) -> Download:
        parts = self.request_parts(path)
        if not parts:
            raise APIError(400, f"Is a directory: list it with GET /workspaces/{ws_id}/files/?path=.")
        place = await self.place(user, ws_id)
        try:
            fd, size = await self.run(browse.open_file, place, parts)
        except IsADirectoryError:
            raise APIError(
                400, f"Is a directory: list it with GET /workspaces/{ws_id}/files/?path=<path>."
            ) from None
        return Download(fd, size, parts[-1])

    async def read(self, fd: int, offset: int, size: int) -> bytes:
        return await asyncio.get_running_loop().run_in_executor(self.executor, os.pread, fd, size, offset)
