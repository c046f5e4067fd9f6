"""What handlers may use, and nothing more: typed accessors over the Tornado settings.

UWSApp.init_webapp puts each service and the configured values handlers apply into the Tornado
application's settings (JupyterHub's way); this is the one place that says what each of them
is, and (web_settings) where each comes from. Handlers never reach into the application object
itself, so what they depend on is written down here and a type checker can follow it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..admin import AdminService
    from ..app import UWSApp
    from ..audit import AuditLog
    from ..auth.base import Authenticator
    from ..auth.tokens import TokenService
    from ..db import Database
    from ..events import EventBus
    from ..leadership import Leadership
    from ..metrics import ServerMetrics
    from ..passthrough import ProxyService, SessionHosts
    from ..quotas import QuotaService
    from ..sessions.service import JobService
    from ..shares import ShareService
    from ..websockets import TicketStore, WebSocketCounter
    from ..webui import WebUI
    from ..workspaces import WorkspaceService


@dataclass(frozen=True)
class WebConfig:
    """The configured values handlers apply, read once when the web application is built."""

    max_json_body_size: int
    max_body_size: int
    max_details_bytes: int
    users_min_search_length: int
    cors_allowed_origins: tuple[str, ...]
    job_types: dict[str, Any]
    parameters: list[Any]
    share_dir: str
    passthrough_mode: str
    # scheme://host[:port] that session links start from (https makes access cookies Secure).
    sessions_base: str
    proxy_connect_timeout: float
    proxy_request_timeout: float
    # /metrics without a token (UWSApp.metrics_public).
    metrics_public: bool


def web_settings(app: UWSApp) -> dict[str, Any]:
    """The Tornado settings of the assembled server: what the accessors below read."""
    config = WebConfig(
        max_json_body_size=app.max_json_body_size,
        max_body_size=app.max_body_size,
        max_details_bytes=app.max_details_bytes,
        users_min_search_length=app.users_min_search_length,
        cors_allowed_origins=tuple(app.cors_allowed_origins),
        job_types=app.job_types,
        parameters=app.parameters,
        share_dir=app.share_dir,
        passthrough_mode=app.passthrough_mode,
        sessions_base=app.session_urls.base(),
        proxy_connect_timeout=app.proxy.connect_timeout,
        proxy_request_timeout=app.proxy.request_timeout,
        metrics_public=app.metrics_public,
    )
    return {
        "web_config": config,
        "app": app,
        "db": app.db,
        "auth": app.auth_service,
        "authenticator": app.authenticator,
        "workspaces": app.workspaces,
        "shares": app.shares,
        "jobs": app.jobs,
        "quotas": app.quotas,
        "admin": app.admin,
        "events": app.events,
        "tickets": app.tickets,
        "websockets": app.websockets,
        "proxy": app.proxy,
        "session_hosts": app.session_urls.hosts,
        "status_report": app.health.report,
        "audit_log": app.audit_log,
        "metrics": app.metrics,
        "leadership": app.leadership,
        "web_ui": app.web_ui,
        # Tornado's signed cookies (the browser session's) and the sign-in form's XSRF cookie.
        "cookie_secret": app.web_ui.cookie_secret if app.web_ui is not None else None,
        "xsrf_cookie_kwargs": {"httponly": True, "samesite": "Lax"},
    }


class Components:
    """Typed access to the server's parts. Mixed into handlers, whose `settings` is the Tornado
    application's; code outside a handler (the front door) uses `SettingsComponents`."""

    settings: dict[str, Any]

    @property
    def config(self) -> WebConfig:
        return self.settings["web_config"]

    @property
    def db(self) -> Database:
        return self.settings["db"]

    @property
    def auth(self) -> TokenService:
        """Checks and revokes UWS-Authorization tokens."""
        return self.settings["auth"]

    @property
    def authenticator(self) -> Authenticator:
        return self.settings["authenticator"]

    @property
    def app(self) -> UWSApp:
        """Only for the Authenticator, whose login contract takes the application."""
        return self.settings["app"]

    @property
    def workspaces(self) -> WorkspaceService:
        return self.settings["workspaces"]

    @property
    def shares(self) -> ShareService:
        return self.settings["shares"]

    @property
    def jobs(self) -> JobService:
        return self.settings["jobs"]

    @property
    def quotas(self) -> QuotaService:
        return self.settings["quotas"]

    @property
    def admin(self) -> AdminService:
        """The /admin/ endpoints' actions."""
        return self.settings["admin"]

    @property
    def events(self) -> EventBus:
        return self.settings["events"]

    @property
    def tickets(self) -> TicketStore:
        return self.settings["tickets"]

    @property
    def websockets(self) -> WebSocketCounter:
        return self.settings["websockets"]

    @property
    def proxy(self) -> ProxyService:
        """The passthrough's targets, access cookies and activity counts."""
        return self.settings["proxy"]

    @property
    def session_hosts(self) -> SessionHosts:
        return self.settings["session_hosts"]

    @property
    def audit_log(self) -> AuditLog:
        """The audit log; REST handlers write to it through BaseHandler.audit."""
        return self.settings["audit_log"]

    @property
    def metrics(self) -> ServerMetrics | None:
        """The server's metrics; None when they are off (UWSApp.metrics_enabled)."""
        return self.settings["metrics"]

    @property
    def leadership(self) -> Leadership:
        """Whether this server leads or stands by (a standby serves only STANDBY_PATHS)."""
        return self.settings["leadership"]

    @property
    def web_ui(self) -> WebUI | None:
        """The web interface's templates and browser sessions; None when it is off."""
        return self.settings["web_ui"]

    @property
    def status_report(self) -> Callable[[], Awaitable[dict[str, Any]]]:
        return self.settings["status_report"]


class SettingsComponents(Components):
    """The same accessors over a settings dict held directly (the front door, the fast path)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
