"""INFORMATIONAL exchanges between two in-memory IkeSession cores (RFC 7296 1.4, 2.4, 3.11).

After IKE_AUTH either side may start an exchange, and message IDs count per
direction (RFC 7296 2.2): the original initiator's next request is ID 2, the
original responder's first is ID 0. Each step carries the RFC notation of
what crosses the wire; ``-->`` is always from the side that starts the
exchange.
"""

from __future__ import annotations

import struct
from typing import TypeVar

import pytest

from common.ike.constants import ExchangeType, NotifyType, ProtocolId
from common.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    IkeEvent,
    IkeSaDeleted,
    IkeSaFailed,
    PeerUnreachable,
)
from common.ike.message import IkeHeader, peek_header
from common.ike.payloads import Delete, Notify
from common.ike.policy import Identity
from common.ike.session import IkeSaState, IkeSession
from tests.helpers.ike_pair import (
    PSK,
    IkePair,
    MemoryPolicy,
    establish,
    events,
    ike_pair,
    open_sk,
)

E = TypeVar("E")
ESP_SPI = struct.Struct("!I")


def _only(found: list[IkeEvent], kind: type[E]) -> E:
    assert len(found) == 1, found
    assert isinstance(found[0], kind), found
    return found[0]


def _children(pair: IkePair) -> tuple[ChildSaEstablished, ChildSaEstablished]:
    initiator_events, responder_events = establish(pair)
    child_i = [e for e in initiator_events if isinstance(e, ChildSaEstablished)]
    child_r = [e for e in responder_events if isinstance(e, ChildSaEstablished)]
    assert len(child_i) == len(child_r) == 1
    return child_i[0], child_r[0]


def _last_header(pair: IkePair) -> IkeHeader:
    return peek_header(pair.wire[-1][1])


@pytest.mark.parametrize("starter", ["initiator", "responder"])
def test_liveness_check_gets_an_empty_answer(starter: str) -> None:
    pair = ike_pair()
    establish(pair)
    sender: IkeSession = getattr(pair, starter)
    peer = pair.peer_of(sender)
    sender.check_liveness(pair.clock.now)
    # INFORMATIONAL: HDR, SK {} -->
    assert pair.transfer(sender) == 1
    request = _last_header(pair)
    assert request.exchange_type == ExchangeType.INFORMATIONAL
    assert not request.response
    assert request.initiator is sender.is_initiator  # RFC 7296 3.1: I names the original one
    # RFC 7296 2.2: IDs per direction; the original initiator used 0 and 1 already.
    assert request.message_id == (2 if sender.is_initiator else 0)
    assert open_sk(peer, pair.wire[-1][1]) == []
    #            <-- HDR, SK {}
    assert pair.transfer(peer) == 1
    response = _last_header(pair)
    assert response.response
    assert response.message_id == request.message_id
    assert open_sk(sender, pair.wire[-1][1]) == []
    assert events(sender) == events(peer) == []
    assert sender.get_timer() is None
    assert sender.state is peer.state is IkeSaState.ESTABLISHED


def test_both_directions_keep_their_own_message_ids() -> None:
    pair = ike_pair()
    establish(pair)
    ids = []
    for sender in (pair.responder, pair.initiator, pair.responder, pair.initiator):
        sender.check_liveness(pair.clock.now)
        # INFORMATIONAL: HDR, SK {} -->  <-- HDR, SK {}
        pair.transfer(sender)
        ids.append(_last_header(pair).message_id)
        pair.transfer(pair.peer_of(sender))
    assert ids == [0, 2, 1, 3]


def test_commands_wait_for_the_window() -> None:
    pair = ike_pair()
    establish(pair)
    pair.initiator.check_liveness(pair.clock.now)
    pair.initiator.check_liveness(pair.clock.now)
    # RFC 7296 2.3: window 1, so only the first HDR(2), SK {} --> goes out now.
    assert pair.transfer(pair.initiator) == 1
    #            <-- HDR(2), SK {}; then HDR(3), SK {} -->
    pair.transfer(pair.responder)
    assert pair.transfer(pair.initiator) == 1
    assert _last_header(pair).message_id == 3


