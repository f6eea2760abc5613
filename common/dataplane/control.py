"""The data plane as the control plane sees it: ``install_sa``, ``remove_*``, ``counters``.

This is the small API DESIGN.md asks for, the way charon talks to XFRM: the
control plane (IKE, configuration, UIs) never touches packets; it installs
and removes SAs here and reads counters and notices back. Two workers do the
packet work, one per direction, as separate processes (``mode="process"``,
the real thing: each gets a core's worth of Python) or as threads of this
process (``mode="thread"``, for in-process tests with an in-memory TUN).

The control plane owns the UDP sockets (one for a client; one per listening
address and family for a concentrator, all RFC 3948 port-4500 sockets) and
may send IKE on them (``send_ike``) but must never read them: the inbound
worker does, and hands IKE datagrams up through ``ike_fd``/``read_ike``,
each tagged with the socket it arrived on so the answer leaves from the
address the peer sent to. Event sockets are plain file descriptors so an
asyncio control plane can watch them with ``loop.add_reader``.

TCP MSS clamping is on when the control plane gives the TUN MTU
(``mss_clamp_mtu``); ``DataPlane`` cannot know that MTU itself, so the
default here is off and the services turn it on (issue 4: on by default).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from common.dataplane.base import as_sockets, enable_udp_offloads, native_address
from common.dataplane.channel import channel_pair, receive_message, send_message
from common.dataplane.inbound import InboundWorker
from common.dataplane.messages import (
    ActivateOutbound,
    Applied,
    CountersReport,
    Event,
    IkeDatagram,
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
from common.dataplane.outbound import OutboundWorker
from common.esp.natt import frame_ike

Mode = Literal["process", "thread"]
ROLES = ("inbound", "outbound")
_REPO_ROOT = Path(__file__).resolve().parents[2]
SO_SNDBUFFORCE = 32  # asm-generic/socket.h; not exported by Python's socket module
SO_RCVBUFFORCE = 33


class DataPlaneError(RuntimeError):
    """A worker died or did not answer: the tunnel cannot forward."""


@dataclass(frozen=True, slots=True)
class DataPlaneCounters:
    """Both workers' counters at one moment."""

    inbound: dict[str, int]
    outbound: dict[str, int]
    sas: tuple[SaCounters, ...]

    def sa(self, spi: int) -> SaCounters | None:
        return next((s for s in self.sas if s.spi == spi), None)


@dataclass(slots=True)
class _CountersParts:
    """One worker's ``CountersReport`` parts for one request, as they arrive."""

    sas: list[SaCounters] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)
    done: bool = False


