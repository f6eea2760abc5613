"""Delete payload (RFC 7296 3.11).

One Delete names SAs of one protocol: the IKE SA itself (no SPIs: the header
names it), or a list of ESP/AH SPIs, each the SPI the *sender* expects on
inbound packets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final

from common.ike.constants import PayloadType, ProtocolId
from common.ike.errors import MalformedMessage
from common.ike.payloads._codec import body, expect_end
from common.wire.buffer import Buffer

# RFC 7296 3.11: SPI size zero for IKE, four for ESP and AH.
_SPI_SIZE: Final[dict[int, int]] = {ProtocolId.IKE: 0, ProtocolId.ESP: 4, ProtocolId.AH: 4}


@dataclass(frozen=True, slots=True)
class Delete:
    """A Delete payload: the protocol and the SPIs (none for the IKE SA)."""

    payload_type: ClassVar[PayloadType] = PayloadType.DELETE
    protocol_id: int
    spis: tuple[bytes, ...] = ()


def pull_delete(buf: Buffer, length: int) -> Delete:
    """Read a Delete body: protocol (1), SPI size (1), number of SPIs (2), SPIs."""
    sub = body(buf, length)
    raw_protocol = sub.pull_uint8()
    spi_size = sub.pull_uint8()
    count = sub.pull_uint16()
    if raw_protocol not in _SPI_SIZE:
        raise MalformedMessage(f"delete: protocol id {raw_protocol}")
    protocol_id = ProtocolId(raw_protocol)
    if spi_size != _SPI_SIZE[protocol_id]:
        raise MalformedMessage(
            f"delete: SPI size {spi_size} for {protocol_id.name}"
        )  # RFC 7296 3.11
    if protocol_id == ProtocolId.IKE and count != 0:
        raise MalformedMessage("delete of the IKE SA lists SPIs")  # RFC 7296 3.11
    spis = tuple(sub.pull_bytes(spi_size) for _ in range(count))
    expect_end(sub, "delete (number of SPIs disagrees with its length)")
    return Delete(protocol_id, spis)


def push_delete(buf: Buffer, payload: Delete) -> None:
    """Write a Delete payload body."""
    buf.push_uint8(payload.protocol_id)
    buf.push_uint8(_SPI_SIZE[payload.protocol_id])
    buf.push_uint16(len(payload.spis))
    for spi in payload.spis:
        buf.push_bytes(spi)
