"""The concentrator's control plane without sockets: IKE intake, the tunnel table, the glue.

``TunnelManager`` is what the asyncio service (``service.py``) drives. It
takes IKE datagrams (``receive_ike``), timer ticks (``handle_timers``) and
data-plane notices (``note_activity``, ``peer_moved``), and acts through
two injected ports: ``send`` for IKE datagrams and a ``DataPlanePort`` for
Child SAs. It keeps no clock (``now`` is always a parameter), so tests drive
many clients through it in memory with real ``IkeSession`` initiators.

Tables (issue 4): tunnels by id (which is also the data plane's peer id), by
each of our IKE SPIs, half-open ones by the initiator's (SPIi, address) so a
retransmitted IKE_SA_INIT finds its session, and established ones by
identity. Child SAs are found by inbound SPI in the data plane itself; inner
addresses route there too (``SaPair.inner_networks``), so no lookup by inner
address happens here.

Decisions, each for a reason:

- *COOKIE* (RFC 7296 2.6) once ``cookie_threshold`` half-open SAs exist: the
  intake answers statelessly (``common.ike.cookies``) before any session or
  Diffie-Hellman work, so a flood from spoofed sources costs one HMAC each.
  Beyond ``max_half_open`` new requests are dropped outright (counted).
- *Half-open timeout*: a session that did not authenticate within
  ``half_open_timeout`` is dropped without a word (charon's 30 s).
- *One tunnel per identity* (strongSwan's ``uniqueids = yes``): a new IKE SA
  for an identity replaces the older one, which is told with a Delete.
  That is what a laptop that lost its tunnel (sleep, new Wi-Fi) needs to get
  its address back at once; two devices sharing one identity displace each
  other, as with strongSwan, and admins give them separate identities.
- *Leases* are asked for by the IKE core during IKE_AUTH, after the peer's
  AUTH is verified, through a per-session wrapper that records them on the
  tunnel; each is given back (``release``) exactly once when the tunnel
  ends, whether or not a Child SA came of it. The older tunnel of the same
  identity is retired at that moment, before the pool is asked, so its
  address is free again and the sticky pool returns it to the newcomer.
- *DPD* (RFC 7296 2.4) only for idle clients: the service feeds per-tunnel
  inbound packet counts from the data plane (``note_activity``); a tunnel
  with no inbound ESP for ``dpd_interval`` gets an empty INFORMATIONAL, and
  the IKE core's retransmission schedule decides when it is dead.
- *Everything UDP-encapsulated*: our data plane has no raw ESP, so the
  responder configuration must force encapsulation (``force_encapsulation``).
"""

from __future__ import annotations

import datetime
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, cast

from cryptography import x509

from common.dataplane.messages import SaPair
from common.esp.spi import allocate_spi
from common.ike.constants import ExchangeType, NotifyType
from common.ike.cookies import CookieIssuer, needs_cookie, parse_ike_sa_init_request
from common.ike.errors import IkeError
from common.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    ChildSaRekeyed,
    IkeEvent,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    PeerUnreachable,
    RekeyFailed,
)
from common.ike.exchanges import Address, format_address
from common.ike.message import peek_header
from common.ike.policy import (
    CertificatePolicy,
    Identity,
    IkeConfiguration,
    IpAddress,
    IpNetwork,
    IpVersion,
    ResponderPolicy,
)
from common.ike.selectors import networks_of
from common.ike.session import IkeSession, Rng
from common.ike.state import IkeSaState
from common.timers import TimerQueue
from concentrator.tunnel import ChildRecord, Tunnel

log = logging.getLogger("outpost.concentrator")

ZERO_SPI = bytes(8)


class SendIke(Protocol):
    """Send one IKE message to ``remote`` from our ``local`` address (port 4500 when ``nat_t``)."""

    def __call__(self, data: bytes, remote: Address, local: Address, nat_t: bool) -> None: ...


class DataPlanePort(Protocol):
    """The part of ``common.dataplane.control.DataPlane`` the manager uses."""

    def install_sa(self, pair: SaPair) -> None: ...

    def remove_inbound_sa(self, spi: int) -> None: ...

    def remove_peer(self, peer_id: int) -> None: ...

    def activate_outbound(self, peer_id: int, outbound_spi: int) -> None: ...

    def set_peer_address(self, peer_id: int, address: tuple[str, int]) -> None: ...


