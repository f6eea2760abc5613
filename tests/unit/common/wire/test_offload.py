"""TUN offloads in Python (``common.wire.offload``), checked against scapy as the oracle.

Why scapy: ``segment`` and ``coalesce`` rewrite lengths, IPv4 IDs, TCP flags
and both checksums, and a shared misunderstanding between the code and a
test's own arithmetic would hide itself. scapy builds every expected packet
here independently (lengths and checksums filled in by scapy), and every
packet ``offload`` produces must equal scapy's rebuild of it byte for byte.

Buffers are built the way the kernel hands them to a TUN opened with
``IFF_VNET_HDR`` and ``TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)``:

- a ``struct virtio_net_hdr`` (include/uapi/linux/virtio_net.h; native byte
  order for a legacy TUN header) with ``VIRTIO_NET_HDR_F_NEEDS_CSUM``,
  ``gso_type`` TCPV4/TCPV6, ``gso_size`` = MSS, ``csum_start`` = IP header
  length and ``csum_offset`` = 16 (the TCP checksum field);
- a "super packet" whose IP length fields cover the whole payload and whose
  TCP checksum field holds the folded pseudo-header sum, not complemented
  (CHECKSUM_PARTIAL: ``th->check = ~tcp_v4_check(len, saddr, daddr, 0)``).

Segmentation follows the kernel's ``tcp_gso_segment``: sequence numbers
advance by MSS (modulo 2**32), IPv4 IDs increment, FIN and PSH stay on the
last segment only, CWR on the first only (RFC 3168 6.1.2).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from typing import Any, Final

import pytest
from scapy.compat import raw
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_Router_Alert
from scapy.layers.inet6 import IPv6
from scapy.packet import Packet, Raw

from common.wire.offload import coalesce, complete_checksum, segment
from tests.helpers.packets import ones_complement_checksum

# struct virtio_net_hdr: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset.
# Written out here rather than imported, so a wrong layout in offload.py cannot hide.
VIRTIO_NET_HDR: Final = struct.Struct("=BBHHHH")
VIRTIO_NET_HDR_LEN: Final = 10
NEEDS_CSUM: Final = 1  # VIRTIO_NET_HDR_F_NEEDS_CSUM
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_ECN = 0, 1, 3, 4, 0x80
PLAIN_HEADER: Final = bytes(VIRTIO_NET_HDR_LEN)

# TCP flag bits (RFC 9293 3.1, RFC 3168 6.1 for ECE/CWR).
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
TWO_32: Final = 1 << 32
IP_MAXPACKET: Final = 65535

# Options as Linux sends them on an established connection: NOP NOP timestamps.
TIMESTAMPS: Final = (("NOP", None), ("NOP", None), ("Timestamp", (0x01020304, 0x0A0B0C0D)))


@dataclass(frozen=True)
class Flow:
    """One TCP connection's header fields; ``packet`` builds a segment of it with scapy."""

    version: int
    options: tuple[tuple[str, Any], ...] = ()
    ip_options: bool = False  # IPv4 Router Alert (RFC 2113): a 24-octet IPv4 header
    sport: int = 40000
    dport: int = 5201
    ack: int = 0x0BADCAFE
    window: int = 501
    ttl: int = 64
    tos: int = 0
    df: bool = True
    src: str = field(default="")
    dst: str = field(default="")

    def __post_init__(self) -> None:
        if not self.src:
            object.__setattr__(self, "src", "10.1.0.5" if self.version == 4 else "fd00:a::5")
        if not self.dst:
            object.__setattr__(self, "dst", "10.2.0.7" if self.version == 4 else "fd00:b::7")

    def packet(
        self, seq: int, payload: bytes = b"", *, flags: int = ACK, ip_id: int = 0x1234
    ) -> bytes:
        """A complete segment, every length and checksum filled in by scapy."""
        tcp = TCP(
            sport=self.sport,
            dport=self.dport,
            seq=seq % TWO_32,
            ack=self.ack,
            flags=flags,
            window=self.window,
            options=list(self.options),
        )
        ip: Packet
        if self.version == 4:
            ip = IP(
                src=self.src,
                dst=self.dst,
                id=ip_id & 0xFFFF,
                ttl=self.ttl,
                tos=self.tos,
                flags="DF" if self.df else 0,
                options=[IPOption_Router_Alert()] if self.ip_options else [],
            )
        else:
            ip = IPv6(src=self.src, dst=self.dst, hlim=self.ttl, tc=self.tos)
        return bytes(raw(ip / tcp / Raw(payload)))


