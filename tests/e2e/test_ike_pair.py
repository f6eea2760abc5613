"""IKE_SA_INIT + IKE_AUTH between two in-memory IkeSession cores (RFC 7296 1.2).

Each step carries the RFC notation of what crosses the wire, as strongSwan's
exchange tests do. Loss, duplication and INVALID_KE come early: they are what
real networks and real peers do first.
"""

from __future__ import annotations

import ipaddress
from typing import TypeVar

import pytest

from common.esp.sa import InboundSa, OutboundSa
from common.esp.suites import suite_by_name
from common.ike.constants import ExchangeType, KeyExchangeMethod, NotifyType
from common.ike.events import (
    AddressAssigned,
    ChildSaEstablished,
    ChildSaFailed,
    ChildSaRekeyed,
    IkeEvent,
    IkeSaEstablished,
    IkeSaFailed,
)
from common.ike.message import (
    IkeHeader,
    IkeMessage,
    Payload,
    decode_message,
    encode_message,
    peek_header,
)
from common.ike.payloads import (
    Authentication,
    IdInitiator,
    KeyExchange,
    Notify,
    TrafficSelector,
)
from common.ike.session import IkeSaState
from tests.helpers.ike_pair import (
    DNS,
    DNS_V6,
    OFFICE,
    OFFICE_V6,
    POOL,
    POOL_V6,
    IkePair,
    MemoryPolicy,
    events,
    ike_pair,
    open_message,
)
from tests.helpers.packets import ipv4_icmp_echo

# Every suite x group x AUTH kind, with rekeys, DPD and delete: test_ike_matrix.py.


E = TypeVar("E")


def _one(found: list[IkeEvent], kind: type[E]) -> E:
    matches = [event for event in found if isinstance(event, kind)]
    assert len(matches) == 1, found
    return matches[0]


def _establish(pair: IkePair) -> tuple[list[IkeEvent], list[IkeEvent]]:
    pair.initiator.initiate(pair.clock.now)
    # IKE_SA_INIT: HDR, SAi1, KEi, Ni, N(NAT_D_S), N(NAT_D_D), N(FRAG_SUP) -->
    #          <-- HDR, SAr1, KEr, Nr, N(NAT_D_S), N(NAT_D_D), N(FRAG_SUP)
    assert pair.roundtrip() == 2
    # IKE_AUTH: HDR, SK {IDi, IDr, AUTH, CP(CFG_REQUEST), SAi2, TSi, TSr} -->
    #       <-- HDR, SK {IDr, AUTH, CP(CFG_REPLY), SAr2, TSi, TSr}
    assert pair.roundtrip() == 2
    assert pair.roundtrip() == 0
    return events(pair.initiator), events(pair.responder)


def _assert_esp_works(sender: ChildSaEstablished, receiver: ChildSaEstablished) -> None:
    suite = suite_by_name(sender.esp_suite)
    outbound = OutboundSa(sender.outbound_spi, suite, sender.outbound_keymat)
    inbound = InboundSa(receiver.inbound_spi, suite, receiver.inbound_keymat)
    packet = ipv4_icmp_echo("10.99.0.2", "10.1.0.1")
    protected = outbound.encapsulate(packet)
    assert isinstance(protected, bytes)
    assert inbound.decapsulate(protected) == packet


def test_address_dns_and_subnets_assigned() -> None:
    pair = ike_pair()
    initiator_events, _ = _establish(pair)
    assigned = _one(initiator_events, AddressAssigned)
    assert assigned.address == POOL[0]
    assert assigned.dns == DNS
    assert assigned.subnets == OFFICE
    child = _one(initiator_events, ChildSaEstablished)
    # TSi = the leased address /32, TSr = the identity's subnets.
    assert [(ts.start_address, ts.end_address) for ts in child.local_ts] == [(POOL[0], POOL[0])]
    assert [
        ipaddress.summarize_address_range(ts.start_address, ts.end_address).__next__()
        for ts in child.remote_ts
    ] == list(OFFICE)


