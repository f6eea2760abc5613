"""``PrefixMap``: the longest-prefix match behind routing and anti-spoof in the data plane.

The data plane asks it two questions per packet, "which peer owns this inner
destination?" and "may this peer send from this inner source?" (RFC 4301
5.2), with raw 4- or 16-octet addresses sliced straight out of the packet.
A wrong answer either leaks traffic to the wrong client or drops it, so
besides the cases below the map is compared with a plain ``ipaddress``
model on a few thousand seeded random lookups.
"""

from __future__ import annotations

import ipaddress
import random

import pytest

from common.dataplane.prefixmap import IpNetwork, PrefixMap, parse_network


def packed(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def test_longest_prefix_wins_whatever_the_insertion_order() -> None:
    networks = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "0.0.0.0/0"]
    for order in (networks, list(reversed(networks))):
        table: PrefixMap[str] = PrefixMap()
        for network in order:
            table.add(parse_network(network), network)
        assert table.lookup(packed("10.1.2.3")) == "10.1.2.0/24"
        assert table.lookup(packed("10.1.3.3")) == "10.1.0.0/16"
        assert table.lookup(packed("10.2.0.1")) == "10.0.0.0/8"
        assert table.lookup(packed("192.0.2.1")) == "0.0.0.0/0"


def test_host_routes_beat_prefixes() -> None:
    """Concentrator case: one leased /32 per client inside the pool's /16."""
    table: PrefixMap[str] = PrefixMap()
    table.add(parse_network("10.99.0.0/16"), "pool")
    table.add(parse_network("10.99.0.10"), "client-10")
    table.add(parse_network("fd00:99::10/128"), "client-10-v6")

    assert table.lookup(packed("10.99.0.10")) == "client-10"
    assert table.lookup(packed("10.99.0.11")) == "pool"
    assert table.lookup(packed("fd00:99::10")) == "client-10-v6"
    assert table.lookup(packed("fd00:99::11")) is None
    assert len(table) == 3


def test_families_never_match_each_other() -> None:
    """0.0.0.0/0 and ::/0 have equal integer values; only the address length tells them apart."""
    table: PrefixMap[str] = PrefixMap()
    table.add(parse_network("0.0.0.0/0"), "v4 default")
    assert table.lookup(packed("::1")) is None
    assert table.lookup(bytes(16)) is None

    table.add(parse_network("::/0"), "v6 default")
    assert table.lookup(packed("::1")) == "v6 default"
    assert table.lookup(packed("0.0.0.1")) == "v4 default"
    # An IPv4-mapped IPv6 address is a 16-octet lookup: the IPv6 table answers.
    assert table.lookup(packed("::ffff:10.0.0.1")) == "v6 default"


def test_an_empty_map_answers_none() -> None:
    table: PrefixMap[int] = PrefixMap()
    assert table.lookup(packed("10.0.0.1")) is None
    assert table.lookup(packed("fd00::1")) is None
    assert len(table) == 0
    assert list(table.networks()) == []


def test_add_replaces_and_remove_forgets() -> None:
    table: PrefixMap[str] = PrefixMap()
    net = parse_network("10.1.0.0/16")
    host = parse_network("10.1.0.1/32")
    table.add(net, "old")
    table.add(host, "old host")
    table.add(net, "new")
    table.add(host, "new host")

    assert len(table) == 2
    assert table.lookup(packed("10.1.9.9")) == "new"
    assert table.lookup(packed("10.1.0.1")) == "new host"

    table.remove(host)
    assert table.lookup(packed("10.1.0.1")) == "new"
    table.remove(net)
    assert table.lookup(packed("10.1.9.9")) is None
    table.remove(net)  # removing what is not there is not an error
    table.remove(parse_network("fd00::/64"))
    assert len(table) == 0


def test_remove_matches_family_and_length_exactly() -> None:
    """10.0.0.0/8 and 10.0.0.0/16 share a network address; removing one keeps the other."""
    table: PrefixMap[str] = PrefixMap()
    table.add(parse_network("10.0.0.0/8"), "/8")
    table.add(parse_network("10.0.0.0/16"), "/16")
    table.add(parse_network("::/8"), "v6 /8")  # integer value 0, like 0.0.0.0/8 would be

    table.remove(parse_network("10.0.0.0/16"))
    table.remove(parse_network("0.0.0.0/8"))

    assert table.lookup(packed("10.0.1.1")) == "/8"
    assert table.lookup(packed("::1")) == "v6 /8"


def test_networks_lists_what_was_added() -> None:
    added = {"10.1.0.0/16": 1, "10.1.0.7/32": 2, "fd00:a::/64": 3, "fd00:a::7/128": 4}
    table: PrefixMap[int] = PrefixMap()
    for text, value in added.items():
        table.add(parse_network(text), value)

    assert {str(network): value for network, value in table.networks()} == added


def test_parse_network_is_strict_about_host_bits() -> None:
    assert parse_network("10.1.2.3") == ipaddress.ip_network("10.1.2.3/32")
    assert parse_network("fd00::1") == ipaddress.ip_network("fd00::1/128")
    with pytest.raises(ValueError, match="host bits"):
        parse_network("10.1.2.3/24")
    with pytest.raises(ValueError, match="does not appear to be"):
        parse_network("not-a-network")


def model_lookup(routes: dict[IpNetwork, int], address: bytes) -> int | None:
    """The obvious reference: every matching network of the same family, longest first."""
    ip = ipaddress.ip_address(address)
    matches = [(net.prefixlen, value) for net, value in routes.items() if ip in net]
    return max(matches)[1] if matches else None


@pytest.mark.parametrize("seed", range(4))
def test_lookup_agrees_with_an_ipaddress_model(seed: int) -> None:
    """Seeded random tables of both families, with adds and removes, against ``model_lookup``.

    Addresses cluster in a small space (10.0.0.0/22, fd00::/118) so prefixes
    nest and overlap, which is where a longest-prefix match goes wrong.
    """
    rng = random.Random(seed)

    def random_network() -> IpNetwork:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address
        if rng.random() < 0.5:
            address = ipaddress.IPv4Address(0x0A000000 + rng.randrange(1 << 10))
            prefix = rng.choice([0, 8, 22, 24, 26, 30, 31, 32])
        else:
            address = ipaddress.IPv6Address((0xFD00 << 112) + rng.randrange(1 << 10))
            prefix = rng.choice([0, 64, 118, 120, 124, 127, 128])
        return ipaddress.ip_network(f"{address}/{prefix}", strict=False)

    table: PrefixMap[int] = PrefixMap()
    model: dict[IpNetwork, int] = {}
    for step in range(300):
        network = random_network()
        if rng.random() < 0.25 and model:
            victim = rng.choice(sorted(model, key=str))
            table.remove(victim)
            del model[victim]
        else:
            table.add(network, step)
            model[network] = step
        assert len(table) == len(model)
        for _ in range(10):
            probe = random_network().network_address.packed
            assert table.lookup(probe) == model_lookup(model, probe), (step, probe)
