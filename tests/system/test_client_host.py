"""The client on a real host: per-namespace status sockets, and privileges checked up front.

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


@pytest.mark.needs_tool("setpriv")
def test_without_cap_net_admin_outpost_up_says_so_before_any_handshake(
    netns_lab: NetnsLab, tmp_path: Path
) -> None:
    """Root whose bounding set lacks CAP_NET_ADMIN: one clear line, exit 1, no IKE sent."""
    laptop = netns_lab.add_host("laptop")
    profile = tmp_path / "office.toml"
    profile.write_text(
        '[gateway]\naddress = "192.0.2.1"\nidentity = "vpn.example.com"\n'
        '[auth]\nid = "alice@example.com"\npsk = "a-long-enough-secret-for-the-test"\n'
    )
    outpost = [sys.executable, "-m", "client.cli", "up", "--profile", str(profile)]
    result = laptop.run(
        ["setpriv", "--bounding-set", "-net_admin", *outpost],
        env={"PYTHONPATH": str(REPO)},
        check=False,
        timeout=20,
    )
    assert result.returncode == 1, result.stderr
    assert "needs root or CAP_NET_ADMIN" in result.stderr
    assert "Traceback" not in result.stderr
    assert "connecting to" not in result.stderr  # refused before the handshake


def test_cap_net_admin_is_read_from_the_effective_set(tmp_path: Path) -> None:
    from common.hostnet.linux import has_cap_net_admin

    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t0000000000001000\n")  # bit 12 only
    assert has_cap_net_admin(str(status))
    status.write_text("Name:\tx\nCapEff:\t0000000000000fff\n")
    assert not has_cap_net_admin(str(status))
    assert has_cap_net_admin(str(tmp_path / "missing"))  # unknown: let the real call tell