def _ranges(selectors: tuple[TrafficSelector, ...]) -> list[tuple[object, object]]:
    return [(ts.start_address, ts.end_address) for ts in selectors]


def _dual_stack_policy(**changes: object) -> MemoryPolicy:
    policy = MemoryPolicy(pool_v6=list(POOL_V6), dns=(*DNS, *DNS_V6), subnets=(*OFFICE, *OFFICE_V6))
    for name, value in changes.items():
        setattr(policy, name, value)
    return policy


def test_dual_stack_initiator_gets_both_families() -> None:
    pair = ike_pair(policy=_dual_stack_policy(), request_ipv6=True)
    # IKE_AUTH: HDR, SK {IDi, IDr, AUTH, CP(CFG_REQUEST: IP4_ADDRESS, IP6_ADDRESS, IP4_DNS,
    #                    IP6_DNS), SAi2, TSi(0.0.0.0/0, ::/0), TSr(0.0.0.0/0, ::/0)} -->
    #       <-- HDR, SK {IDr, AUTH, CP(CFG_REPLY), SAr2, TSi(v4/32, v6/128), TSr(subnets)}
    initiator_events, responder_events = _establish(pair)
    assigned = _one(initiator_events, AddressAssigned)
    assert assigned.address == POOL[0]
    assert assigned.address_v6 == POOL_V6[0]
    assert assigned.prefix_length_v6 == 128  # RFC 7296 3.15.1, as strongSwan sends it
    assert (assigned.dns, assigned.dns_v6) == (DNS, DNS_V6)
    assert (assigned.subnets, assigned.subnets_v6) == (OFFICE, OFFICE_V6)
    assert assigned.addresses == (POOL[0], POOL_V6[0])
    child_i = _one(initiator_events, ChildSaEstablished)
    child_r = _one(responder_events, ChildSaEstablished)
    # RFC 7296 2.9: TSi narrowed to the leased addresses, one per family.
    assert _ranges(child_i.local_ts) == [(POOL[0], POOL[0]), (POOL_V6[0], POOL_V6[0])]
    expected_tsr = [(net.network_address, net.broadcast_address) for net in (*OFFICE, *OFFICE_V6)]
    assert _ranges(child_i.remote_ts) == expected_tsr
    assert (child_i.local_ts, child_i.remote_ts) == (child_r.remote_ts, child_r.local_ts)
    _assert_esp_works(child_i, child_r)
    _assert_esp_works(child_r, child_i)
    # A rekey proposes the same two-family selectors and keeps them (RFC 7296 1.3.3):
    # CREATE_CHILD_SA { N(REKEY_SA), SA, Ni, TSi(v4/32, v6/128), TSr } -->  <-- { ... }
    pair.initiator.rekey_child(child_i.inbound_spi, pair.clock.now)
    pair.run()
    rekeyed = _one(events(pair.initiator), ChildSaRekeyed)
    assert (rekeyed.local_ts, rekeyed.remote_ts) == (child_i.local_ts, child_i.remote_ts)


def test_dual_stack_initiator_of_an_ipv4_only_pool_gets_ipv4_alone() -> None:
    # A family the pool lacks is left out, not a failure (RFC 7296 3.15.4).
    pair = ike_pair(policy=_dual_stack_policy(pool_v6=[]), request_ipv6=True)
    initiator_events, _ = _establish(pair)
    assigned = _one(initiator_events, AddressAssigned)
    assert (assigned.address, assigned.address_v6) == (POOL[0], None)
    # Nothing of the family without an inner source: no v6 DNS, subnets or TSr.
    assert (assigned.dns_v6, assigned.subnets_v6) == ((), ())
    child = _one(initiator_events, ChildSaEstablished)
    assert _ranges(child.local_ts) == [(POOL[0], POOL[0])]
    assert all(ts.start_address.version == 4 for ts in child.remote_ts)


