"""Identification, Certificate, Certificate Request and Authentication payloads.

RFC 7296 3.5 - 3.8: the IKE_AUTH payloads that say who a peer is and prove it.
IDi and IDr share one layout; they are distinct classes so that a consumer can
ask a message for ``IdInitiator`` without looking at payload types, and so
that the two never compare equal (the AUTH octets sign exactly one of them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final

from common.ike.constants import AuthMethod, CertificateEncoding, IdType, PayloadType
from common.ike.errors import MalformedMessage
from common.ike.payloads._codec import as_enum, body
from common.wire.buffer import Buffer

# RFC 7296 3.5: address identities are exactly one address.
_ADDRESS_ID_LEN: Final[dict[int, int]] = {IdType.ID_IPV4_ADDR: 4, IdType.ID_IPV6_ADDR: 16}


@dataclass(frozen=True, slots=True)
class IdPayload:
    """The common layout of IDi and IDr (RFC 7296 3.5); use the subclasses."""

    payload_type: ClassVar[PayloadType]
    id_type: int
    data: bytes


@dataclass(frozen=True, slots=True)
class IdInitiator(IdPayload):
    """IDi."""

    payload_type: ClassVar[PayloadType] = PayloadType.IDI


@dataclass(frozen=True, slots=True)
class IdResponder(IdPayload):
    """IDr."""

    payload_type: ClassVar[PayloadType] = PayloadType.IDR


@dataclass(frozen=True, slots=True)
class Certificate:
    """CERT payload: an encoding and opaque certificate data (RFC 7296 3.6)."""

    payload_type: ClassVar[PayloadType] = PayloadType.CERT
    encoding: int
    data: bytes


@dataclass(frozen=True, slots=True)
class CertificateRequest:
    """CERTREQ payload: an encoding and the CA data, for X.509 a list of SHA-1 key hashes
    (RFC 7296 3.7)."""

    payload_type: ClassVar[PayloadType] = PayloadType.CERTREQ
    encoding: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Authentication:
    """AUTH payload: the method and the authentication data (RFC 7296 3.8)."""

    payload_type: ClassVar[PayloadType] = PayloadType.AUTH
    method: int
    data: bytes


def _pull_id(buf: Buffer, length: int) -> tuple[int, bytes]:
    sub = body(buf, length)
    id_type = as_enum(IdType, sub.pull_uint8())
    sub.pull_bytes(3)  # RESERVED
    data = sub.pull_bytes(sub.remaining())
    expected = _ADDRESS_ID_LEN.get(id_type)
    if expected is not None and len(data) != expected:
        raise MalformedMessage(f"ID type {id_type} with {len(data)} octets")  # RFC 7296 3.5
    return id_type, data


def pull_idi(buf: Buffer, length: int) -> IdInitiator:
    """Read an IDi payload body: ID type (1), RESERVED (3), identification data."""
    return IdInitiator(*_pull_id(buf, length))


def pull_idr(buf: Buffer, length: int) -> IdResponder:
    """Read an IDr payload body (same layout as IDi)."""
    return IdResponder(*_pull_id(buf, length))


def push_id(buf: Buffer, payload: IdPayload) -> None:
    """Write an IDi or IDr payload body."""
    buf.push_uint8(payload.id_type)
    buf.push_bytes(b"\x00\x00\x00")
    buf.push_bytes(payload.data)


def pull_cert(buf: Buffer, length: int) -> Certificate:
    """Read a CERT payload body: encoding (1), certificate data."""
    sub = body(buf, length)
    encoding = as_enum(CertificateEncoding, sub.pull_uint8())
    return Certificate(encoding, sub.pull_bytes(sub.remaining()))


def push_cert(buf: Buffer, payload: Certificate) -> None:
    """Write a CERT payload body."""
    buf.push_uint8(payload.encoding)
    buf.push_bytes(payload.data)


def pull_certreq(buf: Buffer, length: int) -> CertificateRequest:
    """Read a CERTREQ payload body: encoding (1), certification authority data."""
    sub = body(buf, length)
    encoding = as_enum(CertificateEncoding, sub.pull_uint8())
    return CertificateRequest(encoding, sub.pull_bytes(sub.remaining()))


def push_certreq(buf: Buffer, payload: CertificateRequest) -> None:
    """Write a CERTREQ payload body."""
    buf.push_uint8(payload.encoding)
    buf.push_bytes(payload.data)


def pull_auth(buf: Buffer, length: int) -> Authentication:
    """Read an AUTH payload body: method (1), RESERVED (3), authentication data."""
    sub = body(buf, length)
    method = as_enum(AuthMethod, sub.pull_uint8())
    sub.pull_bytes(3)  # RESERVED
    data = sub.pull_bytes(sub.remaining())
    if not data:
        raise MalformedMessage("AUTH payload without authentication data")
    return Authentication(method, data)


def push_auth(buf: Buffer, payload: Authentication) -> None:
    """Write an AUTH payload body."""
    buf.push_uint8(payload.method)
    buf.push_bytes(b"\x00\x00\x00")
    buf.push_bytes(payload.data)
