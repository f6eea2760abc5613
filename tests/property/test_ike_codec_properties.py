"""IKE codecs under hypothesis: parser totality and push -> pull round trips.

STYLE.md: "Every parser, given arbitrary bytes, raises only MalformedMessage",
and push followed by pull returns the original (h11 ``fuzz/`` posture).
``decode_message`` may also raise the two documented non-syntax errors:
InvalidMajorVersionError and UnsupportedCriticalPayloadError (RFC 7296 2.5).
"""

from __future__ import annotations

import contextlib
import ipaddress
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.ike.constants import ProtocolId
from common.ike.errors import (
    InvalidMajorVersionError,
    MalformedMessage,
    UnsupportedCriticalPayloadError,
)
from common.ike.message import (
    EncryptedFragment,
    EncryptedPayload,
    IkeHeader,
    IkeMessage,
    decode_message,
    decode_payload_chain,
    encode_message,
)
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
    UnknownPayload,
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

FUZZ = settings(max_examples=200, deadline=None)
ROUND_TRIP = settings(max_examples=150, deadline=None)

PULLS: dict[str, Callable[[Buffer, int], Any]] = {
    "sa": sa.pull_sa,
    "ke": ke.pull_ke,
    "nonce": ke.pull_nonce,
    "idi": id_auth.pull_idi,
    "idr": id_auth.pull_idr,
    "cert": id_auth.pull_cert,
    "certreq": id_auth.pull_certreq,
    "auth": id_auth.pull_auth,
    "notify": notify.pull_notify,
    "delete": delete.pull_delete,
    "vendor_id": misc.pull_vendor_id,
    "eap": misc.pull_eap,
    "tsi": ts.pull_tsi,
    "tsr": ts.pull_tsr,
    "cp": cp.pull_cp,
}

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
blob = st.binary(max_size=40)
nonempty = st.binary(min_size=1, max_size=40)


@FUZZ
@given(name=st.sampled_from(sorted(PULLS)), data=st.binary(max_size=120), extra=st.integers(-2, 8))
def test_every_pull_raises_only_malformed(name: str, data: bytes, extra: int) -> None:
    buf = Buffer(data)
    length = max(0, len(data) - extra)  # sometimes claim more than there is
    try:
        PULLS[name](buf, length)
    except MalformedMessage:
        return
    assert buf.tell() == length  # a successful pull consumes exactly its body


# --- generated payloads -----------------------------------------------------------------


def transforms() -> st.SearchStrategy[Transform]:
    attribute = st.one_of(
        st.builds(TransformAttr, st.just(14), u16),
        st.builds(TransformAttr, st.integers(1, 0x7FFF).filter(lambda t: t != 14), blob),
    )
    return st.builds(
        Transform,
        st.integers(1, 255),
        u16,
        st.tuples() | st.lists(attribute, max_size=2).map(tuple),
    )


@st.composite
def proposals(draw: st.DrawFn) -> Proposal:
    protocol = draw(st.sampled_from([ProtocolId.IKE, ProtocolId.ESP, ProtocolId.AH]))
    spi_size = draw(st.sampled_from([0, 8])) if protocol == ProtocolId.IKE else 4
    return Proposal(
        draw(u8),
        protocol,
        draw(st.binary(min_size=spi_size, max_size=spi_size)),
        tuple(draw(st.lists(transforms(), min_size=1, max_size=4))),
    )


@st.composite
def selectors(draw: st.DrawFn) -> TrafficSelector | UnknownTrafficSelector:
    kind = draw(st.sampled_from([4, 6, 0]))
    if kind == 0:
        return UnknownTrafficSelector(draw(st.integers(9, 255)), draw(u8), draw(blob))
    size = 4 if kind == 4 else 16
    address = st.binary(min_size=size, max_size=size).map(ipaddress.ip_address)
    return TrafficSelector(draw(address), draw(address), draw(u8), draw(u16), draw(u16))


@st.composite
def deletes(draw: st.DrawFn) -> Delete:
    protocol = draw(st.sampled_from([ProtocolId.IKE, ProtocolId.ESP, ProtocolId.AH]))
    if protocol == ProtocolId.IKE:
        return Delete(protocol)
    spi = st.binary(min_size=4, max_size=4)
    return Delete(protocol, tuple(draw(st.lists(spi, max_size=5))))