def test_ipv6_only_pool_assigns_ipv6_alone() -> None:
    pair = ike_pair(policy=_dual_stack_policy(pool=[]), request_ipv6=True)
    initiator_events, _ = _establish(pair)
    assigned = _one(initiator_events, AddressAssigned)
    assert (assigned.address, assigned.address_v6) == (None, POOL_V6[0])
    assert (assigned.dns, assigned.subnets) == ((), ())
    child = _one(initiator_events, ChildSaEstablished)
    assert _ranges(child.local_ts) == [(POOL_V6[0], POOL_V6[0])]
    assert _ranges(child.remote_ts) == [
        (net.network_address, net.broadcast_address) for net in OFFICE_V6
    ]


def test_ipv4_only_initiator_of_a_dual_stack_pool_gets_ipv4_alone() -> None:
    policy = _dual_stack_policy()
    pair = ike_pair(policy=policy)
    initiator_events, _ = _establish(pair)
    assigned = _one(initiator_events, AddressAssigned)
    assert (assigned.address, assigned.address_v6) == (POOL[0], None)
    assert (assigned.dns_v6, assigned.subnets_v6) == ((), ())
    assert policy.pool_v6 == list(POOL_V6)  # not asked for, not leased


def test_no_family_leased_is_internal_address_failure() -> None:
    pair = ike_pair(policy=_dual_stack_policy(pool=[], pool_v6=[]), request_ipv6=True)
    initiator_events, _ = _establish(pair)
    assert _one(initiator_events, ChildSaFailed).notify is NotifyType.INTERNAL_ADDRESS_FAILURE
    assert not [e for e in initiator_events if isinstance(e, AddressAssigned)]


def test_keys_stay_out_of_reprs() -> None:
    pair = ike_pair()
    initiator_events, _ = _establish(pair)
    child = _one(initiator_events, ChildSaEstablished)
    assert child.outbound_keymat.hex() not in repr(child)
    assert "keymat" not in repr(child)


def test_wrong_psk_is_answered_with_authentication_failed() -> None:
    pair = ike_pair(psk=b"not the right key")
    pair.initiator.initiate(pair.clock.now)
    # IKE_SA_INIT: HDR, SAi1, KEi, Ni -->  <-- HDR, SAr1, KEr, Nr
    pair.roundtrip()
    # IKE_AUTH: HDR, SK {IDi, AUTH(wrong), ...} -->  <-- HDR, SK {N(AUTHENTICATION_FAILED)}
    pair.roundtrip()
    initiator_events, responder_events = events(pair.initiator), events(pair.responder)
    assert _one(initiator_events, IkeSaFailed).notify is NotifyType.AUTHENTICATION_FAILED
    assert _one(responder_events, IkeSaFailed).notify is NotifyType.AUTHENTICATION_FAILED
    for found in (initiator_events, responder_events):
        assert not [e for e in found if isinstance(e, IkeSaEstablished | ChildSaEstablished)]
    assert pair.initiator.state is pair.responder.state is IkeSaState.CLOSED
    assert pair.initiator.get_timer() is None


def test_unknown_identity_is_refused() -> None:
    pair = ike_pair(policy=MemoryPolicy(psks={}))
    initiator_events, responder_events = _establish(pair)
    assert _one(initiator_events, IkeSaFailed).notify is NotifyType.AUTHENTICATION_FAILED
    assert _one(responder_events, IkeSaFailed).notify is NotifyType.AUTHENTICATION_FAILED


def test_ike_proposal_mismatch_is_no_proposal_chosen() -> None:
    pair = ike_pair(ike=("aes256gcm16-prfsha256-x25519",), responder_ike=("aes128-sha256-x25519",))
    pair.initiator.initiate(pair.clock.now)
    # IKE_SA_INIT: HDR, SAi1, KEi, Ni -->  <-- HDR(A,0), N(NO_PROPOSAL_CHOSEN)
    pair.roundtrip()
    assert _one(events(pair.initiator), IkeSaFailed).notify is NotifyType.NO_PROPOSAL_CHOSEN
    assert _one(events(pair.responder), IkeSaFailed).notify is NotifyType.NO_PROPOSAL_CHOSEN
    assert pair.initiator.get_timer() is None