def ip_header_len(packet: bytes) -> int:
    return (packet[0] & 0x0F) * 4 if packet[0] >> 4 == 4 else 40


def tcp_header_len(packet: bytes) -> int:
    return (packet[ip_header_len(packet) + 12] >> 4) * 4


def pseudo_header_sum(packet: bytes, protocol: int) -> int:
    """Folded (not complemented) sum of the RFC 9293 3.1 / RFC 8200 8.1 pseudo-header."""
    ip_len = ip_header_len(packet)
    l4_len = len(packet) - ip_len
    if packet[0] >> 4 == 4:
        pseudo = packet[12:20] + bytes((0, protocol)) + l4_len.to_bytes(2, "big")
    else:
        pseudo = packet[8:40] + l4_len.to_bytes(4, "big") + bytes((0, 0, 0, protocol))
    return ~ones_complement_checksum(pseudo) & 0xFFFF


def with_partial_checksum(packet: bytes, csum_start: int, csum_offset: int, protocol: int) -> bytes:
    """``packet`` as the kernel leaves it under CHECKSUM_PARTIAL: pseudo-header sum in the field."""
    partial = pseudo_header_sum(packet, protocol)
    field_at = csum_start + csum_offset
    return packet[:field_at] + partial.to_bytes(2, "big") + packet[field_at + 2 :]


def tso_buffer(packet: bytes, mss: int, *, gso_type: int | None = None) -> bytes:
    """One TUN read of a TCP super packet: virtio_net_hdr + packet with a partial checksum."""
    ip_len = ip_header_len(packet)
    if gso_type is None:
        gso_type = GSO_TCPV4 if packet[0] >> 4 == 4 else GSO_TCPV6
    header = VIRTIO_NET_HDR.pack(
        NEEDS_CSUM, gso_type, ip_len + tcp_header_len(packet), mss, ip_len, 16
    )
    return header + with_partial_checksum(packet, ip_len, 16, 6)


def expected_segments(
    flow: Flow, seq: int, payload: bytes, mss: int, flags: int, ip_id: int
) -> list[bytes]:
    """What the kernel's tcp_gso_segment makes of a super packet, built by scapy."""
    chunks = [payload[i : i + mss] for i in range(0, len(payload), mss)] or [b""]
    last = len(chunks) - 1
    segments = []
    for index, chunk in enumerate(chunks):
        segment_flags = flags
        if index != last:
            segment_flags &= ~(FIN | PSH)
        if index:
            segment_flags &= ~CWR
        segments.append(
            flow.packet(seq + index * mss, chunk, flags=segment_flags, ip_id=ip_id + index)
        )
    return segments


def assert_valid(packet: bytes) -> Any:
    """scapy's rebuild of ``packet`` with checksums recomputed equals ``packet``; returns it parsed.

    A wrong IPv4 header checksum, TCP/UDP checksum or length field would make
    the rebuild differ, so this one comparison checks all of them.
    """
    parsed = IP(packet) if packet[0] >> 4 == 4 else IPv6(packet)
    rebuilt = parsed.copy()
    if packet[0] >> 4 == 4:
        assert parsed.len == len(packet)
        del rebuilt[IP].chksum
    else:
        assert parsed.plen == len(packet) - 40
    for layer in (TCP, UDP):
        if rebuilt.haslayer(layer):
            del rebuilt[layer].chksum
    assert bytes(raw(rebuilt)) == packet
    return parsed


