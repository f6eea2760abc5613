"""The outbound worker: TUN -> ESP -> UDP.

Flow::

    TUN read (one packet, or a TCP super packet split by ``segment``)
      --> inner destination --> peer (PrefixMap, longest prefix)
      --> TCP SYN? clamp its MSS
      --> peer's current OutboundSa.encapsulate
      --> UDP sendto, or one UDP GSO sendmsg for a super packet's segments,
          from the socket the peer talks to (``SaPair.local_socket``)

The MSS clamp runs after ``segment``: a SYN is never a super packet, but with
offloads it may come with a partial checksum (``VIRTIO_NET_HDR_F_NEEDS_CSUM``)
that ``segment`` completes, and the RFC 1624 update needs the complete one.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from typing import Any

from common.dataplane.base import (
    GSO_MAX_BYTES,
    GSO_MAX_SEGMENTS,
    MAX_SUPER_PACKET,
    U16_NATIVE,
    UDP_SEGMENT,
    Worker,
    WorkerDrop,
    esp_drop_counts,
)
from common.dataplane.messages import (
    CountersReport,
    PeerAddress,
    RekeyNeeded,
    SaCounters,
    SaPair,
)
from common.dataplane.prefixmap import IpNetwork, PrefixMap, parse_network
from common.esp.sa import DROP_COUNT, Drop, OutboundSa
from common.esp.suites import suite_by_name
from common.wire.mss import clamp_mss
from common.wire.offload import segment

_Endpoint = tuple[socket.socket, tuple[Any, ...]]


class _OutboundPeer:
    __slots__ = (
        "deferred",
        "endpoint",
        "esp_drops",
        "networks",
        "peer_id",
        "rekey_reported",
        "sa",
    )

    def __init__(self, peer_id: int, sa: OutboundSa, endpoint: _Endpoint) -> None:
        self.peer_id = peer_id
        self.sa = sa
        # (our socket, the peer's address as that socket takes it), swapped as one
        # reference so the packet thread never pairs a socket with the other family's address.
        self.endpoint = endpoint
        self.networks: list[IpNetwork] = []
        self.rekey_reported = False
        self.esp_drops = [0] * DROP_COUNT
        # Rekeyed SAs installed with ``defer_outbound``, by outbound SPI, until activated.
        self.deferred: dict[int, OutboundSa] = {}


class OutboundWorker(Worker):
    """TUN -> ESP -> UDP. Holds every peer's current outbound SA and the inner routes."""

    role = "outbound"

    def __init__(
        self,
        tun_fd: int,
        udp: socket.socket | Sequence[socket.socket],
        control: socket.socket,
        *,
        exit_on_close: bool,
        tun_offload: bool = False,
        mss_clamp_mtu: int | None = None,
    ) -> None:
        super().__init__(
            tun_fd,
            udp,
            control,
            exit_on_close=exit_on_close,
            tun_offload=tun_offload,
            mss_clamp_mtu=mss_clamp_mtu,
        )
        self.peers: dict[int, _OutboundPeer] = {}
        self.routes: PrefixMap[_OutboundPeer] = PrefixMap()

    def _pump_packets(self) -> None:
        """Read, route, encrypt, send. With TUN offloads one read may hold ~40 TCP segments.

        The segments of one super packet share their destination, so the
        route is looked up once, and their ESP packets (equal sizes but the
        last) leave in one UDP GSO ``sendmsg`` per 64 KiB.
        """
        read = os.read
        tun = self.tun_fd
        lookup = self.routes.lookup
        drops = self.drops
        offload = self.tun_offload
        max_mss_v4, max_mss_v6 = self.max_mss_v4, self.max_mss_v6
        while True:
            buffer = read(tun, MAX_SUPER_PACKET)
            if not buffer:
                if self.stopping:
                    return
                continue
            packets = segment(buffer) if offload else [buffer]
            if packets is None:
                drops[WorkerDrop.NOT_IP] += 1
                continue
            first = packets[0]
            version = first[0] >> 4
            # A route found means the address was all there: at least 20 (40) octets.
            # TCP SYNs get their MSS clamped; protocol and SYN flag are tested here
            # (flags at 33 after a 20-octet IPv4 header, 53 after IPv6's; other IPv4
            # header lengths are rare and left to clamp_mss), so a data segment costs
            # no call. A super packet's segments are never SYNs: the first suffices.
            if version == 4:
                peer = lookup(first[16:20])
                if peer is None:
                    drops[WorkerDrop.NO_ROUTE] += 1
                    continue
                if (
                    first[9] == 6
                    and max_mss_v4
                    and (first[0] != 0x45 or (len(first) > 33 and first[33] & 0x02))
                ):
                    packets[0] = clamp_mss(first, max_mss_v4)
            elif version == 6:
                peer = lookup(first[24:40])
                if peer is None:
                    drops[WorkerDrop.NO_ROUTE] += 1
                    continue
                if first[6] == 6 and max_mss_v6 and len(first) > 53 and first[53] & 0x02:
                    packets[0] = clamp_mss(first, max_mss_v6)
            else:
                drops[WorkerDrop.NOT_IP] += 1
                continue
            encapsulate = peer.sa.encapsulate
            batch: list[bytes] = []
            for packet in packets:
                esp = encapsulate(packet)
                if isinstance(esp, bytes):
                    batch.append(esp)
                else:
                    peer.esp_drops[esp] += 1
            if batch:
                self._send_batch(batch, peer)

    def _send_batch(self, batch: list[bytes], peer: _OutboundPeer) -> None:
        """UDP GSO (``UDP_SEGMENT``): equal-sized datagrams but the last, in one system call."""
        udp, address = peer.endpoint
        try:
            if len(batch) == 1:
                udp.sendto(batch[0], address)
                return
            size = len(batch[0])
            per_call = max(1, min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size))
            for start in range(0, len(batch), per_call):
                chunk = batch[start : start + per_call]
                if all(len(esp) == size for esp in chunk[:-1]) and len(chunk[-1]) <= size:
                    control = [(socket.SOL_UDP, UDP_SEGMENT, U16_NATIVE.pack(size))]
                    udp.sendmsg(chunk, control, 0, address)
                else:
                    for esp in chunk:
                        udp.sendto(esp, address)
        except OSError:
            self.drops[WorkerDrop.SEND_FAILED] += 1

    def _install(self, pair: SaPair) -> None:
        sa = OutboundSa(
            pair.outbound_spi,
            suite_by_name(pair.suite),
            pair.outbound_keymat,
            esn=pair.esn,
            soft_limit=pair.soft_seq_limit,
        )
        endpoint = self._endpoint(pair.peer_address, pair.local_socket)
        peer = self.peers.get(pair.peer_id)
        if peer is not None and pair.defer_outbound:
            peer.deferred[pair.outbound_spi] = sa
            return
        if peer is None:
            peer = _OutboundPeer(pair.peer_id, sa, endpoint)
            self.peers[pair.peer_id] = peer
        else:
            self._retire(peer.sa)
            peer.sa = sa  # make before break: the next packet uses the new SA
            peer.endpoint = endpoint
            peer.rekey_reported = False
        networks = [parse_network(n) for n in pair.inner_networks]
        for stale in peer.networks:
            if stale not in networks:
                self.routes.remove(stale)
        for network in networks:
            self.routes.add(network, peer)
        peer.networks = networks

    def _activate_outbound(self, peer_id: int, outbound_spi: int) -> None:
        peer = self.peers.get(peer_id)
        if peer is None:
            return
        sa = peer.deferred.pop(outbound_spi, None)
        if sa is None:
            return
        self._retire(peer.sa)
        peer.sa = sa
        peer.rekey_reported = False
        for stale in peer.deferred.values():  # a collision's redundant SA, never used
            self._retire(stale)
        peer.deferred.clear()

    def _retire(self, sa: OutboundSa) -> None:
        self.retired_packets += sa.packets
        self.retired_octets += sa.octets

    def _remove_peer(self, peer_id: int) -> None:
        peer = self.peers.pop(peer_id, None)
        if peer is None:
            return
        for network in peer.networks:
            self.routes.remove(network)
        self._retire(peer.sa)
        for reason in Drop:
            self.retired_esp_drops[reason] += peer.esp_drops[reason]

    def _set_peer_address(self, peer_id: int, address: PeerAddress, local_socket: int) -> None:
        peer = self.peers.get(peer_id)
        if peer is not None:
            peer.endpoint = self._endpoint(address, local_socket)

    def _endpoint(self, address: PeerAddress, local_socket: int) -> _Endpoint:
        return self.sockets[local_socket], self._native_address(address, local_socket)

    def _expired_housekeeping(self) -> None:
        for peer in list(self.peers.values()):
            if peer.sa.rekey_needed and not peer.rekey_reported:
                peer.rekey_reported = True
                self._notify(RekeyNeeded(peer.peer_id, peer.sa.spi))

    def _counters(self, token: int) -> CountersReport:
        sas = tuple(
            SaCounters(
                spi=peer.sa.spi,
                peer_id=peer.peer_id,
                direction="outbound",
                packets=peer.sa.packets,
                octets=peer.sa.octets,
                drops=esp_drop_counts(peer.esp_drops),
                sequence=peer.sa.seq,
            )
            for peer in list(self.peers.values())
        )
        return CountersReport(token, self.role, self._totals(sas), sas)
