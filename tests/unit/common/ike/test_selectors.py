"""Traffic-selector negotiation (RFC 7296 2.9) on worked examples.

https://www.rfc-editor.org/rfc/rfc7296#section-2.9
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

import pytest

from common.ike.constants import IpProtocol
from common.ike.payloads import TrafficSelector, UnknownTrafficSelector
from common.ike.payloads.ts import AnyTrafficSelector
from common.ike.selectors import (
    OPAQUE_PORTS,
    is_subset,
    narrow,
    networks_of,
    selectors_for_networks,
)

TCP = IpProtocol.TCP
UDP = IpProtocol.UDP


def ts4(
    start: str, end: str, protocol: int = 0, ports: tuple[int, int] = (0, 65535)
) -> TrafficSelector:
    return TrafficSelector(IPv4Address(start), IPv4Address(end), protocol, *ports)


def ts6(
    start: str, end: str, protocol: int = 0, ports: tuple[int, int] = (0, 65535)
) -> TrafficSelector:
    return TrafficSelector(IPv6Address(start), IPv6Address(end), protocol, *ports)


ANY4 = ts4("0.0.0.0", "255.255.255.255")
ANY6 = ts6("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")


# --- selectors_for_networks / networks_of ----------------------------------------------


def test_selectors_for_networks_are_address_ranges() -> None:
    selectors = selectors_for_networks([IPv4Network("10.99.0.0/24"), IPv6Network("fd00::/64")])
    assert selectors == [
        ts4("10.99.0.0", "10.99.0.255"),
        ts6("fd00::", "fd00::ffff:ffff:ffff:ffff"),
    ]
    [web] = selectors_for_networks([IPv4Network("0.0.0.0/0")], protocol=TCP, ports=(443, 443))
    assert web == ts4("0.0.0.0", "255.255.255.255", TCP, (443, 443))


def test_networks_of_splits_a_non_cidr_range() -> None:
    # 10.0.0.1-10.0.0.6 is .1/32, .2/31, .4/31, .6/32.
    assert networks_of([ts4("10.0.0.1", "10.0.0.6")]) == [
        ip_network("10.0.0.1/32"),
        ip_network("10.0.0.2/31"),
        ip_network("10.0.0.4/31"),
        ip_network("10.0.0.6/32"),
    ]
    assert networks_of([ts6("fd00::1", "fd00::3")]) == [
        ip_network("fd00::1/128"),
        ip_network("fd00::2/127"),
    ]


def test_networks_of_ignores_protocol_and_ports_and_collapses() -> None:
    # The data plane routes on addresses only; overlapping selectors give one prefix.
    selectors: list[AnyTrafficSelector] = [
        ts6("fd00::", "fd00::ff", TCP, (443, 443)),
        ts4("10.99.0.0", "10.99.0.127", UDP, (53, 53)),
        ts4("10.99.0.128", "10.99.0.255"),
        ts4("10.99.0.0", "10.99.0.255", TCP),
        ts4("10.0.0.9", "10.0.0.1"),  # inverted: selects nothing
        UnknownTrafficSelector(10, 0, b"label"),
    ]
    assert networks_of(selectors) == [ip_network("10.99.0.0/24"), ip_network("fd00::/120")]


# --- narrow ---------------------------------------------------------------------------


def test_narrow_everything_to_the_protected_subnet() -> None:
    # Client asks for 0.0.0.0/0, any protocol; responder allows 10.99.0.0/24.
    allowed = selectors_for_networks([IPv4Network("10.99.0.0/24")])
    assert narrow([ANY4, ANY6], allowed) == [ts4("10.99.0.0", "10.99.0.255")]


def test_narrow_disjoint_is_empty() -> None:
    # An empty result is TS_UNACCEPTABLE for the caller (RFC 7296 2.9).
    assert narrow([ts4("192.0.2.0", "192.0.2.255")], [ts4("10.99.0.0", "10.99.0.255")]) == []
    assert narrow([ANY6], [ts4("10.99.0.0", "10.99.0.255")]) == []  # types never mix
    assert narrow([UnknownTrafficSelector(10, 0, b"x")], [ANY4]) == []


def test_narrow_intersects_ports_and_protocols() -> None:
    offer = ts4("10.0.0.0", "10.0.0.255", 0, (1000, 2000))
    assert narrow([offer], [ts4("10.0.0.128", "10.1.0.0", TCP, (1500, 3000))]) == [
        ts4("10.0.0.128", "10.0.0.255", TCP, (1500, 2000))
    ]
    assert narrow([ts4("10.0.0.0", "10.0.0.255", UDP)], [ts4("10.0.0.0", "10.0.0.255", TCP)]) == []
    assert narrow([ts4("10.0.0.0", "10.0.0.255", TCP)], [ts4("10.0.0.7", "10.0.0.7", TCP)]) == [
        ts4("10.0.0.7", "10.0.0.7", TCP)
    ]
    assert narrow([offer], [ts4("10.0.0.0", "10.0.0.255", 0, (2001, 65535))]) == []


def test_narrow_opaque_ports() -> None:
    opaque = ts4("10.0.0.0", "10.0.0.255", UDP, OPAQUE_PORTS)
    assert narrow([opaque], [ANY4]) == [opaque]
    assert narrow([opaque], [ts4("0.0.0.0", "255.255.255.255", 0, (53, 53))]) == []


def test_narrow_ipv6() -> None:
    allowed = [ts6("fd00:99::", "fd00:99::ffff"), ts4("10.99.0.0", "10.99.0.255")]
    assert narrow([ANY6], allowed) == [ts6("fd00:99::", "fd00:99::ffff")]
    assert narrow([ts6("fd00:99::8000", "fd00:9a::")], allowed) == [
        ts6("fd00:99::8000", "fd00:99::ffff")
    ]


def test_narrow_dual_stack_tsi_to_the_leased_hosts() -> None:
    # A road warrior leased 10.99.100.7 and fd00:100::7 proposes 0.0.0.0/0 and ::/0 as TSi:
    # the responder answers one host selector per family (RFC 7296 2.9), in the offer's order.
    leases = selectors_for_networks([ip_network("fd00:100::7/128"), ip_network("10.99.100.7/32")])
    narrowed = narrow([ANY4, ANY6], leases)
    assert narrowed == [ts4("10.99.100.7", "10.99.100.7"), ts6("fd00:100::7", "fd00:100::7")]
    assert is_subset(narrowed, [ANY4, ANY6])
    assert not is_subset(narrowed, [ANY4])  # an IPv6 answer to an IPv4-only offer widens it
    assert networks_of(narrowed) == [ip_network("10.99.100.7/32"), ip_network("fd00:100::7/128")]


def test_narrow_keeps_initiator_order_and_drops_duplicates() -> None:
    # RFC 7296 2.9: a packet-specific first selector stays first once narrowed.
    packet = ts4("10.99.0.5", "10.99.0.5", TCP, (80, 80))
    allowed = [ts4("10.99.0.0", "10.99.0.255"), ts4("10.98.0.0", "10.98.0.255")]
    assert narrow([packet, ANY4, ANY4], allowed) == [
        packet,
        ts4("10.99.0.0", "10.99.0.255"),
        ts4("10.98.0.0", "10.98.0.255"),
    ]


# --- is_subset ------------------------------------------------------------------------


def test_is_subset_accepts_narrowing() -> None:
    proposed = [ANY4]
    assert is_subset([ts4("10.99.0.0", "10.99.0.255", TCP, (443, 443))], proposed)
    assert is_subset([], proposed)


@pytest.mark.parametrize(
    "answer",
    [
        ts4("10.99.0.0", "10.99.1.0"),  # wider address range
        ts4("10.99.0.0", "10.99.0.255", 0, (1, 2)),  # ports outside
        ts4("10.99.0.0", "10.99.0.255", UDP),  # other protocol
        ts6("::", "::1"),  # other type
        ts4("10.99.0.0", "10.99.0.255", UDP, OPAQUE_PORTS),  # OPAQUE is not inside 1..1024
    ],
)
def test_is_subset_rejects_widening(answer: TrafficSelector) -> None:
    proposed = [ts4("10.99.0.0", "10.99.0.255", TCP, (1, 1024))]
    assert not is_subset([answer], proposed)


def test_is_subset_against_the_union() -> None:
    halves = [ts4("10.0.0.0", "10.0.0.127"), ts4("10.0.0.128", "10.0.0.255")]
    assert is_subset([ts4("10.0.0.0", "10.0.0.255")], halves)
    assert not is_subset([ts4("10.0.0.0", "10.0.0.255")], halves[:1])
    ports = [
        ts4("10.0.0.0", "10.0.0.255", TCP, (0, 99)),
        ts4("10.0.0.0", "10.0.0.255", 0, (100, 200)),
    ]
    assert is_subset([ts4("10.0.0.0", "10.0.0.255", TCP, (50, 150))], ports)
    assert not is_subset([ts4("10.0.0.0", "10.0.0.255", UDP, (50, 150))], ports)
    # "any protocol" is covered only by "any protocol", not by a list of protocols.
    tcp_udp = [ts4("10.0.0.0", "10.0.0.255", TCP), ts4("10.0.0.0", "10.0.0.255", UDP)]
    assert not is_subset([ts4("10.0.0.0", "10.0.0.255")], tcp_udp)


def test_is_subset_unknown_selectors_must_be_echoed() -> None:
    label = UnknownTrafficSelector(10, 0, b"label")
    assert is_subset([label], [label, ANY4])
    assert not is_subset([label], [ANY4])
