"""Websockets: /ws/events (every change to the caller's jobs and workspaces) and the original's
per-job stream at /jobs/<id>/ (with Upgrade) and /ws/jobs/<id>/, plus /jobs/ for all jobs.

Programs authenticate with the UWS-Authorization header. Browsers cannot set it, so they first
POST /ws_tickets/ (with the header) and open the websocket with ?ticket=<ticket>: a ticket is
valid for one connection within 60 seconds, and is redacted from logs.
"""

from __future__ import annotations

import asyncio
import collections
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select
from tornado import websocket

from .. import orm
from ..auth.tokens import CurrentUser
from ..errors import APIError, not_authenticated
from ..models import job_model, workspace_model
from ..sessions.service import owned_jobs_query
from ..workspaces import unaccepted_share_clause
from .base import BaseHandler

TICKET_SECONDS = 60
# Unredeemed tickets one user may hold: far more than a browser opening its sockets needs, and
# it keeps one user's flood of POST /ws_tickets/ from growing the store without bound.
MAX_TICKETS_PER_USER = 100
TERMINAL = ("complete", "failed")


class TicketStore:
    """Single-use tickets, kept in the order they were issued. Every ticket lives equally long,
    so that is also the order they expire in: clearing the expired ones looks only at the oldest
    few, however many are outstanding."""

    def __init__(self) -> None:
        self._tickets: collections.OrderedDict[str, tuple[float, CurrentUser, str]] = (
            collections.OrderedDict()
        )
        self._per_user: collections.Counter[int] = collections.Counter()

    def _forget(self, entry: tuple[float, CurrentUser, str]) -> None:
        user_id = entry[1].id
        self._per_user[user_id] -= 1
        if self._per_user[user_id] <= 0:
            del self._per_user[user_id]

    def _expire(self, now: float) -> None:
        while self._tickets:
            ticket, entry = next(iter(self._tickets.items()))
            if entry[0] >= now:
                return
            del self._tickets[ticket]
            self._forget(entry)

    def issue(self, user: CurrentUser, header: str) -> str | None:
        """A new ticket; None when the user already holds as many as they may."""
        now = time.monotonic()
        self._expire(now)
        if self._per_user[user.id] >= MAX_TICKETS_PER_USER:
            return None
        ticket = secrets.token_urlsafe(24)
        self._tickets[ticket] = (now + TICKET_SECONDS, user, header)
        self._per_user[user.id] += 1
        return ticket

    def redeem(self, ticket: str) -> tuple[CurrentUser, str] | None:
        entry = self._tickets.pop(ticket, None)
        if entry is None:
            return None
        self._forget(entry)
        if entry[0] < time.monotonic():
            return None
        return entry[1], entry[2]


