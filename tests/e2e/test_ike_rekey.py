"""CREATE_CHILD_SA rekeys between two in-memory IkeSession cores (RFC 7296 1.3, 2.8, 2.18, 2.25).

Each step carries the RFC notation of what crosses the wire, strongSwan
``test_child_rekey.c`` style; ``-->`` is always from the side that starts the
exchange, which after IKE_AUTH may be either peer (RFC 7296 2.2). Collisions
(both sides rekeying at once) are in ``test_ike_rekey_collisions.py``.
"""

from __future__ import annotations

import struct
from dataclasses import replace
from typing import TypeVar

import pytest

from common.esp.sa import InboundSa, OutboundSa
from common.esp.suites import suite_by_name
from common.ike.constants import ExchangeType, KeyExchangeMethod, NotifyType, ProtocolId
from common.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaRekeyed,
    IkeEvent,
    IkeSaDeleted,
    IkeSaRekeyed,
    RekeyFailed,
)
from common.ike.message import IkeHeader, Payload, peek_header
from common.ike.payloads import (
    Delete,
    KeyExchange,
    Nonce,
    Notify,
    SecurityAssociation,
    TsInitiator,
    TsResponder,
)
from common.ike.session import IkeSaState, IkeSession
from tests.helpers.ike_pair import IkePair, establish, events, ike_pair, open_sk
from tests.helpers.packets import ipv4_icmp_echo

E = TypeVar("E")
ESP_SPI = struct.Struct("!I")
PFS = [None, KeyExchangeMethod.CURVE25519]
STARTERS = ["initiator", "responder"]


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


def _sides(
    pair: IkePair, starter: str, child_i: ChildSaEstablished, child_r: ChildSaEstablished
) -> tuple[IkeSession, IkeSession, ChildSaEstablished, ChildSaEstablished]:
    """The rekey initiator, its peer, and each one's view of the Child SA."""
    sender: IkeSession = getattr(pair, starter)
    own, other = (child_i, child_r) if sender is pair.initiator else (child_r, child_i)
    return sender, pair.peer_of(sender), own, other


def _last(pair: IkePair) -> tuple[IkeHeader, bytes]:
    data = pair.wire[-1][1]
    return peek_header(data), data


def _open_old(receiver: IkeSession, data: bytes) -> list[Payload]:
    """White-box: what a message under the IKE SA ``receiver`` just rekeyed carries."""
    retiring = receiver._retiring
    assert retiring is not None
    return retiring.sa.open(data)


def _assert_esp_works(sender: ChildSaEstablished, receiver: ChildSaEstablished) -> None:
    suite = suite_by_name(sender.esp_suite)
    outbound = OutboundSa(sender.outbound_spi, suite, sender.outbound_keymat)
    inbound = InboundSa(receiver.inbound_spi, suite, receiver.inbound_keymat)
    packet = ipv4_icmp_echo("10.99.0.2", "10.1.0.1")
    protected = outbound.encapsulate(packet)
    assert isinstance(protected, bytes)
    assert inbound.decapsulate(protected) == packet


