"""Address pool: sticky, persistent, never double-leased, gateway excluded, O(1)-ish."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from common.ike.config import IpAddress
from concentrator.pool import AddressPool
from concentrator.store import Lease, MemoryStore, SqliteStore

NET4 = ipaddress.IPv4Network("10.99.100.0/24")
NET6 = ipaddress.IPv6Network("fd00:99:100::/120")
ip = ipaddress.ip_address


def test_sticky_across_restart_with_sqlite(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    pool = AddressPool(store, NET4, NET6)
    alice4, alice6 = pool.lease("alice", 4), pool.lease("alice", 6)
    bob4 = pool.lease("bob", 4)
    store.close()  # crash: nobody released anything

    store = SqliteStore(tmp_path / "state.db")
    pool = AddressPool(store, NET4, NET6)
    assert all(not lease.active for lease in store.list_leases())  # the restart ended sessions
    assert pool.lease("bob", 4) == bob4
    assert pool.lease("alice", 6) == alice6
    assert pool.lease("alice", 4) == alice4
    assert pool.lease("carol", 4) not in (alice4, bob4)
    store.close()


def test_gateway_network_and_broadcast_never_leased_then_exhaustion() -> None:
    pool = AddressPool(MemoryStore(), NET4)
    leased = {pool.lease(f"user{i}") for i in range(253)}
    assert None not in leased
    assert len(leased) == 253
    assert not leased & {ip("10.99.100.0"), ip("10.99.100.1"), ip("10.99.100.255")}
    assert pool.gateway(4) == ip("10.99.100.1")
    assert pool.lease("one-too-many") is None
    usage = pool.usage(4)
    assert usage is not None
    assert (usage.size, usage.active, usage.free) == (253, 253, 0)
    assert pool.release(ip("10.99.100.77"))
    assert pool.lease("one-too-many") == ip("10.99.100.77")


def test_same_identity_twice_gets_two_addresses() -> None:
    pool = AddressPool(MemoryStore(), NET4)
    first, second = pool.lease("alice"), pool.lease("alice")
    assert first is not None
    assert second is not None
    assert first != second
    pool.release(first)
    assert pool.lease("alice") == first  # its own released address, not a fresh one


def test_newcomers_prefer_fresh_then_least_recently_released() -> None:
    pool = AddressPool(MemoryStore(), ipaddress.IPv4Network("10.0.0.0/29"))  # .2 .. .6
    addresses = [pool.lease(name) for name in "abcde"]
    assert addresses == [ip(f"10.0.0.{n}") for n in range(2, 7)]
    for name_index in (3, 0, 4):  # release d, a, e in that order
        address = addresses[name_index]
        assert address is not None
        pool.release(address)
    assert pool.lease("x") == addresses[3]  # d was released first
    assert pool.lease("a") == addresses[0]  # a keeps its own
    assert pool.lease("y") == addresses[4]
    assert pool.lease("z") is None
    d_address = addresses[3]
    assert d_address is not None
    lease = pool.lease_of(d_address)
    assert lease is not None
    assert lease.owner == "x"
    assert lease.active


def test_released_addresses_wait_while_fresh_ones_remain() -> None:
    pool = AddressPool(MemoryStore(), NET4)
    alice = pool.lease("alice")
    assert alice is not None
    pool.release(alice)
    assert pool.lease("bob") != alice


def test_release_is_idempotent_and_ignores_strangers() -> None:
    pool = AddressPool(MemoryStore(), NET4)
    alice = pool.lease("alice")
    assert alice is not None
    assert pool.release(alice) is True
    assert pool.release(alice) is False
    assert pool.release(ip("10.99.100.200")) is False  # never leased
    assert pool.release(ip("192.0.2.1")) is False  # outside the pool
    assert pool.release(ip("fd00::5")) is False  # no IPv6 pool


def test_ipv6_pool() -> None:
    pool = AddressPool(MemoryStore(), NET4, NET6)
    assert pool.gateway(6) == ip("fd00:99:100::1")
    leased = {pool.lease(f"u{i}", 6) for i in range(254)}
    assert None not in leased
    assert len(leased) == 254
    assert ip("fd00:99:100::") not in leased
    assert ip("fd00:99:100::1") not in leased
    assert ip("fd00:99:100::ff") in leased  # IPv6 has no broadcast address
    assert pool.lease("more", 6) is None
    assert AddressPool(MemoryStore(), NET4).lease("alice", 6) is None  # no IPv6 pool


def test_big_ipv6_pool_is_lazy() -> None:
    pool = AddressPool(MemoryStore(), NET4, ipaddress.IPv6Network("fd00::/64"))
    assert pool.lease("alice", 6) == ip("fd00::2")
    usage = pool.usage(6)
    assert usage is not None
    assert usage.size == 2**64 - 2


def test_whole_slash16_is_leased_without_scanning() -> None:
    # A scan per lease would make this 65k x 65k steps; the cursor makes it linear.
    pool = AddressPool(MemoryStore(), ipaddress.IPv4Network("10.64.0.0/16"))
    count = 0
    while pool.lease(f"user{count}") is not None:
        count += 1
    assert count == 65536 - 3


def test_store_leases_outside_the_pool_are_kept_but_ignored() -> None:
    store = MemoryStore()
    outside = Lease(ip("192.0.2.9"), "alice", True, 5)
    gateway = Lease(ip("10.99.100.1"), "mallory", False, 6)
    store.put_lease(outside)
    store.put_lease(gateway)
    pool = AddressPool(store, NET4)
    assert pool.lease("alice") == ip("10.99.100.2")
    assert store.get_lease(outside.address) == outside
    assert pool.lease_of(gateway.address) is None
    assert pool.lease("next") == ip("10.99.100.3")  # seq continues after the stored maximum
    lease = store.get_lease(ip("10.99.100.3"))
    assert lease is not None
    assert lease.seq > 6


# --- Model-based: any sequence of leases, releases and restarts over a tiny pool -------

TINY = ipaddress.IPv4Network("10.0.0.0/29")  # leasable: .2 .. .6
TINY_HOSTS = [ip(f"10.0.0.{n}") for n in range(2, 7)]
OWNERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace"]


class PoolMachine(RuleBasedStateMachine):
    """Checks every lease against a simple model of the rules in ``concentrator.pool``."""

    def __init__(self) -> None:
        super().__init__()
        self.store = MemoryStore()
        self.pool = AddressPool(self.store, TINY)
        self.seq = 0
        # address -> (owner, active, seq), the model's view of every leased address
        self.model: dict[IpAddress, tuple[str, bool, int]] = {}

    def _tick(self) -> int:
        self.seq += 1
        return self.seq

    def _expected(self, owner: str) -> IpAddress | None:
        mine = [(s, a) for a, (o, act, s) in self.model.items() if o == owner and not act]
        if mine:
            return max(mine)[1]
        fresh = [a for a in TINY_HOSTS if a not in self.model]
        if fresh:
            return fresh[0]
        released = [(s, a) for a, (_, act, s) in self.model.items() if not act]
        return min(released)[1] if released else None

    @rule(owner=st.sampled_from(OWNERS))
    def lease(self, owner: str) -> None:
        expected = self._expected(owner)
        got = self.pool.lease(owner)
        assert got == expected
        if got is not None:
            assert not self.model.get(got, ("", False, 0))[1], "double lease"
            self.model[got] = (owner, True, self._tick())

    @precondition(lambda self: any(active for _, active, _ in self.model.values()))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        active = sorted(a for a, (_, act, _) in self.model.items() if act)
        address = data.draw(st.sampled_from(active))
        assert self.pool.release(address)
        owner, _, _ = self.model[address]
        self.model[address] = (owner, False, self._tick())

    @rule(address=st.sampled_from([*TINY_HOSTS, ip("10.0.0.1"), ip("10.0.0.7")]))
    def release_unheld(self, address: IpAddress) -> None:
        if not self.model.get(address, ("", False, 0))[1]:
            assert not self.pool.release(address)

    @rule()
    def restart(self) -> None:
        self.pool = AddressPool(self.store, TINY)
        self.model = {a: (o, False, s) for a, (o, _, s) in self.model.items()}

    @invariant()
    def store_matches_model(self) -> None:
        stored = {lease.address: (lease.owner, lease.active) for lease in self.store.list_leases()}
        assert stored == {a: (o, act) for a, (o, act, _) in self.model.items()}
        assert ip("10.0.0.1") not in stored


PoolMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=30, deadline=None)
TestPoolMachine = PoolMachine.TestCase
