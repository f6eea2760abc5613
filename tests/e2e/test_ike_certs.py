"""Certificate authentication between two in-memory IkeSession cores.

RFC 7296 2.15 with RFC 7427 digital signatures (auth method 14): each side
announces N(SIGNATURE_HASH_ALGORITHMS) in IKE_SA_INIT, then signs its AUTH
and sends its certificate in CERT; the receiver validates the chain against
its CAs at the configured ``validation_time``, checks that the ID payload is
named in the certificate (RFC 4945 3.1) and verifies the signature. Every
failure is AUTHENTICATION_FAILED (RFC 7296 2.21.2), as for a wrong PSK.

The PKI is built in memory (tests/helpers/pki.py); certificates are valid
from ``EPOCH - 1 day`` to ``EPOCH + 365 days``, and the tests check them at
``EPOCH`` unless they are about time.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import TypeVar

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from common.esp.sa import InboundSa, OutboundSa
from common.esp.suites import suite_by_name
from common.ike.auth import SUPPORTED_HASH_ALGORITHMS
from common.ike.constants import (
    AuthMethod,
    CertificateEncoding,
    ExchangeType,
    HashAlgorithm,
    NotifyType,
)
from common.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    IkeEvent,
    IkeSaEstablished,
    IkeSaFailed,
)
from common.ike.message import IkeMessage, decode_message, encode_message, peek_header
from common.ike.payloads import (
    Authentication,
    Certificate,
    CertificateRequest,
    IdInitiator,
    IdResponder,
    Notify,
)
from common.ike.policy import CertificatePolicy, Identity, IpAddress, IpNetwork, IpVersion
from common.ike.session import IkeSaState
from tests.helpers.ike_pair import (
    CLIENT_ID,
    GATEWAY_ID,
    Credentials,
    IkePair,
    MemoryPolicy,
    events,
    ike_pair,
    open_message,
    open_sk,
)
from tests.helpers.packets import ipv4_icmp_echo
from tests.helpers.pki import DAY, EPOCH, Issued, KeyKind, make_ca, make_key, make_leaf

E = TypeVar("E")

LEAF_KINDS: tuple[KeyKind, ...] = ("ecdsa-p256", "ed25519", "rsa2048")


def _one(found: list[IkeEvent], kind: type[E]) -> E:
    matches = [event for event in found if isinstance(event, kind)]
    assert len(matches) == 1, found
    return matches[0]


@pytest.fixture(scope="module")
def ca() -> Issued:
    """The root both sides trust (ECDSA: cryptography cannot verify Ed25519-signed certs)."""
    return make_ca()


def _client(ca: Issued, kind: KeyKind = "ecdsa-p256", **kwargs: object) -> Issued:
    """alice@example.org's certificate (rfc822Name SAN, RFC 4945 3.1.2)."""
    options: dict[str, object] = {"emails": ("alice@example.org",), **kwargs}
    return make_leaf(ca, "alice", key_kind=kind, **options)  # type: ignore[arg-type]


def _gateway(ca: Issued, kind: KeyKind = "ecdsa-p256") -> Issued:
    """vpn.example.org's certificate (dNSName SAN, serverAuth as Windows/macOS want)."""
    return make_leaf(
        ca,
        "vpn.example.org",
        key_kind=kind,
        dns_names=("vpn.example.org",),
        eku=(ExtendedKeyUsageOID.SERVER_AUTH,),
    )


def _creds(leaf: Issued, ca: Issued) -> Credentials:
    """Sign with ``leaf``; trust ``ca`` for the peer."""
    return Credentials(leaf.key, leaf.certificate, cas=(ca.certificate,))


def _cert_pair(
    ca: Issued,
    client: Issued | Credentials | None,
    gateway: Issued | None,
    *,
    validation_time: datetime.datetime = EPOCH,
    client_id: Identity = CLIENT_ID,
) -> IkePair:
    """A pair where the given sides sign (None: PSK) and both trust ``ca``."""
    if isinstance(client, Issued):
        client = _creds(client, ca)
    return ike_pair(
        policy=MemoryPolicy(cas=(ca.certificate,)),
        initiator_credentials=client or Credentials(cas=(ca.certificate,)),
        responder_credentials=_creds(gateway, ca) if gateway else None,
        validation_time=validation_time,
        client_id=client_id,
    )


