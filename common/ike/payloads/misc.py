"""Opaque payloads: Vendor ID (RFC 7296 3.12), EAP (3.16) and unknown types (3.2).

These carry bytes the codec does not interpret: a vendor ID is compared whole,
an EAP message goes to the EAP method, and an unknown non-critical payload is
kept only so that it can be skipped (and re-encoded byte for byte).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from common.ike.constants import PayloadType
from common.ike.errors import MalformedMessage
from common.ike.payloads._codec import body
from common.wire.buffer import Buffer


@dataclass(frozen=True, slots=True)
class VendorId:
    """Vendor ID payload: an opaque identifier, usually a hash (RFC 7296 3.12)."""

    payload_type: ClassVar[PayloadType] = PayloadType.VENDOR_ID
    data: bytes


@dataclass(frozen=True, slots=True)
class Eap:
    """EAP payload: one EAP message (RFC 7296 3.16, RFC 3748 4)."""

    payload_type: ClassVar[PayloadType] = PayloadType.EAP
    data: bytes


@dataclass(frozen=True, slots=True)
class UnknownPayload:
    """A payload of a type we do not implement, received without the critical bit.

    RFC 7296 2.5: such payloads are skipped. ``critical`` exists for encoding
    (tests, or forwarding); a received one is always False, because an unknown
    critical payload is rejected while parsing.
    """

    type_code: int
    data: bytes
    critical: bool = False

    @property
    def payload_type(self) -> int:
        return self.type_code


def pull_vendor_id(buf: Buffer, length: int) -> VendorId:
    """Read a Vendor ID body (opaque)."""
    return VendorId(buf.pull_bytes(length))


def push_vendor_id(buf: Buffer, payload: VendorId) -> None:
    """Write a Vendor ID body."""
    buf.push_bytes(payload.data)


def pull_eap(buf: Buffer, length: int) -> Eap:
    """Read an EAP body; the EAP message's own length must match (RFC 3748 4)."""
    sub = body(buf, length)
    data = sub.data
    sub.pull_bytes(2)  # Code, Identifier
    if sub.pull_uint16() != length:
        raise MalformedMessage("EAP length disagrees with the payload length")
    return Eap(data)


def push_eap(buf: Buffer, payload: Eap) -> None:
    """Write an EAP body."""
    buf.push_bytes(payload.data)


def pull_unknown(buf: Buffer, length: int, type_code: int) -> UnknownPayload:
    """Read the body of a payload of an unimplemented type."""
    return UnknownPayload(type_code, buf.pull_bytes(length))


def push_unknown(buf: Buffer, payload: UnknownPayload) -> None:
    """Write an unknown payload's body back as it was."""
    buf.push_bytes(payload.data)
