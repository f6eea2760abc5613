"""Traffic-selector negotiation: building, narrowing and checking TSi/TSr (RFC 7296 2.9).

A road warrior proposes wide selectors (usually ``0.0.0.0/0`` and ``::/0``,
any protocol, any port); the concentrator narrows them to what its policy
allows, and the client checks that the answer is no wider than what it asked
for. TSi and TSr are narrowed independently, one call per list: RFC 7296 2.9
defines the SA's traffic as the cross product of the two lists.

Selectors are three-dimensional boxes: an address range, a port range and an
IP protocol (0 = any). Everything here is pure (no I/O, no state) so the
responder task, the initiator task and the data plane can share it, and so it
can be checked against a brute-force model in the property tests.

Port ranges are inclusive. The one inverted range RFC 7296 3.13.1 defines,
start 65535 and end 0, is OPAQUE ("ports not available", e.g. fragments); it
is treated as its own value: only "any port" (0..65535) contains it. Any other
inverted port range or address range selects nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Final, TypeAlias

from common.ike.payloads.ts import AnyTrafficSelector, IpAddress, TrafficSelector

# Same union as common.hostnet.base.IpNetwork; redeclared so that the IKE core does
# not import the OS-adapter layer.
IpNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

ANY_PROTOCOL: Final = 0  # RFC 7296 3.13.1: "zero ... the protocol ID is not relevant"
ALL_PORTS: Final = (0, 65535)  # RFC 7296 3.13.1: any port
OPAQUE_PORTS: Final = (65535, 0)  # RFC 7296 3.13.1: "ports are not available"

_Ports: TypeAlias = tuple[int, int]


def selectors_for_networks(
    networks: Iterable[IpNetwork], *, protocol: int = ANY_PROTOCOL, ports: _Ports = ALL_PORTS
) -> list[TrafficSelector]:
    """One address-range selector per CIDR network, in the given order.

    IKEv2 selectors are ranges, not prefixes (RFC 7296 3.13.1), so a prefix
    becomes network address .. broadcast address.

    Args:
        networks: IPv4 and/or IPv6 networks (e.g. a client's "route everything"
            ``0.0.0.0/0`` and ``::/0``, or a concentrator's protected subnets).
        protocol: IP protocol for every selector; 0 means any.
        ports: inclusive (start, end) port range for every selector.

    Returns:
        The selectors, one per network; IPv4 ones come out as TS_IPV4_ADDR_RANGE
        and IPv6 ones as TS_IPV6_ADDR_RANGE.
    """
    start_port, end_port = ports
    return [
        TrafficSelector(
            network.network_address, network.broadcast_address, protocol, start_port, end_port
        )
        for network in networks
    ]


def networks_of(selectors: Iterable[AnyTrafficSelector]) -> list[IpNetwork]:
    """The address space of ``selectors`` as the fewest CIDR prefixes.

    Routes and the concentrator's anti-spoof check work on prefixes, while a
    negotiated selector may be any range (10.0.0.1-10.0.0.6 is four prefixes).
    Overlapping or adjacent results are collapsed: a route table gains nothing
    from a prefix that another one already covers.

    Protocol and ports are deliberately ignored: the data plane routes and
    anti-spoofs on addresses only, so a selector narrowed to "TCP port 443"
    still yields its whole address range here. Unknown selector types and
    empty (inverted) ranges contribute nothing.

    Returns:
        IPv4 prefixes (sorted, collapsed) followed by IPv6 prefixes.
    """
    v4: list[ipaddress.IPv4Network] = []
    v6: list[ipaddress.IPv6Network] = []
    for selector in selectors:
        if not isinstance(selector, TrafficSelector):
            continue
        start, end = selector.start_address, selector.end_address
        if isinstance(start, ipaddress.IPv4Address) and isinstance(end, ipaddress.IPv4Address):
            if start <= end:
                v4.extend(ipaddress.summarize_address_range(start, end))
        elif (
            isinstance(start, ipaddress.IPv6Address)
            and isinstance(end, ipaddress.IPv6Address)
            and start <= end
        ):
            v6.extend(ipaddress.summarize_address_range(start, end))
    return [*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)]


def narrow(
    proposed: Iterable[AnyTrafficSelector], allowed: Iterable[TrafficSelector]
) -> list[TrafficSelector]:
    """The responder's narrowing of one selector list (TSi or TSr) to its policy.

    RFC 7296 2.9: the responder "is allowed to narrow the choices by selecting
    a subset of the traffic". The result is exactly the traffic that is both
    proposed and allowed: for every proposed selector (in the initiator's
    order) and every allowed selector of the same type, the intersection of
    the address ranges, the port ranges and the protocols (0 = any). Empty
    intersections and exact duplicates are dropped.

    An empty result means nothing is acceptable; the caller answers
    TS_UNACCEPTABLE (RFC 7296 2.9). Selectors of unknown types (e.g.
    TS_SECLABEL) are never narrowed into anything, so a proposal made of them
    alone also ends as TS_UNACCEPTABLE.

    Note on the first selector: RFC 7296 2.9 lets an initiator that was
    triggered by a packet put a selector for that very packet first in TSi and
    TSr, and asks the responder to keep that traffic in its answer. Because
    the initiator's order is kept, the narrowed copy of that packet selector
    (when policy allows it) comes first in the result too; the wider
    selectors that follow are narrowed as usual. No special case is needed,
    but callers must not reorder the result.

    Args:
        proposed: the initiator's selectors, in order.
        allowed: the responder's policy for the same direction.

    Returns:
        The narrowed selectors, each a subset of one proposed and one allowed
        selector.
    """
    allowed = list(allowed)
    result: list[TrafficSelector] = []
    seen: set[TrafficSelector] = set()
    for offer in proposed:
        if not isinstance(offer, TrafficSelector):
            continue
        for policy in allowed:
            common = _intersect(offer, policy)
            if common is not None and common not in seen:
                seen.add(common)
                result.append(common)
    return result


def is_subset(
    narrowed: Iterable[AnyTrafficSelector], proposed: Sequence[AnyTrafficSelector]
) -> bool:
    """Whether the responder's selectors stay inside what the initiator proposed.

    RFC 7296 2.9 lets the responder narrow, never widen; the initiator runs
    this on TSi and TSr of the response and treats a wider answer as
    TS_UNACCEPTABLE (it would otherwise install an SA for traffic its policy
    never offered).

    The check is exact against the *union* of the proposed selectors: a
    returned 10.0.0.0/24 is accepted when 10.0.0.0/25 and 10.0.0.128/25 were
    proposed. A returned "any protocol" selector is covered only by proposed
    "any protocol" selectors. An unknown-type selector in the answer must be
    one the initiator sent, byte for byte.
    """
    known = [s for s in proposed if isinstance(s, TrafficSelector)]
    for selector in narrowed:
        if isinstance(selector, TrafficSelector):
            if not _covered(selector, known):
                return False
        elif selector not in proposed:
            return False
    return True


# --- helpers ---------------------------------------------------------------------------


def _address(like: IpAddress, value: int) -> IpAddress:
    """``value`` as an address of the same version as ``like``."""
    if like.version == 4:
        return ipaddress.IPv4Address(value)
    return ipaddress.IPv6Address(value)


def _ports(selector: TrafficSelector) -> _Ports:
    return (selector.start_port, selector.end_port)


def _intersect_protocol(a: int, b: int) -> int | None:
    if a == ANY_PROTOCOL:
        return b
    if b in (ANY_PROTOCOL, a):
        return a
    return None


def _intersect_ports(a: _Ports, b: _Ports) -> _Ports | None:
    if OPAQUE_PORTS in (a, b):
        other = b if a == OPAQUE_PORTS else a
        # RFC 7296 3.13.1: OPAQUE is matched only by OPAQUE and by "any port".
        return OPAQUE_PORTS if other in (OPAQUE_PORTS, ALL_PORTS) else None
    start, end = max(a[0], b[0]), min(a[1], b[1])
    return (start, end) if start <= end else None


def _intersect(a: TrafficSelector, b: TrafficSelector) -> TrafficSelector | None:
    """The traffic both selectors select, or None when that is nothing."""
    if a.ts_type != b.ts_type:
        return None
    protocol = _intersect_protocol(a.ip_protocol, b.ip_protocol)
    ports = _intersect_ports(_ports(a), _ports(b))
    start = max(int(a.start_address), int(b.start_address))
    end = min(int(a.end_address), int(b.end_address))
    if protocol is None or ports is None or start > end:
        return None
    like = a.start_address
    return TrafficSelector(_address(like, start), _address(like, end), protocol, *ports)


def _covered(selector: TrafficSelector, proposed: Sequence[TrafficSelector]) -> bool:
    """Whether the union of ``proposed`` contains every packet ``selector`` selects.

    The protocol axis reduces to a filter (a specific protocol is covered by
    that protocol or by "any"; "any" only by "any"). What is left is a union of
    rectangles (address x port) to compare with one rectangle: cut that
    rectangle at every proposed boundary, then each cell lies wholly inside or
    wholly outside each proposed rectangle, so checking one corner per cell
    decides it.
    """
    lo, hi = int(selector.start_address), int(selector.end_address)
    ports = _ports(selector)
    opaque = ports == OPAQUE_PORTS
    if lo > hi or (not opaque and ports[0] > ports[1]):
        return True  # selects nothing, so it widens nothing
    boxes: list[tuple[int, int, int, int]] = []
    for offer in proposed:
        if offer.ts_type != selector.ts_type:
            continue
        if offer.ip_protocol not in (ANY_PROTOCOL, selector.ip_protocol):
            continue
        offer_ports = _ports(offer)
        if opaque:
            if offer_ports not in (OPAQUE_PORTS, ALL_PORTS):
                continue
            offer_ports = (0, 0)  # the port axis collapses to one point
        elif offer_ports == OPAQUE_PORTS:
            continue
        boxes.append((int(offer.start_address), int(offer.end_address), *offer_ports))
    port_lo, port_hi = (0, 0) if opaque else ports
    address_cuts = _cuts(lo, hi, [(b[0], b[1]) for b in boxes])
    port_cuts = _cuts(port_lo, port_hi, [(b[2], b[3]) for b in boxes])
    return all(
        any(b[0] <= a <= b[1] and b[2] <= p <= b[3] for b in boxes)
        for a in address_cuts
        for p in port_cuts
    )


def _cuts(lo: int, hi: int, ranges: Iterable[tuple[int, int]]) -> list[int]:
    """Start points of the cells that the ``ranges``' edges cut ``lo..hi`` into."""
    points = {lo}
    for start, end in ranges:
        points.update(x for x in (start, end + 1) if lo < x <= hi)
    return sorted(points)