def payload_of(packet: bytes) -> bytes:
    return packet[ip_header_len(packet) + tcp_header_len(packet) :]


def unpack_write(write: bytes) -> tuple[tuple[int, ...], bytes]:
    """(virtio_net_hdr fields, the packet the kernel would see once it completed the checksum)."""
    fields = VIRTIO_NET_HDR.unpack_from(write)
    body = write[VIRTIO_NET_HDR_LEN:]
    if fields[0] & NEEDS_CSUM:
        completed = complete_checksum(body, fields[4], fields[5])
        assert completed is not None
        return fields, completed
    return fields, body


# -- segment: TCP super packets ----------------------------------------------

MSS = 1000
FLOWS = {
    "v4": Flow(4),
    "v4-timestamps": Flow(4, options=TIMESTAMPS),
    "v4-ip-options": Flow(4, ip_options=True),
    "v6": Flow(6),
    "v6-timestamps": Flow(6, options=TIMESTAMPS),
}
# Payload sizes around multiples of the MSS: one byte short, exact, one byte over.
SIZES = [0, 1, MSS - 1, MSS, MSS + 1, 2 * MSS - 1, 2 * MSS, 2 * MSS + 1, 3 * MSS + 1]


def pattern(size: int, salt: int = 0) -> bytes:
    """Distinct, position-dependent bytes, so a misplaced chunk cannot compare equal."""
    return bytes((index * 7 + salt + (index >> 8)) & 0xFF for index in range(size))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("flow_name", sorted(FLOWS))
def test_segment_matches_kernel_tso(flow_name: str, size: int) -> None:
    flow = FLOWS[flow_name]
    payload = pattern(size)
    seq, ip_id = 0x11223344, 0x4000
    super_packet = flow.packet(seq, payload, flags=ACK | PSH, ip_id=ip_id)

    segments = segment(tso_buffer(super_packet, MSS))

    assert segments == expected_segments(flow, seq, payload, MSS, ACK | PSH, ip_id)
    for index, piece in enumerate(segments):
        parsed = assert_valid(piece)
        assert parsed[TCP].seq == seq + index * MSS
        assert len(payload_of(piece)) <= MSS
    assert b"".join(payload_of(piece) for piece in segments) == payload


@pytest.mark.parametrize("version", [4, 6])
def test_segment_sequence_numbers_wrap_past_2_32(version: int) -> None:
    """RFC 9293 3.4: sequence arithmetic is modulo 2**32; the IPv4 ID wraps too."""
    flow = Flow(version, options=TIMESTAMPS)
    payload = pattern(3 * MSS - 200, salt=3)
    seq = TWO_32 - 1500  # the second segment starts 500 octets before the wrap
    super_packet = flow.packet(seq, payload, ip_id=0xFFFF)

    segments = segment(tso_buffer(super_packet, MSS))

    assert segments is not None
    assert [IP(s)[TCP].seq if version == 4 else IPv6(s)[TCP].seq for s in segments] == [
        TWO_32 - 1500,
        TWO_32 - 500,
        500,
    ]
    if version == 4:
        assert [IP(s).id for s in segments] == [0xFFFF, 0, 1]
    assert segments == expected_segments(flow, seq, payload, MSS, ACK, 0xFFFF)
    for piece in segments:
        assert_valid(piece)


@pytest.mark.parametrize("version", [4, 6])
def test_segment_keeps_fin_and_psh_on_the_last_and_cwr_on_the_first(version: int) -> None:
    flow = Flow(version)
    flags = ACK | PSH | FIN | CWR | ECE
    segments = segment(tso_buffer(flow.packet(7, pattern(3 * MSS), flags=flags), MSS))

    assert segments is not None
    tcp_flags = [piece[ip_header_len(piece) + 13] for piece in segments]
    assert tcp_flags == [ACK | CWR | ECE, ACK | ECE, ACK | PSH | FIN | ECE]


