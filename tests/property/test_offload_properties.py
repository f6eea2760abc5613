"""Properties of the TUN offloads (``common.wire.offload``), with hypothesis.

- ``segment`` is total: any byte string gives ``None`` or a list of packets,
  never an exception (the outbound worker counts ``None`` as a drop).
- ``coalesce`` after ``segment`` rebuilds the super packet exactly (once the
  kernel completes the partial checksum), for any payload, MSS and sequence
  number; and ``segment`` after ``coalesce`` gives back exactly the packets
  that went in, in order, whatever mix of flows, gaps and corruption.
- ``ones_sum``/``finish_checksum`` agree with a plain RFC 1071 checksum
  written here word by word.

Expected packets are built by scapy, not by the code under test.
"""

from __future__ import annotations

import struct
from typing import Final

from hypothesis import example, given, settings
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.packet import Packet, Raw

from common.wire.offload import coalesce, complete_checksum, finish_checksum, ones_sum, segment

VIRTIO_NET_HDR: Final = struct.Struct("=BBHHHH")  # include/uapi/linux/virtio_net.h
NEEDS_CSUM: Final = 1
GSO_TCPV4, GSO_TCPV6 = 1, 4
PLAIN_HEADER: Final = bytes(VIRTIO_NET_HDR.size)
ACK, PSH = 0x10, 0x08
TIMESTAMPS: Final = [("NOP", None), ("NOP", None), ("Timestamp", (7, 9))]

SETTINGS = settings(max_examples=150, deadline=None)


# -- an independent RFC 1071 checksum -------------------------------------------


