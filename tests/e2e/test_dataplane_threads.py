"""The data plane end to end, in-process: two ``DataPlane``s in thread mode form a tunnel.

Topology (all in this process, on loopback)::

    test ("kernel" A)                                          test ("kernel" B)
         | socketpair                                            socketpair |
    [TUN A] - DataPlane A - UDP 127.0.0.1:a <= ESP => UDP 127.0.0.1:b - DataPlane B - [TUN B]
      inner 10.1.0.0/24, fd00:a::/64                 inner 10.2.0.0/24, fd00:b::/64

Each "TUN" is one end of an ``AF_UNIX``/``SOCK_DGRAM`` socket pair: the test
holds the other end, so ``send`` is a packet the kernel routes into the
tunnel and ``recv`` is what the data plane wrote to the TUN. Extra UDP
sockets stand in for a NAT-rebound peer, a stranger, or a tap on the wire.

What is checked (DESIGN.md "Data plane and control plane"): packets and
counters per SA, the RFC 4301 5.2 anti-spoof check, RFC 3948 classification
of what arrives on port 4500, RFC 4303 3.4.3 replay protection, NAT
rebinding reported only for authenticated packets (RFC 7296 2.23), make
before break rekeying, the soft sequence limit, many peers on one data
plane, and a clean stop.

No sleeps stand in for synchronisation: a test waits for a packet, an
event or a counter, each with a timeout (``RECV_TIMEOUT_S``).
"""

from __future__ import annotations

import ipaddress
import itertools
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from scapy.compat import raw
from scapy.layers.inet import IP, TCP, IPOption_Router_Alert
from scapy.layers.inet6 import IPv6
from scapy.packet import Packet, Raw

from common.dataplane.control import DataPlane, DataPlaneCounters, DataPlaneError
from common.dataplane.messages import (
    Event,
    IkeDatagram,
    PeerAddress,
    PeerAddressChanged,
    RekeyNeeded,
    SaCounters,
    SaPair,
)
from common.esp.natt import NAT_KEEPALIVE, NON_ESP_MARKER
from common.esp.sa import InboundSa, OutboundSa
from common.esp.suites import suite_by_name
from common.wire.offload import complete_checksum
from tests.helpers.packets import ipv4_udp, ipv6_udp, ones_complement_checksum

RECV_TIMEOUT_S = 3.0
SUITES = ["aes256gcm16", "chacha20poly1305", "aes128-sha256"]
A_NETWORKS = ("10.1.0.0/24", "fd00:a::/64")
B_NETWORKS = ("10.2.0.0/24", "fd00:b::/64")
A_PEER_ID, B_PEER_ID = 1, 7  # each side's name for the other; deliberately different
VIRTIO_NET_HDR = struct.Struct("=BBHHHH")  # include/uapi/linux/virtio_net.h
PLAIN_VNET_HDR = bytes(VIRTIO_NET_HDR.size)


# -- the harness ------------------------------------------------------------


class Side:
    """One tunnel end: a thread-mode ``DataPlane``, the kernel's end of its TUN, its UDP socket
    (or one per ``listen`` address: a concentrator on IPv4 and IPv6)."""

    def __init__(
        self,
        *,
        tun_offload: bool = False,
        mss_clamp_mtu: int | None = None,
        listen: tuple[str, ...] = ("127.0.0.1",),
    ) -> None:
        self.kernel, self._tun = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.kernel.settimeout(RECV_TIMEOUT_S)
        self.sockets = []
        for host in listen:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.bind((host, 0))
            self.sockets.append(sock)
        self.udp = self.sockets[0]
        self.dp = DataPlane(
            self._tun.fileno(),
            self.udp if len(self.sockets) == 1 else self.sockets,
            mode="thread",
            tun_offload=tun_offload,
            mss_clamp_mtu=mss_clamp_mtu,
        )
        self.dp.start()

    @property
    def address(self) -> PeerAddress:
        return self.address_of(0)

    def address_of(self, index: int) -> PeerAddress:
        """(host, port) of the data plane's socket ``index``."""
        host, port = self.sockets[index].getsockname()[:2]
        return host, port

    def route_in(self, packet: bytes) -> None:
        """The kernel routes ``packet`` into the tunnel (a TUN read for the data plane)."""
        self.kernel.send(packet)

    def delivered(self) -> bytes:
        """The next packet the data plane wrote to the TUN."""
        return self.kernel.recv(1 << 17)

    def assert_nothing_delivered(self) -> None:
        """Call once the drop was counted: a drop is counted before any write would have been."""
        readable, _, _ = select.select([self.kernel], [], [], 0)
        if readable:
            raise AssertionError(f"unexpected TUN write: {self.kernel.recv(1 << 17).hex()}")

    def counters(self) -> DataPlaneCounters:
        return self.dp.counters()

    def close(self) -> None:
        self.dp.stop()
        for sock in (self.kernel, self._tun, *self.sockets):
            sock.close()


@pytest.fixture
def make_side() -> Iterator[Callable[..., Side]]:
    made: list[Side] = []

    def make(**options: Any) -> Side:
        side = Side(**options)
        made.append(side)
        return side

    yield make
    for side in made:
        side.close()


