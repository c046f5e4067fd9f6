"""What every handler shares: the JSON envelope, CORS, errors, body limits and token auth."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from tornado import web
from tornado.concurrent import Future
from tornado.http1connection import HTTP1Connection
from tornado.routing import PathMatches

from ..auth.scopes import require_scope
from ..db import unavailable
from ..errors import APIError, error_body, retry_later
from ..utils import parse_bool
from .auditing import Declared, record_answer, refused_request
from .browser import authenticate_request
from .components import Components

log = logging.getLogger("uws.web")

SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
ALLOW_METHODS = "DELETE, GET, OPTIONS, PATCH, POST, PUT"
ALLOW_HEADERS = (
    "accept, authorization, content-type, user-agent, x-csrftoken, x-requested-with, uws-authorization"
)
HANDLER_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD")
BODY_TOO_LARGE = "Request body too large."
DATABASE_UNAVAILABLE = "The database is unavailable; try again shortly."
# A body up to this much over its limit is still read (and dropped) before the 413 goes out: a
# client that is still sending when the server closes the connection can lose the answer to the
# reset. Beyond it, the 413 goes out at once and the connection is closed.
DRAIN_BYTES = 4 * 1024 * 1024
# An id in a route. Ids past 4,300 digits are no route (a JSON 404): Python's int() refuses them.
ID = r"([0-9]{1,4300})"


class UpgradeMatches(PathMatches):
    """Matches a path only for websocket upgrade requests, so /jobs/<id>/ serves both REST and
    the original's websocket stream."""

    def match(self, request: Any) -> dict[str, Any] | None:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return None
        return super().match(request)


def set_cors_headers(handler: web.RequestHandler, origins: tuple[str, ...]) -> None:
    """Which origins may read the answer (never with credentials: no Allow-Credentials, so a
    browser session's cookie never lets another site read anything)."""
    if "*" in origins:
        handler.set_header("Access-Control-Allow-Origin", "*")
    else:
        origin = handler.request.headers.get("Origin", "")
        if origin in origins:
            handler.set_header("Access-Control-Allow-Origin", origin)
    handler.set_header("Vary", "Origin")


def send_error(handler: web.RequestHandler, error: APIError) -> None:
    """Answer with the JSON error envelope. Every Tornado handler's refusal is written here
    (REST, websocket handshakes, the passthrough), so they all look alike."""
    handler.set_status(error.status)
    handler.set_header("Content-Type", "application/json")
    for name, value in error.headers.items():
        handler.set_header(name, value)
    handler.finish(error_body(error.message))


def write_json_error(handler: web.RequestHandler, status_code: int) -> None:
    """An error Tornado raises itself (a 405, a 500) in the JSON envelope, never its HTML page."""
    message = {404: "Not found.", 405: "Method not allowed."}.get(
        status_code, "A server error occurred." if status_code >= 500 else handler._reason
    )
    handler.set_header("Content-Type", "application/json")
    handler.finish(error_body(message))


class AnswersBeforeBody(web.RequestHandler):
    """For handlers that stream request bodies in (@web.stream_request_body), whose prepare()
    runs before the body is read: a refusal there (401, 403, 404, 413...) is answered with the
    request not read to its end; even a bodyless GET's, as Tornado counts the read unfinished
    until prepare() has returned. Tornado's HTTP1Connection then closes the connection once the
    answer is out, without saying so in it (no `Connection: close`): a client that keeps the
    connection for its next request (requests.Session, a portal, a browser) sends that request
    into the close, and meets a reset. So, as an answer is finished with its request unread, the
    rest of a body of known length up to DRAIN_BYTES (or of no body) is read on and dropped (the
    handler's data_received drops what comes after its answer), and the connection is kept;
    any other (chunked, longer, or waiting for "100 Continue") is answered with `Connection:
    close`, and Tornado closes the connection (a lingering close: uws.passthrough.linger)."""

    def finish(self, chunk: str | bytes | dict | None = None) -> Future[None]:
        connection = self.request.connection
        if not self._finished and isinstance(connection, HTTP1Connection) and not connection._read_finished:
            headers = self.request.headers
            length = headers.get("Content-Length", "0")
            if (
                "Transfer-Encoding" in headers
                or "Expect" in headers
                or not (length.isdigit() and int(length) <= DRAIN_BYTES)
            ):
                self.set_header("Connection", "close")
            else:
                # Tornado reads the body on (its read is under way, or starts once prepare() has
                # returned) but takes this as its cue to close: the read counts as finished.
                connection._read_finished = True
        return super().finish(chunk)


