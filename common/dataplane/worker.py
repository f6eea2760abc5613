"""The data-plane worker: one blocking packet loop plus a control thread.

Flow, outbound worker (``OutboundWorker``)::

    TUN read --> inner destination --> peer (PrefixMap, longest prefix)
      --> peer's current OutboundSa.encapsulate --> UDP sendto(peer's outer address)

Flow, inbound worker (``InboundWorker``)::

    UDP recvfrom --> first four octets as SPI --> InboundSa (dict hit: ESP)
      |                                     \\--> miss: RFC 3948 classify: IKE up to the
      |                                          control plane, keepalive absorbed,
      |                                          unknown SPI or junk counted
      --> decapsulate (replay, ICV, trailer) --> inner source allowed for this SA?
      --> new outer address? report it up --> TUN write

Why this shape (DESIGN.md, measured): the packet loop blocks in one system
call per packet and never polls, so the only per-packet costs are the read,
the crypto and the write. Commands arrive on a second thread that blocks on
the control socket; it swaps table entries atomically (dict and attribute
assignment under the GIL), so the packet loop takes no lock. Each worker owns
the half of every SA its direction needs: no shared counter, no lock.
Counters are read by the control thread on request; nothing per packet
leaves the process.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from enum import IntEnum
from typing import Final

from common.dataplane.channel import receive_message, send_message
from common.dataplane.messages import (
    Applied,
    CountersReport,
    IkeDatagram,
    InstallSa,
    PeerAddress,
    PeerAddressChanged,
    RekeyNeeded,
    RemoveInboundSa,
    RemovePeer,
    Request,
    RequestCounters,
    SaCounters,
    SaPair,
    SetPeerAddress,
    WorkerFailed,
    WorkerReady,
)
from common.dataplane.prefixmap import IpNetwork, PrefixMap, parse_network
from common.esp.natt import NON_ESP_MARKER, DatagramKind, classify, unframe_ike
from common.esp.sa import DROP_COUNT, Drop, InboundSa, OutboundSa
from common.esp.suites import suite_by_name
from common.wire.offload import VNET_HDR_LEN, coalesce, segment

HOUSEKEEPING_INTERVAL_S: Final = 1.0
MAX_DATAGRAM: Final = 65535
MAX_SUPER_PACKET: Final = 65535 + VNET_HDR_LEN
# UDP GSO/GRO (linux/udp.h). The kernel takes at most 64 segments (UDP_MAX_SEGMENTS)
# and one IP packet's worth of payload per call.
UDP_SEGMENT: Final = 103
UDP_GRO: Final = 104
GSO_MAX_SEGMENTS: Final = 64
GSO_MAX_BYTES: Final = 65000
_U16_NATIVE: Final = struct.Struct("=H")
_INT_NATIVE: Final = struct.Struct("=i")


def _gro_size(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The segment size the kernel reports for a coalesced (GRO) receive, or 0."""
    for level, kind, value in ancillary:
        if level == socket.SOL_UDP and kind == UDP_GRO and len(value) >= 4:
            size: int = _INT_NATIVE.unpack_from(value)[0]
            return size
    return 0


def enable_udp_offloads(udp: socket.socket) -> bool:
    """Ask for UDP GRO on the shared socket; ``False`` when the kernel refuses."""
    try:
        udp.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


class WorkerDrop(IntEnum):
    """Drops the workers count themselves (ESP-level reasons are ``common.esp.sa.Drop``)."""

    UNKNOWN_SPI = 0
    MALFORMED_DATAGRAM = 1  # neither ESP, IKE nor keepalive (RFC 3948 2)
    SPOOFED_SOURCE = 2  # inner source outside the peer's selectors (RFC 4301 5.2)
    MALFORMED_INNER = 3  # decrypted packet too short for its IP header
    NO_ROUTE = 4  # outbound: no peer owns the inner destination
    SEND_FAILED = 5
    TUN_WRITE_FAILED = 6
    IKE_QUEUE_FULL = 7  # the control plane is not draining IKE fast enough
    NOT_IP = 8  # outbound: what the TUN gave us is not IPv4/IPv6


def _esp_drops(counts: list[int]) -> dict[str, int]:
    return {reason.name.lower(): counts[reason] for reason in Drop if counts[reason]}


