"""Security Association payload: proposals, transforms, attributes (RFC 7296 3.3).

The SA payload is the one payload with nested substructures, each with its
own length and "last substructure" marker, so it is where a sloppy parser
walks off the end of a buffer. Each level is read inside its own bounded
buffer and every count and marker is checked against what was actually
found (RFC 7296 3.3.1, 3.3.2, 3.3.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Final

from common.ike.constants import (
    EncryptionAlgorithm,
    ExtendedSequenceNumbers,
    IntegrityAlgorithm,
    KeyExchangeMethod,
    PayloadType,
    ProtocolId,
    PseudorandomFunction,
    TransformAttribute,
    TransformType,
)
from common.ike.errors import MalformedMessage
from common.ike.payloads._codec import as_enum, body, expect_end
from common.wire.buffer import Buffer

# RFC 7296 3.3.1 / 3.3.2: the Last Substruc values.
LAST: Final = 0
MORE_PROPOSALS: Final = 2
MORE_TRANSFORMS: Final = 3

_PROPOSAL_HEADER_LEN: Final = 8
_TRANSFORM_HEADER_LEN: Final = 8
_ATTRIBUTE_FORMAT_TV: Final = 0x8000  # the AF bit, RFC 7296 3.3.5

_TRANSFORM_IDS: Final[dict[int, type[IntEnum]]] = {
    TransformType.ENCR: EncryptionAlgorithm,
    TransformType.PRF: PseudorandomFunction,
    TransformType.INTEG: IntegrityAlgorithm,
    TransformType.KE: KeyExchangeMethod,
    TransformType.ESN: ExtendedSequenceNumbers,
}


@dataclass(frozen=True, slots=True)
class TransformAttr:
    """One transform attribute (RFC 7296 3.3.5).

    An ``int`` value is the TV format (AF bit set, 16-bit value); ``bytes`` is
    the TLV format. Unknown attributes are kept, not dropped, because RFC 7296
    3.3.6 says a transform with an attribute we do not understand must be
    rejected, and only the negotiation code can do that.
    """

    attr_type: int
    value: int | bytes


@dataclass(frozen=True, slots=True)
class Transform:
    """A transform substructure (RFC 7296 3.3.2)."""

    transform_type: int
    transform_id: int
    attributes: tuple[TransformAttr, ...] = ()

    @property
    def key_length(self) -> int | None:
        """The Key Length attribute in bits (RFC 7296 3.3.5), if present."""
        for attr in self.attributes:
            if attr.attr_type == TransformAttribute.KEY_LENGTH and isinstance(attr.value, int):
                return attr.value
        return None

    @classmethod
    def make(
        cls, transform_type: int, transform_id: int, key_length: int | None = None
    ) -> Transform:
        """A transform with an optional Key Length attribute, the only one IKEv2 defines."""
        attrs = (
            ()
            if key_length is None
            else (TransformAttr(TransformAttribute.KEY_LENGTH, key_length),)
        )
        return cls(transform_type, transform_id, attrs)


@dataclass(frozen=True, slots=True)
class Proposal:
    """A proposal substructure (RFC 7296 3.3.1).

    ``spi`` is empty in IKE_SA_INIT (the IKE SPIs live in the header), 8
    octets when rekeying an IKE SA and 4 for ESP or AH.
    """

    number: int
    protocol_id: int
    spi: bytes
    transforms: tuple[Transform, ...]


@dataclass(frozen=True, slots=True)
class SecurityAssociation:
    """The SA payload: one or more proposals in preference order (RFC 7296 3.3)."""

    payload_type: ClassVar[PayloadType] = PayloadType.SA
    proposals: tuple[Proposal, ...]


def _check_spi_size(protocol_id: int, spi_size: int) -> None:
    # RFC 7296 3.3.1: zero in an initial IKE SA negotiation, else 8 for IKE,
    # 4 for ESP and AH.
    if protocol_id == ProtocolId.IKE:
        allowed: tuple[int, ...] = (0, 8)
    elif protocol_id in (ProtocolId.ESP, ProtocolId.AH):
        allowed = (4,)
    else:
        raise MalformedMessage(f"proposal: unknown protocol id {protocol_id}")
    if spi_size not in allowed:
        raise MalformedMessage(f"proposal: SPI size {spi_size} for protocol {protocol_id}")


def _pull_attribute(sub: Buffer) -> TransformAttr:
    word = sub.pull_uint16()
    attr_type = word & 0x7FFF
    if word & _ATTRIBUTE_FORMAT_TV:
        return TransformAttr(attr_type, sub.pull_uint16())
    if attr_type == TransformAttribute.KEY_LENGTH:
        raise MalformedMessage("Key Length attribute must use TV format")  # RFC 7296 3.3.5
    return TransformAttr(attr_type, sub.pull_bytes(sub.pull_uint16()))


def _pull_transform(buf: Buffer) -> tuple[int, Transform]:
    last = buf.pull_uint8()
    buf.pull_uint8()  # RESERVED
    length = buf.pull_uint16()
    if length < _TRANSFORM_HEADER_LEN:
        raise MalformedMessage(f"transform length {length} < 8")
    sub = body(buf, length - 4)
    transform_type = as_enum(TransformType, sub.pull_uint8())
    sub.pull_uint8()  # RESERVED
    raw_id = sub.pull_uint16()
    registry = _TRANSFORM_IDS.get(transform_type)
    transform_id = as_enum(registry, raw_id) if registry is not None else raw_id
    attributes: list[TransformAttr] = []
    while not sub.eof():
        attributes.append(_pull_attribute(sub))
    return last, Transform(transform_type, transform_id, tuple(attributes))


def _pull_proposal(buf: Buffer) -> tuple[int, Proposal]:
    last = buf.pull_uint8()
    buf.pull_uint8()  # RESERVED
    length = buf.pull_uint16()
    if length < _PROPOSAL_HEADER_LEN:
        raise MalformedMessage(f"proposal length {length} < 8")
    sub = body(buf, length - 4)
    number = sub.pull_uint8()
    protocol_id = as_enum(ProtocolId, sub.pull_uint8())
    spi_size = sub.pull_uint8()
    count = sub.pull_uint8()
    _check_spi_size(protocol_id, spi_size)
    spi = sub.pull_bytes(spi_size)
    transforms: list[Transform] = []
    for index in range(count):
        marker, transform = _pull_transform(sub)
        # RFC 7296 3.3.2: 3 if more transforms follow, 0 on the last one.
        if marker != (LAST if index == count - 1 else MORE_TRANSFORMS):
            raise MalformedMessage(f"transform {index + 1}/{count}: last substruc {marker}")
        transforms.append(transform)
    if not transforms:
        raise MalformedMessage("proposal without transforms")
    expect_end(sub, "proposal (number of transforms disagrees with its length)")
    return last, Proposal(number, protocol_id, spi, tuple(transforms))


def pull_sa(buf: Buffer, length: int) -> SecurityAssociation:
    """Read an SA payload body of ``length`` octets."""
    sub = body(buf, length)
    proposals: list[Proposal] = []
    while True:
        marker, proposal = _pull_proposal(sub)
        proposals.append(proposal)
        # RFC 7296 3.3.1: 2 if more proposals follow, 0 on the last one.
        if marker == LAST:
            break
        if marker != MORE_PROPOSALS:
            raise MalformedMessage(f"proposal: last substruc {marker}")
    expect_end(sub, "SA payload after its last proposal")
    return SecurityAssociation(tuple(proposals))


def _push_transform(buf: Buffer, transform: Transform, last: bool) -> None:
    inner = Buffer()
    inner.push_uint8(transform.transform_type)
    inner.push_uint8(0)
    inner.push_uint16(transform.transform_id)
    for attr in transform.attributes:
        if isinstance(attr.value, int):
            inner.push_uint16(_ATTRIBUTE_FORMAT_TV | attr.attr_type)
            inner.push_uint16(attr.value)
        else:
            inner.push_uint16(attr.attr_type)
            inner.push_uint16(len(attr.value))
            inner.push_bytes(attr.value)
    data = inner.data
    buf.push_uint8(LAST if last else MORE_TRANSFORMS)
    buf.push_uint8(0)
    buf.push_uint16(4 + len(data))
    buf.push_bytes(data)


def _push_proposal(buf: Buffer, proposal: Proposal, last: bool) -> None:
    inner = Buffer()
    inner.push_uint8(proposal.number)
    inner.push_uint8(proposal.protocol_id)
    inner.push_uint8(len(proposal.spi))
    inner.push_uint8(len(proposal.transforms))
    inner.push_bytes(proposal.spi)
    for index, transform in enumerate(proposal.transforms):
        _push_transform(inner, transform, index == len(proposal.transforms) - 1)
    data = inner.data
    buf.push_uint8(LAST if last else MORE_PROPOSALS)
    buf.push_uint8(0)
    buf.push_uint16(4 + len(data))
    buf.push_bytes(data)


def push_sa(buf: Buffer, payload: SecurityAssociation) -> None:
    """Write an SA payload body."""
    for index, proposal in enumerate(payload.proposals):
        _push_proposal(buf, proposal, index == len(payload.proposals) - 1)
