"""SA lifetimes on a fake clock (RFC 7296 2.8; strongSwan rekey_time / over_time / rand_time).

Nothing here calls ``rekey_child`` or ``rekey_ike``: the sessions start the
rekeys themselves when ``handle_timer`` runs at ``get_timer()``.
"""

from __future__ import annotations

from typing import TypeVar

from common.esp.sa import InboundSa, OutboundSa
from common.esp.suites import suite_by_name
from common.ike import defaults
from common.ike.constants import ExchangeType, KeyExchangeMethod, NotifyType
from common.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaRekeyed,
    IkeEvent,
    IkeSaFailed,
    IkeSaRekeyed,
    PeerUnreachable,
    RekeyFailed,
)
from common.ike.message import peek_header
from common.ike.session import IkeSaState
from tests.helpers.ike_pair import IkePair, establish, events, ike_pair
from tests.helpers.packets import ipv4_icmp_echo

E = TypeVar("E")


def _of(found: list[IkeEvent], kind: type[E]) -> list[E]:
    return [e for e in found if isinstance(e, kind)]


def _child(found: list[IkeEvent]) -> ChildSaEstablished:
    (child,) = _of(found, ChildSaEstablished)
    return child


def _advance(pair: IkePair, until: float, *, peer_gone: bool = False) -> None:
    """Fire both sessions' timers in order up to ``until``, delivering what they send
    (or, with ``peer_gone``, only the initiator runs and its datagrams are lost)."""
    sessions = [pair.initiator] if peer_gone else [pair.initiator, pair.responder]
    while True:
        due = [(t, s) for s in sessions if (t := s.get_timer()) is not None and t <= until]
        if not due:
            break
        deadline, session = min(due, key=lambda entry: entry[0])
        pair.clock.now = max(pair.clock.now, deadline)
        session.handle_timer(pair.clock.now)
        if peer_gone:
            session.datagrams_to_send(pair.clock.now)
        else:
            pair.run()
    pair.clock.now = max(pair.clock.now, until)


def _assert_esp_works(sender: ChildSaEstablished, receiver: ChildSaEstablished) -> None:
    suite = suite_by_name(sender.esp_suite)
    outbound = OutboundSa(sender.outbound_spi, suite, sender.outbound_keymat)
    inbound = InboundSa(receiver.inbound_spi, suite, receiver.inbound_keymat)
    packet = ipv4_icmp_echo("10.99.0.2", "10.1.0.1")
    protected = outbound.encapsulate(packet)
    assert isinstance(protected, bytes)
    assert inbound.decapsulate(protected) == packet


def test_child_sa_is_rekeyed_before_its_hard_lifetime() -> None:
    pair = ike_pair(child_rekey_time=100.0)
    initiator_events, responder_events = establish(pair)
    start = pair.clock.now
    child_i, child_r = _child(initiator_events), _child(responder_events)
    lifetime = pair.initiator.child_lifetime(child_i.inbound_spi)
    assert lifetime is not None
    assert lifetime.rekey_at is not None
    assert start + 90.0 <= lifetime.rekey_at <= start + 100.0  # rand_time: 10% of rekey_time
    assert lifetime.expires_at == start + 110.0  # over_time: 10% of rekey_time
    _advance(pair, start + 110.0)
    found_i, found_r = events(pair.initiator), events(pair.responder)
    (rekeyed_i,) = _of(found_i, ChildSaRekeyed)
    (rekeyed_r,) = _of(found_r, ChildSaRekeyed)
    assert rekeyed_i.old_inbound_spi == child_i.inbound_spi
    assert rekeyed_r.old_inbound_spi == child_r.inbound_spi
    assert _of(found_i, ChildSaDeleted) == [
        ChildSaDeleted(child_i.inbound_spi, child_i.outbound_spi)
    ]
    assert _of(found_r, ChildSaDeleted) == [
        ChildSaDeleted(child_r.inbound_spi, child_r.outbound_spi)
    ]
    new_i, new_r = rekeyed_i.established, rekeyed_r.established
    assert new_i.inbound_keymat != child_i.inbound_keymat
    assert new_i.outbound_keymat != child_i.outbound_keymat
    _assert_esp_works(new_i, new_r)
    _assert_esp_works(new_r, new_i)
    # The new Child SA has lifetimes of its own, counted from its rekey.
    fresh = pair.initiator.child_lifetime(new_i.inbound_spi)
    assert fresh is not None
    assert fresh.expires_at is not None
    assert fresh.expires_at > start + 110.0 + 90.0
    assert pair.initiator.child_lifetime(child_i.inbound_spi) is None
    # And it is rekeyed in its turn.
    _advance(pair, fresh.expires_at)
    (again,) = _of(events(pair.initiator), ChildSaRekeyed)
    assert again.old_inbound_spi == new_i.inbound_spi
    assert pair.initiator.state is pair.responder.state is IkeSaState.ESTABLISHED


