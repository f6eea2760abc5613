"""IKEv2 fragmentation (RFC 7383) between two in-memory IkeSession cores.

Both sides announce N(IKEV2_FRAGMENTATION_SUPPORTED) in IKE_SA_INIT (2.3).
IKE_AUTH with RSA certificates and an intermediate CA is about 2.1 kB, so
with ``fragment_size`` 576 it travels as several ``HDR, SKF {...}``
messages, each sealed on its own (2.5), all with Message ID 1::

    HDR(SKF 1/n) {IDi...}, HDR(SKF 2/n), ... -->
                         <-- HDR(SKF 1/m) {IDr...}, HDR(SKF 2/m), ...

Loss, duplication and reordering are healed by retransmitting every fragment
(2.6); a retransmitted request's fragment 1, and only it, brings the whole
response back (2.6.1). ``fragment_size`` is set on the sessions' configurations
after ``ike_pair`` made them (white-box, as ``ike_pair.open_sk`` is).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from common.ike.constants import ExchangeType, NotifyType, PayloadType
from common.ike.events import ChildSaEstablished, IkeEvent, IkeSaEstablished
from common.ike.fragments import MIN_FRAGMENT_SIZE, is_fragment
from common.ike.message import (
    EncryptedFragment,
    EncryptedPayload,
    IkeMessage,
    decode_message,
    encode_message,
    peek_header,
)
from common.ike.payloads import Certificate, IdInitiator, IdResponder, Notify
from common.ike.policy import IkeConfiguration
from common.ike.session import IkeSaState, IkeSession
from common.ike.tasks.ike_init import IkeInit
from tests.helpers.ike_pair import (
    INITIATOR_IP,
    Credentials,
    IkePair,
    MemoryPolicy,
    events,
    ike_pair,
    open_message,
)
from tests.helpers.pki import EPOCH, Issued, make_ca, make_leaf

SMALL = 576  # UDP payload budget of one fragment in these tests
MARKER = 4  # RFC 3948 2.2 non-ESP marker, counted on port 4500 (RFC 7383 2.5.1)


@pytest.fixture(scope="module")
def pki() -> tuple[Issued, Issued, Issued, Issued]:
    """Root (ECDSA), an RSA intermediate, and RSA leaves for alice and the gateway."""
    root = make_ca()
    intermediate = make_ca("Outpost Issuing CA", issuer=root, key_kind="rsa2048")
    client = make_leaf(
        intermediate, "alice", key_kind="rsa2048", emails=("alice@example.org",), rsa_pss=True
    )
    gateway = make_leaf(
        intermediate,
        "vpn.example.org",
        key_kind="rsa2048",
        dns_names=("vpn.example.org",),
        eku=(ExtendedKeyUsageOID.SERVER_AUTH,),
        rsa_pss=True,
    )
    return root, intermediate, client, gateway


def _pair(
    pki: tuple[Issued, Issued, Issued, Issued],
    fragment_size: int | None = SMALL,
    *,
    client_signs: bool = True,
    **kwargs: object,
) -> IkePair:
    """Both sides sign with an RSA leaf and send the intermediate; both trust the root."""
    root, intermediate, client, gateway = pki
    chain = (intermediate.certificate,)
    pair = ike_pair(
        policy=MemoryPolicy(cas=(root.certificate,)),
        initiator_credentials=(
            Credentials(client.key, client.certificate, chain, (root.certificate,))
            if client_signs
            else Credentials(cas=(root.certificate,))
        ),
        responder_credentials=Credentials(gateway.key, gateway.certificate, chain),
        validation_time=EPOCH,
        **kwargs,  # type: ignore[arg-type]
    )
    for session in (pair.initiator, pair.responder):
        _set_fragment_size(session, fragment_size)
    return pair


def _set_fragment_size(session: IkeSession, size: int | None) -> None:
    config: IkeConfiguration = session._sa.config
    session._sa.config = replace(config, fragment_size=size)


def _ike_sa_init(pair: IkePair) -> None:
    """``HDR, SAi1, KEi, Ni -->  <-- HDR, SAr1, KEr, Nr``: IKE_AUTH is queued next."""
    pair.initiator.initiate(pair.clock.now)
    assert pair.transfer(pair.initiator) == 1
    assert pair.transfer(pair.responder) == 1


def _ike_auth(pair: IkePair, direction: str) -> list[bytes]:
    """Every IKE_AUTH datagram sent ``direction`` so far."""
    return [
        data
        for name, data, _src, _dst in pair.wire
        if name == direction and peek_header(data).exchange_type == ExchangeType.IKE_AUTH
    ]


def _one(found: list[IkeEvent], kind: type) -> None:
    assert len([event for event in found if isinstance(event, kind)]) == 1, found


def _assert_established(pair: IkePair) -> None:
    assert pair.initiator.state is pair.responder.state is IkeSaState.ESTABLISHED
    for session in (pair.initiator, pair.responder):
        found = events(session)
        _one(found, IkeSaEstablished)  # exactly once: no message processed twice
        _one(found, ChildSaEstablished)


def _assert_fragments(datagrams: list[bytes], budget: int, *, marker: bool, first: int) -> None:
    """RFC 7383 2.5: n fragments numbered 1..n, one Message ID, each within ``budget``."""
    total = len(datagrams)
    for number, data in enumerate(datagrams, start=1):
        assert len(data) + (MARKER if marker else 0) <= budget
        message = decode_message(data)
        (skf,) = message.payloads
        assert isinstance(skf, EncryptedFragment)
        assert (skf.fragment_number, skf.total_fragments) == (number, total)
        # Only the first fragment names the first inner payload; the others carry 0.
        assert skf.first_payload == (first if number == 1 else PayloadType.NO_NEXT_PAYLOAD)
        assert message.header.message_id == 1


# --- sending and reassembling ----------------------------------------------------------


@pytest.mark.parametrize(
    "ike",
    ["aes256gcm16-prfsha256-x25519", "aes128-sha256-x25519", "chacha20poly1305-prfsha256-x25519"],
)
def test_ike_auth_travels_in_fragments(
    pki: tuple[Issued, Issued, Issued, Issued], ike: str
) -> None:
    pair = _pair(pki, ike=(ike,))
    _ike_sa_init(pair)
    # HDR, SKF(1/n) {IDi, CERT, CERT, AUTH, ...}, ..., HDR, SKF(n/n) -->
    sent = pair.transfer(pair.initiator)
    assert pair.responder.state is IkeSaState.ESTABLISHED
    # <-- HDR, SKF(1/m) {IDr, CERT, CERT, AUTH, ...}, ...
    received = pair.transfer(pair.responder)
    _assert_established(pair)
    requests, responses = _ike_auth(pair, "i->r"), _ike_auth(pair, "r->i")
    assert (len(requests), len(responses)) == (sent, received)
    assert sent >= 4  # a 2.1 kB message in 576-octet datagrams
    assert received >= 4
    _assert_fragments(requests, SMALL, marker=False, first=PayloadType.IDI)
    _assert_fragments(responses, SMALL, marker=False, first=PayloadType.IDR)
    request = open_message(pair.responder, requests)
    response = open_message(pair.initiator, responses)
    assert isinstance(request[0], IdInitiator)
    assert isinstance(response[0], IdResponder)
    assert len([p for p in request if isinstance(p, Certificate)]) == 2
    assert len([p for p in response if isinstance(p, Certificate)]) == 2


def test_non_esp_marker_counts_on_port_4500(pki: tuple[Issued, Issued, Issued, Issued]) -> None:
    """RFC 7383 2.5.1: on port 4500 the marker takes 4 octets of the budget."""
    pair = _pair(pki, force_encapsulation=True)
    _ike_sa_init(pair)
    pair.run()
    _assert_established(pair)
    assert pair.initiator.use_nat_t
    assert pair.responder.use_nat_t
    requests, responses = _ike_auth(pair, "i->r"), _ike_auth(pair, "r->i")
    _assert_fragments(requests, SMALL, marker=True, first=PayloadType.IDI)
    _assert_fragments(responses, SMALL, marker=True, first=PayloadType.IDR)
    assert max(len(data) for data in requests + responses) > SMALL - 2 * MARKER  # filled


def test_default_size_fragments_above_1280(pki: tuple[Issued, Issued, Issued, Issued]) -> None:
    """Without a configured size, IPv4 gets 1280: the 2.1 kB IKE_AUTH takes 2 fragments."""
    pair = _pair(pki, None)
    _ike_sa_init(pair)
    pair.run()
    _assert_established(pair)
    requests = _ike_auth(pair, "i->r")
    assert len(requests) == 2
    _assert_fragments(requests, 1280, marker=False, first=PayloadType.IDI)


def test_small_messages_are_not_fragmented(pki: tuple[Issued, Issued, Issued, Issued]) -> None:
    """A PSK IKE_AUTH request fits: one SK message; the certificate response does not."""
    pair = _pair(pki, client_signs=False)
    _ike_sa_init(pair)
    pair.run()
    _assert_established(pair)
    (request,) = _ike_auth(pair, "i->r")
    assert isinstance(decode_message(request).payloads[0], EncryptedPayload)
    assert len(_ike_auth(pair, "r->i")) > 1
    # Later exchanges are small too: an empty INFORMATIONAL stays one SK message.
    pair.initiator.check_liveness(pair.clock.now)
    assert pair.roundtrip() == 2


def test_fragment_size_below_the_minimum_is_refused() -> None:
    pair = ike_pair()
    config = replace(pair.initiator._sa.config, fragment_size=MIN_FRAGMENT_SIZE - 1)
    with pytest.raises(ValueError, match="fragment_size"):
        IkeSession(
            config,
            is_initiator=True,
            local_addr=(INITIATOR_IP, 500),
            remote_addr=("198.51.100.1", 500),
        )


# --- loss, duplication, reordering, retransmission ----------------------------------------


def test_lost_duplicated_and_reordered_fragments(
    pki: tuple[Issued, Issued, Issued, Issued],
) -> None:
    pair = _pair(pki)
    _ike_sa_init(pair)
    # Fragment 2 lost, the first and last twice, all backwards: nothing to answer yet.
    sent = pair.transfer(pair.initiator, drop={1}, duplicate={0, 3}, reorder=True)
    assert sent >= 4
    assert pair.responder.state is IkeSaState.SA_INIT_DONE
    assert pair.transfer(pair.responder) == 0
    # RFC 7383 2.6: the initiator retransmits every fragment, octet for octet.
    pair.fire_timer(pair.initiator)
    assert pair.transfer(pair.initiator) == sent
    assert _ike_auth(pair, "i->r")[:sent] == _ike_auth(pair, "i->r")[sent:][::-1]
    # Fragment 2 completed the message; 3.. came after the answer and are ignored.
    assert pair.responder.state is IkeSaState.ESTABLISHED
    assert pair.responder.drops["retransmitted fragment"] == sent - 2
    # The response's first fragment is lost: the initiator cannot finish.
    answered = pair.transfer(pair.responder, drop={0})
    assert answered >= 4
    assert pair.initiator.state is IkeSaState.AUTH_SENT
    # Retransmitted request: fragment 1 brings back the whole response once,
    # the other fragments are ignored (RFC 7383 2.6.1).
    pair.fire_timer(pair.initiator)
    assert pair.transfer(pair.initiator) == sent
    assert pair.responder.drops["retransmitted request"] == 1
    assert pair.responder.drops["retransmitted fragment"] == (sent - 2) + (sent - 1)
    assert pair.transfer(pair.responder, duplicate={1}) == answered
    _assert_established(pair)
    # Fragment 1 completed the response (2.. were kept from before): the
    # rest of the replay and the duplicate change nothing.
    assert pair.initiator.drops["unexpected response"] == (answered - 1) + 1


def test_duplicates_after_completion_are_not_processed_again(
    pki: tuple[Issued, Issued, Issued, Issued],
) -> None:
    pair = _pair(pki)
    _ike_sa_init(pair)
    datagrams = pair.initiator.datagrams_to_send(pair.clock.now)
    source = pair.source_of(pair.initiator)
    for data, _destination in datagrams + datagrams[1:]:
        pair.responder.receive_datagram(data, source, pair.clock.now)
    # One response, from the first complete set; the later non-first fragments
    # of the answered request are ignored.
    answered = len(pair.responder.datagrams_to_send(pair.clock.now))
    assert answered >= 4
    assert pair.responder.drops["retransmitted fragment"] == len(datagrams) - 1
    assert len([e for e in events(pair.responder) if isinstance(e, IkeSaEstablished)]) == 1


def test_unfragmented_request_retransmission_replays_every_response_fragment(
    pki: tuple[Issued, Issued, Issued, Issued],
) -> None:
    pair = _pair(pki, client_signs=False)
    _ike_sa_init(pair)
    assert pair.transfer(pair.initiator) == 1  # PSK: HDR, SK {IDi, AUTH, ...} -->
    answered = pair.transfer(pair.responder, drop={2})
    assert answered >= 3
    pair.fire_timer(pair.initiator)
    assert pair.transfer(pair.initiator) == 1
    assert pair.responder.drops["retransmitted request"] == 1
    assert pair.transfer(pair.responder) == answered  # RFC 7383 2.6: all of them
    _assert_established(pair)


def test_tampered_fragment_is_dropped_counted_and_healed(
    pki: tuple[Issued, Issued, Issued, Issued],
) -> None:
    pair = _pair(pki)
    _ike_sa_init(pair)
    datagrams = [data for data, _ in pair.initiator.datagrams_to_send(pair.clock.now)]
    tampered = bytearray(datagrams[1])
    tampered[-1] ^= 0x80  # in the ICV
    source = pair.source_of(pair.initiator)
    for data in (datagrams[0], bytes(tampered), *datagrams[2:]):
        pair.responder.receive_datagram(data, source, pair.clock.now)
    assert pair.responder.drops["IntegrityCheckFailed"] == 1
    assert pair.responder.datagrams_to_send(pair.clock.now) == []
    assert pair.responder.state is IkeSaState.SA_INIT_DONE
    pair.fire_timer(pair.initiator)  # every fragment again
    pair.run()
    _assert_established(pair)
    assert pair.responder.drops["IntegrityCheckFailed"] == 1


def test_forged_fragment_of_an_answered_request_is_dropped(
    pki: tuple[Issued, Issued, Issued, Issued],
) -> None:
    """A fragment 1 that does not authenticate never brings back the response."""
    pair = _pair(pki)
    _ike_sa_init(pair)
    pair.run()
    _assert_established(pair)
    first = _ike_auth(pair, "i->r")[0]
    source = pair.source_of(pair.initiator)
    forged = bytearray(first)
    forged[-2] ^= 0x01
    pair.responder.receive_datagram(bytes(forged), source, pair.clock.now)
    assert pair.responder.datagrams_to_send(pair.clock.now) == []
    assert pair.responder.drops["IntegrityCheckFailed"] == 1
    # The genuine fragment 1, retransmitted, does bring it back (RFC 7383 2.6.1).
    pair.responder.receive_datagram(first, source, pair.clock.now)
    assert len(pair.responder.datagrams_to_send(pair.clock.now)) == len(_ike_auth(pair, "r->i"))


# --- negotiation (RFC 7383 2.3) ----------------------------------------------------------


def test_peer_without_fragmentation_gets_whole_messages(
    pki: tuple[Issued, Issued, Issued, Issued], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An initiator that does not announce support: neither side fragments."""
    build = IkeInit._build_request

    def without_announcement(self: IkeInit) -> bytes:
        message = decode_message(build(self))
        payloads = tuple(
            p
            for p in message.payloads
            if not (
                isinstance(p, Notify) and p.notify_type == NotifyType.IKEV2_FRAGMENTATION_SUPPORTED
            )
        )
        self._sa.real_message_1 = encode_message(IkeMessage(message.header, payloads))
        return self._sa.real_message_1

    monkeypatch.setattr(IkeInit, "_build_request", without_announcement)
    pair = _pair(pki)
    _ike_sa_init(pair)
    response = decode_message(pair.wire[1][1])
    assert response.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is None  # 2.3: not echoed
    pair.run()
    _assert_established(pair)
    (request,) = _ike_auth(pair, "i->r")
    (answer,) = _ike_auth(pair, "r->i")
    assert len(request) > 3 * SMALL
    assert len(answer) > 3 * SMALL
    assert not is_fragment(request)
    assert not is_fragment(answer)


def test_both_sides_record_the_announcement(pki: tuple[Issued, Issued, Issued, Issued]) -> None:
    pair = _pair(pki)
    _ike_sa_init(pair)
    for direction in (0, 1):
        message = decode_message(pair.wire[direction][1])
        assert message.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None
    assert pair.initiator._ike_init.peer_fragmentation
    assert pair.responder._ike_init.peer_fragmentation
