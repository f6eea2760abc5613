"""The TUI's arithmetic and wording, without a running app: rates, units, status rows."""

from __future__ import annotations

from datetime import UTC

import pytest

from client.state import ClientStatus, Traffic, TrafficSample, TunnelState
from client.tui.formatting import (
    format_bit_rate,
    format_bytes,
    format_clock_time,
    format_duration,
)
from client.tui.model import ThroughputMeter
from client.tui.widgets.status_panel import describe
from tests.helpers.fake_controller import NOW, connected, failed


@pytest.mark.parametrize(
    ("bits_per_s", "text"),
    [
        (None, "—"),
        (0, "0 bit/s"),
        (999, "999 bit/s"),
        (1000, "1.0 kbit/s"),
        (10_000_000, "10.0 Mbit/s"),
        (2_500_000_000, "2.5 Gbit/s"),
        (5e15, "5000.0 Tbit/s"),
    ],
)
def test_format_bit_rate(bits_per_s: float | None, text: str) -> None:
    assert format_bit_rate(bits_per_s) == text


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1_250_000, "1,250,000 (1.2 MB)"),
        (3 * 10**9, "3,000,000,000 (3.0 GB)"),
    ],
)
def test_format_bytes(count: int, text: str) -> None:
    assert format_bytes(count) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-5, "0s"),
        (45.9, "45s"),
        (125, "2m 05s"),
        (3723, "1h 02m 03s"),
        (2 * 86_400 + 3 * 3600, "2d 03h"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_clock_time_in_a_given_zone() -> None:
    assert format_clock_time(NOW, UTC) == "22:13:20"


def _sample(at: float, bytes_in: int, bytes_out: int = 0) -> TrafficSample:
    return TrafficSample(at, Traffic(bytes_in=bytes_in, bytes_out=bytes_out))


def test_meter_needs_two_samples_and_divides_by_elapsed_time() -> None:
    meter = ThroughputMeter()
    meter.add(_sample(100.0, 0))
    assert (meter.rate_in, meter.rate_out) == (None, None)
    meter.add(_sample(102.0, 2_500_000, 250_000))  # 2 s later
    assert meter.rate_in == 10_000_000
    assert meter.rate_out == 1_000_000
    assert list(meter.history_in) == [10_000_000]


def test_meter_ignores_a_sample_that_does_not_move_forward_in_time() -> None:
    meter = ThroughputMeter()
    meter.add(_sample(100.0, 0))
    meter.add(_sample(100.0, 1_000_000))  # same instant: no division by zero
    meter.add(_sample(101.0, 125_000))
    assert meter.rate_in == 1_000_000


def test_meter_restarts_when_counters_go_backwards() -> None:
    meter = ThroughputMeter()
    meter.add(_sample(100.0, 5_000_000))
    meter.add(_sample(101.0, 10))  # the data plane restarted
    assert (meter.rate_in, meter.rate_out) == (None, None)
    meter.add(_sample(102.0, 125_010))
    assert meter.rate_in == 1_000_000


def test_meter_history_is_bounded() -> None:
    meter = ThroughputMeter(history_length=3)
    for second in range(10):
        meter.add(_sample(float(second), second * 1000))
    assert len(meter.history_in) == 3


def test_meter_pause_forgets_the_baseline() -> None:
    meter = ThroughputMeter()
    meter.add(_sample(100.0, 0))
    meter.pause()
    meter.add(_sample(200.0, 100_000_000))  # no rate averaged across the outage
    assert (meter.rate_in, meter.rate_out) == (None, None)


def test_describe_idle_hides_retry_and_error() -> None:
    rows = describe(ClientStatus(TunnelState.IDLE, profile="office", gateway="gw"), NOW)
    assert rows["state"] == "Idle"
    assert rows["gateway"] == "gw"
    assert rows["retry"] is None
    assert rows["error"] is None


def test_describe_connected() -> None:
    rows = describe(connected(), NOW)
    assert rows["inner"] == "10.99.0.23"
    assert rows["uptime"] == "1h 02m 03s"
    assert rows["rekey"] == "in 42m 00s"
    assert describe(connected(), NOW + 3000)["rekey"] == "due now"


def test_describe_failed_shows_the_error() -> None:
    rows = describe(failed("the gateway refused your credentials"), NOW)
    assert rows["state"] == "Failed"
    assert rows["error"] == "the gateway refused your credentials"