def test_ike_sa_is_rekeyed_automatically() -> None:
    pair = ike_pair(ike_rekey_time=200.0)
    initiator_events, _ = establish(pair)
    start = pair.clock.now
    old_spis = (pair.initiator.spi_i, pair.initiator.spi_r)
    child = _child(initiator_events)
    _advance(pair, start + 220.0)
    (rekeyed_i,) = _of(events(pair.initiator), IkeSaRekeyed)
    (rekeyed_r,) = _of(events(pair.responder), IkeSaRekeyed)
    assert (rekeyed_i.old_spi_i, rekeyed_i.old_spi_r) == old_spis
    assert rekeyed_i == rekeyed_r
    assert (pair.initiator.spi_i, pair.initiator.spi_r) == (rekeyed_i.spi_i, rekeyed_i.spi_r)
    lifetime = pair.initiator.ike_lifetime
    assert lifetime is not None
    assert lifetime.expires_at is not None
    assert lifetime.expires_at >= start + 180.0 + 220.0
    # The Child SA moved over and keeps its (disabled) lifetime; the new SA works.
    assert pair.initiator.child_lifetime(child.inbound_spi) is not None
    pair.initiator.check_liveness(pair.clock.now)
    pair.run()
    assert pair.initiator.state is pair.responder.state is IkeSaState.ESTABLISHED
    assert events(pair.initiator) == events(pair.responder) == []


def test_jitter_differs_between_sides_and_is_deterministic() -> None:
    def soft_times(seed: int) -> tuple[float | None, ...]:
        pair = ike_pair(seed=seed, ike_rekey_time=1000.0, child_rekey_time=500.0)
        initiator_events, responder_events = establish(pair)
        start = pair.clock.now
        ike_i, ike_r = pair.initiator.ike_lifetime, pair.responder.ike_lifetime
        child_i = pair.initiator.child_lifetime(_child(initiator_events).inbound_spi)
        child_r = pair.responder.child_lifetime(_child(responder_events).inbound_spi)
        assert ike_i is not None
        assert ike_r is not None
        assert child_i is not None
        assert child_r is not None
        times = [ike_i.rekey_at, ike_r.rekey_at, child_i.rekey_at, child_r.rekey_at]
        return tuple(None if t is None else t - start for t in times)

    first = soft_times(7)
    ike_i, ike_r, child_i, child_r = first
    assert ike_i != ike_r
    assert child_i != child_r
    assert all(t is not None and 900.0 <= t <= 1000.0 for t in (ike_i, ike_r))
    assert all(t is not None and 450.0 <= t <= 500.0 for t in (child_i, child_r))
    assert soft_times(7) == first
    assert soft_times(8) != first


def _rekey_requests(pair: IkePair) -> int:
    """How many CREATE_CHILD_SA requests the initiator has put on the wire so far."""
    return sum(
        1
        for name, data, _, _ in pair.wire
        if name == "i->r"
        and (header := peek_header(data)).exchange_type == ExchangeType.CREATE_CHILD_SA
        and not header.response
    )


def _refused_rekey(pair: IkePair, child: ChildSaEstablished) -> None:
    """The initiator's rekey of ``child`` was refused: NO_PROPOSAL_CHOSEN, nothing changed."""
    (failed,) = events(pair.initiator)
    assert isinstance(failed, RekeyFailed)
    assert (failed.inbound_spi, failed.notify) == (child.inbound_spi, NotifyType.NO_PROPOSAL_CHOSEN)
    assert events(pair.responder) == []
    assert pair.initiator.child_lifetime(child.inbound_spi) is not None  # still the same SA


def test_refused_automatic_rekey_is_retried_after_a_back_off() -> None:
    """A refused automatic rekey comes round again REKEY_RETRY_S plus a jitter later.

    The refusal is a genuine one: the initiator wants PFS for its Child SA
    rekey and the responder offers none, so the responder answers
    NO_PROPOSAL_CHOSEN (RFC 7296 1.3.3, 2.21) every time. The responder's own
    lifetimes are off, so the only rekeys are the initiator's.
    """
    retry = defaults.REKEY_RETRY_S
    jitter = defaults.REKEY_RETRY_JITTER_S
    pair = ike_pair(
        child_rekey_time=100.0,
        child_over_time=200.0,  # the hard expiry stays out of the way of two retries
        child_rand_time=0.0,
        pfs_group=KeyExchangeMethod.CURVE25519,
        responder_pfs_group=None,
        responder_lifetimes=False,
    )
    initiator_events, _ = establish(pair)
    start = pair.clock.now
    child = _child(initiator_events)
    assert pair.responder.get_timer() is None
    _advance(pair, start + 100.0)
    assert _rekey_requests(pair) == 1
    _refused_rekey(pair, child)
    # The first retry: no request before its time, one at it.
    first_retry = pair.initiator.get_timer()
    assert first_retry is not None
    assert start + 100.0 + retry <= first_retry < start + 100.0 + retry + jitter
    _advance(pair, first_retry - 0.001)
    assert _rekey_requests(pair) == 1
    _advance(pair, first_retry)
    assert _rekey_requests(pair) == 2
    _refused_rekey(pair, child)
    # And again after another back-off, whose jitter is drawn afresh.
    second_retry = pair.initiator.get_timer()
    assert second_retry is not None
    assert first_retry + retry <= second_retry < first_retry + retry + jitter
    assert second_retry - first_retry != first_retry - (start + 100.0)
    _advance(pair, second_retry - 0.001)
    assert _rekey_requests(pair) == 2
    _advance(pair, second_retry)
    assert _rekey_requests(pair) == 3
    _refused_rekey(pair, child)
    assert pair.initiator.state is pair.responder.state is IkeSaState.ESTABLISHED


