"""Audit lines of requests (uws.audit): who (the authenticated user), from where (the client's
address as uws.forwarded believes it) and how it ended (the answer's status).

REST handlers declare their action with BaseHandler.audit, and the line is written once the
answer has gone out; websocket handshakes and the passthrough, which are not BaseHandlers, call
`record_refusal` when they refuse. A request with no action of its own whose answer is a refusal
(401, 403, a `not_found_for_user` 404) gets an `access.refused` line; any other request none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..audit import outcome_of

if TYPE_CHECKING:
    from tornado import web

    from ..auth.tokens import CurrentUser
    from ..errors import APIError

# What a handler declared: action, object, details.
Declared = tuple[str, str | None, dict[str, Any]]


def actor_of(user: CurrentUser | None) -> str | None:
    return user.username if user is not None else None


def record(
    handler: web.RequestHandler,
    action: str,
    obj: str | None,
    outcome: str,
    user: CurrentUser | None,
    **details: Any,
) -> None:
    """One line about `handler`'s request, from the request's own address."""
    handler.settings["audit_log"].record(
        action, actor_of(user), obj, outcome, handler.request.remote_ip or None, **details
    )


def refused_request(handler: web.RequestHandler) -> Declared:
    """The `access.refused` line of a request that has no action of its own: its path (never the
    query string, where links carry their token) and method."""
    return "access.refused", handler.request.path, {"method": handler.request.method}


def record_answer(
    handler: web.RequestHandler,
    declared: Declared,
    user: CurrentUser | None,
    error: APIError | None,
    status: int | None = None,
) -> None:
    """The line of a finished request, its outcome from the answer's status."""
    status = status or handler.get_status()
    outcome = outcome_of(status, error is not None and error.refused)
    action, obj, details = declared
    if outcome != "success":
        details = {**details, "status": status}
        if error is not None and error.status in (401, 403):
            # The server's own fixed wording ("Invalid token provided."): says why, repeats no input.
            details["reason"] = error.message
    record(handler, action, obj, outcome, user, **details)


def record_refusal(
    handler: web.RequestHandler, error: APIError, user: CurrentUser | None, obj: str | None = None
) -> None:
    """A refused websocket handshake or passthrough request (nothing when `error` is no refusal)."""
    if error.refused:
        action, path, details = refused_request(handler)
        record_answer(handler, (action, obj or path, details), user, error, error.status)