def _rekey_child(
    pair: IkePair, sender: IkeSession, own: ChildSaEstablished, other: ChildSaEstablished
) -> tuple[ChildSaEstablished, ChildSaEstablished]:
    """The whole rekey, checked step by step; the new SA as the sender and the peer see it."""
    peer = pair.peer_of(sender)
    sender.rekey_child(own.inbound_spi, pair.clock.now)
    # CREATE_CHILD_SA { N(REKEY_SA), SA, Ni, [KEi,] TSi, TSr } -->
    assert pair.transfer(sender) == 1
    header, data = _last(pair)
    assert header.exchange_type == ExchangeType.CREATE_CHILD_SA
    assert not header.response
    request = open_sk(peer, data)
    rekey = request[0]
    assert isinstance(rekey, Notify)
    assert rekey.notify_type == NotifyType.REKEY_SA
    # RFC 7296 1.3.3: the SPI the rekey initiator receives on.
    assert (rekey.protocol_id, rekey.spi) == (ProtocolId.ESP, ESP_SPI.pack(own.inbound_spi))
    assert isinstance(request[-2], TsInitiator)
    assert request[-2].selectors == own.local_ts
    assert isinstance(request[-1], TsResponder)
    new_peer = _only(events(peer), ChildSaRekeyed)
    assert (new_peer.old_inbound_spi, new_peer.old_outbound_spi) == (
        other.inbound_spi,
        other.outbound_spi,
    )
    #                 <-- CREATE_CHILD_SA { SA, Nr, [KEr,] TSi, TSr }
    assert pair.transfer(peer) == 1
    header, data = _last(pair)
    assert header.response
    assert [type(p) for p in open_sk(sender, data) if not isinstance(p, KeyExchange)] == [
        SecurityAssociation,
        Nonce,
        TsInitiator,
        TsResponder,
    ]
    new_own = _only(events(sender), ChildSaRekeyed)
    assert (new_own.old_inbound_spi, new_own.old_outbound_spi) == (
        own.inbound_spi,
        own.outbound_spi,
    )
    # Make-before-break (RFC 7296 2.8): both SAs exist until the old one's Delete.
    _assert_esp_works(own, other)
    # INFORMATIONAL { D(ESP, old inbound SPI) } -->
    assert pair.transfer(sender) == 1
    header, data = _last(pair)
    assert header.exchange_type == ExchangeType.INFORMATIONAL
    assert open_sk(peer, data) == [Delete(ProtocolId.ESP, (ESP_SPI.pack(own.inbound_spi),))]
    assert events(peer) == [ChildSaDeleted(other.inbound_spi, other.outbound_spi)]
    #                 <-- INFORMATIONAL { D(ESP, its old inbound SPI) }
    assert pair.transfer(peer) == 1
    assert open_sk(sender, _last(pair)[1]) == [
        Delete(ProtocolId.ESP, (ESP_SPI.pack(other.inbound_spi),))
    ]
    assert events(sender) == [ChildSaDeleted(own.inbound_spi, own.outbound_spi)]
    assert sender.get_timer() is peer.get_timer() is None
    assert pair.transfer(sender) == pair.transfer(peer) == 0
    return new_own.established, new_peer.established


@pytest.mark.parametrize("pfs", PFS, ids=["no-pfs", "pfs-x25519"])
@pytest.mark.parametrize("starter", STARTERS)
def test_child_sa_rekey(starter: str, pfs: KeyExchangeMethod | None) -> None:
    pair = ike_pair(pfs_group=pfs)
    sender, _, own, other = _sides(pair, starter, *_children(pair))
    new_own, new_peer = _rekey_child(pair, sender, own, other)
    kes = [p for p in open_sk(sender, pair.wire[-3][1]) if isinstance(p, KeyExchange)]
    assert [ke.group for ke in kes] == ([] if pfs is None else [pfs])  # KEr only with PFS
    # The two halves mirror each other, with new SPIs and new keys (RFC 7296 2.17).
    assert new_own.outbound_spi == new_peer.inbound_spi
    assert new_own.inbound_spi == new_peer.outbound_spi
    assert new_own.inbound_spi not in (own.inbound_spi, own.outbound_spi)
    assert new_own.inbound_keymat not in (own.inbound_keymat, own.outbound_keymat)
    assert (new_own.local_ts, new_own.remote_ts) == (own.local_ts, own.remote_ts)
    _assert_esp_works(new_own, new_peer)
    _assert_esp_works(new_peer, new_own)
    assert pair.initiator.state is pair.responder.state is IkeSaState.ESTABLISHED


def test_rekeyed_child_sa_can_be_rekeyed_again_by_the_other_side() -> None:
    pair = ike_pair(pfs_group=KeyExchangeMethod.CURVE25519)
    child_i, child_r = _children(pair)
    new_i, new_r = _rekey_child(pair, pair.initiator, child_i, child_r)
    newer_r, newer_i = _rekey_child(pair, pair.responder, new_r, new_i)
    _assert_esp_works(newer_i, newer_r)
    _assert_esp_works(newer_r, newer_i)


