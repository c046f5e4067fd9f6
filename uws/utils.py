"""Small helpers shared across the server: time, JSON and hashing."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import secrets
from typing import Any

UTC = _dt.UTC


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(UTC)


def isoformat(value: _dt.datetime | None) -> str | None:
    """The contract's one datetime format: UTC with milliseconds and a literal Z."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def core_hours_str(value: Any) -> str:
    return f"{float(value or 0):.5f}"


def new_token() -> str:
    """An opaque key: 40 lowercase hex characters, as the original issued."""
    return secrets.token_hex(20)


def hash_token(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def json_dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(", ", ": "), ensure_ascii=False)


def python_type_name(value: Any) -> str:
    """The Python type name of a decoded JSON value, as the contract's messages use it."""
    return type(value).__name__


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "t", "yes", "y"):
        return True
    if lowered in ("false", "0", "f", "no", "n"):
        return False
    raise ValueError(value)