class _Worker:
    """What both directions share: the control thread and counter reporting."""

    role = "worker"

    def __init__(
        self,
        tun_fd: int,
        udp: socket.socket,
        control: socket.socket,
        *,
        exit_on_close: bool,
        tun_offload: bool = False,
    ) -> None:
        self.tun_fd = tun_fd
        self.tun_offload = tun_offload
        self.udp = udp
        self.control = control
        self.exit_on_close = exit_on_close
        self.stopping = False
        self.drops = [0] * len(WorkerDrop)
        # ESP-level drops of SAs already retired, so totals never go backwards.
        self.retired_esp_drops = [0] * DROP_COUNT
        self.retired_packets = 0
        self.retired_octets = 0

    def run(self) -> None:
        """Serve until the control plane closes the channel."""
        thread = threading.Thread(target=self._pump_control, name=f"{self.role}-control")
        thread.daemon = True
        thread.start()
        try:
            self._pump_packets()
        except OSError as error:
            if not self.stopping:
                self._notify(WorkerFailed(self.role, f"packet loop stopped: {error}"))
                raise

    def _pump_packets(self) -> None:
        raise NotImplementedError

    def _pump_control(self) -> None:
        self.control.settimeout(HOUSEKEEPING_INTERVAL_S)
        self._notify(WorkerReady(self.role))
        while True:
            try:
                message = receive_message(self.control)
            except TimeoutError:
                self._expired_housekeeping()
                continue
            except OSError:
                message = None
            if message is None:
                self._on_control_closed()
                return
            self._process_command(message)

    def _on_control_closed(self) -> None:
        self.stopping = True
        if self.exit_on_close:
            os._exit(0)  # the control plane is gone: so is our reason to forward

    def _notify(self, event: object) -> None:
        with contextlib.suppress(OSError):
            send_message(self.control, event, block=False)

    def _process_command(self, message: object) -> None:
        if isinstance(message, Request):
            self._process_command(message.command)
            self._notify(Applied(message.token))
            return
        match message:
            case InstallSa(pair):
                self._install(pair)
            case RemoveInboundSa(spi):
                self._remove_inbound(spi)
            case RemovePeer(peer_id):
                self._remove_peer(peer_id)
            case SetPeerAddress(peer_id, address):
                self._set_peer_address(peer_id, address)
            case RequestCounters(token):
                self._notify(self._counters(token))
            case _:
                self._notify(WorkerFailed(self.role, f"unknown command {type(message).__name__}"))

    def _install(self, pair: SaPair) -> None:
        raise NotImplementedError

    def _remove_inbound(self, spi: int) -> None:
        """Only the inbound worker holds inbound SAs."""

    def _remove_peer(self, peer_id: int) -> None:
        raise NotImplementedError

    def _set_peer_address(self, peer_id: int, address: PeerAddress) -> None:
        raise NotImplementedError

    def _expired_housekeeping(self) -> None:
        """Periodic checks that must stay off the packet loop."""

    def _counters(self, token: int) -> CountersReport:
        raise NotImplementedError

    def _totals(self, sas: tuple[SaCounters, ...]) -> dict[str, int]:
        totals = {
            "packets": self.retired_packets + sum(s.packets for s in sas),
            "octets": self.retired_octets + sum(s.octets for s in sas),
        }
        for reason in Drop:
            count = self.retired_esp_drops[reason] + sum(
                s.drops.get(reason.name.lower(), 0) for s in sas
            )
            if count:
                totals[f"drop_{reason.name.lower()}"] = count
        for worker_reason in WorkerDrop:
            if self.drops[worker_reason]:
                totals[f"drop_{worker_reason.name.lower()}"] = self.drops[worker_reason]
        return totals


class _OutboundPeer:
    __slots__ = ("address", "esp_drops", "networks", "peer_id", "rekey_reported", "sa")

    def __init__(self, peer_id: int, sa: OutboundSa, address: PeerAddress) -> None:
        self.peer_id = peer_id
        self.sa = sa
        self.address = address
        self.networks: list[IpNetwork] = []
        self.rekey_reported = False
        self.esp_drops = [0] * DROP_COUNT


