"""Traffic-selector negotiation under hypothesis, against a brute-force packet model.

Selectors are drawn from a tiny universe (16 addresses per family, ports 0..7
or "any", protocols any/TCP/UDP) so that every distinct packet class can be
enumerated: a packet (address, port, protocol) is in a selector list when it
is in one of its selectors. Then:

- ``narrow(x, allowed)`` selects exactly the packets selected by both lists
  (so it is a subset of each, RFC 7296 2.9, and loses nothing);
- ``is_subset(a, b)`` agrees with "every packet of a is in b";
- ``networks_of`` covers exactly the selectors' addresses, and undoes
  ``selectors_for_networks`` up to collapsing.

Protocol 99 appears in packets but never in selectors, so that "any protocol"
is not covered by a union of specific ones, in the model as in the code.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from common.ike.payloads import TrafficSelector
from common.ike.selectors import (
    IpNetwork,
    is_subset,
    narrow,
    networks_of,
    selectors_for_networks,
)

PROPS = settings(max_examples=200, deadline=None)

BASES = (int(ipaddress.IPv4Address("10.0.0.0")), int(ipaddress.IPv6Address("2001:db8::")))
PROTOCOLS = (0, 6, 17)
PACKET_PROTOCOLS = (6, 17, 99)
# Cell representatives: one past the drawn ranges, and the far end of "any port".
PACKET_PORTS = (*range(9), 65535)


def _address(version: int, offset: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if version == 4:
        return ipaddress.IPv4Address(BASES[0] + offset)
    return ipaddress.IPv6Address(BASES[1] + offset)


@st.composite
def selectors(draw: st.DrawFn) -> TrafficSelector:
    version = draw(st.sampled_from((4, 6)))
    lo, hi = sorted(draw(st.lists(st.integers(0, 15), min_size=2, max_size=2)))
    ports = draw(
        st.one_of(
            st.just((0, 65535)),
            st.lists(st.integers(0, 7), min_size=2, max_size=2).map(lambda p: tuple(sorted(p))),
        )
    )
    protocol = draw(st.sampled_from(PROTOCOLS))
    return TrafficSelector(_address(version, lo), _address(version, hi), protocol, *ports)


selector_lists = st.lists(selectors(), max_size=5)


def _packets() -> list[tuple[int, int, int, int]]:
    return [
        (version, offset, port, protocol)
        for version in (4, 6)
        for offset in range(17)
        for port in PACKET_PORTS
        for protocol in PACKET_PROTOCOLS
    ]


PACKETS = _packets()


def _selects(selector: TrafficSelector, packet: tuple[int, int, int, int]) -> bool:
    version, offset, port, protocol = packet
    address = _base(version) + offset
    return (
        selector.start_address.version == version
        and int(selector.start_address) <= address <= int(selector.end_address)
        and selector.start_port <= port <= selector.end_port
        and selector.ip_protocol in (0, protocol)
    )


def _traffic(selector_list: Sequence[TrafficSelector]) -> set[tuple[int, int, int, int]]:
    return {p for p in PACKETS if any(_selects(s, p) for s in selector_list)}


@PROPS
@given(selector_lists, selector_lists)
def test_narrow_is_the_intersection(
    proposed: list[TrafficSelector], allowed: list[TrafficSelector]
) -> None:
    narrowed = narrow(proposed, allowed)
    assert _traffic(narrowed) == _traffic(proposed) & _traffic(allowed)
    assert is_subset(narrowed, proposed)
    assert is_subset(narrowed, allowed)
    assert len(set(narrowed)) == len(narrowed)


@PROPS
@given(selector_lists, selector_lists)
def test_is_subset_matches_the_model(a: list[TrafficSelector], b: list[TrafficSelector]) -> None:
    assert is_subset(a, b) == (_traffic(a) <= _traffic(b))


@PROPS
@given(selector_lists)
def test_networks_of_covers_exactly_the_addresses(selector_list: list[TrafficSelector]) -> None:
    networks = networks_of(selector_list)
    covered = {(n.version, int(a) - _base(n.version)) for n in networks for a in n}
    expected = {(v, o) for v, o, _, _ in _traffic_any(selector_list)}
    assert covered == expected
    v4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
    assert networks == [*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)]


def _base(version: int) -> int:
    return BASES[0] if version == 4 else BASES[1]


def _traffic_any(selector_list: Sequence[TrafficSelector]) -> set[tuple[int, int, int, int]]:
    """Addresses only: each selector widened to any port and protocol, as the data plane sees it."""
    widened = [TrafficSelector(s.start_address, s.end_address) for s in selector_list]
    return _traffic(widened)


v4_networks = st.builds(
    lambda address, prefix: ipaddress.IPv4Network((address, prefix), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)
v6_networks = st.builds(
    lambda address, prefix: ipaddress.IPv6Network((address, prefix), strict=False),
    st.integers(0, 2**128 - 1),
    st.integers(0, 128),
)


@PROPS
@given(st.lists(st.one_of(v4_networks, v6_networks), max_size=8))
def test_networks_of_undoes_selectors_for_networks(networks: list[IpNetwork]) -> None:
    v4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
    expected = [*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)]
    assert networks_of(selectors_for_networks(networks)) == expected


@PROPS
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_networks_of_any_range_is_exact(a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    selector = TrafficSelector(ipaddress.IPv4Address(lo), ipaddress.IPv4Address(hi))
    networks = networks_of([selector])
    assert int(networks[0].network_address) == lo
    assert int(networks[-1].broadcast_address) == hi
    assert sum(n.num_addresses for n in networks) == hi - lo + 1
    for left, right in itertools.pairwise(networks):
        assert int(left.broadcast_address) + 1 == int(right.network_address)
