"""A worker process: one ``selectors`` loop driving many simulated clients (and the flood).

Why processes and a plain select loop: each handshake costs the tester a
key exchange and an AUTH computation too, so one Python process would be the
bottleneck before the gateway is; and a blocking ``epoll`` loop with one
deadline heap does far more per second than asyncio would for the same work
(DESIGN.md's measurements), with no task or thread per client.

The parent (``loadtest.runner``) talks to each worker over a pipe:

    parent -> worker   ("start", [n, ...])      start these clients now
                       ("flood", rate)          IKE_SA_INIT flood at rate/s (0 stops it)
                       ("stop_traffic",)        no new probes (replies still counted)
                       ("finish", grace_s)      Delete every tunnel, then exit
    worker -> parent   ("tally", delta)         counters since the last one, every 0.25 s
                       ("done", delta)          the last counters; the worker exits

Flow of the loop::

    epoll(timeout = earliest deadline) -> readable sockets -> SimClient.receive
    -> due deadlines -> SimClient.on_timer -> reschedule -> (flood) -> report
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import ipaddress
import logging
import os
import resource
import selectors
import socket
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any, Final

from common.ike.policy import IkeConfiguration
from common.ike.session import IkeSession
from common.timers import TimerQueue
from loadtest.client import SimClient, TrafficPlan
from loadtest.issuer import CertificateIssuer
from loadtest.profile import load_loadtest_profile
from loadtest.stats import Tally

log = logging.getLogger("outpost.loadtest")

REPORT_INTERVAL_S: Final = 0.25
COOKIE: Final = 16390  # NotifyType.COOKIE, RFC 7296 2.6
_NOTIFY: Final = 41  # payload type N
_FLOOD_SOCKETS_MAX: Final = 256


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker needs, picklable (the profile is re-read in the worker)."""

    index: int
    profile_path: str
    gateway: str
    traffic: TrafficPlan
    sources: tuple[str, ...] = ()
    timeout_s: float = 30.0
    retransmit_timeout_s: float = 2.0
    retransmit_tries: int = 3