class WebSocketCounter:
    """Open websockets per user (event streams and relayed session websockets alike), held to
    UWSApp.max_websockets_per_user so one user cannot hold the server's connections."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: collections.Counter[int] = collections.Counter()
        self.refusal = f"Too many open websockets (at most {limit} per user); close some first."

    def acquire(self, user_id: int) -> bool:
        if self.open[user_id] >= self.limit:
            return False
        self.open[user_id] += 1
        return True

    def release(self, user_id: int) -> None:
        self.open[user_id] -= 1
        if self.open[user_id] <= 0:
            del self.open[user_id]


class TicketHandler(BaseHandler):
    def post(self) -> None:
        header = self.request.headers.get("UWS-Authorization", "")
        ticket = self.uws.tickets.issue(self.user, header)
        if ticket is None:
            raise APIError(
                429,
                f"Too many unused websocket tickets (at most {MAX_TICKETS_PER_USER}); use or let some expire.",
                {"Retry-After": str(TICKET_SECONDS)},
            )
        self.ok("Successful.", {"ticket": ticket, "expires_in": TICKET_SECONDS})


class AuthenticatedWebSocket(websocket.WebSocketHandler):
    """Handshake failures are JSON HTTP answers, as every other error."""

    @property
    def uws(self) -> Any:
        return self.application.settings["uws"]

    def check_origin(self, origin: str) -> bool:
        # Authentication is a header or a single-use ticket, never a cookie, so another origin
        # gains nothing from opening a socket.
        return True

    def fail(self, error: APIError) -> None:
        self.set_status(error.status)
        self.set_header("Content-Type", "application/json")
        for name, value in error.headers.items():
            self.set_header(name, value)
        self.finish(json.dumps({"success": False, "message": error.message}))

    async def authenticate(self) -> tuple[CurrentUser, str]:
        ticket = self.get_query_argument("ticket", None)
        if ticket is not None:
            redeemed = self.uws.tickets.redeem(ticket)
            if redeemed is None:
                raise not_authenticated("Invalid token provided.")
            return redeemed
        header = self.request.headers.get("UWS-Authorization")
        return await self.uws.auth_service.authenticate(header), header or ""

    async def get(self, *args: Any, **kwargs: Any) -> None:
        try:
            self.user, self.auth_header = await self.authenticate()
            await self.authorize(*args)
        except APIError as e:
            self.fail(e)
            return
        await open_counted(self, self.user.id, super().get, *args, **kwargs)

    async def authorize(self, *args: Any) -> None:
        pass

    def on_message(self, message: str | bytes) -> None:
        pass  # client messages are ignored

    def on_close(self) -> None:
        release_counted(self)
        task = getattr(self, "_pump", None)
        if task is not None:
            task.cancel()

    async def still_authorized(self) -> bool:
        """Close with 4401 once the token has been revoked or has expired."""
        if not self.auth_header:
            return True
        try:
            await self.uws.auth_service.authenticate(self.auth_header)
            return True
        except APIError:
            self.close(4401, "Token revoked or expired.")
            return False

    async def send(self, payload: dict[str, Any]) -> bool:
        try:
            await self.write_message(json.dumps(payload))
            return True
        except websocket.WebSocketClosedError:
            return False

    async def pump(self, subscription: Any) -> None:
        try:
            while True:
                event = await subscription.next(timeout=30)
                if event is None:
                    if not await self.still_authorized():
                        return
                    continue
                if event["type"] == "token_revoked":
                    if not await self.still_authorized():
                        return
                    continue
                if subscription.overflowed:
                    subscription.overflowed = False
                    if not await self.resync():
                        return
                    continue
                if not await self.deliver(event):
                    return
        finally:
            subscription.close()

    async def deliver(self, event: dict[str, Any]) -> bool:
        raise NotImplementedError

    async def resync(self) -> bool:
        raise NotImplementedError


async def open_counted(
    handler: websocket.WebSocketHandler,
    user_id: int,
    handshake: Callable[..., Awaitable[None]],
    *args: Any,
    **kwargs: Any,
) -> None:
    """Run a websocket handler's get (the handshake and, in Tornado, the websocket's whole life)
    if the user may open one more websocket, else answer a JSON 429. The count is given back by
    `release_counted` in on_close, or here when no websocket is open any more (a failed
    handshake never reaches on_close); giving it back twice is harmless."""
    uws = handler.application.settings["uws"]
    if not uws.websockets.acquire(user_id):
        handler.set_status(429)
        handler.set_header("Content-Type", "application/json")
        handler.finish(json.dumps({"success": False, "message": uws.websockets.refusal}))
        return
    handler._uws_counted_user = user_id  # type: ignore[attr-defined]
    try:
        await handshake(*args, **kwargs)
    finally:
        if handler.ws_connection is None:
            release_counted(handler)


def release_counted(handler: websocket.WebSocketHandler) -> None:
    user_id = getattr(handler, "_uws_counted_user", None)
    if user_id is not None:
        handler._uws_counted_user = None  # type: ignore[attr-defined]
        handler.application.settings["uws"].websockets.release(user_id)


def job_message(job: dict[str, Any]) -> dict[str, Any]:
    return {
        "job_id": job["id"],
        "workspace_id": job["workspace_id"],
        "status": job["status"],
        "current_job_details": job["job_details"]["current_job_details"],
    }


class JobStreamHandler(AuthenticatedWebSocket):
    """The original's message shape {"status", "current_job_details"} (+ job and workspace ids),
    sent at open and on every change; the per-job stream closes after a terminal status."""

    async def authorize(self, job_id: str | None = None) -> None:
        self.job_id = int(job_id) if job_id is not None else None
        self.jobs = await self.load_jobs()
        if self.job_id is not None and not self.jobs:
            raise APIError(404, f"Job {self.job_id} not found for user.")

    async def load_jobs(self) -> list[dict[str, Any]]:
        user_id, job_id = self.user.id, self.job_id

        def _load(session: Any) -> list[dict[str, Any]]:
            stmt = owned_jobs_query(user_id)
            if job_id is not None:
                stmt = stmt.where(orm.Job.id == job_id)
            return [job_model(j) for j in session.scalars(stmt)]

        return await self.uws.db.run(_load)

    def open(self, *args: Any) -> None:
        self.last_sent: dict[int, tuple[Any, Any]] = {}
        subscription = self.uws.events.subscribe(self.user.id, self.job_id)
        self._pump = asyncio.ensure_future(self._run(subscription))

    async def _run(self, subscription: Any) -> None:
        for job in self.jobs:
            if not await self.deliver({"type": "job", "data": job}):
                subscription.close()
                return
        await self.pump(subscription)

    async def deliver(self, event: dict[str, Any]) -> bool:
        if event["type"] != "job":
            return True
        job = event["data"]
        fields = (job["status"], job["job_details"]["current_job_details"])
        if self.last_sent.get(job["id"]) == fields:
            return True
        self.last_sent[job["id"]] = fields
        if not await self.send(job_message(job)):
            return False
        if self.job_id is not None and job["status"] in TERMINAL:
            self.close(1000)
            return False
        return True

    async def resync(self) -> bool:
        self.job_id_jobs = await self.load_jobs()
        for job in self.job_id_jobs:
            if not await self.deliver({"type": "job", "data": job}):
                return False
        return True


class EventsHandler(AuthenticatedWebSocket):
    """Every change to the caller's jobs and workspaces. ?last_event_id=N resumes after N;
    when N is too old (or absent) the first message is a snapshot of the current state."""

    async def authorize(self) -> None:
        raw = self.get_query_argument("last_event_id", None)
        try:
            self.last_event_id = int(raw) if raw not in (None, "") else None
        except ValueError:
            raise APIError(400, f"Invalid value for query parameter last_event_id: {raw}") from None

    def open(self) -> None:
        subscription = self.uws.events.subscribe(self.user.id)
        self._pump = asyncio.ensure_future(self._run(subscription))

    async def _run(self, subscription: Any) -> None:
        missed = None
        if self.last_event_id is not None:
            missed = self.uws.events.since(self.user.id, self.last_event_id)
        if missed is None:
            if not await self.resync():
                subscription.close()
                return
        else:
            # The live queue may already hold some of these; skip duplicates by id.
            self.sent_up_to = self.last_event_id
            for event in missed:
                if not await self.deliver(event):
                    subscription.close()
                    return
        await self.pump(subscription)

    async def deliver(self, event: dict[str, Any]) -> bool:
        if event["id"] <= getattr(self, "sent_up_to", -1):
            return True
        self.sent_up_to = event["id"]
        return await self.send({k: v for k, v in event.items() if k != "job_id"})

    async def resync(self) -> bool:
        user_id = self.user.id

        def _load(session: Any) -> dict[str, Any]:
            jobs = session.scalars(owned_jobs_query(user_id))
            workspaces = session.scalars(
                select(orm.Workspace)
                .where(orm.Workspace.user_id == user_id, ~unaccepted_share_clause())
                .order_by(orm.Workspace.id)
            )
            return {
                "jobs": [job_model(j) for j in jobs],
                "workspaces": [workspace_model(w) for w in workspaces],
            }

        # The snapshot reflects everything up to the newest event id issued before it is read.
        latest = self.uws.events.latest_id()
        snapshot = await self.uws.db.run(_load)
        self.sent_up_to = latest
        return await self.send({"id": latest, "type": "snapshot", "time": time.time(), "data": snapshot})
