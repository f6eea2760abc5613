"""Simultaneous rekeys, and rekeys crossing deletes (RFC 7296 2.8.1, 2.8.2, 2.25).

Both peers of an in-memory pair start the same rekey before either hears of
the other's (state.py rule 7). With both exchanges complete, the new SA made
by the exchange holding the lowest of the four nonces is redundant: its
initiator deletes it, and the other new SA survives on both sides. The tests
read the nonces off the wire and search seeds for both outcomes, so a
resolution that always favours one side fails. When reordering lets one side
finish before it sees the other's request, that side refuses the late
request and its own SA survives; the nonce rule does not apply then, but
the end state must still be one shared SA, with every SA the driver was told
about deleted exactly once.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from common.esp.sa import InboundSa, OutboundSa
from common.esp.suites import suite_by_name
from common.ike.constants import ExchangeType, KeyExchangeMethod, NotifyType
from common.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaRekeyed,
    IkeEvent,
    IkeSaDeleted,
    IkeSaRekeyed,
    RekeyFailed,
)
from common.ike.message import peek_header
from common.ike.payloads import Nonce, Notify, SecurityAssociation
from common.ike.session import IkeSaState, IkeSession
from common.ike.tasks.base import IkeSa
from tests.helpers.ike_pair import IkePair, establish, events, ike_pair, open_sk
from tests.helpers.packets import ipv4_icmp_echo

ESP_SPI = struct.Struct("!I")
PFS = [None, KeyExchangeMethod.CURVE25519]
SIDES = ["initiator", "responder"]


# --- what the driver was told ---------------------------------------------------------------


@dataclass
class Ledger:
    """One side's Child SAs as its driver would track them from the events alone."""

    live: dict[int, ChildSaEstablished] = field(default_factory=dict)
    told: set[int] = field(default_factory=set)
    deleted: list[int] = field(default_factory=list)
    rekeyed: int = 0
    other: list[IkeEvent] = field(default_factory=list)

    def feed(self, found: list[IkeEvent]) -> None:
        for event in found:
            if isinstance(event, ChildSaEstablished | ChildSaRekeyed):
                new = event if isinstance(event, ChildSaEstablished) else event.established
                assert new.inbound_spi not in self.told, "an SA reported twice"
                self.told.add(new.inbound_spi)
                self.live[new.inbound_spi] = new
                self.rekeyed += isinstance(event, ChildSaRekeyed)
            elif isinstance(event, ChildSaDeleted):
                # Each SA the driver was told about is deleted once, and only those.
                assert event.inbound_spi in self.live, f"{event} for no live SA"
                assert self.live.pop(event.inbound_spi).outbound_spi == event.outbound_spi
                self.deleted.append(event.inbound_spi)
            else:
                self.other.append(event)


def _ledgers(pair: IkePair) -> tuple[Ledger, Ledger]:
    found_i, found_r = establish(pair)
    ledger_i, ledger_r = Ledger(), Ledger()
    ledger_i.feed(found_i)
    ledger_r.feed(found_r)
    assert len(ledger_i.live) == len(ledger_r.live) == 1
    ledger_i.other.clear()  # IkeSaEstablished, AddressAssigned: not what is tested
    ledger_r.other.clear()
    return ledger_i, ledger_r


def _drain(pair: IkePair, ledger_i: Ledger, ledger_r: Ledger) -> None:
    ledger_i.feed(events(pair.initiator))
    ledger_r.feed(events(pair.responder))


def _only_live(ledger: Ledger) -> ChildSaEstablished:
    assert len(ledger.live) == 1, ledger.live
    return next(iter(ledger.live.values()))


def _assert_esp_works(sender: ChildSaEstablished, receiver: ChildSaEstablished) -> None:
    suite = suite_by_name(sender.esp_suite)
    outbound = OutboundSa(sender.outbound_spi, suite, sender.outbound_keymat)
    inbound = InboundSa(receiver.inbound_spi, suite, receiver.inbound_keymat)
    packet = ipv4_icmp_echo("10.99.0.2", "10.1.0.1")
    protected = outbound.encapsulate(packet)
    assert isinstance(protected, bytes)
    assert inbound.decapsulate(protected) == packet


