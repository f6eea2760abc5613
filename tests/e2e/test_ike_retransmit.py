"""A configured retransmission schedule, on a fake clock (RFC 7296 2.1, 2.4).

``IkeConfiguration.retransmit_*`` sets how long a silent peer is given; the
glue sizes it with ``exchanges.give_up_time`` (the concentrator's DPD must
drop a vanished client within its configured time, the client must give up
fast enough to reconnect). These tests hold the session to that number: a
DPD to a silent peer ends in ``PeerUnreachable`` exactly at the computed
time and not before, on the first IKE SA and on a rekeyed one, and the
Delete of the IKE SA a rekey retired follows the same schedule.
"""

from __future__ import annotations

import math
from itertools import accumulate

import pytest

from common.ike.constants import ExchangeType
from common.ike.events import IkeEvent, IkeSaRekeyed, PeerUnreachable
from common.ike.exchanges import give_up_time
from common.ike.message import peek_header
from common.ike.session import IkeSaState, IkeSession
from tests.helpers.ike_pair import IkePair, Retransmit, establish, events, ike_pair

# 0.5 s doubling, 3 retransmissions: 0.5 + 1 + 2 + 4 = 7.5, every sum exact in binary.
FAST: Retransmit = (0.5, 2.0, 3)
SCHEDULES = [FAST, (1.5, 1.3, 4), (3.0, 1.0, 0)]


def _waits(schedule: Retransmit) -> list[float]:
    """The wait after each transmission: timeout * base**n, n = 0 .. tries."""
    timeout, base, tries = schedule
    return [timeout * base**n for n in range(tries + 1)]


def _starved(pair: IkePair, session: IkeSession) -> list[tuple[float, int, list[IkeEvent]]]:
    """Fire ``session``'s timers, losing all it sends, until it has none left.

    Returns, for each firing, its time, how many datagrams went out and the
    events it raised.
    """
    fired = []
    while (deadline := session.get_timer()) is not None:
        pair.clock.now = deadline
        session.handle_timer(deadline)
        fired.append((deadline, len(session.datagrams_to_send(deadline)), events(session)))
    return fired


def _liveness_check_gives_up_on_time(
    pair: IkePair, session: IkeSession, schedule: Retransmit
) -> None:
    session.check_liveness(pair.clock.now)
    # INFORMATIONAL: HDR, SK {} --> (lost, and every retransmission too)
    assert len(session.datagrams_to_send(pair.clock.now)) == 1
    start = pair.clock.now
    fired = _starved(pair, session)
    *retransmissions, (gave_up_at, sent, found) = fired
    expected = [start + at for at in accumulate(_waits(schedule))]
    # Each retransmission at its time, the peer still presumed alive...
    assert [at for at, _, _ in retransmissions] == pytest.approx(expected[:-1], rel=1e-12)
    assert [(n, e) for _, n, e in retransmissions] == [(1, [])] * len(expected[:-1])
    # ...and the give-up exactly when give_up_time says, not a moment before.
    assert gave_up_at == pytest.approx(start + give_up_time(*schedule), rel=1e-12)
    assert expected[-1] == pytest.approx(start + give_up_time(*schedule), rel=1e-12)
    assert sent == 0
    assert isinstance(found[-1], PeerUnreachable)
    assert session.state is IkeSaState.CLOSED


def test_give_up_time_of_the_exact_schedule_is_exact() -> None:
    pair = ike_pair(retransmit=FAST)
    establish(pair)
    start = pair.clock.now
    _liveness_check_gives_up_on_time(pair, pair.initiator, FAST)
    assert pair.clock.now == start + give_up_time(*FAST) == start + 7.5


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("sender", ["initiator", "responder"])
def test_liveness_check_to_a_silent_peer_gives_up_at_the_computed_time(
    schedule: Retransmit, sender: str
) -> None:
    pair = ike_pair(retransmit=schedule)
    establish(pair)
    _liveness_check_gives_up_on_time(pair, getattr(pair, sender), schedule)


