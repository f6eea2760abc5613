"""Handshake pacing of outpost-loadtest on a fake clock, and its deadline heap (common.timers)."""

from __future__ import annotations

import pytest

from common.timers import TimerQueue
from loadtest.pacing import Pacer


def test_releases_one_at_start_then_at_the_rate() -> None:
    pacer = Pacer(rate=10, total=100, start=100.0)
    assert pacer.due(99.9) == 0
    assert pacer.due(100.0) == 1  # client 0 at start
    assert pacer.due(100.05) == 0
    assert pacer.due(100.1) == 1
    assert pacer.due(101.0) == 9  # clients 2..10 were due by t+1.0
    assert pacer.next_due() == pytest.approx(101.1)


def test_a_late_caller_catches_up_and_never_exceeds_total() -> None:
    pacer = Pacer(rate=50, total=20, start=0.0)
    assert pacer.due(10.0) == 20
    assert pacer.done
    assert pacer.due(20.0) == 0
    assert pacer.next_due() is None


def test_total_over_time_matches_the_rate() -> None:
    pacer = Pacer(rate=37, total=10_000, start=5.0)
    released = sum(pacer.due(5.0 + step * 0.013) for step in range(771))  # 0 .. 10.01 s
    assert released == int(10.0 * 37) + 1


def test_in_flight_cap_holds_releases_back() -> None:
    pacer = Pacer(rate=100, total=50, start=0.0, max_in_flight=5)
    assert pacer.due(1.0, in_flight=0) == 5
    assert pacer.due(1.0, in_flight=5) == 0
    assert pacer.due(1.0, in_flight=2) == 3
    assert pacer.released == 8


def test_bad_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        Pacer(rate=0, total=1, start=0.0)


def test_deadlines_pop_in_order_and_reschedule_forgets_the_old_one() -> None:
    timers: TimerQueue[int] = TimerQueue()
    timers.schedule(1, 5.0)
    timers.schedule(2, 3.0)
    timers.schedule(3, 4.0)
    timers.schedule(2, 6.0)  # moved later: its 3.0 entry is stale
    timers.schedule(3, None)  # cleared
    assert timers.next_deadline() == 5.0
    assert timers.pop_due(5.5) == [1]
    assert timers.pop_due(10.0) == [2]
    assert len(timers) == 0
    assert timers.next_deadline() is None


def test_deadline_heap_stays_bounded_under_rescheduling() -> None:
    timers: TimerQueue[int] = TimerQueue()
    for step in range(10_000):
        timers.schedule(step % 10, float(step))
    assert len(timers) == 10
    assert len(timers._heap) <= 2 * 10 + 64 + 1
