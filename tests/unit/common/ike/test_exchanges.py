"""The retransmission schedule in seconds: ``give_up_time``, ``tries_within`` and
``Requests`` agreeing with them (RFC 7296 2.1, 2.4; defaults are charon's)."""

from __future__ import annotations

import math

import pytest

from common.ike import defaults
from common.ike.constants import ExchangeType
from common.ike.exchanges import Requests, Timeout, give_up_time, tries_within


def test_defaults_give_up_after_about_165_seconds() -> None:
    # charon: 4 s x 1.8^n, 5 retransmissions; "about 165 s" in defaults.py.
    assert give_up_time() == pytest.approx(4.0 * (1.8**6 - 1) / 0.8)
    assert 165.0 < give_up_time() < 165.1


@pytest.mark.parametrize(
    ("schedule", "seconds"),
    [((0.5, 2.0, 3), 7.5), ((3.0, 1.0, 0), 3.0), ((2.0, 1.0, 4), 10.0)],
)
def test_give_up_time_is_the_sum_of_the_waits(
    schedule: tuple[float, float, int], seconds: float
) -> None:
    assert give_up_time(*schedule) == seconds


@pytest.mark.parametrize("schedule", [(0.5, 2.0, 3), (1.5, 1.3, 4), (4.0, 1.8, 5)])
def test_requests_give_up_at_give_up_time(schedule: tuple[float, float, int]) -> None:
    timeout, base, tries = schedule
    requests = Requests(timeout_s=timeout, base=base, tries=tries)
    requests.sent(requests.allocate(), ExchangeType.INFORMATIONAL, b"request", 100.0)
    outcomes = []
    while (deadline := requests.deadline()) is not None:
        assert requests.expire(math.nextafter(deadline, 0.0)) is Timeout.NOTHING
        outcomes.append((deadline, requests.expire(deadline)))
    assert [outcome for _, outcome in outcomes] == [Timeout.RETRANSMIT] * tries + [Timeout.GIVE_UP]
    assert outcomes[-1][0] == pytest.approx(100.0 + give_up_time(*schedule), rel=1e-12)


def test_tries_within_is_the_most_that_fit() -> None:
    limit = give_up_time(tries=defaults.RETRANSMIT_TRIES)
    assert tries_within(limit) == defaults.RETRANSMIT_TRIES
    assert tries_within(limit - 0.001) == defaults.RETRANSMIT_TRIES - 1
    assert tries_within(7.5, 0.5, 2.0) == 3
    assert tries_within(7.4, 0.5, 2.0) == 2
    assert tries_within(0.5, 0.5, 2.0) == 0
    assert tries_within(60.0, 10.0, 1.0) == 5
    for limit in (1.0, 9.9, 30.0, 60.0, 300.0):
        tries = tries_within(limit, 1.0, 1.5)
        assert give_up_time(1.0, 1.5, tries) <= limit < give_up_time(1.0, 1.5, tries + 1)


def test_no_schedule_fits_below_its_first_wait() -> None:
    with pytest.raises(ValueError, match="within"):
        tries_within(2.0, 3.0, 1.5)


@pytest.mark.parametrize(
    "schedule",
    [(0.0, 2.0, 3), (-1.0, 2.0, 3), (math.inf, 2.0, 3), (1.0, 0.9, 3), (1.0, math.nan, 3)],
)
def test_give_up_time_refuses_invalid_schedules(schedule: tuple[float, float, int]) -> None:
    with pytest.raises(ValueError, match="retransmit"):
        give_up_time(*schedule)
