"""A fake Globus Auth + Groups service for the Globus login tests.

It speaks just the part of the two APIs that globus-sdk uses for UWS logins:

- Auth: POST /v2/oauth2/token/introspect (confidential client, HTTP Basic) and
  POST /v2/oauth2/token (authorization-code grant). GET /v2/oauth2/authorize answers a tiny
  page, so an authorize URL pointing here is a real URL.
- Groups: GET /v2/groups/my_groups (Bearer token; honours ?statuses=).

A `uws` server process is pointed at it with globus-sdk's environment overrides
(`FakeGlobus.env()`: GLOBUS_SDK_SERVICE_URL_AUTH and GLOBUS_SDK_SERVICE_URL_GROUPS). The fake runs
on a thread of the test process, so tests change its state directly: add identities, tokens and
codes, make the Groups API fail (`groups_fail_status`), stall (`groups_delay`) or ignore the
`statuses` filter (`groups_ignore_statuses`).
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

AUTH_RS = "auth.globus.org"
GROUPS_RS = "groups.api.globus.org"
GROUPS_SCOPE = "urn:globus:auth:scope:groups.api.globus.org:view_my_groups_and_memberships"


@dataclass
class Identity:
    sub: str
    email: str | None
    name: str | None
    username: str
    # group id -> this identity's membership status in it ("active", "invited", ...)
    groups: dict[str, str] = field(default_factory=dict)


@dataclass
class Token:
    value: str
    identity: Identity
    resource_server: str = GROUPS_RS
    scope: str = GROUPS_SCOPE
    active: bool = True


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    form: dict[str, list[str]]


class FakeGlobus:
    def __init__(self, client_id: str = "uws-test-client", client_secret: str = "uws-test-secret") -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.tokens: dict[str, Token] = {}
        # code -> (redirect_uri it was issued for, tokens the exchange returns)
        self.codes: dict[str, tuple[str, list[Token]]] = {}
        self.requests: list[Request] = []
        self.groups_fail_status: int | None = None
        self.groups_delay = 0.0
        # Answer every membership whatever ?statuses= asks for (as an older API might).
        self.groups_ignore_statuses = False
        self.lock = threading.Lock()
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> FakeGlobus:
        fake = self

        class Handler(_Handler):
            pass

        Handler.fake = fake
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="fake-globus", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    @property
    def url(self) -> str:
        assert self.httpd is not None
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def env(self) -> dict[str, str]:
        """Environment for a server process so that globus-sdk talks to this fake."""
        return {
            "GLOBUS_SDK_SERVICE_URL_AUTH": self.url + "/",
            "GLOBUS_SDK_SERVICE_URL_GROUPS": self.url + "/",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }

    # ---- state -----------------------------------------------------------------------------
    def add_identity(
        self,
        email: str | None,
        name: str | None = "Test User",
        groups: dict[str, str] | list[str] | None = None,
        username: str | None = None,
    ) -> Identity:
        if isinstance(groups, list):
            groups = dict.fromkeys(groups, "active")
        return Identity(
            sub=str(uuid.uuid4()),
            email=email,
            name=name,
            username=username or f"{(email or 'someone@x').split('@')[0]}@globusid.org",
            groups=dict(groups or {}),
        )

    def add_token(
        self,
        identity: Identity,
        *,
        active: bool = True,
        resource_server: str = GROUPS_RS,
        scope: str = GROUPS_SCOPE,
    ) -> str:
        value = "globus-" + secrets.token_urlsafe(24)
        with self.lock:
            self.tokens[value] = Token(value, identity, resource_server, scope, active)
        return value

    def add_code(self, identity: Identity, redirect_uri: str, with_groups_token: bool = True) -> str:
        """An authorization code whose exchange returns an Auth token (and a groups token)."""
        issued = [
            self.tokens[self.add_token(identity, resource_server=AUTH_RS, scope="openid profile email")]
        ]
        if with_groups_token:
            issued.append(self.tokens[self.add_token(identity)])
        code = "code-" + secrets.token_urlsafe(16)
        with self.lock:
            self.codes[code] = (redirect_uri, issued)
        return code

    def requests_to(self, path: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    # ---- answers ---------------------------------------------------------------------------
    def client_authenticated(self, headers: dict[str, str]) -> bool:
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        return headers.get("authorization", "") == f"Basic {expected}"

    def introspect(self, req: Request) -> tuple[int, Any]:
        if not self.client_authenticated(req.headers):
            return 401, {"error": "invalid_client", "errors": [{"code": "UNAUTHORIZED", "status": "401"}]}
        value = (req.form.get("token") or [""])[0]
        token = self.tokens.get(value)
        if token is None or not token.active:
            return 200, {"active": False}
        now = int(time.time())
        ident = token.identity
        return 200, {
            "active": True,
            "token_type": "Bearer",
            "scope": token.scope,
            "client_id": self.client_id,
            "sub": ident.sub,
            "username": ident.username,
            "name": ident.name,
            "email": ident.email,
            "aud": [token.resource_server, self.client_id],
            "iss": "https://auth.globus.org",
            "exp": now + 3600,
            "iat": now,
            "nbf": now,
        }

    def token(self, req: Request) -> tuple[int, Any]:
        if not self.client_authenticated(req.headers):
            return 401, {"error": "invalid_client", "errors": [{"code": "UNAUTHORIZED", "status": "401"}]}
        form = {k: v[0] for k, v in req.form.items()}
        if form.get("grant_type") != "authorization_code":
            return 400, {"error": "unsupported_grant_type"}
        with self.lock:
            entry = self.codes.pop(form.get("code", ""), None)  # codes are single-use
        if entry is None or entry[0] != form.get("redirect_uri"):
            return 400, {"error": "invalid_grant"}

        def as_json(t: Token) -> dict[str, Any]:
            return {
                "access_token": t.value,
                "scope": t.scope,
                "resource_server": t.resource_server,
                "expires_in": 172800,
                "token_type": "Bearer",
            }

        first, *others = entry[1]
        return 200, {**as_json(first), "state": "_default", "other_tokens": [as_json(t) for t in others]}

    def my_groups(self, req: Request) -> tuple[int, Any]:
        if self.groups_delay:
            time.sleep(self.groups_delay)
        if self.groups_fail_status is not None:
            return self.groups_fail_status, {"code": "ERROR", "detail": "The fake Groups API is failing."}
        auth = req.headers.get("authorization", "")
        token = self.tokens.get(auth[len("Bearer ") :]) if auth.startswith("Bearer ") else None
        if token is None or not token.active or token.resource_server != GROUPS_RS:
            return 401, {"code": "AUTHENTICATION_ERROR", "detail": "Invalid token."}
        wanted = set(",".join(req.query.get("statuses", [])).split(",")) - {""}
        if self.groups_ignore_statuses:
            wanted = set()
        ident = token.identity
        groups = []
        for gid, status in ident.groups.items():
            if wanted and status not in wanted:
                continue
            groups.append(
                {
                    "id": gid,
                    "name": f"Group {gid[:8]}",
                    "group_type": "regular",
                    "my_memberships": [
                        {
                            "group_id": gid,
                            "identity_id": ident.sub,
                            "username": ident.username,
                            "role": "member",
                            "status": status,
                        }
                    ],
                }
            )
        return 200, groups


class _Handler(BaseHTTPRequestHandler):
    fake: FakeGlobus
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _request(self) -> Request:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode() if length else ""
        req = Request(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            form=parse_qs(raw),
        )
        with self.fake.lock:
            self.fake.requests.append(req)
        return req

    def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        req = self._request()
        if req.path == "/v2/oauth2/token/introspect":
            self._send(*self.fake.introspect(req))
        elif req.path == "/v2/oauth2/token":
            self._send(*self.fake.token(req))
        else:
            self._send(404, {"error": "not_found"})

    def do_GET(self) -> None:
        req = self._request()
        if req.path == "/v2/groups/my_groups":
            try:
                self._send(*self.fake.my_groups(req))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout tests)
        elif req.path == "/v2/oauth2/authorize":
            self._send(200, "<html><body>Fake Globus login</body></html>", "text/html")
        else:
            self._send(404, {"error": "not_found"})
