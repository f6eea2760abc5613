"""Inner-address leases: sticky per identity, persistent, never shared by two live clients.

Rules (issue 4), per address family:

- The network address, the gateway (first usable host, the concentrator's
  own address on the TUN) and, for IPv4, the broadcast address are never
  leased. Every other address of the range is *fresh* until first leased.
- A lease is **active** while a session holds it and **released** after.
  A released address stays its owner's: when the owner comes back it gets the
  same address (sticky), most recently released first if it has several.
- A newcomer gets a fresh address while any is left; only then does it take
  a released one, the **least recently released**, from its previous owner.
  An active address is never given to anyone else, so no address ever
  belongs to two live clients. Nothing left: ``lease`` returns None.
- One identity connected twice at once (two laptops, one user) gets **two
  different addresses**: the pool never takes an active lease away. Replacing
  the old session on INITIAL_CONTACT (RFC 7296 2.4) is the service's decision;
  it releases the old session's address first and the new one then gets it back.
- Leases are written through to the ``Store`` at every change and read back at
  start. A restart ends every session, so leases stored as active are
  released at load (keeping their owners): the reconnecting clients get their
  old addresses back. (This assumes one concentrator per store; a shared
  store needs per-node ownership and is future work, DESIGN.md.) Stored
  leases outside the configured ranges are ignored, not deleted, so a pool
  edited by mistake and edited back loses no stickiness.

Cost: leasing is O(1) amortized: a cursor walks the fresh addresses once (no
scan of a /16 per lease), released addresses sit in an insertion-ordered dict
(least recent first), and an index maps each owner to its few addresses.
Not thread-safe: the control plane is one asyncio thread.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from common.ike.config import IpAddress, IpNetwork
from concentrator.config_model import PoolConfig
from concentrator.store import Lease, Store


@dataclass(frozen=True, slots=True)
class PoolUsage:
    """How full one family's range is: leasable addresses, active and released leases."""

    size: int
    active: int
    released: int

    @property
    def free(self) -> int:
        """Addresses a newcomer could still get (fresh or released)."""
        return self.size - self.active


class _Range:
    """The leases of one address family: the bookkeeping described in the module docstring."""

    def __init__(self, network: IpNetwork) -> None:
        self.network = network
        base = int(network.network_address)
        self.gateway = ipaddress.ip_address(base + 1)
        self.first = base + 2
        # IPv4 keeps its broadcast address out; IPv6 has none.
        self.last = int(network.broadcast_address) - (1 if network.version == 4 else 0)
        self._cursor = self.first
        self.leases: dict[IpAddress, Lease] = {}
        self.released: OrderedDict[IpAddress, None] = OrderedDict()
        self.by_owner: dict[str, set[IpAddress]] = {}
        self.active = 0

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def contains(self, address: IpAddress) -> bool:
        return address.version == self.network.version and self.first <= int(address) <= self.last

    def record(self, lease: Lease) -> None:
        """Make ``lease`` the state of its address, updating every index."""
        old = self.leases.get(lease.address)
        if old is not None:
            self.by_owner[old.owner].discard(old.address)
            if not self.by_owner[old.owner]:
                del self.by_owner[old.owner]
            self.active -= old.active
        self.released.pop(lease.address, None)
        self.leases[lease.address] = lease
        self.by_owner.setdefault(lease.owner, set()).add(lease.address)
        self.active += lease.active
        if not lease.active:
            self.released[lease.address] = None  # appended: the most recently released

    def sticky(self, owner: str) -> IpAddress | None:
        """The most recently released address ``owner`` still has, if any."""
        mine = [self.leases[a] for a in self.by_owner.get(owner, ()) if not self.leases[a].active]
        return max(mine, key=lambda lease: lease.seq).address if mine else None

    def fresh(self) -> IpAddress | None:
        """The next never-leased address; each address is passed over at most once."""
        while self._cursor <= self.last:
            address = ipaddress.ip_address(self._cursor)
            self._cursor += 1
            if address not in self.leases:
                return address
        return None

    def oldest_released(self) -> IpAddress | None:
        """The least recently released address (whoever it was kept for)."""
        return next(iter(self.released), None)


