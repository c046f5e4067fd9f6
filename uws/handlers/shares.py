"""/shared_workspaces/ and /shared_workspaces/<id>/[accept/]."""

from __future__ import annotations

from .base import ID, BaseHandler


class ShareListMixin(BaseHandler):
    async def get(self, ws_id: str | None = None) -> None:
        is_accepted = self.query_bool("is_accepted") if ws_id is None else None
        data = await self.shares.list(self.user, int(ws_id) if ws_id is not None else None, is_accepted)
        empty = not data["original_workspaces"] and not data["shared_workspaces"]
        message = "Shared workspace matching given parameters could not be found." if empty else "Successful."
        self.ok(message, data)


class SharesHandler(ShareListMixin):
    required_scopes = {"GET": "read", "POST": "workspaces"}

    async def post(self) -> None:
        models = await self.shares.create(self.user, self.json_body())
        self.ok("Successful.", {"shared_workspaces": models})


class ShareHandler(ShareListMixin):
    required_scopes = {"GET": "read", "DELETE": "workspaces"}

    async def delete(self, ws_id: str) -> None:
        await self.shares.delete(self.user, int(ws_id))
        self.ok(f"Shared workspace {ws_id} queued for deletion.")


class ShareActionHandler(BaseHandler):
    required_scopes = {"PUT": "workspaces"}

    async def put(self, ws_id: str, put_type: str) -> None:
        await self.shares.accept(self.user, int(ws_id), put_type)
        self.ok("Successful.")


default_handlers = [
    (r"/shared_workspaces/?", SharesHandler),
    (rf"/shared_workspaces/{ID}/?", ShareHandler),
    (rf"/shared_workspaces/{ID}/([^/]+)/?", ShareActionHandler),
]
