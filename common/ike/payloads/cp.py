"""Configuration payload, CP (RFC 7296 3.15).

The road warrior's CFG_REQUEST asks for an inner address and DNS; the
concentrator's CFG_REPLY answers with them. Attribute values are kept as
bytes because their meaning depends on the type (an address, an address
plus prefix length, a domain name), and an empty value is how a request
asks for "any" (RFC 7296 3.15.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final

from common.ike.constants import ConfigType, ConfigurationAttributeType, PayloadType
from common.ike.errors import MalformedMessage
from common.ike.payloads._codec import as_enum, body
from common.wire.buffer import Buffer

_TYPE_MASK: Final = 0x7FFF  # the top bit is the R bit, RFC 7296 3.15.1


@dataclass(frozen=True, slots=True)
class ConfigurationAttribute:
    """One configuration attribute: a type and its raw value (RFC 7296 3.15.1)."""

    attr_type: int
    value: bytes = b""


@dataclass(frozen=True, slots=True)
class ConfigurationPayload:
    """The CP payload: a CFG type and its attributes, in wire order."""

    payload_type: ClassVar[PayloadType] = PayloadType.CP
    cfg_type: int
    attributes: tuple[ConfigurationAttribute, ...] = ()


def pull_cp(buf: Buffer, length: int) -> ConfigurationPayload:
    """Read a CP body: CFG type (1), RESERVED (3), attributes."""
    sub = body(buf, length)
    cfg_type = as_enum(ConfigType, sub.pull_uint8())
    sub.pull_bytes(3)  # RESERVED
    attributes: list[ConfigurationAttribute] = []
    while not sub.eof():
        # RFC 7296 3.15.1: the R bit "MUST be set to zero and MUST be ignored on receipt".
        attr_type = as_enum(ConfigurationAttributeType, sub.pull_uint16() & _TYPE_MASK)
        value = sub.pull_bytes(sub.pull_uint16())
        attributes.append(ConfigurationAttribute(attr_type, value))
    if cfg_type == 0:
        raise MalformedMessage("CP with CFG type 0 (reserved)")
    return ConfigurationPayload(cfg_type, tuple(attributes))


def push_cp(buf: Buffer, payload: ConfigurationPayload) -> None:
    """Write a CP body."""
    buf.push_uint8(payload.cfg_type)
    buf.push_bytes(b"\x00\x00\x00")
    for attr in payload.attributes:
        buf.push_uint16(attr.attr_type & _TYPE_MASK)
        buf.push_uint16(len(attr.value))
        buf.push_bytes(attr.value)
