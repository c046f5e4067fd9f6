"""GET /metrics: the server's metrics in Prometheus' text format (uws.metrics)."""

from __future__ import annotations

from ..errors import APIError
from .base import BaseHandler

# The classic text format (0.0.4): what every Prometheus server reads. (prometheus_client's
# CONTENT_TYPE names 1.0.0, which only Prometheus 3 knows; the body is the same.)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NO_METRICS_RIGHT = "Reading the metrics needs an admin's token or a token with the metrics scope."


class MetricsHandler(BaseHandler):
    # Who may read is decided in get() (the `metrics` scope, unless c.UWSApp.metrics_public
    # opens it to anyone), so prepare() neither authenticates nor checks a scope.
    auth_required = False
    required_scopes = {"GET": "metrics"}

    async def get(self) -> None:
        metrics = self.metrics
        if metrics is None:  # c.UWSApp.metrics_enabled = False
            raise APIError(404, "Not found.")
        if not self.config.metrics_public:
            headers = self.request.headers
            # Prometheus sends its credentials in the standard header (authorization: or
            # bearer_token in a scrape config); the rest of the API reads only UWS-Authorization.
            user = await self.auth.authenticate(
                headers.get("UWS-Authorization") or headers.get("Authorization")
            )
            if not user.may("metrics"):
                raise APIError(403, NO_METRICS_RIGHT)
        body = await metrics.render()
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(body)


default_handlers = [(r"/metrics", MetricsHandler)]
