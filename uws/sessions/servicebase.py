"""What the parts of JobService (tracker.py's HelperMessages, reconcile.py's Reconciler,
stopping.py's Stopping) use of the whole: its attributes and the transitions service.py implements. Declared once here, so
each part is type-checked against the same signatures that JobService must keep."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..db import Database
    from ..events import EventBus
    from ..spawners.base import Spawner
    from .channel import SessionChannel
    from .record import LiveSessions
    from .status import JobStatus


class JobServiceBase:
    app: Any  # the UWSApp
    db: Database
    events: EventBus
    channel: SessionChannel
    live: LiveSessions
    # JobService's options (traits there)
    heartbeat_seconds: float
    reconcile_seconds: float
    lost_contact_seconds: float

    if TYPE_CHECKING:  # (only declared: JobService's metaclass is traitlets')

        async def secret_for(self, job_id: int) -> str | None: ...

        async def _spawner(self, job_id: int) -> Spawner | None: ...

        async def _send_stop(self, job_id: int) -> None: ...

        async def _terminate(self, job_id: int) -> None: ...

        async def _update(
            self,
            job_id: int,
            *,
            message: str | None = None,
            ready: dict[str, Any] | None = None,
            running: bool = False,
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
        ) -> None: ...
