"""Websockets: /ws/events (every change to the caller's jobs and workspaces) and the original's
per-job stream at /jobs/<id>/ (with Upgrade) and /ws/jobs/<id>/, plus /jobs/ for all jobs.

Programs authenticate with the UWS-Authorization header. Browsers cannot set it, so they first
POST /ws_tickets/ (with the header) and open the websocket with ?ticket=<ticket>: a ticket is
valid for one connection within 60 seconds, and is redacted from logs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tornado import websocket
from tornado.routing import Rule

from ..auth.scopes import require_scope
from ..auth.tokens import CurrentUser
from ..errors import APIError, not_authenticated, not_found_for_user
from ..models import job_view
from ..queries import owned_jobs, user_snapshot
from ..sessions.logs import Following
from ..sessions.status import TERMINAL
from ..utils import parse_bool
from ..websockets import MAX_TICKETS_PER_USER, TICKET_SECONDS
from .auditing import record_refusal
from .base import ID, BaseHandler, UpgradeMatches, send_error
from .components import Components, SettingsComponents

log = logging.getLogger("uws.events")


class TicketHandler(BaseHandler):
    # A ticket opens only the event streams, which are reads; it carries the token's scopes.
    required_scopes = {"POST": "read"}

    async def post(self) -> None:
        # The ticket stands for the request's token (the header's, or the browser session's):
        # its socket re-checks that token, closing with 4401 once it is revoked.
        ticket = await self.tickets.issue(self.user)
        if ticket is None:
            raise APIError(
                429,
                f"Too many unused websocket tickets (at most {MAX_TICKETS_PER_USER}); use or let some expire.",
                {"Retry-After": str(TICKET_SECONDS)},
            )
        self.ok("Successful.", {"ticket": ticket, "expires_in": TICKET_SECONDS})


class AuthenticatedWebSocket(Components, websocket.WebSocketHandler):
    """Handshake failures are JSON HTTP answers, as every other error."""

    def check_origin(self, origin: str) -> bool:
        # Authentication is a header or a single-use ticket, never a cookie, so another origin
        # gains nothing from opening a socket.
        return True

    # The credential the socket re-checks while open: the UWS-Authorization header it came
    # with, or (opened with a ticket) the id of the token the ticket stands for.
    auth_header = ""
    ticket_token_id = 0

    async def authenticate(self) -> CurrentUser:
        ticket = self.get_query_argument("ticket", None)
        if ticket is not None:
            user = await self.tickets.redeem(ticket)
            if user is None:
                raise not_authenticated("Invalid token provided.")
            self.ticket_token_id = user.token_id
            return user
        header = self.request.headers.get("UWS-Authorization")
        user = await self.auth.authenticate(header)
        self.auth_header = header or ""
        return user

    async def get(self, *args: Any, **kwargs: Any) -> None:
        try:
            self.user = await self.authenticate()
            # Streams report the owner's own objects: reads. A token without the sessions
            # scope gets job links without the session's token (job_view).
            require_scope(self.user, "read")
            await self.authorize(*args)
        except APIError as e:
            send_error(self, e)
            record_refusal(self, e, getattr(self, "user", None))
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
        try:
            if self.auth_header:
                await self.auth.authenticate(self.auth_header)
            elif self.ticket_token_id:
                await self.auth.authenticate_token_id(self.ticket_token_id)
            return True
        except APIError:
            self.close(4401, "Token revoked or expired.")
            return False

    def job_view(self, job: dict[str, Any]) -> dict[str, Any]:
        return job_view(job, self.user.may("sessions"))

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
    counter = SettingsComponents(handler.settings).websockets
    if not counter.acquire(user_id):
        send_error(handler, APIError(429, counter.refusal))
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
        SettingsComponents(handler.settings).websockets.release(user_id)


# Events about one job that its stream carries as they are, beside the original's messages.
JOB_NOTICES = frozenset({"ending_soon"})


def job_message(job: dict[str, Any]) -> dict[str, Any]:
    return {
        "job_id": job["id"],
        "workspace_id": job["workspace_id"],
        "status": job["status"],
        "current_job_details": job["job_details"]["current_job_details"],
    }


class JobStreamHandler(AuthenticatedWebSocket):
    """The original's message shape {"status", "current_job_details"} (+ job and workspace ids),
    sent at open and on every change; the per-job stream closes after a terminal status.

    With ?logs=true the per-job stream also carries the session's new output, {"type": "log",
    "job_id", "offset", "text"}, at most every SessionLogs.push_interval_seconds. Asked for,
    because clients written for the original expect its message shape only. Never on the
    all-jobs stream or /ws/events: output is a stream of its own, which would drown the status
    changes there and push them out of the events' replay buffer.

    With ?notices=true it also carries the job's warnings (JOB_NOTICES) as they are,
    {"type": "ending_soon", "job_id", "seconds_left", ...}: asked for, for the same reason."""

    following: Following | None = None

    def flag(self, name: str) -> bool:
        value = self.get_query_argument(name, "false")
        try:
            return parse_bool(value)
        except ValueError:
            raise APIError(400, f"Invalid value for query parameter {name}: {value}") from None

    async def authorize(self, job_id: str | None = None) -> None:
        self.job_id = int(job_id) if job_id is not None else None
        self.wants_logs = self.flag("logs") and self.job_id is not None
        self.wants_notices = self.flag("notices")
        self.initial_jobs = await self.load_jobs()
        if self.job_id is not None and not self.initial_jobs:
            raise not_found_for_user(f"Job {self.job_id} not found for user.")

    async def load_jobs(self) -> list[dict[str, Any]]:
        user_id, job_id = self.user.id, self.job_id
        return await self.db.run(lambda session: owned_jobs(session, user_id, job_id))

    def open(self, *args: Any) -> None:
        self.set_nodelay(True)  # (as on /ws/events: each status message is wanted at once)
        self.last_sent: dict[int, tuple[Any, Any]] = {}
        subscription = self.events.subscribe(self.user.id, self.job_id)
        if self.wants_logs and self.job_id is not None:
            self.following = self.jobs.logs.follow(self.job_id)
            self._log_pump = asyncio.ensure_future(self._pump_logs(self.following))
        self._pump = asyncio.ensure_future(self._run(subscription))

    def on_close(self) -> None:
        super().on_close()
        if self.following is not None:
            self._log_pump.cancel()
            self.jobs.logs.unfollow(self.following)

    async def _pump_logs(self, following: Following) -> None:
        """New output as it comes, one message per push interval at most."""
        while True:
            await following.event.wait()
            following.event.clear()
            if not await self.send_log(following):
                return
            await asyncio.sleep(self.jobs.logs.push_interval_seconds)

    async def send_log(self, following: Following, final: bool = False) -> bool:
        message = self.jobs.logs.message(following, final)
        return message is None or await self.send(message)

    async def _run(self, subscription: Any) -> None:
        for job in self.initial_jobs:
            if not await self.deliver({"type": "job", "data": job}):
                subscription.close()
                return
        await self.pump(subscription)

    async def deliver(self, event: dict[str, Any]) -> bool:
        if event["type"] in JOB_NOTICES:
            if not self.wants_notices:
                return True
            return await self.send({"type": event["type"], **event["data"]})
        if event["type"] != "job":
            return True
        job = self.job_view(event["data"])
        fields = (job["status"], job["job_details"]["current_job_details"])
        if self.last_sent.get(job["id"]) == fields:
            return True
        self.last_sent[job["id"]] = fields
        terminal = self.job_id is not None and job["status"] in TERMINAL
        if terminal and self.following is not None and not await self.send_log(self.following, final=True):
            return False  # (the last output goes out before the stream closes)
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
        # Events are small and each is wanted at once: do not let Nagle's algorithm hold one
        # back until the previous one is acknowledged.
        self.set_nodelay(True)
        subscription = self.events.subscribe(self.user.id)
        self._pump = asyncio.ensure_future(self._run(subscription))

    async def _run(self, subscription: Any) -> None:
        try:
            missed = None
            if self.last_event_id is not None:
                # From the database: the events may have been published by another process.
                missed = await self.events.since(self.user.id, self.last_event_id)
        except Exception:
            log.exception("Reading the events a client missed failed")
            subscription.close()
            self.close(1011, "Try again.")
            return
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
        if "id" in event:  # (a live reading has none: it is never replayed, so never doubled)
            if event["id"] <= getattr(self, "sent_up_to", -1):
                return True
            self.sent_up_to = event["id"]
        if event["type"] == "job":
            event = {**event, "data": self.job_view(event["data"])}
        return await self.send({k: v for k, v in event.items() if k != "job_id"})

    async def resync(self) -> bool:
        user_id = self.user.id
        # The snapshot reflects every event of the user stored before it is read.
        try:
            latest = await self.events.latest_id(user_id)
            snapshot = await self.db.run(lambda session: user_snapshot(session, user_id))
        except Exception:
            log.exception("Reading a snapshot for an event stream failed")
            self.close(1011, "Try again.")
            return False
        self.sent_up_to = latest
        snapshot["jobs"] = [self.job_view(job) for job in snapshot["jobs"]]
        return await self.send({"id": latest, "type": "snapshot", "time": time.time(), "data": snapshot})


default_handlers = [
    (r"/ws_tickets/?", TicketHandler),
    (r"/ws/events/?", EventsHandler),
    (r"/ws/jobs/?", JobStreamHandler),
    (rf"/ws/jobs/{ID}/?", JobStreamHandler),
]
# Tried before the REST routes: /jobs/ and /jobs/<id>/ with Upgrade: websocket are the stream.
upgrade_handlers = [
    Rule(UpgradeMatches(r"/jobs/?"), JobStreamHandler),
    Rule(UpgradeMatches(rf"/jobs/{ID}/?"), JobStreamHandler),
]
