"""One data plane on several UDP sockets (issue 4: a concentrator on IPv4 and IPv6).

Topology (this process, loopback)::

    client v4: UDP 127.0.0.1:x --ESP--> socket 0, 127.0.0.1:c \\
                                                              DataPlane --[TUN]-- test ("LAN")
    client v6: UDP [::1]:y     --ESP--> socket 1, [::1]:d     /

Each client is a plain UDP socket with its own sealer and opener (the keys
of its SaPair, mirrored), as in ``test_many_peers_on_one_data_plane``. What
is checked: ESP to each peer leaves from the socket its SA names and reaches
it; ESP from each is accepted on its socket with no spurious "peer moved"
report (IPv6 sockets report 4-tuple addresses); IKE arriving on each socket
comes up tagged with that socket and its address, and ``send_ike`` answers
from the socket asked for; NAT rebinding is followed per socket; inner IPv6
host leases (/128) route and are enforced as sources (RFC 4301 5.2), as the
concentrator leases them. One test runs the same in process mode, so the
worker command line carries several sockets and the MSS clamp too.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import pytest

from common.dataplane.control import DataPlane
from common.dataplane.messages import IkeDatagram, PeerAddress, PeerAddressChanged, SaPair
from common.esp.natt import NON_ESP_MARKER
from common.esp.sa import InboundSa, OutboundSa
from common.esp.suites import suite_by_name
from tests.e2e.test_dataplane_threads import (
    CLAMP_MTU,
    RECV_TIMEOUT_S,
    Side,
    assert_clamped,
    events_of,
    keymat,
    seal,
    tcp_packet,
    wait_until,
)
from tests.helpers.packets import ipv4_udp, ipv6_udp

SUITE = "aes256gcm16"
LAN_V4, LAN_V6 = "10.0.0.1", "fd00:1a::1"


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")


@dataclass
class Client:
    """A road warrior as the wire sees it: a UDP socket and the keys of one Child SA."""

    sock: socket.socket
    pair: SaPair  # as the concentrator holds it
    lease_v4: str
    lease_v6: str

    @property
    def address(self) -> PeerAddress:
        host, port = self.sock.getsockname()[:2]
        return host, port

    def sealer(self) -> OutboundSa:
        return OutboundSa(self.pair.inbound_spi, suite_by_name(SUITE), self.pair.inbound_keymat)

    def opener(self) -> InboundSa:
        return InboundSa(self.pair.outbound_spi, suite_by_name(SUITE), self.pair.outbound_keymat)

    def receive(self, concentrator: PeerAddress) -> bytes:
        """The next ESP datagram, checked to come from the concentrator's ``concentrator``."""
        esp, source = self.sock.recvfrom(65535)
        assert source[:2] == concentrator
        inner = self.opener().decapsulate(esp)
        assert isinstance(inner, bytes), inner
        return inner


@pytest.fixture
def udp_on() -> Iterator[Callable[[str], socket.socket]]:
    made: list[socket.socket] = []

    def make(host: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, 0))
        sock.settimeout(RECV_TIMEOUT_S)
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close()


@pytest.fixture
def dual_stack() -> Iterator[Side]:
    """A concentrator's data plane: socket 0 on 127.0.0.1, socket 1 on ::1."""
    side = Side(listen=("127.0.0.1", "::1"))
    yield side
    side.close()


def add_client(dp: DataPlane, sock: socket.socket, index: int, local_socket: int) -> Client:
    """A client with an IPv4 and an IPv6 host lease, talking to our socket ``local_socket``."""
    lease_v4, lease_v6 = f"10.100.0.{index + 1}", f"fd00:99::{index + 1:x}"
    host, port = sock.getsockname()[:2]
    pair = SaPair(
        peer_id=100 + index,
        suite=SUITE,
        inbound_spi=0x0001_0000 + index,
        outbound_spi=0x0002_0000 + index,
        peer_address=(host, port),
        inner_networks=(f"{lease_v4}/32", f"{lease_v6}/128"),
        inbound_keymat=keymat(SUITE, 2 * index + 40),
        outbound_keymat=keymat(SUITE, 2 * index + 41),
        local_socket=local_socket,
    )
    dp.install_sa(pair)
    return Client(sock, pair, lease_v4, lease_v6)