def _establish(pair: IkePair) -> tuple[list[IkeEvent], list[IkeEvent]]:
    pair.initiator.initiate(pair.clock.now)
    # IKE_SA_INIT: HDR, SAi1, KEi, Ni, N(NAT_D)*2, N(FRAG_SUP), N(SIGNATURE_HASH_ALGORITHMS) -->
    #          <-- HDR, SAr1, KEr, Nr, N(NAT_D)*2, N(FRAG_SUP), N(SIGNATURE_HASH_ALGORITHMS)
    assert pair.roundtrip() == 2
    # IKE_AUTH: HDR, SK {IDi, CERT, [CERTREQ,] IDr, AUTH, CP(CFG_REQUEST), SAi2, TSi, TSr} -->
    #       <-- HDR, SK {IDr, CERT, AUTH, CP(CFG_REPLY), SAr2, TSi, TSr}
    pair.roundtrip()
    # (after an initiator-side failure: HDR, SK {N(AUTHENTICATION_FAILED)} --> and its answer)
    pair.run()
    return events(pair.initiator), events(pair.responder)


def _assert_established(pair: IkePair) -> None:
    initiator_events, responder_events = _establish(pair)
    assert _one(initiator_events, IkeSaEstablished).remote_id == GATEWAY_ID
    assert _one(responder_events, IkeSaEstablished).remote_id == CLIENT_ID
    sender = _one(initiator_events, ChildSaEstablished)
    receiver = _one(responder_events, ChildSaEstablished)
    suite = suite_by_name(sender.esp_suite)
    outbound = OutboundSa(sender.outbound_spi, suite, sender.outbound_keymat)
    inbound = InboundSa(receiver.inbound_spi, suite, receiver.inbound_keymat)
    packet = ipv4_icmp_echo("10.99.0.2", "10.1.0.1")
    protected = outbound.encapsulate(packet)
    assert isinstance(protected, bytes)
    assert inbound.decapsulate(protected) == packet
    assert pair.initiator.state is pair.responder.state is IkeSaState.ESTABLISHED


def _assert_auth_failed(pair: IkePair, reason: str, *, by_initiator: bool = False) -> None:
    """Both sides end in AUTHENTICATION_FAILED and CLOSED.

    When the initiator refuses the responder's AUTH, the responder had already
    established (its AUTH went out with the Child SA), so it tears the SAs
    down on the initiator's INFORMATIONAL (RFC 7296 2.21.2).
    """
    initiator_events, responder_events = _establish(pair)
    assert _one(initiator_events, IkeSaFailed).notify is NotifyType.AUTHENTICATION_FAILED
    assert _one(responder_events, IkeSaFailed).notify is NotifyType.AUTHENTICATION_FAILED
    refusing = initiator_events if by_initiator else responder_events
    assert reason in _one(refusing, IkeSaFailed).reason  # our log only, never sent
    assert not [e for e in initiator_events if isinstance(e, IkeSaEstablished | ChildSaEstablished)]
    if by_initiator:
        assert isinstance(responder_events[-2], ChildSaDeleted)
    else:
        assert not [
            e for e in responder_events if isinstance(e, IkeSaEstablished | ChildSaEstablished)
        ]
    assert pair.initiator.state is pair.responder.state is IkeSaState.CLOSED
    assert pair.initiator.get_timer() is None


def _ike_auth(pair: IkePair, direction: str) -> bytes:
    """The first IKE_AUTH datagram sent ``direction`` ("i->r" or "r->i")."""
    return next(
        data
        for name, data, _src, _dst in pair.wire
        if name == direction and peek_header(data).exchange_type == ExchangeType.IKE_AUTH
    )