def test_invalid_ke_payload_retry() -> None:
    pair = ike_pair(
        ike=("aes256gcm16-prfsha256-ecp256-x25519",),
        responder_ike=("aes256gcm16-prfsha256-x25519",),
    )
    pair.initiator.initiate(pair.clock.now)
    # IKE_SA_INIT: HDR, SAi1, KEi(19), Ni -->  <-- HDR(A,0), N(INVALID_KE_PAYLOAD(31))
    pair.roundtrip()
    first_ke = decode_message(pair.wire[0][1]).get(KeyExchange)
    refusal = decode_message(pair.wire[1][1]).notify(NotifyType.INVALID_KE_PAYLOAD)
    assert first_ke is not None
    assert first_ke.group == KeyExchangeMethod.ECP_256
    assert refusal is not None
    assert refusal.data == b"\x00\x1f"
    assert pair.responder.state is IkeSaState.INITIAL  # RFC 7296 1.2: no state kept
    # IKE_SA_INIT: HDR, SAi1, KEi(31), Ni -->  <-- HDR, SAr1, KEr, Nr
    # IKE_AUTH ...
    pair.run()
    retry = decode_message(pair.wire[2][1])
    assert retry.header.message_id == 0
    retry_ke = retry.get(KeyExchange)
    assert retry_ke is not None
    assert retry_ke.group == KeyExchangeMethod.CURVE25519
    assert _one(events(pair.initiator), IkeSaEstablished).group == "CURVE25519"
    assert _one(events(pair.responder), ChildSaEstablished)


def test_invalid_ke_for_a_group_we_do_not_offer_fails() -> None:
    pair = ike_pair(
        ike=("aes256gcm16-prfsha256-ecp256",), responder_ike=("aes256gcm16-prfsha256-ecp256",)
    )
    pair.initiator.initiate(pair.clock.now)
    (request, destination) = pair.initiator.datagrams_to_send(pair.clock.now)[0]
    spi_i = request[:8]
    header = IkeHeader(spi_i, bytes(8), ExchangeType.IKE_SA_INIT, 0, False, True)
    forged = encode_message(
        IkeMessage(header, (Notify(NotifyType.INVALID_KE_PAYLOAD, b"\x00\x0e"),))
    )
    pair.initiator.receive_datagram(forged, destination, pair.clock.now)
    assert _one(events(pair.initiator), IkeSaFailed).notify is NotifyType.INVALID_KE_PAYLOAD


def test_lost_ike_sa_init_request_is_retransmitted() -> None:
    pair = ike_pair()
    pair.initiator.initiate(pair.clock.now)
    start = pair.clock.now
    # IKE_SA_INIT: HDR, SAi1, KEi, Ni --> (lost)
    pair.transfer(pair.initiator, drop={0})
    assert pair.transfer(pair.responder) == 0
    assert pair.initiator.get_timer() == pytest.approx(start + 4.0)
    pair.fire_timer(pair.initiator)
    # IKE_SA_INIT: HDR, SAi1, KEi, Ni --> (the same octets again)
    pair.run()
    assert pair.wire[0][1] == pair.wire[1][1]
    assert _one(events(pair.initiator), ChildSaEstablished)
    assert _one(events(pair.responder), ChildSaEstablished)


def test_duplicated_ike_auth_request_gets_the_cached_response() -> None:
    pair = ike_pair()
    pair.initiator.initiate(pair.clock.now)
    # IKE_SA_INIT: HDR, SAi1, KEi, Ni -->  <-- HDR, SAr1, KEr, Nr
    pair.roundtrip()
    # IKE_AUTH: HDR, SK {IDi, AUTH, CP, SAi2, TSi, TSr} --> (twice)
    pair.transfer(pair.initiator, duplicate={0})
    responses = pair.responder.datagrams_to_send(pair.clock.now)
    # <-- HDR, SK {IDr, AUTH, CP, SAr2, TSi, TSr} (twice, byte for byte)
    assert len(responses) == 2
    assert responses[0] == responses[1]
    assert pair.responder.drops["retransmitted request"] == 1
    responder_events = events(pair.responder)
    assert len([e for e in responder_events if isinstance(e, ChildSaEstablished)]) == 1
    assert len(pair.policy.leases) == 1
    for data, _ in responses:
        pair.initiator.receive_datagram(data, pair.source_of(pair.responder), pair.clock.now)
    assert len([e for e in events(pair.initiator) if isinstance(e, ChildSaEstablished)]) == 1
    assert pair.initiator.drops["unexpected response"] == 1


