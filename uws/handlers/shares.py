"""/shared_workspaces/ and /shared_workspaces/<id>/[accept/]."""

from __future__ import annotations

from typing import Any

from .base import ID, BaseHandler


class ShareListMixin(BaseHandler):
    async def get(self, ws_id: str | None = None) -> None:
        is_accepted = self.query_bool("is_accepted") if ws_id is None else None
        data = await self.shares.list(self.user, int(ws_id) if ws_id is not None else None, is_accepted)
        empty = not data["original_workspaces"] and not data["shared_workspaces"]
        message = "Shared workspace matching given parameters could not be found." if empty else "Successful."
        self.ok(message, data)


def share_details(models: list[dict[str, Any]]) -> tuple[str | None, dict[str, Any]]:
    """The audit object and details of a share made: the original, its recipients and copies."""
    original = models[0]["original_workspace_id"]["id"] if models else None
    return f"workspace:{original}" if original is not None else None, {
        "recipients": [m["shared_workspace_id"]["user_id"]["username"] for m in models],
        "copy_ids": [m["shared_workspace_id"]["id"] for m in models],
    }


class SharesHandler(ShareListMixin):
    required_scopes = {"GET": "read", "POST": "workspaces"}

    async def post(self) -> None:
        self.audit("workspace.share")
        body = self.json_body()
        original = body.get("original_workspace_id")
        known = isinstance(original, int) and not isinstance(original, bool)
        self.audit("workspace.share", f"workspace:{original}" if known else None)
        models = await self.shares.create(self.user, body)
        shared, details = share_details(models)
        self.audit("workspace.share", shared, **details)
        self.ok("Successful.", {"shared_workspaces": models})


class ShareHandler(ShareListMixin):
    required_scopes = {"GET": "read", "DELETE": "workspaces"}

    async def delete(self, ws_id: str) -> None:
        self.audit("share.delete", f"workspace:{ws_id}")
        await self.shares.delete(self.user, int(ws_id))
        self.ok(f"Shared workspace {ws_id} queued for deletion.")


class ShareActionHandler(BaseHandler):
    required_scopes = {"PUT": "workspaces"}

    async def put(self, ws_id: str, put_type: str) -> None:
        if put_type.lower() == "accept":
            self.audit("share.accept", f"workspace:{ws_id}")
        await self.shares.accept(self.user, int(ws_id), put_type)
        self.ok("Successful.")


default_handlers = [
    (r"/shared_workspaces/?", SharesHandler),
    (rf"/shared_workspaces/{ID}/?", ShareHandler),
    (rf"/shared_workspaces/{ID}/([^/]+)/?", ShareActionHandler),
]