class LeasingPolicy(ResponderPolicy, Protocol):
    """A ``ResponderPolicy`` whose leases the manager gives back when a client leaves."""

    def release(self, address: IpAddress) -> bool:
        """Give back an address ``lease_address`` returned (once per lease)."""
        ...


class _SessionPolicy:
    """The policy one session sees: the shared one, with leases tracked per tunnel.

    The IKE core asks for an address only once the peer's AUTH is verified
    (``ResponderPolicy``), which is the moment to retire an older tunnel of
    the same identity: its address goes back to the pool first, so the
    sticky pool hands the same address to the new tunnel.
    """

    __slots__ = ("_manager", "_policy", "_tunnel_id")

    def __init__(self, manager: TunnelManager, policy: LeasingPolicy, tunnel_id: int) -> None:
        self._manager = manager
        self._policy = policy
        self._tunnel_id = tunnel_id

    def psk_for(self, identity: Identity) -> bytes | None:
        # Asked only for a peer that authenticates with a PSK (not for a
        # certificate peer, ``CertificatePolicy``): remembered for reloads.
        psk = self._policy.psk_for(identity)
        tunnel = self._manager.tunnels.get(self._tunnel_id)
        if tunnel is not None:
            tunnel.psk_auth = psk is not None
        return psk

    def lease_address(self, identity: Identity, version: IpVersion) -> IpAddress | None:
        return self._manager._lease(self._tunnel_id, identity, version)

    def dns_servers(self) -> Sequence[IpAddress]:
        return self._policy.dns_servers()

    def subnets_for(self, identity: Identity) -> Sequence[IpNetwork]:
        return self._policy.subnets_for(identity)


class _CertificateSessionPolicy(_SessionPolicy):
    """``_SessionPolicy`` for a shared policy that also admits certificate users."""

    __slots__ = ()

    def ca_certificates(self) -> Sequence[x509.Certificate]:
        return cast(CertificatePolicy, self._policy).ca_certificates()

    def authorize(self, identity: Identity, certificate: x509.Certificate) -> bool:
        return cast(CertificatePolicy, self._policy).authorize(identity, certificate)


@dataclass(frozen=True, slots=True)
class ManagerSettings:
    """How the manager treats clients; see the module docstring for the why of each."""

    ike: IkeConfiguration
    cookie_threshold: int = 64
    max_half_open: int = 4096
    half_open_timeout: float = 30.0
    dpd_interval: float = 30.0  # 0 disables DPD
    replay_window: int = 4096
    unique_identities: bool = True