def _assert_one_shared_child(ledger_i: Ledger, ledger_r: Ledger) -> ChildSaEstablished:
    """Exactly one Child SA survives, the same pair on both sides; returns the initiator's."""
    live_i, live_r = _only_live(ledger_i), _only_live(ledger_r)
    assert (live_i.inbound_spi, live_i.outbound_spi) == (live_r.outbound_spi, live_r.inbound_spi)
    # The keys agree: one side's outbound KEYMAT is the other's inbound (RFC 7296 2.17).
    assert live_i.outbound_keymat == live_r.inbound_keymat
    assert live_i.inbound_keymat == live_r.outbound_keymat
    _assert_esp_works(live_i, live_r)
    _assert_esp_works(live_r, live_i)
    # Nothing else was left over or reported as failed.
    for ledger in (ledger_i, ledger_r):
        assert not [e for e in ledger.other if isinstance(e, RekeyFailed)], ledger.other
        assert sorted(ledger.deleted) == sorted(ledger.told - set(ledger.live))
    return live_i


def _settle(pair: IkePair, *, messy: bool = False, rounds: int = 20) -> None:
    """Exchange until quiet, then let due timers fire (retransmissions, fallbacks)."""
    for _ in range(rounds):
        moved = 0
        for session in (pair.initiator, pair.responder):
            if messy:
                queued = len(session._datagrams)  # white-box: duplicate every one of them
                moved += pair.transfer(session, duplicate=range(queued), reorder=True)
            else:
                moved += pair.transfer(session)
        if moved:
            continue
        deadlines = [
            (deadline, session)
            for session in (pair.initiator, pair.responder)
            if (deadline := session.get_timer()) is not None
        ]
        if not deadlines:
            return
        pair.fire_timer(min(deadlines, key=lambda entry: entry[0])[1])
    raise AssertionError("the pair never settled")


# --- reading the nonces off the wire ----------------------------------------------------------


def _exchange_nonces(
    pair: IkePair, opener: Callable[[IkeSession, bytes], list[object]]
) -> dict[str, bytes]:
    """The lowest nonce of each side's CREATE_CHILD_SA exchange, by who started it."""
    nonces: dict[str, set[bytes]] = {"initiator": set(), "responder": set()}
    for direction, data, _, _ in pair.wire:
        header = peek_header(data)
        if header.exchange_type != ExchangeType.CREATE_CHILD_SA:
            continue
        sender = "initiator" if direction == "i->r" else "responder"
        receiver = "responder" if sender == "initiator" else "initiator"
        owner = receiver if header.response else sender  # who started the exchange
        for payload in opener(getattr(pair, receiver), data):
            if isinstance(payload, Nonce):
                nonces[owner].add(payload.data)
    assert all(len(found) == 2 for found in nonces.values()), nonces
    return {owner: min(found) for owner, found in nonces.items()}


def _winner(lowest: dict[str, bytes]) -> str:
    """RFC 7296 2.8.1: the exchange with the lowest nonce made the redundant SA."""
    return "responder" if lowest["initiator"] < lowest["responder"] else "initiator"


def _proposed_spi(
    pair: IkePair, starter: str, opener: Callable[[IkeSession, bytes], list[object]]
) -> bytes:
    """The SPI ``starter`` put in its CREATE_CHILD_SA request (its inbound SPI, or new SPIi)."""
    direction = "i->r" if starter == "initiator" else "r->i"
    receiver = pair.responder if starter == "initiator" else pair.initiator
    for sent, data, _, _ in pair.wire:
        header = peek_header(data)
        if (
            sent == direction
            and header.exchange_type == ExchangeType.CREATE_CHILD_SA
            and not header.response
        ):
            offer = next(p for p in opener(receiver, data) if isinstance(p, SecurityAssociation))
            return offer.proposals[0].spi
    raise AssertionError(f"no request from the {starter}")


