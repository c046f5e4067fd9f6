"""What a process announces of its workspaces (uws.workspaces.WorkspaceService._publish): each
change once, a deletion once, and, after another server led meanwhile, everything afresh."""

from __future__ import annotations

from typing import Any

from uws.workspaces import WorkspaceService


class Events:
    def __init__(self) -> None:
        self.sent: list[tuple[int, str, dict[str, Any]]] = []

    def publish(self, user_id: int, kind: str, data: dict[str, Any], **kw: Any) -> None:
        self.sent.append((user_id, kind, data))


def service() -> tuple[WorkspaceService, Events]:
    events = Events()
    # Announcing touches none of the other parts.
    return WorkspaceService(None, None, events, None, None, None, None), events  # type: ignore[arg-type]


def test_a_repeat_is_not_announced_and_a_deletion_is_announced_once() -> None:
    svc, events = service()
    model = {"id": 3, "name": "a"}
    svc._publish(1, 3, model)
    svc._publish(1, 3, dict(model))
    svc._publish(1, 3, None)
    svc._publish(1, 3, None)
    assert [kind for _, kind, _ in events.sent] == ["workspace", "workspace_deleted"]


def test_after_another_leader_the_same_state_is_announced_again() -> None:
    """This process announced A; another leader then announced B; the workspace is back at A
    when this one leads again: clients that resumed from the other hold B, so A goes out."""
    svc, events = service()
    model = {"id": 3, "name": "a"}
    svc._publish(1, 3, model)
    svc.forget_cached()
    svc._publish(1, 3, dict(model))
    assert [kind for _, kind, _ in events.sent] == ["workspace", "workspace"]
