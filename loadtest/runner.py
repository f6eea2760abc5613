"""The parent process: spawn workers, pace handshakes across them, aggregate, report.

Phases of a run::

    ramp   new handshakes released at --rate (loadtest.pacing), round-robin over
           the workers, until every client is up or has failed
    hold   --duration seconds of traffic on every tunnel (and the --flood, if asked);
           the concentrator's status is read at the start and at the end of it
    drain  probes stop; replies still in flight are counted for a moment
    finish every tunnel is deleted (the gateway frees it now, not at DPD time)

The parent does no IKE and no ESP itself: it only paces, sums the workers'
counter deltas (``Tally``) and prints one progress line a second, so its
own CPU stays out of the way of the workers on a two-core machine.
"""

from __future__ import annotations

import ipaddress
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Final, TextIO

from loadtest.client import TrafficPlan
from loadtest.gateway import GatewayStatusError, read_gateway
from loadtest.pacing import Pacer
from loadtest.packets import Protocol
from loadtest.stats import GatewayReading, Report, Tally
from loadtest.worker import WorkerSettings, run_worker, source_addresses

PROGRESS_INTERVAL_S: Final = 1.0
DRAIN_S: Final = 1.5
FINISH_GRACE_S: Final = 5.0


@dataclass(frozen=True)
class RunOptions:
    """The command line, checked (see ``loadtest.cli`` for each option's meaning)."""

    gateway: str
    profile: str
    clients: int
    rate: float = 50.0
    duration_s: float = 10.0
    traffic_pps: float = 1.0
    target: str | None = None
    protocol: Protocol = "icmp"
    port: int = 7
    processes: int = field(default_factory=lambda: os.cpu_count() or 1)
    source_addresses: str | None = None
    first: int = 0
    timeout_s: float = 30.0
    retransmit_timeout_s: float = 2.0
    retransmit_tries: int = 3
    max_in_flight: int | None = None
    flood_rate: float = 0.0
    rekey_after_s: float | None = None
    concentrator_socket: str | None = None


@dataclass
class _Link:
    conn: Connection
    process: multiprocessing.process.BaseProcess
    done: bool = False


