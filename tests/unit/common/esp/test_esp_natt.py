"""RFC 3948 demultiplexing of port 4500: keepalive, IKE behind the non-ESP marker, or ESP.

https://www.rfc-editor.org/rfc/rfc3948#section-2
"""

from __future__ import annotations

import pytest

from common.esp.natt import (
    IKE_HEADER_LEN,
    NAT_KEEPALIVE,
    NAT_T_PORT,
    NON_ESP_MARKER,
    DatagramKind,
    classify,
    frame_ike,
    unframe_ike,
)

IKE_SA_INIT = bytes.fromhex("810d6849697aa1fc0000000000000000") + bytes.fromhex(
    "2120220800000000000000ff"
)  # a 28-octet IKEv2 header (RFC 7296 3.1) as seen in the strongSwan capture


def test_constants_are_the_rfc_values() -> None:
    assert NON_ESP_MARKER == b"\x00\x00\x00\x00"  # RFC 3948 2.2
    assert NAT_KEEPALIVE == b"\xff"  # RFC 3948 2.3
    assert NAT_T_PORT == 4500
    assert IKE_HEADER_LEN == len(IKE_SA_INIT) == 28


def test_keepalive_is_the_single_octet_ff() -> None:
    assert classify(NAT_KEEPALIVE) is DatagramKind.KEEPALIVE
    assert classify(b"\x00") is DatagramKind.MALFORMED
    assert classify(b"\xfe") is DatagramKind.MALFORMED
    assert classify(b"\xff\xff") is DatagramKind.MALFORMED, "two octets: neither keepalive nor ESP"


def test_ike_after_the_marker() -> None:
    datagram = frame_ike(IKE_SA_INIT)
    assert datagram == NON_ESP_MARKER + IKE_SA_INIT
    assert classify(datagram) is DatagramKind.IKE
    assert unframe_ike(datagram) == IKE_SA_INIT


def test_marker_with_less_than_an_ike_header_is_malformed() -> None:
    assert classify(NON_ESP_MARKER + IKE_SA_INIT[:-1]) is DatagramKind.MALFORMED
    assert classify(NON_ESP_MARKER + bytes(4)) is DatagramKind.MALFORMED


@pytest.mark.parametrize("spi", [0x00000100, 0x5A7FC4AE, 0xFFFFFFFF, 0x01000000])
def test_anything_with_a_nonzero_spi_is_esp(spi: int) -> None:
    """RFC 3948 2.1: ESP starts with its SPI, never zero, so the first four octets decide."""
    header = spi.to_bytes(4, "big") + (1).to_bytes(4, "big")
    assert classify(header) is DatagramKind.ESP
    assert classify(header + bytes(100)) is DatagramKind.ESP


@pytest.mark.parametrize("length", [0, 2, 3, 7])
def test_too_short_for_esp_is_malformed(length: int) -> None:
    assert classify(b"\x11" * length) is DatagramKind.MALFORMED
