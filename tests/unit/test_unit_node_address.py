"""uws/sessions/helper_node.py: the address a session's app listens on and its helper reports,
from job.json and the node Slurm runs the job on. Outside a cluster, `scontrol` is a stand-in
script on PATH that answers as Slurm 22.05 does."""

from __future__ import annotations

import os
from typing import Any

import pytest

from uws.sessions.helper_node import NodeAddressError, listen_host

ON_NODE = {"listen": "slurm_node"}


def test_sessions_off_slurm_listen_on_loopback() -> None:
    assert listen_host({}, {"SLURMD_NODENAME": "r001"}) == "127.0.0.1"
    assert listen_host({"listen": "elsewhere"}, {}) == "127.0.0.1"


def test_the_map_gives_the_node_address() -> None:
    job = {**ON_NODE, "node_addresses": {"r001": "192.168.7.1", "r002": "r002.ib"}}
    assert listen_host(job, {"SLURMD_NODENAME": "r001"}) == "192.168.7.1"
    assert listen_host(job, {"SLURMD_NODENAME": "r002"}) == "r002.ib"


def test_a_node_the_map_does_not_know_fails_naming_it() -> None:
    job = {**ON_NODE, "node_addresses": {"r001": "192.168.7.1"}}
    with pytest.raises(NodeAddressError) as info:
        listen_host(job, {"SLURMD_NODENAME": "r017"})
    assert "Slurm placed the session on node r017, which is not in the server's node address map" in str(
        info.value
    )


def test_without_the_node_name_nothing_is_guessed() -> None:
    with pytest.raises(NodeAddressError, match="SLURMD_NODENAME is not set"):
        listen_host(ON_NODE, {})


@pytest.fixture
def scontrol(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A stand-in scontrol first on PATH: it logs its arguments and prints what it is given."""
    log, answer = tmp_path / "calls", tmp_path / "answer"
    script = tmp_path / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {log}\ncat {answer}\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    return answer, log


def test_without_a_map_slurms_node_addr(scontrol: Any) -> None:
    answer, log = scontrol
    answer.write_text(
        "NodeName=uwsnode2 Arch=x86_64 CPUTot=2 NodeAddr=10.77.213.2 NodeHostName=uwsnode2 "
        "Version=22.05.8 OS=Linux 6.1.0 #1 SMP\n"
    )
    assert listen_host({**ON_NODE, "node_addresses": {}}, {"SLURMD_NODENAME": "uwsnode2"}) == "10.77.213.2"
    assert log.read_text() == "show node -o uwsnode2\n"


def test_slurm_not_telling_the_address_fails(scontrol: Any) -> None:
    answer, _ = scontrol
    answer.write_text("Node r404 not found\n")
    with pytest.raises(NodeAddressError, match=r"Slurm did not tell node r404's address \(NodeAddr\)"):
        listen_host(ON_NODE, {"SLURMD_NODENAME": "r404"})