@pytest.mark.parametrize("rekeyed_by", ["initiator", "responder"])
def test_a_rekeyed_ike_sa_keeps_the_schedule(rekeyed_by: str) -> None:
    pair = ike_pair(retransmit=FAST)
    establish(pair)
    session: IkeSession = getattr(pair, rekeyed_by)
    session.rekey_ike(pair.clock.now)
    # CREATE_CHILD_SA { SA, Ni, KEi } -->  <-- { SA, Nr, KEr }, then the old SA's Delete
    pair.run()
    assert [type(e) for e in events(pair.initiator)] == [IkeSaRekeyed]
    assert pair.initiator.get_timer() is None  # the old SA is gone, nothing outstanding
    _liveness_check_gives_up_on_time(pair, pair.initiator, FAST)


def test_the_delete_of_a_retired_ike_sa_keeps_the_schedule() -> None:
    pair = ike_pair(retransmit=FAST)
    establish(pair)
    old = (pair.initiator.spi_i, pair.initiator.spi_r)
    pair.initiator.rekey_ike(pair.clock.now)
    # CREATE_CHILD_SA { SA, Ni, KEi } -->  <-- { SA, Nr, KEr }
    pair.roundtrip()
    assert [type(e) for e in events(pair.initiator)] == [IkeSaRekeyed]
    start = pair.clock.now
    (delete,) = pair.initiator.datagrams_to_send(start)  # INFORMATIONAL { D(IKE) } --> (lost)
    header = peek_header(delete[0])
    assert (header.spi_i, header.spi_r) == old
    assert header.exchange_type == ExchangeType.INFORMATIONAL
    fired = _starved(pair, pair.initiator)
    expected = [start + at for at in accumulate(_waits(FAST))]
    assert [(at, n) for at, n, _ in fired] == [(at, 1) for at in expected[:-1]] + [
        (start + give_up_time(*FAST), 0)
    ]
    # RFC 7296 2.4: the old SA counts as deleted; the session lives on under the new one.
    assert [e for _, _, found in fired for e in found] == []
    assert pair.initiator.state is IkeSaState.ESTABLISHED


@pytest.mark.parametrize(
    "schedule",
    [
        (0.0, 2.0, 3),
        (-1.0, 2.0, 3),
        (math.inf, 2.0, 3),
        (math.nan, 2.0, 3),
        (1.0, 0.5, 3),
        (1.0, math.inf, 3),
        (1.0, 2.0, -1),
    ],
)
def test_a_schedule_that_never_backs_off_or_never_ends_is_refused(schedule: Retransmit) -> None:
    with pytest.raises(ValueError, match="retransmit"):
        ike_pair(retransmit=schedule)


def test_the_delete_of_a_redundant_ike_sa_keeps_the_schedule() -> None:
    """RFC 7296 2.8.2: after both sides rekeyed the IKE SA at once, the loser deletes
    the redundant new SA it made; that Delete retransmits on the configured schedule."""
    pair = ike_pair(retransmit=FAST)
    establish(pair)
    old = (pair.initiator.spi_i, pair.initiator.spi_r)
    pair.initiator.rekey_ike(pair.clock.now)
    pair.responder.rekey_ike(pair.clock.now)
    # CREATE_CHILD_SA { SA, Ni1, KEi } -->  crossing  <-- { SA, Ni2, KEi }; then D(IKE)
    # under the old SA (delivered) and under the redundant one (lost, every time).
    lost: list[tuple[IkeSession, float]] = []
    for _ in range(4):
        for sender in (pair.initiator, pair.responder):
            for data, _ in sender.datagrams_to_send(pair.clock.now):
                header = peek_header(data)
                redundant = (header.spi_i, header.spi_r) != old
                if header.exchange_type == ExchangeType.INFORMATIONAL and redundant:
                    lost.append((sender, pair.clock.now))
                    continue
                pair.peer_of(sender).receive_datagram(data, pair.source_of(sender), pair.clock.now)
    ((loser, start),) = lost
    fired = _starved(pair, loser)
    waits = list(accumulate(_waits(FAST)))
    assert [(at, n) for at, n, _ in fired][: len(waits)] == [
        (start + at, 1) for at in waits[:-1]
    ] + [(start + give_up_time(*FAST), 0)]
    assert loser.state is IkeSaState.ESTABLISHED
