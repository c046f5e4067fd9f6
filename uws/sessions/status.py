"""Job and workspace statuses. String-valued, so the API, the events and the database keep
exactly the words they always had ("running" == JobStatus.RUNNING)."""

from __future__ import annotations

import enum


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
    COMPLETE = "complete"
    FAILED = "failed"


class WorkspaceStatus(enum.StrEnum):
    INITIALIZING = "initializing"
    IDLE = "idle"
    ACTIVE = "active"
    DELETING = "deleting"
    ERROR = "error"


# A job holds its workspace (and counts against the user's limits) until it is terminal.
ACTIVE = frozenset({JobStatus.PENDING, JobStatus.RUNNING, JobStatus.STOPPING})
TERMINAL = frozenset({JobStatus.COMPLETE, JobStatus.FAILED})
