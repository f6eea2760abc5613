r"""The inbound worker: UDP -> ESP -> TUN.

Flow::

    [poll, with several sockets] UDP recvmsg (GRO: several datagrams per call)
      --> first four octets as SPI
      |--> dict hit: ESP --> decapsulate (replay, ICV, trailer)
      |      --> inner source allowed for this SA? (RFC 4301 5.2)
      |      --> TCP SYN? clamp its MSS (before coalescing: SYNs are never merged)
      |      --> new outer address or socket? report it up
      |      --> TUN write (coalesced with offloads)
      \--> miss: RFC 3948 classify: IKE up to the control plane (tagged with
             the socket it came in on), keepalive absorbed, unknown SPI or junk counted

Several sockets are read by this one thread, not a thread per socket: two
threads could then decapsulate for one SA at once (a datagram replayed to
our other address), and the replay window's check-then-update is not atomic
between bytecodes. With one socket the loop blocks in ``recvmsg`` alone, as
it always did; with several, a level-triggered ``poll`` names the readable
ones and each gets one ``recvmsg`` (which returns at once: this thread is its
only reader), so no ``EAGAIN`` exception ever drives the loop. UDP GRO hands
over up to 64 datagrams per ``recvmsg``, which spreads the extra system call.
The sources such a receive reports are tagged ``(socket index, address)``, and
so are the SAs' peers, so the loop itself is the same for one socket or many.
"""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Callable, Sequence
from typing import Any

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
from common.wire.mss import clamp_mss
from common.wire.offload import coalesce

_Received = tuple[bytes, list[tuple[int, int, bytes]], int, Any]
_Receive = Callable[[int, int], _Received]


class _InboundEntry:
    __slots__ = ("allowed", "peer_id", "sa", "source")

    def __init__(
        self, sa: InboundSa, peer_id: int, allowed: PrefixMap[bool], source: tuple[Any, ...]
    ) -> None:
        self.sa = sa
        self.peer_id = peer_id
        self.allowed = allowed
        # The peer as the packet loop receives sources (``InboundWorker._source``),
        # so spotting a move costs one tuple comparison per packet.
        self.source = source