def raise_file_limit() -> int:
    """Lift the soft descriptor limit to the hard one (one socket per client); the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
    return soft


class Flooder:
    """IKE_SA_INIT requests with fresh SPIs from many sources, never followed up.

    One real IKE_SA_INIT is built once by our core; each flood request is it
    with a new random SPIi (so the gateway sees a new half-open SA each
    time), sent round-robin from up to 256 sockets on the given source
    addresses (or ephemeral ports). Answers are sorted into "COOKIE"
    (RFC 7296 2.6: the gateway defends itself) and "answered in full".
    """

    def __init__(
        self, configuration: IkeConfiguration, gateway: str, sources: tuple[str, ...], tally: Tally
    ) -> None:
        session = IkeSession(
            configuration,
            is_initiator=True,
            local_addr=("0.0.0.0", 500),
            remote_addr=(gateway, 500),
        )
        session.initiate(0.0)
        self.template = session.datagrams_to_send(0.0)[0][0]
        self.gateway = gateway
        self.tally = tally
        family = socket.AF_INET6 if ":" in gateway else socket.AF_INET
        wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
        binds = list(sources[:_FLOOD_SOCKETS_MAX]) or [wildcard] * 16
        self.sockets: list[socket.socket] = []
        for address in binds:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind((address, 0))
            self.sockets.append(sock)
        self.rate = 0.0
        self.started = 0.0
        self.fired = 0

    def set_rate(self, rate: float, now: float) -> None:
        self.rate, self.started, self.fired = rate, now, 0

    def fire_due(self, now: float) -> None:
        if self.rate <= 0:
            return
        due = int((now - self.started) * self.rate) - self.fired
        for _ in range(max(0, due)):
            sock = self.sockets[self.fired % len(self.sockets)]
            self.fired += 1
            with contextlib.suppress(OSError):
                sock.sendto(os.urandom(8) + self.template[8:], (self.gateway, 500))
                self.tally.flood_sent += 1

    def receive(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(65535)
            except OSError:
                return
            if is_cookie(data):
                self.tally.flood_cookies += 1
            else:
                self.tally.flood_answered += 1

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def is_cookie(message: bytes) -> bool:
    """Whether an IKE_SA_INIT response is ``HDR, N(COOKIE)`` (RFC 7296 2.6)."""
    return (
        len(message) >= 36
        and message[16] == _NOTIFY
        and int.from_bytes(message[34:36], "big") == COOKIE
    )


class Worker:
    """The loop of one worker process; see the module docstring for its pipe protocol."""

    def __init__(self, settings: WorkerSettings, conn: Connection) -> None:
        self.settings = settings
        self.conn = conn
        loaded = load_loadtest_profile(settings.profile_path)
        self.profile = loaded.profile
        self.validation_time = datetime.datetime.now(datetime.UTC)
        # Certificate users: this worker issues its own clients' certificates.
        self.issuer = (
            None
            if loaded.issuing_ca is None
            else CertificateIssuer(
                loaded.issuing_ca.certificate, loaded.issuing_ca.key, now=self.validation_time
            )
        )
        self.tally = Tally()
        self.selector = selectors.DefaultSelector()
        self.clients: dict[int, SimClient] = {}
        self.by_fd: dict[int, SimClient] = {}
        self.deadlines: TimerQueue[int] = TimerQueue()  # by client number
        self.flooder: Flooder | None = None
        self.finishing_until: float | None = None
        self.running = True
        self.selector.register(conn.fileno(), selectors.EVENT_READ, None)

    def configuration(self, n: int, *, authenticate: bool = True) -> IkeConfiguration:
        """Client ``n``'s initiator settings; with an issuing CA, its fresh certificate.

        ``authenticate=False`` (the flood, which never gets past IKE_SA_INIT)
        issues nothing.
        """
        profile, settings = self.profile, self.settings
        identity = profile.identity_for(n)
        configuration = profile.ike_configuration(
            identity=identity,
            # ESP-in-UDP only (RFC 3948), as the real client: move to 4500 at once.
            force_encapsulation=True,
            # One identity per client: tell the gateway we hold no older SA. With
            # one shared identity it would make the gateway drop our other clients.
            initial_contact=profile.is_pattern,
            retransmit_timeout=settings.retransmit_timeout_s,
            retransmit_tries=settings.retransmit_tries,
            validation_time=self.validation_time,
        )
        if self.issuer is None or not authenticate:
            return configuration
        issued = self.issuer.issue(identity)
        self.tally.certificates_issued += 1
        self.tally.certificate_issue_s += self.issuer.last_seconds
        return replace(
            configuration,
            certificate=issued.certificate,
            certificate_chain=(),
            private_key=issued.key,
        )

    def run(self) -> None:
        next_report = time.monotonic() + REPORT_INTERVAL_S
        while self.running:
            now = time.monotonic()
            wake = min(next_report, self.deadlines.next_deadline() or next_report)
            if self.flooder is not None and self.flooder.rate > 0:
                wake = min(wake, now + 0.005)
            for key, _ in self.selector.select(max(0.0, wake - now)):
                if key.data is None:
                    self._read_commands()
                elif isinstance(key.data, SimClient):
                    key.data.receive(time.monotonic())
                    self._reschedule(key.data)
                elif self.flooder is not None and isinstance(key.data, socket.socket):
                    self.flooder.receive(key.data)
            now = time.monotonic()
            for n in self.deadlines.pop_due(now):
                client = self.clients.get(n)
                if client is not None:
                    client.on_timer(now)
                    self._reschedule(client)
            if self.flooder is not None:
                self.flooder.fire_due(now)
            if self.finishing_until is not None and (
                not self.clients or now >= self.finishing_until
            ):
                self.running = False
            if now >= next_report or not self.running:
                next_report = now + REPORT_INTERVAL_S
                self.conn.send(("tally" if self.running else "done", self.tally.drain()))
        for client in list(self.clients.values()):
            self._release(client)
        if self.flooder is not None:
            self.flooder.close()

    def _read_commands(self) -> None:
        while self.conn.poll():
            try:
                message: tuple[Any, ...] = self.conn.recv()
            except EOFError:  # the parent is gone: stop at once
                self.running = False
                self.finishing_until = time.monotonic()
                return
            now = time.monotonic()
            match message:
                case ("start", numbers):
                    for n in numbers:
                        self._start(n, now)
                case ("flood", rate):
                    self._flood(float(rate), now)
                case ("stop_traffic",):
                    for client in self.clients.values():
                        client.stop_traffic()
                        self._reschedule(client)
                case ("finish", grace_s):
                    if self.flooder is not None:
                        self.flooder.set_rate(0, now)
                    self.finishing_until = now + float(grace_s)
                    for client in list(self.clients.values()):
                        client.delete(now)
                        self._reschedule(client)
                case _:
                    raise ValueError(f"unknown command {message!r}")

    def _start(self, n: int, now: float) -> None:
        settings = self.settings
        source = settings.sources[n % len(settings.sources)] if settings.sources else None
        try:
            client = SimClient(
                n, self.configuration(n), settings.gateway, source, settings.traffic, self.tally
            )
        except OSError as error:
            # Out of descriptors, ports or addresses: a limit of the tester's
            # host, reported by name so "why did 10,000 stop" has an answer.
            self.tally.started += 1
            self.tally.failed += 1
            name = errno.errorcode.get(error.errno or 0, "OSError")
            self.tally.failures[f"local_{name}"] += 1
            return
        self.clients[n] = client
        fd = client.sock.fileno()
        self.by_fd[fd] = client
        self.selector.register(fd, selectors.EVENT_READ, client)
        client.start(now, settings.timeout_s)
        self._reschedule(client)

    def _flood(self, rate: float, now: float) -> None:
        if self.flooder is None:
            self.flooder = Flooder(
                self.configuration(0, authenticate=False),
                self.settings.gateway,
                self.settings.sources,
                self.tally,
            )
            for sock in self.flooder.sockets:
                self.selector.register(sock.fileno(), selectors.EVENT_READ, sock)
        self.flooder.set_rate(rate, now)

    def _reschedule(self, client: SimClient) -> None:
        if client.closed:
            self._release(client)
        else:
            self.deadlines.schedule(client.n, client.deadline())

    def _release(self, client: SimClient) -> None:
        fd = client.sock.fileno()
        if fd >= 0:
            self.selector.unregister(fd)
            self.by_fd.pop(fd, None)
            client.sock.close()
        self.clients.pop(client.n, None)
        self.deadlines.schedule(client.n, None)


def run_worker(settings: WorkerSettings, conn: Connection) -> None:
    """Process entry point (``multiprocessing`` target)."""
    logging.basicConfig(level=logging.WARNING)
    raise_file_limit()
    try:
        Worker(settings, conn).run()
    except KeyboardInterrupt:
        pass
    finally:
        conn.close()


def source_addresses(cidr: str | None, count: int) -> tuple[str, ...]:
    """The first ``count`` host addresses of ``cidr`` (clients use them round-robin)."""
    if not cidr:
        return ()
    network = ipaddress.ip_network(cidr, strict=False)
    hosts: list[str] = []
    for address in network.hosts() if network.num_addresses > 2 else network:
        hosts.append(str(address))
        if len(hosts) >= count:
            break
    return tuple(hosts)