def _child_opener(session: IkeSession, data: bytes) -> list[object]:
    return list(open_sk(session, data))


# --- Child SA: both sides rekey the same SA (RFC 7296 2.8.1) --------------------------------


def _crossing_child_rekey(
    seed: int, pfs: KeyExchangeMethod | None
) -> tuple[IkePair, Ledger, Ledger]:
    pair = ike_pair(seed=seed, pfs_group=pfs)
    ledger_i, ledger_r = _ledgers(pair)
    old_i, old_r = _only_live(ledger_i), _only_live(ledger_r)
    pair.initiator.rekey_child(old_i.inbound_spi, pair.clock.now)
    pair.responder.rekey_child(old_r.inbound_spi, pair.clock.now)
    # CREATE_CHILD_SA { N(REKEY_SA), SA, Ni1, [KEi,] TSi, TSr } -->
    pair.transfer(pair.initiator)
    #   <-- CREATE_CHILD_SA { N(REKEY_SA), SA, Ni2, ... } (crossing), then the answer to ours:
    #   <-- CREATE_CHILD_SA { SA, Nr1, [KEr,] TSi, TSr }
    pair.transfer(pair.responder)
    # CREATE_CHILD_SA { SA, Nr2, ... } -->   then the Deletes the nonces call for
    _settle(pair)
    _drain(pair, ledger_i, ledger_r)
    return pair, ledger_i, ledger_r


def _seed_where(winner: str, check: Callable[[int], str]) -> int:
    for seed in range(1, 60):
        if check(seed) == winner:
            return seed
    raise AssertionError(f"no seed lets the {winner} win")


def _child_winner_for(seed: int) -> str:
    pair, _, _ = _crossing_child_rekey(seed, None)
    return _winner(_exchange_nonces(pair, _child_opener))


@pytest.mark.parametrize("pfs", PFS, ids=["no-pfs", "pfs-x25519"])
@pytest.mark.parametrize("expected_winner", SIDES)
def test_simultaneous_child_rekey_keeps_the_sa_without_the_lowest_nonce(
    expected_winner: str, pfs: KeyExchangeMethod | None
) -> None:
    seed = _seed_where(expected_winner, _child_winner_for)
    pair, ledger_i, ledger_r = _crossing_child_rekey(seed, pfs)
    lowest = _exchange_nonces(pair, _child_opener)
    assert _winner(lowest) == expected_winner  # with PFS too: the rng gives the same nonces
    survivor_i = _assert_one_shared_child(ledger_i, ledger_r)
    # Both sides were told about both new SAs (each answered the other's request)...
    assert ledger_i.rekeyed == ledger_r.rekeyed == 2
    # ...and each deleted the old one and the redundant one, once.
    assert len(ledger_i.deleted) == len(ledger_r.deleted) == 2
    # The survivor is the one the winner's exchange made: the SPI the winner proposed.
    winner_spi = ESP_SPI.unpack(_proposed_spi(pair, expected_winner, _child_opener))[0]
    winner_view = survivor_i if expected_winner == "initiator" else _only_live(ledger_r)
    assert winner_view.inbound_spi == winner_spi
    # The redundant SA's Delete came from its maker, the old SA's from the winner.
    deletes = [
        direction
        for direction, data, _, _ in pair.wire
        if peek_header(data).exchange_type == ExchangeType.INFORMATIONAL
        and not peek_header(data).response
    ]
    assert sorted(deletes) == ["i->r", "r->i"]
    assert pair.initiator.get_timer() is pair.responder.get_timer() is None
    # The survivor is an ordinary SA from now on: the loser rekeys it alone.
    loser: IkeSession = pair.responder if expected_winner == "initiator" else pair.initiator
    mine = ledger_r if loser is pair.responder else ledger_i
    loser.rekey_child(_only_live(mine).inbound_spi, pair.clock.now)
    _settle(pair)
    _drain(pair, ledger_i, ledger_r)
    _assert_one_shared_child(ledger_i, ledger_r)
    assert ledger_i.rekeyed == ledger_r.rekeyed == 3


