"""What a request may do: the caller's rights (scopes), and the one check every handler makes.

A user holds the user scopes; an admin holds the admin scopes too. A token carries a subset of
its owner's rights: login tokens (the original API's POST /tokens/) carry no scope list and so
hold whatever their owner holds; API tokens (POST /tokens/api/) carry the scopes they were
made with. Rights are always the owner's *now* narrowed by the token, so demoting an admin
takes `admin` from every token they hold, and a token never grants more than its owner has.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..errors import APIError

# read: every GET of the owner's own objects (and the event streams);
# workspaces: creating, changing, uploading to, deleting and sharing workspaces;
# sessions: starting and stopping sessions, and reaching into them (the passthrough).
USER_SCOPES = frozenset({"read", "workspaces", "sessions"})
# admin: the /admin/ endpoints; metrics: the server's metrics. Only admins hold these.
ADMIN_SCOPES = USER_SCOPES | {"admin", "metrics"}
ADMIN_ONLY_SCOPES = ADMIN_SCOPES - USER_SCOPES
ADMIN_REQUIRED = "Only administrators may do this."


@dataclass(frozen=True)
class CurrentUser:
    id: int
    username: str
    email: str
    first_name: str
    last_name: str
    is_admin: bool = False
    # The token's scopes; None for a token with its owner's full rights.
    scopes: frozenset[str] | None = None
    # The id of the token the request came with (0: not known, e.g. in-process callers).
    token_id: int = 0

    def rights(self) -> frozenset[str]:
        """What this request may do: the owner's rights now, narrowed by the token's scopes."""
        held = ADMIN_SCOPES if self.is_admin else USER_SCOPES
        if self.scopes is None:
            return held
        granted = set(self.scopes)
        if "admin" in granted:
            granted |= {"metrics"}  # an admin token may read the metrics too
        return held & granted

    def may(self, scope: str) -> bool:
        return scope in self.rights()

    def covers(self, scopes: frozenset[str] | None) -> bool:
        """Whether this request holds every right a token of the same owner with `scopes`
        would hold (None: the owner's full rights). A token may make or revoke only such."""
        return replace(self, scopes=scopes).rights() <= self.rights()


def require_scope(user: CurrentUser, scope: str | None) -> None:
    """The one scope check: a 403 in the envelope unless the request may do `scope` (None:
    any authenticated request may)."""
    if scope is None or user.may(scope):
        return
    if scope in ADMIN_ONLY_SCOPES and not user.is_admin:
        raise APIError(403, ADMIN_REQUIRED)
    raise APIError(403, f"This token does not have the '{scope}' scope.")


def parse_scopes(value: Any, caller: CurrentUser) -> frozenset[str]:
    """The `scopes` of a new API token, checked: a non-empty list of known scopes, none of them
    beyond what the calling request itself may do."""
    if not isinstance(value, list) or not value or not all(isinstance(s, str) for s in value):
        raise APIError(400, "scopes must be a non-empty list of scope names.")
    unknown = sorted(set(value) - ADMIN_SCOPES)
    if unknown:
        known = ", ".join(sorted(ADMIN_SCOPES))
        raise APIError(400, f"Unknown scope(s): {', '.join(unknown)}. Known scopes: {known}.")
    scopes = frozenset(value)
    if scopes & ADMIN_ONLY_SCOPES and not caller.is_admin:
        raise APIError(403, "Only administrators may create tokens with the admin or metrics scope.")
    beyond = sorted(scopes - caller.rights())
    if beyond:
        raise APIError(403, f"This token cannot grant scope(s) it does not hold: {', '.join(beyond)}.")
    return scopes