def test_segment_ipv4_ids_increment_per_segment() -> None:
    flow = Flow(4, df=False)
    segments = segment(tso_buffer(flow.packet(1, pattern(4 * MSS), ip_id=0x1230), MSS))

    assert segments is not None
    assert [IP(piece).id for piece in segments] == [0x1230, 0x1231, 0x1232, 0x1233]
    assert all(IP(piece).flags == 0 for piece in segments)


@pytest.mark.parametrize("version", [4, 6])
def test_segment_accepts_the_ecn_gso_bit(version: int) -> None:
    """VIRTIO_NET_HDR_GSO_ECN marks a flow with ECN negotiated; segmentation is unchanged."""
    flow = Flow(version)
    gso_type = (GSO_TCPV4 if version == 4 else GSO_TCPV6) | GSO_ECN
    buffer = tso_buffer(flow.packet(99, pattern(2 * MSS + 5)), MSS, gso_type=gso_type)

    assert segment(buffer) == expected_segments(flow, 99, pattern(2 * MSS + 5), MSS, ACK, 0x1234)


def test_segment_of_a_near_64k_super_packet() -> None:
    """The largest read a TUN gives: 65535 octets of IPv4 packet, 45 full segments and a tail."""
    flow = Flow(4, options=TIMESTAMPS)
    mss = 1448
    payload = pattern(IP_MAXPACKET - 20 - 32)
    segments = segment(tso_buffer(flow.packet(5, payload), mss))

    assert segments is not None
    assert len(segments) == -(-len(payload) // mss)
    assert segments == expected_segments(flow, 5, payload, mss, ACK, 0x1234)


# -- segment: no GSO, partial checksums, untouched packets --------------------


@pytest.mark.parametrize("version", [4, 6])
def test_needs_csum_without_gso_completes_a_tcp_checksum(version: int) -> None:
    packet = Flow(version).packet(42, pattern(333), flags=ACK | PSH)
    ip_len = ip_header_len(packet)
    header = VIRTIO_NET_HDR.pack(NEEDS_CSUM, GSO_NONE, ip_len + 20, 0, ip_len, 16)

    assert segment(header + with_partial_checksum(packet, ip_len, 16, 6)) == [packet]


def udp_packet(version: int, payload: bytes) -> bytes:
    if version == 4:
        return bytes(raw(IP(src="10.1.0.5", dst="10.2.0.7") / UDP(sport=5353, dport=53) / payload))
    return bytes(raw(IPv6(src="fd00:a::5", dst="fd00:b::7") / UDP(sport=5353, dport=53) / payload))


@pytest.mark.parametrize("size", [0, 1, 2, 77, 1200])
@pytest.mark.parametrize("version", [4, 6])
def test_needs_csum_without_gso_completes_a_udp_checksum(version: int, size: int) -> None:
    packet = udp_packet(version, pattern(size, salt=size))
    ip_len = ip_header_len(packet)
    header = VIRTIO_NET_HDR.pack(NEEDS_CSUM, GSO_NONE, 0, 0, ip_len, 6)

    result = segment(header + with_partial_checksum(packet, ip_len, 6, 17))

    assert result == [packet]
    assert_valid(result[0])


@pytest.mark.parametrize("version", [4, 6])
def test_completed_udp_checksum_that_folds_to_zero_is_sent_as_ffff(version: int) -> None:
    """A computed UDP checksum of 0 must go out as 0xFFFF.

    RFC 768 / RFC 8200 8.1: zero means "no checksum" (IPv4) and is invalid
    over IPv6, where receivers discard the datagram. The kernel's own
    completion, ``skb_checksum_help`` (net/core/dev.c), writes
    ``csum_fold(csum) ?: CSUM_MANGLED_0`` for this reason; we must too.
    """
    # Pick two payload octets so that the whole sum is 0xFFFF (negative zero): with
    # the word at zero, the checksum scapy computes is c = ~S0; writing c there
    # makes the sum S0 + ~S0 = 0xFFFF, whose complement is 0.
    base = udp_packet(version, b"\x00\x00" + pattern(40))
    ip_len = ip_header_len(base)
    word = int.from_bytes(base[ip_len + 6 : ip_len + 8], "big")
    packet = udp_packet(version, word.to_bytes(2, "big") + pattern(40))
    assert packet[ip_len + 6 : ip_len + 8] == b"\xff\xff"  # scapy applies RFC 768 too
    header = VIRTIO_NET_HDR.pack(NEEDS_CSUM, GSO_NONE, 0, 0, ip_len, 6)

    result = segment(header + with_partial_checksum(packet, ip_len, 6, 17))

    assert result is not None
    assert result[0][ip_len + 6 : ip_len + 8] == b"\xff\xff"
    assert result == [packet]


def test_flags_zero_returns_the_packet_untouched() -> None:
    """No NEEDS_CSUM: the checksum is already complete, or not ours to fix (even if wrong)."""
    good = Flow(4).packet(1, b"hello")
    bad_checksum = good[:36] + b"\x00\x00" + good[38:]
    not_even_ip = b"\x00" * 30
    for packet in (good, bad_checksum, not_even_ip):
        assert segment(PLAIN_HEADER + packet) == [packet]


def vnet(gso_type: int, gso_size: int = MSS, *, flags: int = NEEDS_CSUM, start: int = 20) -> bytes:
    return VIRTIO_NET_HDR.pack(flags, gso_type, 0, gso_size, start, 16)


V4_PACKET = Flow(4).packet(1, pattern(3000))
V6_PACKET = Flow(6).packet(1, pattern(3000))
V4_UDP = udp_packet(4, pattern(100))


@pytest.mark.parametrize(
    "buffer",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x01", id="one-octet"),
        pytest.param(vnet(GSO_TCPV4), id="header-only"),
        pytest.param(vnet(GSO_UDP) + V4_UDP, id="gso-udp-not-enabled"),
        pytest.param(vnet(2) + V4_PACKET, id="gso-type-2-unknown"),
        pytest.param(vnet(GSO_TCPV4) + V6_PACKET, id="tcpv4-carrying-ipv6"),
        pytest.param(vnet(GSO_TCPV6) + V4_PACKET, id="tcpv6-carrying-ipv4"),
        pytest.param(vnet(GSO_TCPV4) + V4_UDP, id="tcpv4-carrying-udp"),
        pytest.param(vnet(GSO_TCPV4, 0) + V4_PACKET, id="gso-size-zero"),
        pytest.param(vnet(GSO_TCPV4) + V4_PACKET[:30], id="tcp-header-cut"),
        pytest.param(vnet(GSO_TCPV4) + V4_PACKET[:19], id="ip-header-cut"),
        pytest.param(vnet(GSO_TCPV6) + V6_PACKET[:39], id="ipv6-header-cut"),
        pytest.param(
            vnet(GSO_TCPV4) + V4_PACKET[:32] + b"\x40" + V4_PACKET[33:], id="data-offset-4"
        ),
        pytest.param(
            vnet(GSO_TCPV4) + V4_PACKET[:32] + b"\xf0" + V4_PACKET[33:50], id="options-past-end"
        ),
        pytest.param(vnet(GSO_TCPV4) + b"\x4f" + V4_PACKET[1:70], id="ihl-past-end"),
        pytest.param(vnet(GSO_NONE, start=len(V4_UDP)) + V4_UDP, id="csum-start-past-end"),
        pytest.param(
            VIRTIO_NET_HDR.pack(NEEDS_CSUM, GSO_NONE, 0, 0, 20, 200) + V4_UDP[:100],
            id="csum-field-past-end",
        ),
    ],
)
def test_segment_returns_none_for_what_it_cannot_parse(buffer: bytes) -> None:
    assert segment(buffer) is None