def test_child_sa_hard_expiry_with_the_peer_gone() -> None:
    pair = ike_pair(child_rekey_time=100.0)
    initiator_events, _ = establish(pair)
    start = pair.clock.now
    child = _child(initiator_events)
    _advance(pair, start + 110.0, peer_gone=True)
    assert events(pair.initiator) == [ChildSaDeleted(child.inbound_spi, child.outbound_spi)]
    assert pair.initiator.state is IkeSaState.ESTABLISHED
    assert pair.initiator.child_lifetime(child.inbound_spi) is None
    # The unanswered rekey ends, as any request does, in PeerUnreachable (RFC 7296 2.4).
    _advance(pair, start + 400.0, peer_gone=True)
    assert events(pair.initiator) == [PeerUnreachable()]
    assert pair.initiator.get_timer() is None


def test_ike_sa_hard_expiry_with_the_peer_gone_closes_the_session() -> None:
    pair = ike_pair(ike_rekey_time=100.0)
    initiator_events, _ = establish(pair)
    start = pair.clock.now
    child = _child(initiator_events)
    _advance(pair, start + 110.0 - 0.001, peer_gone=True)
    assert events(pair.initiator) == []  # the rekey went out, unanswered
    _advance(pair, start + 110.0, peer_gone=True)
    assert events(pair.initiator) == [
        ChildSaDeleted(child.inbound_spi, child.outbound_spi),
        IkeSaFailed("lifetime expired", None),
    ]
    assert pair.initiator.state is IkeSaState.CLOSED
    assert pair.initiator.get_timer() is None


def test_disabled_lifetimes_start_no_rekey() -> None:
    pair = ike_pair()  # ike_pair turns lifetimes off unless asked
    establish(pair)
    assert pair.initiator.get_timer() is None
    assert pair.responder.get_timer() is None
    _advance(pair, pair.clock.now + 30 * 86400.0)
    assert events(pair.initiator) == events(pair.responder) == []
    lifetime = pair.initiator.ike_lifetime
    assert lifetime is not None
    assert (lifetime.rekey_at, lifetime.expires_at) == (None, None)


def test_get_timer_reports_the_earliest_deadline() -> None:
    pair = ike_pair(
        ike_rekey_time=50.0, ike_rand_time=0.0, child_rekey_time=100.0, child_rand_time=0.0
    )
    establish(pair)
    start = pair.clock.now
    assert pair.initiator.get_timer() == start + 50.0  # the IKE SA's soft time
    pair = ike_pair(ike_rekey_time=500.0, child_rekey_time=100.0, child_rand_time=0.0)
    establish(pair)
    assert pair.initiator.get_timer() == pair.clock.now + 100.0  # the Child SA's
    # While a request is outstanding its retransmission comes first.
    pair.initiator.check_liveness(pair.clock.now)
    assert pair.initiator.get_timer() == pair.clock.now + 4.0


def test_default_lifetimes_follow_strongswan() -> None:
    pair = ike_pair(ike_rekey_time=4 * 3600.0, child_rekey_time=3600.0)
    initiator_events, _ = establish(pair)
    start = pair.clock.now
    ike = pair.initiator.ike_lifetime
    child = pair.initiator.child_lifetime(_child(initiator_events).inbound_spi)
    assert ike is not None
    assert child is not None
    assert ike.rekey_at is not None
    assert child.rekey_at is not None
    assert start + 0.9 * 14400.0 <= ike.rekey_at <= start + 14400.0
    assert ike.expires_at == start + 1.1 * 14400.0
    assert start + 0.9 * 3600.0 <= child.rekey_at <= start + 3600.0
    assert child.expires_at == start + 1.1 * 3600.0
    assert pair.initiator.get_timer() == child.rekey_at
