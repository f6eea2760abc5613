"""Parsers on arbitrary bytes (hypothesis): they never raise, and what they return is true.

STYLE.md: parsers on the packet path return ``None`` or a drop reason instead
of raising; DESIGN.md tier 3 fuzzes them (the h11 ``fuzz/`` posture).
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from common.esp.natt import NAT_KEEPALIVE, NON_ESP_MARKER, DatagramKind, classify
from common.wire.ip import (
    destination_address,
    internet_checksum,
    parse_ip_header,
    source_address,
)
from tests.helpers.packets import ipv4_header, ipv6_header, ones_complement_checksum

FUZZ_SETTINGS = settings(max_examples=300, deadline=None)


def datagrams() -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, plus the interesting prefixes a blind generator rarely hits."""
    return st.one_of(
        st.binary(max_size=80),
        st.binary(max_size=60).map(lambda tail: NON_ESP_MARKER + tail),
        st.binary(max_size=3).map(lambda tail: NAT_KEEPALIVE + tail),
    )


@FUZZ_SETTINGS
@given(datagram=datagrams())
def test_classify_never_raises_and_follows_rfc_3948(datagram: bytes) -> None:
    kind = classify(datagram)
    assert isinstance(kind, DatagramKind)
    if datagram == NAT_KEEPALIVE:
        assert kind is DatagramKind.KEEPALIVE
    elif len(datagram) < 8:
        assert kind is DatagramKind.MALFORMED
    elif datagram[:4] == NON_ESP_MARKER:
        assert kind is (DatagramKind.IKE if len(datagram) >= 32 else DatagramKind.MALFORMED)
    else:
        assert kind is DatagramKind.ESP


def ip_like() -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, and real headers with random fields and random (often wrong) lengths."""
    v4 = st.builds(
        lambda ihl, total, proto, body: (
            bytes([0x40 | ihl])
            + b"\x00"
            + struct.pack("!H", total)
            + ipv4_header("10.1.2.3", "10.4.5.6", proto, 0)[4:]
            + body
        ),
        st.integers(0, 15),
        st.one_of(st.integers(0, 0xFFFF), st.integers(0, 110)),  # often near the real size
        st.integers(0, 255),
        st.binary(max_size=80),
    )
    v6 = st.builds(
        lambda plen, nh, body: ipv6_header("fd00::1", "fd00::2", nh, plen) + body,
        st.one_of(st.integers(0, 0xFFFF), st.integers(0, 90)),
        st.integers(0, 255),
        st.binary(max_size=80),
    )
    return st.one_of(
        st.binary(max_size=100), v4, v6, v4.map(lambda p: p[:30]), v6.map(lambda p: p[:45])
    )


@FUZZ_SETTINGS
@given(packet=ip_like())
def test_parse_ip_header_returns_none_or_the_truth(packet: bytes) -> None:
    header = parse_ip_header(packet)
    if header is None:
        return
    assert header.version == packet[0] >> 4
    assert header.total_length <= len(packet)
    if header.version == 4:
        ihl = (packet[0] & 0x0F) * 4
        assert 20 <= ihl <= header.total_length
        assert header.total_length == struct.unpack_from("!H", packet, 2)[0]
        assert (header.source, header.destination) == (packet[12:16], packet[16:20])
        assert header.protocol == packet[9]
    else:
        assert header.version == 6
        assert header.total_length == 40 + struct.unpack_from("!H", packet, 4)[0]
        assert (header.source, header.destination) == (packet[8:24], packet[24:40])
        assert header.protocol == packet[6]
    assert source_address(packet) == header.source
    assert destination_address(packet) == header.destination


@FUZZ_SETTINGS
@given(packet=ip_like())
def test_parse_ip_header_accepts_every_well_formed_header(packet: bytes) -> None:
    """The other direction: whenever the length fields are consistent, the header is returned."""
    if not packet:
        return
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        ihl = (packet[0] & 0x0F) * 4
        total = struct.unpack_from("!H", packet, 2)[0]
        well_formed = ihl >= 20 and ihl <= total <= len(packet)
    elif version == 6 and len(packet) >= 40:
        well_formed = 40 + struct.unpack_from("!H", packet, 4)[0] <= len(packet)
    else:
        well_formed = False
    assert (parse_ip_header(packet) is not None) == well_formed


@FUZZ_SETTINGS
@given(data=st.binary(max_size=200))
def test_internet_checksum_matches_the_reference(data: bytes) -> None:
    assert internet_checksum(data) == ones_complement_checksum(data)


@FUZZ_SETTINGS
@given(packet=st.binary(max_size=60))
def test_address_peeks_never_raise(packet: bytes) -> None:
    for peek in (source_address, destination_address):
        address = peek(packet)
        assert address is None or len(address) in (4, 16)
