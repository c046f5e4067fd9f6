"""What may stand as the domain that sessions get their host names under (UWSApp.session_host)."""

from __future__ import annotations

import ipaddress
import re

# Letters, digits and hyphens in dot-separated labels of at most 63 characters, none starting or
# ending with a hyphen: the names DNS, TLS certificates and cookies all accept.
_DNS_NAME = re.compile(
    r"(?=.{1,200}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\Z"
)


def session_domain_name(value: str) -> str | None:
    """`value` (case and a trailing dot ignored) as a domain for session host names, or None.

    An address is never one, in any of the forms browsers read as IPv4 ('127.1', '2130706433',
    '0x7f.1'): browsers treat a name whose last label is a number as an address, so a session
    host name under it would not resolve as a name."""
    name = value.strip().lower().rstrip(".")
    if not _DNS_NAME.fullmatch(name):
        return None
    last = name.rsplit(".", 1)[-1]
    if last.isdigit() or re.fullmatch(r"0x[0-9a-f]*", last):
        return None
    try:
        ipaddress.ip_address(name)
        return None
    except ValueError:
        return name
