"""Key Exchange and Nonce payloads (RFC 7296 3.4, 3.9).

They travel together in IKE_SA_INIT and CREATE_CHILD_SA, and both feed
SKEYSEED (RFC 7296 2.14), so they share a module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final

from common.ike.constants import KeyExchangeMethod, PayloadType
from common.ike.errors import MalformedMessage
from common.ike.payloads._codec import as_enum, body
from common.wire.buffer import Buffer

# RFC 7296 3.9: "The size of the Nonce Data MUST be between 16 and 256 octets, inclusive."
NONCE_MIN_LEN: Final = 16
NONCE_MAX_LEN: Final = 256


@dataclass(frozen=True, slots=True)
class KeyExchange:
    """KE payload: the group and our public value (RFC 7296 3.4)."""

    payload_type: ClassVar[PayloadType] = PayloadType.KE
    group: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Nonce:
    """Nonce payload, Ni or Nr (RFC 7296 3.9); public, unlike the keys it feeds."""

    payload_type: ClassVar[PayloadType] = PayloadType.NONCE
    data: bytes


def pull_ke(buf: Buffer, length: int) -> KeyExchange:
    """Read a KE payload body: group (2), RESERVED (2), key exchange data."""
    sub = body(buf, length)
    group = as_enum(KeyExchangeMethod, sub.pull_uint16())
    sub.pull_uint16()  # RESERVED
    data = sub.pull_bytes(sub.remaining())
    if not data:
        raise MalformedMessage("KE payload without key exchange data")
    return KeyExchange(group, data)


def push_ke(buf: Buffer, payload: KeyExchange) -> None:
    """Write a KE payload body."""
    buf.push_uint16(payload.group)
    buf.push_uint16(0)
    buf.push_bytes(payload.data)


def pull_nonce(buf: Buffer, length: int) -> Nonce:
    """Read a Nonce payload body, enforcing the RFC 7296 3.9 size range."""
    if not NONCE_MIN_LEN <= length <= NONCE_MAX_LEN:
        buf.pull_bytes(length)  # still report a short buffer as the error it is
        raise MalformedMessage(f"nonce of {length} octets outside 16..256")  # RFC 7296 3.9
    return Nonce(buf.pull_bytes(length))


def push_nonce(buf: Buffer, payload: Nonce) -> None:
    """Write a Nonce payload body."""
    buf.push_bytes(payload.data)
