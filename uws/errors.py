"""The one exception type handlers raise to answer a client with a JSON error."""

from __future__ import annotations


class APIError(Exception):
    """An error answer: status code and the contract's exact message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def not_authenticated(message: str) -> APIError:
    return APIError(401, message, {"WWW-Authenticate": "Token"})


NO_STORAGE_ACCOUNT = "User could not be found/created on main storage system."
