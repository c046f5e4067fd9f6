"""The Globus calls a login makes, through globus-sdk: the OAuth authorize URL and code
exchange, token introspection, and the caller's groups.

globus_sdk is imported only when a call is made, so start-up stays fast. Every SDK call blocks,
so it runs on a worker thread, with connect and read timeouts on the SDK's transport and at most
one retry (S10). Failures become the login's answers: a rejected credential is 401, the rest 500.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import APIError, not_authenticated

# The authenticator's logger: these calls are part of its logins.
log = logging.getLogger("uws.auth.globus")

T = TypeVar("T")

AUTH_RESOURCE_SERVER = "auth.globus.org"
GROUPS_RESOURCE_SERVER = "groups.api.globus.org"
GROUPS_SCOPE = f"urn:globus:auth:scope:{GROUPS_RESOURCE_SERVER}:view_my_groups_and_memberships"
OAUTH_SCOPES = ("openid", "profile", "email", GROUPS_SCOPE)

INVALID_CREDENTIALS = "Incorrect authentication credentials."
SERVER_ERROR = "A server error occurred."


class GroupsUnavailable(Exception):
    """The Groups API could not answer: membership is then treated as none (fail closed)."""


class GlobusAPI:
    """This server's Globus Auth client (id and secret) and the timeouts of every call."""

    def __init__(
        self, client_id: str, client_secret: str, connect_timeout: float, read_timeout: float
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout

    # ---- the calls, as a login makes them ------------------------------------------------
    async def authorize_url(self, redirect_url: str, state: str = "_default") -> str:
        """Globus' sign-in page; `state` comes back on the redirect (a browser sign-in checks it)."""
        return await self._blocking(lambda: self._authorize_url(redirect_url, state))

    async def exchange_code(self, redirect_url: str, code: str) -> dict[str, str]:
        """Access tokens by resource server."""
        try:
            return await self._blocking(lambda: self._exchange_code_sync(redirect_url, code))
        except APIError:
            raise
        except Exception as e:
            raise self._sdk_failure("code exchange", e, bad_request_means_invalid=True) from None

    async def identity(self, token: str) -> dict[str, str]:
        """The token's Globus identity: sub, email, name, username; 401 unless it is active."""
        try:
            info = await self._blocking(lambda: self._introspect_sync(token))
        except Exception as e:
            raise self._sdk_failure("token introspection", e, bad_request_means_invalid=True) from None
        if info.get("active") is not True or not info.get("sub"):
            raise not_authenticated(INVALID_CREDENTIALS)
        exp = info.get("exp")
        if isinstance(exp, (int, float)) and not isinstance(exp, bool) and exp < time.time():
            raise not_authenticated(INVALID_CREDENTIALS)

        def text(key: str) -> str:
            value = info.get(key)
            return value.strip() if isinstance(value, str) else ""

        return {
            "sub": str(info["sub"]),
            "email": text("email"),
            "name": text("name"),
            "username": text("username") or text("preferred_username"),
        }

    async def my_groups(self, groups_token: str) -> set[str]:
        """Ids of the groups the token's identity is an active member of; GroupsUnavailable
        when the Groups API cannot say."""
        return await self._blocking(lambda: self._my_groups_sync(groups_token))

    # ---- blocking, on a worker thread ----------------------------------------------------
    async def _blocking(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, fn)

    def _tune(self, client: Any) -> Any:
        # requests accepts a (connect, read) pair; the SDK hands http_timeout through as is.
        client.transport.http_timeout = (self.connect_timeout, self.read_timeout)
        return client

    def _retry_config(self) -> Any:
        from globus_sdk.transport import RetryConfig

        return RetryConfig(max_retries=1, max_sleep=1)

    def _auth_client(self) -> Any:
        import globus_sdk

        client = globus_sdk.ConfidentialAppAuthClient(
            self.client_id, self.client_secret, retry_config=self._retry_config()
        )
        return self._tune(client)

    def _authorize_url(self, redirect_url: str, state: str) -> str:
        with self._auth_client() as client:
            client.oauth2_start_flow(redirect_url, OAUTH_SCOPES, state=state)
            return str(client.oauth2_get_authorize_url())

    def _exchange_code_sync(self, redirect_url: str, code: str) -> dict[str, str]:
        with self._auth_client() as client:
            client.oauth2_start_flow(redirect_url, OAUTH_SCOPES)
            response = client.oauth2_exchange_code_for_tokens(code)
            return {
                str(rs): str(info.get("access_token") or "")
                for rs, info in response.by_resource_server.items()
                if info.get("access_token")
            }

    def _introspect_sync(self, token: str) -> dict[str, Any]:
        with self._auth_client() as client:
            data = client.oauth2_token_introspect(token).data
            return dict(data) if isinstance(data, dict) else {}

    def _my_groups_sync(self, groups_token: str) -> set[str]:
        import globus_sdk

        try:
            with self._tune(
                globus_sdk.GroupsClient(
                    authorizer=globus_sdk.AccessTokenAuthorizer(groups_token),
                    retry_config=self._retry_config(),
                )
            ) as client:
                groups = list(client.get_my_groups(statuses="active"))
        except Exception as e:
            raise GroupsUnavailable(str(e)) from e
        ids: set[str] = set()
        for group in groups:
            if not isinstance(group, dict) or not group.get("id"):
                continue
            memberships = group.get("my_memberships")
            if isinstance(memberships, list) and not any(
                isinstance(m, dict) and m.get("status") == "active" for m in memberships
            ):
                continue
            ids.add(str(group["id"]))
        return ids

    def _sdk_failure(self, what: str, error: Exception, *, bad_request_means_invalid: bool) -> APIError:
        """Turn an SDK error into the answer: a rejected credential is 401, the rest 500."""
        status = getattr(error, "http_status", None)
        if isinstance(status, int) and status == 400 and bad_request_means_invalid:
            log.info("Globus %s rejected the credential: %s", what, error)
            return not_authenticated(INVALID_CREDENTIALS)
        if status in (401, 403):
            log.error("Globus Auth refused this server's client credentials during %s: %s", what, error)
        else:
            log.error("Globus %s failed: %r", what, error)
        return APIError(500, SERVER_ERROR)
