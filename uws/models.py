"""`*_model()` functions: the exact API shape of each object, keys in the contract's order."""

from __future__ import annotations

from typing import Any

from . import orm
from .keys import SessionTokens
from .utils import core_hours_str, isoformat

# The server's session tokens, set at start-up. Job models go only to their owner (the jobs API
# and the owner's event streams), so the owner's link is completed here; the database keeps it
# without the token. Unset (tools that serve no sessions), links carry no token.
session_tokens: SessionTokens | None = None


def link_with_token(url_path: str, token: str) -> str:
    """url_path with `token=<token>` as its query's last parameter, in place of any token it had
    (none when token is ""); exactly one '?' when there is a query, so clients can insert
    /tree/<path> before it."""
    base, _, query = url_path.partition("?")
    params = [p for p in query.replace("?", "&").split("&") if p and not p.startswith("token=")]
    if token:
        params.append(f"token={token}")
    return f"{base}?{'&'.join(params)}" if params else base


def current_details_model(job_id: int, current: dict[str, Any]) -> dict[str, Any]:
    current = dict(current)
    link = current.get("connection_details")
    if isinstance(link, dict) and isinstance(link.get("url_path"), str):
        token = session_tokens.token(job_id) if session_tokens is not None else ""
        current["connection_details"] = {**link, "url_path": link_with_token(link["url_path"], token)}
    return current


def workspace_details_model(ws: orm.Workspace) -> dict[str, Any]:
    request = ws.request_details or {}
    current = ws.current_details or {}
    return {
        "request_workspace_details": {
            "files": list(request.get("files", [])),
            "symlinks": list(request.get("symlinks", [])),
        },
        "current_workspace_details": {
            "files": list(current.get("files", [])),
            "symlinks": list(current.get("symlinks", [])),
        },
    }


def workspace_model(ws: orm.Workspace) -> dict[str, Any]:
    return {
        "id": ws.id,
        "name": ws.name,
        "description": ws.description,
        "disk_space": int(ws.disk_space or 0),
        "datetime_created": isoformat(ws.datetime_created),
        "datetime_last_modified": isoformat(ws.datetime_last_modified),
        "datetime_last_job_launch": isoformat(ws.datetime_last_job_launch),
        "workspace_details": workspace_details_model(ws),
        "status": str(ws.status),
        "default_job_type": ws.default_job_type,
    }


def job_model(job: orm.Job) -> dict[str, Any]:
    details = job.job_details or {}
    return {
        "id": job.id,
        "workspace_id": job.workspace_id,
        "resource_job_id": int(job.resource_job_id),
        "job_type": job.job_type,
        "status": str(job.status),
        "datetime_created": isoformat(job.datetime_created),
        "datetime_start": isoformat(job.datetime_start),
        "datetime_end": isoformat(job.datetime_end),
        "core_hours": core_hours_str(job.core_hours),
        "job_details": {
            "metrics": dict(details.get("metrics", {})),
            "request_job_details": dict(details.get("request_job_details", {})),
            "current_job_details": current_details_model(job.id, details.get("current_job_details", {})),
        },
    }


def job_view(job: dict[str, Any], with_link_token: bool) -> dict[str, Any]:
    """A job model as a client sees it: the owner's link carries the session's token only for
    requests that may reach into sessions (the `sessions` scope); a read-only token, an admin
    looking at another user's job, or an event on its way to the database (which never holds a
    session's token) gets the link without it. With with_link_token the token is added whether
    the model had it or not, so a stored event's link is whole again when it is delivered."""
    current = job["job_details"]["current_job_details"]
    link = current.get("connection_details")
    if not isinstance(link, dict) or not isinstance(link.get("url_path"), str):
        return job
    token = session_tokens.token(job["id"]) if with_link_token and session_tokens is not None else ""
    url_path = link_with_token(link["url_path"], token)
    if url_path == link["url_path"]:
        return job
    link = {**link, "url_path": url_path}
    details = {**job["job_details"], "current_job_details": {**current, "connection_details": link}}
    return {**job, "job_details": details}


def user_model(user: orm.User) -> dict[str, Any]:
    return {
        "id": user.id,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "username": user.username,
        "email": user.email,
    }


def shared_workspace_model(ws: orm.Workspace | None, owner: orm.User | None) -> dict[str, Any] | None:
    if ws is None or owner is None:
        return None
    return {
        "id": ws.id,
        "name": ws.name,
        "description": ws.description,
        "workspace_details": workspace_details_model(ws),
        "user_id": {
            "username": owner.username,
            "first_name": owner.first_name,
            "last_name": owner.last_name,
            "email": owner.email,
        },
    }


def share_model(
    mapping: orm.SharedWorkspaceMapping,
    original: tuple[orm.Workspace, orm.User] | None,
    shared: tuple[orm.Workspace, orm.User],
) -> dict[str, Any]:
    return {
        "original_workspace_id": shared_workspace_model(*original) if original else None,
        "shared_workspace_id": shared_workspace_model(*shared),
        "last_resource_options": dict(mapping.last_resource_options or {}),
        "last_job_type": mapping.last_job_type or "",
        "is_accepted": bool(mapping.is_accepted),
        "datetime_share_created": isoformat(mapping.datetime_share_created),
    }