# --- establishment ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_kind", "gateway_kind"),
    [(client, gateway) for client in LEAF_KINDS for gateway in LEAF_KINDS if client != gateway],
)
def test_establishes_with_certificates_on_both_sides(
    ca: Issued, client_kind: KeyKind, gateway_kind: KeyKind
) -> None:
    """ECDSA P-256, Ed25519 (RFC 8420) and RSA-PSS leaf keys, every mixed pairing.

    Both sides with the same kind, in every suite and group, is test_ike_matrix.py.
    """
    pair = _cert_pair(ca, _client(ca, client_kind), _gateway(ca, gateway_kind))
    _assert_established(pair)
    request = open_sk(pair.responder, _ike_auth(pair, "i->r"))
    response = open_sk(pair.initiator, _ike_auth(pair, "r->i"))
    for payloads in (request, response):
        auth = next(p for p in payloads if isinstance(p, Authentication))
        assert auth.method == AuthMethod.DIGITAL_SIGNATURE
        cert = next(p for p in payloads if isinstance(p, Certificate))
        assert cert.encoding == CertificateEncoding.X509_CERTIFICATE_SIGNATURE
    # RFC 7296 3.7: the initiator names the CA it trusts.
    certreq = next(p for p in request if isinstance(p, CertificateRequest))
    assert len(certreq.data) == 20


def test_signature_hash_algorithms_are_exchanged(ca: Issued) -> None:
    pair = _cert_pair(ca, _client(ca), _gateway(ca))
    _assert_established(pair)
    init_messages = [
        decode_message(data)
        for _name, data, _src, _dst in pair.wire
        if peek_header(data).exchange_type == ExchangeType.IKE_SA_INIT
    ]
    assert len(init_messages) == 2
    for message in init_messages:
        notify = message.notify(NotifyType.SIGNATURE_HASH_ALGORITHMS)
        assert notify is not None
        assert notify.data == b"".join(h.to_bytes(2, "big") for h in SUPPORTED_HASH_ALGORITHMS)
    # White-box: each side remembered the other's list (RFC 7427 section 4).
    for session in (pair.initiator, pair.responder):
        assert session._sa.peer_signature_hashes == SUPPORTED_HASH_ALGORITHMS


def test_intermediate_ca_chain_is_sent_and_validated(ca: Issued) -> None:
    intermediate = make_ca("Outpost Issuing CA", issuer=ca)
    client = _client(intermediate)
    gateway = _gateway(ca)
    credentials = Credentials(
        client.key, client.certificate, (intermediate.certificate,), (ca.certificate,)
    )
    pair = _cert_pair(ca, credentials, gateway)
    _assert_established(pair)
    # Two certificates take IKE_AUTH past the 1280-octet default: it goes as SKF fragments.
    sent = [
        data
        for name, data, _src, _dst in pair.wire
        if name == "i->r" and peek_header(data).exchange_type == ExchangeType.IKE_AUTH
    ]
    request = open_message(pair.responder, sent)
    assert len([p for p in request if isinstance(p, Certificate)]) == 2


def test_client_and_gateway_with_different_key_types(ca: Issued) -> None:
    pair = _cert_pair(ca, _client(ca, "ed25519"), _gateway(ca, "rsa2048"))
    _assert_established(pair)


def test_psk_client_with_certificate_gateway(ca: Issued) -> None:
    """RFC 7296 2.15: the two directions may use different AUTH methods."""
    pair = _cert_pair(ca, None, _gateway(ca))
    _assert_established(pair)
    request = open_sk(pair.responder, _ike_auth(pair, "i->r"))
    response = open_sk(pair.initiator, _ike_auth(pair, "r->i"))
    client_auth = next(p for p in request if isinstance(p, Authentication))
    gateway_auth = next(p for p in response if isinstance(p, Authentication))
    assert client_auth.method == AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE
    assert gateway_auth.method == AuthMethod.DIGITAL_SIGNATURE
    assert not [p for p in request if isinstance(p, Certificate)]


def test_psk_pair_still_works_and_sends_no_cert() -> None:
    pair = ike_pair()
    _assert_established(pair)
    request = open_sk(pair.responder, _ike_auth(pair, "i->r"))
    assert not [p for p in request if isinstance(p, Certificate | CertificateRequest)]
    auth = next(p for p in request if isinstance(p, Authentication))
    assert auth.method == AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE


# --- failures: every one is AUTHENTICATION_FAILED, and no SA ------------------------------


def test_client_certificate_from_another_ca_is_refused(ca: Issued) -> None:
    # IKE_AUTH: HDR, SK {IDi, CERT(other CA), AUTH, ...} -->
    #       <-- HDR, SK {N(AUTHENTICATION_FAILED)}
    other = make_ca("Some Other CA")
    pair = _cert_pair(ca, _creds(_client(other), ca), _gateway(ca))
    _assert_auth_failed(pair, "untrusted issuer")


