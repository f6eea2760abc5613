"""Which networks the client routes into its TUN device, and putting them on the host.

DESIGN.md step 2: once the gateway has leased an inner address, the office
subnets (split tunnel) or everything (full tunnel) go into the TUN. Two steps,
so the decision is testable without a host:

1. :func:`plan_routes` (pure) decides the networks:

   - split tunnel: the gateway's INTERNAL_IP4/6_SUBNET split-include networks
     (RFC 7296 3.15.2) plus the profile's own ``subnets``, deduplicated and
     collapsed (``10.0.0.0/24`` inside ``10.0.0.0/16`` is dropped);
   - full tunnel: ``0.0.0.0/1`` and ``128.0.0.0/1`` (and ``::/1`` and
     ``8000::/1`` with an inner IPv6 address). Two halves are more specific
     than the host's default route, so they win without touching it, and
     putting the default back is never needed (OpenVPN's ``def1``);
   - a network of a family we hold no inner address for is left out: its
     packets would leave with an outer source address the gateway drops as
     spoofed, which is worse than their going the usual way; a ``/0`` in a
     split list becomes the two halves for the same reason as above.

2. :func:`apply_routes` adds them through ``HostNetwork`` and, when a tunnel
   network covers the gateway's own address (always in full tunnel), first a
   host route to the gateway through the path it uses now (``route_to``:
   via its next hop, on its interface), so ESP never routes into itself.
   It returns :class:`AppliedRoutes`, whose ``undo`` removes exactly what was
   added; a failure half-way removes what was done before raising.

The routes are known before the first one is added and are handed to a
``before_change`` callback, so the caller can write them to its stale-state
file (``client.hoststate``) first: a client killed with -9 leaves nothing
that the next start can not find.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from common.hostnet.base import (
    HostNetwork,
    HostNetworkError,
    IpAddress,
    IpInterface,
    IpNetwork,
    Route,
    RouteLookup,
)

Mode = Literal["split", "full"]

HALF_DEFAULTS_V4: Final = (
    ipaddress.IPv4Network("0.0.0.0/1"),
    ipaddress.IPv4Network("128.0.0.0/1"),
)
HALF_DEFAULTS_V6: Final = (ipaddress.IPv6Network("::/1"), ipaddress.IPv6Network("8000::/1"))
# Errors that mean "already gone": a route through a TUN device vanishes with it.
GONE: Final = frozenset({errno.ESRCH, errno.ENODEV, errno.ENOENT})


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """The networks to route into the tunnel, and whether the gateway needs a bypass."""

    mode: Mode
    gateway: IpAddress
    networks: tuple[IpNetwork, ...]

    @property
    def needs_bypass(self) -> bool:
        """A tunnel network covers the gateway: pin it to the original path first."""
        return any(self.gateway in network for network in self.networks)

    def routes(self, tun_name: str, original: RouteLookup | None) -> tuple[Route, ...]:
        """The routes to add, in order: the gateway's bypass (if any), then the tunnel's.

        Args:
            tun_name: the TUN device's name.
            original: ``route_to(gateway)`` before any change; needed when
                :attr:`needs_bypass`. A gateway reached over ``lo`` (it is
                one of our own addresses, as in some tests) needs none.
        """
        result: list[Route] = []
        if self.needs_bypass:
            if original is None:
                raise ValueError("a full tunnel needs the gateway's original route")
            if original.ifname == tun_name:
                raise HostNetworkError(
                    f"the route to the gateway {self.gateway} already goes through {tun_name}; "
                    "another tunnel (or a stale route) holds it"
                )
            if original.ifname != "lo":
                host = ipaddress.ip_network(self.gateway)
                result.append(Route(host, ifname=original.ifname, gateway=original.gateway))
        result += [Route(network, ifname=tun_name) for network in self.networks]
        return tuple(result)


def plan_routes(
    mode: Mode,
    gateway: IpAddress,
    gateway_subnets: Iterable[IpNetwork],
    profile_subnets: Iterable[IpNetwork],
    inner: Iterable[IpAddress | IpInterface],
) -> RoutePlan:
    """Decide the tunnel's networks (see the module docstring for the rules).

    Args:
        mode: the profile's ``[tunnel] mode``.
        gateway: the gateway's outer address, as resolved.
        gateway_subnets: the CFG_REPLY's split-include networks.
        profile_subnets: the profile's extra ``subnets``.
        inner: the inner addresses the gateway leased (one per family at most).
    """
    versions = {ipaddress.ip_interface(address).version for address in inner}
    wanted: list[IpNetwork] = []
    if mode == "full":
        if 4 in versions:
            wanted += HALF_DEFAULTS_V4
        if 6 in versions:
            wanted += HALF_DEFAULTS_V6
    else:
        for network in (*gateway_subnets, *profile_subnets):
            if network.version in versions:
                wanted.append(network)
    return RoutePlan(mode, gateway, _collapse(wanted))


def _collapse(networks: Sequence[IpNetwork]) -> tuple[IpNetwork, ...]:
    """Deduplicated and merged, IPv4 before IPv6, each in address order.

    Merging may make a ``/0`` (of two halves, or given as such); it is split
    back into the halves, which sit beside the host's default route instead
    of colliding with it.
    """
    v4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
    merged: list[IpNetwork] = [*ipaddress.collapse_addresses(v4)]
    merged += ipaddress.collapse_addresses(v6)
    result: list[IpNetwork] = []
    for network in merged:
        if network.prefixlen == 0:
            result += HALF_DEFAULTS_V4 if network.version == 4 else HALF_DEFAULTS_V6
        else:
            result.append(network)
    return tuple(result)


@dataclass(slots=True)
class AppliedRoutes:
    """The routes :func:`apply_routes` added; ``undo`` removes them, newest first."""

    host: HostNetwork
    added: list[Route] = field(default_factory=list)

    def undo(self) -> None:
        """Remove every added route, once; a route already gone is fine.

        Routes through the TUN vanish when the device closes, so undo after
        closing it is harmless. Every route is tried even if one fails; the
        first unexpected error is raised at the end.
        """
        first: HostNetworkError | None = None
        while self.added:
            route = self.added.pop()
            try:
                self.host.remove_route(route)
            except HostNetworkError as exc:
                if exc.errno not in GONE and first is None:
                    first = exc
        if first is not None:
            raise first


def apply_routes(
    host: HostNetwork,
    tun_name: str,
    plan: RoutePlan,
    *,
    before_change: Callable[[Sequence[Route]], None] | None = None,
) -> AppliedRoutes:
    """Add the plan's routes (the gateway's bypass first); undo them all on a failure.

    Args:
        host: the host network adapter.
        tun_name: the TUN device the tunnel's networks go into.
        plan: from :func:`plan_routes`.
        before_change: called with every route about to be added, before the
            first is (the caller records them for stale repair).

    Raises:
        HostNetworkError: a route could not be added (those added are removed).
    """
    original = host.route_to(plan.gateway) if plan.needs_bypass else None
    routes = plan.routes(tun_name, original)
    if before_change is not None:
        before_change(routes)
    applied = AppliedRoutes(host)
    try:
        for route in routes:
            applied.added.append(
                host.add_route(
                    route.network,
                    ifname=route.ifname,
                    gateway=route.gateway,
                    table=route.table,
                    metric=route.metric,
                )
            )
    except BaseException:
        with contextlib.suppress(HostNetworkError):  # the original failure is the one to report
            applied.undo()
        raise
    return applied


def remove_routes(host: HostNetwork, routes: Iterable[Route]) -> list[Route]:
    """Remove routes a dead client left (stale repair); returns those really removed.

    A route through the dead client's TUN is usually gone with the device;
    what remains is the gateway's bypass route on the physical interface.
    Every route is tried; the first unexpected error is raised at the end.
    """
    removed: list[Route] = []
    first: HostNetworkError | None = None
    for route in reversed(list(routes)):
        try:
            host.remove_route(route)
        except HostNetworkError as exc:
            if exc.errno not in GONE and first is None:
                first = exc
        else:
            removed.append(route)
    if first is not None:
        raise first
    return removed
