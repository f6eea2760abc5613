"""deploy/outpost_nat.py in namespaces: masquerade gives a LAN with no route back a way back.

Topology (``client`` stands for a tunnel client: its address is in the pool,
as a decrypted packet's source would be when it leaves the concentrator's TUN)::

    [client] 10.99.100.5/24 ==== 10.99.100.1/24 [gw] 10.99.0.1/24 ==== 10.99.0.10/24 [lan]
                                                 [gw] 203.0.113.1/24 ==== 203.0.113.10/24 [net]

``lan`` has only its connected route: it cannot answer 10.99.100.5 unless the
gateway rewrites the source. ``net`` (standing for the internet) does route
the pool back, so only the forward filter can keep clients away from it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.helpers.netns import Host, NetnsLab

pytestmark = [pytest.mark.privileged, pytest.mark.needs_tool("nft")]

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "outpost_nat.py"
POOL = "10.99.100.0/24"
LAN_HOST = "10.99.0.10"
NET_HOST = "203.0.113.10"


def _lab(lab: NetnsLab) -> tuple[Host, Host]:
    client, gw, lan, net = (lab.add_host(label) for label in ("client", "gw", "lan", "net"))
    lab.link(client, gw, addr_a="10.99.100.5/24", addr_b="10.99.100.1/24")
    lab.link(gw, lan, addr_a="10.99.0.1/24", addr_b=f"{LAN_HOST}/24")
    lab.link(gw, net, addr_a="203.0.113.1/24", addr_b=f"{NET_HOST}/24")
    lab.forwarding(gw)
    lab.route(client, "default", via="10.99.100.1")
    lab.route(net, POOL, via="203.0.113.1")
    return client, gw


def _reaches(client: Host, address: str) -> bool:
    return client.run(["ping", "-c1", "-W1", address], check=False).returncode == 0


def _nat(gw: Host, *args: str) -> None:
    gw.run([sys.executable, str(SCRIPT), *args])


def _table(gw: Host, family: str = "ip") -> str | None:
    result = gw.run(["nft", "list", "table", family, "outpost"], check=False)
    return result.stdout if result.returncode == 0 else None


def test_masquerade_lets_the_lan_answer_until_removed(netns_lab: NetnsLab) -> None:
    client, gw = _lab(netns_lab)
    assert not _reaches(client, LAN_HOST), "the LAN must start without a way back to the pool"

    args = ("--pool", POOL, "--lan-subnet", "10.99.0.0/24", "--lan-interface", "to-lan")
    _nat(gw, *args)
    assert _reaches(client, LAN_HOST)
    table = _table(gw)
    assert table is not None
    assert "type nat hook postrouting priority srcnat" in table
    assert f"ip saddr {POOL} ip daddr != {POOL} ip daddr 10.99.0.0/24" in table
    assert 'oifname "to-lan" masquerade' in table
    assert "chain forward" not in table  # the filter is opt-in
    assert _table(gw, "ip6") is None  # no IPv6 pool: no IPv6 table

    _nat(gw, *args)  # idempotent: replaced, not duplicated
    assert _table(gw) == table
    assert _reaches(client, LAN_HOST)

    _nat(gw, "--remove")
    assert _table(gw) is None
    assert not _reaches(client, LAN_HOST)
    _nat(gw, "--remove")  # removing twice is fine


def test_forward_filter_keeps_clients_to_the_lan_subnets(
    netns_lab: NetnsLab, tmp_path: Path
) -> None:
    client, gw = _lab(netns_lab)
    config = tmp_path / "concentrator.toml"
    config.write_text(f'[pool]\nipv4 = "{POOL}"\n[lan]\nsubnets = ["10.99.0.0/24"]\n')
    assert _reaches(client, NET_HOST), "without a filter the gateway forwards anywhere"

    _nat(gw, "--config", str(config), "--forward-filter")
    assert _reaches(client, LAN_HOST)
    assert not _reaches(client, NET_HOST)
    table = _table(gw)
    assert table is not None
    assert "type filter hook forward priority filter" in table
    assert f"ip saddr {POOL} ip daddr 10.99.0.0/24 accept" in table
    assert f"ip saddr {POOL} drop" in table

    # A full tunnel (0.0.0.0/0 in the LAN subnets) is allowed everywhere, behind NAT.
    _nat(gw, "--pool", POOL, "--lan-subnet", "0.0.0.0/0", "--forward-filter")
    assert _reaches(client, NET_HOST)
    assert _reaches(client, LAN_HOST)

    _nat(gw, "--remove")
    assert _table(gw) is None
