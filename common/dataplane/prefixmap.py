"""Longest-prefix match on raw address bytes, for the packet path.

The data plane asks two questions per packet: "which peer owns this inner
destination?" (outbound) and "may this peer send from this inner source?"
(inbound anti-spoof, RFC 4301 section 5.2 checks on the traffic selectors).
Both are longest-prefix matches over a handful of networks per peer, but the
concentrator's common case is one leased host address per client. So host
routes (/32, /128) sit in a dict keyed by the address bytes as they appear in
the packet, and only shorter prefixes fall back to a scan of a short list
sorted longest first.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Generic, TypeVar

V = TypeVar("V")

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(text: str) -> IpNetwork:
    """A network from "10.0.0.0/24" or a bare address (a host route), strict about host bits."""
    return ipaddress.ip_network(text, strict=True)


class PrefixMap(Generic[V]):
    """Networks mapped to values; ``lookup`` takes 4- or 16-byte addresses."""

    __slots__ = ("_hosts", "_prefixes")

    def __init__(self) -> None:
        self._hosts: dict[bytes, V] = {}
        # (address length in octets, prefix length, network as int, mask as int, value)
        self._prefixes: list[tuple[int, int, int, int, V]] = []

    def __len__(self) -> int:
        return len(self._hosts) + len(self._prefixes)

    def add(self, network: IpNetwork, value: V) -> None:
        """Map ``network`` to ``value``, replacing an identical network's value."""
        self.remove(network)
        if network.prefixlen == network.max_prefixlen:
            self._hosts[network.network_address.packed] = value
            return
        entry = (
            len(network.network_address.packed),
            network.prefixlen,
            int(network.network_address),
            int(network.netmask),
            value,
        )
        # Rebind, never mutate in place: the data thread may be iterating the
        # old list while the control thread installs a route (and list.sort
        # empties a list while it runs).
        self._prefixes = sorted([*self._prefixes, entry], key=lambda item: item[1], reverse=True)

    def remove(self, network: IpNetwork) -> None:
        if network.prefixlen == network.max_prefixlen:
            self._hosts.pop(network.network_address.packed, None)  # atomic under the GIL
            return
        size = len(network.network_address.packed)
        net = int(network.network_address)
        self._prefixes = [
            p for p in self._prefixes if (p[0], p[1], p[2]) != (size, network.prefixlen, net)
        ]

    def lookup(self, address: bytes) -> V | None:
        value = self._hosts.get(address)
        if value is not None or not self._prefixes:
            return value
        size = len(address)
        as_int = int.from_bytes(address, "big")
        for length, _plen, net, mask, candidate in self._prefixes:
            if length == size and as_int & mask == net:
                return candidate
        return None

    def networks(self) -> Iterable[tuple[IpNetwork, V]]:
        for packed, value in self._hosts.items():
            yield ipaddress.ip_network(ipaddress.ip_address(packed)), value
        for size, plen, net, _mask, value in self._prefixes:
            address: ipaddress.IPv4Address | ipaddress.IPv6Address = (
                ipaddress.IPv4Address(net) if size == 4 else ipaddress.IPv6Address(net)
            )
            yield ipaddress.ip_network(f"{address}/{plen}"), value