@pytest.mark.parametrize("pfs", PFS, ids=["no-pfs", "pfs-x25519"])
@pytest.mark.parametrize("seed", [3, 4, 5, 6])
def test_simultaneous_child_rekey_with_duplicated_and_reordered_datagrams(
    seed: int, pfs: KeyExchangeMethod | None
) -> None:
    pair = ike_pair(seed=seed, pfs_group=pfs)
    ledger_i, ledger_r = _ledgers(pair)
    pair.initiator.rekey_child(_only_live(ledger_i).inbound_spi, pair.clock.now)
    pair.responder.rekey_child(_only_live(ledger_r).inbound_spi, pair.clock.now)
    # Every datagram twice, every batch backwards: a side may now finish its own
    # rekey before it sees the peer's request, and refuse that with TEMPORARY_FAILURE.
    _settle(pair, messy=True)
    _drain(pair, ledger_i, ledger_r)
    _assert_one_shared_child(ledger_i, ledger_r)
    assert pair.initiator.get_timer() is pair.responder.get_timer() is None
    assert pair.initiator.state is pair.responder.state is IkeSaState.ESTABLISHED


def test_one_side_finishing_first_refuses_the_late_rekey_and_its_sa_survives() -> None:
    pair = ike_pair()
    ledger_i, ledger_r = _ledgers(pair)
    pair.initiator.rekey_child(_only_live(ledger_i).inbound_spi, pair.clock.now)
    pair.responder.rekey_child(_only_live(ledger_r).inbound_spi, pair.clock.now)
    # CREATE_CHILD_SA { N(REKEY_SA), SA, Ni1, TSi, TSr } -->  (the responder sees the collision)
    pair.transfer(pair.initiator)
    #   <-- { SA, Nr1, TSi, TSr } overtakes  <-- { N(REKEY_SA), SA, Ni2, ... }
    pair.transfer(pair.responder, reorder=True)
    # The initiator finished before it saw the responder's request: it deletes the
    # old SA and refuses the late request (RFC 7296 2.25.1, the SA is being deleted).
    # INFORMATIONAL { D(ESP, old) } -->  CREATE_CHILD_SA { N(TEMPORARY_FAILURE) } -->
    pair.transfer(pair.initiator)
    refusal = open_sk(pair.responder, pair.wire[-1][1])
    assert refusal == [Notify(NotifyType.TEMPORARY_FAILURE)]
    _settle(pair)
    _drain(pair, ledger_i, ledger_r)
    survivor_i = _assert_one_shared_child(ledger_i, ledger_r)
    assert (
        survivor_i.inbound_spi == ESP_SPI.unpack(_proposed_spi(pair, "initiator", _child_opener))[0]
    )
    assert ledger_i.rekeyed == ledger_r.rekeyed == 1  # no redundant SA was ever made


def test_simultaneous_automatic_child_rekeys_resolve_to_one_sa() -> None:
    # No jitter: both lifetimes fire at the same instant (what RFC 7296 2.8.1's jitter avoids).
    pair = ike_pair(child_rekey_time=100.0, child_over_time=60.0, child_rand_time=0.0)
    ledger_i, ledger_r = _ledgers(pair)
    pair.clock.now += 100.0
    pair.initiator.handle_timer(pair.clock.now)
    pair.responder.handle_timer(pair.clock.now)
    pair.run()
    _drain(pair, ledger_i, ledger_r)
    _assert_one_shared_child(ledger_i, ledger_r)
    assert ledger_i.rekeyed == ledger_r.rekeyed == 2


# --- Child SA: a rekey crossing a Delete (RFC 7296 2.25.1) ------------------------------------


