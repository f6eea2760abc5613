"""The TUI against a fake controller, driven with Textual's Pilot (issue 5).

Each test plays the controller through ``FakeController`` and reads what the
widgets render, so a wrong field, unit or missing line fails the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Sparkline, Static

from client.state import ClientStatus, LogLine, Traffic, TrafficSample, TunnelState
from client.tui import OutpostApp
from client.tui.widgets import LogPane
from tests.helpers.fake_controller import (
    NOW,
    SIZE,
    FakeController,
    FakeControllers,
    connected,
    failed,
    make_app,
)


async def until(pilot: Pilot[None], condition: Callable[[], bool], what: str) -> None:
    """Let the app process messages until ``condition`` holds (no fixed sleeps)."""
    for _ in range(100):
        if condition():
            return
        await pilot.pause(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def text(app: OutpostApp, selector: str) -> str:
    """What a Static shows, as plain text."""
    return str(app.query_one(selector, Static).render())


def log_text(app: OutpostApp) -> str:
    return "\n".join(app.query_one(LogPane).plain_lines)


async def connect_office(pilot: Pilot[None], factory: FakeControllers) -> FakeController:
    """Press ``c`` on the first (highlighted) profile and wait for the subscription."""
    await pilot.press("c")
    await until(pilot, lambda: "office" in factory.built, "the office controller")
    fake = factory.built["office"]
    await until(pilot, lambda: fake.subscribers == 1 and "connect" in fake.calls, "connect")
    return fake


@pytest.mark.asyncio
async def test_c_connects_the_highlighted_profile_only() -> None:
    app, factory = make_app()
    async with app.run_test(size=SIZE) as pilot:
        fake = await connect_office(pilot, factory)
        assert fake.calls == ["connect"]
        assert list(factory.built) == ["office"]


@pytest.mark.asyncio
async def test_arrow_and_enter_connect_the_second_profile() -> None:
    app, factory = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("down")
        assert text(app, "#status-profile") == "lab"
        assert text(app, "#status-gateway") == "192.0.2.1"
        await pilot.press("enter")
        await until(pilot, lambda: "lab" in factory.built, "the lab controller")
        await until(pilot, lambda: factory.built["lab"].calls == ["connect"], "connect")
        assert "office" not in factory.built


@pytest.mark.asyncio
async def test_connect_button_connects() -> None:
    app, factory = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.click("#connect")
        await until(pilot, lambda: "office" in factory.built, "the office controller")
        await until(pilot, lambda: factory.built["office"].calls == ["connect"], "connect")


@pytest.mark.asyncio
async def test_connected_shows_address_suite_spis_uptime_and_rekey() -> None:
    app, factory = make_app()
    async with app.run_test(size=SIZE) as pilot:
        fake = await connect_office(pilot, factory)
        fake.set_status(connected())
        await until(pilot, lambda: text(app, "#status-state") == "Connected", "Connected")
        assert text(app, "#status-inner") == "10.99.0.23"
        assert text(app, "#status-ike") == "AES_GCM_16_256/PRF_HMAC_SHA2_256/CURVE25519"
        assert text(app, "#status-esp") == "AES_GCM_16_256"
        assert text(app, "#status-spis") == "in c0ffee01 · out 0badf00d"
        assert text(app, "#status-dns") == "10.99.0.1"
        assert text(app, "#status-routes") == "10.10.0.0/16, 10.20.0.0/16 (split tunnel)"
        assert text(app, "#status-gateway") == "198.51.100.7:4500"
        assert text(app, "#status-uptime") == "1h 02m 03s"
        assert text(app, "#status-rekey") == "in 42m 00s"
        assert app.query_one("#status-state").has_class("state-connected")
        assert not app.query_one("#row-error").display


@pytest.mark.asyncio
async def test_two_traffic_samples_one_second_apart_show_the_bit_rate() -> None:
    app, factory = make_app()
    async with app.run_test(size=SIZE) as pilot:
        fake = await connect_office(pilot, factory)
        fake.set_status(connected())
        fake.push(TrafficSample(NOW, Traffic(bytes_in=5_000_000, bytes_out=1_000_000)))
        table = app.query_one("#traffic-table", DataTable)
        await until(pilot, lambda: table.get_row_at(1)[1].startswith("5,000,000"), "counters")
        assert text(app, "#rate-in") == "—"  # one sample says nothing about a rate
        fake.push(
            TrafficSample(
                NOW + 1,
                Traffic(
                    packets_in=900,
                    packets_out=450,
                    bytes_in=6_250_000,
                    bytes_out=1_125_000,
                    drops={"replay": 3},
                ),
            )
        )
        await until(pilot, lambda: text(app, "#rate-in") != "—", "a rate")
        assert text(app, "#rate-in") == "10.0 Mbit/s"
        assert text(app, "#rate-out") == "1.0 Mbit/s"
        spark_in = app.query_one("#spark-in", Sparkline).data
        assert spark_in is not None
        assert list(spark_in[-2:]) == [0.0, 10_000_000.0]  # a minute's window, newest last


@pytest.mark.asyncio
async def test_counters_show_packets_bytes_and_drops() -> None:
    app, factory = make_app()
    async with app.run_test(size=SIZE) as pilot:
        fake = await connect_office(pilot, factory)
        traffic = Traffic(
            packets_in=900,
            packets_out=450,
            bytes_in=6_250_000,
            bytes_out=1_125_000,
            drops={"replay": 3, "auth_failed": 1},
        )
        fake.push(TrafficSample(NOW, traffic))
        table = app.query_one("#traffic-table", DataTable)
        drops = app.query_one("#drops-table", DataTable)
        await until(pilot, lambda: drops.row_count == 2, "two drop reasons")
        assert table.get_row_at(0) == ["packets", "900", "450"]
        assert table.get_row_at(1) == [
            "bytes",
            "6,250,000 (6.2 MB)",
            "1,125,000 (1.1 MB)",
        ]
        assert drops.get_row_at(0) == ["auth_failed", "1"]
        assert drops.get_row_at(1) == ["replay", "3"]


@pytest.mark.asyncio
async def test_log_line_appears_with_time_and_level() -> None:
    app, factory = make_app()
    async with app.run_test(size=SIZE) as pilot:
        fake = await connect_office(pilot, factory)
        fake.push(LogLine(NOW, "warning", "no answer from 192.0.2.1:500, retrying"))
        await until(pilot, lambda: "retrying" in log_text(app), "the log line")
        assert "22:13:20 WARNING office: no answer from 192.0.2.1:500, retrying" in log_text(app)


@pytest.mark.asyncio
async def test_failed_shows_the_error_in_plain_words() -> None:
    app, factory = make_app()
    async with app.run_test(size=SIZE) as pilot:
        fake = await connect_office(pilot, factory)
        fake.set_status(failed("the gateway refused your credentials"))
        await until(pilot, lambda: text(app, "#status-state") == "Failed", "Failed")
        assert app.query_one("#row-error").display
        assert text(app, "#status-error") == "the gateway refused your credentials"
        assert app.query_one("#status-state").has_class("state-failed")


@pytest.mark.asyncio
async def test_reconnecting_shows_attempt_next_retry_and_error() -> None:
    app, factory = make_app()
    async with app.run_test(size=SIZE) as pilot:
        fake = await connect_office(pilot, factory)
        fake.set_status(
            ClientStatus(
                TunnelState.RECONNECTING,
                profile="office",
                gateway="vpn.example.com",
                error="no answer from 192.0.2.1:500",
                reconnect_attempt=3,
                next_retry_at=NOW + 12,
            )
        )
        await until(pilot, lambda: text(app, "#status-state") == "Reconnecting…", "state")
        assert text(app, "#status-retry") == "attempt 3, next try in 12s"
        assert text(app, "#status-error") == "no answer from 192.0.2.1:500"


@pytest.mark.asyncio
async def test_q_while_connected_awaits_disconnect_then_exits() -> None:
    app, factory = make_app()
    async with app.run_test(size=SIZE) as pilot:
        fake = await connect_office(pilot, factory)
        fake.set_status(connected())
        await until(pilot, lambda: text(app, "#status-state") == "Connected", "Connected")
        fake.hold_disconnect = asyncio.Event()
        await pilot.press("q")
        await asyncio.wait_for(fake.disconnect_started.wait(), 2)
        await pilot.pause(0.05)
        assert app.is_running, "the app must wait for the disconnect to finish"
        assert fake.calls == ["connect", "disconnect"]
        fake.hold_disconnect.set()
        await until(pilot, lambda: not app.is_running, "exit")
    assert fake.calls == ["connect", "disconnect", "disconnect done"]


@pytest.mark.asyncio
async def test_q_when_idle_exits_without_building_a_controller() -> None:
    app, factory = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running, "exit")
    assert factory.built == {}


@pytest.mark.asyncio
async def test_d_disconnects_the_active_tunnel() -> None:
    app, factory = make_app()
    async with app.run_test(size=SIZE) as pilot:
        fake = await connect_office(pilot, factory)
        fake.set_status(connected())
        await until(pilot, lambda: text(app, "#status-state") == "Connected", "Connected")
        await pilot.press("down", "d")  # looking at "lab", but "office" is the one up
        await until(pilot, lambda: "disconnect done" in fake.calls, "disconnect")


@pytest.mark.asyncio
async def test_connecting_another_profile_disconnects_the_first() -> None:
    app, factory = make_app()
    async with app.run_test(size=SIZE) as pilot:
        office = await connect_office(pilot, factory)
        office.set_status(connected())
        await until(pilot, lambda: text(app, "#status-state") == "Connected", "Connected")
        await pilot.press("down", "c")
        await until(pilot, lambda: "lab" in factory.built, "the lab controller")
        lab = factory.built["lab"]
        await until(pilot, lambda: lab.calls == ["connect"], "lab connect")
        assert office.calls == ["connect", "disconnect", "disconnect done"]


@pytest.mark.asyncio
async def test_c_on_a_connected_profile_does_not_connect_again() -> None:
    app, factory = make_app()
    async with app.run_test(size=SIZE) as pilot:
        fake = await connect_office(pilot, factory)
        fake.set_status(connected())
        await until(pilot, lambda: text(app, "#status-state") == "Connected", "Connected")
        await pilot.press("c")
        await pilot.pause(0.05)
        assert fake.calls == ["connect"]


@pytest.mark.asyncio
async def test_event_stream_raising_is_logged_and_the_app_keeps_running() -> None:
    app, factory = make_app()
    async with app.run_test(size=SIZE) as pilot:
        fake = await connect_office(pilot, factory)
        fake.break_stream(ConnectionResetError("control channel reset"))
        await until(pilot, lambda: "control channel reset" in log_text(app), "the error")
        assert "ERROR   office: the controller's event stream failed" in log_text(app)
        assert "Traceback" not in log_text(app)
        assert app.is_running
        # Still usable: a new connect subscribes again and calls the controller.
        await pilot.press("c")
        await until(pilot, lambda: fake.calls == ["connect", "connect"], "a second connect")
        assert fake.subscribers == 1


@pytest.mark.asyncio
async def test_event_stream_ending_is_logged() -> None:
    app, factory = make_app()
    async with app.run_test(size=SIZE) as pilot:
        fake = await connect_office(pilot, factory)
        fake.end_stream()
        await until(pilot, lambda: "stream ended" in log_text(app), "the warning")
        assert app.is_running


@pytest.mark.asyncio
async def test_connect_raising_is_logged_not_raised() -> None:
    app, factory = make_app()
    async with app.run_test(size=SIZE) as pilot:
        factory("office").connect_error = PermissionError("cannot create a TUN device")
        await pilot.press("c")
        await until(pilot, lambda: "TUN" in log_text(app), "the error")
        assert "could not connect: cannot create a TUN device" in log_text(app)
        assert app.is_running
