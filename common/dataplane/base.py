"""What both data-plane workers share: the control thread, counters, drop reasons.

Why this shape (DESIGN.md, measured): each worker's packet loop blocks in one
system call per read and never polls, so the only per-packet costs are the
read, the crypto and the write. Commands arrive on a second thread that
blocks on the control socket; it swaps table entries atomically (dict and
attribute assignment under the GIL), so the packet loop takes no lock. Each
worker owns the half of every SA its direction needs: no shared counter, no
lock. Counters are read by the control thread on request; nothing per packet
leaves the process.

Several UDP sockets (a concentrator listening on IPv4 and IPv6, or on more
than one address) are handed to both workers as one sequence; a peer's SAs
name the socket it talks to by index (``SaPair.local_socket``).

TCP MSS clamping (``common.wire.mss``) is a plane-wide setting, the TUN MTU
(``mss_clamp_mtu``): one TUN device has one MTU, the control plane computes
it from the largest-overhead suite it may negotiate (``tunnel_mtu``), and no
packet larger than it crosses the TUN in either direction, so a per-SA value
could only announce segments the TUN would refuse anyway.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from collections.abc import Sequence
from enum import IntEnum
from typing import Any, Final

from common.dataplane.channel import receive_message, send_message
from common.dataplane.messages import (
    ActivateOutbound,
    Applied,
    CountersReport,
    InstallSa,
    PeerAddress,
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
from common.esp.sa import DROP_COUNT, Drop
from common.wire.mss import max_mss_for_mtu
from common.wire.offload import VNET_HDR_LEN

HOUSEKEEPING_INTERVAL_S: Final = 1.0
# SaCounters per CountersReport message: about 150 octets pickled each, so
# a part stays far below ``channel.MAX_MESSAGE`` (1 MiB) whatever the drops.
COUNTERS_PER_MESSAGE: Final = 1000
MAX_SUPER_PACKET: Final = 65535 + VNET_HDR_LEN
# UDP GSO/GRO (linux/udp.h). The kernel takes at most 64 segments (UDP_MAX_SEGMENTS)
# and one IP packet's worth of payload per call.
UDP_SEGMENT: Final = 103
UDP_GRO: Final = 104
GSO_MAX_SEGMENTS: Final = 64
GSO_MAX_BYTES: Final = 65000
U16_NATIVE: Final = struct.Struct("=H")
_INT_NATIVE: Final = struct.Struct("=i")


def gro_segment_size(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The segment size the kernel reports for a coalesced (GRO) receive, or 0."""
    for level, kind, value in ancillary:
        if level == socket.SOL_UDP and kind == UDP_GRO and len(value) >= 4:
            size: int = _INT_NATIVE.unpack_from(value)[0]
            return size
    return 0


def native_address(family: int, address: PeerAddress) -> tuple[Any, ...]:
    """``address`` in the form ``recvmsg`` on a socket of ``family`` reports it.

    So the inbound loop can compare a datagram's source with an SA's peer in
    one tuple comparison: an IPv6 socket reports ``(host, port, 0, scope_id)``
    (Linux always zeroes the flow label there), with the host in its canonical
    text form and an IPv4 peer of a dual-stack socket as ``::ffff:a.b.c.d``.
    Numeric hosts only: no name is ever resolved. Raises ``OSError`` for a
    host that is no address of ``family``.
    """
    flags = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
    if family == socket.AF_INET6:
        flags |= socket.AI_V4MAPPED
    info = socket.getaddrinfo(address[0], address[1], family, socket.SOCK_DGRAM, 0, flags)
    native: tuple[Any, ...] = info[0][4]
    return native


def as_sockets(udp: object | Sequence[object]) -> tuple[Any, ...]:
    """One socket or a sequence of them, as a tuple (callers with one socket stay unchanged)."""
    if isinstance(udp, (list, tuple)):
        if not udp:
            raise ValueError("the data plane needs at least one UDP socket")
        return tuple(udp)
    return (udp,)


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


def esp_drop_counts(counts: list[int]) -> dict[str, int]:
    return {reason.name.lower(): counts[reason] for reason in Drop if counts[reason]}


class Worker:
    """What both directions share: the control thread and counter reporting."""

    role = "worker"

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
        self.tun_fd = tun_fd
        self.tun_offload = tun_offload
        self.sockets: tuple[socket.socket, ...] = as_sockets(udp)
        self.udp = self.sockets[0]
        # 0 turns clamping off: the packet loops test it before anything else.
        self.max_mss_v4 = max_mss_for_mtu(mss_clamp_mtu, 4) if mss_clamp_mtu else 0
        self.max_mss_v6 = max_mss_for_mtu(mss_clamp_mtu, 6) if mss_clamp_mtu else 0
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

    def _report_counters(self, report: CountersReport) -> None:
        """Send ``report`` in parts of ``COUNTERS_PER_MESSAGE`` SAs.

        Blocking sends on the control thread (never the packet loop): a
        dropped part would leave the control plane waiting for it.
        """
        sas = report.sas
        parts = [
            sas[i : i + COUNTERS_PER_MESSAGE] for i in range(0, len(sas), COUNTERS_PER_MESSAGE)
        ]
        parts = parts or [()]
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            message = CountersReport(
                report.token, report.role, report.totals if last else {}, part, last
            )
            with contextlib.suppress(OSError):
                send_message(self.control, message)

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
            case SetPeerAddress(peer_id, address, local_socket):
                self._set_peer_address(peer_id, address, local_socket)
            case ActivateOutbound(peer_id, outbound_spi):
                self._activate_outbound(peer_id, outbound_spi)
            case RequestCounters(token):
                self._report_counters(self._counters(token))
            case _:
                self._notify(WorkerFailed(self.role, f"unknown command {type(message).__name__}"))

    def _install(self, pair: SaPair) -> None:
        raise NotImplementedError

    def _remove_inbound(self, spi: int) -> None:
        """Only the inbound worker holds inbound SAs."""

    def _remove_peer(self, peer_id: int) -> None:
        raise NotImplementedError

    def _activate_outbound(self, peer_id: int, outbound_spi: int) -> None:
        """Only the outbound worker sends."""

    def _set_peer_address(self, peer_id: int, address: PeerAddress, local_socket: int) -> None:
        raise NotImplementedError

    def _native_address(self, address: PeerAddress, local_socket: int) -> tuple[Any, ...]:
        """The peer's address as socket ``local_socket`` reports sources (checked by the
        control plane before the command was sent, so this does not fail here)."""
        return native_address(self.sockets[local_socket].family, address)

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