class TunnelManager:
    """Every client's IKE session and Child SAs, and the rules that bind them."""

    def __init__(
        self,
        settings: ManagerSettings,
        policy: LeasingPolicy,
        dataplane: DataPlanePort,
        send: SendIke,
        *,
        rng: Rng,
        cookie_issuer: CookieIssuer | None = None,
        validation_time: Callable[[], datetime.datetime] | None = None,
        local_sockets: Mapping[str, int] | None = None,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.dataplane = dataplane
        self._send = send
        self._rng = rng
        self._cookies = cookie_issuer or CookieIssuer(rng)
        self._validation_time = validation_time
        # Our address -> the data plane's port-4500 socket bound to it, so ESP
        # leaves from the address the client talks to.
        self._local_sockets = dict(local_sockets or {})
        self.tunnels: dict[int, Tunnel] = {}
        self._by_spi: dict[bytes, Tunnel] = {}
        self._half_open: dict[tuple[bytes, str, int], Tunnel] = {}
        self._by_identity: dict[Identity, Tunnel] = {}
        self._inbound_spis: set[int] = set()
        self._timers: TimerQueue[int] = TimerQueue()
        self._next_id = 1
        self._now = 0.0  # of the datagram being processed, for work done inside the core
        # Counted, never per-packet logged: IKE drops by reason, handshake
        # outcomes by reason, tunnel ends by reason (metrics read these).
        self.ike_drops: Counter[str] = Counter()
        self.handshakes: Counter[str] = Counter()
        self.closures: Counter[str] = Counter()

    # --- what the service calls ------------------------------------------------------

    @property
    def half_open(self) -> int:
        return len(self._half_open)

    def established(self) -> Iterable[Tunnel]:
        return (t for t in self.tunnels.values() if t.established and not t.closing)

    def receive_ike(self, data: bytes, remote: Address, local: Address, now: float) -> None:
        """One IKE datagram (without any non-ESP marker) from ``remote`` to our ``local``."""
        self._now = now
        try:
            header = peek_header(data)
        except IkeError:
            self.ike_drops["malformed"] += 1
            return
        tunnel = self._by_spi.get(header.spi_r) if header.spi_r != ZERO_SPI else None
        if tunnel is None and header.spi_r == ZERO_SPI:
            if (
                header.exchange_type != ExchangeType.IKE_SA_INIT
                or header.response
                or header.message_id != 0
            ):
                self.ike_drops["unknown SPI"] += 1
                return
            tunnel = self._half_open.get((header.spi_i, remote[0], remote[1]))
            if tunnel is None:
                tunnel = self._admit(data, header.spi_i, remote, local, now)
                if tunnel is None:
                    return
        if tunnel is None:
            # After an IKE SA rekey that we started we are the new SA's
            # original initiator, so our SPI is the header's SPIi (RFC 7296 2.18).
            tunnel = self._by_spi.get(header.spi_i)
            if tunnel is None:
                self.ike_drops["unknown SPI"] += 1
                return
        tunnel.session.receive_datagram(data, remote, now)
        self._service(tunnel, now)

    def handle_timers(self, now: float) -> None:
        """Run every tunnel whose deadline has come (the service calls at ``next_deadline``)."""
        for tunnel_id in self._timers.pop_due(now):
            tunnel = self.tunnels.get(tunnel_id)
            if tunnel is None:
                continue
            if (
                not tunnel.established
                and now >= tunnel.created_at + self.settings.half_open_timeout
            ):
                self.handshakes["half-open timeout"] += 1
                self._forget(tunnel, "half-open timeout", now)
                continue
            self._run_dpd(tunnel, now)
            timer = tunnel.session.get_timer()
            if timer is not None and timer <= now:
                tunnel.session.handle_timer(now)
            self._service(tunnel, now)

    def next_deadline(self) -> float | None:
        return self._timers.next_deadline()

    @property
    def scheduled(self) -> int:
        """Tunnels with a deadline in the one timer structure (at most one entry each)."""
        return len(self._timers)

    def note_activity(self, inbound_packets: dict[int, int], now: float) -> None:
        """Per-tunnel inbound ESP packet totals from the data plane's counters."""
        for tunnel_id, packets in inbound_packets.items():
            tunnel = self.tunnels.get(tunnel_id)
            if tunnel is not None and packets != tunnel.inbound_packets:
                tunnel.inbound_packets = packets
                tunnel.last_activity = now

    def peer_moved(self, tunnel_id: int, address: tuple[str, int]) -> None:
        """The data plane saw authenticated ESP from a new outer address (NAT rebinding)."""
        tunnel = self.tunnels.get(tunnel_id)
        if tunnel is None or tunnel.closing:
            return
        log.info("tunnel %d %s moved %s -> %s", tunnel_id, tunnel.identity, tunnel.remote, address)
        tunnel.remote = address
        self.dataplane.set_peer_address(tunnel_id, address)

    def rekey_outbound(self, tunnel_id: int, outbound_spi: int, now: float) -> None:
        """An outbound SA nears its sequence limit (data plane): rekey it (RFC 4303 3.3.3)."""
        tunnel = self.tunnels.get(tunnel_id)
        if tunnel is None or tunnel.closing:
            return
        inbound_spi = next(
            (c.inbound_spi for c in tunnel.children.values() if c.outbound_spi == outbound_spi),
            None,
        )
        if inbound_spi is None:
            return
        try:
            tunnel.session.rekey_child(inbound_spi, now)
        except RuntimeError as error:  # already rekeying or deleting it: nothing to add
            log.debug("no rekey of %08x for tunnel %d: %s", inbound_spi, tunnel_id, error)
            return
        self._service(tunnel, now)

    def disconnect(self, tunnel_id: int, now: float, reason: str = "disconnected") -> bool:
        """Delete one tunnel's IKE SA (the peer is told); False if there is no such tunnel."""
        tunnel = self.tunnels.get(tunnel_id)
        if tunnel is None:
            return False
        self._close(tunnel, reason, now)
        if tunnel.tunnel_id in self.tunnels:
            self._service(tunnel, now)
        return True

    def shutdown(self, now: float) -> None:
        """Send Delete to every client (graceful stop); half-open ones are just dropped."""
        for tunnel in list(self.tunnels.values()):
            if tunnel.established:
                self._close(tunnel, "shutdown", now)
                if tunnel.tunnel_id in self.tunnels:
                    self._service(tunnel, now)
            else:
                self._forget(tunnel, "shutdown", now)

    def busy(self) -> bool:
        """Whether any Delete of ours still waits for its answer."""
        return any(t.session.exchanging for t in self.tunnels.values())

    # --- intake ------------------------------------------------------------------------

    def _admit(
        self, data: bytes, spi_i: bytes, remote: Address, local: Address, now: float
    ) -> Tunnel | None:
        """A new IKE_SA_INIT: COOKIE it, refuse it, or give it a session."""
        half_open = len(self._half_open)
        if half_open >= self.settings.max_half_open:
            self.ike_drops["half-open limit"] += 1
            return None
        if needs_cookie(half_open, self.settings.cookie_threshold):
            try:
                request = parse_ike_sa_init_request(data)
            except IkeError:
                self.ike_drops["malformed"] += 1
                return None
            if request.cookie is None or not self._cookies.verify(
                request.cookie, request.ni, remote, request.spi_i, now
            ):
                self.ike_drops["cookie challenged"] += 1
                self._send(self._cookies.challenge(data, remote, now), remote, local, False)
                return None
        config = self.settings.ike
        if self._validation_time is not None:
            config = replace(config, validation_time=self._validation_time())
        tunnel_id = self._next_id
        self._next_id += 1
        allocated: set[int] = set()

        def allocate() -> int:
            spi = allocate_spi(self._inbound_spis, rng=self._rng)
            self._inbound_spis.add(spi)
            allocated.add(spi)
            return spi

        wrapper = (
            _CertificateSessionPolicy
            if isinstance(self.policy, CertificatePolicy)
            else _SessionPolicy
        )
        session = IkeSession(
            config,
            is_initiator=False,
            local_addr=local,
            policy=wrapper(self, self.policy, tunnel_id),
            rng=self._rng,
            spi_allocator=allocate,
        )
        tunnel = Tunnel(tunnel_id, session, local, now, remote, allocated_spis=allocated)
        tunnel.half_open_key = (spi_i, remote[0], remote[1])
        tunnel.last_activity = now
        self.tunnels[tunnel_id] = tunnel
        self._half_open[tunnel.half_open_key] = tunnel
        tunnel.ike_spis.add(session.spi_r)
        self._by_spi[session.spi_r] = tunnel
        return tunnel

    # --- leases ----------------------------------------------------------------------------

    def _lease(self, tunnel_id: int, identity: Identity, version: IpVersion) -> IpAddress | None:
        tunnel = self.tunnels.get(tunnel_id)
        if tunnel is None or tunnel.closing:
            return None  # gone or going while the core worked: nothing to hold a lease
        older = self._by_identity.get(identity)
        if older is not None and older is not tunnel and self.settings.unique_identities:
            log.info("tunnel %d %s replaces tunnel %d", tunnel.tunnel_id, identity, older.tunnel_id)
            self._close(older, "replaced", self._now)
            if older.tunnel_id in self.tunnels:
                self._service(older, self._now)
        address = self.policy.lease_address(identity, version)
        if address is not None:
            tunnel.leased += (address,)
        return address

    def _release(self, tunnel: Tunnel) -> None:
        """Give the tunnel's addresses back, once; ``leased`` stays for the last log line."""
        if tunnel.released:
            return
        tunnel.released = True
        for address in tunnel.leased:
            self.policy.release(address)

    # --- one tunnel's output ---------------------------------------------------------------

    def _service(self, tunnel: Tunnel, now: float) -> None:
        session = tunnel.session
        while True:
            datagrams = session.datagrams_to_send(now)
            events: list[IkeEvent] = []
            while (event := session.next_event()) is not None:
                events.append(event)
            # Events first: a Child SA the answer creates must be in the data
            # plane before the answer leaves, since the peer may send on it as
            # soon as it has the answer (IKE_AUTH, CREATE_CHILD_SA).
            for event in events:
                self._on_event(tunnel, event, now)
            for data, address in datagrams:
                self._send(data, address, tunnel.local, session.use_nat_t)
            # An event may start an exchange (a Delete after ChildSaFailed):
            # go round until nothing is left.
            if not events and not datagrams:
                break
        if tunnel.tunnel_id not in self.tunnels:
            return
        if session.state is IkeSaState.CLOSED:
            self._forget(tunnel, tunnel.close_reason or "closed", now)
            return
        self._index_spis(tunnel)
        if tunnel.established and session.remote_addr != tunnel.remote:
            # An authenticated IKE message came from a new address (RFC 7296 2.23).
            self.peer_moved(tunnel.tunnel_id, session.remote_addr)
        self._reschedule(tunnel)

    def _index_spis(self, tunnel: Tunnel) -> None:
        """Route every IKE SA of the session here, retiring and redundant ones too."""
        for spi_i, spi_r in tunnel.session.ike_spi_pairs:
            for spi in (spi_i, spi_r):
                if spi != ZERO_SPI and spi not in tunnel.ike_spis:
                    tunnel.ike_spis.add(spi)
                    self._by_spi.setdefault(spi, tunnel)

    def _reschedule(self, tunnel: Tunnel) -> None:
        deadlines = [tunnel.session.get_timer(), tunnel.dpd_due]
        if not tunnel.established:
            deadlines.append(tunnel.created_at + self.settings.half_open_timeout)
        live = [d for d in deadlines if d is not None]
        self._timers.schedule(tunnel.tunnel_id, min(live) if live else None)

    def _run_dpd(self, tunnel: Tunnel, now: float) -> None:
        due = tunnel.dpd_due
        if due is None or now < due:
            return
        interval = self.settings.dpd_interval
        idle_since = tunnel.last_activity
        if now - idle_since < interval:
            tunnel.dpd_due = idle_since + interval  # traffic proved it alive
            return
        tunnel.dpd_due = now + interval
        if not tunnel.session.exchanging:
            tunnel.session.check_liveness(now)

    # --- events ----------------------------------------------------------------------------

    def _on_event(self, tunnel: Tunnel, event: IkeEvent, now: float) -> None:
        match event:
            case IkeSaEstablished():
                self._on_established(tunnel, event, now)
            case ChildSaEstablished():
                self._install(tunnel, event, now)
            case ChildSaRekeyed():
                # As the rekey's responder, keep sending on the old SA until it is
                # deleted: the client may not have our answer yet (RFC 7296 2.8).
                self._install(
                    tunnel, event.established, now, defer_outbound=not event.initiated_by_us
                )
                log.info(
                    "child rekeyed %s %08x -> %08x",
                    tunnel.identity,
                    event.old_inbound_spi,
                    event.inbound_spi,
                )
            case ChildSaDeleted():
                if tunnel.children.pop(event.inbound_spi, None) is not None:
                    self.dataplane.remove_inbound_sa(event.inbound_spi)
                if not tunnel.children and tunnel.routed:
                    # The last Child SA went: its outbound half must not keep
                    # the client's inner address routed to it.
                    self.dataplane.remove_peer(tunnel.tunnel_id)
                    tunnel.routed = False
                elif tunnel.children and tunnel.active_outbound not in {
                    c.outbound_spi for c in tunnel.children.values()
                }:
                    # The SA we sent on is gone: switch to the newest one left.
                    newest = max(tunnel.children.values(), key=lambda c: c.installed_at)
                    self.dataplane.activate_outbound(tunnel.tunnel_id, newest.outbound_spi)
                    tunnel.active_outbound = newest.outbound_spi
                self._inbound_spis.discard(event.inbound_spi)
                tunnel.allocated_spis.discard(event.inbound_spi)
            case ChildSaFailed():
                # A road warrior without a Child SA has no use for its IKE SA.
                log.warning("child refused %s: %s", tunnel.identity, event.reason)
                self.handshakes[f"child failed: {_notify_name(event.notify, event.reason)}"] += 1
                self._close(tunnel, "no child SA", now)
            case RekeyFailed():
                log.info("rekey refused %s: %s", tunnel.identity, event.reason)
            case IkeSaFailed():
                if not tunnel.established:
                    reason = _notify_name(event.notify, event.reason)
                    self.handshakes[f"failed: {reason}"] += 1
                    log.warning(
                        "handshake from %s failed: %s", format_address(tunnel.remote), reason
                    )
                tunnel.close_reason = tunnel.close_reason or event.reason
            case IkeSaDeleted():
                tunnel.close_reason = tunnel.close_reason or (
                    "deleted by peer" if event.by_peer else "deleted"
                )
            case PeerUnreachable():
                tunnel.close_reason = "dead peer"
            case _:
                pass  # AddressAssigned is the initiator's

    def _on_established(self, tunnel: Tunnel, event: IkeSaEstablished, now: float) -> None:
        tunnel.identity = event.remote_id
        tunnel.established_at = now
        tunnel.ike_suite = f"{event.ike_suite}/{event.prf}/{event.group}"
        tunnel.remote = tunnel.session.remote_addr
        tunnel.last_activity = now
        if self.settings.dpd_interval > 0:
            tunnel.dpd_due = now + self.settings.dpd_interval
        if tunnel.half_open_key is not None:
            self._half_open.pop(tunnel.half_open_key, None)
            tunnel.half_open_key = None
        self.handshakes["established"] += 1
        older = self._by_identity.get(event.remote_id)
        self._by_identity[event.remote_id] = tunnel
        if older is not None and older is not tunnel and self.settings.unique_identities:
            log.info(
                "tunnel %d %s replaces tunnel %d",
                tunnel.tunnel_id,
                event.remote_id,
                older.tunnel_id,
            )
            self._close(older, "replaced", now)
            if older.tunnel_id in self.tunnels:
                self._service(older, now)

    def _install(
        self,
        tunnel: Tunnel,
        event: ChildSaEstablished,
        now: float,
        *,
        defer_outbound: bool = False,
    ) -> None:
        networks = tuple(networks_of(event.remote_ts))
        pair = SaPair(
            peer_id=tunnel.tunnel_id,
            suite=event.esp_suite,
            inbound_spi=event.inbound_spi,
            outbound_spi=event.outbound_spi,
            peer_address=tunnel.session.remote_addr,
            inner_networks=tuple(str(n) for n in networks),
            inbound_keymat=event.inbound_keymat,
            outbound_keymat=event.outbound_keymat,
            esn=event.esn,
            replay_window=self.settings.replay_window,
            local_socket=self._local_sockets.get(tunnel.local[0], 0),
            defer_outbound=defer_outbound and tunnel.routed,
        )
        self.dataplane.install_sa(pair)
        if not pair.defer_outbound:
            tunnel.active_outbound = event.outbound_spi
        tunnel.routed = True
        first = not tunnel.children
        tunnel.children[event.inbound_spi] = ChildRecord(
            event.inbound_spi, event.outbound_spi, event.esp_suite, networks, now
        )
        if first:
            log.info(
                "tunnel up %s from %s inner %s suite %s ike %s",
                tunnel.identity,
                format_address(tunnel.remote),
                ",".join(str(a) for a in tunnel.leased) or "-",
                event.esp_suite,
                tunnel.ike_suite,
            )

    # --- ending ------------------------------------------------------------------------------

    def _close(self, tunnel: Tunnel, reason: str, now: float) -> None:
        """Start deleting ``tunnel``'s IKE SA; its SAs leave the data plane now.

        The caller sends what the Delete queued (``_service``); the tunnel is
        forgotten when the session closes (answer or give-up, RFC 7296 2.4).
        """
        if tunnel.closing:
            return
        tunnel.closing = True
        tunnel.close_reason = reason
        tunnel.dpd_due = None  # the Delete's own retransmissions watch the peer now
        self._unroute(tunnel)
        if tunnel.session.state is IkeSaState.ESTABLISHED:
            tunnel.session.delete(now)
        else:
            self._forget(tunnel, reason, now)

    def _unroute(self, tunnel: Tunnel) -> None:
        if tunnel.routed:
            self.dataplane.remove_peer(tunnel.tunnel_id)
            tunnel.routed = False
        tunnel.children.clear()
        if tunnel.identity is not None and self._by_identity.get(tunnel.identity) is tunnel:
            del self._by_identity[tunnel.identity]
        self._release(tunnel)

    def _forget(self, tunnel: Tunnel, reason: str, now: float) -> None:
        """Drop every trace of ``tunnel`` (its session is closed or abandoned)."""
        if self.tunnels.pop(tunnel.tunnel_id, None) is None:
            return
        self._unroute(tunnel)
        self._timers.cancel(tunnel.tunnel_id)
        if tunnel.half_open_key is not None:
            self._half_open.pop(tunnel.half_open_key, None)
        for spi in tunnel.ike_spis:
            if self._by_spi.get(spi) is tunnel:
                del self._by_spi[spi]
        self._inbound_spis.difference_update(tunnel.allocated_spis)
        if tunnel.established:
            self.closures[reason] += 1
            log.info(
                "tunnel down %s from %s inner %s: %s after %.0f s",
                tunnel.identity,
                format_address(tunnel.remote),
                ",".join(str(a) for a in tunnel.leased) or "-",
                reason,
                now - (tunnel.established_at or now),
            )


def _notify_name(notify: NotifyType | None, reason: str) -> str:
    return notify.name if notify is not None else reason
