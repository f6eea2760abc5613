"""One simulated road warrior: our IKEv2 initiator core, one UDP socket, its ESP SAs, its probes.

Driven by a worker's loop (``loadtest.worker``), never by its own task or
timer: the worker calls :meth:`SimClient.start`, :meth:`SimClient.receive`
when the socket is readable and :meth:`SimClient.on_timer` when the
deadline from :meth:`SimClient.deadline` passes, then reschedules.

One socket per client, bound to an ephemeral port (or to the client's own
source address): IKE_SA_INIT goes to the gateway's port 500 and, with
encapsulation forced, everything after to 4500 with the non-ESP marker,
all from the same local port, which to the gateway looks like a road
warrior behind a NAT (RFC 3948, RFC 7296 2.23). So ESP and IKE replies come
back on this one socket, and a reply that arrives here was sent into *this*
client's tunnel.

Flow::

    start -> IkeSession.initiate -> sendto(gw:500)
    gw:500 / gw:4500+marker -> IkeSession.receive_datagram -> events
    ChildSaEstablished -> OutboundSa / InboundSa; probes every 1/pps s
    gw:4500 ESP -> InboundSa.decapsulate -> Prober.check_reply -> tally
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Final

from common.esp.natt import NAT_KEEPALIVE, NON_ESP_MARKER
from common.esp.sa import Drop, InboundSa, OutboundSa
from common.esp.suites import suite_by_name
from common.ike.events import (
    AddressAssigned,
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    ChildSaRekeyed,
    IkeEvent,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
    PeerUnreachable,
    RekeyFailed,
)
from common.ike.policy import IkeConfiguration
from common.ike.session import IkeSession
from loadtest.packets import Prober, Protocol, Verdict
from loadtest.stats import TIMEOUT, Tally, failure_reason

log = logging.getLogger("outpost.loadtest")

IKE_PORT: Final = 500
NATT_PORT: Final = 4500
_MAX_OUTSTANDING: Final = 256


@dataclass(frozen=True)
class TrafficPlan:
    """What every established client sends: ``pps`` probes per second to ``target``."""

    target: ipaddress.IPv4Address | None
    pps: float = 1.0
    protocol: Protocol = "icmp"
    port: int = 7
    size: int = 56
    rekey_after_s: float | None = None  # ask for a Child SA rekey this long after up


class SimClient:
    """A road warrior with no TUN; the worker that owns it is its only driver."""

    __slots__ = (
        "closed",
        "deferred",
        "deleting",
        "established_at",
        "gateway",
        "inbound",
        "n",
        "next_probe",
        "outbound",
        "outstanding",
        "prober",
        "rekey_at",
        "seq",
        "session",
        "sock",
        "started_at",
        "started_wall",
        "tally",
        "timeout_at",
        "traffic",
        "up",
    )

    def __init__(
        self,
        n: int,
        configuration: IkeConfiguration,
        gateway: str,
        source: str | None,
        traffic: TrafficPlan,
        tally: Tally,
    ) -> None:
        family = socket.AF_INET6 if ":" in gateway else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sock.setblocking(False)
            self.sock.bind((source or ("::" if family == socket.AF_INET6 else "0.0.0.0"), 0))
        except OSError:
            self.sock.close()
            raise
        local = self.sock.getsockname()
        self.n = n
        self.gateway = gateway
        self.traffic = traffic
        self.tally = tally
        self.session = IkeSession(
            configuration,
            is_initiator=True,
            local_addr=(local[0], local[1]),
            remote_addr=(gateway, IKE_PORT),
        )
        self.inbound: dict[int, InboundSa] = {}
        self.outbound: OutboundSa | None = None
        # Rekeys the gateway started: the new outbound SA, by the old inbound
        # SPI whose deletion switches us to it (see ``_on_event``).
        self.deferred: dict[int, OutboundSa] = {}
        self.prober: Prober | None = None
        self.outstanding: set[int] = set()
        self.seq = 0
        self.started_at = 0.0
        self.started_wall = 0.0
        self.established_at: float | None = None
        self.timeout_at: float | None = None
        self.next_probe: float | None = None
        self.rekey_at: float | None = None
        self.up = False  # IKE and the first Child SA established
        self.closed = False
        self.deleting = False  # we asked for the Delete: not a lost tunnel

    # --- inputs ------------------------------------------------------------------------------

    def start(self, now: float, timeout_s: float) -> None:
        self.started_at = now
        self.timeout_at = now + timeout_s
        self.tally.started += 1
        self.session.initiate(now)
        self._pump(now)

    def receive(self, now: float) -> None:
        """Read everything waiting on the socket."""
        while not self.closed:
            try:
                data, source = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # ICMP port unreachable and the like
                log.debug("client %d: %s", self.n, error)
                return
            port = source[1]
            if port == NATT_PORT:
                if data.startswith(NON_ESP_MARKER):
                    self.session.receive_datagram(data[4:], (source[0], port), now)
                    self._pump(now)
                elif data != NAT_KEEPALIVE:
                    self._receive_esp(data)
            else:
                self.session.receive_datagram(data, (source[0], port), now)
                self._pump(now)

    def on_timer(self, now: float) -> None:
        if self.closed:
            return
        if not self.up and self.timeout_at is not None and now >= self.timeout_at:
            self._fail(TIMEOUT)
            self._close()
            return
        timer = self.session.get_timer()
        if timer is not None and timer <= now:
            self.session.handle_timer(now)
            self._pump(now)
        if self.rekey_at is not None and now >= self.rekey_at and self.up and not self.deleting:
            self.rekey_at = None
            if self.inbound and not self.session.exchanging:
                self.session.rekey_child(max(self.inbound), now)
                self._pump(now)
        if self.next_probe is not None and now >= self.next_probe:
            self._probe()
            self.next_probe = max(self.next_probe + 1 / self.traffic.pps, now)

    def stop_traffic(self) -> None:
        self.next_probe = None
        self.rekey_at = None

    def delete(self, now: float) -> None:
        """Say goodbye (INFORMATIONAL Delete) so the gateway frees the tunnel now."""
        self.stop_traffic()
        if self.closed:
            return
        self.deleting = True
        if not self.up:
            if self.established_at is None:
                self._fail("stopped")
            self._close()
            return
        self.session.delete(now)
        self._pump(now)

    def deadline(self) -> float | None:
        """The earliest moment this client needs its ``on_timer`` called."""
        if self.closed:
            return None
        candidates = [
            t
            for t in (
                self.session.get_timer(),
                None if self.up else self.timeout_at,
                self.next_probe,
                self.rekey_at,
            )
            if t is not None
        ]
        return min(candidates) if candidates else None

    # --- internals ---------------------------------------------------------------------------

    def _pump(self, now: float) -> None:
        session = self.session
        for data, address in session.datagrams_to_send(now):
            payload = NON_ESP_MARKER + data if session.use_nat_t else data
            try:
                self.sock.sendto(payload, address)
            except OSError as error:  # lost like any datagram; the core retransmits
                log.debug("client %d: send: %s", self.n, error)
        while (event := session.next_event()) is not None:
            self._on_event(event, now)

    def _on_event(self, event: IkeEvent, now: float) -> None:
        tally = self.tally
        match event:
            case AddressAssigned(address=address) if address is not None:
                if self.traffic.target is not None:
                    self.prober = Prober(
                        self.n,
                        address,
                        self.traffic.target,
                        self.traffic.protocol,
                        self.traffic.port,
                        self.traffic.size,
                    )
            case ChildSaEstablished() as child:
                self._install(child)
                if not self.up:
                    self.up = True
                    self.established_at = now
                    tally.established += 1
                    tally.establish_ms.append(1000 * (now - self.started_at))
                    tally.last_established_s = now
                    if self.prober is not None and self.traffic.pps > 0:
                        # Spread the first probes over one period, not all at once.
                        self.next_probe = now + (self.n % 97) / 97 / self.traffic.pps
                    if self.traffic.rekey_after_s is not None:
                        self.rekey_at = now + self.traffic.rekey_after_s
            case ChildSaRekeyed() as rekeyed:
                # The rekey's responder keeps sending on the old SA until it is
                # deleted: the gateway installs its new inbound half only when
                # our answer arrives, so a probe on the new SA could beat it
                # there (as the real client does: SaPair.defer_outbound).
                defer = not rekeyed.initiated_by_us and rekeyed.old_inbound_spi in self.inbound
                self._install(
                    rekeyed.established, defer_under=(rekeyed.old_inbound_spi if defer else None)
                )
                tally.child_rekeys += 1
            case ChildSaDeleted(inbound_spi=spi):
                self.inbound.pop(spi, None)
                if spi in self.deferred:
                    self.outbound = self.deferred.pop(spi)
            case IkeSaRekeyed():
                tally.ike_rekeys += 1
            case RekeyFailed():
                tally.rekeys_failed += 1
            case ChildSaFailed() as failed:
                self._fail(failure_reason(failed))
                # The IKE SA stands with nothing in it: take it down too.
                self.deleting = True
                self.session.delete(now)
            case IkeSaFailed() | PeerUnreachable() as failed:
                if not self.up:
                    self._fail(failure_reason(failed))
                elif not self.deleting:
                    tally.lost += 1
                self._close()
            case IkeSaDeleted():
                if self.up and self.deleting:
                    tally.closed += 1
                elif self.up:
                    tally.lost += 1
                elif self.established_at is None:
                    self._fail("deleted_by_gateway")
                self._close()
            case IkeSaEstablished() | AddressAssigned():
                pass

    def _install(self, child: ChildSaEstablished, defer_under: int | None = None) -> None:
        """Both halves of a Child SA; outbound at once, or when ``defer_under`` is deleted."""
        suite = suite_by_name(child.esp_suite)
        self.inbound[child.inbound_spi] = InboundSa(
            child.inbound_spi, suite, child.inbound_keymat, esn=child.esn
        )
        outbound = OutboundSa(child.outbound_spi, suite, child.outbound_keymat, esn=child.esn)
        if defer_under is None:
            self.outbound = outbound
        else:
            self.deferred[defer_under] = outbound

    def _fail(self, reason: str) -> None:
        if self.up or self.established_at is not None:
            return
        self.established_at = -1.0  # counted once
        self.tally.failed += 1
        self.tally.failures[reason] += 1

    def _close(self) -> None:
        """Done: the worker sees ``closed``, unregisters the socket, then closes it."""
        self.closed = True
        self.up = False
        self.next_probe = None

    def _probe(self) -> None:
        if self.prober is None or self.outbound is None:
            return
        self.seq += 1
        packet = self.outbound.encapsulate(self.prober.probe(self.seq))
        if isinstance(packet, Drop):
            self.tally.esp_drops[f"outbound_{packet.name}"] += 1
            return
        try:
            self.sock.sendto(packet, (self.gateway, NATT_PORT))
        except OSError:
            self.tally.esp_drops["send_error"] += 1
            return
        self.tally.packets_sent += 1
        self.outstanding.add(self.seq)
        if len(self.outstanding) > _MAX_OUTSTANDING:
            self.outstanding.discard(min(self.outstanding))

    def _receive_esp(self, data: bytes) -> None:
        tally = self.tally
        if len(data) < 8:
            tally.esp_drops["short"] += 1
            return
        sa = self.inbound.get(int.from_bytes(data[:4], "big"))
        if sa is None:
            tally.esp_drops["unknown_spi"] += 1
            return
        inner = sa.decapsulate(data)
        if isinstance(inner, Drop):
            tally.esp_drops[inner.name] += 1
            return
        if self.prober is None:
            tally.reply_errors["unexpected"] += 1
            return
        verdict, seq = self.prober.check_reply(inner)
        if verdict is not Verdict.OK:
            tally.reply_errors[verdict.value] += 1
        elif seq in self.outstanding:
            self.outstanding.discard(seq)
            tally.packets_received += 1
        else:
            tally.reply_errors["duplicate_or_late"] += 1
