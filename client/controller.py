"""The client as a running program: IKE initiator, data plane, TUN, routes and DNS on one loop.

What the person on the road runs (DESIGN.md "What happens to a packet", steps
1-3). ``Controller`` implements ``client.state.ControllerView``, the only API
the front ends use (the TUI, ``outpost up``, the status socket). It is glue
in the aioquic shape (STYLE.md principle 2), the concentrator service's twin
(``concentrator/service.py``):

- two UDP sockets (``transport.py``): "500" for IKE_SA_INIT, "4500" for IKE
  after the NAT-T move (forced by us too: our data plane speaks only
  UDP-encapsulated ESP) and ESP, owned by the data plane once it exists;
- one loop timer at the IKE session's deadline, re-armed after every piece
  of work; a one-second tick reads the data-plane counters (``TrafficSample``,
  DPD judged from inbound ESP), and a 20-second NAT keepalive (RFC 3948 2.3);
- on ``ChildSaEstablished`` + ``AddressAssigned``: the stale-state record is
  written, then the TUN is created, the leased address added, the SA pair
  installed, routes and DNS set; ``CONNECTED``;
- a lost gateway (DPD, its Delete, a failed handshake) is retried with
  exponential back-off while the TUN, address and routes stay, so
  applications see no route flap; a new lease replaces them;
- ``disconnect`` sends Delete (waits up to ``DELETE_WAIT_S``) and undoes
  everything in reverse order.

Errors reach the person in plain words (``ClientStatus.error``), with the
decision "retry or give up" made in ``_classify``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno
import ipaddress
import logging
import random
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Final

from client.broadcast import Broadcaster, Subscription
from client.dns import DnsEnvironment, DnsError
from client.hostsetup import HostSetup, ManagedHostSetup, NetworkPlan, Undo
from client.hoststate import HostStateBusy, repair_stale
from client.outcomes import (
    DENIED,
    NO_CAP_NET_ADMIN,
    Outcome,
    classify_child_failure,
    classify_failure,
    same_host,
    traffic_from,
)
from client.profile import GatewayUnresolved, Profile, resolve_gateway
from client.routes import plan_routes
from client.state import (
    ClientStatus,
    LogLine,
    StateChanged,
    TrafficSample,
    TunnelInfo,
    TunnelState,
)
from client.statusd import StatusView, default_socket_path, default_state_dir
from client.transport import IkeTransport
from common.dataplane.control import DataPlane, DataPlaneCounters, DataPlaneError, Mode
from common.dataplane.messages import PeerAddressChanged, RekeyNeeded, SaPair, WorkerFailed
from common.esp.suites import suite_by_name, tunnel_mtu
from common.hostnet.base import (
    AddressAssignment,
    HostNetwork,
    HostNetworkError,
    TunDevice,
)
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
from common.ike.exchanges import Address, format_address, tries_within
from common.ike.identities import identity_text
from common.ike.selectors import networks_of
from common.ike.session import IkeSaState, IkeSession
from concentrator.control import ControlError, ControlServer

log = logging.getLogger("outpost.client")

PEER_ID: Final = 1  # the data plane's name for our one peer, the gateway
TICK_S: Final = 1.0  # counters -> TrafficSample and DPD
KEEPALIVE_S: Final = 20.0  # RFC 3948 2.3 suggests 20 s
DELETE_WAIT_S: Final = 2.0
HANDSHAKE_GIVE_UP_S: Final = 10.0  # instead of charon's 165 s: reconnect starts promptly
RETRANSMIT_TIMEOUT_S: Final = 2.0
RETRANSMIT_BASE: Final = 1.5
FIRST_BACKOFF_S: Final = 1.0
JITTER: Final = 0.2  # each back-off is stretched or shrunk by up to 20%
DEFAULT_TUN: Final = "outpost%d"


class Controller:
    """One profile's tunnel; ``ControllerView`` for the front ends.

    Drivers: ``await connect()``, watch ``events()`` / ``status()``,
    ``await disconnect()``; ``await close()`` when the program ends (it
    disconnects and stops the status socket). Everything runs on the loop
    that called ``connect``; the packets never do (the data plane's workers).
    """

    def __init__(
        self,
        profile: Profile,
        *,
        host: HostNetwork | None = None,
        dataplane_mode: Mode = "process",
        gateway_port: int | None = None,
        natt_port: int = 4500,
        local_address: str | None = None,
        tun_name: str = DEFAULT_TUN,
        status_socket: Path | None = None,
        serve_status: bool = True,
        state_dir: Path | None = None,
        dns_env: DnsEnvironment | None = None,
        setup: HostSetup | None = None,
        handshake_give_up_s: float = HANDSHAKE_GIVE_UP_S,
        rng: random.Random | None = None,
    ) -> None:
        """Prepare (no I/O until ``connect``).

        Args:
            profile: the loaded profile (``client.profile.load_profile``).
            host: the host network; default ``LinuxHostNetwork`` at first connect.
            dataplane_mode: worker processes (the real thing) or threads (tests).
            gateway_port: the gateway's IKE port (default the profile's, 500).
            natt_port: the gateway's NAT-T port, where keepalives go.
            local_address: bind our sockets here (default: the wildcard).
            tun_name: the TUN's name; ``%d`` lets the kernel number it.
            status_socket: where ``outpost status`` finds us (default
                ``statusd.default_socket_path()``); ``serve_status=False`` for none.
            state_dir: where the stale-state records live (``client.hoststate``;
                default ``/run/outpost`` for root, else the runtime directory).
            dns_env: how DNS is changed (``client.dns``; tests point it at a
                temporary directory).
            setup: routes, DNS and their record (default ``ManagedHostSetup``).
            handshake_give_up_s: how long an unanswered request (IKE_SA_INIT, DPD,
                rekey) is retransmitted before the gateway counts as gone.
            rng: back-off jitter (tests pass a seeded one).
        """
        self.profile = profile
        self._host = host
        self._dataplane_mode: Mode = dataplane_mode
        self._gateway_port = gateway_port or profile.gateway.port
        self._natt_port = natt_port
        self._local_address = local_address
        self._tun_name = tun_name
        self._status_path = (status_socket or default_socket_path()) if serve_status else None
        self._state_dir = state_dir or default_state_dir()
        self._dns_env = dns_env
        self._setup = setup
        self._give_up_s = handshake_give_up_s
        self._rng = rng or random.Random()
        self._broadcast = Broadcaster()
        self._status = ClientStatus(TunnelState.IDLE, profile.name, profile.gateway.address)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._control: ControlServer | None = None
        # Per connection (connect .. disconnect):
        self._gateway_ip: str | None = None
        self._transport: IkeTransport | None = None
        self._session: IkeSession | None = None
        self._heard_from_gateway = False
        self._ike_established: IkeSaEstablished | None = None
        self._offered: AddressAssigned | None = None  # this attempt's CFG_REPLY
        self._lease: AddressAssigned | None = None  # the one configured on the host
        self._pending_child: ChildSaEstablished | None = None
        self._children: dict[int, int] = {}  # inbound SPI -> outbound SPI, installed
        self._active_outbound: int | None = None  # the outbound SPI the data plane sends on
        self._current: ChildSaEstablished | None = None
        self._failure: Outcome | None = None
        self._session_closed = asyncio.Event()
        self._attempt_task: asyncio.Task[None] | None = None
        # Host state kept across reconnections:
        self._tun: TunDevice | None = None
        self._dataplane: DataPlane | None = None
        self._addresses: list[AddressAssignment] = []
        self._network_undo: Undo | None = None
        self._plan: NetworkPlan | None = None
        self.counters: DataPlaneCounters | None = None
        self._tun_mtu = 0
        self._established_at = 0.0
        self._inbound_packets = 0
        self._last_activity = 0.0
        # Loop handles:
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tick: asyncio.TimerHandle | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    # --- ControllerView --------------------------------------------------------------------

    def status(self) -> ClientStatus:
        return self._status

    def events(self) -> Subscription:
        """A new subscription, starting now (see ``client.broadcast``)."""
        return self._broadcast.subscribe()

    async def connect(self) -> None:
        """Start connecting; returns at once (watch ``events()``). No-op if already active."""
        state = self._status.state
        if state in (TunnelState.CONNECTING, TunnelState.CONNECTED, TunnelState.RECONNECTING):
            return
        if state is TunnelState.DISCONNECTING:
            await self._idle.wait()
        self._loop = asyncio.get_running_loop()
        self._idle.clear()
        await self._start_status_socket()
        self._publish(
            ClientStatus(TunnelState.CONNECTING, self.profile.name, self.profile.gateway.address)
        )
        try:
            repairs = repair_stale(self._state_dir, self._host_network(), dns_env=self._dns_env)
        except (HostNetworkError, OSError) as error:
            denied = isinstance(error, HostNetworkError) and error.errno in DENIED
            self._end_attempt(Outcome(NO_CAP_NET_ADMIN if denied else str(error), retry=False))
            return
        for line in repairs:  # a client killed with -9 left these behind
            self._say("warning", line)
        self._start_attempt(first=True)

    async def disconnect(self) -> None:
        """Delete the IKE SA (waiting up to ``DELETE_WAIT_S``), undo every host change; IDLE."""
        state = self._status.state
        if state is TunnelState.IDLE:
            return
        if state is TunnelState.DISCONNECTING:
            await self._idle.wait()
            return
        self._publish(replace(self._status, state=TunnelState.DISCONNECTING))
        self._cancel_retry()
        if self._attempt_task is not None:
            self._attempt_task.cancel()
            self._attempt_task = None
        session = self._session
        if session is not None and session.state is not IkeSaState.CLOSED:
            self._say("info", "disconnecting")
            self._session_closed.clear()
            session.delete(self._now())
            self._service()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._session_closed.wait(), DELETE_WAIT_S)
        self._teardown()
        self._publish(
            ClientStatus(TunnelState.IDLE, self.profile.name, self.profile.gateway.address)
        )
        self._say("info", "disconnected")
        self._idle.set()

    async def close(self) -> None:
        """Disconnect, stop the status socket and end every subscription."""
        await self.disconnect()
        if self._control is not None:
            with contextlib.suppress(Exception):
                await self._control.close()
            self._control = None
        self._broadcast.close()

    def rekey(self) -> None:
        """Rekey the current Child SA now (make-before-break); for tests and the curious."""
        if self._session is None or self._current is None:
            raise RuntimeError("no Child SA to rekey")
        self._session.rekey_child(self._current.inbound_spi, self._now())
        self._service()

    # --- attempts and reconnection ---------------------------------------------------------

    def _start_attempt(self, *, first: bool = False) -> None:
        self._retry = None
        loop = self._loop
        assert loop is not None
        self._attempt_task = loop.create_task(self._attempt(first))

    async def _attempt(self, first: bool) -> None:
        """Resolve the gateway, bind if needed, send IKE_SA_INIT (the rest is event-driven)."""
        loop = self._loop
        assert loop is not None
        try:
            address = await loop.run_in_executor(None, resolve_gateway, self.profile)
        except GatewayUnresolved as error:
            self._attempt_task = None
            self._end_attempt(Outcome(str(error), retry=True))
            return
        self._attempt_task = None
        if self._status.state not in (TunnelState.CONNECTING, TunnelState.RECONNECTING):
            return  # disconnected meanwhile
        if self._transport is None:
            self._transport = IkeTransport(
                loop, self._receive_ike, self._service, self._dataplane_failed
            )
        try:
            self._transport.bind(str(address), self._local_address)
        except OSError as error:
            self._end_attempt(Outcome(f"cannot open a UDP socket: {error.strerror or error}", True))
            return
        self._gateway_ip = str(address)
        local = self._transport.local_address
        configuration = self.profile.ike_configuration(
            # Our data plane speaks only UDP-encapsulated ESP (RFC 3948): move to
            # 4500 even without a NAT, as strongSwan's encap=yes does.
            force_encapsulation=True,
            # We hold no other IKE SA with this gateway, on the first connect or
            # after losing one (RFC 7296 2.4): the gateway may drop stale ones.
            initial_contact=True,
            retransmit_timeout=RETRANSMIT_TIMEOUT_S,
            retransmit_base=RETRANSMIT_BASE,
            retransmit_tries=tries_within(self._give_up_s, RETRANSMIT_TIMEOUT_S, RETRANSMIT_BASE),
            # The core reads no clock: a signing gateway's certificate is checked now.
            validation_time=datetime.datetime.now(datetime.UTC),
        )
        self._session = IkeSession(
            configuration,
            is_initiator=True,
            local_addr=(local[0], local[1]),
            remote_addr=(str(address), self._gateway_port),
        )
        self._heard_from_gateway = False
        self._ike_established = None
        self._offered = None
        self._pending_child = None
        self._failure = None
        self._session_closed.clear()
        self._say(
            "info",
            f"connecting to {format_address((str(address), self._gateway_port))}"
            + ("" if first else f" (attempt {self._status.reconnect_attempt + 1})"),
        )
        self._session.initiate(self._now())
        self._service()

    def _end_attempt(self, outcome: Outcome) -> None:
        """The IKE SA is gone or never came: retry with back-off, or give up (FAILED)."""
        self._session = None
        self._cancel_timer()
        if self._status.state in (TunnelState.DISCONNECTING, TunnelState.IDLE):
            return
        self._forget_children()
        if not outcome.retry:
            self._say("error", outcome.message)
            self._teardown()
            self._publish(
                ClientStatus(
                    TunnelState.FAILED,
                    self.profile.name,
                    self.profile.gateway.address,
                    traffic=self._status.traffic,
                    error=outcome.message,
                )
            )
            self._idle.set()
            return
        attempt = self._status.reconnect_attempt + 1
        delay = self._backoff(attempt)
        self._say("warning", f"{outcome.message}, retrying in {delay:.0f} s")
        self._publish(
            replace(
                self._status,
                state=TunnelState.RECONNECTING,
                error=outcome.message,
                reconnect_attempt=attempt,
                next_retry_at=time.time() + delay,
            )
        )
        assert self._loop is not None
        self._retry = self._loop.call_later(delay, self._start_attempt)

    def _backoff(self, attempt: int) -> float:
        """1 s, 2 s, 4 s ... capped at the profile's maximum, each with jitter."""
        cap = max(FIRST_BACKOFF_S, self.profile.max_backoff)
        delay = min(cap, FIRST_BACKOFF_S * 2.0 ** min(attempt - 1, 30))
        return min(cap, delay * self._rng.uniform(1 - JITTER, 1 + JITTER))

    def _cancel_retry(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    # --- IKE in and out --------------------------------------------------------------------

    def _receive_ike(self, data: bytes, source: Address) -> None:
        session = self._session
        if session is None or self._gateway_ip is None:
            return
        if same_host(source[0], self._gateway_ip):
            self._heard_from_gateway = True
            self._last_activity = self._now()
        session.receive_datagram(data, source, self._now())

    def _service(self) -> None:
        """Send what the session queued, handle its events, re-arm the timer (one loop)."""
        session = self._session
        if session is None:
            return
        now = self._now()
        while True:
            datagrams = session.datagrams_to_send(now)
            events = []
            while (event := session.next_event()) is not None:
                events.append(event)
            # A Child SA our answer creates goes into the data plane before the
            # answer leaves: the gateway may send on it as soon as it has it.
            for event in events:
                if isinstance(event, ChildSaRekeyed):
                    self._install(
                        session, event.established, defer_outbound=not event.initiated_by_us
                    )
            for data, address in datagrams:
                if self._transport is not None:
                    self._transport.send(data, address, session.use_nat_t)
            for event in events:
                self._on_ike_event(session, event)
            if self._session is not session:
                return  # the attempt ended inside an event handler
            if self._pending_child is not None and self._offered is not None:
                child, self._pending_child = self._pending_child, None
                self._bring_up(session, child, self._offered)
                if self._session is not session:
                    return
            if not datagrams and not events:
                break
        self._arm_timer()

    def _arm_timer(self) -> None:
        """Keep exactly one loop timer, at the session's deadline."""
        session, loop = self._session, self._loop
        deadline = session.get_timer() if session is not None else None
        if deadline == self._timer_at and self._timer is not None:
            return
        self._cancel_timer()
        if deadline is not None and loop is not None:
            self._timer_at = deadline
            self._timer = loop.call_at(deadline, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = None

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._session is not None:
            self._session.handle_timer(self._now())
            self._service()

    # --- IKE events ------------------------------------------------------------------------

    def _on_ike_event(self, session: IkeSession, event: IkeEvent) -> None:
        match event:
            case IkeSaEstablished():
                self._ike_established = event
                log.info("IKE SA up with %s: %s", event.remote_id, event.ike_suite)
            case AddressAssigned():
                for address in event.addresses:
                    self._say("info", f"address {address} leased")
                self._offered = event
            case ChildSaEstablished():
                self._pending_child = event
            case ChildSaRekeyed():
                # Installed by ``_service`` before our answer left. When the
                # gateway started the rekey we send on the new SA only once the
                # old one is deleted: our answer may still be on its way, so the
                # gateway may not decrypt the new SA yet (RFC 7296 2.8).
                self._current = event.established
                self._say("info", "rekeyed Child SA")
                self._publish_tunnel()
            case ChildSaDeleted():
                self._on_child_deleted(event)
            case ChildSaFailed():
                outcome = classify_child_failure(event)
                self._failure = outcome
                session.delete(self._now())
            case RekeyFailed():
                self._say("warning", f"rekey refused by the gateway: {event.reason}")
            case IkeSaRekeyed():
                log.info("IKE SA rekeyed")
            case IkeSaFailed():
                self._closed(
                    self._failure
                    or classify_failure(event, self._gateway_text(), self._heard_from_gateway)
                )
            case IkeSaDeleted():
                if event.by_peer:
                    self._closed(Outcome("the gateway closed the tunnel", retry=True))
                else:
                    self._closed(self._failure or Outcome("tunnel deleted", retry=True))
            case PeerUnreachable():
                self._closed(Outcome("gateway unreachable", retry=True))

    def _gateway_text(self) -> str:
        return format_address(
            (self._gateway_ip or self.profile.gateway.address, self._gateway_port)
        )

    def _closed(self, outcome: Outcome) -> None:
        """The session closed (every ChildSaDeleted came before this)."""
        self._session_closed.set()
        self._end_attempt(outcome)

    def _on_child_deleted(self, event: ChildSaDeleted) -> None:
        if self._children.pop(event.inbound_spi, None) is not None and self._dataplane:
            self._call_dataplane(self._dataplane.remove_inbound_sa, event.inbound_spi)
        if not self._children and self._dataplane is not None:
            # No SA left: stop encrypting with a dead one (the routes stay, so
            # packets die quietly in the data plane instead of leaking outside).
            self._call_dataplane(self._dataplane.remove_peer, PEER_ID)
        elif self._dataplane is not None and self._active_outbound not in self._children.values():
            # The SA we sent on is gone: the newest one left carries our traffic now.
            newest = list(self._children.values())[-1]
            self._call_dataplane(self._dataplane.activate_outbound, PEER_ID, newest)
            self._active_outbound = newest

    def _forget_children(self) -> None:
        if self._children and self._dataplane is not None:
            self._call_dataplane(self._dataplane.remove_peer, PEER_ID)
        self._children.clear()
        self._active_outbound = None
        self._current = None

    # --- bringing the tunnel up ----------------------------------------------------------------

    def _bring_up(
        self, session: IkeSession, child: ChildSaEstablished, lease: AddressAssigned
    ) -> None:
        """TUN, data plane, address, SA pair, routes and DNS; CONNECTED (or FAILED in words)."""
        try:
            if self._tun is None:
                self._create_device(child)
            self._configure(lease, child)
            self._install(session, child)
        except HostNetworkError as error:
            denied = error.errno in DENIED
            self._give_up(Outcome(NO_CAP_NET_ADMIN if denied else str(error), retry=False))
            return
        except (HostStateBusy, DnsError) as error:
            self._give_up(Outcome(str(error), retry=False))
            return
        except (DataPlaneError, OSError, ValueError) as error:
            self._give_up(Outcome(f"the data plane could not start: {error}", retry=False))
            return
        self._current = child
        self._last_activity = self._now()
        self._established_at = time.time()
        plan = self._plan
        routes = ", ".join(str(n) for n in plan.routes) if plan else ""
        self._say("info", f"tunnel up: {child.esp_suite}, routes {routes or 'none'}")
        self._publish(
            ClientStatus(
                TunnelState.CONNECTED,
                self.profile.name,
                self.profile.gateway.address,
                tunnel=self._tunnel_info(),
                traffic=self._status.traffic,
            )
        )

    def _create_device(self, child: ChildSaEstablished) -> None:
        """The TUN (MTU from the path to the gateway) and the data plane that owns it."""
        host = self._host_network()
        transport = self._transport
        assert self._gateway_ip is not None
        assert transport is not None
        assert transport.natt is not None
        gateway = ipaddress.ip_address(self._gateway_ip)
        try:
            path_mtu = host.route_to(gateway).mtu
        except HostNetworkError:
            path_mtu = 1500  # no route yet is odd (IKE got through); assume Ethernet
        # The negotiated suite's overhead: a rekey negotiates from the same proposals.
        mtu = tunnel_mtu(
            min(path_mtu, 65535), (suite_by_name(child.esp_suite),), gateway.version == 6
        )
        self._tun = host.create_tun(self._tun_name, mtu=mtu)
        self._tun_mtu = mtu
        loop = self._loop
        assert loop is not None
        dataplane = DataPlane(
            self._tun.fileno(), transport.natt, mode=self._dataplane_mode, mss_clamp_mtu=mtu
        )
        dataplane.start()
        self._dataplane = dataplane
        transport.hand_over(dataplane)
        for fd in dataplane.event_fds():
            loop.add_reader(fd, self._on_dataplane_events)
        self._tick = loop.call_later(TICK_S, self._on_tick)
        self._keepalive = loop.call_later(KEEPALIVE_S, self._on_keepalive)
        log.info("TUN %s mtu %d (path mtu %d)", self._tun.name, mtu, path_mtu)

    def _configure(self, lease: AddressAssigned, child: ChildSaEstablished) -> None:
        """Address and routes for ``lease``; unchanged ones stay (no flap on reconnect)."""
        host = self._host_network()
        assert self._tun is not None
        assert self._gateway_ip is not None
        if self._lease is None or self._lease.addresses != lease.addresses:
            for assignment in reversed(self._addresses):
                with contextlib.suppress(HostNetworkError):
                    host.remove_address(assignment)
            self._addresses.clear()
            for address in lease.addresses:
                self._addresses.append(
                    host.add_address(self._tun.name, ipaddress.ip_interface(address))
                )
        self._lease = lease
        tunnel = self.profile.tunnel
        gateway = ipaddress.ip_address(self._gateway_ip)
        offered = lease.all_subnets or tuple(
            n for n in networks_of(child.remote_ts) if n.prefixlen > 0
        )
        plan = NetworkPlan(
            tun=self._tun.name,
            mode=tunnel.mode,
            routes=plan_routes(
                tunnel.mode, gateway, offered, tunnel.subnets, lease.addresses
            ).networks,
            gateway=gateway,
            dns=lease.all_dns if tunnel.dns else (),
            set_dns=tunnel.dns,
        )
        if plan == self._plan:
            return
        if self._network_undo is not None:
            self._network_undo()
            self._network_undo = None
        setup = self._host_setup()
        setup.record(plan)  # before the host changes: a killed client leaves a note
        self._network_undo = setup.apply(plan)
        self._plan = plan

    def _install(
        self, session: IkeSession, child: ChildSaEstablished, *, defer_outbound: bool = False
    ) -> None:
        """One SA pair into the data plane (make-before-break: the old one stays inbound)."""
        dataplane = self._dataplane
        if dataplane is None:
            return
        defer_outbound = defer_outbound and bool(self._children)
        pair = SaPair(
            peer_id=PEER_ID,
            suite=child.esp_suite,
            inbound_spi=child.inbound_spi,
            outbound_spi=child.outbound_spi,
            peer_address=session.remote_addr,
            inner_networks=tuple(str(n) for n in networks_of(child.remote_ts)),
            inbound_keymat=child.inbound_keymat,
            outbound_keymat=child.outbound_keymat,
            esn=child.esn,
            defer_outbound=defer_outbound,
        )
        dataplane.install_sa(pair)
        self._children[child.inbound_spi] = child.outbound_spi
        if not defer_outbound:
            self._active_outbound = child.outbound_spi

    def _give_up(self, outcome: Outcome) -> None:
        """End the attempt with ``outcome``, telling the gateway first when there is an SA."""
        session = self._session
        if session is not None and session.state is IkeSaState.ESTABLISHED:
            self._failure = outcome
            session.delete(self._now())  # IkeSaDeleted(by_peer=False) ends the attempt
            return
        self._end_attempt(outcome)

    # --- while up: counters, DPD, keepalives, data-plane notices -----------------------------

    def _on_tick(self) -> None:
        """Every second: counters -> TrafficSample, inbound ESP -> DPD."""
        self._tick = None
        dataplane, loop = self._dataplane, self._loop
        if dataplane is None or loop is None:
            return
        if not dataplane.alive():
            self._dataplane_failed("a data-plane worker exited")
            return
        try:
            counters = dataplane.counters()
        except Exception as error:
            self._dataplane_failed(f"reading its counters: {error}")
            return
        self.counters = counters
        traffic = traffic_from(counters)
        self._status = replace(self._status, traffic=traffic)
        self._broadcast.publish(TrafficSample(time.time(), traffic))
        now = self._now()
        if traffic.packets_in != self._inbound_packets:
            self._inbound_packets = traffic.packets_in
            self._last_activity = now
        self._run_dpd(now)
        self._tick = loop.call_later(TICK_S, self._on_tick)

    def _run_dpd(self, now: float) -> None:
        """A liveness check after a DPD interval with nothing from the gateway (RFC 7296 2.4)."""
        session = self._session
        interval = self.profile.dpd_interval
        if (
            session is None
            or interval <= 0
            or self._status.state is not TunnelState.CONNECTED
            or session.state is not IkeSaState.ESTABLISHED
            or session.exchanging
            or now - self._last_activity < interval
        ):
            return
        log.debug("no inbound traffic for %.0f s: DPD", now - self._last_activity)
        self._last_activity = now  # the next probe one interval after this one
        session.check_liveness(now)
        self._service()

    def _on_keepalive(self) -> None:
        """RFC 3948 2.3: keep the NAT's mapping for our port 4500 alive."""
        loop = self._loop
        if loop is None or self._dataplane is None:
            return
        if self._status.state is TunnelState.CONNECTED and self._transport is not None:
            self._transport.keepalive(self._natt_port)
        self._keepalive = loop.call_later(KEEPALIVE_S, self._on_keepalive)

    def _on_dataplane_events(self) -> None:
        dataplane = self._dataplane
        if dataplane is None:
            return
        try:
            events = dataplane.read_events()
        except Exception as error:
            self._dataplane_failed(str(error))
            return
        for event in events:
            match event:
                case PeerAddressChanged():
                    self._call_dataplane(dataplane.set_peer_address, PEER_ID, event.address)
                case RekeyNeeded():
                    self._rekey_outbound(event.spi)
                case WorkerFailed():
                    self._dataplane_failed(f"{event.role} worker failed: {event.reason}")
                    return
                case _:
                    pass

    def _rekey_outbound(self, outbound_spi: int) -> None:
        """The outbound SA nears its sequence limit (RFC 4303 3.3.3): rekey it."""
        session = self._session
        inbound = next((i for i, o in self._children.items() if o == outbound_spi), None)
        if session is None or inbound is None:
            return
        with contextlib.suppress(RuntimeError):  # already being rekeyed or deleted
            session.rekey_child(inbound, self._now())
        self._service()

    def _dataplane_failed(self, reason: str) -> None:
        self._give_up(Outcome(f"the data plane stopped: {reason}", retry=False))
        self._service()

    def _call_dataplane(self, method: Callable[..., None], *args: object) -> None:
        try:
            method(*args)
        except (DataPlaneError, ValueError) as error:
            log.warning("data plane: %s", error)

    # --- tearing down ----------------------------------------------------------------------------

    def _teardown(self) -> None:
        """Undo every host change, in reverse: DNS and routes, address, data plane, TUN, record."""
        self._cancel_timer()
        self._cancel_retry()
        for handle in (self._tick, self._keepalive):
            if handle is not None:
                handle.cancel()
        self._tick = self._keepalive = None
        self._session = None
        host = self._host
        if self._network_undo is not None:
            with contextlib.suppress(Exception):
                self._network_undo()
            self._network_undo = None
        if host is not None:
            for assignment in reversed(self._addresses):
                with contextlib.suppress(HostNetworkError):
                    host.remove_address(assignment)
        self._addresses.clear()
        loop = self._loop
        dataplane, self._dataplane = self._dataplane, None
        if self._transport is not None:
            self._transport.release()
        if dataplane is not None:
            if loop is not None:
                for fd in dataplane.event_fds():
                    with contextlib.suppress(Exception):
                        loop.remove_reader(fd)
            with contextlib.suppress(Exception):
                dataplane.stop()
        if self._tun is not None:
            with contextlib.suppress(Exception):
                self._tun.close()
            self._tun = None
        if self._plan is not None:
            with contextlib.suppress(OSError):
                self._host_setup().forget()
        self._plan = None
        self._lease = None
        self._children.clear()
        self._active_outbound = None
        self._current = None
        self._inbound_packets = 0
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._gateway_ip = None

    # --- helpers ---------------------------------------------------------------------------------

    def _host_network(self) -> HostNetwork:
        if self._host is None:
            from common.hostnet.linux import LinuxHostNetwork, has_cap_net_admin

            if not has_cap_net_admin():  # say so now, not after a handshake
                raise HostNetworkError(NO_CAP_NET_ADMIN, errno=errno.EPERM)
            self._host = LinuxHostNetwork()
        return self._host

    def _host_setup(self) -> HostSetup:
        if self._setup is None:
            self._setup = ManagedHostSetup(
                self._host_network(),
                self.profile.name,
                state_dir=self._state_dir,
                dns_env=self._dns_env,
            )
        return self._setup

    async def _start_status_socket(self) -> None:
        if self._status_path is None or self._control is not None:
            return
        server = ControlServer(StatusView(self.status, self.disconnect), self._status_path)
        try:
            await server.start()
        except ControlError as error:  # another client, or no rights there: not fatal
            self._say("warning", f"no status socket for `outpost status`: {error}")
            return
        self._control = server

    def _tunnel_info(self) -> TunnelInfo | None:
        session, child, lease, plan = self._session, self._current, self._lease, self._plan
        if session is None or child is None or lease is None or plan is None:
            return None
        ike = self._ike_established
        next_rekey_at = None
        lifetime = session.child_lifetime(child.inbound_spi)
        if lifetime is not None and lifetime.rekey_at is not None:
            next_rekey_at = time.time() + (lifetime.rekey_at - self._now())
        host, port = session.remote_addr
        return TunnelInfo(
            gateway=format_address((host, port)),
            gateway_identity=identity_text(self.profile.gateway.identity),
            inner_ipv4=str(lease.address) if lease.address else None,
            inner_ipv6=str(lease.address_v6) if lease.address_v6 else None,
            dns=tuple(str(a) for a in plan.dns),
            routes=tuple(str(n) for n in plan.routes),
            mode=plan.mode,
            ike_suite=f"{ike.ike_suite}/{ike.prf}/{ike.group}" if ike else "",
            esp_suite=child.esp_suite,
            inbound_spi=f"{child.inbound_spi:08x}",
            outbound_spi=f"{child.outbound_spi:08x}",
            established_at=self._established_at,
            next_rekey_at=next_rekey_at,
        )

    def _publish_tunnel(self) -> None:
        if self._status.state is TunnelState.CONNECTED:
            self._publish(replace(self._status, tunnel=self._tunnel_info()))

    def _publish(self, status: ClientStatus) -> None:
        self._status = status
        self._broadcast.publish(StateChanged(status))

    def _say(self, level: str, message: str) -> None:
        log.log(_LEVELS.get(level, logging.INFO), "%s: %s", self.profile.name, message)
        self._broadcast.publish(LogLine(time.time(), level, message))

    def _now(self) -> float:
        loop = self._loop
        assert loop is not None
        return loop.time()


_LEVELS: Final = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