def test_liveness_check_to_a_dead_peer_gives_up_after_the_schedule() -> None:
    pair = ike_pair()
    child_i, _ = _children(pair)
    pair.initiator.check_liveness(pair.clock.now)
    start = pair.clock.now
    deadlines = []
    while pair.initiator.get_timer() is not None:
        # INFORMATIONAL: HDR, SK {} --> (lost, every time)
        pair.transfer(pair.initiator, drop={0})
        deadlines.append(pair.initiator.get_timer())
        pair.fire_timer(pair.initiator)
    sent = [entry for entry in pair.wire if entry[0] == "i->r"][2:]
    assert len(sent) == 6  # the request and 5 retransmissions, byte for byte
    assert len({entry[1] for entry in sent}) == 1
    expected, at = [], start
    for n in range(6):
        at += 4.0 * 1.8**n
        expected.append(at)
    assert deadlines == pytest.approx(expected)
    # RFC 7296 2.4: the peer is gone; its Child SAs go with the IKE SA.
    found = events(pair.initiator)
    assert found == [ChildSaDeleted(child_i.inbound_spi, child_i.outbound_spi), PeerUnreachable()]
    assert pair.initiator.state is IkeSaState.CLOSED


def test_lost_informational_response_is_answered_from_the_cache() -> None:
    pair = ike_pair()
    establish(pair)
    pair.responder.check_liveness(pair.clock.now)
    # INFORMATIONAL: HDR(0), SK {} -->  <-- HDR(0), SK {} (lost)
    pair.transfer(pair.responder)
    pair.transfer(pair.initiator, drop={0})
    pair.fire_timer(pair.responder)
    # HDR(0), SK {} --> (retransmitted)  <-- the cached response
    pair.transfer(pair.responder)
    assert pair.initiator.drops["retransmitted request"] == 1
    pair.transfer(pair.initiator)
    assert pair.wire[-1][1] == pair.wire[-3][1]
    assert pair.responder.get_timer() is None
    assert events(pair.responder) == []


@pytest.mark.parametrize("starter", ["initiator", "responder"])
def test_delete_of_the_ike_sa(starter: str) -> None:
    pair = ike_pair()
    child_i, child_r = _children(pair)
    sender: IkeSession = getattr(pair, starter)
    peer = pair.peer_of(sender)
    sender.delete(pair.clock.now)
    assert sender.state.name == "DELETING"  # (by name: mypy would narrow the property)
    # INFORMATIONAL: HDR, SK {D(IKE)} -->
    pair.transfer(sender)
    assert open_sk(peer, pair.wire[-1][1]) == [Delete(ProtocolId.IKE)]
    own, other = (child_i, child_r) if sender.is_initiator else (child_r, child_i)
    assert events(peer) == [
        ChildSaDeleted(other.inbound_spi, other.outbound_spi),
        IkeSaDeleted(by_peer=True),
    ]
    #            <-- HDR, SK {}
    pair.transfer(peer)
    assert open_sk(sender, pair.wire[-1][1]) == []
    assert events(sender) == [
        ChildSaDeleted(own.inbound_spi, own.outbound_spi),
        IkeSaDeleted(by_peer=False),
    ]
    assert sender.state is peer.state is IkeSaState.CLOSED
    assert sender.get_timer() is peer.get_timer() is None


def test_unanswered_delete_closes_anyway() -> None:
    pair = ike_pair()
    establish(pair)
    pair.initiator.delete(pair.clock.now)
    while pair.initiator.get_timer() is not None:
        # INFORMATIONAL: HDR, SK {D(IKE)} --> (lost)
        pair.transfer(pair.initiator, drop={0})
        pair.fire_timer(pair.initiator)
    # RFC 7296 2.4: after the retransmissions the IKE SA is deleted all the same.
    assert events(pair.initiator)[-1] == IkeSaDeleted(by_peer=False)
    assert pair.initiator.state is IkeSaState.CLOSED