# -- coalesce ---------------------------------------------------------------


def run_of(
    flow: Flow, count: int, mss: int = MSS, *, seq: int = 1000, last: int | None = None
) -> list[bytes]:
    """``count`` consecutive full segments (the last ``last`` octets long), IDs incrementing."""
    sizes = [mss] * count
    if last is not None:
        sizes[-1] = last
    segments, offset = [], 0
    for index, size in enumerate(sizes):
        segments.append(flow.packet(seq + offset, pattern(size, salt=index), ip_id=0x100 + index))
        offset += size
    return segments


def merged_of(segments: list[bytes], *, flags: int = ACK) -> bytes:
    """The unsegmented packet a run stands for: first header, all payloads (scapy-built)."""
    first = segments[0]
    parsed = IP(first) if first[0] >> 4 == 4 else IPv6(first)
    flow_fields = parsed[TCP]
    payload = b"".join(payload_of(piece) for piece in segments)
    tcp = TCP(
        sport=flow_fields.sport,
        dport=flow_fields.dport,
        seq=flow_fields.seq,
        ack=flow_fields.ack,
        flags=flags,
        window=flow_fields.window,
        options=flow_fields.options,
    )
    ip = parsed.copy()
    ip.remove_payload()
    if first[0] >> 4 == 4:
        del ip.len, ip.chksum
    else:
        del ip.plen
    return bytes(raw(ip / tcp / Raw(payload)))


