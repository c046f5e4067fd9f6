"""The one exception type handlers raise to answer a client with a JSON error, and the one
envelope every error answer is written in."""

from __future__ import annotations

import json


class APIError(Exception):
    """An error answer: status code and the contract's exact message."""

    def __init__(
        self, status: int, message: str, headers: dict[str, str] | None = None, refused: bool | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        # A refusal of access (the audit log's outcome "refused"): every 401 and 403, and the 404
        # of `not_found_for_user`.
        self.refused = status in (401, 403) if refused is None else refused


def retry_later(message: str) -> APIError:
    """503 with Retry-After: this server cannot answer now (a standby, or the database out of
    reach), and the client tries again in a second, by then maybe at the leader."""
    return APIError(503, message, {"Retry-After": "1"})


def error_body(message: str) -> bytes:
    """The JSON error envelope, as bytes: every error answer the server writes itself (API
    handlers, websocket and passthrough refusals, the front door) goes through here, so the
    shape cannot drift between them."""
    return json.dumps({"success": False, "message": message}).encode()


def not_authenticated(message: str) -> APIError:
    return APIError(401, message, {"WWW-Authenticate": "Token"})


def not_found_for_user(message: str) -> APIError:
    """The 404 of an object the caller does not own, or that does not exist: the answer is the
    same for both (so ids of others' objects do not leak), and the audit log counts it as a
    refusal either way, without the query it would take to tell them apart."""
    return APIError(404, message, refused=True)


NO_STORAGE_ACCOUNT = "User could not be found/created on main storage system."
# When a workspace's directory is not a valid one: the answers of workspace writes, session
# starts, workspace and share deletion.
DIR_FAILURE_JOBS = (
    "Please contact a system administrator there is a failure with the workspace directory that "
    "will not allow for jobs to be created."
)
DIR_FAILURE_DELETE = (
    "Please contact a system administrator there is a failure with the workspace directory that "
    "will not allow for this workspace to be deleted."
)
