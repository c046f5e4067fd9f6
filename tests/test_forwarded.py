"""uws/forwarded.py in-process: which peers' X-Forwarded-* headers are believed, and what they
say. (The end-to-end checks are in test_front_door.py and test_hostile_app.py.)"""

from __future__ import annotations

import pytest

from uws.forwarded import ProxyTrust
from uws.passthrough.head import Head

from helpers.configs import LOCAL_CONFIG
from helpers.harness import Server


def origin(trust: ProxyTrust, peer: str, **headers: str) -> tuple[str, str]:
    head = Head((name.replace("_", "-"), value) for name, value in headers.items())
    return trust.origin(peer, trust.trusts(peer), head, "http")


def test_nothing_is_trusted_by_default() -> None:
    trust = ProxyTrust([])
    assert not trust.trusts("127.0.0.1")
    assert origin(trust, "127.0.0.1", X_Forwarded_For="1.2.3.4", X_Forwarded_Proto="https") == (
        "127.0.0.1",
        "http",
    )


def test_trusted_networks() -> None:
    trust = ProxyTrust(["127.0.0.1", "10.0.0.0/8", "fd00::/8"])
    assert trust.trusts("127.0.0.1") and trust.trusts("10.20.30.40") and trust.trusts("fd00::1")
    assert trust.trusts("::ffff:127.0.0.1")  # an IPv4 peer on a dual-stack socket
    assert not trust.trusts("127.0.0.2") and not trust.trusts("192.168.1.1") and not trust.trusts("nonsense")


def test_forwarded_for_is_read_from_the_right() -> None:
    trust = ProxyTrust(["127.0.0.1", "10.0.0.0/8"])
    assert origin(trust, "127.0.0.1", X_Forwarded_For="6.6.6.6, 203.0.113.1") == ("203.0.113.1", "http")
    assert origin(trust, "127.0.0.1", X_Forwarded_For="203.0.113.1, 10.1.1.1") == ("203.0.113.1", "http")
    assert origin(trust, "127.0.0.1", X_Forwarded_For="10.2.2.2, 10.1.1.1") == ("10.2.2.2", "http")
    assert origin(trust, "127.0.0.1", X_Forwarded_For="6.6.6.6, junk, 10.1.1.1") == ("10.1.1.1", "http")
    # X-Forwarded-For, when present, wins over X-Real-Ip (which a proxy may pass on unchanged)
    assert origin(trust, "127.0.0.1", X_Forwarded_For="203.0.113.1", X_Real_Ip="6.6.6.6")[0] == "203.0.113.1"
    assert origin(trust, "127.0.0.1", X_Real_Ip="203.0.113.2")[0] == "203.0.113.2"
    assert origin(trust, "127.0.0.1", X_Forwarded_Proto="https")[1] == "https"
    assert origin(trust, "127.0.0.1", X_Forwarded_Proto="gopher")[1] == "http"


@pytest.mark.parametrize("entry", ["not-an-ip", "10.0.0.0/33", ""])
def test_bad_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="trusted_proxies"):
        ProxyTrust([entry])


def test_server_refuses_to_start_with_a_bad_entry() -> None:
    server = Server("sqlite", LOCAL_CONFIG + 'c.FrontServer.trusted_proxies = ["localhost"]\n')
    try:
        with pytest.raises(RuntimeError, match="trusted_proxies: 'localhost'"):
            server.start()
    finally:
        server.close()