def test_retransmitted_delete_is_answered_after_close() -> None:
    pair = ike_pair()
    establish(pair)
    pair.initiator.delete(pair.clock.now)
    # INFORMATIONAL: HDR, SK {D(IKE)} -->  <-- HDR, SK {} (lost)
    pair.transfer(pair.initiator)
    pair.transfer(pair.responder, drop={0})
    assert pair.responder.state is IkeSaState.CLOSED
    pair.fire_timer(pair.initiator)
    # HDR, SK {D(IKE)} --> (again)  <-- the cached HDR, SK {} (RFC 7296 2.1)
    pair.run()
    assert events(pair.initiator)[-1] == IkeSaDeleted(by_peer=False)
    assert pair.initiator.state is IkeSaState.CLOSED


def test_both_sides_delete_the_ike_sa_at_once() -> None:
    pair = ike_pair()
    establish(pair)
    pair.initiator.delete(pair.clock.now)
    pair.responder.delete(pair.clock.now)
    # HDR, SK {D(IKE)} -->  and  <-- HDR, SK {D(IKE)}, crossing
    pair.transfer(pair.initiator)
    pair.transfer(pair.responder)
    assert events(pair.initiator)[-1] == IkeSaDeleted(by_peer=True)
    assert events(pair.responder)[-1] == IkeSaDeleted(by_peer=True)
    assert pair.initiator.state is pair.responder.state is IkeSaState.CLOSED


@pytest.mark.parametrize("starter", ["initiator", "responder"])
def test_delete_of_a_child_sa(starter: str) -> None:
    pair = ike_pair()
    child_i, child_r = _children(pair)
    sender: IkeSession = getattr(pair, starter)
    peer = pair.peer_of(sender)
    own, other = (child_i, child_r) if sender.is_initiator else (child_r, child_i)
    sender.delete_child(own.inbound_spi, pair.clock.now)
    # INFORMATIONAL: HDR, SK {D(ESP, our inbound SPI)} -->
    pair.transfer(sender)
    assert open_sk(peer, pair.wire[-1][1]) == [
        Delete(ProtocolId.ESP, (ESP_SPI.pack(own.inbound_spi),))
    ]
    assert events(peer) == [ChildSaDeleted(other.inbound_spi, other.outbound_spi)]
    #            <-- HDR, SK {D(ESP, its inbound SPI)}  (RFC 7296 1.4.1: the paired SA)
    pair.transfer(peer)
    assert open_sk(sender, pair.wire[-1][1]) == [
        Delete(ProtocolId.ESP, (ESP_SPI.pack(other.inbound_spi),))
    ]
    assert events(sender) == [ChildSaDeleted(own.inbound_spi, own.outbound_spi)]
    # The IKE SA stands and still answers.
    assert sender.state is peer.state is IkeSaState.ESTABLISHED
    sender.check_liveness(pair.clock.now)
    # HDR, SK {} -->  <-- HDR, SK {}
    pair.transfer(sender)
    pair.transfer(peer)
    assert sender.get_timer() is None


def test_duplicated_child_delete_is_answered_from_the_cache() -> None:
    pair = ike_pair()
    child_i, child_r = _children(pair)
    pair.initiator.delete_child(child_i.inbound_spi, pair.clock.now)
    # INFORMATIONAL: HDR, SK {D(ESP, SPIi)} --> (twice)
    pair.transfer(pair.initiator, duplicate={0})
    responses = pair.responder.datagrams_to_send(pair.clock.now)
    # <-- HDR, SK {D(ESP, SPIr)} (twice, byte for byte, processed once)
    assert len(responses) == 2
    assert responses[0] == responses[1]
    assert pair.responder.drops["retransmitted request"] == 1
    assert events(pair.responder) == [ChildSaDeleted(child_r.inbound_spi, child_r.outbound_spi)]
    for data, _ in responses:
        pair.initiator.receive_datagram(data, pair.source_of(pair.responder), pair.clock.now)
    assert events(pair.initiator) == [ChildSaDeleted(child_i.inbound_spi, child_i.outbound_spi)]
    assert pair.initiator.drops["unexpected response"] == 1