def decode_json(raw: bytes) -> Any:
    """json.loads of a request body. Nesting deeper than the decoder's recursion allows is a
    client mistake like any other (400), not a server error; other decoding errors are left to
    the caller, whose messages differ."""
    text = raw.decode("utf-8") if raw else ""
    try:
        value = json.loads(text)
    except RecursionError:
        raise APIError(400, "Invalid JSON: nested too deeply.") from None
    if SURROGATE_ESCAPE.search(text):
        # A \ud800 escape without its pair parses to a string no file system, database or UTF-8
        # answer can hold: refuse it here, whatever field it is in.
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise APIError(400, "Invalid JSON: a string holds a lone surrogate (not text).") from None
    return value


def exception_answer(handler: web.RequestHandler, e: BaseException) -> APIError:
    """The JSON error a request that raised `e` answers, for every kind of handler: its own
    APIError, a client's mistake Tornado found (4xx), 503 while the database cannot be reached
    (the client retries, by then maybe at a new leader), else 500, logged with its trace."""
    if isinstance(e, APIError):
        return e
    request = handler.request
    if isinstance(e, web.HTTPError) and e.status_code < 500:
        message = "Not found." if e.status_code == 404 else (e.log_message or e.reason or "Bad request.")
        return APIError(e.status_code, message)
    if unavailable(e):
        # One line: the database's trouble, not a fault here to trace.
        cause = str(getattr(e, "orig", None) or e).strip().split("\n", 1)[0]
        log.warning("Database unavailable: %s %s: %s", request.method, request.path, cause)
        return retry_later(DATABASE_UNAVAILABLE)
    log.error("Uncaught exception %s %s", request.method, request.path, exc_info=e)
    return APIError(500, "A server error occurred.")