def test_rekey_of_an_unknown_child_sa_gets_child_sa_not_found() -> None:
    pair = ike_pair()
    child_i, child_r = _children(pair)
    pair.initiator.rekey_child(child_i.inbound_spi, pair.clock.now)
    # CREATE_CHILD_SA { N(REKEY_SA), SA, Ni, TSi, TSr } --> (lost)
    pair.transfer(pair.initiator, drop={0})
    pair.responder.delete_child(child_r.inbound_spi, pair.clock.now)
    #                 <-- INFORMATIONAL { D(ESP, SPIr) }
    pair.transfer(pair.responder)
    # INFORMATIONAL { D(ESP, SPIi) } --> (RFC 7296 1.4.1: answered as usual; we were
    # rekeying it, not deleting it)
    pair.transfer(pair.initiator)
    assert open_sk(pair.responder, _last(pair)[1]) == [
        Delete(ProtocolId.ESP, (ESP_SPI.pack(child_i.inbound_spi),))
    ]
    assert events(pair.responder) == [ChildSaDeleted(child_r.inbound_spi, child_r.outbound_spi)]
    assert events(pair.initiator) == [ChildSaDeleted(child_i.inbound_spi, child_i.outbound_spi)]
    pair.fire_timer(pair.initiator)
    # CREATE_CHILD_SA { N(REKEY_SA), SA, Ni, TSi, TSr } --> (retransmitted)
    pair.transfer(pair.initiator)
    #                 <-- CREATE_CHILD_SA { N(CHILD_SA_NOT_FOUND) }  (RFC 7296 2.25.1)
    pair.transfer(pair.responder)
    assert open_sk(pair.initiator, _last(pair)[1]) == [Notify(NotifyType.CHILD_SA_NOT_FOUND)]
    # The SA is gone (its ChildSaDeleted came): the rekey is dropped quietly, with no
    # RekeyFailed naming an SA the driver no longer has (state.py rule 7).
    assert events(pair.initiator) == events(pair.responder) == []
    # RFC 7296 2.21.3: the IKE SA stands.
    assert pair.initiator.state is pair.responder.state is IkeSaState.ESTABLISHED
    assert pair.initiator.get_timer() is None


def test_lost_child_rekey_request_is_retransmitted() -> None:
    pair = ike_pair()
    child_i, child_r = _children(pair)
    pair.initiator.rekey_child(child_i.inbound_spi, pair.clock.now)
    # CREATE_CHILD_SA { N(REKEY_SA), SA, Ni, TSi, TSr } --> (lost)
    pair.transfer(pair.initiator, drop={0})
    assert pair.initiator.get_timer() == pytest.approx(pair.clock.now + 4.0)
    pair.fire_timer(pair.initiator)
    # CREATE_CHILD_SA { N(REKEY_SA), SA, Ni, TSi, TSr } --> (the same octets again)
    pair.transfer(pair.initiator)
    assert pair.wire[-1][1] == pair.wire[-2][1]
    new_r = _only(events(pair.responder), ChildSaRekeyed)
    #                 <-- CREATE_CHILD_SA { SA, Nr, TSi, TSr } (lost, then answered from the cache)
    pair.transfer(pair.responder, drop={0})
    pair.fire_timer(pair.initiator)
    pair.transfer(pair.initiator)
    assert pair.responder.drops["retransmitted request"] == 1
    pair.transfer(pair.responder)
    new_i = _only(events(pair.initiator), ChildSaRekeyed)
    assert events(pair.responder) == []  # processed once
    _assert_esp_works(new_i.established, new_r.established)
    # INFORMATIONAL { D(ESP) } -->  <-- { D(ESP) }
    pair.run()
    assert events(pair.initiator) == [ChildSaDeleted(child_i.inbound_spi, child_i.outbound_spi)]
    assert events(pair.responder) == [ChildSaDeleted(child_r.inbound_spi, child_r.outbound_spi)]


