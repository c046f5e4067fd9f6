"""Where a session's app listens: 127.0.0.1 for sessions on the server's machine; for Slurm
sessions, the address the server reaches the node at (the node address map the server put in
job.json, or Slurm's NodeAddr for the node). The server works the address out for itself as well
(uws.spawners.slurm_nodes) and connects only there: the helper's report is checked against it.

Part of the helper (uws.sessions.helper), so it imports neither tornado nor the server's modules;
the server shares its parsing of scontrol's answer.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from typing import Any

LOOPBACK = "127.0.0.1"
# job.json's "listen" for a session in a Slurm allocation (anything else: loopback).
ON_SLURM_NODE = "slurm_node"
SCONTROL_TIMEOUT = 20.0  # seconds

# One field of `scontrol show node -o` (a line per node; some values hold spaces, these do not).
_NODE_NAME_FIELD = re.compile(r"(?:^|\s)NodeName=(\S+)")
_NODE_ADDR_FIELD = re.compile(r"(?:^|\s)NodeAddr=(\S+)")


class NodeAddressError(ValueError):
    """The node's address cannot be told; the message is for the session's owner."""


def parse_node_addresses(text: str) -> dict[str, str]:
    """Node name -> NodeAddr, from the output of `scontrol show node -o`."""
    addresses = {}
    for line in text.splitlines():
        name, addr = _NODE_NAME_FIELD.search(line), _NODE_ADDR_FIELD.search(line)
        if name and addr:
            addresses[name.group(1)] = addr.group(1)
    return addresses


def unmapped_node_message(node: str) -> str:
    return (
        f"Slurm placed the session on node {node}, which is not in the server's node address map "
        "(c.SlurmBase.node_addresses), so the server cannot reach it there. Please contact your "
        "administrator."
    )


def listen_host(job: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> str:
    """The address the app listens on, and the helper reports, for job.json `job`."""
    if job.get("listen") != ON_SLURM_NODE:
        return LOOPBACK
    node = environ.get("SLURMD_NODENAME", "")
    if not node:
        raise NodeAddressError("the session runs on Slurm, but SLURMD_NODENAME is not set")
    mapped = job.get("node_addresses")
    if isinstance(mapped, dict) and mapped:
        address = mapped.get(node)
        if not isinstance(address, str) or not address:
            raise NodeAddressError(unmapped_node_message(node))
        return address
    try:
        out = subprocess.run(
            ["scontrol", "show", "node", "-o", node],
            capture_output=True,
            text=True,
            timeout=SCONTROL_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NodeAddressError(f"could not ask Slurm for node {node}'s address: {e}") from None
    address = parse_node_addresses(out.stdout).get(node)
    if not address:
        said = (out.stderr or out.stdout).strip()[:200]
        raise NodeAddressError(f"Slurm did not tell node {node}'s address (NodeAddr): {said}")
    return address
