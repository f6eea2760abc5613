"""Report math of outpost-loadtest: percentiles, tallies, rates, memory per tunnel, failures."""

from __future__ import annotations

import pytest

from common.ike.constants import NotifyType
from common.ike.events import ChildSaFailed, IkeSaFailed, PeerUnreachable
from loadtest.stats import (
    GatewayReading,
    Report,
    Tally,
    failure_reason,
    percentile,
    rss_per_tunnel,
)

JSON_KEYS = {
    "clients",
    "established",
    "failed",
    "handshakes_per_s",
    "establish_ms",
    "packets_sent",
    "packets_received",
    "concentrator_rss_per_tunnel_bytes",
    "failures",
}


def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 100.0


def test_percentile_of_one_value_and_of_none() -> None:
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0  # order does not matter
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (IkeSaFailed("peer unreachable", None), "timeout"),
        (PeerUnreachable(), "timeout"),
        (IkeSaFailed("refused", NotifyType.AUTHENTICATION_FAILED), "AUTHENTICATION_FAILED"),
        (IkeSaFailed("no proposal", NotifyType.NO_PROPOSAL_CHOSEN), "NO_PROPOSAL_CHOSEN"),
        (ChildSaFailed("pool", NotifyType.INTERNAL_ADDRESS_FAILURE), "INTERNAL_ADDRESS_FAILURE"),
        (ChildSaFailed("ts", NotifyType.TS_UNACCEPTABLE), "TS_UNACCEPTABLE"),
        (IkeSaFailed("lifetime expired", None), "lifetime_expired"),
    ],
)
def test_failure_reason_uses_the_gateways_notify_or_says_timeout(
    event: IkeSaFailed | ChildSaFailed | PeerUnreachable, reason: str
) -> None:
    assert failure_reason(event) == reason


def test_tally_merges_wire_deltas_and_drain_resets() -> None:
    worker = Tally(started=3, established=2, failed=1, packets_sent=10, packets_received=9)
    worker.establish_ms += [5.0, 7.0]
    worker.failures["timeout"] += 1
    worker.last_established_s = 12.5
    delta = worker.drain()
    assert worker.started == 0
    assert worker.establish_ms == []
    assert not worker.failures
    assert worker.last_established_s is None

    total = Tally()
    total.merge(delta)
    total.merge({**Tally(started=1, established=1, last_established_s=11.0).to_wire()})
    assert total.started == 4
    assert total.established == 3
    assert total.in_flight == 0
    assert total.establish_ms == [5.0, 7.0]
    assert total.failures == {"timeout": 1}
    assert total.last_established_s == 12.5  # the latest, not the last merged


def test_report_rates_loss_memory_and_json_keys() -> None:
    tally = Tally(started=100, established=98, failed=2, packets_sent=1000, packets_received=990)
    tally.establish_ms += [float(v) for v in range(1, 99)]
    tally.failures["INTERNAL_ADDRESS_FAILURE"] += 2
    before = GatewayReading(tunnels=0, rss_bytes=100_000_000, cpu_s=10.0, at_s=0.0)
    after = GatewayReading(tunnels=98, rss_bytes=100_000_000 + 98 * 20_000, cpu_s=15.0, at_s=10.0)
    report = Report(
        clients=100,
        tally=tally,
        ramp_s=4.9,
        hold_s=10.0,
        gateway_before=before,
        gateway_after=after,
        gateway="192.0.2.1",
    )
    assert report.handshakes_per_s == pytest.approx(20.0)
    assert report.loss == pytest.approx(0.01)
    data = report.to_json()
    assert data.keys() >= JSON_KEYS
    assert data["concentrator_rss_per_tunnel_bytes"] == 20_000
    assert data["concentrator"]["cpu_percent"] == 50.0
    assert data["failures"] == {"INTERNAL_ADDRESS_FAILURE": 2}
    assert data["establish_ms"]["p50"] == pytest.approx(49.5)
    text = report.to_text()
    assert "established   98" in text
    assert "INTERNAL_ADDRESS_FAILURE 2" in text
    assert "per tunnel 19.5 KiB" in text


def test_memory_per_tunnel_needs_added_tunnels() -> None:
    reading = GatewayReading(tunnels=5, rss_bytes=1000)
    assert rss_per_tunnel(reading, GatewayReading(tunnels=5, rss_bytes=5000)) is None
    assert rss_per_tunnel(reading, GatewayReading(tunnels=7, rss_bytes=5000)) == 2000


def test_report_without_establishments_or_gateway() -> None:
    report = Report(clients=3, tally=Tally(started=3, failed=3), ramp_s=0.0, hold_s=0.0)
    data = report.to_json()
    assert data["handshakes_per_s"] == 0.0
    assert data["establish_ms"] == {"p50": None, "p95": None, "p99": None}
    assert data["concentrator_rss_per_tunnel_bytes"] is None
    assert "n/a" in report.to_text()
