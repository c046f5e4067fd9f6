"""Where a request came from: the peer's address, or what a trusted proxy says in X-Forwarded-*.

Anyone who can reach the server's port directly (another local account, a session app, a
neighbour on the network) can send X-Forwarded-For or X-Forwarded-Proto. Those headers are read
only on connections from an address in `FrontServer.trusted_proxies`; the front door and Tornado's
HTTPServer both ask `ProxyTrust`, so they cannot disagree.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from tornado import httpserver, iostream, netutil


class ProxyTrust:
    """The configured proxies, and what a request's headers say once the peer is one of them."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.networks = []
        for entry in entries:
            try:
                self.networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                raise ValueError(f"trusted_proxies: {entry!r} is not an IP address or CIDR network") from None

    def trusts(self, ip: str) -> bool:
        if not self.networks or not ip:
            return False
        try:
            address = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def origin(self, peer_ip: str, peer_trusted: bool, headers: Any, protocol: str) -> tuple[str, str]:
        """The client's address and scheme. From a trusted proxy: X-Forwarded-For read from the
        right, past every hop that is itself a trusted proxy (the left part is whatever the client
        sent), else X-Real-Ip; X-Forwarded-Proto, else X-Scheme. From anyone else: the peer."""
        if not peer_trusted:
            return peer_ip, protocol
        ip = peer_ip
        forwarded = headers.get("X-Forwarded-For")
        if forwarded:
            hops = [hop.strip() for hop in forwarded.split(",")][-32:]
            for hop in reversed(hops):
                if not netutil.is_valid_ip(hop):
                    break  # a garbled hop: believe nothing left of it
                ip = hop
                if not self.trusts(hop):
                    break
        else:
            real = headers.get("X-Real-Ip")
            if real is not None and netutil.is_valid_ip(real.strip()):
                ip = real.strip()
        scheme = headers.get("X-Forwarded-Proto", headers.get("X-Scheme"))
        if scheme:
            scheme = scheme.split(",")[-1].strip().lower()
            if scheme in ("http", "https"):
                protocol = scheme
        return ip, protocol


class _RequestContext(httpserver._HTTPRequestContext):
    """Tornado's per-connection context, with X-Forwarded-* applied only from trusted proxies."""

    def __init__(self, stream: iostream.IOStream, address: tuple, trust: ProxyTrust) -> None:
        super().__init__(stream, address, None)
        self.trust = trust
        self.peer_trusted = trust.trusts(self.remote_ip)

    def _apply_xheaders(self, headers: Any) -> None:
        self.remote_ip, self.protocol = self.trust.origin(
            self._orig_remote_ip, self.peer_trusted, headers, self._orig_protocol
        )


class TrustingHTTPServer(httpserver.HTTPServer):
    """Tornado's HTTPServer with xheaders=True, believing them only from `trust`'s proxies."""

    def initialize(self, *args: Any, trust: ProxyTrust, **kwargs: Any) -> None:  # type: ignore[override]
        kwargs["xheaders"] = True
        super().initialize(*args, **kwargs)
        self.trust = trust

    def handle_stream(self, stream: iostream.IOStream, address: tuple) -> None:
        conn = httpserver.HTTP1ServerConnection(
            stream, self.conn_params, _RequestContext(stream, address, self.trust)
        )
        self._connections.add(conn)
        conn.start_serving(self)