class OutboundWorker(_Worker):
    """TUN -> ESP -> UDP. Holds every peer's current outbound SA and the inner routes."""

    role = "outbound"

    def __init__(
        self,
        tun_fd: int,
        udp: socket.socket,
        control: socket.socket,
        *,
        exit_on_close: bool,
        tun_offload: bool = False,
    ) -> None:
        super().__init__(tun_fd, udp, control, exit_on_close=exit_on_close, tun_offload=tun_offload)
        self.peers: dict[int, _OutboundPeer] = {}
        self.routes: PrefixMap[_OutboundPeer] = PrefixMap()

    def _pump_packets(self) -> None:
        if self.tun_offload:
            self._pump_super_packets()
            return
        read = os.read
        tun = self.tun_fd
        sendto = self.udp.sendto
        lookup = self.routes.lookup
        drops = self.drops
        while True:
            packet = read(tun, MAX_DATAGRAM)
            if not packet:
                if self.stopping:
                    return
                continue
            version = packet[0] >> 4
            if version == 4:
                peer = lookup(packet[16:20])
            elif version == 6:
                peer = lookup(packet[24:40])
            else:
                drops[WorkerDrop.NOT_IP] += 1
                continue
            if peer is None:
                drops[WorkerDrop.NO_ROUTE] += 1
                continue
            esp = peer.sa.encapsulate(packet)
            if not isinstance(esp, bytes):
                peer.esp_drops[esp] += 1
                continue
            try:
                sendto(esp, peer.address)
            except OSError:
                drops[WorkerDrop.SEND_FAILED] += 1

    def _pump_super_packets(self) -> None:
        """The loop for a TUN with offloads: one read may hold ~40 TCP segments.

        The segments of one super packet share their destination, so the
        route is looked up once, and their ESP packets (equal sizes but the
        last) leave in one UDP GSO ``sendmsg`` per 64 KiB.
        """
        read = os.read
        tun = self.tun_fd
        lookup = self.routes.lookup
        drops = self.drops
        while True:
            buffer = read(tun, MAX_SUPER_PACKET)
            if not buffer:
                if self.stopping:
                    return
                continue
            packets = segment(buffer)
            if packets is None:
                drops[WorkerDrop.NOT_IP] += 1
                continue
            first = packets[0]
            version = first[0] >> 4
            if version == 4:
                peer = lookup(first[16:20])
            elif version == 6:
                peer = lookup(first[24:40])
            else:
                drops[WorkerDrop.NOT_IP] += 1
                continue
            if peer is None:
                drops[WorkerDrop.NO_ROUTE] += 1
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
                self._send_batch(batch, peer.address)

    def _send_batch(self, batch: list[bytes], address: PeerAddress) -> None:
        """UDP GSO (``UDP_SEGMENT``): equal-sized datagrams but the last, in one system call."""
        try:
            if len(batch) == 1:
                self.udp.sendto(batch[0], address)
                return
            size = len(batch[0])
            per_call = max(1, min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size))
            for start in range(0, len(batch), per_call):
                chunk = batch[start : start + per_call]
                if all(len(esp) == size for esp in chunk[:-1]) and len(chunk[-1]) <= size:
                    control = [(socket.SOL_UDP, UDP_SEGMENT, _U16_NATIVE.pack(size))]
                    self.udp.sendmsg(chunk, control, 0, address)
                else:
                    for esp in chunk:
                        self.udp.sendto(esp, address)
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
        peer = self.peers.get(pair.peer_id)
        if peer is None:
            peer = _OutboundPeer(pair.peer_id, sa, pair.peer_address)
            self.peers[pair.peer_id] = peer
        else:
            self._retire(peer.sa)
            peer.sa = sa  # make before break: the next packet uses the new SA
            peer.address = pair.peer_address
            peer.rekey_reported = False
        networks = [parse_network(n) for n in pair.inner_networks]
        for stale in peer.networks:
            if stale not in networks:
                self.routes.remove(stale)
        for network in networks:
            self.routes.add(network, peer)
        peer.networks = networks

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

    def _set_peer_address(self, peer_id: int, address: PeerAddress) -> None:
        peer = self.peers.get(peer_id)
        if peer is not None:
            peer.address = address

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
                drops=_esp_drops(peer.esp_drops),
                sequence=peer.sa.seq,
            )
            for peer in list(self.peers.values())
        )
        return CountersReport(token, self.role, self._totals(sas), sas)


class _InboundEntry:
    __slots__ = ("address", "allowed", "peer_id", "sa")

    def __init__(
        self, sa: InboundSa, peer_id: int, allowed: PrefixMap[bool], address: PeerAddress
    ) -> None:
        self.sa = sa
        self.peer_id = peer_id
        self.allowed = allowed
        self.address = address


class InboundWorker(_Worker):
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
                size = _gro_size(ancillary) or len(data)
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
                drops=_esp_drops(entry.sa.drops),
                sequence=entry.sa.replay.top,
            )
            for entry in list(self.sas.values())
        )
        totals = self._totals(sas)
        totals["keepalives"] = self.keepalives
        totals["ike_datagrams"] = self.ike_datagrams
        return CountersReport(token, self.role, totals, sas)


def main(argv: list[str] | None = None) -> None:
    """Process entry: ``python -m common.dataplane.worker ROLE TUN UDP CONTROL IKE [offload]``.

    File descriptors are inherited from the control plane (``pass_fds``), so
    a worker opens nothing itself and needs no privilege of its own.
    """
    import signal
    import sys

    args = sys.argv[1:] if argv is None else argv
    role, tun_fd, udp_fd, control_fd, ike_fd = args[0], *map(int, args[1:5])
    tun_offload = len(args) > 5 and args[5] == "offload"
    # Ctrl-C and group-wide SIGTERMs (timeout, systemd) reach us too; the control
    # plane decides when we stop (closing the channel), after reading final counters.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    udp = socket.socket(fileno=udp_fd)
    control = socket.socket(fileno=control_fd)
    worker: _Worker
    if role == "outbound":
        worker = OutboundWorker(tun_fd, udp, control, exit_on_close=True, tun_offload=tun_offload)
    elif role == "inbound":
        ike = socket.socket(fileno=ike_fd)
        worker = InboundWorker(
            tun_fd, udp, control, ike, exit_on_close=True, tun_offload=tun_offload
        )
    else:
        raise SystemExit(f"unknown worker role {role!r}")
    worker.run()


if __name__ == "__main__":
    main()