def assert_plain(write: bytes, packet: bytes) -> None:
    """Written as it came, behind a zero header: the kernel checks the checksum itself."""
    assert write == PLAIN_HEADER + packet


def assert_merged(write: bytes, segments: list[bytes], *, flags: int = ACK) -> None:
    """One GSO write that the kernel, completing the checksum, sees as the unsegmented packet."""
    first = segments[0]
    ip_len = ip_header_len(first)
    header_len = ip_len + tcp_header_len(first)
    fields, completed = unpack_write(write)
    gso_type = GSO_TCPV4 if first[0] >> 4 == 4 else GSO_TCPV6
    assert fields == (NEEDS_CSUM, gso_type, header_len, len(first) - header_len, ip_len, 16)
    assert len(completed) <= IP_MAXPACKET
    assert_valid(completed)
    assert completed == merged_of(segments, flags=flags)


@pytest.mark.parametrize("flow_name", sorted(FLOWS.keys() - {"v4-ip-options"}))
@pytest.mark.parametrize("size", [MSS + 1, 2 * MSS, 3 * MSS - 1, 5 * MSS])
@pytest.mark.parametrize("flags", [ACK, ACK | PSH])
def test_segment_then_coalesce_gives_back_the_super_packet(
    flow_name: str, size: int, flags: int
) -> None:
    flow = FLOWS[flow_name]
    super_packet = flow.packet(TWO_32 - MSS - 10, pattern(size, salt=1), flags=flags, ip_id=77)
    segments = segment(tso_buffer(super_packet, MSS))
    assert segments is not None

    writes = coalesce(segments)

    assert len(writes) == 1
    fields, completed = unpack_write(writes[0])
    assert fields[3] == MSS  # gso_size: the first segment's payload length
    assert completed == super_packet


def test_coalesce_single_segment_and_non_tcp_pass_through_plain() -> None:
    tcp = Flow(4).packet(1, pattern(100))
    icmp = bytes(raw(IP(src="10.1.0.5", dst="10.2.0.7") / ICMP() / b"ping"))
    udp6 = udp_packet(6, b"dns")
    pure_ack = Flow(6).packet(1)
    junk = b"\x00\x01\x02"

    writes = coalesce([tcp, icmp, udp6, pure_ack, junk])

    for write, packet in zip(writes, [tcp, icmp, udp6, pure_ack, junk], strict=True):
        assert_plain(write, packet)