def test_pfs_mismatch_gets_no_proposal_chosen() -> None:
    pair = ike_pair(pfs_group=KeyExchangeMethod.CURVE25519, responder_pfs_group=None)
    child_i, _ = _children(pair)
    pair.initiator.rekey_child(child_i.inbound_spi, pair.clock.now)
    # CREATE_CHILD_SA { N(REKEY_SA), SA, Ni, KEi, TSi, TSr } -->
    #                 <-- CREATE_CHILD_SA { N(NO_PROPOSAL_CHOSEN) }
    pair.roundtrip()
    failed = _only(events(pair.initiator), RekeyFailed)
    assert failed.notify is NotifyType.NO_PROPOSAL_CHOSEN
    assert events(pair.responder) == []
    # The old Child SA is untouched and can be rekeyed again later.
    pair.initiator.rekey_child(child_i.inbound_spi, pair.clock.now)
    assert pair.transfer(pair.initiator) == 1


# --- IKE SA rekey -------------------------------------------------------------------------


def _rekey_ike(pair: IkePair, sender: IkeSession) -> IkeSaRekeyed:
    peer = pair.peer_of(sender)
    old = (sender.spi_i, sender.spi_r)
    sender.rekey_ike(pair.clock.now)
    # CREATE_CHILD_SA { SA, Ni, KEi } -->
    assert pair.transfer(sender) == 1
    header, data = _last(pair)
    assert header.exchange_type == ExchangeType.CREATE_CHILD_SA
    assert (header.spi_i, header.spi_r) == old
    request = _open_old(peer, data)
    assert [type(p) for p in request] == [SecurityAssociation, Nonce, KeyExchange]
    offer = request[0]
    assert isinstance(offer, SecurityAssociation)
    new_spi_i = offer.proposals[0].spi  # RFC 7296 3.3.1: 8 octets when rekeying
    assert len(new_spi_i) == 8
    rekeyed = _only(events(peer), IkeSaRekeyed)
    #                 <-- CREATE_CHILD_SA { SA, Nr, KEr }  (sealed under the old IKE SA)
    assert pair.transfer(peer) == 1
    header, _ = _last(pair)
    assert (header.spi_i, header.spi_r) == old
    assert _only(events(sender), IkeSaRekeyed) == rekeyed
    assert (rekeyed.old_spi_i, rekeyed.old_spi_r) == old
    assert rekeyed.spi_i == new_spi_i  # RFC 7296 2.18: the rekey initiator's SPI is SPIi
    assert (
        (sender.spi_i, sender.spi_r)
        == (peer.spi_i, peer.spi_r)
        == (
            rekeyed.spi_i,
            rekeyed.spi_r,
        )
    )
    # The rekey initiator is the new SA's original initiator (RFC 7296 2.18).
    assert sender.is_initiator
    assert not peer.is_initiator
    # INFORMATIONAL { D(IKE) } -->  (under the old IKE SA)
    assert pair.transfer(sender) == 1
    header, data = _last(pair)
    assert (header.spi_i, header.spi_r) == old
    assert header.exchange_type == ExchangeType.INFORMATIONAL
    assert events(peer) == []  # only the old SA went; the session lives on
    #                 <-- INFORMATIONAL { }
    assert pair.transfer(peer) == 1
    assert (peek_header(pair.wire[-1][1]).spi_i, peek_header(pair.wire[-1][1]).spi_r) == old
    assert events(sender) == []
    assert sender.get_timer() is peer.get_timer() is None
    assert sender.state is peer.state is IkeSaState.ESTABLISHED
    return rekeyed


@pytest.mark.parametrize("starter", STARTERS)
def test_ike_sa_rekey(starter: str) -> None:
    pair = ike_pair()
    child_i, child_r = _children(pair)
    sender: IkeSession = getattr(pair, starter)
    peer = pair.peer_of(sender)
    old_request = pair.wire[-2][1]  # the IKE_AUTH request, under the old SPIs
    rekeyed = _rekey_ike(pair, sender)
    # RFC 7296 2.18: message IDs restart at 0 on the new SA, both ways.
    for who in (sender, peer, sender):
        who.check_liveness(pair.clock.now)
        # INFORMATIONAL { } -->  <-- { }
        pair.transfer(who)
        header, _ = _last(pair)
        assert (header.spi_i, header.spi_r) == (rekeyed.spi_i, rekeyed.spi_r)
        assert header.initiator is who.is_initiator
        pair.transfer(pair.peer_of(who))
    ids = [
        peek_header(data).message_id
        for _, data, _, _ in pair.wire[-6:]
        if not peek_header(data).response
    ]
    assert ids == [0, 0, 1]
    # The Child SAs moved to the new IKE SA: a rekey of them works under it.
    _rekey_child(
        pair, peer, *((child_i, child_r) if peer is pair.initiator else (child_r, child_i))
    )
    # The old SPIs are gone: a message under them is not processed.
    before = dict(pair.responder.drops)
    pair.responder.receive_datagram(old_request, pair.source_of(pair.initiator), pair.clock.now)
    assert pair.responder.datagrams_to_send(pair.clock.now) == []
    assert pair.responder.drops != before
    assert events(pair.initiator) == events(pair.responder) == []


