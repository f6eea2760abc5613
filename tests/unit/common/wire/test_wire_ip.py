"""IP header peeking for the data path: validation, addresses, and the RFC 1071 checksum.

RFC 791 3.1 (IPv4 header), RFC 8200 3 (IPv6 header), RFC 1071 (checksum).
"""

from __future__ import annotations

import ipaddress
import struct

import pytest

from common.wire.ip import (
    IpHeader,
    destination_address,
    internet_checksum,
    ip_version,
    parse_ip_header,
    source_address,
)
from tests.helpers.packets import (
    ipv4_header,
    ipv4_icmp_echo,
    ipv4_udp,
    ipv6_header,
    ipv6_udp,
    ones_complement_checksum,
)

V4_SRC, V4_DST = "10.99.100.1", "10.99.0.10"
V6_SRC, V6_DST = "fd00:99::1", "2001:db8::53"


def test_parse_ipv4() -> None:
    packet = ipv4_icmp_echo(V4_SRC, V4_DST)
    header = parse_ip_header(packet)
    assert header == IpHeader(
        version=4,
        source=ipaddress.IPv4Address(V4_SRC).packed,
        destination=ipaddress.IPv4Address(V4_DST).packed,
        protocol=1,
        total_length=len(packet),
    )


def test_parse_ipv6() -> None:
    packet = ipv6_udp(V6_SRC, V6_DST, data=b"hello")
    header = parse_ip_header(packet)
    assert header == IpHeader(
        version=6,
        source=ipaddress.IPv6Address(V6_SRC).packed,
        destination=ipaddress.IPv6Address(V6_DST).packed,
        protocol=17,
        total_length=len(packet),
    )


def test_ipv4_with_options_reads_the_addresses_from_the_fixed_part() -> None:
    options = b"\x01\x01\x01\x00"  # NOP, NOP, NOP, end of options list
    payload = b"\x00" * 8
    base = ipv4_header(V4_SRC, V4_DST, 17, len(options) + len(payload))
    header = bytearray(base[:20])
    header[0] = 0x46
    header[2:4] = struct.pack("!H", 24 + len(payload))
    header[10:12] = b"\x00\x00"
    header += options
    header[10:12] = struct.pack("!H", ones_complement_checksum(bytes(header)))
    parsed = parse_ip_header(bytes(header) + payload)
    assert parsed is not None
    assert parsed.total_length == 32
    assert parsed.source == ipaddress.IPv4Address(V4_SRC).packed


def test_trailing_link_padding_is_allowed() -> None:
    """Ethernet pads short frames to 60 octets; the stated length is what counts."""
    packet = ipv4_udp(data=b"")
    header = parse_ip_header(packet + bytes(18))
    assert header is not None
    assert header.total_length == len(packet)
    v6 = ipv6_udp(data=b"")
    header6 = parse_ip_header(v6 + bytes(7))
    assert header6 is not None
    assert header6.total_length == len(v6)


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(b"", id="empty"),
        pytest.param(ipv4_udp()[:19], id="v4-shorter-than-20"),
        pytest.param(ipv4_udp()[:-1], id="v4-total-length-beyond-bytes"),
        pytest.param(b"\x44" + ipv4_udp()[1:], id="v4-ihl-4"),
        pytest.param(b"\x4f" + ipv4_udp()[1:], id="v4-ihl-15-beyond-bytes"),
        pytest.param(
            ipv4_udp()[:2] + struct.pack("!H", 19) + ipv4_udp()[4:], id="v4-total-below-20"
        ),
        pytest.param(
            b"\x46" + ipv4_udp()[1:2] + struct.pack("!H", 22) + ipv4_udp()[4:],
            id="v4-total-below-ihl",
        ),
        pytest.param(ipv6_udp()[:39], id="v6-shorter-than-40"),
        pytest.param(ipv6_udp()[:-1], id="v6-payload-length-beyond-bytes"),
        pytest.param(b"\x50" + bytes(39), id="version-5"),
        pytest.param(b"\x00" * 40, id="version-0"),
    ],
)
def test_malformed_headers_give_none(packet: bytes) -> None:
    assert parse_ip_header(packet) is None


def test_source_and_destination_without_validation() -> None:
    v4 = ipv4_udp(V4_SRC, V4_DST)
    v6 = ipv6_udp(V6_SRC, V6_DST)
    assert source_address(v4) == ipaddress.IPv4Address(V4_SRC).packed
    assert destination_address(v4) == ipaddress.IPv4Address(V4_DST).packed
    assert source_address(v6) == ipaddress.IPv6Address(V6_SRC).packed
    assert destination_address(v6) == ipaddress.IPv6Address(V6_DST).packed
    assert source_address(v4[:20]) == ipaddress.IPv4Address(V4_SRC).packed


@pytest.mark.parametrize("packet", [b"", b"\x45" * 19, b"\x60" * 39, b"\x70" * 60, b"\x00" * 60])
def test_addresses_of_short_or_unknown_packets_are_none(packet: bytes) -> None:
    assert source_address(packet) is None
    assert destination_address(packet) is None


def test_ip_version() -> None:
    assert ip_version(b"") == 0
    assert ip_version(ipv4_udp()) == 4
    assert ip_version(ipv6_udp()) == 6
    assert ip_version(b"\xf0") == 15


def test_internet_checksum_rfc1071_example() -> None:
    """RFC 1071 3: the octets 00 01 f2 03 f4 f5 f6 f7 sum to ddf2, so the checksum is 220d."""
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D


def test_internet_checksum_of_known_headers() -> None:
    """Real headers with their checksum field in place sum to zero."""
    rfc7634_outer = bytes.fromhex("4500008c234500004032de5bcb007199cb007105")
    assert internet_checksum(rfc7634_outer) == 0
    zeroed = rfc7634_outer[:10] + b"\x00\x00" + rfc7634_outer[12:]
    assert internet_checksum(zeroed) == 0xDE5B


@pytest.mark.parametrize("length", [0, 1, 2, 3, 19, 20, 21, 1499])
def test_internet_checksum_matches_the_reference_including_odd_lengths(length: int) -> None:
    data = bytes((index * 37 + 11) & 0xFF for index in range(length))
    assert internet_checksum(data) == ones_complement_checksum(data)


def test_internet_checksum_folds_carries_until_none_is_left() -> None:
    """ffff + ffff + 0001 = 1ffff; one fold gives 10000, which needs a second fold to 0001."""
    assert internet_checksum(bytes.fromhex("ffffffff0001")) == 0xFFFE
    assert internet_checksum(b"\xff\xff" * 10_000) == 0
    assert internet_checksum(b"\xff\xfe" * 3) == ones_complement_checksum(b"\xff\xfe" * 3)


def test_ipv6_helper_builds_a_valid_header() -> None:
    """Guards the helper the other tests rely on."""
    header = ipv6_header(V6_SRC, V6_DST, 59, 0)
    assert parse_ip_header(header) == IpHeader(
        6, ipaddress.IPv6Address(V6_SRC).packed, ipaddress.IPv6Address(V6_DST).packed, 59, 40
    )