def test_lost_ike_auth_response_is_answered_from_the_cache() -> None:
    pair = ike_pair()
    pair.initiator.initiate(pair.clock.now)
    pair.roundtrip()
    # IKE_AUTH: HDR, SK {...} -->  <-- HDR, SK {...} (lost)
    pair.transfer(pair.initiator)
    pair.transfer(pair.responder, drop={0})
    pair.fire_timer(pair.initiator)
    # IKE_AUTH: HDR, SK {...} --> (retransmitted)  <-- the cached response
    pair.run()
    assert pair.wire[-1][1] == pair.wire[-3][1]
    assert _one(events(pair.initiator), ChildSaEstablished)
    assert _one(events(pair.responder), ChildSaEstablished)


def test_tampered_ike_auth_request_is_dropped_silently() -> None:
    pair = ike_pair()
    pair.initiator.initiate(pair.clock.now)
    pair.roundtrip()
    (request, _) = pair.initiator.datagrams_to_send(pair.clock.now)[0]
    tampered = request[:-1] + bytes((request[-1] ^ 1,))
    pair.responder.receive_datagram(tampered, pair.source_of(pair.initiator), pair.clock.now)
    # RFC 7296 2.21: no answer, no state change.
    assert pair.responder.datagrams_to_send(pair.clock.now) == []
    assert pair.responder.drops["IntegrityCheckFailed"] == 1
    assert pair.responder.state is IkeSaState.SA_INIT_DONE
    pair.responder.receive_datagram(request, pair.source_of(pair.initiator), pair.clock.now)
    pair.transfer(pair.responder)
    assert _one(events(pair.initiator), ChildSaEstablished)


def test_gives_up_after_the_retransmissions() -> None:
    pair = ike_pair()
    pair.initiator.initiate(pair.clock.now)
    start = pair.clock.now
    deadlines = []
    while pair.initiator.get_timer() is not None:
        pair.transfer(pair.initiator, drop={0})
        deadlines.append(pair.initiator.get_timer())
        pair.fire_timer(pair.initiator)
    sent = [entry for entry in pair.wire if entry[0] == "i->r"]
    assert len(sent) == 6  # the request and 5 retransmissions
    assert len({entry[1] for entry in sent}) == 1
    # 4 s x 1.8^n after each transmission (defaults.py)
    expected, at = [], start
    for n in range(6):
        at += 4.0 * 1.8**n
        expected.append(at)
    assert deadlines == pytest.approx(expected)
    failed = _one(events(pair.initiator), IkeSaFailed)
    assert failed.reason == "peer unreachable"
    assert failed.notify is None


def test_esp_proposal_mismatch_keeps_the_ike_sa() -> None:
    pair = ike_pair(esp=("aes256gcm16",), responder_esp=("chacha20poly1305",))
    initiator_events, responder_events = _establish(pair)
    assert _one(initiator_events, IkeSaEstablished)
    assert _one(initiator_events, ChildSaFailed).notify is NotifyType.NO_PROPOSAL_CHOSEN
    assert _one(responder_events, ChildSaFailed).notify is NotifyType.NO_PROPOSAL_CHOSEN
    assert not [e for e in initiator_events if isinstance(e, ChildSaEstablished)]


def test_exhausted_pool_is_internal_address_failure() -> None:
    pair = ike_pair(policy=MemoryPolicy(pool=[]))
    initiator_events, _ = _establish(pair)
    assert _one(initiator_events, ChildSaFailed).notify is NotifyType.INTERNAL_ADDRESS_FAILURE
    assert not [e for e in initiator_events if isinstance(e, AddressAssigned)]


