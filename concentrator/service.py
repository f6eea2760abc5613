"""The concentrator as a running service: sockets, TUN, data plane and timers around the manager.

``TunnelManager`` (manager.py) holds every decision; this module only
wires it to the world on one asyncio loop (DESIGN.md "Data plane and
control plane"):

- UDP 500 on every listen address: read here (``loop.add_reader``), IKE only;
- UDP 4500 on every listen address: owned by the data plane, whose inbound
  worker hands IKE up through ``DataPlane.ike_fd`` (RFC 3948 framing sorted
  there, ESP never reaches this loop);
- the TUN holding the pool's gateway address, the pool routed into it by
  the connected route, IP forwarding on;
- one loop timer for the manager's earliest deadline, re-armed after every
  piece of work, and one housekeeping tick (data-plane counters for DPD and
  the status snapshot) every ``HOUSEKEEPING_S``;
- signals: SIGTERM/SIGINT stop gracefully (a Delete to every client, a
  short wait for the answers), SIGHUP reloads users and policy.

``Concentrator.start`` / ``stop`` are separate from ``run`` so tests can run
a concentrator in-process (thread-mode data plane, in-memory host network).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from common.dataplane.control import SO_RCVBUFFORCE, DataPlane, DataPlaneCounters, Mode
from common.dataplane.messages import PeerAddressChanged, RekeyNeeded, WorkerFailed
from common.esp.suites import SUITES, tunnel_mtu
from common.hostnet.base import AddressAssignment, HostNetwork, HostNetworkError, TunDevice
from common.ike import defaults
from common.ike.exchanges import Address, tries_within
from common.ike.policy import IkeConfiguration
from concentrator.config import Config, load_config
from concentrator.control import ControlServer
from concentrator.manager import ManagerSettings, TunnelManager
from concentrator.metrics import MetricsExporter
from concentrator.pool import AddressPool
from concentrator.status import build_sessions, build_status, process_memory
from concentrator.store import SqliteStore, Store
from concentrator.users import UserDirectory

log = logging.getLogger("outpost.concentrator")

HOUSEKEEPING_S = 5.0  # counters for DPD and status; well below any DPD interval
SHUTDOWN_WAIT_S = 3.0  # how long SIGTERM waits for clients to answer our Deletes
PATH_MTU = 1500  # outer path MTU assumed for the TUN MTU; MSS clamping covers TCP below it
IKE_SOCKET_BUFFER = 4 << 20  # octets
IKE_BATCH = 64  # datagrams read per wake-up, so one flood cannot starve the rest
MAX_DATAGRAM = 65535


@dataclass
class _Listener:
    """Our sockets on one listen address."""

    address: str
    ike: socket.socket  # port 500, read on the loop
    natt: socket.socket  # port 4500, given to the data plane
    index: int  # the data plane's socket index of ``natt``


@dataclass
class ServiceStats:
    """Numbers only the service knows (the manager counts the rest)."""

    started_at: float = field(default_factory=time.time)
    ike_received: int = 0
    ike_sent: int = 0
    send_errors: int = 0


class Concentrator:
    """One concentrator: build with a config, ``await start()``, ``await stop()``.

    It is also the ``status.ServiceView`` the control socket and the metrics
    read: everything they show is built on the loop from the manager and the
    last data-plane counters (read every ``HOUSEKEEPING_S``, never on request:
    ``DataPlane.counters`` blocks while the workers answer).
    """

    def __init__(
        self,
        config: Config,
        *,
        host: HostNetwork | None = None,
        dataplane_mode: Mode = "process",
        store: Store | None = None,
    ) -> None:
        self.config = config
        self._host = host
        self._dataplane_mode: Mode = dataplane_mode
        self._store = store
        self.stats = ServiceStats()
        self.manager: TunnelManager | None = None
        self.dataplane: DataPlane | None = None
        self.users: UserDirectory | None = None
        self.pool: AddressPool | None = None
        self.tun: TunDevice | None = None
        self.tun_mtu = 0
        self._counted: DataPlaneCounters | None = None  # the reading DPD last looked at
        self._listeners: list[_Listener] = []
        self._by_address: dict[str, _Listener] = {}
        self._assignments: list[AddressAssignment] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._housekeeping: asyncio.TimerHandle | None = None
        self._stopping = False
        self.failed: str | None = None
        self.stopped = asyncio.Event()
        self._drained = asyncio.Event()  # stopping, and no tunnel left
        self.on_housekeeping: list[Callable[[], None]] = []
        self._control: ControlServer | None = None
        self._metrics: MetricsExporter | None = None
        self._monotonic_start = 0.0
        self._slow_ticks = 0  # housekeeping ticks with a counters request unanswered

    @property
    def counters(self) -> DataPlaneCounters | None:
        """The data plane's last complete counters reading (None before the first)."""
        return None if self.dataplane is None else self.dataplane.latest_counters

    # --- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Bind, create the TUN, start the data plane; raise (cleaned up) if any step fails."""
        self._loop = asyncio.get_running_loop()
        self._monotonic_start = self._loop.time()
        try:
            self._start()
            self._control = ControlServer(self, self.config.control.socket)
            await self._control.start()
            if self.config.metrics is not None:
                self._metrics = MetricsExporter(self.config.metrics.host, self.config.metrics.port)
                self._metrics.start()
                self._metrics.update(self.status())
        except BaseException:
            await self._close_interfaces()
            self._teardown()
            raise

    async def _close_interfaces(self) -> None:
        if self._control is not None:
            with contextlib.suppress(Exception):
                await self._control.close()
            self._control = None
        if self._metrics is not None:
            with contextlib.suppress(Exception):
                self._metrics.close()
            self._metrics = None

    def _start(self) -> None:
        config = self.config
        loop = self._loop
        assert loop is not None
        if self._store is None:
            self._store = SqliteStore(config.store.path)
        self.pool = AddressPool.from_config(config.pool, self._store)
        self.users = UserDirectory(config, self.pool)
        if self._host is None:
            from common.hostnet.linux import LinuxHostNetwork

            self._host = LinuxHostNetwork()
        host = self._host
        outer_ipv6 = any(address.version == 6 for address in config.server.listen)
        self.tun_mtu = tunnel_mtu(PATH_MTU, tuple(SUITES.values()), outer_ipv6=outer_ipv6)
        try:
            self.tun = host.create_tun(config.server.tun, mtu=self.tun_mtu, offload=True)
        except HostNetworkError:  # no virtio-net offloads here (old kernel, test double)
            self.tun = host.create_tun(config.server.tun, mtu=self.tun_mtu)
        gateway4 = ipaddress.IPv4Interface(f"{config.pool.gateway4}/{config.pool.ipv4.prefixlen}")
        self._assignments.append(host.add_address(self.tun.name, gateway4))
        host.set_forwarding(4, True)
        if config.pool.ipv6 is not None and config.pool.gateway6 is not None:
            gateway6 = ipaddress.IPv6Interface(
                f"{config.pool.gateway6}/{config.pool.ipv6.prefixlen}"
            )
            self._assignments.append(host.add_address(self.tun.name, gateway6))
            host.set_forwarding(6, True)
        for index, address in enumerate(config.server.listen):
            listener = _Listener(
                str(address),
                _bind_udp(str(address), config.server.ike_port, blocking=False),
                # The data plane's workers block on their sockets.
                _bind_udp(str(address), config.server.natt_port, blocking=True),
                index,
            )
            self._listeners.append(listener)
            self._by_address[listener.address] = listener
        self.dataplane = DataPlane(
            self.tun.fileno(),
            [listener.natt for listener in self._listeners],
            mode=self._dataplane_mode,
            tun_offload=getattr(self.tun, "offload", False),
            mss_clamp_mtu=self.tun_mtu if config.server.mss_clamp else None,
        )
        self.dataplane.start()
        self.manager = TunnelManager(
            _manager_settings(config),
            self.users,
            self.dataplane,
            self._send_ike,
            rng=os.urandom,
            validation_time=lambda: datetime.datetime.now(datetime.UTC),
            local_sockets={listener.address: listener.index for listener in self._listeners},
        )
        for listener in self._listeners:
            loop.add_reader(listener.ike.fileno(), self._on_ike_500, listener)
        loop.add_reader(self.dataplane.ike_fd, self._on_ike_4500)
        for fd in self.dataplane.event_fds():
            loop.add_reader(fd, self._on_dataplane_events)
        self._housekeeping = loop.call_later(HOUSEKEEPING_S, self._on_housekeeping)
        log.info(
            "listening on %s (IKE %d, NAT-T %d), TUN %s mtu %d, pool %s%s, %d users",
            ", ".join(listener.address for listener in self._listeners),
            config.server.ike_port,
            config.server.natt_port,
            self.tun.name,
            self.tun_mtu,
            config.pool.ipv4,
            f" {config.pool.ipv6}" if config.pool.ipv6 else "",
            len(config.users),
        )

    async def stop(self) -> None:
        """Delete every client's IKE SA, wait briefly for the answers, release everything."""
        if self._stopping:
            await self.stopped.wait()
            return
        self._stopping = True
        loop = self._loop
        manager = self.manager
        if manager is not None and loop is not None and self.failed is None:
            count = len(list(manager.established()))
            manager.shutdown(loop.time())
            self._arm_timer()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), SHUTDOWN_WAIT_S)
            log.info("stopped: %d tunnels deleted, %d did not answer", count, len(manager.tunnels))
        await self._close_interfaces()
        self._teardown()
        self.stopped.set()

    def _teardown(self) -> None:
        loop = self._loop
        for handle in (self._timer, self._housekeeping):
            if handle is not None:
                handle.cancel()
        if loop is not None:
            for listener in self._listeners:
                with contextlib.suppress(Exception):
                    loop.remove_reader(listener.ike.fileno())
            if self.dataplane is not None and self.dataplane.alive():
                with contextlib.suppress(Exception):
                    loop.remove_reader(self.dataplane.ike_fd)
                for fd in self.dataplane.event_fds():
                    with contextlib.suppress(Exception):
                        loop.remove_reader(fd)
        if self.dataplane is not None:
            with contextlib.suppress(Exception):
                self.dataplane.stop()
        for listener in self._listeners:
            listener.ike.close()
            listener.natt.close()
        self._listeners.clear()
        if self._host is not None:
            for assignment in reversed(self._assignments):
                with contextlib.suppress(Exception):
                    self._host.remove_address(assignment)
        self._assignments.clear()
        if self.tun is not None:
            with contextlib.suppress(Exception):
                self.tun.close()
            self.tun = None
        if self._store is not None:
            with contextlib.suppress(Exception):
                self._store.close()

    def reload(self) -> dict[str, Any]:
        """Re-read the config file; swap users and policy without touching live tunnels.

        Tunnels of users the new config no longer admits are disconnected.
        """
        assert self.users is not None
        assert self.manager is not None
        assert self._loop is not None
        new = load_config(self.config.source)
        report = self.users.reload(new)
        removed = 0
        for tunnel in list(self.manager.established()):
            identity = tunnel.identity
            if identity is None:
                continue
            if not self.users.may_connect(identity, certificate=not tunnel.psk_auth):
                self.manager.disconnect(tunnel.tunnel_id, self._loop.time(), "removed by reload")
                removed += 1
        self._arm_timer()
        summary = {
            "added": list(report.added),
            "removed": list(report.removed),
            "changed": list(report.changed),
            "restart_required": list(report.restart_required),
            "disconnected": removed,
        }
        log.info("reloaded %s: %s", self.config.source, summary)
        return summary

    def status(self) -> dict[str, Any]:
        """``ServiceView.status``: the service at a glance (also the metrics snapshot)."""
        assert self.manager is not None
        assert self.pool is not None
        assert self._loop is not None
        pids = self.dataplane.worker_pids() if self.dataplane is not None else {}
        status = build_status(
            self.manager,
            self.counters,
            self.pool,
            listen=[str(a) for a in self.config.server.listen],
            uptime_s=self._loop.time() - self._monotonic_start,
            memory=process_memory(pids),
        )
        # What scales with tunnels and what must not (issue 6): one timer entry
        # per tunnel in the manager's heap, a constant number of loop tasks and
        # loop timers whatever the count of clients.
        status["loop"] = {
            "tasks": len(asyncio.all_tasks(self._loop)),
            "timer_handles": len(getattr(self._loop, "_scheduled", ())),
            "scheduled_tunnels": self.manager.scheduled,
        }
        return status

    def sessions(self) -> list[dict[str, Any]]:
        """``ServiceView.sessions``: one entry per tunnel."""
        assert self.manager is not None
        assert self._loop is not None
        return build_sessions(
            self.manager, self.counters, now=self._loop.time(), wall_now=time.time()
        )

    def disconnect(self, tunnel_id: int) -> bool:
        """``ServiceView.disconnect``: delete one client's IKE SA (it is told)."""
        assert self.manager is not None
        assert self._loop is not None
        found = self.manager.disconnect(tunnel_id, self._loop.time(), "disconnected by admin")
        self._arm_timer()
        return found

    # --- IKE in and out -----------------------------------------------------------------

    def _on_ike_500(self, listener: _Listener) -> None:
        manager = self.manager
        loop = self._loop
        assert manager is not None
        assert loop is not None
        local = (listener.address, self.config.server.ike_port)
        for _ in range(IKE_BATCH):
            try:
                data, source = listener.ike.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:  # ICMP errors surface here on Linux; not fatal
                log.debug("IKE socket %s: %s", listener.address, error)
                continue
            self.stats.ike_received += 1
            manager.receive_ike(data, (source[0], source[1]), local, loop.time())
        self._arm_timer()

    def _on_ike_4500(self) -> None:
        manager, dataplane, loop = self.manager, self.dataplane, self._loop
        assert manager is not None
        assert dataplane is not None
        assert loop is not None
        try:
            datagrams = dataplane.read_ike()
        except Exception as error:  # the plane died: the housekeeping tick notices
            log.error("reading IKE from the data plane: %s", error)
            loop.remove_reader(dataplane.ike_fd)
            return
        port = self.config.server.natt_port
        for datagram in datagrams:
            self.stats.ike_received += 1
            listener = self._listeners[datagram.local_socket]
            manager.receive_ike(
                datagram.data, datagram.address, (listener.address, port), loop.time()
            )
        self._arm_timer()

    def _send_ike(self, data: bytes, remote: Address, local: Address, nat_t: bool) -> None:
        listener = self._by_address.get(local[0]) or self._listeners[0]
        try:
            if nat_t:
                assert self.dataplane is not None
                self.dataplane.send_ike(data, remote, listener.index)
            else:
                listener.ike.sendto(data, remote)
            self.stats.ike_sent += 1
        except OSError as error:
            # A full buffer or an unreachable peer loses one datagram; the
            # IKE core retransmits requests and the peer retransmits to us.
            self.stats.send_errors += 1
            log.debug("sending IKE to %s: %s", remote, error)

    # --- timers and data-plane notices -----------------------------------------------------

    def _arm_timer(self) -> None:
        """Keep exactly one loop timer, at the manager's earliest deadline."""
        manager, loop = self.manager, self._loop
        if manager is None or loop is None:
            return
        if self._stopping and not manager.tunnels:
            self._drained.set()
        deadline = manager.next_deadline()
        if deadline == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        assert self.manager is not None
        assert self._loop is not None
        self._timer = None
        self._timer_at = None
        self.manager.handle_timers(self._loop.time())
        self._arm_timer()

    def _on_dataplane_events(self) -> None:
        manager, dataplane, loop = self.manager, self.dataplane, self._loop
        assert manager is not None
        assert dataplane is not None
        assert loop is not None
        try:
            events = dataplane.read_events()
        except Exception as error:
            self._fail(f"data plane: {error}")
            return
        for event in events:
            match event:
                case PeerAddressChanged():
                    manager.peer_moved(event.peer_id, event.address)
                case RekeyNeeded():
                    manager.rekey_outbound(event.peer_id, event.spi, loop.time())
                case WorkerFailed():
                    self._fail(f"data-plane {event.role} worker failed: {event.reason}")
                    return
                case _:
                    pass
        self._arm_timer()

    def _on_housekeeping(self) -> None:
        """Every ``HOUSEKEEPING_S``: ask for counters, use the last answer (DPD, metrics).

        Never blocks: the answer arrives in parts through ``_on_dataplane_events``
        (thousands of SAs take the workers a while on a busy machine), and a slow
        answer only skips a tick. Only a worker that exited stops the service.
        """
        manager, dataplane, loop = self.manager, self.dataplane, self._loop
        assert manager is not None
        assert dataplane is not None
        assert loop is not None
        if not dataplane.alive():
            self._fail("a data-plane worker exited")
            return
        if dataplane.counters_outstanding:
            self._slow_ticks += 1
            if self._slow_ticks in (3, 30, 300):
                log.warning(
                    "the data plane has not reported its counters for %d ticks", self._slow_ticks
                )
        else:
            self._slow_ticks = 0
            try:
                dataplane.request_counters()
            except Exception as error:
                self._fail(f"data plane: {error}")
                return
        latest = dataplane.latest_counters
        if latest is not None and latest is not self._counted:
            self._counted = latest
            inbound: dict[int, int] = {}
            for sa in latest.sas:
                if sa.direction == "inbound":
                    inbound[sa.peer_id] = inbound.get(sa.peer_id, 0) + sa.packets
            manager.note_activity(inbound, loop.time())
        if self._metrics is not None:
            self._metrics.update(self.status())
        for callback in self.on_housekeeping:
            try:
                callback()
            except Exception:
                log.exception("housekeeping callback failed")
        self._arm_timer()
        self._housekeeping = loop.call_later(HOUSEKEEPING_S, self._on_housekeeping)

    def _fail(self, reason: str) -> None:
        """The data plane is gone: no tunnel can forward, so stop (systemd restarts us)."""
        if self.failed is not None:
            return
        self.failed = reason
        log.critical("%s; stopping", reason)
        assert self._loop is not None
        self._loop.create_task(self.stop())


