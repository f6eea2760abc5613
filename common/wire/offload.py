"""TUN offloads in Python: TCP segmentation (TSO) on read, coalescing (GRO) on write.

Why: measured on this machine, the kernel work behind each TUN read and write
(the inner TCP stack runs in the writer's context) costs far more than our
AES-GCM. With ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD`` the kernel hands us TCP
"super packets" of up to 64 KiB and accepts them back, so the inner stack runs
once per ~40 segments. The wire is unchanged: every ESP packet still carries
one MTU-sized, correctly checksummed inner packet (what wireguard-go's
tun/offload_linux.go does for the same reason).

Every read and write on such a TUN starts with a ``struct virtio_net_hdr``
(include/uapi/linux/virtio_net.h; host byte order for legacy TUN headers).

Checksums use the fact that a ones' complement sum of 16-bit words is the
value of the bytes, read as one big-endian integer, modulo 0xFFFF (RFC 1071
section 2: 2**16 is 1 modulo 0xFFFF), which ``int.from_bytes`` computes in C.

Nothing here raises on bad input: ``segment`` returns ``None`` and the caller
counts a drop.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Final

VNET_HDR: Final = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start/offset
VNET_HDR_LEN: Final = VNET_HDR.size
F_NEEDS_CSUM: Final = 1  # VIRTIO_NET_HDR_F_NEEDS_CSUM: checksum from csum_start is partial
GSO_ECN: Final = 0x80


class GsoType(IntEnum):
    """VIRTIO_NET_HDR_GSO_* (include/uapi/linux/virtio_net.h)."""

    NONE = 0
    TCPV4 = 1
    UDP = 3
    TCPV6 = 4


_GSO_NONE: Final = 0
_GSO_TCPV4: Final = 1
_GSO_TCPV6: Final = 4
PLAIN_VNET_HDR: Final = bytes(VNET_HDR_LEN)  # no offload: the kernel checks the checksum itself

_U16: Final = struct.Struct("!H")
_U32: Final = struct.Struct("!I")
_TCP: Final = 6
_TCP_FIN: Final = 0x01
_TCP_SYN: Final = 0x02
_TCP_RST: Final = 0x04
_TCP_PSH: Final = 0x08
_TCP_URG: Final = 0x20
_TCP_CWR: Final = 0x80
_NO_COALESCE_FLAGS: Final = _TCP_FIN | _TCP_SYN | _TCP_RST | _TCP_URG | _TCP_CWR | 0x40  # +ECE
_MAX_IP_PACKET: Final = 65535


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """Ones' complement sum of ``data`` as 16-bit words, modulo 0xFFFF (0 stands for 0xFFFF)."""
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8  # odd length: pad with a zero octet (RFC 1071)
    return value % 0xFFFF


def finish_checksum(total: int) -> int:
    """Checksum field value from a sum of ``ones_sum`` results."""
    total %= 0xFFFF
    return 0xFFFF - total if total else 0


def _pseudo_sum(packet: bytes | bytearray, version: int, l4_len: int) -> int:
    """Sum of the TCP/UDP pseudo-header (RFC 9293 3.1, RFC 8200 8.1)."""
    if version == 4:
        return ones_sum(packet[12:20]) + _TCP + l4_len
    return ones_sum(packet[8:40]) + _TCP + l4_len


def complete_checksum(packet: bytes, csum_start: int, csum_offset: int) -> bytes | None:
    """Fill in a checksum the kernel left partial (VIRTIO_NET_HDR_F_NEEDS_CSUM)."""
    field = csum_start + csum_offset
    if field + 2 > len(packet) or csum_start >= len(packet):
        return None
    # The field holds the folded pseudo-header sum; summing over it completes the sum.
    # A sum folding to zero is sent as 0xFFFF, as the kernel's skb_checksum_help
    # does: zero means "no checksum" to UDP over IPv4 and is invalid over IPv6.
    checksum = finish_checksum(ones_sum(memoryview(packet)[csum_start:])) or 0xFFFF
    return packet[:field] + _U16.pack(checksum) + packet[field + 2 :]


def segment(buffer: bytes) -> list[bytes] | None:
    """Whole, checksummed IP packets from one TUN read with a virtio-net header.

    Returns ``None`` for a buffer we cannot make sense of (too short, a GSO
    type we did not enable, inconsistent header lengths).
    """
    if len(buffer) <= VNET_HDR_LEN:
        return None
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(buffer)
    packet = buffer[VNET_HDR_LEN:]
    gso_type &= ~GSO_ECN
    if gso_type == _GSO_NONE:
        if flags & F_NEEDS_CSUM:
            completed = complete_checksum(packet, csum_start, csum_offset)
            return None if completed is None else [completed]
        return [packet]
    if gso_type in (_GSO_TCPV4, _GSO_TCPV6):
        return _segment_tcp(packet, 4 if gso_type == _GSO_TCPV4 else 6, gso_size)
    return None


