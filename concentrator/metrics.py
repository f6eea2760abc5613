"""Prometheus metrics of the concentrator, served over HTTP on a local address.

Nothing here is updated per packet or per event. The control plane already
counts everything it must (``TunnelManager`` counters, the data-plane
workers' counters, the pool), and ``status.build_status`` gathers them into
one JSON-able dict. Metrics are a second rendering of that dict:

- the service calls ``MetricsExporter.update(status)`` every few seconds
  (and may after notable events) from its event loop;
- a scrape, on the HTTP server's own thread, renders the latest snapshot.

Why a snapshot rather than calling the ``ServiceView`` at scrape time: the
HTTP server runs on a thread, and the manager, its ``Counter``s and the
data-plane channel belong to the asyncio loop's thread. Reading them from
another thread could see a dict change size mid-iteration, and asking the
data plane for counters would interleave with the loop's own requests on the
same channel. A snapshot is a deep copy of plain dicts made by the loop and
swapped in by one reference assignment (atomic under the GIL), so a scrape
never touches a loop object; the cost is that values are as old as the last
``update`` (``outpost_snapshot_age_seconds`` tells how old).

Counters (``_total``) come straight from monotonic counters in the control
plane and data plane, which only grow during the life of the process.

Metric names: see ``MetricsCollector.collect``.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

PREFIX = "outpost"
DIRECTIONS = ("inbound", "outbound")
POOL_STATES = ("size", "active", "released")


class MetricsCollector(Collector):
    """Renders the latest status snapshot as metric families (a custom Prometheus collector).

    Before the first ``update`` it yields nothing: an empty scrape says "no
    data yet" better than zeros would.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._snapshot: tuple[float, dict[str, Any]] | None = None

    def update(self, status: Mapping[str, Any]) -> None:
        """Take a copy of ``status`` (``build_status``'s dict) as what scrapes show."""
        snapshot = (self._clock(), copy.deepcopy(dict(status)))
        self._snapshot = snapshot  # one reference swap: a scrape sees the old or the new

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot
        if snapshot is None:
            return
        taken_at, status = snapshot
        yield _gauge(
            "snapshot_age_seconds",
            "Seconds since the service last refreshed these metrics.",
            value=max(0.0, self._clock() - taken_at),
        )
        yield _gauge("tunnels", "Established client tunnels.", value=status.get("tunnels", 0))
        yield _gauge(
            "half_open_ike_sas",
            "IKE SAs past IKE_SA_INIT that have not authenticated yet.",
            value=status.get("half_open", 0),
        )
        yield _gauge(
            "uptime_seconds", "Seconds since the service started.", value=status.get("uptime_s", 0)
        )
        yield _counter(
            "handshakes",
            "IKE handshakes by result (a Child SA refused after IKE_AUTH counts in both).",
            ["result"],
            status.get("handshakes", {}),
        )
        yield _counter(
            "handshake_failures",
            "Failed handshakes by reason (notify name, half-open timeout, child failed).",
            ["reason"],
            status.get("handshake_failures", {}),
        )
        yield _counter(
            "tunnel_closures",
            "Established tunnels that ended, by reason.",
            ["reason"],
            status.get("closures", {}),
        )
        yield _counter(
            "ike_drops",
            "IKE datagrams dropped before reaching a session, by reason.",
            ["reason"],
            status.get("ike_drops", {}),
        )
        dataplane = status.get("dataplane", {})
        yield _counter(
            "esp_packets",
            "ESP packets: inbound decrypted from clients, outbound encrypted to clients.",
            ["direction"],
            {d: dataplane.get(d, {}).get("packets", 0) for d in DIRECTIONS},
        )
        yield _counter(
            "esp_bytes",
            "Bytes of the inner packets carried by ESP, by direction.",
            ["direction"],
            {d: dataplane.get(d, {}).get("bytes", 0) for d in DIRECTIONS},
        )
        drops: dict[str, int] = {}
        for direction in DIRECTIONS:
            for reason, count in dataplane.get(direction, {}).get("drops", {}).items():
                drops[reason] = drops.get(reason, 0) + count
        yield _counter(
            "esp_drops",
            "Packets the data plane dropped, by reason (both directions).",
            ["reason"],
            drops,
        )
        pool = GaugeMetricFamily(
            f"{PREFIX}_pool_addresses",
            "Inner addresses of the pool: size, active leases, released (sticky) leases.",
            labels=["family", "state"],
        )
        for family, usage in sorted(status.get("pool", {}).items()):
            for state in POOL_STATES:
                pool.add_metric([family, state], usage.get(state, 0))
        yield pool
        memory = GaugeMetricFamily(
            f"{PREFIX}_process_resident_bytes",
            "Resident memory of the concentrator and of each data-plane worker process.",
            labels=["process"],
        )
        for process, rss in sorted(status.get("memory", {}).items()):
            memory.add_metric([process], rss)
        yield memory


def _gauge(name: str, documentation: str, *, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=value)


def _counter(
    name: str, documentation: str, labels: list[str], values: Mapping[str, float]
) -> CounterMetricFamily:
    family = CounterMetricFamily(f"{PREFIX}_{name}", documentation, labels=labels)
    for label, value in sorted(values.items()):
        family.add_metric([str(label)], value)
    return family


class MetricsExporter:
    """The ``/metrics`` HTTP endpoint on ``host:port`` and the snapshot it serves.

    Drivers: the service calls ``start()`` once, ``update(status)`` every few
    seconds, ``close()`` on the way out. The server is prometheus-client's
    threaded WSGI server on a daemon thread, with its own registry (not the
    process-global one, so nothing else registered in the process leaks in
    and tests can run several).
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.collector = MetricsCollector()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Listen (port 0 picks a free port; ``self.port`` then says which).

        Raises:
            OSError: the address is in use or not ours.
        """
        if self._server is not None:
            raise RuntimeError("metrics exporter already started")
        server, thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        self._server, self._thread = server, thread
        self.port = server.server_port

    def update(self, status: Mapping[str, Any]) -> None:
        """Replace the snapshot scrapes render (``status.build_status``'s dict)."""
        self.collector.update(status)

    def close(self) -> None:
        """Stop the HTTP server and wait for its thread."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
