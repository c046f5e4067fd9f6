"""Where the server reaches a Slurm node: the passthrough's target host for the sessions on it.

The node is the one Slurm reports for the job; its address comes from the configured node
address map (SlurmBase.node_addresses) or, without one, from Slurm's NodeAddr for the node (one
query for all nodes, cached). Never from the helper, which the session's owner controls: its
claim is only checked against this.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from traitlets import TraitError

if TYPE_CHECKING:
    from .slurm import SlurmBase

# One host name (a node list such as "n[1-2]" or "n1,n2" is not one).
NODE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})")


def is_address(text: str) -> bool:
    """Whether `text` is an IP address or a host name (no port, scheme, path or list)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return bool(NODE_NAME.fullmatch(text))
    return True


def check_node_addresses(mapping: dict[str, str]) -> dict[str, str]:
    """SlurmBase.node_addresses as configured: node names to addresses, or TraitError."""
    for node, address in mapping.items():
        if not NODE_NAME.fullmatch(node) or not is_address(address):
            raise TraitError(
                "node_addresses maps Slurm node names to an IP address or host name each"
                f" (no port or scheme), not {node!r}: {address!r}"
            )
    return mapping


class NodeAddresses:
    """Slurm's NodeAddr of every node, as one spawner class asks for it: refreshed when older
    than `max_age` or when a node it does not know is asked about (a node added since), at most
    one query at a time."""

    def __init__(self) -> None:
        self.addresses: dict[str, str] = {}
        self.fetched_at = -float("inf")  # monotonic
        self._lock: asyncio.Lock | None = None

    async def lookup(
        self, node: str, fetch: Callable[[], Awaitable[dict[str, str]]], max_age: float
    ) -> str | None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            fresh = time.monotonic() - self.fetched_at < max_age
            if node not in self.addresses or not fresh:
                asked = time.monotonic()
                self.addresses, self.fetched_at = await fetch(), asked
            return self.addresses.get(node)


CACHES: dict[type, NodeAddresses] = {}  # one per spawner class


async def node_address(spawner: SlurmBase, node: str) -> str | None:
    """Where the server reaches the Slurm node `node` that a job of `spawner` runs on: the
    configured map, else Slurm's NodeAddr; None (logged) for what is not one node or not known."""
    if not NODE_NAME.fullmatch(node):
        return None
    if spawner.node_addresses:
        address = spawner.node_addresses.get(node)
    else:
        cache = CACHES.setdefault(type(spawner), NodeAddresses())
        address = await cache.lookup(node, spawner.fetch_node_addresses, spawner.node_address_seconds)
    if address is None or not is_address(address):
        spawner.log.warning(
            "Slurm job %s runs on node %s, whose address is not known (%r)",
            spawner.slurm_job_id,
            node,
            address,
        )
        return None
    return address