class DataPlane:
    """Two packet workers (inbound, outbound) and the channel to each.

    Drivers: the control plane calls ``start``, then ``install_sa`` /
    ``remove_inbound_sa`` / ``remove_peer`` / ``set_peer_address`` as IKE
    decides, ``counters`` when asked, ``read_events`` when an ``event_fds``
    descriptor is readable and ``read_ike`` when ``ike_fd`` is; ``stop`` at the end.
    """

    def __init__(
        self,
        tun_fd: int,
        udp: socket.socket | Sequence[socket.socket],
        *,
        mode: Mode = "process",
        tun_offload: bool = False,
        socket_buffer_bytes: int = 4 << 20,
        mss_clamp_mtu: int | None = None,
    ) -> None:
        """Prepare (not start) the workers.

        Args:
            tun_fd: the TUN descriptor, read by the outbound worker and written by the inbound.
            udp: the bound port-4500 socket both workers share, or several
                (IPv4 and IPv6, several addresses); ``SaPair.local_socket``,
                ``IkeDatagram.local_socket`` and ``send_ike`` name them by index.
            mode: worker processes (the real thing) or threads (in-process tests).
            tun_offload: the TUN was opened with virtio-net headers and TCP offloads.
            socket_buffer_bytes: UDP send/receive buffers; bursts of a fast TCP
                flow overflow the default ~200 KiB and each loss halves its window.
            mss_clamp_mtu: the TUN's MTU, to clamp the MSS of TCP SYNs crossing
                the tunnel (either way) to ``mtu - 40`` (IPv4) / ``mtu - 60``
                (IPv6); ``None`` leaves SYNs alone. One value for the plane:
                the TUN has one MTU, computed from the largest-overhead suite
                (``common.esp.suites.tunnel_mtu``).
        """
        self.tun_fd = tun_fd
        self.sockets: tuple[socket.socket, ...] = as_sockets(udp)
        self.udp = self.sockets[0]  # the only one of a client
        self.mss_clamp_mtu = mss_clamp_mtu
        self.mode = mode
        self.tun_offload = tun_offload
        self.socket_buffer_bytes = socket_buffer_bytes
        self._channels: dict[str, socket.socket] = {}
        self._ike: socket.socket | None = None
        self._processes: list[subprocess.Popen[bytes]] = []
        self._threads: list[threading.Thread] = []
        self._workers: list[InboundWorker | OutboundWorker] = []
        self._pending: list[Event] = []
        # Counters answers being put together: request token -> role -> parts so far.
        self._assembling: dict[int, dict[str, _CountersParts]] = {}
        self.latest_counters: DataPlaneCounters | None = None
        self._latest_token = 0
        self._tokens = itertools.count(1)
        self._started = False
        self._stopped = False

    # -- lifecycle ------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> None:
        """Start both workers and return once both read commands."""
        if self._started:
            raise RuntimeError("data plane already started")
        self._started = True
        self._tune_socket()
        ike_parent, ike_child = channel_pair()
        ike_parent.setblocking(False)
        self._ike = ike_parent
        for role in ROLES:
            parent, child = channel_pair()
            self._channels[role] = parent
            if self.mode == "process":
                self._spawn_process(role, child, ike_child)
                child.close()
            else:
                self._spawn_thread(role, child, ike_child)
        if self.mode == "process":
            ike_child.close()
        self._await_ready(timeout_s)

    def _await_ready(self, timeout_s: float) -> None:
        ready: set[str] = set()
        deadline = time.monotonic() + timeout_s
        while ready != set(ROLES):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                raise DataPlaneError("data-plane workers did not start in time")
            for event in self.read_events(remaining):
                if isinstance(event, WorkerReady):
                    ready.add(event.role)
                else:
                    self._pending.append(event)

    def _tune_socket(self) -> None:
        for udp in self.sockets:
            for force, plain in (
                (SO_RCVBUFFORCE, socket.SO_RCVBUF),
                (SO_SNDBUFFORCE, socket.SO_SNDBUF),
            ):
                try:  # the FORCE variants pass net.core.*mem_max, with CAP_NET_ADMIN
                    udp.setsockopt(socket.SOL_SOCKET, force, self.socket_buffer_bytes)
                except OSError:
                    with contextlib.suppress(OSError):
                        udp.setsockopt(socket.SOL_SOCKET, plain, self.socket_buffer_bytes)
            enable_udp_offloads(udp)

    def _spawn_process(self, role: str, control: socket.socket, ike: socket.socket) -> None:
        udp_fds = [udp.fileno() for udp in self.sockets]
        fds = (self.tun_fd, *udp_fds, control.fileno(), ike.fileno())
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), env.get("PYTHONPATH")]))
        self._processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "common.dataplane.worker",
                    role,
                    str(self.tun_fd),
                    ",".join(map(str, udp_fds)),
                    str(control.fileno()),
                    str(ike.fileno()),
                    "offload" if self.tun_offload else "plain",
                    str(self.mss_clamp_mtu or 0),
                ],
                pass_fds=fds,
                env=env,
                close_fds=True,
            )
        )

    def _spawn_thread(self, role: str, control: socket.socket, ike: socket.socket) -> None:
        worker: InboundWorker | OutboundWorker
        if role == "inbound":
            worker = InboundWorker(
                self.tun_fd,
                self.sockets,
                control,
                ike,
                exit_on_close=False,
                tun_offload=self.tun_offload,
                mss_clamp_mtu=self.mss_clamp_mtu,
            )
        else:
            worker = OutboundWorker(
                self.tun_fd,
                self.sockets,
                control,
                exit_on_close=False,
                tun_offload=self.tun_offload,
                mss_clamp_mtu=self.mss_clamp_mtu,
            )
        thread = threading.Thread(target=worker.run, name=f"dataplane-{role}", daemon=True)
        thread.start()
        self._workers.append(worker)
        self._threads.append(thread)

    def worker_pids(self) -> dict[str, int]:
        """The worker processes by role, for memory reporting; empty in thread mode."""
        return {role: p.pid for role, p in zip(ROLES, self._processes, strict=False)}

    def alive(self) -> bool:
        if self.mode == "process":
            return bool(self._processes) and all(p.poll() is None for p in self._processes)
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def stop(self, timeout_s: float = 3.0) -> None:
        """Close the channels (workers exit on that) and reap them."""
        for worker in self._workers:
            worker.stopping = True
        for channel in self._channels.values():
            with contextlib.suppress(OSError):
                channel.close()
        if self._ike is not None:
            self._ike.close()
        for process in self._processes:
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._threads:
            self._wake_threads()
            for thread in self._threads:
                thread.join(timeout_s)
        self._processes.clear()
        self._threads.clear()
        self._stopped = True

    def _wake_threads(self) -> None:
        # Thread mode runs on socket-backed fakes: shutting the sockets down
        # returns the blocked reads with b"" and the loops see ``stopping``.
        for udp in self.sockets:
            with contextlib.suppress(OSError):
                udp.shutdown(socket.SHUT_RD)
        with contextlib.suppress(OSError):
            tun = socket.socket(fileno=os.dup(self.tun_fd))
            with contextlib.suppress(OSError):
                tun.shutdown(socket.SHUT_RDWR)
            tun.close()

    # -- commands ---------------------------------------------------------------

    def install_sa(self, pair: SaPair) -> None:
        """Install both halves; returns once both workers use them.

        Inbound first, so replies to our first packet can already be decrypted.
        Raises ``ValueError`` (and installs nothing) for a ``local_socket``
        that is not one of ours or a peer address that socket cannot reach.
        """
        self._check_endpoint(pair.peer_address, pair.local_socket)
        self._apply(("inbound",), InstallSa(pair))
        self._apply(("outbound",), InstallSa(pair))

    def remove_inbound_sa(self, spi: int) -> None:
        self._apply(("inbound",), RemoveInboundSa(spi))

    def remove_peer(self, peer_id: int) -> None:
        self._apply(ROLES, RemovePeer(peer_id))

    def activate_outbound(self, peer_id: int, outbound_spi: int) -> None:
        """Send on an SA installed with ``defer_outbound`` from now on (no-op if unknown)."""
        self._apply(("outbound",), ActivateOutbound(peer_id, outbound_spi))

    def set_peer_address(self, peer_id: int, address: PeerAddress, local_socket: int = 0) -> None:
        """Send to the peer at ``address`` from socket ``local_socket`` (``PeerAddressChanged``)."""
        self._check_endpoint(address, local_socket)
        self._apply(ROLES, SetPeerAddress(peer_id, address, local_socket))

    def _check_endpoint(self, address: PeerAddress, local_socket: int) -> None:
        """Refuse here what would otherwise fail inside a worker's control thread."""
        if not 0 <= local_socket < len(self.sockets):
            raise ValueError(
                f"local socket {local_socket} does not exist ({len(self.sockets)} given)"
            )
        try:
            native_address(self.sockets[local_socket].family, address)
        except (OSError, TypeError, IndexError) as error:
            raise ValueError(
                f"{address!r} is not an address socket {local_socket} can send to"
            ) from error

    def _apply(
        self,
        roles: tuple[str, ...],
        command: InstallSa | RemoveInboundSa | RemovePeer | SetPeerAddress | ActivateOutbound,
        timeout_s: float = 5.0,
    ) -> None:
        """Send ``command`` and wait until each worker says it took effect."""
        token = next(self._tokens)
        for role in roles:
            self._send(role, Request(token, command))
        waiting = set(roles)
        deadline = time.monotonic() + timeout_s
        while waiting:
            for role, message in self._receive_until(deadline):
                if isinstance(message, Applied) and message.token == token:
                    waiting.discard(role)
                else:
                    self._pending.append(message)

    def send_ike(self, message: bytes, address: PeerAddress, local_socket: int = 0) -> None:
        """Send an IKE message from port 4500 (RFC 3948 non-ESP marker prepended).

        ``local_socket``: the socket the request came in on (``IkeDatagram.local_socket``),
        so the answer leaves from the address the peer sent to.
        """
        self.sockets[local_socket].sendto(frame_ike(message), address)

    def _check_running(self) -> None:
        if not self._started:
            raise RuntimeError("start the data plane first")
        if self._stopped:
            raise DataPlaneError("the data plane is stopped")

    def _send(self, role: str, message: object) -> None:
        self._check_running()
        try:
            send_message(self._channels[role], message)
        except OSError as error:
            raise DataPlaneError(f"{role} worker is gone: {error}") from error

    # -- events and counters ------------------------------------------------

    def event_fds(self) -> tuple[int, ...]:
        return tuple(channel.fileno() for channel in self._channels.values())

    @property
    def ike_fd(self) -> int:
        assert self._ike is not None, "start the data plane first"
        return self._ike.fileno()

    def read_ike(self) -> list[IkeDatagram]:
        """Every IKE datagram waiting (non-blocking)."""
        self._check_running()
        assert self._ike is not None
        datagrams: list[IkeDatagram] = []
        while True:
            try:
                message = receive_message(self._ike)
            except BlockingIOError:
                return datagrams
            if isinstance(message, IkeDatagram):
                datagrams.append(message)
            elif message is None:
                return datagrams

    def read_events(self, timeout_s: float = 0.0) -> list[Event]:
        """Notices from the workers (rekey needed, peer moved, failures); waits ``timeout_s``."""
        self._check_running()
        events, self._pending = self._pending, []
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select(list(self._channels.values()), [], [], remaining)
            if not ready:
                return events
            for channel in ready:
                message = receive_message(channel)
                if message is None:
                    raise DataPlaneError("a data-plane worker exited")
                if not self._absorb(message):  # counters parts go to latest_counters
                    events.append(message)  # type: ignore[arg-type]
            timeout_s = 0.0
            deadline = time.monotonic()

    def counters(self, timeout_s: float = 2.0) -> DataPlaneCounters:
        """Ask both workers and wait for both answers; other events stay queued.

        Blocking: an asyncio control plane uses ``request_counters`` instead and
        finds the answer in ``latest_counters`` after ``read_events``.
        """
        token = self.request_counters()
        deadline = time.monotonic() + timeout_s
        while self._latest_token != token:
            for _role, message in self._receive_until(deadline):
                if not self._absorb(message):
                    self._pending.append(message)
        assert self.latest_counters is not None
        return self.latest_counters

    def request_counters(self) -> int:
        """Ask both workers for their counters without waiting; the token of the request."""
        self._check_running()
        token = next(self._tokens)
        self._assembling[token] = {}
        for role in ROLES:
            self._send(role, RequestCounters(token))
        return token

    @property
    def counters_outstanding(self) -> bool:
        """A ``request_counters`` is not fully answered yet."""
        return bool(self._assembling)

    def _absorb(self, message: object) -> bool:
        """Take one part of a counters answer; True if ``message`` was one."""
        if not isinstance(message, CountersReport):
            return False
        parts = self._assembling.get(message.token)
        if parts is None:
            return True  # an answer nobody waits for any more
        part = parts.setdefault(message.role, _CountersParts())
        part.sas.extend(message.sas)
        if message.final:
            part.totals, part.done = message.totals, True
        if all(role in parts and parts[role].done for role in ROLES):
            for token in [t for t in self._assembling if t <= message.token]:
                del self._assembling[token]  # this one, and older ones it supersedes
            inbound, outbound = parts["inbound"], parts["outbound"]
            self.latest_counters = DataPlaneCounters(
                inbound=inbound.totals,
                outbound=outbound.totals,
                sas=tuple(inbound.sas + outbound.sas),
            )
            self._latest_token = message.token
        return True

    def _receive_until(self, deadline: float) -> list[tuple[str, Event]]:
        """Whatever the workers sent, waiting at most until ``deadline``."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DataPlaneError("data-plane workers did not answer in time")
        by_fd = {channel.fileno(): role for role, channel in self._channels.items()}
        ready, _, _ = select.select(list(self._channels.values()), [], [], remaining)
        received: list[tuple[str, Event]] = []
        for channel in ready:
            role = by_fd[channel.fileno()]
            message = receive_message(channel)
            if message is None:
                raise DataPlaneError(f"the {role} data-plane worker exited")
            if isinstance(message, WorkerFailed):
                raise DataPlaneError(f"{message.role} worker failed: {message.reason}")
            received.append((role, message))  # type: ignore[arg-type]
        return received