def test_child_delete_collision_answers_without_a_delete() -> None:
    pair = ike_pair()
    child_i, child_r = _children(pair)
    pair.initiator.delete_child(child_i.inbound_spi, pair.clock.now)
    pair.responder.delete_child(child_r.inbound_spi, pair.clock.now)
    # HDR, SK {D(ESP, SPIi)} -->  and  <-- HDR, SK {D(ESP, SPIr)}, crossing;
    # RFC 7296 1.4.1: each response is HDR, SK {} (no Delete for an SA being deleted).
    pair.transfer(pair.initiator)
    pair.transfer(pair.responder)
    assert [open_sk(pair.initiator, pair.wire[-1][1])] == [[]]
    pair.transfer(pair.initiator)
    assert open_sk(pair.responder, pair.wire[-1][1]) == []
    assert events(pair.initiator) == [ChildSaDeleted(child_i.inbound_spi, child_i.outbound_spi)]
    assert events(pair.responder) == [ChildSaDeleted(child_r.inbound_spi, child_r.outbound_spi)]
    assert pair.initiator.get_timer() is pair.responder.get_timer() is None


class _TwoFacedPolicy(MemoryPolicy):
    """Checks the client with the right PSK, then signs its own AUTH with another.

    The only way a PSK gateway can send an AUTH the client rejects while the
    client's own AUTH passes: its second ``psk_for`` lookup (for our AUTH) lies.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    def psk_for(self, identity: Identity) -> bytes | None:
        self.lookups += 1
        return PSK if self.lookups == 1 else b"some other key"


def test_initiator_reports_a_bad_responder_auth() -> None:
    pair = ike_pair(policy=_TwoFacedPolicy())
    pair.initiator.initiate(pair.clock.now)
    # IKE_SA_INIT: HDR, SAi1, KEi, Ni -->  <-- HDR, SAr1, KEr, Nr
    pair.roundtrip()
    # IKE_AUTH: HDR, SK {IDi, AUTH, ...} -->  <-- HDR, SK {IDr, AUTH(wrong), ...}
    pair.roundtrip()
    failed = [e for e in events(pair.initiator) if isinstance(e, IkeSaFailed)]
    assert [f.notify for f in failed] == [NotifyType.AUTHENTICATION_FAILED]
    # RFC 7296 2.21.2: INFORMATIONAL: HDR(2), SK {N(AUTHENTICATION_FAILED)} --> (sent once)
    assert pair.transfer(pair.initiator) == 1
    assert _last_header(pair).message_id == 2
    assert open_sk(pair.responder, pair.wire[-1][1]) == [Notify(NotifyType.AUTHENTICATION_FAILED)]
    assert pair.initiator.get_timer() is None
    found = events(pair.responder)
    assert isinstance(found[-1], IkeSaFailed)
    assert found[-1].notify is NotifyType.AUTHENTICATION_FAILED
    assert isinstance(found[-2], ChildSaDeleted)
    assert pair.responder.state is IkeSaState.CLOSED


def test_commands_need_an_established_ike_sa() -> None:
    pair = ike_pair()
    with pytest.raises(RuntimeError):
        pair.initiator.check_liveness(pair.clock.now)
    establish(pair)
    with pytest.raises(RuntimeError):
        pair.initiator.delete_child(0x12345678, pair.clock.now)
    pair.initiator.delete(pair.clock.now)
    pair.initiator.delete(pair.clock.now)  # a second delete does nothing
    assert pair.transfer(pair.initiator) == 1
    _only([e for e in events(pair.responder) if isinstance(e, IkeSaDeleted)], IkeSaDeleted)


def test_exchanging_says_whether_a_request_of_ours_is_outstanding() -> None:
    """Glue waits on ``exchanging``, since lifetimes keep a timer armed for good."""
    pair = ike_pair()
    establish(pair)
    sender = pair.initiator
    assert not sender.exchanging
    assert not pair.responder.exchanging
    sender.check_liveness(pair.clock.now)
    sender.check_liveness(pair.clock.now)  # queued behind the first (window 1)
    assert sender.exchanging
    # INFORMATIONAL: HDR, SK {} -->  <-- HDR, SK {}
    pair.transfer(sender)
    assert sender.exchanging
    assert not pair.responder.exchanging
    pair.transfer(pair.responder)
    assert sender.exchanging  # the queued second check went out
    pair.transfer(sender)
    pair.transfer(pair.responder)
    assert not sender.exchanging
