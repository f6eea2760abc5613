"""TCP MSS clamping (``common.wire.mss``), checked against independent checksum oracles.

Two oracles for the incrementally updated TCP checksum (RFC 1624): a full
recomputation with the slow byte-pair sum of ``tests.helpers.packets``, and
scapy (re-parse the clamped bytes, delete ``chksum``, let scapy rebuild it,
compare). Packets are built with scapy so their lengths and checksums do
not come from the code under test.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.layers.inet import IP, TCP, UDP, IPOption_Router_Alert
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.packet import Packet, Raw

from common.wire.mss import clamp_mss, max_mss_for_mtu
from tests.helpers.packets import ones_complement_checksum

MAX_MSS = 1360


def v4(tcp: Packet, **ip: Any) -> bytes:
    return bytes(raw(IP(src="10.1.0.5", dst="10.2.0.7", **ip) / tcp))


def v6(tcp: Packet) -> bytes:
    return bytes(raw(IPv6(src="fd00:a::5", dst="fd00:b::7") / tcp))


def syn(mss: int = 1460, flags: str = "S", **tcp: Any) -> TCP:
    fields: dict[str, Any] = {"sport": 40000, "dport": 443, "seq": 123456}
    fields["options"] = [("MSS", mss), ("SAckOK", b""), ("WScale", 7)]
    fields.update(tcp)
    return TCP(flags=flags, **fields)


def tcp_checksum_recomputed(packet: bytes) -> int:
    """The TCP checksum computed from scratch (RFC 9293 3.1 pseudo-header)."""
    if packet[0] >> 4 == 4:
        ihl = (packet[0] & 0x0F) * 4
        segment = packet[ihl:]
        pseudo = packet[12:20] + struct.pack("!BBH", 0, 6, len(segment))
    else:
        segment = packet[40:]
        pseudo = packet[8:40] + struct.pack("!IxxxB", len(segment), 6)
    zeroed = segment[:16] + b"\x00\x00" + segment[18:]
    return ones_complement_checksum(pseudo + zeroed)


def checksum_field(packet: bytes) -> int:
    offset = (packet[0] & 0x0F) * 4 if packet[0] >> 4 == 4 else 40
    (value,) = struct.unpack_from("!H", packet, offset + 16)
    return int(value)


def mss_of(packet: bytes) -> int | None:
    layer = (IP if packet[0] >> 4 == 4 else IPv6)(packet)[TCP]
    return next((value for name, value in layer.options if name == "MSS"), None)


def assert_scapy_agrees(packet: bytes) -> None:
    """Re-parse with scapy, drop the checksum, let scapy recompute it: it must match ours."""
    parsed = (IP if packet[0] >> 4 == 4 else IPv6)(packet)
    ours = parsed[TCP].chksum
    del parsed[TCP].chksum
    rebuilt = (IP if packet[0] >> 4 == 4 else IPv6)(raw(parsed))
    assert rebuilt[TCP].chksum == ours


# -- clamping ------------------------------------------------------------------------


@pytest.mark.parametrize("flags", ["S", "SA"])
@pytest.mark.parametrize("build", [v4, v6], ids=["ipv4", "ipv6"])
def test_syn_and_syn_ack_are_clamped_with_a_valid_checksum(build: object, flags: str) -> None:
    original = build(syn(1460, flags))  # type: ignore[operator]
    clamped = clamp_mss(original, MAX_MSS)

    assert mss_of(clamped) == MAX_MSS
    assert checksum_field(clamped) == tcp_checksum_recomputed(clamped)
    assert_scapy_agrees(clamped)
    changed = [i for i, (x, y) in enumerate(zip(original, clamped, strict=True)) if x != y]
    assert len(changed) <= 4  # the MSS value and the checksum, nothing else


def test_bytearray_is_clamped_in_place() -> None:
    packet = bytearray(v4(syn(1460)))
    assert clamp_mss(packet, MAX_MSS) is packet
    assert mss_of(bytes(packet)) == MAX_MSS
    assert checksum_field(bytes(packet)) == tcp_checksum_recomputed(bytes(packet))


def test_ipv4_with_options_is_clamped() -> None:
    packet = v4(syn(1460), options=[IPOption_Router_Alert()])
    assert packet[0] & 0x0F == 6  # IHL 6: the TCP header starts at 24
    clamped = clamp_mss(packet, MAX_MSS)
    assert mss_of(clamped) == MAX_MSS
    assert checksum_field(clamped) == tcp_checksum_recomputed(clamped)
    assert_scapy_agrees(clamped)


def test_mss_at_an_odd_offset_keeps_the_checksum_right() -> None:
    """A NOP first puts the MSS value across two checksum words (RFC 1071 byte-order rule)."""
    options = [("NOP", None), ("MSS", 8960), ("NOP", None), ("NOP", None), ("NOP", None)]
    for build in (v4, v6):
        clamped = clamp_mss(build(syn(options=options)), MAX_MSS)
        assert mss_of(clamped) == MAX_MSS
        assert checksum_field(clamped) == tcp_checksum_recomputed(clamped)
        assert_scapy_agrees(clamped)


def test_syn_with_payload_is_clamped() -> None:
    """TCP Fast Open carries data on the SYN; the incremental update does not care."""
    clamped = clamp_mss(v6(syn(1440) / Raw(b"GET / HTTP/1.1\r\n" * 9)), MAX_MSS)
    assert mss_of(clamped) == MAX_MSS
    assert_scapy_agrees(clamped)


@given(
    mss=st.integers(0, 0xFFFF),
    limit=st.integers(0, 0xFFFF),
    seq=st.integers(0, 2**32 - 1),
    nops=st.integers(0, 3),
    ipv6=st.booleans(),
)
@settings(max_examples=300, deadline=None)
def test_checksum_matches_a_full_recomputation(
    mss: int, limit: int, seq: int, nops: int, ipv6: bool
) -> None:
    options: list[tuple[str, object]] = [("NOP", None)] * nops + [("MSS", mss)]
    original = (v6 if ipv6 else v4)(syn(seq=seq, options=options))
    clamped = clamp_mss(original, limit)
    assert mss_of(clamped) == min(mss, limit)
    if mss <= limit:
        assert clamped is original
    assert checksum_field(clamped) == tcp_checksum_recomputed(clamped)


# -- left alone -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(v4(TCP(flags="A") / Raw(b"data" * 100)), id="ipv4-data-segment"),
        pytest.param(v6(TCP(flags="PA") / Raw(b"data")), id="ipv6-data-segment"),
        pytest.param(v4(UDP() / Raw(b"\x02" * 60)), id="udp"),
        pytest.param(v4(syn(1360)), id="mss-at-limit"),
        pytest.param(v4(syn(536)), id="mss-below-limit"),
        pytest.param(v4(syn(options=[("SAckOK", b""), ("WScale", 7)])), id="syn-without-mss"),
        pytest.param(v4(syn(options=[("EOL", None), ("MSS", 1460)])), id="mss-after-eol"),
        pytest.param(v4(syn(1460), flags="MF"), id="ipv4-first-fragment"),
        pytest.param(v4(syn(1460), frag=8), id="ipv4-later-fragment"),
        pytest.param(
            bytes(raw(IPv6(src="fd00:a::5", dst="fd00:b::7") / IPv6ExtHdrHopByHop() / syn(1460))),
            id="ipv6-extension-header",
        ),
        pytest.param(b"", id="empty"),
        pytest.param(v4(syn(1460))[:39], id="truncated"),
    ],
)
def test_other_packets_are_returned_unchanged(packet: bytes) -> None:
    assert clamp_mss(packet, MAX_MSS) is packet


def with_raw_options(options: bytes, *, ipv6: bool = False) -> bytes:
    """A SYN whose option bytes are exactly ``options`` (padded to 32 bits), lengths and
    checksum filled in by scapy: the bytes follow the fixed header, inside the data offset."""
    options += bytes(-len(options) % 4)
    segment = TCP(flags="S", dataofs=5 + len(options) // 4) / Raw(options)
    return (v6 if ipv6 else v4)(segment)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(b"\x02\x05\x05\xb4\x00\x00\x00\x00", id="mss-length-5"),
        pytest.param(b"\x02\x03\x05\xb4", id="mss-length-3"),
        pytest.param(b"\x08\x00\x02\x04\x05\xb4\x00\x00", id="zero-length-option"),
        pytest.param(b"\x08\x0c\x02\x04\x05\xb4\x00\x00", id="option-overruns-header"),
        pytest.param(b"\x01\x01\x01\x02", id="length-octet-missing"),
    ],
)
def test_malformed_option_lists_are_left_alone(options: bytes) -> None:
    packet = with_raw_options(options)
    assert clamp_mss(packet, MAX_MSS) is packet


def test_raw_options_helper_builds_a_clampable_syn() -> None:
    """The helper above really puts the bytes where options go (else the test proves nothing)."""
    clamped = clamp_mss(with_raw_options(b"\x02\x04\x05\xb4"), MAX_MSS)
    assert mss_of(clamped) == MAX_MSS
    assert checksum_field(clamped) == tcp_checksum_recomputed(clamped)


def test_data_offset_past_the_ip_length_is_left_alone() -> None:
    packet = bytearray(v4(syn(1460)))
    packet[2:4] = struct.pack("!H", 30)  # the IP length ends inside the TCP header
    before = bytes(packet)
    assert clamp_mss(packet, MAX_MSS) is packet
    assert packet == before


@given(st.binary(max_size=120), st.integers(-1, 0x1FFFF))
@settings(max_examples=2000)
def test_never_raises_on_arbitrary_bytes(data: bytes, limit: int) -> None:
    result = clamp_mss(data, limit)
    assert len(result) == len(data)
    assert clamp_mss(bytearray(data), limit) == result


@given(st.binary(max_size=40), st.booleans())
@settings(max_examples=1000)
def test_random_options_of_a_real_syn_never_raise_and_stay_checksummed(
    options: bytes, ipv6: bool
) -> None:
    """A valid header in front of arbitrary option bytes: a clamp, if any, keeps it valid."""
    packet = with_raw_options(options, ipv6=ipv6)
    result = clamp_mss(packet, MAX_MSS)
    assert len(result) == len(packet)
    if result is not packet:
        assert checksum_field(result) == tcp_checksum_recomputed(result)


def test_clamp_for_a_tunnel_mtu() -> None:
    assert max_mss_for_mtu(1400, 4) == 1360
    assert max_mss_for_mtu(1400, 6) == 1340