def _manager_settings(config: Config) -> ManagerSettings:
    server = config.server
    ike = IkeConfiguration(
        local_id=server.identity,
        ike_proposals=config.ike.proposals,
        esp_proposals=config.ike.esp_proposals,
        # Our data plane speaks only UDP-encapsulated ESP: make every client
        # move to port 4500 even without a NAT (RFC 7296 2.23, strongSwan encap).
        force_encapsulation=True,
        private_key=server.private_key,
        certificate=server.certificate,
        certificate_chain=server.certificate_chain,
        ike_rekey_time=config.lifetimes.ike,
        child_rekey_time=config.lifetimes.child,
    )
    # DPD (RFC 7296 2.4): a probe is retransmitted on charon's schedule, shortened
    # so that a silent client is declared dead within ``[dpd] timeout``.
    retransmit_timeout = min(defaults.RETRANSMIT_TIMEOUT_S, config.dpd.timeout / 4)
    ike = replace(
        ike,
        retransmit_timeout=retransmit_timeout,
        retransmit_tries=tries_within(config.dpd.timeout, retransmit_timeout, ike.retransmit_base),
    )
    return ManagerSettings(
        ike=ike,
        cookie_threshold=config.cookies.threshold,
        dpd_interval=config.dpd.interval,
    )