def test_gateway_certificate_from_another_ca_is_refused_by_the_initiator(ca: Issued) -> None:
    # IKE_AUTH: <-- HDR, SK {IDr, CERT(other CA), AUTH, ...}
    #           HDR, SK {N(AUTHENTICATION_FAILED)} -->  (RFC 7296 2.21.2, INFORMATIONAL)
    other = make_ca("Some Other CA")
    pair = _cert_pair(ca, _client(ca), _gateway(other))
    _assert_auth_failed(pair, "untrusted issuer", by_initiator=True)


def test_id_not_in_the_certificate_is_refused(ca: Issued) -> None:
    # IKE_AUTH: HDR, SK {IDi(mallory), CERT(alice), AUTH, ...} -->  <-- N(AUTHENTICATION_FAILED)
    pair = _cert_pair(ca, _client(ca), _gateway(ca), client_id=Identity.rfc822("mallory@x.org"))
    _assert_auth_failed(pair, "not named in its certificate")


def test_gateway_id_not_in_its_certificate_is_refused(ca: Issued) -> None:
    wrong = make_leaf(ca, "other", dns_names=("other.example.org",))
    pair = _cert_pair(ca, _client(ca), wrong)
    _assert_auth_failed(pair, "not named in its certificate", by_initiator=True)


def test_expired_client_certificate_is_refused(ca: Issued) -> None:
    expired = _client(ca, not_after=EPOCH - DAY / 2)
    pair = _cert_pair(ca, expired, _gateway(ca))
    _assert_auth_failed(pair, "expired")


def test_certificates_checked_at_validation_time(ca: Issued) -> None:
    """Both leaves have expired by then: the responder refuses the client's first."""
    pair = _cert_pair(ca, _client(ca), _gateway(ca), validation_time=EPOCH + 400 * DAY)
    _assert_auth_failed(pair, "expired")


def test_no_validation_time_refuses_certificates(ca: Issued) -> None:
    pair = ike_pair(
        policy=MemoryPolicy(cas=(ca.certificate,)),
        initiator_credentials=_creds(_client(ca), ca),
        responder_credentials=_creds(_gateway(ca), ca),
    )
    _assert_auth_failed(pair, "no validation_time")


def test_auth_signed_with_another_key_is_refused(ca: Issued) -> None:
    client = _client(ca)
    impostor = Credentials(make_key("ecdsa-p256"), client.certificate, cas=(ca.certificate,))
    pair = _cert_pair(ca, impostor, _gateway(ca))
    _assert_auth_failed(pair, "does not verify")


def test_tampered_auth_is_refused(ca: Issued) -> None:
    pair = _cert_pair(ca, _client(ca), _gateway(ca))
    pair.initiator.initiate(pair.clock.now)
    # IKE_SA_INIT: HDR, SAi1, KEi, Ni, N(SIGNATURE_HASH_ALGORITHMS) -->  <-- HDR, SAr1, ...
    pair.roundtrip()
    # IKE_AUTH: HDR, SK {IDi, CERT, CERTREQ, IDr, AUTH(one bit flipped), ...} -->
    ((request, _),) = pair.initiator.datagrams_to_send(pair.clock.now)
    payloads = open_sk(pair.responder, request)
    tampered = [
        Authentication(p.method, p.data[:-1] + bytes((p.data[-1] ^ 1,)))
        if isinstance(p, Authentication)
        else p
        for p in payloads
    ]
    resealed = pair.initiator._sa.seal(peek_header(request), tampered)
    pair.responder.receive_datagram(resealed, pair.source_of(pair.initiator), pair.clock.now)
    #       <-- HDR, SK {N(AUTHENTICATION_FAILED)}
    pair.transfer(pair.responder)
    pair.run()
    initiator_events, responder_events = events(pair.initiator), events(pair.responder)
    assert _one(initiator_events, IkeSaFailed).notify is NotifyType.AUTHENTICATION_FAILED
    assert "does not verify" in _one(responder_events, IkeSaFailed).reason
    assert _one(responder_events, IkeSaFailed).notify is NotifyType.AUTHENTICATION_FAILED
    assert not [e for e in responder_events if isinstance(e, IkeSaEstablished)]


