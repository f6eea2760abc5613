"""The full in-memory matrix: every IKE suite x every group x every AUTH kind, whole lifecycle.

The issue asks that "an initiator and a responder complete IKE_SA_INIT +
IKE_AUTH for every combination of the suites and groups above, with PSK and
with each certificate type; then rekey the Child and IKE SAs, run DPD,
delete". One test per combination runs exactly that story on two in-memory
cores (``tests.helpers.ike_pair``)::

    IKE_SA_INIT  HDR, SAi1, KEi, Ni -->                  <-- HDR, SAr1, KEr, Nr
    IKE_AUTH     HDR, SK {IDi, [CERT,] AUTH, CP, SAi2, TSi, TSr} -->
                                        <-- HDR, SK {IDr, [CERT,] AUTH, CP, SAr2, TSi, TSr}
    CREATE_CHILD_SA { N(REKEY_SA), SA, Ni, KEi, TSi, TSr } -->   (PFS in the IKE group)
                                        <-- { SA, Nr, KEr, TSi, TSr }
    INFORMATIONAL { D(ESP) } -->        <-- { D(ESP) }
    CREATE_CHILD_SA { SA, Ni, KEi } <-- (the responder rekeys the IKE SA)
                                        --> { SA, Nr, KEr }, then D(IKE) / { }
    INFORMATIONAL { } -->  <-- { }       (DPD, on the new IKE SA)
    INFORMATIONAL { D(IKE) } -->  <-- { }

At each step both sides must agree: same SPIs, mirrored Child SA keys
(initiator outbound KEYMAT == responder inbound KEYMAT, RFC 7296 2.17) that
really carry an ESP packet, and both end CLOSED.

Suites: AES-GCM-16 128/256, ChaCha20-Poly1305 and AES-CBC 128/256 with
HMAC-SHA2-256/384/512 (``common.ike.ike_suites``); groups 31, 19, 20, 14;
AUTH: PSK, and ECDSA P-256, Ed25519 (RFC 8420) and RSA-PSS (RFC 7427)
certificates on both sides. Mixed certificate pairings, and every refusal,
are in ``test_ike_certs.py``; rekey collisions and loss in ``test_ike_rekey.py``.

Cost: the certificates are made once per module (RSA key generation is the
slow part, ``functools.cache``); per case the MODP-2048 exchanges dominate.
"""

from __future__ import annotations

from functools import cache
from typing import Final, TypeVar

import pytest

from common.esp.sa import InboundSa, OutboundSa
from common.esp.suites import suite_by_name
from common.ike.constants import AuthMethod, ExchangeType, KeyExchangeMethod, PayloadType
from common.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaRekeyed,
    IkeEvent,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaRekeyed,
)
from common.ike.ike_suites import IKE_SUITES
from common.ike.message import peek_header
from common.ike.payloads import Authentication, KeyExchange
from common.ike.session import IkeSaState
from tests.helpers.ike_pair import (
    Credentials,
    IkePair,
    MemoryPolicy,
    establish,
    events,
    ike_pair,
    open_sk,
)
from tests.helpers.packets import ipv4_icmp_echo
from tests.helpers.pki import EPOCH, Issued, KeyKind, make_ca, make_leaf

E = TypeVar("E")
_FIRST_PAYLOAD: Final = 16  # the header's Next Payload octet (RFC 7296 3.1)

SUITES: Final = tuple(IKE_SUITES)  # the 3 AEAD + 6 AES-CBC/HMAC-SHA2 suites
GROUPS: Final = {
    "x25519": KeyExchangeMethod.CURVE25519,  # 31
    "ecp256": KeyExchangeMethod.ECP_256,  # 19
    "ecp384": KeyExchangeMethod.ECP_384,  # 20
    "modp2048": KeyExchangeMethod.MODP_2048,  # 14
}
# AUTH kind -> (leaf key, CA key, RSA-PSS signatures on the certificates); None: PSK.
AUTHS: Final[dict[str, tuple[KeyKind, KeyKind, bool] | None]] = {
    "psk": None,
    "ecdsa-p256": ("ecdsa-p256", "ecdsa-p256", False),
    "ed25519": ("ed25519", "ecdsa-p256", False),  # cryptography verifies no Ed25519-signed cert
    "rsa-pss": ("rsa2048", "rsa2048", True),
}