@pytest.mark.parametrize("deleter", SIDES)
def test_child_rekey_crossing_the_peers_delete_is_abandoned(deleter: str) -> None:
    pair = ike_pair()
    ledger_i, ledger_r = _ledgers(pair)
    rekeyer: IkeSession = pair.responder if deleter == "initiator" else pair.initiator
    deleting: IkeSession = pair.peer_of(rekeyer)
    ledgers = {pair.initiator: ledger_i, pair.responder: ledger_r}
    rekeyer.rekey_child(_only_live(ledgers[rekeyer]).inbound_spi, pair.clock.now)
    deleting.delete_child(_only_live(ledgers[deleting]).inbound_spi, pair.clock.now)
    # CREATE_CHILD_SA { N(REKEY_SA), ... } -->  crossing  <-- INFORMATIONAL { D(ESP) }
    pair.transfer(rekeyer)
    #   <-- CREATE_CHILD_SA { N(TEMPORARY_FAILURE) }: we are deleting it (RFC 7296 2.25.1)
    assert pair.transfer(deleting) == 2
    assert open_sk(rekeyer, pair.wire[-1][1]) == [Notify(NotifyType.TEMPORARY_FAILURE)]
    _settle(pair)
    _drain(pair, ledger_i, ledger_r)
    # The SA is gone on both sides, once; the rekey left nothing behind and no RekeyFailed.
    for ledger in (ledger_i, ledger_r):
        assert ledger.live == {}
        assert len(ledger.deleted) == 1
        assert ledger.rekeyed == 0
        assert ledger.other == []
    assert pair.initiator.get_timer() is pair.responder.get_timer() is None


# --- IKE SA: both sides rekey it (RFC 7296 2.8.2) ---------------------------------------------


def _olds(pair: IkePair) -> dict[int, IkeSa]:
    """White-box: each session's current IKE SA, by the session's id, before the rekey."""
    return {id(pair.initiator): pair.initiator._sa, id(pair.responder): pair.responder._sa}


def _crossing_ike_rekey(
    seed: int, *, messy: bool = False
) -> tuple[IkePair, Ledger, Ledger, dict[int, IkeSa]]:
    pair = ike_pair(seed=seed)
    ledger_i, ledger_r = _ledgers(pair)
    olds = _olds(pair)
    pair.initiator.rekey_ike(pair.clock.now)
    pair.responder.rekey_ike(pair.clock.now)
    # CREATE_CHILD_SA { SA(new SPIi), Ni1, KEi } -->  crossing  <-- { SA, Ni2, KEi }
    # each answers the other as usual; then D(IKE) under the old SA from the winner and
    # D(IKE) under the redundant new SA from the loser.
    _settle(pair, messy=messy)
    _drain(pair, ledger_i, ledger_r)
    return pair, ledger_i, ledger_r, olds


def _old_opener(olds: dict[int, IkeSa]) -> Callable[[IkeSession, bytes], list[object]]:
    def opener(session: IkeSession, data: bytes) -> list[object]:
        return list(olds[id(session)].open(data))

    return opener


def _ike_winner_for(seed: int) -> str:
    pair, _, _, olds = _crossing_ike_rekey(seed)
    return _winner(_exchange_nonces(pair, _old_opener(olds)))


def _assert_one_shared_ike_sa(pair: IkePair, ledger_i: Ledger, ledger_r: Ledger) -> IkeSaRekeyed:
    rekeyed_i = [e for e in ledger_i.other if isinstance(e, IkeSaRekeyed)]
    rekeyed_r = [e for e in ledger_r.other if isinstance(e, IkeSaRekeyed)]
    assert len(rekeyed_i) == len(rekeyed_r) == 1, (ledger_i.other, ledger_r.other)
    assert rekeyed_i == rekeyed_r
    (rekeyed,) = rekeyed_i
    spis = (rekeyed.spi_i, rekeyed.spi_r)
    assert (
        (pair.initiator.spi_i, pair.initiator.spi_r)
        == (pair.responder.spi_i, pair.responder.spi_r)
        == spis
    )
    assert pair.initiator.is_initiator != pair.responder.is_initiator
    assert pair.initiator.state is pair.responder.state is IkeSaState.ESTABLISHED
    assert not pair.initiator.exchanging
    assert not pair.responder.exchanging
    assert pair.initiator.get_timer() is pair.responder.get_timer() is None
    return rekeyed


