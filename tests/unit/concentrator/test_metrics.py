"""The Prometheus endpoint, scraped over HTTP on 127.0.0.1 and read with the client's parser."""

from __future__ import annotations

import copy
import ipaddress
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from concentrator.metrics import MetricsExporter
from concentrator.pool import AddressPool
from concentrator.status import build_status
from concentrator.store import MemoryStore
from tests.unit.concentrator.test_manager import Lab

STATUS: dict[str, Any] = {
    "version": "0.1.0",
    "uptime_s": 42.5,
    "listen": ["127.0.0.1"],
    "tunnels": 3,
    "half_open": 2,
    "pool": {
        "ipv4": {"size": 253, "active": 3, "released": 5, "free": 250},
        "ipv6": {"size": 254, "active": 1, "released": 0, "free": 253},
    },
    "handshakes": {"established": 9, "failed": 4},
    "handshake_failures": {"AUTHENTICATION_FAILED": 3, "half-open timeout": 1},
    "closures": {"dead peer": 2, "deleted by peer": 4},
    "ike_drops": {"unknown SPI": 7, "malformed": 1},
    "dataplane": {
        "inbound": {
            "packets": 1000,
            "bytes": 500_000,
            "drops": {"replayed": 6, "spoofed_source": 2, "not_ip": 1},
            "other": {"keepalives": 8},
        },
        "outbound": {
            "packets": 2000,
            "bytes": 900_000,
            "drops": {"no_route": 11, "not_ip": 2},
            "other": {},
        },
    },
    "memory": {"concentrator": 60_000_000, "inbound": 30_000_000, "outbound": 31_000_000},
}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def exporter() -> Iterator[MetricsExporter]:
    metrics = MetricsExporter("127.0.0.1", 0)
    metrics.start()
    yield metrics
    metrics.close()


def scrape(exporter: MetricsExporter) -> tuple[Samples, dict[str, str]]:
    """Every sample of the endpoint by (name, sorted labels), and each family's type."""
    url = f"http://127.0.0.1:{exporter.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, types


def test_nothing_before_the_first_snapshot(exporter: MetricsExporter) -> None:
    assert exporter.port > 0
    samples, _types = scrape(exporter)
    assert not [name for name, _labels in samples if name.startswith("outpost_")]


def test_every_metric_matches_the_snapshot(exporter: MetricsExporter) -> None:
    exporter.update(STATUS)
    samples, types = scrape(exporter)
    expected: Samples = {
        ("outpost_tunnels", ()): 3,
        ("outpost_half_open_ike_sas", ()): 2,
        ("outpost_uptime_seconds", ()): 42.5,
        ("outpost_handshakes_total", (("result", "established"),)): 9,
        ("outpost_handshakes_total", (("result", "failed"),)): 4,
        ("outpost_handshake_failures_total", (("reason", "AUTHENTICATION_FAILED"),)): 3,
        ("outpost_handshake_failures_total", (("reason", "half-open timeout"),)): 1,
        ("outpost_tunnel_closures_total", (("reason", "dead peer"),)): 2,
        ("outpost_tunnel_closures_total", (("reason", "deleted by peer"),)): 4,
        ("outpost_ike_drops_total", (("reason", "unknown SPI"),)): 7,
        ("outpost_ike_drops_total", (("reason", "malformed"),)): 1,
        ("outpost_esp_packets_total", (("direction", "inbound"),)): 1000,
        ("outpost_esp_packets_total", (("direction", "outbound"),)): 2000,
        ("outpost_esp_bytes_total", (("direction", "inbound"),)): 500_000,
        ("outpost_esp_bytes_total", (("direction", "outbound"),)): 900_000,
        ("outpost_esp_drops_total", (("reason", "replayed"),)): 6,
        ("outpost_esp_drops_total", (("reason", "spoofed_source"),)): 2,
        ("outpost_esp_drops_total", (("reason", "no_route"),)): 11,
        ("outpost_esp_drops_total", (("reason", "not_ip"),)): 3,  # both directions
        ("outpost_process_resident_bytes", (("process", "concentrator"),)): 60_000_000,
        ("outpost_process_resident_bytes", (("process", "inbound"),)): 30_000_000,
        ("outpost_process_resident_bytes", (("process", "outbound"),)): 31_000_000,
    }
    for family, usage in STATUS["pool"].items():
        for state in ("size", "active", "released"):
            key = ("outpost_pool_addresses", (("family", family), ("state", state)))
            expected[key] = usage[state]
    ours = {
        key: value
        for key, value in samples.items()
        if key[0].startswith("outpost_")
        and not key[0].endswith("_created")
        and key[0] != "outpost_snapshot_age_seconds"
    }
    assert ours == expected
    assert 0 <= samples[("outpost_snapshot_age_seconds", ())] < 5
    for name in ("handshakes", "handshake_failures", "tunnel_closures", "ike_drops"):
        assert types[f"outpost_{name}"] == "counter"
    for name in ("esp_packets", "esp_bytes", "esp_drops"):
        assert types[f"outpost_{name}"] == "counter"
    for name in ("tunnels", "half_open_ike_sas", "pool_addresses", "process_resident_bytes"):
        assert types[f"outpost_{name}"] == "gauge"


def test_a_scrape_shows_the_latest_snapshot_and_only_a_copy_of_it(
    exporter: MetricsExporter,
) -> None:
    status = copy.deepcopy(STATUS)
    exporter.update(status)
    status["tunnels"] = 99  # the service keeps building; the exporter kept its own copy
    status["dataplane"]["inbound"]["packets"] = 99
    samples, _types = scrape(exporter)
    assert samples[("outpost_tunnels", ())] == 3
    assert samples[("outpost_esp_packets_total", (("direction", "inbound"),))] == 1000
    exporter.update(status)
    samples, _types = scrape(exporter)
    assert samples[("outpost_tunnels", ())] == 99
    assert samples[("outpost_esp_packets_total", (("direction", "inbound"),))] == 99


def test_a_status_built_from_the_manager_is_exported() -> None:
    lab = Lab()
    lab.connect(lab.client("alice@example.org"))
    lab.connect(lab.client("mallory@example.org", psk=b"not the right key at all"))
    pool = AddressPool(MemoryStore(), ipaddress.IPv4Network("10.99.0.0/24"))
    pool.lease("alice")
    status = build_status(lab.manager, None, pool, listen=["127.0.0.1"], uptime_s=1.0)
    metrics = MetricsExporter("127.0.0.1", 0)
    metrics.start()
    try:
        metrics.update(status)
        samples, _types = scrape(metrics)
    finally:
        metrics.close()
    assert samples[("outpost_tunnels", ())] == 1
    assert samples[("outpost_handshakes_total", (("result", "established"),))] == 1
    assert samples[("outpost_handshakes_total", (("result", "failed"),))] == 1
    failure = ("outpost_handshake_failures_total", (("reason", "AUTHENTICATION_FAILED"),))
    assert samples[failure] == 1
    active = ("outpost_pool_addresses", (("family", "ipv4"), ("state", "active")))
    assert samples[active] == 1
    assert samples[("outpost_esp_packets_total", (("direction", "outbound"),))] == 0


def test_close_stops_the_server() -> None:
    metrics = MetricsExporter("127.0.0.1", 0)
    metrics.start()
    port = metrics.port
    metrics.close()
    metrics.close()  # twice is harmless
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    started = MetricsExporter("127.0.0.1", 0)
    started.start()
    try:
        with pytest.raises(RuntimeError):
            started.start()
    finally:
        started.close()