@web.stream_request_body
class BaseHandler(Components, AnswersBeforeBody):
    """JSON-only handler. Bodies are streamed in so an oversize one is refused before it is read."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")
    # Open endpoints ignore UWS-Authorization entirely (contract 1.2).
    auth_required = True
    # The scope (uws.auth.scopes) each method needs, checked in prepare() and nowhere else;
    # None: any authenticated request. Every method a handler serves must be named here
    # (tests/unit/test_unit_scopes.py checks each route's handler).
    required_scopes: dict[str, str | None] = {"GET": "read", "HEAD": "read"}
    # This request's audit line, as `audit` declared it (class defaults: a request that declares
    # nothing and is answered without an error costs one attribute check in on_finish).
    _audit: Declared | None = None
    _error: APIError | None = None

    def initialize(self) -> None:
        self._chunks: list[bytes] = []
        self._received = 0
        self._body_limit = self.config.max_json_body_size  # prepare() settles it per request
        self.user: Any = None
        # What authenticated the request, as a UWS-Authorization value ("Token <key>"), also
        # when it was the browser session's cookie ("" when nothing did).
        self.credential = ""

    def compute_etag(self) -> None:
        return None  # answers are small and dynamic; hashing every one costs more than it saves

    # ---- headers -------------------------------------------------------------------------
    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        set_cors_headers(self, self.config.cors_allowed_origins)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "same-origin")
        self.clear_header("Server")

    def options(self, *args: Any, **kwargs: Any) -> None:
        self.set_header("Access-Control-Allow-Methods", ALLOW_METHODS)
        self.set_header("Access-Control-Allow-Headers", ALLOW_HEADERS)
        self.set_header("Access-Control-Max-Age", "86400")
        self.clear_header("Content-Type")
        self.set_status(200)
        self.finish()

    # ---- body ----------------------------------------------------------------------------
    def body_limit(self) -> int:
        """Largest body this request may send. JSON bodies are parsed on the event loop (and
        /tokens/ takes them from anyone), so they get the small limit; uploads override it."""
        return self.config.max_json_body_size

    async def prepare(self) -> None:
        self._body_limit = self.body_limit()
        if self.request.method == "OPTIONS":
            return
        length = self.request.headers.get("Content-Length")
        if length is not None:
            try:
                too_big = int(length) > self._body_limit + DRAIN_BYTES
            except ValueError:
                raise APIError(400, "Invalid Content-Length header.") from None
            if too_big:
                raise APIError(413, BODY_TOO_LARGE)
        if self.request.method not in self.allowed_methods():
            return  # answered with 405 by the method itself
        if self.auth_required:
            self.user, self.credential = await authenticate_request(self)
            require_scope(self.user, self.required_scope())

    def required_scope(self) -> str | None:
        """The scope this request needs; a handler whose methods need different scopes for
        different paths (start vs. upload) overrides this, never checks in the method."""
        return self.required_scopes[str(self.request.method)]

    def data_received(self, chunk: bytes) -> None:
        if self._finished:
            return
        self._received += len(chunk)
        if self._received <= self._body_limit:
            self._chunks.append(chunk)
            return
        # Over the limit (a chunked body has no Content-Length to check up front): nothing more
        # is kept, and body_chunks() answers 413 once the rest has been read and dropped.
        self._chunks = []
        if self._received > self._body_limit + DRAIN_BYTES:
            # Not worth reading any further: answered with `Connection: close` (a chunked body),
            # and the connection closed once the answer is out (AnswersBeforeBody).
            self.send_api_error(APIError(413, BODY_TOO_LARGE))

    def body_chunks(self) -> list[bytes]:
        """The body as received, or 413 when it went over the limit (it was dropped as it came)."""
        if self._received > self._body_limit:
            raise APIError(413, BODY_TOO_LARGE)
        return self._chunks

    @property
    def body(self) -> bytes:
        chunks = self.body_chunks()
        if chunks:
            self.request.body = b"".join(chunks)
            self._chunks = [self.request.body]
        return self.request.body or b""

    def json_body(self) -> dict[str, Any]:
        """The body as a JSON object, whatever the Content-Type (contract 1.6)."""
        try:
            value = decode_json(self.body)
        except UnicodeDecodeError as e:
            raise APIError(400, f"Invalid JSON: {e}") from None
        except json.JSONDecodeError as e:
            raise APIError(400, f"Invalid JSON: {e}") from None
        if not isinstance(value, dict):
            raise APIError(400, "Invalid JSON: expected a JSON object.")
        return value

    # ---- query ---------------------------------------------------------------------------
    def query_value(self, key: str) -> str | None:
        values = self.request.query_arguments.get(key)
        if not values:
            return None
        return values[-1].decode("utf-8", "replace")

    def query_int(self, key: str) -> int | None:
        value = self.query_value(key)
        if value is None:
            return None
        try:
            number = int(value.strip())
        except ValueError:
            number = None
        if number is None or not -(2**63) <= number < 2**63:
            raise APIError(400, f"Invalid value for query parameter {key}: {value}")
        return number

    def query_bool(self, key: str) -> bool | None:
        value = self.query_value(key)
        if value is None:
            return None
        try:
            return parse_bool(value)
        except ValueError:
            raise APIError(400, f"Invalid value for query parameter {key}: {value}") from None

    # ---- answers -------------------------------------------------------------------------
    def send_json(self, payload: dict[str, Any] | bytes, status: int = 200) -> None:
        self.set_status(status)
        if isinstance(payload, bytes):
            self.finish(payload)
        else:
            self.finish(json.dumps(payload))

    def ok(self, message: str, data: dict[str, Any] | None = None) -> None:
        payload: dict[str, Any] = {"message": message, "success": True}
        if data is not None:
            payload["data"] = data
        self.send_json(payload)

    def send_api_error(self, error: APIError) -> None:
        if self._finished:
            return
        self._error = error
        if error.refused and self._audit is None:
            self._audit = refused_request(self)
        self.clear()
        send_error(self, error)

    # ---- audit ---------------------------------------------------------------------------
    def audit(self, action: str, obj: str | None = None, **details: Any) -> None:
        """Declare this request's audit action (uws.audit.ACTIONS), the object it acts on
        ("workspace:12") and details (ids, counts; never a credential or a body). One line is
        written when the answer has gone out, with the actor (self.user), the client's address
        and the outcome the answer had; a later call replaces what an earlier one said (an
        object known only once it is made)."""
        self._audit = (action, obj, details)

    def on_finish(self) -> None:
        if self._audit is not None:
            record_answer(self, self._audit, self.user, self._error)

    def allowed_methods(self) -> list[str]:
        cls = type(self)
        return [
            m
            for m in HANDLER_METHODS
            if getattr(cls, m.lower()) is not getattr(web.RequestHandler, m.lower())
        ] + ["OPTIONS"]

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, APIError):
            self.send_api_error(e)
            return
        if isinstance(e, web.HTTPError) and e.status_code == 405:
            self.method_not_allowed()
            return
        self.send_api_error(exception_answer(self, e))

    def method_not_allowed(self) -> None:
        allow = ", ".join(self.allowed_methods())
        self.send_api_error(APIError(405, f'Method "{self.request.method}" not allowed.', {"Allow": allow}))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        write_json_error(self, status_code)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, APIError):
            return
        super().log_exception(typ, value, tb)


class NotFoundHandler(BaseHandler):
    """Every unknown route: a JSON 404, and a CORS preflight like any other path."""

    auth_required = False

    async def prepare(self) -> None:
        if self.request.method == "OPTIONS":
            return
        raise APIError(404, "Not found.")
