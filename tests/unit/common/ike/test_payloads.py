"""Payload codecs against hand-built RFC 7296 section 3 layouts, round trips and rejects.

Each hand-built vector spells out the RFC figure field by field, so that a
codec that agrees with itself but not with the RFC fails here.
https://www.rfc-editor.org/rfc/rfc7296#section-3
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import pytest

from common.ike.constants import (
    AuthMethod,
    CertificateEncoding,
    ConfigType,
    ConfigurationAttributeType,
    EncryptionAlgorithm,
    IdType,
    KeyExchangeMethod,
    NotifyType,
    ProtocolId,
    PseudorandomFunction,
    TrafficSelectorType,
    TransformType,
)
from common.ike.errors import MalformedMessage
from common.ike.payloads import (
    Authentication,
    Certificate,
    CertificateRequest,
    ConfigurationAttribute,
    ConfigurationPayload,
    Delete,
    Eap,
    IdInitiator,
    IdResponder,
    KeyExchange,
    Nonce,
    Notify,
    Proposal,
    SecurityAssociation,
    TrafficSelector,
    Transform,
    TransformAttr,
    TsInitiator,
    TsResponder,
    UnknownTrafficSelector,
    VendorId,
    cp,
    delete,
    id_auth,
    ke,
    misc,
    notify,
    sa,
    ts,
)
from common.wire.buffer import Buffer

PullFn = Callable[[Buffer, int], Any]
PushFn = Callable[[Buffer, Any], None]


def encode(push: PushFn, payload: Any) -> bytes:
    buf = Buffer()
    push(buf, payload)
    return buf.data


def decode(pull: PullFn, data: bytes) -> Any:
    buf = Buffer(data)
    payload = pull(buf, len(data))
    assert buf.eof()
    return payload


# --- hand-built vectors ---------------------------------------------------------------------

# RFC 7296 3.3: one IKE proposal, AES-GCM-16/256 (TV Key Length) + PRF_HMAC_SHA2_256 + X25519.
SA_BYTES = bytes.fromhex(
    "00 00 0024"  # Last Substruc 0 (last proposal), RESERVED, Proposal Length 36
    " 01 01 00 03"  # Proposal Num 1, Protocol IKE, SPI Size 0, 3 transforms
    " 03 00 000c 01 00 0014 800e 0100"  # more(3), len 12, ENCR 20, AF|14 = 256
    " 03 00 0008 02 00 0005"  # more(3), len 8, PRF 5
    " 00 00 0008 04 00 001f"  # last(0), len 8, KE 31
)
SA_PAYLOAD = SecurityAssociation(
    (
        Proposal(
            1,
            ProtocolId.IKE,
            b"",
            (
                Transform.make(TransformType.ENCR, EncryptionAlgorithm.ENCR_AES_GCM_16, 256),
                Transform.make(TransformType.PRF, PseudorandomFunction.PRF_HMAC_SHA2_256),
                Transform.make(TransformType.KE, KeyExchangeMethod.CURVE25519),
            ),
        ),
    )
)


def test_sa_matches_rfc_7296_3_3_layout() -> None:
    assert encode(sa.push_sa, SA_PAYLOAD) == SA_BYTES
    decoded = decode(sa.pull_sa, SA_BYTES)
    assert decoded == SA_PAYLOAD
    assert decoded.proposals[0].transforms[0].key_length == 256
    assert decoded.proposals[0].transforms[1].key_length is None


def test_esp_proposal_with_spi_and_two_proposals() -> None:
    esp = Proposal(
        1,
        ProtocolId.ESP,
        b"\xc0\x01\x02\x03",
        (Transform.make(TransformType.ENCR, EncryptionAlgorithm.ENCR_CHACHA20_POLY1305),),
    )
    second = Proposal(2, ProtocolId.ESP, b"\xc0\x01\x02\x03", esp.transforms)
    data = encode(sa.push_sa, SecurityAssociation((esp, second)))
    assert data[0] == 2  # RFC 7296 3.3.1: "2" when more proposals follow
    assert data[4:8] == bytes((1, ProtocolId.ESP, 4, 1))
    assert decode(sa.pull_sa, data) == SecurityAssociation((esp, second))


@pytest.mark.parametrize(
    ("description", "data"),
    [
        ("proposal marked last but another follows", SA_BYTES + SA_BYTES),
        ("more-proposals marker on the only proposal", b"\x02" + SA_BYTES[1:]),
        ("transform count too high", SA_BYTES[:7] + b"\x04" + SA_BYTES[8:]),
        ("transform count too low", SA_BYTES[:7] + b"\x02" + SA_BYTES[8:]),
        ("last transform marked 'more'", SA_BYTES[:-8] + b"\x03" + SA_BYTES[-7:]),
        ("IKE proposal with 4-octet SPI", SA_BYTES[:6] + b"\x04" + SA_BYTES[7:]),
        ("unknown protocol id", SA_BYTES[:5] + b"\x09" + SA_BYTES[6:]),
        ("proposal length past the payload", SA_BYTES[:2] + b"\x00\x30" + SA_BYTES[4:]),
        ("transform length below 8", SA_BYTES[:10] + b"\x00\x04" + SA_BYTES[12:]),
        ("key length in TLV format", SA_BYTES[:16] + b"\x00\x0e\x00\x00" + SA_BYTES[20:]),
        ("empty SA", b""),
        ("proposal without transforms", bytes.fromhex("00000008 01010000")),
    ],
)
def test_sa_rejects(description: str, data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode(sa.pull_sa, data)


def test_unknown_transform_attribute_is_kept_for_the_negotiator() -> None:
    # RFC 7296 3.3.6: a transform with an unknown attribute must be rejected by
    # the negotiation, so the codec must not drop it.
    transform = Transform(
        TransformType.ENCR, 12, (TransformAttr(14, 128), TransformAttr(17, b"\x01\x02"))
    )
    payload = SecurityAssociation((Proposal(1, ProtocolId.IKE, b"", (transform,)),))
    assert decode(sa.pull_sa, encode(sa.push_sa, payload)) == payload


def test_ke_layout_rfc_7296_3_4() -> None:
    payload = KeyExchange(KeyExchangeMethod.CURVE25519, bytes(range(32)))
    assert encode(ke.push_ke, payload) == b"\x00\x1f\x00\x00" + bytes(range(32))
    assert decode(ke.pull_ke, b"\x00\x1f\x00\x00" + bytes(range(32))) == payload
    with pytest.raises(MalformedMessage):
        decode(ke.pull_ke, b"\x00\x1f\x00")
    with pytest.raises(MalformedMessage):
        decode(ke.pull_ke, b"\x00\x1f\x00\x00")


@pytest.mark.parametrize(("size", "ok"), [(15, False), (16, True), (256, True), (257, False)])
def test_nonce_size_rfc_7296_3_9(size: int, ok: bool) -> None:
    data = bytes(size)
    if ok:
        assert decode(ke.pull_nonce, data) == Nonce(data)
    else:
        with pytest.raises(MalformedMessage):
            decode(ke.pull_nonce, data)


def test_id_layout_rfc_7296_3_5() -> None:
    payload = IdInitiator(IdType.ID_FQDN, b"rw.example")
    assert encode(id_auth.push_id, payload) == b"\x02\x00\x00\x00rw.example"
    assert decode(id_auth.pull_idi, b"\x02\x00\x00\x00rw.example") == payload
    idr = decode(id_auth.pull_idr, b"\x01\x00\x00\x00\xc0\x00\x02\x01")
    assert idr == IdResponder(IdType.ID_IPV4_ADDR, b"\xc0\x00\x02\x01")
    assert idr != IdInitiator(IdType.ID_IPV4_ADDR, b"\xc0\x00\x02\x01")
    with pytest.raises(MalformedMessage):  # an IPv4 identity is four octets
        decode(id_auth.pull_idi, b"\x01\x00\x00\x00\xc0\x00\x02")


def test_auth_cert_certreq_layouts() -> None:
    auth = Authentication(AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE, b"\xaa" * 32)
    assert encode(id_auth.push_auth, auth) == b"\x02\x00\x00\x00" + b"\xaa" * 32
    assert decode(id_auth.pull_auth, encode(id_auth.push_auth, auth)) == auth
    cert = Certificate(CertificateEncoding.X509_CERTIFICATE_SIGNATURE, b"\x30\x82")
    assert encode(id_auth.push_cert, cert) == b"\x04\x30\x82"
    assert decode(id_auth.pull_cert, b"\x04\x30\x82") == cert
    req = CertificateRequest(CertificateEncoding.X509_CERTIFICATE_SIGNATURE, b"\x11" * 20)
    assert decode(id_auth.pull_certreq, encode(id_auth.push_certreq, req)) == req
    with pytest.raises(MalformedMessage):
        decode(id_auth.pull_auth, b"\x02\x00\x00\x00")


def test_notify_layout_rfc_7296_3_10() -> None:
    natd = Notify(NotifyType.NAT_DETECTION_SOURCE_IP, b"\x01" * 20)
    assert encode(notify.push_notify, natd) == b"\x00\x00\x40\x04" + b"\x01" * 20
    rekey = Notify(NotifyType.REKEY_SA, b"", ProtocolId.ESP, b"\xc0\x00\x00\x01")
    assert encode(notify.push_notify, rekey) == b"\x03\x04\x40\x09\xc0\x00\x00\x01"
    assert decode(notify.pull_notify, b"\x03\x04\x40\x09\xc0\x00\x00\x01") == rekey
    assert not rekey.is_error
    assert Notify(NotifyType.NO_PROPOSAL_CHOSEN).is_error
    unknown = decode(notify.pull_notify, b"\x00\x00\x7f\xff")
    assert unknown.notify_type == 0x7FFF  # unknown types survive as ints
    with pytest.raises(MalformedMessage):  # SPI size 3 names no SA
        decode(notify.pull_notify, b"\x03\x03\x40\x09\xc0\x00\x00")
    with pytest.raises(MalformedMessage):  # SPI longer than the payload
        decode(notify.pull_notify, b"\x03\x04\x40\x09\xc0\x00")


def test_delete_layout_rfc_7296_3_11() -> None:
    child = Delete(ProtocolId.ESP, (b"\xc0\x00\x00\x01", b"\xc0\x00\x00\x02"))
    data = b"\x03\x04\x00\x02\xc0\x00\x00\x01\xc0\x00\x00\x02"
    assert encode(delete.push_delete, child) == data
    assert decode(delete.pull_delete, data) == child
    assert encode(delete.push_delete, Delete(ProtocolId.IKE)) == b"\x01\x00\x00\x00"
    assert decode(delete.pull_delete, b"\x01\x00\x00\x00") == Delete(ProtocolId.IKE)
    for bad in (
        b"\x03\x04\x00\x03\xc0\x00\x00\x01\xc0\x00\x00\x02",  # count too high
        b"\x03\x04\x00\x01\xc0\x00\x00\x01\xc0\x00\x00\x02",  # count too low
        b"\x01\x00\x00\x01",  # IKE delete lists SPIs
        b"\x01\x08\x00\x00",  # IKE SPI size must be 0
        b"\x03\x08\x00\x00",  # ESP SPI size must be 4
        b"\x07\x04\x00\x00",  # unknown protocol
    ):
        with pytest.raises(MalformedMessage):
            decode(delete.pull_delete, bad)


def test_ts_layout_rfc_7296_3_13() -> None:
    v4 = TrafficSelector(
        ipaddress.IPv4Address("10.99.0.0"), ipaddress.IPv4Address("10.99.0.255"), 0, 0, 65535
    )
    v6 = TrafficSelector(ipaddress.IPv6Address("2001:db8::"), ipaddress.IPv6Address("2001:db8::ff"))
    data = encode(ts.push_ts, TsResponder((v4, v6)))
    assert data[:4] == b"\x02\x00\x00\x00"
    assert data[4:20] == bytes.fromhex("07 00 0010 0000 ffff 0a630000 0a6300ff")
    assert data[20:24] == bytes((TrafficSelectorType.TS_IPV6_ADDR_RANGE, 0, 0, 40))
    assert len(data) == 4 + 16 + 40
    assert decode(ts.pull_tsr, data) == TsResponder((v4, v6))
    assert decode(ts.pull_tsi, data) == TsInitiator((v4, v6))
    with pytest.raises(MalformedMessage):  # number of TSs too high
        decode(ts.pull_tsi, b"\x03" + data[1:])
    with pytest.raises(MalformedMessage):  # IPv4 selector claiming length 40
        decode(ts.pull_tsi, b"\x01\x00\x00\x00\x07\x00\x00\x28" + bytes(36))
    with pytest.raises(MalformedMessage):
        decode(ts.pull_tsi, b"\x00\x00\x00\x00")


def test_unknown_ts_type_is_kept() -> None:
    seclabel = UnknownTrafficSelector(10, 0, b"\x00\x01\x02\x03")  # TS_SECLABEL, RFC 9478
    payload = TsInitiator((seclabel,))
    assert decode(ts.pull_tsi, encode(ts.push_ts, payload)) == payload


def test_cp_layout_rfc_7296_3_15() -> None:
    request = ConfigurationPayload(
        ConfigType.CFG_REQUEST,
        (
            ConfigurationAttribute(ConfigurationAttributeType.INTERNAL_IP4_ADDRESS),
            ConfigurationAttribute(ConfigurationAttributeType.INTERNAL_IP4_DNS),
        ),
    )
    data = encode(cp.push_cp, request)
    assert data == bytes.fromhex("01000000 0001 0000 0003 0000")
    assert decode(cp.pull_cp, data) == request
    # RFC 7296 3.15.1: the R bit is ignored on receipt.
    with_r_bit = bytes.fromhex("02000000 8001 0004 0a636401")
    reply = decode(cp.pull_cp, with_r_bit)
    assert reply.attributes == (
        ConfigurationAttribute(
            ConfigurationAttributeType.INTERNAL_IP4_ADDRESS, b"\x0a\x63\x64\x01"
        ),
    )
    with pytest.raises(MalformedMessage):  # attribute length past the end
        decode(cp.pull_cp, bytes.fromhex("02000000 0001 0008 0a636401"))


def test_vendor_id_and_eap() -> None:
    vid = VendorId(b"strongSwan")
    assert decode(misc.pull_vendor_id, encode(misc.push_vendor_id, vid)) == vid
    eap = Eap(bytes.fromhex("01 07 0009 01 72 77 2e 78"))  # RFC 3748 4: Request/Identity
    assert decode(misc.pull_eap, eap.data) == eap
    with pytest.raises(MalformedMessage):  # EAP length field disagrees
        decode(misc.pull_eap, bytes.fromhex("01 07 0010 01"))


def test_mixed_address_families_are_api_misuse() -> None:
    with pytest.raises(ValueError, match="mixes"):
        TrafficSelector(ipaddress.IPv4Address("10.0.0.0"), ipaddress.IPv6Address("::1"))
