"""TunnelManager in memory: real IKEv2 initiators against the concentrator's control plane.

No sockets and no clock: datagrams go through ``Lab.flush``, time is a
number, the data plane is a recorder. What is checked is the concentrator's
own logic on top of the IKE core: intake by SPI, COOKIE under load, the
half-open timeout, one tunnel per identity, lease release, DPD of idle
clients, graceful shutdown and garbage.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from common.dataplane.messages import SaPair
from common.ike.constants import NotifyType
from common.ike.events import (
    AddressAssigned,
    ChildSaEstablished,
    ChildSaRekeyed,
    IkeEvent,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
)
from common.ike.exchanges import Address
from common.ike.policy import Identity, IkeConfiguration, IpAddress
from common.ike.session import IkeSession
from common.ike.state import IkeSaState
from concentrator.manager import ManagerSettings, TunnelManager
from tests.helpers.ike_pair import GATEWAY_ID, PSK, MemoryPolicy, seeded_rng

GATEWAY: Address = ("198.51.100.1", 500)


@dataclass
class ReleasingPolicy(MemoryPolicy):
    """``MemoryPolicy`` (sticky by identity) that records releases and frees the address."""

    released: list[IpAddress] = field(default_factory=list)

    def release(self, address: IpAddress) -> bool:
        self.released.append(address)
        owner = next((i for i, a in self.leases.items() if a == address), None)
        if owner is None:
            return False
        del self.leases[owner]
        self.pool.insert(0, ipaddress.IPv4Address(address))
        return True


@dataclass
class RecordingDataPlane:
    installed: list[SaPair] = field(default_factory=list)
    removed_inbound: list[int] = field(default_factory=list)
    removed_peers: list[int] = field(default_factory=list)
    moved: list[tuple[int, tuple[str, int]]] = field(default_factory=list)
    active: dict[int, int] = field(default_factory=dict)  # peer -> outbound SPI sent on

    def install_sa(self, pair: SaPair) -> None:
        self.installed.append(pair)
        if not pair.defer_outbound or pair.peer_id not in self.active:
            self.active[pair.peer_id] = pair.outbound_spi

    def activate_outbound(self, peer_id: int, outbound_spi: int) -> None:
        self.active[peer_id] = outbound_spi

    def remove_inbound_sa(self, spi: int) -> None:
        self.removed_inbound.append(spi)

    def remove_peer(self, peer_id: int) -> None:
        self.removed_peers.append(peer_id)

    def set_peer_address(self, peer_id: int, address: tuple[str, int]) -> None:
        self.moved.append((peer_id, address))

    def peers(self) -> set[int]:
        """Peers with an SA still installed."""
        return {p.peer_id for p in self.installed} - set(self.removed_peers)


@dataclass
class Client:
    session: IkeSession
    address: str
    events: list[IkeEvent] = field(default_factory=list)
    online: bool = True

    def child(self) -> ChildSaEstablished | None:
        """The newest Child SA this client was told about."""
        found = [e for e in self.events if isinstance(e, ChildSaEstablished)]
        found += [e.established for e in self.events if isinstance(e, ChildSaRekeyed)]
        return found[-1] if found else None

    @property
    def assigned(self) -> ipaddress.IPv4Address | None:
        for event in self.events:
            if isinstance(event, AddressAssigned):
                return event.address
        return None


class Lab:
    """The manager, its recorders, and clients on 192.0.2.x talking to it."""

    def __init__(self, policy: ReleasingPolicy | None = None, **settings: object) -> None:
        self.now = 1000.0
        self.policy = policy or ReleasingPolicy(
            pool=[ipaddress.IPv4Address(f"10.99.0.{n}") for n in range(2, 20)]
        )
        self.dataplane = RecordingDataPlane()
        self.wire: list[tuple[bytes, Address, Address, bool]] = []
        gateway = IkeConfiguration(
            local_id=GATEWAY_ID,
            ike_proposals=("aes256gcm16-prfsha256-x25519",),
            esp_proposals=("aes256gcm16",),
            force_encapsulation=True,
        )
        self.manager = TunnelManager(
            ManagerSettings(ike=gateway, **settings),  # type: ignore[arg-type]
            self.policy,
            self.dataplane,
            lambda data, remote, local, nat_t: self.wire.append((data, remote, local, nat_t)),
            rng=seeded_rng(99),
        )
        self.clients: list[Client] = []

    def client(
        self, identity: str = "alice@example.org", psk: bytes = PSK, seed: int = 0
    ) -> Client:
        index = len(self.clients) + 10
        address = f"192.0.2.{index}"
        config = IkeConfiguration(
            local_id=Identity.rfc822(identity),
            remote_id=GATEWAY_ID,
            psk=psk,
            ike_proposals=("aes256gcm16-prfsha256-x25519",),
            esp_proposals=("aes256gcm16",),
        )
        session = IkeSession(
            config,
            is_initiator=True,
            local_addr=(address, 500),
            remote_addr=GATEWAY,
            rng=seeded_rng(seed or index),
        )
        client = Client(session, address)
        self.clients.append(client)
        if identity not in {str(i) for i in self.policy.psks}:
            self.policy.psks[Identity.rfc822(identity)] = PSK
        return client

    def flush(self, rounds: int = 20) -> None:
        """Move datagrams both ways until nothing is left to send."""
        for _ in range(rounds):
            moved = False
            for client in self.clients:
                session = client.session
                for data, (_host, port) in session.datagrams_to_send(self.now):
                    moved = True
                    if client.online:
                        source = (client.address, 4500 if session.use_nat_t else 500)
                        local = (GATEWAY[0], port)
                        self.manager.receive_ike(data, source, local, self.now)
                while (event := session.next_event()) is not None:
                    client.events.append(event)
            wire, self.wire = self.wire, []
            for data, (host, _port), _local, nat_t in wire:
                moved = True
                for client in self.clients:
                    if client.address == host and client.online:
                        source = (GATEWAY[0], 4500 if nat_t else 500)
                        client.session.receive_datagram(data, source, self.now)
            if not moved:
                return

    def advance(self, seconds: float) -> None:
        """Move time, firing every timer on both sides at its moment."""
        end = self.now + seconds
        while True:
            deadlines = [self.manager.next_deadline()]
            deadlines += [c.session.get_timer() for c in self.clients if c.online]
            due = min((d for d in deadlines if d is not None and d <= end), default=None)
            if due is None:
                break
            self.now = max(self.now, due)
            self.manager.handle_timers(self.now)
            for client in self.clients:
                timer = client.session.get_timer()
                if client.online and timer is not None and timer <= self.now:
                    client.session.handle_timer(self.now)
            self.flush()
        self.now = end

    def connect(self, client: Client) -> None:
        client.session.initiate(self.now)
        self.flush()


def kinds(events: Sequence[IkeEvent]) -> list[str]:
    return [type(e).__name__ for e in events]


def test_two_clients_get_tunnels_with_their_own_addresses() -> None:
    lab = Lab()
    alice, bob = lab.client("alice@example.org"), lab.client("bob@example.org")
    lab.connect(alice)
    lab.connect(bob)
    assert alice.assigned is not None
    assert bob.assigned is not None
    assert alice.assigned != bob.assigned
    assert len(list(lab.manager.established())) == 2
    pairs = {p.peer_id: p for p in lab.dataplane.installed}
    assert len(pairs) == 2
    for client in (alice, bob):
        pair = next(p for p in pairs.values() if p.peer_address[0] == client.address)
        # The SA's inner network is the leased address only (anti-spoof, DESIGN.md step 4),
        # and ESP goes to the client's port 4500 (we force encapsulation: no raw ESP here).
        assert pair.inner_networks == (f"{client.assigned}/32",)
        assert pair.peer_address == (client.address, 4500)
        child = next(e for e in client.events if isinstance(e, ChildSaEstablished))
        assert pair.inbound_spi == child.outbound_spi
        assert pair.inbound_keymat == child.outbound_keymat
    assert lab.manager.handshakes["established"] == 2
    assert lab.manager.half_open == 0


def test_a_retransmitted_ike_sa_init_reuses_its_session() -> None:
    lab = Lab()
    alice = lab.client()
    alice.session.initiate(lab.now)
    (request, _), *_ = alice.session.datagrams_to_send(lab.now)
    for _ in range(3):
        lab.manager.receive_ike(request, (alice.address, 500), GATEWAY, lab.now)
    assert len(lab.manager.tunnels) == 1
    assert lab.manager.half_open == 1
    assert len(lab.wire) == 3  # the cached response, every time (RFC 7296 2.1)
    assert len({data for data, *_ in lab.wire}) == 1


def test_cookies_start_at_the_threshold_and_a_cookie_retry_gets_in() -> None:
    lab = Lab(cookie_threshold=2)
    stalled = [lab.client(f"user{n}@example.org") for n in range(2)]
    for client in stalled:
        client.session.initiate(lab.now)
        for data, _ in client.session.datagrams_to_send(lab.now):
            lab.manager.receive_ike(data, (client.address, 500), GATEWAY, lab.now)
    assert lab.manager.half_open == 2
    lab.wire.clear()
    latecomer = lab.client("late@example.org")
    lab.connect(latecomer)
    assert lab.manager.ike_drops["cookie challenged"] == 1
    assert any(isinstance(e, IkeSaEstablished) for e in latecomer.events)
    # The challenge made no session: only the retry with the cookie did.
    assert lab.manager.handshakes["established"] == 1
    assert len(lab.manager.tunnels) == 3


def test_a_wrong_psk_is_refused_and_other_tunnels_keep_working() -> None:
    lab = Lab()
    alice = lab.client("alice@example.org")
    lab.connect(alice)
    mallory = lab.client("bob@example.org", psk=b"not the right key at all")
    lab.connect(mallory)
    failed = [e for e in mallory.events if isinstance(e, IkeSaFailed)]
    assert failed
    assert failed[0].notify is NotifyType.AUTHENTICATION_FAILED
    assert lab.manager.handshakes["failed: AUTHENTICATION_FAILED"] == 1
    assert [t.identity for t in lab.manager.established()] == [Identity.rfc822("alice@example.org")]
    assert len(lab.manager.tunnels) == 1
    # Alice's tunnel still answers.
    alice.session.check_liveness(lab.now)
    lab.flush()
    assert not alice.session.exchanging


def test_half_open_sessions_time_out() -> None:
    lab = Lab(half_open_timeout=30.0)
    alice = lab.client()
    alice.session.initiate(lab.now)
    for data, _ in alice.session.datagrams_to_send(lab.now):
        lab.manager.receive_ike(data, (alice.address, 500), GATEWAY, lab.now)
    assert lab.manager.half_open == 1
    alice.online = False
    lab.advance(29.0)
    assert lab.manager.half_open == 1
    lab.advance(2.0)
    assert lab.manager.half_open == 0
    assert not lab.manager.tunnels
    assert lab.manager.handshakes["half-open timeout"] == 1


def test_a_client_that_vanishes_is_found_by_dpd_and_removed() -> None:
    lab = Lab(dpd_interval=10.0)
    alice = lab.client()
    lab.connect(alice)
    (tunnel,) = lab.manager.established()
    # Traffic keeps DPD quiet: no INFORMATIONAL while ESP arrives.
    for step in range(1, 4):
        lab.manager.note_activity({tunnel.tunnel_id: step * 100}, lab.now)
        lab.advance(9.0)
    assert tunnel.session.exchanging is False
    assert lab.wire == []
    alice.online = False
    lab.advance(12.0)
    assert tunnel.session.exchanging  # the liveness check is out
    # charon's schedule (4 s, x1.8, 5 retransmissions) gives up after ~165 s.
    lab.advance(200.0)
    assert not lab.manager.tunnels
    assert lab.manager.closures["dead peer"] == 1
    assert lab.dataplane.removed_peers == [tunnel.tunnel_id]
    assert lab.policy.released == [alice.assigned]


def test_the_same_identity_reconnecting_replaces_its_old_tunnel_and_keeps_its_address() -> None:
    lab = Lab()
    laptop = lab.client("alice@example.org")
    lab.connect(laptop)
    (old,) = lab.manager.established()
    laptop.online = False  # asleep; its tunnel is stale
    again = lab.client("alice@example.org")
    lab.connect(again)
    (new,) = lab.manager.established()
    assert new is not old
    # The old tunnel gave its address back before the pool was asked, so the
    # (sticky) pool handed the same one to the new tunnel.
    assert again.assigned == laptop.assigned
    assert lab.policy.released == [laptop.assigned]
    assert old.closing
    assert lab.dataplane.removed_peers == [old.tunnel_id]
    assert lab.dataplane.peers() == {new.tunnel_id}
    assert new.leased == (again.assigned,)
    lab.advance(200.0)  # the Delete to the old laptop goes unanswered
    assert set(lab.manager.tunnels) == {new.tunnel_id}
    assert lab.policy.released == [laptop.assigned]  # released once, and not the new lease


def test_shutdown_deletes_every_tunnel() -> None:
    lab = Lab()
    clients = [lab.client(f"user{n}@example.org") for n in range(3)]
    for client in clients:
        lab.connect(client)
    lab.manager.shutdown(lab.now)
    lab.flush()
    assert not lab.manager.tunnels
    assert not lab.manager.busy()
    for client in clients:
        assert any(isinstance(e, IkeSaDeleted) and e.by_peer for e in client.events)
        assert client.session.state is IkeSaState.CLOSED
    assert sorted(lab.policy.released) == sorted(c.assigned for c in clients)  # type: ignore[type-var]


def test_a_client_delete_removes_the_tunnel_and_releases_the_lease() -> None:
    lab = Lab()
    alice = lab.client()
    lab.connect(alice)
    alice.session.delete(lab.now)
    lab.flush()
    assert not lab.manager.tunnels
    assert lab.manager.closures["deleted by peer"] == 1
    assert lab.policy.released == [alice.assigned]


def test_disconnect_by_id() -> None:
    lab = Lab()
    alice = lab.client()
    lab.connect(alice)
    (tunnel,) = lab.manager.established()
    assert lab.manager.disconnect(tunnel.tunnel_id, lab.now)
    lab.flush()
    assert not lab.manager.tunnels
    assert not lab.manager.disconnect(tunnel.tunnel_id, lab.now)


def test_garbage_is_counted_not_raised() -> None:
    lab = Lab()
    alice = lab.client()
    lab.connect(alice)
    (tunnel,) = lab.manager.established()
    junk = [b"", b"\x00" * 3, b"\xff" * 28, bytes(range(256)), tunnel.session.spi_i + bytes(40)]
    for data in junk:
        lab.manager.receive_ike(data, ("203.0.113.9", 4500), (GATEWAY[0], 4500), lab.now)
    assert sum(lab.manager.ike_drops.values()) == len(junk)
    assert lab.manager.tunnels == {tunnel.tunnel_id: tunnel}


def test_a_nat_rebinding_moves_the_outbound_sa() -> None:
    lab = Lab()
    alice = lab.client()
    lab.connect(alice)
    (tunnel,) = lab.manager.established()
    lab.manager.peer_moved(tunnel.tunnel_id, ("192.0.2.200", 61000))
    assert lab.dataplane.moved == [(tunnel.tunnel_id, ("192.0.2.200", 61000))]
    lab.manager.peer_moved(12345, ("192.0.2.201", 1))  # unknown: ignored
    assert len(lab.dataplane.moved) == 1


def test_validation_time_is_taken_at_admission() -> None:
    import datetime

    seen: list[datetime.datetime] = []
    when = datetime.datetime(2026, 11, 27, tzinfo=datetime.UTC)
    lab = Lab()

    def clock() -> datetime.datetime:
        seen.append(when)
        return when

    lab.manager._validation_time = clock
    lab.connect(lab.client())
    assert seen == [when]


@pytest.mark.parametrize("count", [25])
def test_many_clients_one_timer_structure(count: int) -> None:
    lab = Lab(
        policy=ReleasingPolicy(pool=[ipaddress.IPv4Address("10.99.0.0") + n for n in range(2, 200)])
    )
    for n in range(count):
        lab.connect(lab.client(f"user{n}@example.org"))
    assert len(list(lab.manager.established())) == count
    # One deadline per tunnel (the DPD probe), all in one heap; none due now.
    assert len(lab.manager._timers) == count
    deadline = lab.manager.next_deadline()
    assert deadline is not None
    assert deadline > lab.now


def test_a_simultaneous_ike_rekey_routes_the_redundant_sas_messages() -> None:
    """RFC 7296 2.8.2: both sides rekey the IKE SA at once; the loser's new SA is
    deleted under its own SPIs, which the manager must route to the session."""
    lab = Lab()
    alice = lab.client()
    lab.connect(alice)
    (tunnel,) = lab.manager.established()
    tunnel.session.rekey_ike(lab.now)
    alice.session.rekey_ike(lab.now)
    lab.manager._service(tunnel, lab.now)
    lab.flush()
    lab.advance(60.0)  # past the 30 s wait for a redundant SA's Delete
    assert lab.manager.ike_drops["unknown SPI"] == 0
    assert (alice.session.spi_i, alice.session.spi_r) == (
        tunnel.session.spi_i,
        tunnel.session.spi_r,
    )
    assert not alice.session.exchanging
    assert not tunnel.session.exchanging
    # The surviving SA works: a liveness check is answered.
    alice.session.check_liveness(lab.now)
    lab.flush()
    assert not alice.session.exchanging
    assert lab.manager.tunnels == {tunnel.tunnel_id: tunnel}


@pytest.mark.parametrize("started_by", ["client", "concentrator"])
def test_a_child_rekey_switches_outbound_only_after_the_old_sa_is_deleted(
    started_by: str,
) -> None:
    lab = Lab()
    alice = lab.client()
    lab.connect(alice)
    (tunnel,) = lab.manager.established()
    (old,) = tunnel.children.values()
    assert lab.dataplane.active[tunnel.tunnel_id] == old.outbound_spi
    if started_by == "client":
        alice.session.rekey_child(alice.child().inbound_spi, lab.now)  # type: ignore[union-attr]
        for data, _ in alice.session.datagrams_to_send(lab.now):  # the request only
            lab.manager.receive_ike(data, (alice.address, 4500), (GATEWAY[0], 4500), lab.now)
        # Answered and installed, but the concentrator still sends on the old SA:
        # the client has not seen the answer, so it has no new inbound SA yet.
        (new_pair,) = lab.dataplane.installed[1:]
        assert new_pair.defer_outbound
        assert lab.dataplane.active[tunnel.tunnel_id] == old.outbound_spi
    else:
        tunnel.session.rekey_child(old.inbound_spi, lab.now)
        lab.manager._service(tunnel, lab.now)
    lab.flush()
    (new,) = tunnel.children.values()
    assert new.inbound_spi != old.inbound_spi
    # Deferred only as the rekey's responder; its initiator may send on it at once.
    assert lab.dataplane.installed[1].defer_outbound == (started_by == "client")
    # The old SA is deleted: the new one carries the concentrator's traffic now.
    assert lab.dataplane.active[tunnel.tunnel_id] == new.outbound_spi
    assert lab.dataplane.removed_inbound == [old.inbound_spi]
