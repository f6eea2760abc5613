"""Clients in different network namespaces keep apart their status sockets and state records.

Each named namespace has its own routes, DNS file and tunnel, so two root
clients (``ip netns exec A outpost up``, ``ip netns exec B outpost up``) must
not answer ``outpost status`` for each other or repair each other's changes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.helpers.netns import NetnsLab

pytestmark = pytest.mark.privileged

REPO = Path(__file__).resolve().parents[2]
PROBE = (
    "from client.statusd import current_netns_name, default_socket_path;"
    "print(current_netns_name(), default_socket_path())"
)


def test_root_socket_is_per_named_namespace(netns_lab: NetnsLab) -> None:
    first, second = netns_lab.add_host("one"), netns_lab.add_host("two")
    answers = {}
    for host in (first, second):
        result = host.run([sys.executable, "-c", PROBE], env={"PYTHONPATH": str(REPO)})
        name, path = result.stdout.split()
        answers[host.name] = (name, path)
    assert answers[first.name] == (first.name, f"/run/outpost/netns/{first.name}/client.sock")
    assert answers[second.name] == (second.name, f"/run/outpost/netns/{second.name}/client.sock")


def test_outside_any_named_namespace_it_is_the_plain_root_socket() -> None:
    from client.statusd import ROOT_SOCKET, current_netns_name, root_socket_path

    name = current_netns_name()  # CI runs pytest in the root namespace: ""
    expected = ROOT_SOCKET.parent / "netns" / name / ROOT_SOCKET.name if name else ROOT_SOCKET
    assert root_socket_path() == expected
