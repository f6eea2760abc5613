"""IPv4 (RFC 791) and IPv6 (RFC 8200) header peeking for the data path.

The data path needs three facts about an inner packet: its source (anti-spoof),
its destination (which client it goes to) and whether its length fields agree
with the bytes we hold. These helpers read them without building objects, and
return ``None`` instead of raising: on the packet path a bad packet is a counted
drop, not an exception (STYLE.md "The ESP data path raises no exceptions").
Addresses stay as ``bytes`` slices (4 or 16 bytes) so they can be dictionary
keys without conversion.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

IPV4_HEADER_MIN: Final = 20
IPV6_HEADER_LEN: Final = 40

_U16: Final = struct.Struct("!H")


@dataclass(frozen=True, slots=True)
class IpHeader:
    """The fields of an IP header the data plane cares about."""

    version: int
    source: bytes
    destination: bytes
    protocol: int  # IPv4 protocol, or IPv6 next header of the fixed header
    total_length: int  # whole packet, header included


def ip_version(packet: bytes) -> int:
    """The version nibble, or 0 for an empty packet."""
    return packet[0] >> 4 if packet else 0


def parse_ip_header(packet: bytes) -> IpHeader | None:
    """Validate the header and length fields; ``None`` when the packet is malformed.

    IPv4: version 4, IHL >= 5, header within the bytes, total length >= IHL*4
    and no longer than the bytes held. IPv6: payload length + 40 no longer
    than the bytes held. Trailing bytes beyond the stated length are allowed
    (link padding), as a receiving host allows them.
    """
    size = len(packet)
    if size == 0:
        return None
    version = packet[0] >> 4
    if version == 4:
        header_len = (packet[0] & 0x0F) * 4
        if header_len < IPV4_HEADER_MIN or size < header_len:
            return None
        total = _U16.unpack_from(packet, 2)[0]
        if total < header_len or total > size:
            return None
        return IpHeader(4, packet[12:16], packet[16:20], packet[9], total)
    if version == 6:
        if size < IPV6_HEADER_LEN:
            return None
        total = _U16.unpack_from(packet, 4)[0] + IPV6_HEADER_LEN
        if total > size:
            return None
        return IpHeader(6, packet[8:24], packet[24:40], packet[6], total)
    return None


def source_address(packet: bytes) -> bytes | None:
    """Inner source address bytes for the anti-spoof check, without full validation."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4 and len(packet) >= IPV4_HEADER_MIN:
        return packet[12:16]
    if version == 6 and len(packet) >= IPV6_HEADER_LEN:
        return packet[8:24]
    return None


def destination_address(packet: bytes) -> bytes | None:
    """Inner destination address bytes, used to find the client a packet goes to."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4 and len(packet) >= IPV4_HEADER_MIN:
        return packet[16:20]
    if version == 6 and len(packet) >= IPV6_HEADER_LEN:
        return packet[24:40]
    return None


def internet_checksum(data: bytes) -> int:
    """RFC 1071 ones' complement sum, for building test and probe packets (not the hot path)."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