def _proposal(suite: str, group: str) -> str:
    """AEAD suites need an explicit PRF; CBC ones take it from their HMAC (proposals.py)."""
    if IKE_SUITES[suite].is_aead:
        return f"{suite}-prfsha256-{group}"
    return f"{suite}-{group}"


@cache
def _credentials(auth: str) -> tuple[Credentials, Credentials, Issued] | None:
    """(client, gateway, CA) for a certificate AUTH kind, made once per run."""
    kinds = AUTHS[auth]
    if kinds is None:
        return None
    leaf_kind, ca_kind, rsa_pss = kinds
    ca = make_ca(f"Matrix {auth} CA", key_kind=ca_kind, rsa_pss=rsa_pss)
    client = make_leaf(
        ca, "alice", key_kind=leaf_kind, emails=("alice@example.org",), rsa_pss=rsa_pss
    )
    gateway = make_leaf(
        ca, "vpn.example.org", key_kind=leaf_kind, dns_names=("vpn.example.org",), rsa_pss=rsa_pss
    )
    trust = (ca.certificate,)
    return (
        Credentials(client.key, client.certificate, cas=trust),
        Credentials(gateway.key, gateway.certificate, cas=trust),
        ca,
    )


def _pair(suite: str, group: str, auth: str) -> IkePair:
    """A pair proposing only this suite and group, with PFS in the same group."""
    credentials = _credentials(auth)
    common = {
        "ike": (_proposal(suite, group),),
        "esp": (suite,),
        "pfs_group": GROUPS[group],
    }
    if credentials is None:
        return ike_pair(**common)  # type: ignore[arg-type]
    client, gateway, ca = credentials
    return ike_pair(
        **common,  # type: ignore[arg-type]
        policy=MemoryPolicy(cas=(ca.certificate,)),
        initiator_credentials=client,
        responder_credentials=gateway,
        validation_time=EPOCH,
    )


def _of(found: list[IkeEvent], kind: type[E]) -> list[E]:
    return [event for event in found if isinstance(event, kind)]


def _one(found: list[IkeEvent], kind: type[E]) -> E:
    matches = _of(found, kind)
    assert len(matches) == 1, found
    return matches[0]


def _assert_mirrored(child_i: ChildSaEstablished, child_r: ChildSaEstablished) -> None:
    """Both halves of one Child SA agree (RFC 7296 2.17) and carry a packet each way."""
    assert (child_i.outbound_spi, child_i.inbound_spi) == (
        child_r.inbound_spi,
        child_r.outbound_spi,
    )
    assert child_i.outbound_keymat == child_r.inbound_keymat
    assert child_i.inbound_keymat == child_r.outbound_keymat
    assert child_i.inbound_keymat != child_i.outbound_keymat
    assert (child_i.local_ts, child_i.remote_ts) == (child_r.remote_ts, child_r.local_ts)
    for sender, receiver in ((child_i, child_r), (child_r, child_i)):
        suite = suite_by_name(sender.esp_suite)
        packet = ipv4_icmp_echo("10.99.0.2", "10.1.0.1")
        protected = OutboundSa(sender.outbound_spi, suite, sender.outbound_keymat).encapsulate(
            packet
        )
        assert isinstance(protected, bytes)
        inbound = InboundSa(receiver.inbound_spi, suite, receiver.inbound_keymat)
        assert inbound.decapsulate(protected) == packet


