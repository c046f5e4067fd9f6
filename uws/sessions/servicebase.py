"""What JobService is given (JobParts, JobSettings), and what its parts (tracker.py's
HelperMessages, reconcile.py's Reconciler, stopping.py's Stopping) use of the whole: its
attributes and the transitions service.py implements. Declared once here, so each part is
type-checked against the same signatures that JobService must keep."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Coroutine

    from .. import orm
    from ..audit import AuditLog
    from ..auth.accounts import AccountCache
    from ..db import Database
    from ..events import EventBus
    from ..keys import SessionTokens
    from ..passthrough.urls import SessionURLs
    from ..quotas import QuotaService
    from ..spawners import SpawnerFactory
    from ..spawners.base import Spawner
    from ..storage.local import LocalFileSystemStorage
    from ..workspaces import WorkspaceService
    from .channel import SessionChannel
    from .logs import SessionLogs
    from .record import LiveSessions
    from .status import JobStatus


@dataclass(frozen=True)
class JobParts:
    """The rest of the server as JobService uses it, handed over by UWSApp.init_services."""

    db: Database
    events: EventBus
    accounts: AccountCache
    workspaces: WorkspaceService
    quotas: QuotaService
    storage: LocalFileSystemStorage
    spawner_factory: SpawnerFactory
    session_urls: SessionURLs
    session_tokens: SessionTokens
    audit_log: AuditLog


@dataclass(frozen=True)
class JobSettings:
    """UWSApp's options that sessions are started from (under the same names), the job
    templates read from share/uws, and where the session channel listens."""

    job_types: dict[str, Any]
    job_templates: dict[str, Any]
    parameters: list[Any]
    resources: dict[str, Any]
    main_resource_key: str
    passthrough_mode: str
    session_channel_url: str
    session_group: str
    channel_key_file: str  # the channel's CURVE key pair (tcp://)
    log_dir: str  # where session logs are kept (the server's alone)


class SessionObserver:
    """What the sessions tell the server's metrics (uws.metrics.ServerMetrics) as it happens;
    this one, the default, takes no note."""

    def started(self, spawner: str, seconds: float) -> None:
        """A session reached running, `seconds` after its start request."""

    def ended(self, spawner: str, status: str) -> None:
        """A session ended with this final status."""

    def heartbeat(self, sent_at: float) -> None:
        """A helper's heartbeat arrived, sent at `sent_at` (its clock, seconds since the epoch)."""


class JobServiceBase:
    parts: JobParts
    observer: SessionObserver
    db: Database
    events: EventBus
    channel: SessionChannel
    logs: SessionLogs
    live: LiveSessions
    settings: JobSettings
    # JobService's options (traits there)
    heartbeat_seconds: float
    reconcile_seconds: float
    lost_contact_seconds: float

    if TYPE_CHECKING:  # (only declared: JobService's metaclass is traitlets')

        def background(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...

        async def secret_for(self, job_id: int) -> str | None: ...

        async def _spawner(self, job_id: int) -> Spawner | None: ...

        async def _send_stop(self, job_id: int) -> None: ...

        async def send_time_limit(self, job_id: int, seconds: int) -> None: ...

        def lock(self, job_id: int) -> asyncio.Lock: ...

        def _time_left(self, job: orm.Job) -> int | None: ...

        async def _terminate(self, job_id: int) -> None: ...

        async def _update(
            self,
            job_id: int,
            *,
            message: str | None = None,
            ready: dict[str, Any] | None = None,
            running: bool = False,
            suggestions: list[dict[str, Any]] | None = None,
            source_time: float | None = None,
        ) -> None: ...

        def publish(self, user_id: int, model: dict[str, Any], source_time: float | None = None) -> None: ...

        async def apply_exit(
            self, job_id: int, ended: dict[str, Any], source_time: float | None = None
        ) -> None: ...

        async def _finish(
            self,
            job_id: int,
            status: JobStatus,
            message: str,
            log_tail: str = "",
            stopping_completes: bool = False,
            source_time: float | None = None,
        ) -> int | None: ...