@pytest.mark.parametrize("version", [4, 6])
def test_coalesce_merges_runs_and_keeps_order_between_flows(version: int) -> None:
    one, two = Flow(version), Flow(version, sport=40001)
    a = run_of(one, 3)
    b = run_of(two, 2)

    interleaved = coalesce([a[0], b[0], a[1], b[1], a[2]])
    grouped = coalesce([*a, *b])

    for write, packet in zip(interleaved, [a[0], b[0], a[1], b[1], a[2]], strict=True):
        assert_plain(write, packet)
    assert len(grouped) == 2
    assert_merged(grouped[0], a)
    assert_merged(grouped[1], b)


def test_coalesce_does_not_merge_a_gap_or_a_retransmission() -> None:
    a = run_of(Flow(4), 4)

    gap = coalesce([a[0], a[2], a[3]])
    repeat = coalesce([a[0], a[1], a[1]])

    assert len(gap) == 2
    assert_plain(gap[0], a[0])
    assert_merged(gap[1], a[2:])
    assert len(repeat) == 2
    assert_merged(repeat[0], a[:2])
    assert_plain(repeat[1], a[1])


@pytest.mark.parametrize(
    "flag", [SYN, FIN, RST, URG, CWR, ECE], ids=["SYN", "FIN", "RST", "URG", "CWR", "ECE"]
)
@pytest.mark.parametrize("version", [4, 6])
def test_coalesce_never_merges_segments_with_special_flags(version: int, flag: int) -> None:
    flow = Flow(version)
    a = run_of(flow, 4)
    ip_len = ip_header_len(a[0])
    flagged = [
        flow.packet(
            IP(p)[TCP].seq if version == 4 else IPv6(p)[TCP].seq,
            payload_of(p),
            flags=ACK | flag,
            ip_id=0x100 + i,
        )
        for i, p in enumerate(a)
    ]
    assert flagged[0][ip_len + 13] == ACK | flag

    first_special = coalesce([flagged[0], a[1], a[2]])
    middle_special = coalesce([a[0], flagged[1], a[2], a[3]])

    assert len(first_special) == 2
    assert_plain(first_special[0], flagged[0])
    assert_merged(first_special[1], a[1:3])
    assert len(middle_special) == 3
    assert_plain(middle_special[0], a[0])
    assert_plain(middle_special[1], flagged[1])
    assert_merged(middle_special[2], a[2:])


@pytest.mark.parametrize("version", [4, 6])
def test_coalesce_leaves_a_corrupted_segment_for_the_kernel_to_drop(version: int) -> None:
    """A bad TCP checksum must not be laundered into a valid merged checksum."""
    a = run_of(Flow(version), 4)
    corrupted = a[1][:-1] + bytes([a[1][-1] ^ 0x01])

    middle = coalesce([a[0], corrupted, a[2], a[3]])
    first = coalesce([corrupted, a[2], a[3]])

    assert len(middle) == 3
    assert_plain(middle[0], a[0])
    assert_plain(middle[1], corrupted)
    assert_merged(middle[2], a[2:])
    assert len(first) == 2
    assert_plain(first[0], corrupted)


def with_ipv4_fields(packet: bytes, *, frag: int | None = None, ttl: int | None = None) -> bytes:
    """``packet`` with IPv4 flags/fragment offset or TTL changed and the header checksum redone."""
    header = bytearray(packet[:20])
    if frag is not None:
        header[6:8] = frag.to_bytes(2, "big")
    if ttl is not None:
        header[8] = ttl
    header[10:12] = b"\x00\x00"
    header[10:12] = ones_complement_checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header) + packet[20:]


@pytest.mark.parametrize(
    "frag",
    [0x2000, 0x0001, 0x0100, 0x4001, 0x20B9],
    ids=["MF", "offset-8", "offset-2048", "DF+offset-8", "MF+offset"],
)
def test_coalesce_never_merges_ipv4_fragments(frag: int) -> None:
    """RFC 791: MF or a non-zero offset is a fragment; its TCP header is not where we read it.

    The TCP checksum does not cover the IPv4 header, so a fragment's copy of a
    segment still passes the checksum test; only the fragment fields can tell.
    """
    a = run_of(Flow(4, df=False), 3)
    fragment = with_ipv4_fields(a[1], frag=frag)

    as_candidate = coalesce([a[0], fragment, a[2]])
    as_first = coalesce([fragment, a[2]])

    assert len(as_candidate) == 3
    assert_plain(as_candidate[0], a[0])
    assert_plain(as_candidate[1], fragment)
    assert_plain(as_candidate[2], a[2])
    assert len(as_first) == 2
    assert_plain(as_first[0], fragment)