def _bind_udp(address: str, port: int, *, blocking: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        # A burst of IKE_SA_INIT (many clients at once, a flood) must queue, not
        # overflow, while the loop is busy with handshakes.
        try:  # past net.core.rmem_max with CAP_NET_ADMIN, which the service has
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, IKE_SOCKET_BUFFER)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, IKE_SOCKET_BUFFER)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setblocking(blocking)
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    return sock


async def serve(config: Config) -> int:
    """Run until SIGTERM/SIGINT (0) or a data-plane failure (1)."""
    service = Concentrator(config)
    try:
        await service.start()
    except (OSError, HostNetworkError) as error:
        log.error("cannot start: %s", error)
        return 1
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload_logged(service))
    waiter = asyncio.ensure_future(stop_requested.wait())
    stopped = asyncio.ensure_future(service.stopped.wait())
    await asyncio.wait({waiter, stopped}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    await service.stop()
    stopped.cancel()
    return 1 if service.failed else 0


def _reload_logged(service: Concentrator) -> None:
    try:
        service.reload()
    except Exception as error:  # a broken new config keeps the old one running
        log.error("reload refused, keeping the running config: %s", error)


def run_service(config: Config) -> int:
    """The ``outpost-concentrator run`` entry point."""
    return asyncio.run(serve(config))