eaps = st.builds(
    lambda code, ident, data: Eap(struct.pack("!BBH", code, ident, 4 + len(data)) + data),
    u8,
    u8,
    blob,
)
spis = st.sampled_from([0, 4, 8]).flatmap(lambda n: st.binary(min_size=n, max_size=n))

payloads: st.SearchStrategy[Any] = st.one_of(
    st.builds(SecurityAssociation, st.lists(proposals(), min_size=1, max_size=3).map(tuple)),
    st.builds(KeyExchange, u16, nonempty),
    st.builds(Nonce, st.binary(min_size=16, max_size=256)),
    st.builds(IdInitiator, st.sampled_from([2, 3, 9, 11, 200]), blob),
    st.builds(IdResponder, st.just(1), st.binary(min_size=4, max_size=4)),
    st.builds(IdResponder, st.just(5), st.binary(min_size=16, max_size=16)),
    st.builds(Certificate, u8, blob),
    st.builds(CertificateRequest, u8, blob),
    st.builds(Authentication, u8, nonempty),
    st.builds(Notify, u16, blob, u8, spis),
    deletes(),
    st.builds(VendorId, blob),
    st.builds(TsInitiator, st.lists(selectors(), min_size=1, max_size=3).map(tuple)),
    st.builds(TsResponder, st.lists(selectors(), min_size=1, max_size=3).map(tuple)),
    st.builds(
        ConfigurationPayload,
        st.integers(1, 255),
        st.lists(st.builds(ConfigurationAttribute, st.integers(0, 0x7FFF), blob), max_size=4).map(
            tuple
        ),
    ),
    eaps,
    st.builds(UnknownPayload, st.integers(1, 255).filter(lambda t: not 33 <= t <= 53), blob),
)


@ROUND_TRIP
@given(payload=payloads)
def test_push_then_pull_returns_the_payload(payload: Any) -> None:
    from common.ike.message import encode_payload_chain

    first, chain = encode_payload_chain((payload,))
    assert decode_payload_chain(first, chain) == [payload]


headers = st.builds(
    IkeHeader,
    st.binary(min_size=8, max_size=8),
    st.binary(min_size=8, max_size=8),
    u8,
    st.integers(0, 0xFFFFFFFF),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.integers(0, 15),
)
encrypted = st.one_of(
    st.builds(EncryptedPayload, u8, blob),
    st.builds(EncryptedFragment, st.just(0), st.just(2), st.integers(2, 9), blob),
)


@ROUND_TRIP
@given(
    header=headers,
    body=st.lists(payloads, max_size=4),
    sk=st.none() | encrypted,
)
def test_message_round_trip(header: IkeHeader, body: list[Any], sk: Any) -> None:
    message = IkeMessage(header, tuple(body) + ((sk,) if sk is not None else ()))
    data = encode_message(message)
    assert decode_message(data) == message
    assert encode_message(decode_message(data)) == data


def _decode_totally(data: bytes) -> None:
    with contextlib.suppress(
        MalformedMessage, InvalidMajorVersionError, UnsupportedCriticalPayloadError
    ):
        decode_message(data)


@FUZZ
@given(data=st.binary(max_size=200))
def test_decode_message_on_arbitrary_bytes(data: bytes) -> None:
    _decode_totally(data)


@FUZZ
@given(header=headers, first=u8, chain=st.binary(max_size=160))
def test_decode_message_on_arbitrary_payload_chains(
    header: IkeHeader, first: int, chain: bytes
) -> None:
    """Past the header checks: a valid header with the right length and random payloads."""
    from common.ike.message import encode_header

    _decode_totally(encode_header(header, first, 28 + len(chain)) + chain)


@FUZZ
@given(message_body=st.lists(payloads, min_size=1, max_size=3), data=st.data())
def test_decode_message_on_corrupted_valid_messages(
    message_body: list[Any], data: st.DataObject
) -> None:
    """Valid messages with one octet changed reach deep into the nested parsers."""
    header = IkeHeader(b"\x01" * 8, bytes(8), 34, 0, True, False)
    encoded = bytearray(encode_message(IkeMessage(header, tuple(message_body))))
    index = data.draw(st.integers(28, len(encoded) - 1))
    encoded[index] = data.draw(u8)
    _decode_totally(bytes(encoded))


@pytest.mark.parametrize("first", [33, 41, 44, 47])
def test_decode_payload_chain_on_garbage_is_malformed(first: int) -> None:
    with pytest.raises(MalformedMessage):
        decode_payload_chain(first, b"\x00\x00\x00\x05")
