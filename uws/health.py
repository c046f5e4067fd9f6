"""Health for /status/: whether each configured resource, login method and storage answers.

Every outbound call has a timeout, and the report is kept for a few seconds, so /status/ can be
polled freely without the server polling its dependencies at the same rate."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from typing import TYPE_CHECKING, Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets import Float, Unicode
from traitlets.config import LoggingConfigurable

from . import __version__

if TYPE_CHECKING:
    from .auth.base import Authenticator
    from .spawners import SpawnerFactory

CACHE_SECONDS = 5.0
NOT_CONFIGURED = {"connected": False, "message": "Not configured."}


async def check_url(url: str, timeout: float = 5.0) -> tuple[bool, str]:
    if not url:
        return False, "No health_check_url configured."
    try:
        response = await AsyncHTTPClient().fetch(
            url, request_timeout=timeout, connect_timeout=timeout, raise_error=False
        )
    except Exception as e:
        return False, repr(e)
    if response.code != 200:
        if response.code == 599:
            return False, repr(response.error)
        return False, f"Invalid status code: {response.code}"
    return True, "Connected successfully."


def build_id() -> str:
    """$UWS_BUILD, else the short git commit of this checkout, else ""."""
    build = os.environ.get("UWS_BUILD", "").strip()
    if build:
        return build
    try:
        out = subprocess.run(
            ["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=2,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


class StatusReporter(LoggingConfigurable):
    """The dependencies part of /status/, from the configuration in the original format (so
    every resource, login method and storage a config.json lists is reported)."""

    check_timeout = Float(5.0, help="Seconds each /status/ health check may take.").tag(config=True)
    build = Unicode(
        "", help="Build id shown by /status/. Default: $UWS_BUILD, else the git commit if known."
    ).tag(config=True)

    def __init__(
        self,
        original: dict[str, Any],
        authenticator: Authenticator,
        storage: Any,
        spawners: SpawnerFactory,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.original = original
        self.main_resource_key: str = original["main_resource"]
        self.api_auth_key: str = original["api_user_authentication"]
        self.authenticator = authenticator
        self.storage = storage
        self.spawners = spawners
        # Looked up once, at start-up: never in a /status/ request.
        self.build = self.build or build_id()
        self._cache: tuple[float, dict[str, Any]] | None = None

    async def resource_health(self, key: str, entry: dict[str, Any]) -> dict[str, Any]:
        url = (entry.get("connection_details") or {}).get("health_check_url", "")
        if key == self.main_resource_key and not url:
            # The spawner knows how to ask its own resource (Slurm: is the controller up).
            answer = await self.spawners.resource().health()
            if answer is not None:
                return {"connected": answer[0], "message": answer[1]}
        if entry.get("resource_type") == "LocalResource":
            return {"connected": True, "message": "Connected successfully."}
        ok, msg = await check_url(url, self.check_timeout)
        return {"connected": ok, "message": msg}

    async def auth_health(self, key: str, entry: dict[str, Any]) -> dict[str, Any]:
        if key == self.api_auth_key:
            ok, msg = await self.authenticator.health()
        elif entry.get("user_authentication_type") == "LocalUserAuthentication":
            ok, msg = True, "Connected successfully."
        else:
            url = (entry.get("connection_details") or {}).get("health_check_url", "")
            ok, msg = await check_url(url, self.check_timeout)
        return {"connected": ok, "message": msg}

    async def report(self) -> dict[str, Any]:
        if self._cache is not None and time.monotonic() - self._cache[0] < CACHE_SECONDS:
            return self._cache[1]
        original = self.original
        res_keys = list(original["available_resources"])
        auth_items = list(original["available_user_authentication"].items())
        results = await asyncio.gather(
            *(self.resource_health(k, original["available_resources"][k]) for k in res_keys),
            *(self.auth_health(k, e) for k, e in auth_items),
        )
        resources = dict(zip(res_keys, results[: len(res_keys)], strict=True))
        auths = dict(zip([k for k, _ in auth_items], results[len(res_keys) :], strict=True))
        ok, msg = self.storage.health()
        storages = {key: {"connected": ok, "message": msg} for key in original["available_storage"]}
        report = {
            "message": "",
            "success": True,
            "version": __version__,
            "build": self.build,
            "dependencies": {
                "main_resource": resources.get(self.main_resource_key, NOT_CONFIGURED),
                "api_user_authentication": auths.get(self.api_auth_key, NOT_CONFIGURED),
                "resources": resources,
                "storage_methods": storages,
                "user_authentication_methods": auths,
            },
        }
        self._cache = (time.monotonic(), report)
        return report


__all__ = ["check_url", "HTTPClientError", "StatusReporter"]