class Runner:
    """One run; :meth:`run` returns the :class:`Report`."""

    def __init__(self, options: RunOptions, progress: TextIO | None = sys.stderr) -> None:
        self.options = options
        self.progress = progress
        self.tally = Tally()
        self.links: list[_Link] = []
        self.flood_link: _Link | None = None
        self.peak = 0.0
        self._last_progress = (0.0, 0, 0)  # time, established, packets received

    def run(self) -> Report:
        options = self.options
        sources = source_addresses(options.source_addresses, max(options.clients, 256))
        traffic = TrafficPlan(
            target=ipaddress.IPv4Address(options.target) if options.target else None,
            pps=options.traffic_pps,
            protocol=options.protocol,
            port=options.port,
            rekey_after_s=options.rekey_after_s,
        )
        context = multiprocessing.get_context("spawn")
        count = max(1, options.processes)
        for index in range(count + (1 if options.flood_rate > 0 else 0)):
            settings = WorkerSettings(
                index=index,
                profile_path=options.profile,
                gateway=options.gateway,
                traffic=traffic,
                sources=sources,
                timeout_s=options.timeout_s,
                retransmit_timeout_s=options.retransmit_timeout_s,
                retransmit_tries=options.retransmit_tries,
            )
            parent, child = context.Pipe()
            process = context.Process(target=run_worker, args=(settings, child), daemon=True)
            process.start()
            child.close()
            link = _Link(parent, process)
            if index < count:
                self.links.append(link)
            else:
                self.flood_link = link
        before = self._read_gateway()
        start = time.monotonic()
        hold_started = hold_ended = start
        try:
            self._ramp(start)
            hold_started = time.monotonic()
            if self.flood_link is not None:
                self._send(self.flood_link, ("flood", options.flood_rate))
            self._pump_until(hold_started + options.duration_s)
            after = self._read_gateway()
            hold_ended = time.monotonic()
            self._broadcast(("stop_traffic",))
            if self.flood_link is not None:
                self._send(self.flood_link, ("flood", 0))
            self._pump_until(time.monotonic() + DRAIN_S)
        except KeyboardInterrupt:
            after = None
            hold_ended = time.monotonic()
        self._broadcast(("finish", FINISH_GRACE_S))
        self._collect_done(time.monotonic() + FINISH_GRACE_S + 10)
        last = self.tally.last_established_s
        ramp_s = (last - start) if last is not None else 0.0
        report = Report(
            clients=options.clients,
            tally=self.tally,
            ramp_s=max(0.0, ramp_s),
            hold_s=max(0.0, hold_ended - hold_started),
            peak_handshakes_per_s=self.peak,
            gateway_before=before,
            gateway_after=after,
            gateway=options.gateway,
        )
        self._line()
        return report

    # --- phases ------------------------------------------------------------------------------

    def _ramp(self, start: float) -> None:
        options = self.options
        pacer = Pacer(options.rate, options.clients, start, options.max_in_flight)
        batches: list[list[int]] = [[] for _ in self.links]
        released = 0
        while True:
            now = time.monotonic()
            due = pacer.due(now, self.tally.in_flight)
            for _ in range(due):
                batches[released % len(batches)].append(options.first + released)
                released += 1
            for link, batch in zip(self.links, batches, strict=True):
                if batch:
                    self._send(link, ("start", batch.copy()))
                    batch.clear()
            settled = self.tally.established + self.tally.failed
            if pacer.done and settled >= options.clients:
                return
            if all(link.done or not link.process.is_alive() for link in self.links):
                return
            wake = pacer.next_due()
            # At least 5 ms: when the in-flight cap holds releases back, the
            # schedule is in the past and must not turn this into a busy loop.
            self._pump_until(max(now + 0.005, min(now + 0.05, wake or now + 0.05)))

    def _pump_until(self, deadline: float) -> None:
        """Take the workers' counters until ``deadline``; a progress line every second.

        Always reads at least once, even past the deadline: a worker blocked
        on a full pipe while the parent only sends would deadlock both.
        """
        while True:
            now = time.monotonic()
            if now - self._last_progress[0] >= PROGRESS_INTERVAL_S:
                self._line()
            conns = [link.conn for link in self._all_links() if not link.done]
            timeout = max(0.0, min(deadline - now, 0.25))
            if conns:
                for conn in wait(conns, timeout=timeout):
                    self._receive(conn)  # type: ignore[arg-type]
            else:
                time.sleep(timeout)
            if time.monotonic() >= deadline:
                return

    def _collect_done(self, deadline: float) -> None:
        while time.monotonic() < deadline and not all(link.done for link in self._all_links()):
            self._pump_until(min(deadline, time.monotonic() + 0.25))
        for link in self._all_links():
            link.process.join(timeout=2)
            if link.process.is_alive():
                link.process.terminate()
                link.process.join(timeout=2)

    # --- plumbing ----------------------------------------------------------------------------

    def _all_links(self) -> list[_Link]:
        return self.links + ([self.flood_link] if self.flood_link is not None else [])

    def _receive(self, conn: Connection) -> None:
        link = next(link for link in self._all_links() if link.conn is conn)
        try:
            while conn.poll():
                kind, delta = conn.recv()
                self.tally.merge(delta)
                if kind == "done":
                    link.done = True
                    return
        except (EOFError, OSError):
            link.done = True

    def _broadcast(self, message: tuple[Any, ...]) -> None:
        for link in self._all_links():
            self._send(link, message)

    @staticmethod
    def _send(link: _Link, message: tuple[Any, ...]) -> None:
        """Send to a worker; a dead one is marked done (its crash is on stderr)."""
        if link.done:
            return
        try:
            link.conn.send(message)
        except OSError:
            link.done = True

    def _read_gateway(self) -> GatewayReading | None:
        path = self.options.concentrator_socket
        if path is None:
            return None
        try:
            return read_gateway(path)
        except GatewayStatusError as error:
            if self.progress is not None:
                print(f"outpost-loadtest: {error}", file=self.progress)
            return None

    def _line(self) -> None:
        now = time.monotonic()
        then, established, received = self._last_progress
        tally = self.tally
        span = now - then if then else 0.0
        rate = (tally.established - established) / span if span > 0 else 0.0
        pps = (tally.packets_received - received) / span if span > 0 else 0.0
        if span >= 0.5:
            self.peak = max(self.peak, rate)
        self._last_progress = (now, tally.established, tally.packets_received)
        if self.progress is None:
            return
        sent = tally.packets_sent
        loss = 0.0 if sent == 0 else 100 * max(0, sent - tally.packets_received) / sent
        line = (
            f"up {tally.established - tally.lost - tally.closed}/{self.options.clients}"
            f"  failed {tally.failed}  in flight {max(0, tally.in_flight)}"
            f"  | {rate:.1f} handshakes/s  {pps:.0f} packets/s  loss {loss:.2f}%"
        )
        if tally.flood_sent:
            line += f"  | flood {tally.flood_sent} cookies {tally.flood_cookies}"
        print(line, file=self.progress, flush=True)


def run(options: RunOptions, progress: TextIO | None = sys.stderr) -> Report:
    """Run the load test described by ``options``."""
    return Runner(options, progress).run()