@pytest.fixture
def udp_socket() -> Iterator[Callable[[], socket.socket]]:
    """Extra UDP endpoints on loopback (a rebound NAT mapping, a stranger, a tap)."""
    made: list[socket.socket] = []

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(RECV_TIMEOUT_S)
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close()


def keymat(suite: str, seed: int) -> bytes:
    """Distinct bytes per direction and generation, so swapped keys cannot pass by symmetry."""
    return bytes((seed * 37 + index) & 0xFF for index in range(suite_by_name(suite).keymat_len))


@dataclass(frozen=True)
class Tunnel:
    """The two SaPairs of one Child SA as A and B hold them (mirror images)."""

    a: Side
    b: Side
    a_pair: SaPair
    b_pair: SaPair

    @property
    def spi_ab(self) -> int:
        return self.a_pair.outbound_spi

    @property
    def spi_ba(self) -> int:
        return self.b_pair.outbound_spi

    def sealer_as_a(self) -> OutboundSa:
        """An independent sender with A's outbound keys: B cannot tell its packets from A's."""
        pair = self.a_pair
        return OutboundSa(pair.outbound_spi, suite_by_name(pair.suite), pair.outbound_keymat)

    def opener_as_a(self) -> InboundSa:
        """An independent receiver with A's inbound keys, for what B sends elsewhere."""
        pair = self.a_pair
        return InboundSa(pair.inbound_spi, suite_by_name(pair.suite), pair.inbound_keymat)


def mirrored_pairs(
    a: Side,
    b: Side,
    suite: str,
    *,
    generation: int = 1,
    soft_seq_limit: int | None = None,
    a_sends_to: PeerAddress | None = None,
    b_sends_to: PeerAddress | None = None,
) -> tuple[SaPair, SaPair]:
    spi_ab, spi_ba = 0x0A0B_0000 + generation, 0x0B0A_0000 + generation
    key_ab, key_ba = keymat(suite, 2 * generation), keymat(suite, 2 * generation + 1)
    a_pair = SaPair(
        peer_id=A_PEER_ID,
        suite=suite,
        inbound_spi=spi_ba,
        outbound_spi=spi_ab,
        peer_address=a_sends_to or b.address,
        inner_networks=B_NETWORKS,
        inbound_keymat=key_ba,
        outbound_keymat=key_ab,
        soft_seq_limit=soft_seq_limit,
    )
    b_pair = SaPair(
        peer_id=B_PEER_ID,
        suite=suite,
        inbound_spi=spi_ab,
        outbound_spi=spi_ba,
        peer_address=b_sends_to or a.address,
        inner_networks=A_NETWORKS,
        inbound_keymat=key_ab,
        outbound_keymat=key_ba,
        soft_seq_limit=soft_seq_limit,
    )
    return a_pair, b_pair


def connect(a: Side, b: Side, suite: str = "aes256gcm16", **options: object) -> Tunnel:
    """Install a Child SA on both sides, B (the responder) first."""
    a_pair, b_pair = mirrored_pairs(a, b, suite, **options)  # type: ignore[arg-type]
    b.dp.install_sa(b_pair)
    a.dp.install_sa(a_pair)
    return Tunnel(a, b, a_pair, b_pair)


@pytest.fixture
def tunnel(make_side: Callable[..., Side]) -> Tunnel:
    return connect(make_side(), make_side())


def seal(sa: OutboundSa, packet: bytes) -> bytes:
    """``sa.encapsulate`` for a packet that must go out (a ``Drop`` here is a test bug)."""
    esp = sa.encapsulate(packet)
    assert isinstance(esp, bytes), esp
    return esp


def a_to_b(data: bytes = b"ping", *, src: str = "10.1.0.5", dst: str = "10.2.0.7") -> bytes:
    return ipv4_udp(src, dst, data=data)


def b_to_a(data: bytes = b"pong", *, src: str = "10.2.0.7", dst: str = "10.1.0.5") -> bytes:
    return ipv4_udp(src, dst, data=data)