def _assert_ike_sa_works(pair: IkePair, ledger_i: Ledger, ledger_r: Ledger) -> None:
    """DPD both ways and a Child SA rekey, all under the surviving IKE SA."""
    spis = (pair.initiator.spi_i, pair.initiator.spi_r)
    for who in (pair.initiator, pair.responder):
        who.check_liveness(pair.clock.now)
        # INFORMATIONAL { } -->  <-- { }
        pair.transfer(who)
        assert (peek_header(pair.wire[-1][1]).spi_i, peek_header(pair.wire[-1][1]).spi_r) == spis
        assert pair.transfer(pair.peer_of(who)) == 1
        assert not who.exchanging
    # The Child SA moved to the survivor: rekeying it works there.
    pair.responder.rekey_child(_only_live(ledger_r).inbound_spi, pair.clock.now)
    _settle(pair)
    _drain(pair, ledger_i, ledger_r)
    _assert_one_shared_child(ledger_i, ledger_r)
    assert ledger_i.rekeyed == ledger_r.rekeyed == 1
    for ledger in (ledger_i, ledger_r):
        assert [e for e in ledger.other if not isinstance(e, IkeSaRekeyed)] == []


@pytest.mark.parametrize("expected_winner", SIDES)
def test_simultaneous_ike_rekey_keeps_the_sa_without_the_lowest_nonce(expected_winner: str) -> None:
    seed = _seed_where(expected_winner, _ike_winner_for)
    pair, ledger_i, ledger_r, olds = _crossing_ike_rekey(seed)
    opener = _old_opener(olds)
    assert _winner(_exchange_nonces(pair, opener)) == expected_winner
    rekeyed = _assert_one_shared_ike_sa(pair, ledger_i, ledger_r)
    # The survivor is the winner's: its new SPIi, with the winner as its original initiator.
    assert rekeyed.spi_i == _proposed_spi(pair, expected_winner, opener)
    winner: IkeSession = getattr(pair, expected_winner)
    assert winner.is_initiator
    # Two D(IKE): the old SA's, by the winner, and the redundant one's, by the loser.
    deletes = [
        (direction, (peek_header(data).spi_i, peek_header(data).spi_r))
        for direction, data, _, _ in pair.wire
        if peek_header(data).exchange_type == ExchangeType.INFORMATIONAL
        and not peek_header(data).response
    ]
    old_spis = (olds[id(pair.initiator)].spi_i, olds[id(pair.initiator)].spi_r)
    winner_direction = "i->r" if expected_winner == "initiator" else "r->i"
    assert (winner_direction, old_spis) in deletes
    assert len(deletes) == 2
    (redundant,) = [spis for direction, spis in deletes if spis != old_spis]
    assert redundant not in (old_spis, (rekeyed.spi_i, rekeyed.spi_r))
    _assert_ike_sa_works(pair, ledger_i, ledger_r)


@pytest.mark.parametrize("seed", [3, 4, 5, 6, 7, 8])
def test_simultaneous_ike_rekey_with_duplicated_and_reordered_datagrams(seed: int) -> None:
    pair, ledger_i, ledger_r, _ = _crossing_ike_rekey(seed, messy=True)
    _assert_one_shared_ike_sa(pair, ledger_i, ledger_r)
    _assert_ike_sa_works(pair, ledger_i, ledger_r)