def test_no_allowed_subnet_is_ts_unacceptable() -> None:
    pair = ike_pair(policy=MemoryPolicy(subnets=()))
    initiator_events, _ = _establish(pair)
    assert _one(initiator_events, ChildSaFailed).notify is NotifyType.TS_UNACCEPTABLE


def test_no_nat_stays_on_port_500() -> None:
    pair = ike_pair()
    _establish(pair)
    assert not pair.initiator.use_nat_t
    assert not pair.responder.use_nat_t
    assert {destination[1] for _, _, _, destination in pair.wire} == {500}


def test_forced_encapsulation_moves_both_sides_to_4500() -> None:
    pair = ike_pair(force_encapsulation=True)
    initiator_events, _ = _establish(pair)
    assert _one(initiator_events, ChildSaEstablished)
    assert pair.initiator.use_nat_t
    assert pair.responder.use_nat_t
    ports = [(source[1], destination[1]) for _, _, source, destination in pair.wire]
    # IKE_SA_INIT on 500, IKE_AUTH on 4500 both ways (RFC 7296 2.23).
    assert ports == [(500, 500), (500, 500), (4500, 4500), (4500, 4500)]
    assert pair.initiator.remote_addr[1] == 4500


def test_nat_is_detected_and_both_sides_move_to_4500() -> None:
    pair = ike_pair(behind_nat=True)
    initiator_events, _ = _establish(pair)
    assert _one(initiator_events, ChildSaEstablished)
    assert pair.initiator.use_nat_t
    assert pair.responder.use_nat_t
    assert [destination[1] for _, _, _, destination in pair.wire] == [500, 500, 4500, 4500]


def _ike_auth_request(pair: IkePair) -> list[Payload]:
    """The IKE_AUTH request's payloads (all its datagrams, SKF fragments or not)."""
    datagrams = [
        data
        for name, data, _, _ in pair.wire
        if name == "i->r" and peek_header(data).exchange_type == ExchangeType.IKE_AUTH
    ]
    return open_message(pair.responder, datagrams)


def test_initial_contact_is_sent_by_default_and_reported_by_the_responder() -> None:
    pair = ike_pair()
    initiator_events, responder_events = _establish(pair)
    # IKE_AUTH: HDR, SK {IDi, N(INITIAL_CONTACT), IDr, AUTH, CP, SAi2, TSi, TSr} -->
    request = _ike_auth_request(pair)
    kinds = [type(payload) for payload in request]
    (notify,) = [p for p in request if isinstance(p, Notify)]
    assert (notify.notify_type, notify.protocol_id, notify.spi, notify.data) == (
        NotifyType.INITIAL_CONTACT,
        0,
        b"",
        b"",
    )
    # RFC 7296 1.2: after IDi (and any CERT), before IDr and AUTH.
    assert kinds.index(IdInitiator) < kinds.index(Notify) < kinds.index(Authentication)
    # RFC 7296 2.4: the responder's owner may now drop older SAs of this identity.
    assert _one(responder_events, IkeSaEstablished).initial_contact
    assert not _one(initiator_events, IkeSaEstablished).initial_contact


def test_initial_contact_off_is_not_sent_nor_reported() -> None:
    pair = ike_pair(initial_contact=False)
    initiator_events, responder_events = _establish(pair)
    assert not [p for p in _ike_auth_request(pair) if isinstance(p, Notify)]
    assert not _one(responder_events, IkeSaEstablished).initial_contact
    assert not _one(initiator_events, IkeSaEstablished).initial_contact


def test_initial_contact_of_a_peer_that_fails_authentication_is_not_reported() -> None:
    pair = ike_pair(psk=b"not the key")
    _, responder_events = _establish(pair)
    assert NotifyType.INITIAL_CONTACT in [
        p.notify_type for p in _ike_auth_request(pair) if isinstance(p, Notify)
    ]
    assert not [e for e in responder_events if isinstance(e, IkeSaEstablished)]