def _segment_tcp(packet: bytes, version: int, mss: int) -> list[bytes] | None:
    """Split a TCP super packet like the kernel's tcp_gso_segment would."""
    size = len(packet)
    if version == 4:
        if size < 20 or packet[0] >> 4 != 4 or packet[9] != _TCP:
            return None
        ip_len = (packet[0] & 0x0F) * 4
    else:
        if size < 40 or packet[0] >> 4 != 6 or packet[6] != _TCP:
            return None  # extension headers are not produced by the kernel's TSO path here
        ip_len = 40
    if size < ip_len + 20 or mss <= 0:
        return None
    tcp_len = (packet[ip_len + 12] >> 4) * 4
    header_len = ip_len + tcp_len
    if tcp_len < 20 or size < header_len:
        return None
    payload = memoryview(packet)[header_len:]
    if len(payload) <= mss:
        # Nothing to split; still complete the checksum the kernel left partial.
        return [_finish_segment(bytearray(packet[:header_len]), payload, version, ip_len, 0)]
    template = bytearray(packet[:header_len])
    seq = _U32.unpack_from(packet, ip_len + 4)[0]
    ip_id = _U16.unpack_from(packet, 4)[0] if version == 4 else 0
    tcp_flags = packet[ip_len + 13]
    segments: list[bytes] = []
    count = (len(payload) + mss - 1) // mss
    for index in range(count):
        chunk = payload[index * mss : (index + 1) * mss]
        header = bytearray(template)
        _U32.pack_into(header, ip_len + 4, (seq + index * mss) & 0xFFFFFFFF)
        flags = tcp_flags
        if index != count - 1:
            flags &= ~(_TCP_FIN | _TCP_PSH)  # only the last segment ends or pushes
        if index:
            flags &= ~_TCP_CWR  # congestion window reduced is signalled once
        header[ip_len + 13] = flags
        segments.append(_finish_segment(header, chunk, version, ip_len, index, ip_id))
    return segments


def _finish_segment(
    header: bytearray,
    chunk: memoryview,
    version: int,
    ip_len: int,
    index: int,
    ip_id: int = 0,
) -> bytes:
    """Lengths, IPv4 ID and both checksums of one segment."""
    l4_len = len(header) - ip_len + len(chunk)
    if version == 4:
        _U16.pack_into(header, 2, ip_len + l4_len)
        if index:
            _U16.pack_into(header, 4, (ip_id + index) & 0xFFFF)
        header[10] = header[11] = 0
        _U16.pack_into(header, 10, finish_checksum(ones_sum(header[:ip_len])))
    else:
        _U16.pack_into(header, 4, l4_len)
    header[ip_len + 16] = header[ip_len + 17] = 0
    segment = bytes(header) + chunk
    # One pass over TCP header and payload (the header length is even, so the
    # payload's 16-bit words line up): int.from_bytes and % dominate the cost.
    total = _pseudo_sum(header, version, l4_len) + ones_sum(memoryview(segment)[ip_len:])
    checksum = finish_checksum(total)
    field = ip_len + 16
    return b"".join((segment[:field], _U16.pack(checksum), segment[field + 2 :]))


def _tcp_checksum_ok(packet: bytes, version: int, ip_len: int) -> bool:
    l4_len = len(packet) - ip_len
    total = _pseudo_sum(packet, version, l4_len) + ones_sum(memoryview(packet)[ip_len:])
    return total % 0xFFFF == 0


def coalesce(packets: list[bytes]) -> list[bytes]:
    """TUN writes (virtio-net header included) for a batch of received inner packets.

    Runs of consecutive TCP segments of one flow that the kernel's own GRO
    would merge (contiguous sequence numbers, identical headers but for the
    sequence number and checksums, full-sized but for the last, no
    SYN/FIN/RST/URG/CWR/ECE, valid checksums) become one GSO packet;
    everything else is written as it came. Packet order is kept.
    """
    writes: list[bytes] = []
    count = len(packets)
    index = 0
    while index < count:
        first = packets[index]
        info = _coalescable(first)
        if info is None:
            writes.append(PLAIN_VNET_HDR + first)
            index += 1
            continue
        version, ip_len, header_len = info
        mss = len(first) - header_len
        seq = _U32.unpack_from(first, ip_len + 4)[0]
        next_seq = (seq + mss) & 0xFFFFFFFF
        total = len(first)
        run_end = index + 1
        if not first[ip_len + 13] & _TCP_PSH:
            while run_end < count and total + mss <= _MAX_IP_PACKET:
                candidate = packets[run_end]
                payload_len = len(candidate) - header_len
                if (
                    payload_len <= 0
                    or payload_len > mss
                    or not _same_flow(first, candidate, version, ip_len, header_len)
                    or _U32.unpack_from(candidate, ip_len + 4)[0] != next_seq
                    or not _tcp_checksum_ok(candidate, version, ip_len)
                ):
                    break
                total += payload_len
                next_seq = (next_seq + payload_len) & 0xFFFFFFFF
                run_end += 1
                if payload_len < mss or candidate[ip_len + 13] & _TCP_PSH:
                    break  # a short or pushed segment ends the run, as in GRO
        if run_end - index == 1:
            writes.append(PLAIN_VNET_HDR + first)
        else:
            writes.append(_merge(packets[index:run_end], version, ip_len, header_len, mss, total))
        index = run_end
    return writes


