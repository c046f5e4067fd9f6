"""GET /workspaces/<id>/files/?path=<dir> (a listing) and GET /workspaces/<id>/files/<path> (a
download, streamed). What may be read is uws.storage.browse's to say."""

from __future__ import annotations

import os
from urllib.parse import quote

from tornado.http1connection import HTTP1Connection
from tornado.iostream import StreamClosedError

from .base import ID, BaseHandler

# Read and sent one at a time, each sent before the next is read: the server holds about one
# chunk per download, whatever the file's size.
CHUNK_BYTES = 512 * 1024


def content_disposition(name: str) -> str:
    """`attachment` with the name in RFC 5987 form (percent-encoded UTF-8: no quote, newline or
    other byte of the name reaches the header as itself) and a plain ASCII fallback."""
    fallback = "".join(c if " " <= c < "\x7f" and c not in '"\\%' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


class WorkspaceFilesHandler(BaseHandler):
    required_scopes = {"GET": "read"}

    async def get(self, ws_id: str) -> None:
        listing = await self.workspaces.files.listing(self.user, int(ws_id), self.query_value("path") or "")
        self.ok("Successful.", listing)


class WorkspaceFileHandler(BaseHandler):
    required_scopes = {"GET": "read"}

    async def get(self, ws_id: str, path: str) -> None:
        files = self.workspaces.files
        download = await files.open(self.user, int(ws_id), path)
        sent = 0
        try:
            self.set_header("Content-Type", "application/octet-stream")
            self.set_header("Content-Disposition", content_disposition(download.name))
            self.set_header("Content-Length", str(download.size))
            self.set_header("Cache-Control", "no-store")
            while sent < download.size:
                chunk = await files.read(download.fd, sent, min(CHUNK_BYTES, download.size - sent))
                if not chunk:
                    break
                self.write(chunk)
                sent += len(chunk)
                await self.flush()
        except StreamClosedError:
            return  # the client went away
        finally:
            os.close(download.fd)
        if sent < download.size:
            # The file shrank while it was sent: the length promised cannot be kept, so the
            # answer ends short and the client sees it incomplete (never padded or passed off).
            connection = self.request.connection
            if isinstance(connection, HTTP1Connection):
                connection.close()


default_handlers = [
    (rf"/workspaces/{ID}/files/?", WorkspaceFilesHandler),
    (rf"/workspaces/{ID}/files/(.+)", WorkspaceFileHandler),
]
