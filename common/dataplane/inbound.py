r"""The inbound worker: UDP -> ESP -> TUN.

Flow::

    UDP recvmsg (GRO: several datagrams per call) --> first four octets as SPI
      |--> dict hit: ESP --> decapsulate (replay, ICV, trailer)
      |      --> inner source allowed for this SA? (RFC 4301 5.2)
      |      --> new outer address? report it up --> TUN write (coalesced with offloads)
      \--> miss: RFC 3948 classify: IKE up to the control plane, keepalive
             absorbed, unknown SPI or junk counted
"""

from __future__ import annotations

import os
import socket

from common.dataplane.base import (
    MAX_SUPER_PACKET,
    Worker,
    WorkerDrop,
    esp_drop_counts,
    gro_segment_size,
)
from common.dataplane.channel import send_message
from common.dataplane.messages import (
    CountersReport,
    IkeDatagram,
    PeerAddress,
    PeerAddressChanged,
    SaCounters,
    SaPair,
)
from common.dataplane.prefixmap import PrefixMap, parse_network
from common.esp.natt import NON_ESP_MARKER, DatagramKind, classify, unframe_ike
from common.esp.sa import Drop, InboundSa
from common.esp.suites import suite_by_name
from common.wire.offload import coalesce


class _InboundEntry:
    __slots__ = ("address", "allowed", "peer_id", "sa")

    def __init__(
        self, sa: InboundSa, peer_id: int, allowed: PrefixMap[bool], address: PeerAddress
    ) -> None:
        self.sa = sa
        self.peer_id = peer_id
        self.allowed = allowed
        self.address = address


class InboundWorker(Worker):
    """UDP -> ESP -> TUN. Holds every inbound SA by SPI with its allowed inner sources."""

    role = "inbound"

    def __init__(
        self,
        tun_fd: int,
        udp: socket.socket,
        control: socket.socket,
        ike: socket.socket,
        *,
        exit_on_close: bool,
        tun_offload: bool = False,
    ) -> None:
        super().__init__(tun_fd, udp, control, exit_on_close=exit_on_close, tun_offload=tun_offload)
        self.ike = ike
        self.sas: dict[bytes, _InboundEntry] = {}
        self.keepalives = 0
        self.ike_datagrams = 0

    def _pump_packets(self) -> None:
        """Receive (UDP GRO: several ESP datagrams per call), check, decrypt, write.

        Decrypted packets of one receive are written together, coalesced into
        TCP super packets when the TUN has offloads (``coalesce``).
        """
        recvmsg = self.udp.recvmsg
        write = os.write
        tun = self.tun_fd
        sas = self.sas
        drops = self.drops
        offload = self.tun_offload
        control_space = socket.CMSG_SPACE(4)
        while True:
            data, ancillary, _flags, address = recvmsg(MAX_SUPER_PACKET, control_space)
            if not data:
                if self.stopping:
                    return
                drops[WorkerDrop.MALFORMED_DATAGRAM] += 1
                continue
            if ancillary:
                size = gro_segment_size(ancillary) or len(data)
                datagrams = [data[i : i + size] for i in range(0, len(data), size)]
            else:
                datagrams = [data]
            delivered: list[bytes] = []
            for datagram in datagrams:
                entry = sas.get(datagram[:4])
                if entry is None:
                    self._on_other_datagram(datagram, address)
                    continue
                inner = entry.sa.decapsulate(datagram)
                if not isinstance(inner, bytes):
                    continue  # counted by the SA, by reason
                if inner[0] >> 4 == 4:
                    if len(inner) < 20:
                        drops[WorkerDrop.MALFORMED_INNER] += 1
                        continue
                    source = inner[12:16]
                else:  # decapsulate guarantees 4 or 6
                    if len(inner) < 40:
                        drops[WorkerDrop.MALFORMED_INNER] += 1
                        continue
                    source = inner[8:24]
                if entry.allowed.lookup(source) is None:
                    drops[WorkerDrop.SPOOFED_SOURCE] += 1
                    continue
                if address != entry.address:
                    self._on_peer_moved(entry, address)
                delivered.append(inner)
            if not delivered:
                continue
            try:
                if offload:
                    for buffer in coalesce(delivered):
                        write(tun, buffer)
                else:
                    for inner in delivered:
                        write(tun, inner)
            except OSError:
                drops[WorkerDrop.TUN_WRITE_FAILED] += 1

    def _on_other_datagram(self, data: bytes, address: PeerAddress) -> None:
        kind = classify(data)
        if kind is DatagramKind.KEEPALIVE:
            self.keepalives += 1  # RFC 3948 2.3: absorbed, only keeps NAT state alive
        elif kind is DatagramKind.IKE:
            if send_message(self.ike, IkeDatagram(unframe_ike(data), address), block=False):
                self.ike_datagrams += 1
            else:
                self.drops[WorkerDrop.IKE_QUEUE_FULL] += 1
        elif kind is DatagramKind.ESP and data[:4] != NON_ESP_MARKER:
            self.drops[WorkerDrop.UNKNOWN_SPI] += 1
        else:
            self.drops[WorkerDrop.MALFORMED_DATAGRAM] += 1

    def _on_peer_moved(self, entry: _InboundEntry, address: PeerAddress) -> None:
        # Reported once per change; the control plane decides whether to follow
        # (RFC 7296 2.23) and moves the outbound side.
        entry.address = address
        self._notify(PeerAddressChanged(entry.peer_id, entry.sa.spi, address))

    def _install(self, pair: SaPair) -> None:
        sa = InboundSa(
            pair.inbound_spi,
            suite_by_name(pair.suite),
            pair.inbound_keymat,
            esn=pair.esn,
            replay_window=pair.replay_window,
        )
        allowed: PrefixMap[bool] = PrefixMap()
        for network in pair.inner_networks:
            allowed.add(parse_network(network), True)
        self.sas[sa.spi.to_bytes(4, "big")] = _InboundEntry(
            sa, pair.peer_id, allowed, pair.peer_address
        )

    def _remove_inbound(self, spi: int) -> None:
        entry = self.sas.pop(spi.to_bytes(4, "big"), None)
        if entry is not None:
            self._retire(entry.sa)

    def _retire(self, sa: InboundSa) -> None:
        self.retired_packets += sa.packets
        self.retired_octets += sa.octets
        for reason in Drop:
            self.retired_esp_drops[reason] += sa.drops[reason]

    def _remove_peer(self, peer_id: int) -> None:
        for key, entry in list(self.sas.items()):
            if entry.peer_id == peer_id:
                del self.sas[key]
                self._retire(entry.sa)

    def _set_peer_address(self, peer_id: int, address: PeerAddress) -> None:
        for entry in list(self.sas.values()):
            if entry.peer_id == peer_id:
                entry.address = address

    def _counters(self, token: int) -> CountersReport:
        sas = tuple(
            SaCounters(
                spi=entry.sa.spi,
                peer_id=entry.peer_id,
                direction="inbound",
                packets=entry.sa.packets,
                octets=entry.sa.octets,
                drops=esp_drop_counts(entry.sa.drops),
                sequence=entry.sa.replay.top,
            )
            for entry in list(self.sas.values())
        )
        totals = self._totals(sas)
        totals["keepalives"] = self.keepalives
        totals["ike_datagrams"] = self.ike_datagrams
        return CountersReport(token, self.role, totals, sas)