def test_policy_may_refuse_a_certified_identity(ca: Issued) -> None:
    pair = _cert_pair(ca, _client(ca), _gateway(ca))
    pair.policy.authorize_rule = lambda identity, certificate: identity != CLIENT_ID
    _assert_auth_failed(pair, "not authorized")


def test_responder_without_cas_refuses_signing_peers(ca: Issued) -> None:
    pair = _cert_pair(ca, _client(ca), _gateway(ca))
    pair.policy.cas = ()
    _assert_auth_failed(pair, "trust no CA")


def test_initiator_without_cas_refuses_a_signing_gateway(ca: Issued) -> None:
    client = _client(ca)
    pair = _cert_pair(ca, Credentials(client.key, client.certificate), _gateway(ca))
    _assert_auth_failed(pair, "trust no CA", by_initiator=True)


def test_peer_hash_list_without_a_usable_hash_fails_before_sending(ca: Issued) -> None:
    """RFC 7427 section 4: we sign only with a hash the verifier announced."""
    pair = _cert_pair(ca, _client(ca), _gateway(ca))
    pair.initiator.initiate(pair.clock.now)
    pair.transfer(pair.initiator)
    # <-- HDR, SAr1, KEr, Nr, ..., N(SIGNATURE_HASH_ALGORITHMS: SHA1 only), forged on the way
    ((response, _),) = pair.responder.datagrams_to_send(pair.clock.now)
    sha1_only = Notify(NotifyType.SIGNATURE_HASH_ALGORITHMS, HashAlgorithm.SHA1.to_bytes(2, "big"))
    message = decode_message(response)
    payloads = tuple(
        sha1_only
        if isinstance(p, Notify) and p.notify_type == NotifyType.SIGNATURE_HASH_ALGORITHMS
        else p
        for p in message.payloads
    )
    forged = encode_message(IkeMessage(message.header, payloads))
    pair.initiator.receive_datagram(forged, pair.source_of(pair.responder), pair.clock.now)
    failed = _one(events(pair.initiator), IkeSaFailed)
    assert failed.notify is NotifyType.AUTHENTICATION_FAILED
    assert "signature hash" in failed.reason
    assert pair.initiator.datagrams_to_send(pair.clock.now) == []


def test_ids_are_what_the_certificates_name(ca: Issued) -> None:
    pair = _cert_pair(ca, _client(ca), _gateway(ca))
    _assert_established(pair)
    request = open_sk(pair.responder, _ike_auth(pair, "i->r"))
    response = open_sk(pair.initiator, _ike_auth(pair, "r->i"))
    idi = next(p for p in request if isinstance(p, IdInitiator))
    idr = next(p for p in response if isinstance(p, IdResponder))
    assert (idi.id_type, idi.data) == (CLIENT_ID.id_type, CLIENT_ID.data)
    assert (idr.id_type, idr.data) == (GATEWAY_ID.id_type, GATEWAY_ID.data)


class _PskOnlyPolicy:
    """A ``ResponderPolicy`` written before certificates: no ``CertificatePolicy`` methods."""

    def __init__(self) -> None:
        self._inner = MemoryPolicy()

    def psk_for(self, identity: Identity) -> bytes | None:
        return self._inner.psk_for(identity)

    def lease_address(self, identity: Identity, version: IpVersion) -> IpAddress | None:
        return self._inner.lease_address(identity, version)

    def dns_servers(self) -> Sequence[IpAddress]:
        return self._inner.dns_servers()

    def subnets_for(self, identity: Identity) -> Sequence[IpNetwork]:
        return self._inner.subnets_for(identity)


def test_plain_responder_policy_refuses_signing_peers_and_still_does_psk(ca: Issued) -> None:
    assert not isinstance(_PskOnlyPolicy(), CertificatePolicy)
    pair = ike_pair(
        policy=_PskOnlyPolicy(),  # type: ignore[arg-type]
        initiator_credentials=_creds(_client(ca), ca),
        validation_time=EPOCH,
    )
    _assert_auth_failed(pair, "trust no CA")
    psk_pair = ike_pair(policy=_PskOnlyPolicy())  # type: ignore[arg-type]
    initiator_events, _ = _establish(psk_pair)
    assert _one(initiator_events, IkeSaEstablished).remote_id == GATEWAY_ID