def events_of(dp: DataPlane, kind: type[Event], timeout_s: float) -> list[Event]:
    """Events of ``kind`` that arrive within ``timeout_s``; returns at the first batch with one."""
    deadline = time.monotonic() + timeout_s
    while True:
        matching = [
            e for e in dp.read_events(max(0.0, deadline - time.monotonic())) if isinstance(e, kind)
        ]
        if matching or time.monotonic() >= deadline:
            return matching


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = RECV_TIMEOUT_S) -> None:
    """Poll ``condition`` (a counters query) until it holds; the workers count asynchronously."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def assert_monotonic(snapshots: list[DataPlaneCounters]) -> None:
    """Totals are running sums: no install, retirement or removal may make one go backwards."""
    for earlier, later in itertools.pairwise(snapshots):
        for direction in ("inbound", "outbound"):
            before, after = getattr(earlier, direction), getattr(later, direction)
            for key, value in before.items():
                assert after.get(key, 0) >= value, (direction, key, before, after)


# -- forwarding and counters --------------------------------------------------


@pytest.mark.parametrize("suite", SUITES)
def test_packets_cross_both_ways_and_are_counted(
    make_side: Callable[..., Side], suite: str
) -> None:
    a, b = make_side(), make_side()
    t = connect(a, b, suite)
    requests = [a_to_b(b"v4 request"), ipv6_udp("fd00:a::5", "fd00:b::7", data=b"v6 request")]
    replies = [b_to_a(b"v4 reply!"), ipv6_udp("fd00:b::7", "fd00:a::5", data=b"v6 reply!!")]

    for request, reply in zip(requests, replies, strict=True):
        a.route_in(request)
        assert b.delivered() == request
        b.route_in(reply)
        assert a.delivered() == reply

    sent_ab, sent_ba = sum(map(len, requests)), sum(map(len, replies))
    at_a, at_b = a.counters(), b.counters()
    # (spi, peer, direction, packets, octets, drops, highest sequence number)
    assert at_a.sa(t.spi_ab) == SaCounters(t.spi_ab, A_PEER_ID, "outbound", 2, sent_ab, {}, 2)
    assert at_b.sa(t.spi_ab) == SaCounters(t.spi_ab, B_PEER_ID, "inbound", 2, sent_ab, {}, 2)
    assert at_b.sa(t.spi_ba) == SaCounters(t.spi_ba, B_PEER_ID, "outbound", 2, sent_ba, {}, 2)
    assert at_a.sa(t.spi_ba) == SaCounters(t.spi_ba, A_PEER_ID, "inbound", 2, sent_ba, {}, 2)
    assert at_a.outbound == {"packets": 2, "octets": sent_ab}
    assert at_a.inbound == {"packets": 2, "octets": sent_ba, "keepalives": 0, "ike_datagrams": 0}
    assert at_b.outbound == {"packets": 2, "octets": sent_ba}
    assert at_b.inbound == {"packets": 2, "octets": sent_ab, "keepalives": 0, "ike_datagrams": 0}


def test_inner_source_outside_the_peers_selectors_is_dropped(tunnel: Tunnel) -> None:
    """RFC 4301 5.2: a decrypted packet must match the SA's traffic selectors.

    A routes by destination only, so it happily sends these; B must refuse them.
    """
    a, b = tunnel.a, tunnel.b
    a.route_in(a_to_b(b"spoofed v4", src="10.9.9.9"))
    a.route_in(ipv6_udp("fd00:bad::1", "fd00:b::7", data=b"spoofed v6"))
    a.route_in(a_to_b(b"from B's own network", src="10.2.0.99"))
    honest = a_to_b(b"honest")
    a.route_in(honest)

    assert b.delivered() == honest  # the first write B makes is the honest packet
    assert b.counters().inbound["drop_spoofed_source"] == 3
    b.assert_nothing_delivered()


def test_destination_outside_every_peer_is_not_sent(tunnel: Tunnel) -> None:
    a, b = tunnel.a, tunnel.b
    a.route_in(a_to_b(dst="10.77.0.1"))
    a.route_in(ipv6_udp("fd00:a::5", "fd00:77::1", data=b"nowhere"))
    a.route_in(bytes(40))  # version 0: not an IP packet at all
    routed = a_to_b(b"routed")
    a.route_in(routed)

    assert b.delivered() == routed  # only the routed packet ever reached B
    outbound = a.counters().outbound
    assert outbound["drop_no_route"] == 2
    assert outbound["drop_not_ip"] == 1
    assert outbound["packets"] == 1


# -- what arrives on port 4500 (RFC 3948) ----------------------------------------


def test_port_4500_datagrams_are_told_apart(
    tunnel: Tunnel, udp_socket: Callable[[], socket.socket]
) -> None:
    """RFC 3948 2: a 0xFF octet is a keepalive, a zero marker precedes IKE, anything else is ESP."""
    b = tunnel.b
    stranger = udp_socket()
    ike_message = bytes(range(28)) + b"IKE_SA_INIT body"  # RFC 7296 3.1: a 28-octet header first
    for datagram in (
        struct.pack("!II", 0xDEADBEEF, 1) + bytes(40),  # ESP for an SPI nobody installed
        NAT_KEEPALIVE,
        b"\x01\x02\x03",  # too short for anything
        NON_ESP_MARKER + bytes(10),  # marker, but too short for an IKE header
        b"",
        NON_ESP_MARKER + ike_message,  # last: when it is up, all the others were counted
    ):
        stranger.sendto(datagram, b.address)

    readable, _, _ = select.select([b.dp.ike_fd], [], [], RECV_TIMEOUT_S)
    assert readable, "the IKE datagram never reached the control plane"
    assert b.dp.read_ike() == [IkeDatagram(ike_message, stranger.getsockname(), 0, b.address)]
    # The worker counts an IKE datagram just after handing it up: wait for that one count.
    # Everything sent before it was counted before it was handed up.
    wait_until(lambda: b.counters().inbound["ike_datagrams"] == 1, "the IKE datagram count")
    inbound = b.counters().inbound
    assert inbound["drop_unknown_spi"] == 1
    assert inbound["keepalives"] == 1
    assert inbound["drop_malformed_datagram"] == 3
    assert inbound["ike_datagrams"] == 1
    assert inbound["packets"] == 0
    b.assert_nothing_delivered()

    b.dp.send_ike(b"IKE response", stranger.getsockname())  # goes out framed, from port 4500
    assert stranger.recvfrom(1500) == (NON_ESP_MARKER + b"IKE response", b.address)


def test_replayed_esp_is_dropped(
    make_side: Callable[..., Side], udp_socket: Callable[[], socket.socket]
) -> None:
    """RFC 4303 3.4.3: a sequence number already received is dropped, whoever resends it.

    A tap on the wire relays A's datagrams to B (both SAs name the tap as the
    peer), so the test holds A's real ESP bytes and can send them again.
    """
    a, b = make_side(), make_side()
    tap, stranger = udp_socket(), udp_socket()
    t = connect(a, b, a_sends_to=tap.getsockname(), b_sends_to=tap.getsockname())
    packet = a_to_b(b"exactly once")

    a.route_in(packet)
    esp, source = tap.recvfrom(65535)
    assert source == a.address
    assert esp[:8] == struct.pack("!II", t.spi_ab, 1)  # RFC 4303 2.1, 2.2: SPI, then seq 1
    tap.sendto(esp, b.address)
    assert b.delivered() == packet

    tap.sendto(esp, b.address)  # the same bytes again, from the same address
    stranger.sendto(esp, b.address)  # and from elsewhere: a replay must not move the peer

    wait_until(lambda: b.counters().inbound.get("drop_replayed") == 2, "two replay drops")
    assert b.counters().sa(t.spi_ab).drops == {"replayed": 2}  # type: ignore[union-attr]
    assert not [e for e in b.dp.read_events() if isinstance(e, PeerAddressChanged)]
    b.assert_nothing_delivered()


def test_authenticated_packet_from_a_new_address_moves_the_peer(
    tunnel: Tunnel, udp_socket: Callable[[], socket.socket]
) -> None:
    """NAT rebinding (RFC 7296 2.23, RFC 3948): B reports the new address; the control plane
    decides whether to follow. Only a packet that authenticates may trigger the report."""
    a, b = tunnel.a, tunnel.b
    a.route_in(a_to_b(b"before the move"))
    assert b.delivered() == a_to_b(b"before the move")
    rebound = udp_socket()  # A's new NAT mapping
    sealer = tunnel.sealer_as_a()
    sealer.seq = 100  # past anything A itself sent, so the replay window takes it

    tampered = bytearray(seal(sealer, a_to_b(b"forged")))
    tampered[-1] ^= 0x01  # the ICV no longer verifies (RFC 4303 3.4.4)
    rebound.sendto(bytes(tampered), b.address)
    moved = a_to_b(b"from the new NAT mapping")
    rebound.sendto(seal(sealer, moved), b.address)

    assert b.delivered() == moved
    assert events_of(b.dp, PeerAddressChanged, RECV_TIMEOUT_S) == [
        PeerAddressChanged(B_PEER_ID, tunnel.spi_ab, rebound.getsockname())
    ]
    assert b.counters().sa(tunnel.spi_ab).drops == {"auth_failed": 1}  # type: ignore[union-attr]

    again = a_to_b(b"still from the new mapping")
    rebound.sendto(seal(sealer, again), b.address)
    assert b.delivered() == again
    assert not [e for e in b.dp.read_events() if isinstance(e, PeerAddressChanged)], (
        "one report per change"
    )

    # Until the control plane follows, replies still go to the old address...
    b.route_in(b_to_a(b"to the old address"))
    assert a.delivered() == b_to_a(b"to the old address")
    # ...and after set_peer_address, to the new one.
    b.dp.set_peer_address(B_PEER_ID, rebound.getsockname())
    reply = b_to_a(b"to the new address")
    b.route_in(reply)
    esp, source = rebound.recvfrom(65535)
    assert source == b.address
    assert esp[:4] == tunnel.spi_ba.to_bytes(4, "big")
    assert tunnel.opener_as_a().decapsulate(esp) == reply


# -- SA lifecycle -------------------------------------------------------------


def test_rekey_is_make_before_break(make_side: Callable[..., Side]) -> None:
    """RFC 7296 2.8: the new Child SA carries traffic at once; the old inbound SA keeps
    decrypting what was already in flight until it is deleted, then its SPI is unknown."""
    a, b = make_side(), make_side()
    old = connect(a, b)
    a.route_in(a_to_b(b"old SA"))
    assert b.delivered() == a_to_b(b"old SA")
    b.route_in(b_to_a(b"old SA reply"))
    assert a.delivered() == b_to_a(b"old SA reply")
    history_a, history_b = [a.counters()], [b.counters()]

    # CREATE_CHILD_SA { N(REKEY_SA), SA, Ni, KEi, TSi, TSr } -->
    #                 <-- { SA, Nr, KEr, TSi, TSr }
    # Each side installs the new pair; the responder (B) first.
    new_a, new_b = mirrored_pairs(a, b, "aes256gcm16", generation=2)
    b.dp.install_sa(new_b)
    history_a.append(a.counters())
    history_b.append(b.counters())
    a.dp.install_sa(new_a)
    history_a.append(a.counters())
    history_b.append(b.counters())

    a.route_in(a_to_b(b"new SA"))
    assert b.delivered() == a_to_b(b"new SA")
    b.route_in(b_to_a(b"new SA reply"))
    assert a.delivered() == b_to_a(b"new SA reply")
    at_a, at_b = a.counters(), b.counters()
    assert at_a.sa(new_a.outbound_spi).packets == 1  # type: ignore[union-attr]
    assert at_a.sa(old.spi_ab) is None  # A's outbound SA was replaced, not kept beside
    assert at_b.sa(new_b.inbound_spi).packets == 1  # type: ignore[union-attr]
    assert at_b.sa(old.spi_ab).packets == 1  # type: ignore[union-attr]  # still installed
    assert at_a.sa(new_a.inbound_spi).packets == 1  # type: ignore[union-attr]
    history_a.append(at_a)
    history_b.append(at_b)

    # A packet the old SA sealed, still in flight, from A's own address.
    late = old.sealer_as_a()
    late.seq = 10
    a.udp.sendto(seal(late, a_to_b(b"in flight")), b.address)
    assert b.delivered() == a_to_b(b"in flight")
    assert b.counters().sa(old.spi_ab).packets == 2  # type: ignore[union-attr]

    # INFORMATIONAL { D(old SPIs) } -->, then the old inbound SAs go.
    b.dp.remove_inbound_sa(old.spi_ab)
    a.dp.remove_inbound_sa(old.spi_ba)
    history_a.append(a.counters())
    history_b.append(b.counters())
    a.udp.sendto(seal(late, a_to_b(b"too late")), b.address)
    wait_until(lambda: b.counters().inbound.get("drop_unknown_spi") == 1, "unknown SPI drop")
    b.assert_nothing_delivered()

    final_a, final_b = a.counters(), b.counters()
    history_a.append(final_a)
    history_b.append(final_b)
    assert_monotonic(history_a)
    assert_monotonic(history_b)
    assert {s.spi for s in final_b.sas} == {new_b.inbound_spi, new_b.outbound_spi}
    assert final_b.inbound["packets"] == 3  # old (2, retired) + new (1)
    assert final_a.outbound["packets"] == 2  # old (1, retired) + new (1)
    assert final_a.inbound["packets"] == 2


def test_rekey_responder_defers_its_new_outbound_sa_until_activated(
    make_side: Callable[..., Side],
) -> None:
    """The rekey responder (B) installs the new pair before it answers, but must not
    send on it until the initiator has installed its inbound half: it keeps the old
    outbound SA until ``activate_outbound`` (after the old SA's Delete)."""
    a, b = make_side(), make_side()
    old = connect(a, b)
    new_a, new_b = mirrored_pairs(a, b, "aes256gcm16", generation=2)
    b.dp.install_sa(replace(new_b, defer_outbound=True))
    # A has not installed the new SA yet: B's replies must still use the old one.
    b.route_in(b_to_a(b"during the rekey"))
    assert a.delivered() == b_to_a(b"during the rekey")
    assert a.counters().sa(old.spi_ba).packets == 1  # type: ignore[union-attr]
    assert b.counters().sa(new_b.outbound_spi) is None  # deferred: not sending on it
    # Its inbound half works at once (the initiator may switch as soon as it has the answer).
    a.dp.install_sa(new_a)
    a.route_in(a_to_b(b"new SA"))
    assert b.delivered() == a_to_b(b"new SA")
    # Delete of the old SA done: B activates the new outbound SA.
    b.dp.activate_outbound(new_b.peer_id, new_b.outbound_spi)
    b.route_in(b_to_a(b"after activation"))
    assert a.delivered() == b_to_a(b"after activation")
    assert a.counters().sa(new_a.inbound_spi).packets == 1  # type: ignore[union-attr]
    assert a.counters().inbound.get("drop_unknown_spi", 0) == 0
    # Activating an unknown SPI is a no-op.
    b.dp.activate_outbound(new_b.peer_id, 0x1234)
    b.route_in(b_to_a(b"still new"))
    assert a.delivered() == b_to_a(b"still new")


def test_soft_sequence_limit_asks_for_a_rekey_once(make_side: Callable[..., Side]) -> None:
    """Past the soft limit traffic still flows, and the outbound worker asks IKE for a
    CREATE_CHILD_SA once (checked about once a second, off the packet loop)."""
    a, b = make_side(), make_side()
    t = connect(a, b, soft_seq_limit=5)
    for index in range(6):
        a.route_in(a_to_b(b"packet %d" % index))
        assert b.delivered() == a_to_b(b"packet %d" % index)
    for index in range(4):  # B stays below its own limit
        b.route_in(b_to_a(b"reply %d" % index))
        assert a.delivered() == b_to_a(b"reply %d" % index)

    assert events_of(a.dp, RekeyNeeded, RECV_TIMEOUT_S) == [RekeyNeeded(A_PEER_ID, t.spi_ab)]
    # Over the next housekeeping round: no repeat from A, nothing from B.
    assert events_of(b.dp, RekeyNeeded, 1.5) == []
    assert events_of(a.dp, RekeyNeeded, 0.0) == []


def test_remove_peer_forgets_routes_and_spis(tunnel: Tunnel) -> None:
    a, b = tunnel.a, tunnel.b
    a.route_in(a_to_b())
    assert b.delivered() == a_to_b()
    b.route_in(b_to_a())
    assert a.delivered() == b_to_a()
    before = b.counters()

    b.dp.remove_peer(B_PEER_ID)
    a.route_in(a_to_b(b"to a forgotten SA"))  # A still has its SA; B no longer knows the SPI
    b.route_in(b_to_a(b"no route any more"))

    def both_dropped() -> bool:
        counters = b.counters()
        return (
            counters.inbound.get("drop_unknown_spi") == 1
            and counters.outbound.get("drop_no_route") == 1
        )

    wait_until(both_dropped, "unknown SPI and no route at B")
    after = b.counters()
    assert after.sas == ()
    assert_monotonic([before, after])  # the removed SAs' packets stay in the totals
    assert after.inbound["packets"] == 1
    assert after.outbound["packets"] == 1
    b.assert_nothing_delivered()
    a.assert_nothing_delivered()


def test_many_peers_on_one_data_plane(
    make_side: Callable[..., Side],
    udp_socket: Callable[[], socket.socket],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A concentrator: 200 clients, one leased /32 each, each behind its own outer address.

    Counters come back in parts (a channel message holds 1 MiB, thousands of
    SAs do not fit): 7 SAs a part here, so 400 SAs make 58 parts per request.
    """
    monkeypatch.setattr("common.dataplane.base.COUNTERS_PER_MESSAGE", 7)
    count = 200
    suite = "aes128gcm16"
    concentrator = make_side()
    clients = [udp_socket() for _ in range(count)]
    leases = [str(ipaddress.IPv4Address("10.100.0.1") + i) for i in range(count)]
    pairs = [
        SaPair(
            peer_id=1000 + i,
            suite=suite,
            inbound_spi=0x0001_0000 + i,
            outbound_spi=0x0002_0000 + i,
            peer_address=clients[i].getsockname(),
            inner_networks=(f"{leases[i]}/32",),
            inbound_keymat=keymat(suite, 3 * i),
            outbound_keymat=keymat(suite, 3 * i + 1),
        )
        for i in range(count)
    ]
    for pair in pairs:
        concentrator.dp.install_sa(pair)

    # Outbound: the LAN answers every client; each answer goes to that client only.
    answers = [ipv4_udp("10.0.0.1", leases[i], data=b"to %d" % i) for i in range(count)]
    for answer in answers:
        concentrator.route_in(answer)
    for i, (client, pair) in enumerate(zip(clients, pairs, strict=True)):
        esp, source = client.recvfrom(65535)
        assert source == concentrator.address
        opener = InboundSa(pair.outbound_spi, suite_by_name(suite), pair.outbound_keymat)
        assert opener.decapsulate(esp) == answers[i], f"client {i}"

    # Inbound: every client sends from its lease; client 3 also tries client 4's lease.
    sealers = [
        OutboundSa(pair.inbound_spi, suite_by_name(suite), pair.inbound_keymat) for pair in pairs
    ]
    spoof = seal(sealers[3], ipv4_udp(leases[4], "10.0.0.1", data=b"I am 4"))
    clients[3].sendto(spoof, concentrator.address)
    received: set[bytes] = set()
    expected: set[bytes] = set()
    for start in range(0, count, 20):  # a TUN socket pair queues only ~10 writes: read as we go
        for i in range(start, start + 20):
            request = ipv4_udp(leases[i], "10.0.0.1", data=b"from %d" % i)
            expected.add(request)
            clients[i].sendto(seal(sealers[i], request), concentrator.address)
        received.update(concentrator.delivered() for _ in range(20))
    assert received == expected

    counters = concentrator.counters()
    assert counters.outbound["packets"] == count
    assert counters.inbound["drop_spoofed_source"] == 1
    assert len(counters.sas) == 2 * count
    assert {s.spi for s in counters.sas} == {p.inbound_spi for p in pairs} | {
        p.outbound_spi for p in pairs
    }
    concentrator.assert_nothing_delivered()

    # The asyncio control plane's way: ask, keep serving events, find the answer.
    dp = concentrator.dp
    dp.request_counters()
    assert dp.counters_outstanding
    wait_until(lambda: not dp.read_events(0.05) and not dp.counters_outstanding, "counters")
    assert dp.latest_counters is not None
    assert len(dp.latest_counters.sas) == 2 * count
    assert dp.latest_counters.inbound["drop_spoofed_source"] == 1


# -- TUN offloads through the tunnel ------------------------------------------------


def test_tso_super_packet_crosses_as_segments_and_is_coalesced(
    make_side: Callable[..., Side],
) -> None:
    """With virtio-net headers on both TUNs: A segments one 20 KB TSO read into MSS-sized
    ESP packets (the wire never carries more than one MTU), B coalesces them back."""
    a, b = make_side(tun_offload=True), make_side(tun_offload=True)
    connect(a, b)
    mss = 1400
    payload = bytes(i * 13 & 0xFF for i in range(20_000))
    packet = bytes(
        raw(
            IP(src="10.1.0.5", dst="10.2.0.7", flags="DF")
            / TCP(sport=40000, dport=5201, seq=2**32 - 3000, flags="A")
            / Raw(payload)
        )
    )
    # What the kernel hands a TUN with TUN_F_TSO4: the pseudo-header sum in the checksum field.
    pseudo = packet[12:20] + b"\x00\x06" + (len(packet) - 20).to_bytes(2, "big")
    partial = (~ones_complement_checksum(pseudo) & 0xFFFF).to_bytes(2, "big")
    a.route_in(VIRTIO_NET_HDR.pack(1, 1, 40, mss, 20, 16) + packet[:36] + partial + packet[38:])

    write = b.delivered()
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VIRTIO_NET_HDR.unpack_from(write)
    assert (flags, gso_type, gso_size) == (1, 1, mss), "expected one coalesced GSO write"
    assert complete_checksum(write[VIRTIO_NET_HDR.size :], csum_start, csum_offset) == packet
    assert b.counters().inbound["packets"] == -(-len(payload) // mss)  # one ESP packet a segment

    udp = ipv4_udp("10.1.0.5", "10.2.0.7", data=b"not TCP")  # plain header both ways
    a.route_in(PLAIN_VNET_HDR + udp)
    assert b.delivered() == PLAIN_VNET_HDR + udp


# -- TCP MSS clamping (issue 4) ------------------------------------------------------

CLAMP_MTU = 1400  # TUN MTU: MSS at most 1360 over IPv4, 1340 over IPv6


def tcp_packet(
    src: str, dst: str, flags: str, *, mss: int | None = None, data: bytes = b""
) -> bytes:
    """A TCP segment built (lengths, checksums) by scapy, not by the code under test."""
    options = [("MSS", mss), ("SAckOK", b""), ("WScale", 7)] if mss is not None else []
    ip: Packet = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    segment = TCP(sport=40000, dport=443, seq=1000, ack=7 if "A" in flags else 0, flags=flags)
    segment.options = options
    return bytes(raw(ip / segment / Raw(data))) if data else bytes(raw(ip / segment))


def assert_clamped(original: bytes, delivered: bytes, mss: int) -> None:
    """Only the MSS option changed, and scapy's own checksum agrees with the one written."""
    parse = IPv6 if delivered[0] >> 4 == 6 else IP
    parsed = parse(delivered)
    assert dict(parsed[TCP].options)["MSS"] == mss
    written = parsed[TCP].chksum
    del parsed[TCP].chksum
    assert parse(raw(parsed))[TCP].chksum == written
    assert len(delivered) == len(original)
    assert sum(x != y for x, y in zip(original, delivered, strict=True)) <= 4


@pytest.mark.parametrize(
    ("a_host", "b_host", "mss"),
    [("10.1.0.5", "10.2.0.7", CLAMP_MTU - 40), ("fd00:a::5", "fd00:b::7", CLAMP_MTU - 60)],
    ids=["ipv4", "ipv6"],
)
def test_syn_mss_is_clamped_in_each_direction_and_data_is_untouched(
    make_side: Callable[..., Side], a_host: str, b_host: str, mss: int
) -> None:
    """Only A clamps: what B receives shows A's outbound clamp (a SYN from A's side), what
    A receives shows A's inbound clamp (B's SYN-ACK, decrypted by A before its TUN write)."""
    a, b = make_side(mss_clamp_mtu=CLAMP_MTU), make_side()
    connect(a, b)

    syn = tcp_packet(a_host, b_host, "S", mss=1460)
    a.route_in(syn)
    assert_clamped(syn, b.delivered(), mss)

    syn_ack = tcp_packet(b_host, a_host, "SA", mss=8960)
    b.route_in(syn_ack)
    assert_clamped(syn_ack, a.delivered(), mss)

    small = tcp_packet(a_host, b_host, "S", mss=536)  # already below: left alone
    a.route_in(small)
    assert b.delivered() == small
    for packet, into, out_of in (
        (tcp_packet(a_host, b_host, "PA", data=b"\x02\x04\x05\xb4" * 50), a, b),
        (tcp_packet(b_host, a_host, "PA", data=b"\x02\x04\x05\xb4" * 50), b, a),
    ):
        into.route_in(packet)
        assert out_of.delivered() == packet  # a data segment crosses byte for byte


def test_syn_with_ipv4_options_is_clamped(make_side: Callable[..., Side]) -> None:
    """The workers' inline SYN test assumes a 20-octet header; longer ones go to clamp_mss."""
    a, b = make_side(mss_clamp_mtu=CLAMP_MTU), make_side(mss_clamp_mtu=CLAMP_MTU)
    connect(a, b)
    segment = TCP(sport=40000, dport=443, flags="S", options=[("MSS", 1460)])
    for src, dst, into, out_of in (("10.1.0.5", "10.2.0.7", a, b), ("10.2.0.7", "10.1.0.5", b, a)):
        syn = bytes(raw(IP(src=src, dst=dst, options=[IPOption_Router_Alert()]) / segment))
        into.route_in(syn)
        assert_clamped(syn, out_of.delivered(), CLAMP_MTU - 40)


def truncated_tcp(src: str, dst: str) -> bytes:
    """ "TCP" with no room for its header: IPv4 claiming a 60-octet header in 20, or IPv6
    with Next Header TCP and nothing after the fixed header."""
    if ":" in src:
        packet = bytearray(ipv6_udp(src, dst, data=b"")[:40])
        packet[4:6], packet[6] = b"\x00\x00", 6
        return bytes(packet)
    packet = bytearray(ipv4_udp(src, dst, data=b"")[:20])
    packet[0], packet[9] = 0x4F, 6
    return bytes(packet)


def test_truncated_tcp_headers_cross_unharmed_with_clamping_on(
    make_side: Callable[..., Side],
) -> None:
    """The kernel forwards such packets from a LAN host (IP does not look into TCP): the
    inline SYN test of either worker must not index past the end, nor kill the worker."""
    a, b = make_side(mss_clamp_mtu=CLAMP_MTU), make_side(mss_clamp_mtu=CLAMP_MTU)
    connect(a, b)
    for a_host, b_host in (("10.1.0.5", "10.2.0.7"), ("fd00:a::5", "fd00:b::7")):
        there, back = truncated_tcp(a_host, b_host), truncated_tcp(b_host, a_host)
        a.route_in(there)
        assert b.delivered() == there
        b.route_in(back)
        assert a.delivered() == back
    assert a.dp.alive()
    assert b.dp.alive()


def test_syn_mss_is_clamped_with_tun_offloads(make_side: Callable[..., Side]) -> None:
    """With virtio-net headers: A's kernel hands over a SYN with a partial checksum
    (NEEDS_CSUM); the clamp runs after ``segment`` completed it. B's SYN-ACK is clamped
    by A before ``coalesce`` (which never merges a SYN) and written with a plain header."""
    a, b = make_side(mss_clamp_mtu=CLAMP_MTU, tun_offload=True), make_side(tun_offload=True)
    connect(a, b)
    syn = tcp_packet("10.1.0.5", "10.2.0.7", "S", mss=1460)
    pseudo = syn[12:20] + b"\x00\x06" + (len(syn) - 20).to_bytes(2, "big")
    partial = (~ones_complement_checksum(pseudo) & 0xFFFF).to_bytes(2, "big")
    a.route_in(VIRTIO_NET_HDR.pack(1, 0, 0, 0, 20, 16) + syn[:36] + partial + syn[38:])

    write = b.delivered()
    assert write[: VIRTIO_NET_HDR.size] == PLAIN_VNET_HDR
    assert_clamped(syn, write[VIRTIO_NET_HDR.size :], CLAMP_MTU - 40)

    syn_ack = tcp_packet("10.2.0.7", "10.1.0.5", "SA", mss=1460)
    b.route_in(PLAIN_VNET_HDR + syn_ack)
    write = a.delivered()
    assert write[: VIRTIO_NET_HDR.size] == PLAIN_VNET_HDR
    assert_clamped(syn_ack, write[VIRTIO_NET_HDR.size :], CLAMP_MTU - 40)


# -- lifecycle ------------------------------------------------------------------


def worker_threads() -> set[threading.Thread]:
    names = ("dataplane-inbound", "dataplane-outbound", "inbound-control", "outbound-control")
    return {t for t in threading.enumerate() if t.name in names}


def test_stop_ends_the_workers_and_later_commands_fail_clearly(tunnel: Tunnel) -> None:
    a = tunnel.a
    others = worker_threads()
    side = Side()
    try:
        mine = worker_threads() - others
        assert len(mine) == 4  # a packet loop and a control thread per direction
        assert side.dp.alive()
        side.dp.install_sa(mirrored_pairs(side, a, "aes256gcm16")[0])

        side.dp.stop()

        for thread in mine:
            thread.join(RECV_TIMEOUT_S)
            assert not thread.is_alive(), thread.name
        assert not side.dp.alive()
        pair = mirrored_pairs(side, a, "aes256gcm16", generation=2)[0]
        for command in (
            lambda: side.dp.install_sa(pair),
            lambda: side.dp.remove_inbound_sa(pair.inbound_spi),
            lambda: side.dp.remove_peer(A_PEER_ID),
            lambda: side.dp.set_peer_address(A_PEER_ID, a.address),
            side.dp.counters,
        ):
            with pytest.raises(DataPlaneError):
                command()
    finally:
        side.close()
    # The other data planes in this process were not disturbed.
    tunnel.a.route_in(a_to_b())
    assert tunnel.b.delivered() == a_to_b()


def test_reading_events_after_stop_fails_clearly(make_side: Callable[..., Side]) -> None:
    """An asyncio control plane may still have a reader on ``event_fds``/``ike_fd`` when it
    stops the data plane; the next read must say what happened, not raise ValueError/EBADF."""
    side = make_side()
    side.dp.stop()

    with pytest.raises(DataPlaneError):
        side.dp.read_events(0.1)
    with pytest.raises(DataPlaneError):
        side.dp.read_ike()


def test_commands_before_start_are_refused() -> None:
    kernel, tun = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        dp = DataPlane(tun.fileno(), udp, mode="thread")
        with pytest.raises(RuntimeError, match="start the data plane first"):
            dp.remove_peer(1)
        assert not dp.alive()
    finally:
        for sock in (kernel, tun, udp):
            sock.close()