def test_ike_sa_rekey_twice_then_delete() -> None:
    pair = ike_pair()
    child_i, child_r = _children(pair)
    _rekey_ike(pair, pair.responder)
    _rekey_ike(pair, pair.responder)
    _rekey_child(pair, pair.initiator, child_i, child_r)
    _rekey_ike(pair, pair.initiator)
    pair.initiator.delete(pair.clock.now)
    # INFORMATIONAL { D(IKE) } -->  <-- { }
    pair.run()
    assert [type(e) for e in events(pair.responder)] == [ChildSaDeleted, IkeSaDeleted]
    assert pair.initiator.state is pair.responder.state is IkeSaState.CLOSED


def test_lost_ike_rekey_response_is_answered_from_the_old_sa_cache() -> None:
    pair = ike_pair()
    child_i, child_r = _children(pair)
    pair.initiator.rekey_ike(pair.clock.now)
    # CREATE_CHILD_SA { SA, Ni, KEi } -->
    pair.transfer(pair.initiator)
    rekeyed = _only(events(pair.responder), IkeSaRekeyed)
    #                 <-- CREATE_CHILD_SA { SA, Nr, KEr } (lost)
    pair.transfer(pair.responder, drop={0})
    pair.fire_timer(pair.initiator)
    # CREATE_CHILD_SA { SA, Ni, KEi } --> (retransmitted, under the old SPIs)
    pair.transfer(pair.initiator)
    assert pair.responder.drops["retransmitted request"] == 1
    #                 <-- the cached response
    pair.transfer(pair.responder)
    assert _only(events(pair.initiator), IkeSaRekeyed) == rekeyed
    # INFORMATIONAL { D(IKE) } -->  <-- { }
    pair.run()
    assert events(pair.initiator) == events(pair.responder) == []
    new_i, new_r = _rekey_child(pair, pair.initiator, child_i, child_r)
    _assert_esp_works(new_r, new_i)


def test_ike_rekey_with_invalid_ke_is_retried_in_the_group_asked_for() -> None:
    pair = ike_pair(
        ike=("aes256gcm16-prfsha256-x25519-ecp256",),
        responder_ike=("aes256gcm16-prfsha256-x25519-ecp256",),
    )
    establish(pair)
    # White-box: from now on the responder accepts only ECP-256.
    sa = pair.responder._sa
    sa.config = replace(sa.config, ike_proposals=("aes256gcm16-prfsha256-ecp256",))
    pair.initiator.rekey_ike(pair.clock.now)
    # CREATE_CHILD_SA { SA, Ni, KEi(x25519) } -->
    #                 <-- CREATE_CHILD_SA { N(INVALID_KE_PAYLOAD, ecp256) }
    pair.roundtrip()
    assert open_sk(pair.initiator, _last(pair)[1]) == [
        Notify(NotifyType.INVALID_KE_PAYLOAD, struct.pack("!H", KeyExchangeMethod.ECP_256))
    ]
    # CREATE_CHILD_SA { SA, Ni, KEi(ecp256) } -->  (a new exchange, RFC 7296 1.3)
    pair.transfer(pair.initiator)
    header, data = _last(pair)
    assert header.message_id == 3
    ke = [p for p in _open_old(pair.responder, data) if isinstance(p, KeyExchange)]
    assert [k.group for k in ke] == [KeyExchangeMethod.ECP_256]
    pair.run()
    assert isinstance(events(pair.initiator)[0], IkeSaRekeyed)
    assert pair.initiator.get_timer() is None