def test_ike_rekey_peer_finishing_first_deletes_the_old_sa_and_we_adopt_its_sa() -> None:
    pair = ike_pair()
    ledger_i, ledger_r = _ledgers(pair)
    pair.initiator.rekey_ike(pair.clock.now)
    pair.responder.rekey_ike(pair.clock.now)
    # CREATE_CHILD_SA { SA, Ni1, KEi } -->  (the responder answers it: a collision there)
    pair.transfer(pair.initiator)
    #   <-- { SA, Nr1, KEr } overtakes  <-- { SA, Ni2, KEi }
    pair.transfer(pair.responder, reorder=True)
    # The initiator finished first: INFORMATIONAL { D(IKE) } --> under the old SA, and
    # CREATE_CHILD_SA { N(TEMPORARY_FAILURE) } --> for the late request (RFC 7296 2.8.2).
    pair.transfer(pair.initiator)
    _settle(pair)
    _drain(pair, ledger_i, ledger_r)
    rekeyed = _assert_one_shared_ike_sa(pair, ledger_i, ledger_r)
    assert pair.initiator.is_initiator  # the initiator's new SA survived
    assert pair.responder.drops["unexpected response"] <= 1
    assert rekeyed.spi_i == pair.initiator.spi_i
    _assert_ike_sa_works(pair, ledger_i, ledger_r)


def test_ike_rekey_crossing_the_peers_delete_closes_both() -> None:
    pair = ike_pair()
    ledger_i, ledger_r = _ledgers(pair)
    pair.initiator.rekey_ike(pair.clock.now)
    pair.responder.delete(pair.clock.now)
    # CREATE_CHILD_SA { SA, Ni, KEi } -->  crossing  <-- INFORMATIONAL { D(IKE) }
    pair.transfer(pair.initiator)
    #   <-- CREATE_CHILD_SA { N(TEMPORARY_FAILURE) }: an IKE SA being closed (RFC 7296 2.25.2)
    pair.transfer(pair.responder)
    _settle(pair)
    _drain(pair, ledger_i, ledger_r)
    assert pair.initiator.state is pair.responder.state is IkeSaState.CLOSED
    for ledger in (ledger_i, ledger_r):
        assert ledger.live == {}
        assert len(ledger.deleted) == 1
        assert [type(e) for e in ledger.other] == [IkeSaDeleted]


def test_redundant_ike_sa_the_loser_never_deletes_is_deleted_by_the_winner() -> None:
    seed = _seed_where("initiator", _ike_winner_for)
    pair = ike_pair(seed=seed)
    ledger_i, ledger_r = _ledgers(pair)
    olds = _olds(pair)
    pair.initiator.rekey_ike(pair.clock.now)
    pair.responder.rekey_ike(pair.clock.now)
    # Both see the collision: { SA, Ni1, KEi } -->  <-- { SA, Ni2, KEi }, { SA, Nr1, KEr }
    pair.transfer(pair.initiator)
    pair.transfer(pair.responder)
    # The initiator wins. Its D(IKE) under the old SA overtakes its answer to the
    # responder's request, so the responder takes it for "the peer did not see the
    # collision" (RFC 7296 2.8.2), adopts the initiator's SA and never makes its own.
    pair.transfer(pair.initiator, reorder=True)
    _settle(pair, rounds=60)
    _drain(pair, ledger_i, ledger_r)
    rekeyed = _assert_one_shared_ike_sa(pair, ledger_i, ledger_r)
    assert pair.initiator.is_initiator
    # The redundant SA the responder made was never deleted by it; after waiting, the
    # initiator sent D(IKE) under it itself (retiring.REDUNDANT_SA_WAIT_S), and gave
    # up on an answer from a peer that no longer knows it. Nothing is left over.
    old_spis = (olds[id(pair.initiator)].spi_i, olds[id(pair.initiator)].spi_r)
    survivor = (rekeyed.spi_i, rekeyed.spi_r)
    late = [
        direction
        for direction, data, _, _ in pair.wire
        if peek_header(data).exchange_type == ExchangeType.INFORMATIONAL
        and (peek_header(data).spi_i, peek_header(data).spi_r) not in (old_spis, survivor)
    ]
    assert late
    assert set(late) == {"i->r"}
    assert pair.initiator._retiring is None or pair.initiator._retiring.deadline() is None
    _assert_ike_sa_works(pair, ledger_i, ledger_r)
