"""IKE messages: the header, the generic payload chain, SK and SKF (RFC 7296 3.1, 3.2, 3.14;
RFC 7383 2.5).

``decode_message`` turns a datagram (without the RFC 3948 non-ESP marker) into
an ``IkeMessage``; ``encode_message`` is its exact inverse for every message
this module accepts. The Encrypted payload (SK) and the Encrypted Fragment
(SKF) are returned undecrypted: their body is the crypto module's, which
decrypts it and hands the plaintext to ``decode_payload_chain``.

``peek_header`` reads only the fixed header, so the concentrator can route a
datagram by SPI before spending any time on the payloads.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeVar

from common.ike.constants import ExchangeType, PayloadType
from common.ike.errors import (
    InvalidMajorVersionError,
    MalformedMessage,
    UnsupportedCriticalPayloadError,
)
from common.ike.payloads import (
    KnownPayload,
    Notify,
    UnknownPayload,
    cp,
    delete,
    id_auth,
    ke,
    misc,
    notify,
    sa,
    ts,
)
from common.ike.payloads._codec import as_enum
from common.wire.buffer import Buffer

IKE_HEADER_LEN: Final = 28
IKE_MAJOR_VERSION: Final = 2
GENERIC_HEADER_LEN: Final = 4

# RFC 7296 3.1 flags octet: bit 3 Initiator, bit 4 Version, bit 5 Response.
FLAG_INITIATOR: Final = 0x08
FLAG_VERSION: Final = 0x10
FLAG_RESPONSE: Final = 0x20
CRITICAL: Final = 0x80  # RFC 7296 3.2

_HEADER: Final = struct.Struct("!8s8sBBBBII")
_GENERIC: Final = struct.Struct("!BBH")
_FRAGMENT_HEADER_LEN: Final = 4  # Fragment Number (2), Total Fragments (2), RFC 7383 2.5


@dataclass(frozen=True, slots=True)
class IkeHeader:
    """The fixed IKE header minus the two fields derived from the payloads
    (Next Payload and Length), RFC 7296 3.1.

    ``higher_version`` is the V flag and ``minor_version`` the minor version:
    both are sent as zero by IKEv2 and ignored on receipt, and are kept only
    so that a received message re-encodes byte for byte.
    """

    spi_i: bytes
    spi_r: bytes
    exchange_type: int
    message_id: int
    initiator: bool
    response: bool
    higher_version: bool = False
    minor_version: int = 0


@dataclass(frozen=True, slots=True)
class EncryptedPayload:
    """SK payload, still encrypted (RFC 7296 3.14).

    ``body`` is IV, ciphertext (with padding and pad length) and ICV. Because
    SK is always last, the associated data of an AEAD (RFC 5282 5.1) is the
    datagram minus ``body``: ``data[: len(data) - len(body)]``.
    """

    payload_type: ClassVar[PayloadType] = PayloadType.SK
    first_payload: int
    body: bytes


@dataclass(frozen=True, slots=True)
class EncryptedFragment:
    """SKF payload, one fragment of an SK payload (RFC 7383 2.5)."""

    payload_type: ClassVar[PayloadType] = PayloadType.SKF
    first_payload: int  # the first inner payload type in fragment 1, else 0
    fragment_number: int
    total_fragments: int
    body: bytes


Payload = KnownPayload | UnknownPayload | EncryptedPayload | EncryptedFragment
P = TypeVar("P")


@dataclass(frozen=True, slots=True)
class IkeMessage:
    """A decoded IKE message: header and payloads in wire order."""

    header: IkeHeader
    payloads: tuple[Payload, ...]

    def get(self, kind: type[P]) -> P | None:
        """The first payload of class ``kind``, or None."""
        for payload in self.payloads:
            if isinstance(payload, kind):
                return payload
        return None

    def get_all(self, kind: type[P]) -> list[P]:
        """Every payload of class ``kind``, in wire order."""
        return [payload for payload in self.payloads if isinstance(payload, kind)]

    def notify(self, notify_type: int) -> Notify | None:
        """The first Notify of ``notify_type``, or None."""
        for payload in self.payloads:
            if isinstance(payload, Notify) and payload.notify_type == notify_type:
                return payload
        return None


_PULL: Final[dict[int, Callable[[Buffer, int], KnownPayload]]] = {
    PayloadType.SA: sa.pull_sa,
    PayloadType.KE: ke.pull_ke,
    PayloadType.IDI: id_auth.pull_idi,
    PayloadType.IDR: id_auth.pull_idr,
    PayloadType.CERT: id_auth.pull_cert,
    PayloadType.CERTREQ: id_auth.pull_certreq,
    PayloadType.AUTH: id_auth.pull_auth,
    PayloadType.NONCE: ke.pull_nonce,
    PayloadType.NOTIFY: notify.pull_notify,
    PayloadType.DELETE: delete.pull_delete,
    PayloadType.VENDOR_ID: misc.pull_vendor_id,
    PayloadType.TSI: ts.pull_tsi,
    PayloadType.TSR: ts.pull_tsr,
    PayloadType.CP: cp.pull_cp,
    PayloadType.EAP: misc.pull_eap,
}


def _push_encrypted(buf: Buffer, payload: EncryptedPayload) -> None:
    buf.push_bytes(payload.body)


def _push_fragment(buf: Buffer, payload: EncryptedFragment) -> None:
    buf.push_uint16(payload.fragment_number)
    buf.push_uint16(payload.total_fragments)
    buf.push_bytes(payload.body)


_PUSH: Final[dict[type, Callable[[Buffer, Any], None]]] = {
    sa.SecurityAssociation: sa.push_sa,
    ke.KeyExchange: ke.push_ke,
    id_auth.IdInitiator: id_auth.push_id,
    id_auth.IdResponder: id_auth.push_id,
    id_auth.Certificate: id_auth.push_cert,
    id_auth.CertificateRequest: id_auth.push_certreq,
    id_auth.Authentication: id_auth.push_auth,
    ke.Nonce: ke.push_nonce,
    notify.Notify: notify.push_notify,
    delete.Delete: delete.push_delete,
    misc.VendorId: misc.push_vendor_id,
    ts.TsInitiator: ts.push_ts,
    ts.TsResponder: ts.push_ts,
    cp.ConfigurationPayload: cp.push_cp,
    misc.Eap: misc.push_eap,
    misc.UnknownPayload: misc.push_unknown,
    EncryptedPayload: _push_encrypted,
    EncryptedFragment: _push_fragment,
}


# --- header -----------------------------------------------------------------------------


def _decode_header(data: bytes) -> tuple[IkeHeader, int]:
    if len(data) < IKE_HEADER_LEN:
        raise MalformedMessage(f"{len(data)} octets: shorter than the IKE header")
    spi_i, spi_r, next_payload, version, exchange, flags, message_id, length = _HEADER.unpack_from(
        data
    )
    if version >> 4 != IKE_MAJOR_VERSION:
        raise InvalidMajorVersionError(version >> 4)  # RFC 7296 2.5: drop, may answer
    if length != len(data):
        raise MalformedMessage(f"IKE header length {length} but datagram of {len(data)}")
    header = IkeHeader(
        spi_i,
        spi_r,
        as_enum(ExchangeType, exchange),
        message_id,
        initiator=bool(flags & FLAG_INITIATOR),
        response=bool(flags & FLAG_RESPONSE),
        higher_version=bool(flags & FLAG_VERSION),
        minor_version=version & 0x0F,
    )
    return header, next_payload


def peek_header(data: bytes) -> IkeHeader:
    """The header of a datagram, checked (size, major version, length) but with no payload
    parsed: enough to route by SPI and message ID.

    Raises:
        MalformedMessage: too short, or the Length field is not the datagram's length.
        InvalidMajorVersionError: the major version is not 2 (RFC 7296 2.5).
    """
    return _decode_header(data)[0]


def encode_header(header: IkeHeader, next_payload: int, length: int) -> bytes:
    """The 28 header octets for a message of ``length`` octets whose first payload is
    ``next_payload`` (the SK encoder needs it before the payloads exist, as AAD)."""
    flags = (
        (FLAG_INITIATOR if header.initiator else 0)
        | (FLAG_RESPONSE if header.response else 0)
        | (FLAG_VERSION if header.higher_version else 0)
    )
    return _HEADER.pack(
        header.spi_i,
        header.spi_r,
        next_payload,
        IKE_MAJOR_VERSION << 4 | header.minor_version,
        header.exchange_type,
        flags,
        header.message_id,
        length,
    )


# --- payload chain ----------------------------------------------------------------------


def _pull_encrypted(buf: Buffer, payload_type: int, first: int, length: int) -> Payload:
    # RFC 7296 3.14 (and RFC 7383 2.5): SK/SKF is the last payload; its Next
    # Payload names the first inner payload, so its body must run to the end.
    if buf.remaining() != length:
        raise MalformedMessage("SK payload is not the last payload")  # RFC 7296 3.14
    if payload_type == PayloadType.SK:
        return EncryptedPayload(first, buf.pull_bytes(length))
    if length < _FRAGMENT_HEADER_LEN:
        raise MalformedMessage("SKF payload shorter than its fragment header")
    number = buf.pull_uint16()
    total = buf.pull_uint16()
    if not 1 <= number <= total:
        raise MalformedMessage(f"fragment {number} of {total}")  # RFC 7383 2.5
    if number > 1 and first != PayloadType.NO_NEXT_PAYLOAD:
        raise MalformedMessage("non-first fragment names an inner payload")  # RFC 7383 2.5
    return EncryptedFragment(first, number, total, buf.pull_bytes(length - 4))


def _decode_chain(first_type: int, data: bytes, allow_encrypted: bool) -> list[Payload]:
    buf = Buffer(data)
    payloads: list[Payload] = []
    payload_type = first_type
    while payload_type != PayloadType.NO_NEXT_PAYLOAD:
        following = buf.pull_uint8()
        flags = buf.pull_uint8()
        length = buf.pull_uint16() - GENERIC_HEADER_LEN
        if length < 0 or length > buf.remaining():
            raise MalformedMessage(f"payload type {payload_type}: length {length + 4}")
        if payload_type in (PayloadType.SK, PayloadType.SKF):
            if not allow_encrypted:
                raise MalformedMessage("encrypted payload inside an encrypted payload")
            payloads.append(_pull_encrypted(buf, payload_type, following, length))
            return payloads
        pull = _PULL.get(payload_type)
        if pull is not None:
            payloads.append(pull(buf, length))
        elif flags & CRITICAL:
            raise UnsupportedCriticalPayloadError(payload_type)  # RFC 7296 2.5
        else:
            payloads.append(misc.pull_unknown(buf, length, payload_type))  # RFC 7296 2.5: skip
        payload_type = following
    if not buf.eof():
        raise MalformedMessage(f"{buf.remaining()} octets after the last payload")
    return payloads


def decode_payload_chain(first_type: int, data: bytes) -> list[Payload]:
    """The payloads of a decrypted SK body (``first_type`` is the SK's Next Payload).

    Raises:
        MalformedMessage: any malformed payload, trailing octets, or a nested SK.
        UnsupportedCriticalPayloadError: an unknown payload type with the critical bit.
    """
    return _decode_chain(first_type, data, allow_encrypted=False)


def encode_payload_chain(payloads: Sequence[Payload]) -> tuple[int, bytes]:
    """(type of the first payload, the chained payloads): the plaintext of an SK payload,
    or the body of a message."""
    parts: list[bytes] = []
    last = len(payloads) - 1
    for index, payload in enumerate(payloads):
        if isinstance(payload, EncryptedPayload | EncryptedFragment):
            if index != last:
                raise ValueError("SK/SKF must be the last payload")  # RFC 7296 3.14
            following = payload.first_payload
        else:
            following = payloads[index + 1].payload_type if index < last else 0
        buf = Buffer()
        _PUSH[type(payload)](buf, payload)
        body = buf.data
        critical = CRITICAL if isinstance(payload, UnknownPayload) and payload.critical else 0
        parts.append(_GENERIC.pack(following, critical, GENERIC_HEADER_LEN + len(body)) + body)
    first = payloads[0].payload_type if payloads else PayloadType.NO_NEXT_PAYLOAD
    return first, b"".join(parts)


# --- whole messages -----------------------------------------------------------------------


def decode_message(data: bytes) -> IkeMessage:
    """Decode one IKE datagram (after the non-ESP marker, if it came on port 4500).

    Raises:
        MalformedMessage: the datagram does not parse (RFC 7296 INVALID_SYNTAX).
        InvalidMajorVersionError: not IKE version 2.x (RFC 7296 2.5).
        UnsupportedCriticalPayloadError: an unknown critical payload (RFC 7296 2.5).
    """
    header, first_type = _decode_header(data)
    payloads = _decode_chain(first_type, data[IKE_HEADER_LEN:], allow_encrypted=True)
    return IkeMessage(header, tuple(payloads))


def encode_message(message: IkeMessage) -> bytes:
    """The datagram for ``message``; Next Payload and Length are computed here."""
    first, chain = encode_payload_chain(message.payloads)
    return encode_header(message.header, first, IKE_HEADER_LEN + len(chain)) + chain