@pytest.mark.parametrize("auth", list(AUTHS))
@pytest.mark.parametrize("group", list(GROUPS))
@pytest.mark.parametrize("suite", SUITES)
def test_lifecycle(suite: str, group: str, auth: str) -> None:
    pair = _pair(suite, group, auth)
    method = GROUPS[group]

    # IKE_SA_INIT + IKE_AUTH
    initiator_events, responder_events = establish(pair)
    ike_i = _one(initiator_events, IkeSaEstablished)
    ike_r = _one(responder_events, IkeSaEstablished)
    assert (ike_i.spi_i, ike_i.spi_r) == (ike_r.spi_i, ike_r.spi_r)
    assert ike_i.ike_suite == ike_r.ike_suite == suite
    assert ike_i.group == ike_r.group == method.name
    expected = AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE
    if AUTHS[auth] is not None:
        expected = AuthMethod.DIGITAL_SIGNATURE  # RFC 7427
    for direction, receiver in (("i->r", pair.responder), ("r->i", pair.initiator)):
        data = next(
            data
            for name, data, _, _ in pair.wire
            if name == direction and peek_header(data).exchange_type == ExchangeType.IKE_AUTH
        )
        if data[_FIRST_PAYLOAD] == PayloadType.SKF:
            # RFC 7383: only a CERT makes IKE_AUTH outgrow a fragment (RSA chains do).
            assert expected is AuthMethod.DIGITAL_SIGNATURE
            continue
        methods = [p.method for p in open_sk(receiver, data) if isinstance(p, Authentication)]
        assert methods == [expected]
    child_i = _one(initiator_events, ChildSaEstablished)
    child_r = _one(responder_events, ChildSaEstablished)
    assert child_i.esp_suite == child_r.esp_suite == suite
    _assert_mirrored(child_i, child_r)

    # CREATE_CHILD_SA { N(REKEY_SA), SA, Ni, KEi, TSi, TSr } -->  <-- { SA, Nr, KEr, TSi, TSr }
    # INFORMATIONAL { D(ESP) } -->  <-- { D(ESP) }
    sent = len(pair.wire)
    pair.initiator.rekey_child(child_i.inbound_spi, pair.clock.now)
    pair.run()
    request = pair.wire[sent][1]
    assert peek_header(request).exchange_type == ExchangeType.CREATE_CHILD_SA
    kes = [p for p in open_sk(pair.responder, request) if isinstance(p, KeyExchange)]
    assert [ke.group for ke in kes] == [method]  # PFS in the IKE SA's group
    after_i, after_r = events(pair.initiator), events(pair.responder)
    new_i = _one(after_i, ChildSaRekeyed).established
    new_r = _one(after_r, ChildSaRekeyed).established
    assert new_i.outbound_keymat != child_i.outbound_keymat
    _assert_mirrored(new_i, new_r)
    assert _of(after_i, ChildSaDeleted) == [
        ChildSaDeleted(child_i.inbound_spi, child_i.outbound_spi)
    ]
    assert _of(after_r, ChildSaDeleted) == [
        ChildSaDeleted(child_r.inbound_spi, child_r.outbound_spi)
    ]

    # <-- CREATE_CHILD_SA { SA, Ni, KEi }  { SA, Nr, KEr } -->  <-- D(IKE)  { } -->
    old_spis = (pair.initiator.spi_i, pair.initiator.spi_r)
    pair.responder.rekey_ike(pair.clock.now)
    pair.run()
    rekeyed = _one(events(pair.initiator), IkeSaRekeyed)
    assert events(pair.responder) == [rekeyed]
    assert (rekeyed.old_spi_i, rekeyed.old_spi_r) == old_spis
    new_spis = (rekeyed.spi_i, rekeyed.spi_r)
    assert new_spis != old_spis
    assert (pair.initiator.spi_i, pair.initiator.spi_r) == new_spis
    assert (pair.responder.spi_i, pair.responder.spi_r) == new_spis

    # DPD on the new IKE SA: INFORMATIONAL { } -->  <-- { }
    sent = len(pair.wire)
    pair.initiator.check_liveness(pair.clock.now)
    pair.run()
    assert len(pair.wire) - sent == 2
    assert all(
        (peek_header(data).spi_i, peek_header(data).spi_r) == new_spis
        for _, data, _, _ in pair.wire[sent:]
    )
    assert events(pair.initiator) == events(pair.responder) == []
    assert pair.initiator.state is pair.responder.state is IkeSaState.ESTABLISHED
    assert pair.initiator.get_timer() is pair.responder.get_timer() is None

    # INFORMATIONAL { D(IKE) } -->  <-- { }
    pair.initiator.delete(pair.clock.now)
    pair.run()
    final_i, final_r = events(pair.initiator), events(pair.responder)
    gone = ChildSaDeleted(new_i.inbound_spi, new_i.outbound_spi)
    assert _of(final_i, ChildSaDeleted) == [gone]
    assert _of(final_r, ChildSaDeleted) == [ChildSaDeleted(new_r.inbound_spi, new_r.outbound_spi)]
    assert not _one(final_i, IkeSaDeleted).by_peer
    assert _one(final_r, IkeSaDeleted).by_peer
    assert {pair.initiator.state, pair.responder.state} == {IkeSaState.CLOSED}