class InboundWorker(Worker):
    """UDP -> ESP -> TUN. Holds every inbound SA by SPI with its allowed inner sources."""

    role = "inbound"

    def __init__(
        self,
        tun_fd: int,
        udp: socket.socket | Sequence[socket.socket],
        control: socket.socket,
        ike: socket.socket,
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
        self.ike = ike
        self.local_addresses: list[PeerAddress] = [sock.getsockname()[:2] for sock in self.sockets]
        self.sas: dict[bytes, _InboundEntry] = {}
        self.keepalives = 0
        self.ike_datagrams = 0

    def _pump_packets(self) -> None:
        """Receive (UDP GRO: several ESP datagrams per call), check, decrypt, write.

        Decrypted packets of one receive are written together, coalesced into
        TCP super packets when the TUN has offloads (``coalesce``).
        """
        recvmsg = self.udp.recvmsg if len(self.sockets) == 1 else self._poll_receiver()
        write = os.write
        tun = self.tun_fd
        sas = self.sas
        drops = self.drops
        offload = self.tun_offload
        max_mss_v4, max_mss_v6 = self.max_mss_v4, self.max_mss_v6
        control_space = socket.CMSG_SPACE(4)
        while True:
            data, ancillary, _flags, source = recvmsg(MAX_SUPER_PACKET, control_space)
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
                    self._on_other_datagram(datagram, source)
                    continue
                inner = entry.sa.decapsulate(datagram)
                if not isinstance(inner, bytes):
                    continue  # counted by the SA, by reason
                # A SYN is clamped before the source check: a spoofed one is dropped
                # all the same. Protocol and SYN flag are tested here (flags at 33 after
                # a 20-octet IPv4 header, 53 after IPv6's; other IPv4 header lengths are
                # rare and left to clamp_mss), so anything but a SYN costs no call.
                if inner[0] >> 4 == 4:
                    if len(inner) < 20:
                        drops[WorkerDrop.MALFORMED_INNER] += 1
                        continue
                    source_address = inner[12:16]
                    if (
                        inner[9] == 6
                        and max_mss_v4
                        and (inner[0] != 0x45 or (len(inner) > 33 and inner[33] & 0x02))
                    ):
                        inner = clamp_mss(inner, max_mss_v4)
                else:  # decapsulate guarantees 4 or 6
                    if len(inner) < 40:
                        drops[WorkerDrop.MALFORMED_INNER] += 1
                        continue
                    source_address = inner[8:24]
                    if inner[6] == 6 and max_mss_v6 and len(inner) > 53 and inner[53] & 0x02:
                        inner = clamp_mss(inner, max_mss_v6)
                if entry.allowed.lookup(source_address) is None:
                    drops[WorkerDrop.SPOOFED_SOURCE] += 1
                    continue
                if source != entry.source:
                    self._on_peer_moved(entry, source)
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

    def _poll_receiver(self) -> _Receive:
        """A ``recvmsg`` over all sockets whose source is ``(socket index, address)``.

        So the packet loop stays the same for one socket and for several, and
        compares the tagged source with the SA's (``_source``) in one go.
        """
        poller = select.poll()
        by_fd: dict[int, tuple[int, _Receive]] = {}
        for index, sock in enumerate(self.sockets):
            poller.register(sock, select.POLLIN)
            by_fd[sock.fileno()] = (index, sock.recvmsg)
        poll = poller.poll
        ready: list[tuple[int, _Receive]] = []

        def receive(size: int, control_space: int) -> _Received:
            if not ready:
                # Blocks until one is readable; each gets one recvmsg per round (fair).
                ready.extend(by_fd[fd] for fd, _events in poll())
            index, recvmsg = ready.pop()
            data, ancillary, flags, address = recvmsg(size, control_space)
            return data, ancillary, flags, (index, address)

        return receive

    def _source(self, address: PeerAddress, local_socket: int) -> tuple[Any, ...]:
        """An SA's peer as the packet loop sees sources: tagged with the socket if several."""
        native = self._native_address(address, local_socket)
        return native if len(self.sockets) == 1 else (local_socket, native)

    def _split_source(self, source: tuple[Any, ...]) -> tuple[int, PeerAddress]:
        """(socket index, (host, port)) of a source as the packet loop received it."""
        if len(self.sockets) == 1:
            return 0, (source[0], source[1])
        index, address = source
        return index, (address[0], address[1])

    def _on_other_datagram(self, data: bytes, source: tuple[Any, ...]) -> None:
        kind = classify(data)
        if kind is DatagramKind.KEEPALIVE:
            self.keepalives += 1  # RFC 3948 2.3: absorbed, only keeps NAT state alive
        elif kind is DatagramKind.IKE:
            index, address = self._split_source(source)
            ike = IkeDatagram(unframe_ike(data), address, index, self.local_addresses[index])
            if send_message(self.ike, ike, block=False):
                self.ike_datagrams += 1
            else:
                self.drops[WorkerDrop.IKE_QUEUE_FULL] += 1
        elif kind is DatagramKind.ESP and data[:4] != NON_ESP_MARKER:
            self.drops[WorkerDrop.UNKNOWN_SPI] += 1
        else:
            self.drops[WorkerDrop.MALFORMED_DATAGRAM] += 1

    def _on_peer_moved(self, entry: _InboundEntry, source: tuple[Any, ...]) -> None:
        # Reported once per change; the control plane decides whether to follow
        # (RFC 7296 2.23) and moves the outbound side.
        entry.source = source
        index, address = self._split_source(source)
        self._notify(PeerAddressChanged(entry.peer_id, entry.sa.spi, address, index))

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
        source = self._source(pair.peer_address, pair.local_socket)
        self.sas[sa.spi.to_bytes(4, "big")] = _InboundEntry(sa, pair.peer_id, allowed, source)

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

    def _set_peer_address(self, peer_id: int, address: PeerAddress, local_socket: int) -> None:
        source = self._source(address, local_socket)
        for entry in list(self.sas.values()):
            if entry.peer_id == peer_id:
                entry.source = source

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
