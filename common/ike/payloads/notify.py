"""Notify payload (RFC 7296 3.10).

Notifies carry both errors (types below 16384) and status (NAT detection,
COOKIE, REKEY_SA, ...). The codec keeps the type as an ``int`` when the
registry does not list it: RFC 7296 3.10.1 says an unrecognized error type
in a response means the request failed, an unrecognized status type is
ignored; that is the exchange code's decision, not the parser's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final

from common.ike.constants import NotifyType, PayloadType, ProtocolId
from common.ike.errors import MalformedMessage
from common.ike.payloads._codec import as_enum, body
from common.wire.buffer import Buffer

# RFC 7296 3.10.1: "Types in the range 0 - 16383 are intended for reporting errors."
ERROR_TYPES_END: Final = 16384


@dataclass(frozen=True, slots=True)
class Notify:
    """A Notify payload.

    ``protocol_id`` and ``spi`` name the Child SA a notify is about (for
    example REKEY_SA); both are empty/zero for notifies about the IKE SA.
    """

    payload_type: ClassVar[PayloadType] = PayloadType.NOTIFY
    notify_type: int
    data: bytes = b""
    protocol_id: int = 0
    spi: bytes = b""

    @property
    def is_error(self) -> bool:
        """True for error types (RFC 7296 3.10.1)."""
        return self.notify_type < ERROR_TYPES_END


def pull_notify(buf: Buffer, length: int) -> Notify:
    """Read a Notify body: protocol (1), SPI size (1), type (2), SPI, notification data."""
    sub = body(buf, length)
    protocol_id = sub.pull_uint8()
    spi_size = sub.pull_uint8()
    notify_type = as_enum(NotifyType, sub.pull_uint16())
    # RFC 7296 3.10: the SPI is 0 (IKE SA), 4 (ESP/AH) or, as some peers send
    # for the IKE SA, 8 octets. Any other size cannot name an SA.
    if spi_size not in (0, 4, 8):
        raise MalformedMessage(f"notify SPI size {spi_size}")
    spi = sub.pull_bytes(spi_size)
    data = sub.pull_bytes(sub.remaining())
    # RFC 7296 3.10: with no SPI the protocol "MUST be sent as zero and MUST be
    # ignored on receipt", so it is kept as received (for byte-exact re-encoding).
    return Notify(notify_type, data, as_enum(ProtocolId, protocol_id), spi)


def push_notify(buf: Buffer, payload: Notify) -> None:
    """Write a Notify payload body."""
    buf.push_uint8(payload.protocol_id)
    buf.push_uint8(len(payload.spi))
    buf.push_uint16(payload.notify_type)
    buf.push_bytes(payload.spi)
    buf.push_bytes(payload.data)
