"""Health checks for /status/: every outbound call has a timeout (S10)."""

from __future__ import annotations

from tornado.httpclient import AsyncHTTPClient, HTTPClientError


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


__all__ = ["check_url", "HTTPClientError"]