def _coalescable(packet: bytes) -> tuple[int, int, int] | None:
    """(version, IP header length, IP+TCP header length) for a merge candidate."""
    size = len(packet)
    if size < 40:
        return None
    version = packet[0] >> 4
    if version == 4:
        if packet[0] != 0x45 or packet[9] != _TCP or packet[6] & 0x3F or packet[7]:
            return None  # options, not TCP, or a fragment (MF or offset set)
        ip_len = 20
    elif version == 6:
        if size < 60 or packet[6] != _TCP:
            return None
        ip_len = 40
    else:
        return None
    header_len = ip_len + (packet[ip_len + 12] >> 4) * 4
    if header_len >= size or packet[ip_len + 13] & _NO_COALESCE_FLAGS:
        return None
    if not _ip_lengths_ok(packet, version):
        return None
    if not _tcp_checksum_ok(packet, version, ip_len):
        return None
    return version, ip_len, header_len


def _ip_lengths_ok(packet: bytes, version: int) -> bool:
    """The IP length field matches the bytes and an IPv4 header checksum verifies.

    Merging rewrites both, so a packet the kernel would have refused must not
    come out of ``_merge`` looking valid.
    """
    length: int
    if version == 4:
        (length,) = _U16.unpack_from(packet, 2)
        return length == len(packet) and ones_sum(packet[:20]) == 0
    (length,) = _U16.unpack_from(packet, 4)
    return length + 40 == len(packet)


def _same_flow(first: bytes, other: bytes, version: int, ip_len: int, header_len: int) -> bool:
    if len(other) <= header_len or other[ip_len + 13] & _NO_COALESCE_FLAGS:
        return False
    if version == 4:
        # TOS, DF, TTL, protocol, addresses; not length, ID or header checksum.
        # Version/IHL, TOS, flags and the whole fragment offset, TTL, protocol;
        # not length, ID or header checksum.
        if first[:2] != other[:2] or first[6:8] != other[6:8] or first[8:10] != other[8:10]:
            return False
        if not _ip_lengths_ok(other, version):
            return False
        if first[12:20] != other[12:20]:
            return False
    elif first[:4] != other[:4] or first[6:40] != other[6:40] or not _ip_lengths_ok(other, 6):
        return False
    tcp = ip_len
    # Ports; then ack, data offset, window, urgent pointer and options; PSH may differ.
    return (
        first[tcp : tcp + 4] == other[tcp : tcp + 4]
        and first[tcp + 8 : tcp + 13] == other[tcp + 8 : tcp + 13]
        and (first[tcp + 13] | _TCP_PSH) == (other[tcp + 13] | _TCP_PSH)
        and first[tcp + 14 : tcp + 16] == other[tcp + 14 : tcp + 16]
        and first[tcp + 18 : header_len] == other[tcp + 18 : header_len]
    )


def _merge(
    run: list[bytes], version: int, ip_len: int, header_len: int, mss: int, total: int
) -> bytes:
    """One GSO packet from a run that ``coalesce`` accepted."""
    header = bytearray(run[0][:header_len])
    header[ip_len + 13] |= run[-1][ip_len + 13] & _TCP_PSH
    l4_len = total - ip_len
    if version == 4:
        _U16.pack_into(header, 2, total)
        header[10] = header[11] = 0
        _U16.pack_into(header, 10, finish_checksum(ones_sum(header[:ip_len])))
        gso_type = _GSO_TCPV4
    else:
        _U16.pack_into(header, 4, l4_len)
        gso_type = _GSO_TCPV6
    # CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum, not complemented.
    partial = _pseudo_sum(header, version, l4_len) % 0xFFFF
    _U16.pack_into(header, ip_len + 16, partial)
    vnet = VNET_HDR.pack(F_NEEDS_CSUM, gso_type, header_len, mss, ip_len, 16)
    return b"".join([vnet, header, *(packet[header_len:] for packet in run)])
