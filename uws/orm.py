"""SQLAlchemy models: the server's whole persistent state.

Everything the server needs to carry on after a restart lives here: workspaces and their status
(so queued deletions and share copies resume), jobs with their spawner state, tokens (hashed only).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .sessions.status import JobStatus, WorkspaceStatus
from .utils import UTC, utcnow


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone of its own)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: _dt.datetime | None, dialect: Any) -> _dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: _dt.datetime | None, dialect: Any) -> _dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


class Id(TypeDecorator):
    """Integer ids. An id from a URL that no 32-bit column can hold matches nothing (instead of
    overflowing the driver): it is bound as 0, which no row has."""

    impl = Integer
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if isinstance(value, int) and not -(2**31) <= value < 2**31:
            return 0
        return value


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class User(Base):
    __tablename__ = "users"
    # Ids are never reused (on SQLite too), so a stale id held by a client never names a new row.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    username: Mapped[str] = mapped_column(String(255), unique=True)
    email: Mapped[str] = mapped_column(String(320), default="")
    first_name: Mapped[str] = mapped_column(String(150), default="")
    last_name: Mapped[str] = mapped_column(String(150), default="")
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    datetime_created: Mapped[_dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Set by `uws user set-admin` (or an admin's PUT /admin/users/<name>/); the names in
    # c.UWSApp.admin_users are admins whatever this says.
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Passthrough cookies issued before this (microseconds since the epoch) let no one in: the
    # user logged out or had their tokens revoked since. Here, not in memory, so that every
    # server process sharing the database refuses them.
    cookies_not_before: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class ApiToken(Base):
    """A user's key: a login token (scopes NULL: the owner's full rights, as the original API's
    POST /tokens/ issues) or an API token made with POST /tokens/api/ (a list of scopes, a note).
    Only the SHA-256 of the key is stored; logout and revocation delete the row."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    datetime_created: Mapped[_dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    scopes: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    note: Mapped[str] = mapped_column(String(255), default="", server_default="")


class ClientToken(Base):
    """An API client's credential, valid only as `client_token` in the login flow."""

    __tablename__ = "client_tokens"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    datetime_created: Mapped[_dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class ExternalUserMapping(Base):
    """Who a user is to an authenticator (a Globus identity, an OS account...)."""

    __tablename__ = "external_user_mappings"
    __table_args__ = (
        UniqueConstraint("user_id", "authenticator"),
        UniqueConstraint("authenticator", "external_user_id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    authenticator: Mapped[str] = mapped_column(String(255))
    external_user_id: Mapped[str] = mapped_column(String(255))
    external_username: Mapped[str] = mapped_column(String(255), default="")
    # What the authenticator learnt at the last login, e.g. Globus group membership (B13).
    external_user_details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    datetime_updated: Mapped[_dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Workspace(Base):
    __tablename__ = "workspaces"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(256), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    # Absolute directory; empty until it has been created. No length limit (B24).
    file_path: Mapped[str] = mapped_column(Text, default="")
    disk_space: Mapped[int] = mapped_column(BigInteger, default=0)
    datetime_created: Mapped[_dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    datetime_last_modified: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    datetime_last_job_launch: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    request_details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    current_details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(32), default=WorkspaceStatus.IDLE, index=True)
    status_message: Mapped[str] = mapped_column(Text, default="")
    default_job_type: Mapped[str | None] = mapped_column(String(255), nullable=True)


class Job(Base):
    """A session. Rows are never deleted; workspace_id is kept even after the workspace is gone."""

    __tablename__ = "jobs"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    workspace_id: Mapped[int] = mapped_column(Id, index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    job_type: Mapped[str] = mapped_column(String(255))
    resource: Mapped[str] = mapped_column(String(255), default="")
    resource_job_id: Mapped[int] = mapped_column(BigInteger, default=-1)
    status: Mapped[str] = mapped_column(String(32), default=JobStatus.PENDING, index=True)
    datetime_created: Mapped[_dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    datetime_start: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    datetime_end: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    core_hours: Mapped[float] = mapped_column(Float, default=0.0)
    job_details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    spawner_state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Quota(Base):
    """Per-user limits; a missing row or a null maximum means unlimited. 64-bit counters (B22)."""

    __tablename__ = "quotas"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    max_disk_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    max_core_hours: Mapped[float | None] = mapped_column(Float, nullable=True)
    used_disk_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    used_core_hours: Mapped[float] = mapped_column(Float, default=0.0)


class SharedWorkspaceMapping(Base):
    __tablename__ = "shared_workspace_mappings"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    original_workspace_id: Mapped[int | None] = mapped_column(
        Id, ForeignKey("workspaces.id", ondelete="SET NULL"), nullable=True, index=True
    )
    shared_workspace_id: Mapped[int] = mapped_column(
        Id, ForeignKey("workspaces.id", ondelete="CASCADE"), unique=True
    )
    last_resource_options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    last_job_type: Mapped[str] = mapped_column(String(255), default="")
    is_accepted: Mapped[bool] = mapped_column(Boolean, default=False)
    datetime_share_created: Mapped[_dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Cluster(Base):
    """What every server sharing this database must agree on (uws.cluster): one row, written by
    the first server to start. `lock_key` is the leadership lock's key (uws.leadership), random
    per database, so installations sharing one PostgreSQL database in different schemas never
    take each other's lock; `fingerprints` an HMAC of each shared secret (never the secret)."""

    __tablename__ = "cluster"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    lock_key: Mapped[int] = mapped_column(BigInteger)
    fingerprints: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    datetime_created: Mapped[_dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


# 64-bit ids that SQLite still numbers itself: only a column declared exactly INTEGER PRIMARY KEY
# is its rowid (with AUTOINCREMENT, never reused).
EventId = BigInteger().with_variant(Integer(), "sqlite")


class Event(Base):
    """What /ws/events delivers, kept so that a client resuming with the last id it saw (on this
    process or on another sharing the database) gets exactly what it missed. Ids come from the
    database and are never reused; uws.events trims old rows (event_horizons says how far)."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_user_id_id", "user_id", "id"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    job_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    type: Mapped[str] = mapped_column(String(64))
    time: Mapped[float] = mapped_column(Float, index=True)  # seconds since the epoch
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    source_time: Mapped[float | None] = mapped_column(Float, nullable=True)


class EventHorizon(Base):
    """Events with ids up to `up_to` may be gone for this user (trimmed); a client whose last id
    is older gets a snapshot instead. user_id 0: every user (ids before the table began)."""

    __tablename__ = "event_horizons"

    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    up_to: Mapped[int] = mapped_column(BigInteger)


class WebSocketTicket(Base):
    """A single-use ticket for opening a websocket (POST /ws_tickets/), redeemable on any process.
    Only its SHA-256 is kept, with the token it stands for (never the token's key)."""

    __tablename__ = "ws_tickets"

    ticket_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # Revoking the token (deleting its row) voids its unused tickets too.
    token_id: Mapped[int] = mapped_column(Id, ForeignKey("api_tokens.id", ondelete="CASCADE"))
    expires_at: Mapped[float] = mapped_column(Float, index=True)  # seconds since the epoch


class StartKey(Base):
    """A session start's Idempotency-Key, written with the job it started: a retry that reaches
    another process finds the job here. Only the SHA-256 of user, workspace and key is kept."""

    __tablename__ = "start_keys"

    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    job_id: Mapped[int] = mapped_column(Id)
    created: Mapped[float] = mapped_column(Float, index=True)  # seconds since the epoch