def rfc1071_sum(data: bytes) -> int:
    """RFC 1071 section 4.1, word by word: end-around carry, odd octet padded with zero."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for index in range(0, len(data), 2):
        total += (data[index] << 8) | data[index + 1]
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def rfc1071_checksum(data: bytes) -> int:
    return ~rfc1071_sum(data) & 0xFFFF


@SETTINGS
@given(data=st.binary(max_size=3000))
@example(data=b"")
@example(data=b"\x01")  # odd: the last octet is the high half of a word
@example(data=b"\xff\xff")  # sums to 0xFFFF, the checksum is 0
@example(data=b"\x00\x00\x00")
@example(data=b"\xff" * 4097)
def test_ones_sum_and_finish_checksum_agree_with_rfc_1071(data: bytes) -> None:
    total = ones_sum(data)
    assert 0 <= total < 0xFFFF
    assert total == rfc1071_sum(data) % 0xFFFF  # 0xFFFF and 0 are both ones' complement zero
    if any(data):
        assert finish_checksum(total) == rfc1071_checksum(data)
    else:
        # The one place the representations differ: all-zero data has the sum +0,
        # checksum 0xFFFF, but ``ones_sum`` folds +0 and -0 together and the
        # result is 0. Unreachable for IP, TCP and UDP (version and protocol are
        # non-zero in every header and pseudo-header).
        assert finish_checksum(total) == 0
        assert rfc1071_checksum(data) == 0xFFFF


@SETTINGS
@given(head=st.binary(max_size=200), tail=st.binary(max_size=2000), extra=st.integers(0, 2**20))
def test_sums_compose_at_even_offsets(head: bytes, tail: bytes, extra: int) -> None:
    """What ``_finish_segment`` relies on: header and payload summed apart add up.

    RFC 1071 2(B): the sum is independent of how the words are grouped, so
    partial sums over even-length pieces (and small integers such as the
    pseudo-header's length) can be added, however large the total grows.
    """
    head += bytes(len(head) % 2)
    tail += bytes(len(tail) % 2)
    whole = head + tail + extra.to_bytes(4, "big")
    split = ones_sum(head) + ones_sum(tail) + (extra >> 16) + (extra & 0xFFFF)
    if any(whole):
        assert finish_checksum(split) == rfc1071_checksum(whole)


@SETTINGS
@given(before=st.binary(max_size=100), after=st.binary(max_size=500))
def test_a_filled_in_checksum_verifies(before: bytes, after: bytes) -> None:
    """RFC 1071 section 1 (3): the sum over the data with its checksum is all ones."""
    if len(before) % 2:
        before += b"\x07"
    data = before + b"\x00\x00" + after
    checksum = finish_checksum(ones_sum(data))
    filled = before + checksum.to_bytes(2, "big") + after
    if any(data):
        assert rfc1071_sum(filled) == 0xFFFF


# -- segment on arbitrary input ---------------------------------------------


def _tcp_packet(version: int, seq: int, payload: bytes, *, options: bool = False) -> bytes:
    tcp = TCP(
        sport=443, dport=50000, seq=seq, ack=1, flags=ACK, options=TIMESTAMPS if options else []
    )
    ip = (
        IP(src="10.1.0.5", dst="10.2.0.7", flags="DF")
        if version == 4
        else IPv6(src="fd00:a::5", dst="fd00:b::7")
    )
    return bytes(raw(ip / tcp / Raw(payload)))


SAMPLE_TCP = (_tcp_packet(4, 1, bytes(range(200))), _tcp_packet(6, 1, bytes(range(200))))


def _mutated(packet: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
    buffer = bytearray(packet)
    for position, value in edits:
        buffer[position % len(buffer)] = value
    return bytes(buffer[: max(0, len(buffer) - cut)])


def super_packet_buffers() -> st.SearchStrategy[bytes]:
    """Arbitrary bytes; random headers on random bodies; real TCP packets with damage."""
    header = st.builds(
        VIRTIO_NET_HDR.pack,
        st.integers(0, 255),
        st.sampled_from([0, 1, 3, 4, 0x81, 0x84, 2, 5, 0x80, 255]),
        st.integers(0, 0xFFFF),
        st.integers(0, 3000),
        st.integers(0, 300),
        st.integers(0, 300),
    )
    damaged_tcp = st.builds(
        _mutated,
        st.sampled_from(SAMPLE_TCP),
        st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), max_size=4),
        st.integers(0, 260),
    )
    return st.one_of(
        st.binary(max_size=120),
        st.builds(bytes.__add__, header, st.binary(max_size=300)),
        st.builds(bytes.__add__, header, damaged_tcp),
    )


@settings(max_examples=500, deadline=None)
@given(buffer=super_packet_buffers())
def test_segment_never_raises(buffer: bytes) -> None:
    result = segment(buffer)
    assert result is None or (
        isinstance(result, list) and all(isinstance(piece, bytes) for piece in result)
    )


@settings(max_examples=200, deadline=None)
@given(packets=st.lists(st.one_of(st.binary(max_size=100), super_packet_buffers()), max_size=8))
def test_coalesce_never_raises_and_writes_what_it_cannot_merge_as_is(
    packets: list[bytes],
) -> None:
    writes = coalesce(packets)
    assert len(writes) <= len(packets)
    inputs = iter(packets)
    for write in writes:
        flags = write[0]
        assert flags in (0, NEEDS_CSUM)
        if flags == 0:
            assert write[: len(PLAIN_HEADER)] == PLAIN_HEADER
            assert write[len(PLAIN_HEADER) :] in inputs  # in order: the iterator only advances


# -- round trips ------------------------------------------------------------


@st.composite
def super_packets(draw: st.DrawFn) -> tuple[bytes, int]:
    """(a TCP super packet with full checksums, its MSS): what a TSO TUN read stands for."""
    version = draw(st.sampled_from([4, 6]))
    mss = draw(st.integers(64, 1460))
    payload = draw(st.binary(max_size=8 * mss))
    tcp = TCP(
        sport=draw(st.integers(1, 0xFFFF)),
        dport=draw(st.integers(1, 0xFFFF)),
        seq=draw(st.integers(0, 2**32 - 1)),
        ack=draw(st.integers(0, 2**32 - 1)),
        flags=draw(st.sampled_from([ACK, ACK | PSH])),
        window=draw(st.integers(0, 0xFFFF)),
        options=draw(st.sampled_from([[], TIMESTAMPS])),
    )
    ip: Packet
    if version == 4:
        ip = IP(src="10.1.0.5", dst="10.2.0.7", id=draw(st.integers(0, 0xFFFF)), flags="DF")
    else:
        ip = IPv6(src="fd00:a::5", dst="fd00:b::7", fl=draw(st.integers(0, 0xFFFFF)))
    return bytes(raw(ip / tcp / Raw(payload))), mss


def _tso_read(packet: bytes, mss: int) -> bytes:
    """The TUN read for ``packet``: virtio_net_hdr, pseudo-header sum in the checksum field."""
    ip_len = 20 if packet[0] >> 4 == 4 else 40
    header_len = ip_len + (packet[ip_len + 12] >> 4) * 4
    l4_len = len(packet) - ip_len
    if ip_len == 20:
        pseudo = packet[12:20] + b"\x00\x06" + l4_len.to_bytes(2, "big")
    else:
        pseudo = packet[8:40] + l4_len.to_bytes(4, "big") + b"\x00\x00\x00\x06"
    partial = rfc1071_sum(pseudo)  # folded, not complemented: CHECKSUM_PARTIAL
    gso_type = GSO_TCPV4 if ip_len == 20 else GSO_TCPV6
    return (
        VIRTIO_NET_HDR.pack(NEEDS_CSUM, gso_type, header_len, mss, ip_len, 16)
        + packet[: ip_len + 16]
        + partial.to_bytes(2, "big")
        + packet[ip_len + 18 :]
    )


@SETTINGS
@given(case=super_packets())
def test_coalesce_of_segment_gives_back_the_super_packet(case: tuple[bytes, int]) -> None:
    packet, mss = case
    segments = segment(_tso_read(packet, mss))
    assert segments is not None

    writes = coalesce(segments)

    assert len(writes) == 1
    flags, gso_type, header_len, gso_size, csum_start, csum_offset = VIRTIO_NET_HDR.unpack_from(
        writes[0]
    )
    body = writes[0][VIRTIO_NET_HDR.size :]
    if len(segments) == 1:
        assert writes[0] == PLAIN_HEADER + packet
        return
    ip_len = 20 if packet[0] >> 4 == 4 else 40
    assert (flags, gso_type, gso_size, csum_start, csum_offset) == (
        NEEDS_CSUM,
        GSO_TCPV4 if ip_len == 20 else GSO_TCPV6,
        mss,
        ip_len,
        16,
    )
    assert header_len == ip_len + (packet[ip_len + 12] >> 4) * 4
    assert complete_checksum(body, csum_start, csum_offset) == packet


def _segment_from(template: bytes, seq: int, flags: int, ip_id: int, payload: bytes) -> bytes:
    """A segment of the flow whose scapy-built header is ``template``, with fresh checksums.

    scapy costs ~2 ms a packet; patching one scapy header per flow with the RFC
    1071 sum written above keeps the example count high.
    """
    packet = bytearray(template + payload)
    ip_len = 20 if packet[0] >> 4 == 4 else 40
    l4_len = len(packet) - ip_len
    struct.pack_into("!I", packet, ip_len + 4, seq)
    packet[ip_len + 13] = flags
    packet[ip_len + 16 : ip_len + 18] = b"\x00\x00"
    if ip_len == 20:
        struct.pack_into("!HH", packet, 2, len(packet), ip_id)
        packet[10:12] = b"\x00\x00"
        packet[10:12] = rfc1071_checksum(bytes(packet[:20])).to_bytes(2, "big")
        pseudo = packet[12:20] + b"\x00\x06" + l4_len.to_bytes(2, "big")
    else:
        struct.pack_into("!H", packet, 4, l4_len)
        pseudo = packet[8:40] + l4_len.to_bytes(4, "big") + b"\x00\x00\x00\x06"
    checksum = rfc1071_checksum(bytes(pseudo + packet[ip_len:]))
    packet[ip_len + 16 : ip_len + 18] = checksum.to_bytes(2, "big")
    return bytes(packet)


FLOW_TEMPLATES: Final = {
    (version, port): bytes(
        raw(
            (
                IP(src="10.1.0.5", dst="10.2.0.7")
                if version == 4
                else IPv6(src="fd00:a::5", dst="fd00:b::7")
            )
            / TCP(sport=port, dport=22, ack=5, flags=ACK, options=TIMESTAMPS)
        )
    )
    for version in (4, 6)
    for port in (1000, 1001)
}


@st.composite
def segment_streams(draw: st.DrawFn) -> list[bytes]:
    """Segments of two flows as a receiver might get them: runs, pushes, short tails,
    interleaving, gaps and the odd corrupted segment. Each flow's IPv4 ID counts up with
    its segments (as the sender's TSO made them), so re-segmenting a merge reproduces it.
    """
    segments: list[bytes] = []
    for port in (1000, 1001):
        template = FLOW_TEMPLATES[draw(st.sampled_from([4, 6])), port]
        mss = draw(st.sampled_from([100, 536]))
        seq = draw(st.integers(0, 2**32 - 1))
        ip_id = draw(st.integers(0, 0xFFFF))
        for index in range(draw(st.integers(1, 12))):
            size = draw(st.sampled_from([mss, mss, mss, mss // 2]))
            flags = draw(st.sampled_from([ACK, ACK, ACK, ACK | PSH]))
            payload = bytes((seq + i) & 0xFF for i in range(size))
            segments.append(_segment_from(template, seq, flags, (ip_id + index) & 0xFFFF, payload))
            seq = (seq + size) & 0xFFFFFFFF
    order = draw(
        st.one_of(
            st.just(list(range(len(segments)))),  # flow by flow, in order
            st.permutations(range(len(segments))),
        )
    )
    packets = [segments[i] for i in order]
    dropped = draw(st.sets(st.integers(0, len(packets) - 1), max_size=2))
    packets = [p for i, p in enumerate(packets) if i not in dropped]
    corrupt = draw(st.booleans())
    if packets and corrupt:
        victim = draw(st.integers(0, len(packets) - 1))
        corrupted = bytearray(packets[victim])
        corrupted[-1] ^= 0x40
        packets[victim] = bytes(corrupted)
    return packets


def test_stream_segments_are_valid_packets() -> None:
    """The patched segments the stream property feeds ``coalesce`` are what scapy would build."""
    for (version, port), template in FLOW_TEMPLATES.items():
        built = _segment_from(template, 2**32 - 3, ACK | PSH, 0xFFFF, b"odd payload")
        layer = IP if version == 4 else IPv6
        expected = layer(template)
        expected[TCP].seq, expected[TCP].flags = 2**32 - 3, ACK | PSH
        if version == 4:
            expected.id = 0xFFFF
            del expected.len, expected.chksum
        else:
            del expected.plen
        del expected[TCP].chksum
        assert built == bytes(raw(expected / Raw(b"odd payload"))), (version, port)


@SETTINGS
@given(packets=segment_streams())
def test_segment_of_coalesce_gives_back_every_packet_in_order(packets: list[bytes]) -> None:
    """``coalesce`` loses, reorders and alters nothing: re-segmenting its writes
    (what the kernel does to forward a GRO packet) gives the input back exactly."""
    writes = coalesce(packets)

    expanded: list[bytes] = []
    for write in writes:
        assert len(write) - VIRTIO_NET_HDR.size <= 65535
        if write[0] == 0:
            expanded.append(write[VIRTIO_NET_HDR.size :])
        else:
            pieces = segment(write)
            assert pieces is not None
            assert len(pieces) > 1
            expanded.extend(pieces)
    assert expanded == packets