def test_each_peer_uses_the_socket_of_its_family(
    dual_stack: Side, udp_on: Callable[[str], socket.socket]
) -> None:
    side = dual_stack
    v4 = add_client(side.dp, udp_on("127.0.0.1"), 0, local_socket=0)
    v6 = add_client(side.dp, udp_on("::1"), 1, local_socket=1)

    # Outbound: the LAN answers each client on both inner families.
    for client, local in ((v4, 0), (v6, 1)):
        for packet in (
            ipv4_udp(LAN_V4, client.lease_v4, data=b"v4 inner"),
            ipv6_udp(LAN_V6, client.lease_v6, data=b"v6 inner"),
        ):
            side.route_in(packet)
            assert client.receive(side.address_of(local)) == packet

    # Inbound: each client sends from its leases to the socket it talks to.
    for client, local in ((v4, 0), (v6, 1)):
        sealer = client.sealer()
        for packet in (
            ipv4_udp(client.lease_v4, LAN_V4, data=b"from v4 lease"),
            ipv6_udp(client.lease_v6, LAN_V6, data=b"from v6 lease"),
        ):
            client.sock.sendto(seal(sealer, packet), side.address_of(local))
            assert side.delivered() == packet

    assert events_of(side.dp, PeerAddressChanged, 0.2) == [], "no peer moved"
    counters = side.counters()
    assert counters.inbound["packets"] == 4
    assert counters.outbound["packets"] == 4


def test_inner_ipv6_leases_are_enforced_as_sources(
    dual_stack: Side, udp_on: Callable[[str], socket.socket]
) -> None:
    """RFC 4301 5.2 with /128 leases: a client may not borrow another client's IPv6 address."""
    side = dual_stack
    v4 = add_client(side.dp, udp_on("127.0.0.1"), 0, local_socket=0)
    v6 = add_client(side.dp, udp_on("::1"), 1, local_socket=1)
    sealer = v6.sealer()
    v6.sock.sendto(seal(sealer, ipv6_udp(v4.lease_v6, LAN_V6, data=b"I am v4")), side.address_of(1))
    v6.sock.sendto(
        seal(sealer, ipv6_udp("fd00:99::77", LAN_V6, data=b"nobody")), side.address_of(1)
    )
    honest = ipv6_udp(v6.lease_v6, LAN_V6, data=b"honest")
    v6.sock.sendto(seal(sealer, honest), side.address_of(1))

    assert side.delivered() == honest
    assert side.counters().inbound["drop_spoofed_source"] == 2
    side.route_in(ipv6_udp(LAN_V6, "fd00:99::77", data=b"no lease"))
    wait_until(lambda: side.counters().outbound.get("drop_no_route") == 1, "a no-route drop")
    side.assert_nothing_delivered()


def test_ike_is_tagged_with_its_socket_and_answered_from_it(
    dual_stack: Side, udp_on: Callable[[str], socket.socket]
) -> None:
    side = dual_stack
    peers = {0: udp_on("127.0.0.1"), 1: udp_on("::1")}
    body = bytes(range(28)) + b"IKE_SA_INIT"
    for local, peer in peers.items():
        peer.sendto(NON_ESP_MARKER + body + bytes([local]), side.address_of(local))

    received: list[IkeDatagram] = []

    def both_up() -> bool:
        received.extend(side.dp.read_ike())
        return len(received) == 2

    wait_until(both_up, "IKE from both sockets")
    by_socket = {datagram.local_socket: datagram for datagram in received}
    for local, peer in peers.items():
        host, port = peer.getsockname()[:2]
        assert by_socket[local] == IkeDatagram(
            body + bytes([local]), (host, port), local, side.address_of(local)
        )
        side.dp.send_ike(b"answer %d" % local, (host, port), local_socket=local)
        data, source = peer.recvfrom(1500)
        assert data == NON_ESP_MARKER + b"answer %d" % local
        assert source[:2] == side.address_of(local)


