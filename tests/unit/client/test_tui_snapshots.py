"""Snapshots of the TUI's key screens (pytest-textual-snapshot), with a frozen clock.

The clock, the log's time zone and every event are fixed, so the SVGs change
only when the screen does. After a deliberate change, look at the report, then
run ``pytest tests/unit/client/test_tui_snapshots.py --snapshot-update``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual.pilot import Pilot
from textual.widgets import Static

from client.state import LogLine, Traffic, TrafficSample
from tests.helpers.fake_controller import NOW, SIZE, FakeControllers, connected, failed, make_app

SnapCompare = Callable[..., bool]


async def _wait(pilot: Pilot[Any], condition: Callable[[], bool]) -> None:
    for _ in range(100):
        if condition():
            return
        await pilot.pause(0.01)
    raise AssertionError("the app did not reach the scripted state")


async def _connect_office(pilot: Pilot[Any], factory: FakeControllers) -> None:
    await pilot.press("c")
    await _wait(
        pilot, lambda: "office" in factory.built and factory.built["office"].subscribers > 0
    )


def test_idle_with_two_profiles(snap_compare: SnapCompare) -> None:
    app, _ = make_app()
    assert snap_compare(app, terminal_size=SIZE)


def test_connected_with_traffic(snap_compare: SnapCompare) -> None:
    app, factory = make_app()

    async def run_before(pilot: Pilot[Any]) -> None:
        await _connect_office(pilot, factory)
        fake = factory.built["office"]
        fake.push(LogLine(NOW - 3, "info", "IKE SA established with vpn.example.com"))
        fake.push(LogLine(NOW - 2, "info", "address 10.99.0.23 leased; routes and DNS set"))
        fake.set_status(connected())
        # Six samples a second apart: rates of 8, 16, 24, 32, then 10 Mbit/s inbound.
        bytes_in = [0, 1_000_000, 3_000_000, 6_000_000, 10_000_000, 11_250_000]
        for second, total in enumerate(bytes_in):
            traffic = Traffic(
                packets_in=total // 1250,
                packets_out=total // 5000,
                bytes_in=total,
                bytes_out=total // 10,
                drops={"replay": 2} if second > 3 else {},
            )
            fake.push(TrafficSample(NOW - 5 + second, traffic))
        rate_in = app.query_one("#rate-in", Static)
        await _wait(pilot, lambda: str(rate_in.render()) == "10.0 Mbit/s")
        await pilot.pause(0.1)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_failed_with_an_error(snap_compare: SnapCompare) -> None:
    app, factory = make_app()

    async def run_before(pilot: Pilot[Any]) -> None:
        await _connect_office(pilot, factory)
        fake = factory.built["office"]
        fake.push(LogLine(NOW - 1, "error", "AUTHENTICATION_FAILED from vpn.example.com"))
        fake.set_status(failed("the gateway refused your credentials"))
        await pilot.pause(0.1)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