def test_coalesce_never_merges_ipv4_with_options() -> None:
    a = run_of(Flow(4, ip_options=True), 3)

    writes = coalesce(a)

    for write, packet in zip(writes, a, strict=True):
        assert_plain(write, packet)


@pytest.mark.parametrize(
    "change",
    [
        {"ack": 0x0BADCAFF},
        {"window": 502},
        {"options": (("NOP", None), ("NOP", None), ("Timestamp", (0x01020305, 0x0A0B0C0D)))},
        {"ttl": 63},
        {"tos": 0x02},
        {"dport": 5202},
    ],
    ids=["ack", "window", "timestamp", "ttl", "tos", "port"],
)
@pytest.mark.parametrize("version", [4, 6])
def test_coalesce_splits_where_headers_differ(version: int, change: dict[str, Any]) -> None:
    """Like the kernel's GRO (tcp_gro_receive): any header difference but seq/checksum flushes."""
    base = Flow(version, options=TIMESTAMPS)
    a = run_of(base, 2)
    b = run_of(replace(base, **change), 2, seq=1000 + 2 * MSS)

    writes = coalesce([*a, *b])

    assert len(writes) == 2
    assert_merged(writes[0], a)
    assert_merged(writes[1], b)


@pytest.mark.parametrize("version", [4, 6])
def test_coalesce_a_push_or_short_segment_ends_the_run(version: int) -> None:
    flow = Flow(version)
    a = run_of(flow, 6)
    pushed = flow.packet(1000 + MSS, payload_of(a[1]), flags=ACK | PSH, ip_id=0x101)
    short = run_of(flow, 2, seq=1000 + 2 * MSS, last=MSS - 100)
    after_short = flow.packet(1000 + 4 * MSS - 100, pattern(MSS), ip_id=0x200)

    writes = coalesce([a[0], pushed, *short, after_short])

    assert len(writes) == 3
    assert_merged(writes[0], [a[0], pushed], flags=ACK | PSH)
    assert_merged(writes[1], short)
    assert_plain(writes[2], after_short)


def test_coalesce_a_pushed_first_segment_stays_alone() -> None:
    flow = Flow(4)
    a = run_of(flow, 3)
    pushed = flow.packet(1000, payload_of(a[0]), flags=ACK | PSH, ip_id=0x100)

    writes = coalesce([pushed, a[1], a[2]])

    assert len(writes) == 2
    assert_plain(writes[0], pushed)
    assert_merged(writes[1], a[1:])


def test_coalesce_a_larger_segment_is_not_appended() -> None:
    """gso_size is the first payload's length; no later segment may exceed it."""
    flow = Flow(6)
    small = flow.packet(1000, pattern(500))
    larger = flow.packet(1500, pattern(600))

    writes = coalesce([small, larger])

    assert_plain(writes[0], small)
    assert_plain(writes[1], larger)


@pytest.mark.parametrize("version", [4, 6])
def test_coalesce_never_exceeds_65535_octets(version: int) -> None:
    flow = Flow(version, options=TIMESTAMPS)
    mss = 1448
    segments = run_of(flow, 120, mss, seq=TWO_32 - 5 * mss)

    writes = coalesce(segments)

    assert len(writes) > 1
    consumed = 0
    for write in writes:
        _fields, completed = unpack_write(write)
        assert len(completed) <= IP_MAXPACKET
        assert_valid(completed)
        count = (len(completed) - len(segments[0]) + mss) // mss
        assert completed == merged_of(segments[consumed : consumed + count])
        consumed += count
    assert consumed == len(segments)