def test_nat_rebinding_is_followed_per_socket(
    dual_stack: Side, udp_on: Callable[[str], socket.socket]
) -> None:
    """An IPv6 client moves (new port): reported with its socket, then followed on it.
    Then it shows up on the IPv4 socket: that too is a move, and replies follow it there."""
    side = dual_stack
    v6 = add_client(side.dp, udp_on("::1"), 0, local_socket=1)
    sealer = v6.sealer()
    rebound = udp_on("::1")
    moved = ipv4_udp(v6.lease_v4, LAN_V4, data=b"after the move")
    rebound.sendto(seal(sealer, moved), side.address_of(1))
    assert side.delivered() == moved
    new_host, new_port = rebound.getsockname()[:2]
    assert events_of(side.dp, PeerAddressChanged, RECV_TIMEOUT_S) == [
        PeerAddressChanged(v6.pair.peer_id, v6.pair.inbound_spi, (new_host, new_port), 1)
    ]
    side.dp.set_peer_address(v6.pair.peer_id, (new_host, new_port), local_socket=1)
    reply = ipv4_udp(LAN_V4, v6.lease_v4, data=b"to the new port")
    side.route_in(reply)
    esp, source = rebound.recvfrom(65535)
    assert source[:2] == side.address_of(1)
    assert v6.opener().decapsulate(esp) == reply

    over_v4 = udp_on("127.0.0.1")
    packet = ipv4_udp(v6.lease_v4, LAN_V4, data=b"now over IPv4")
    over_v4.sendto(seal(sealer, packet), side.address_of(0))
    assert side.delivered() == packet
    v4_host, v4_port = over_v4.getsockname()[:2]
    assert events_of(side.dp, PeerAddressChanged, RECV_TIMEOUT_S) == [
        PeerAddressChanged(v6.pair.peer_id, v6.pair.inbound_spi, (v4_host, v4_port), 0)
    ]
    side.dp.set_peer_address(v6.pair.peer_id, (v4_host, v4_port), local_socket=0)
    side.route_in(reply)
    esp, source = over_v4.recvfrom(65535)
    assert source == side.address_of(0)
    assert v6.opener().decapsulate(esp) == reply


def test_endpoints_a_socket_cannot_serve_are_refused_up_front(dual_stack: Side) -> None:
    side = dual_stack
    pair = SaPair(1, SUITE, 0x1001, 0x2002, ("::1", 4500), ("10.9.0.1/32",), bytes(36), bytes(36))
    with pytest.raises(ValueError, match="local socket 2"):
        side.dp.install_sa(replace(pair, local_socket=2))
    with pytest.raises(ValueError, match="socket 0 can send to"):
        side.dp.install_sa(pair)  # an IPv6 peer on the IPv4 socket
    side.dp.install_sa(replace(pair, local_socket=1))
    with pytest.raises(ValueError, match="socket 1 can send to"):
        side.dp.set_peer_address(1, ("not an address", 1), local_socket=1)
    assert side.dp.alive()
    assert len(side.counters().sas) == 2


def test_process_mode_with_two_sockets_and_mss_clamp(
    udp_on: Callable[[str], socket.socket],
) -> None:
    """The worker processes get every socket (and the clamp) on their command line."""
    kernel, tun = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    kernel.settimeout(RECV_TIMEOUT_S)
    sockets = [udp_on("127.0.0.1"), udp_on("::1")]
    plane = DataPlane(tun.fileno(), sockets, mode="process", mss_clamp_mtu=CLAMP_MTU)
    try:
        plane.start()
        client = add_client(plane, udp_on("::1"), 0, local_socket=1)
        syn = tcp_packet(LAN_V6, client.lease_v6, "SA", mss=1440)
        kernel.send(syn)
        host, port = sockets[1].getsockname()[:2]
        assert_clamped(syn, client.receive((host, port)), CLAMP_MTU - 60)
        data = ipv4_udp(client.lease_v4, LAN_V4, data=b"up")
        client.sock.sendto(seal(client.sealer(), data), (host, port))
        assert kernel.recv(65535) == data
    finally:
        plane.stop()
        kernel.close()
        tun.close()