class AddressPool:
    """Leases of inner addresses from an IPv4 range and an optional IPv6 range."""

    def __init__(
        self,
        store: Store,
        ipv4: ipaddress.IPv4Network,
        ipv6: ipaddress.IPv6Network | None = None,
    ) -> None:
        self._store = store
        self._ranges: dict[int, _Range] = {4: _Range(ipv4)}
        if ipv6 is not None:
            self._ranges[6] = _Range(ipv6)
        self._seq = 0
        self._load()

    @classmethod
    def from_config(cls, config: PoolConfig, store: Store) -> AddressPool:
        """The pool that ``[pool]`` describes, with the leases ``store`` holds."""
        return cls(store, config.ipv4, config.ipv6)

    def _load(self) -> None:
        leases = sorted(self._store.list_leases(), key=lambda lease: lease.seq)
        self._seq = max((lease.seq for lease in leases), default=0)
        for lease in leases:
            family = self._range_of(lease.address)
            if family is None:
                continue
            if lease.active:  # a restart ended every session: keep it for its owner
                lease = Lease(lease.address, lease.owner, False, lease.seq)
                self._store.put_lease(lease)
            family.record(lease)

    def _range_of(self, address: IpAddress) -> _Range | None:
        family = self._ranges.get(address.version)
        return family if family is not None and family.contains(address) else None

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # --- Public API -------------------------------------------------------------

    def gateway(self, version: Literal[4, 6] = 4) -> IpAddress | None:
        """The concentrator's own address in the range (never leased), if the family exists."""
        family = self._ranges.get(version)
        return None if family is None else family.gateway

    def network(self, version: Literal[4, 6] = 4) -> IpNetwork | None:
        """The configured range of ``version``, if any."""
        family = self._ranges.get(version)
        return None if family is None else family.network

    def lease(self, owner: str, version: Literal[4, 6] = 4) -> IpAddress | None:
        """An address for ``owner`` (an identity key) to hold until ``release``.

        Its own released address if it has one, else a fresh one, else the
        least recently released one; None when the range is exhausted or the
        family is not configured.
        """
        family = self._ranges.get(version)
        if family is None:
            return None
        address = family.sticky(owner)
        if address is None:
            address = family.fresh()
        if address is None:
            address = family.oldest_released()
        if address is None:
            return None
        lease = Lease(address, owner, True, self._next_seq())
        self._store.put_lease(lease)
        family.record(lease)
        return address

    def release(self, address: IpAddress) -> bool:
        """End the session's hold on ``address``; it stays its owner's (sticky).

        Returns whether an active lease was released; releasing an address
        that is not actively leased (twice, or never leased) changes nothing.
        """
        family = self._range_of(address)
        lease = None if family is None else family.leases.get(address)
        if family is None or lease is None or not lease.active:
            return False
        released = Lease(address, lease.owner, False, self._next_seq())
        self._store.put_lease(released)
        family.record(released)
        return True

    def lease_of(self, address: IpAddress) -> Lease | None:
        """The lease of ``address`` (active or released), if any."""
        family = self._range_of(address)
        return None if family is None else family.leases.get(address)

    def active_leases(self) -> Iterator[Lease]:
        """Every active lease (for status output and reconciliation)."""
        for family in self._ranges.values():
            yield from (lease for lease in family.leases.values() if lease.active)

    def usage(self, version: Literal[4, 6] = 4) -> PoolUsage | None:
        """Size and use of the ``version`` range (for metrics), if configured."""
        family = self._ranges.get(version)
        if family is None:
            return None
        return PoolUsage(family.size, family.active, len(family.released))
