"""UDP encapsulation of IKE and ESP on port 4500, RFC 3948 section 2.

One UDP port carries three kinds of datagram, told apart by their first octets:

- a NAT-keepalive is the single octet 0xFF (section 2.3);
- an IKE message is preceded by the four-octet non-ESP marker, all zero
  (section 2.2), since no ESP SPI may be zero;
- anything else is ESP, starting with its SPI (section 2.1).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

NON_ESP_MARKER: Final = b"\x00\x00\x00\x00"
NAT_KEEPALIVE: Final = b"\xff"
NAT_T_PORT: Final = 4500  # RFC 3948 / RFC 7296 2.23
IKE_PORT: Final = 500
IKE_HEADER_LEN: Final = 28  # RFC 7296 3.1
ESP_HEADER_LEN: Final = 8  # SPI + sequence number, RFC 4303 2


class DatagramKind(IntEnum):
    ESP = 0
    IKE = 1
    KEEPALIVE = 2
    MALFORMED = 3


def classify(datagram: bytes) -> DatagramKind:
    """Which of the RFC 3948 kinds a datagram received on port 4500 is."""
    size = len(datagram)
    if size == 1:
        return DatagramKind.KEEPALIVE if datagram[0] == 0xFF else DatagramKind.MALFORMED
    if size < ESP_HEADER_LEN:
        return DatagramKind.MALFORMED
    if datagram[:4] == NON_ESP_MARKER:
        return DatagramKind.IKE if size >= 4 + IKE_HEADER_LEN else DatagramKind.MALFORMED
    return DatagramKind.ESP


def frame_ike(message: bytes) -> bytes:
    """Prefix an IKE message with the non-ESP marker for sending on port 4500."""
    return NON_ESP_MARKER + message


def unframe_ike(datagram: bytes) -> bytes:
    """The IKE message inside a datagram ``classify`` called IKE."""
    return datagram[4:]
