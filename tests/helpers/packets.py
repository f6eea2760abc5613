"""Small, valid inner IP packets for ESP tests, and an independent reference ESP sealer.

The checksum here is written independently of ``common.wire.ip.internet_checksum``
on purpose: the packets these helpers build are also used to test that
function, and a shared bug must not be able to hide itself.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

IPPROTO_ICMP: Final = 1
IPPROTO_UDP: Final = 17
IPPROTO_ICMPV6: Final = 58
ICMP_ECHO_REQUEST: Final = 8
ICMP_ECHO_REPLY: Final = 0


def ones_complement_checksum(data: bytes) -> int:
    """RFC 1071 checksum, computed byte pair by byte pair (slow and obvious)."""
    if len(data) % 2:
        data = data + b"\x00"
    total = 0
    for index in range(0, len(data), 2):
        total += (data[index] << 8) | data[index + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_header(
    src: str, dst: str, protocol: int, payload_len: int, *, ident: int = 0x1234, ttl: int = 64
) -> bytes:
    """A 20-octet IPv4 header with a correct checksum (DF clear, no options)."""
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + payload_len,
        ident,
        0,
        ttl,
        protocol,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    checksum = ones_complement_checksum(header)
    return header[:10] + struct.pack("!H", checksum) + header[12:]


def ipv6_header(
    src: str, dst: str, next_header: int, payload_len: int, hop_limit: int = 64
) -> bytes:
    """A 40-octet IPv6 fixed header."""
    return struct.pack(
        "!IHBB16s16s",
        6 << 28,
        payload_len,
        next_header,
        hop_limit,
        ipaddress.IPv6Address(src).packed,
        ipaddress.IPv6Address(dst).packed,
    )


def ipv4_icmp_echo(
    src: str = "10.99.100.1",
    dst: str = "10.99.0.10",
    *,
    ident: int = 0x4242,
    seq: int = 1,
    data: bytes = bytes(range(56)),
    reply: bool = False,
) -> bytes:
    """An IPv4 ICMP echo request (or reply), the packet ``ping`` sends."""
    icmp_type = ICMP_ECHO_REPLY if reply else ICMP_ECHO_REQUEST
    icmp = struct.pack("!BBHHH", icmp_type, 0, 0, ident, seq) + data
    icmp = icmp[:2] + struct.pack("!H", ones_complement_checksum(icmp)) + icmp[4:]
    return ipv4_header(src, dst, IPPROTO_ICMP, len(icmp)) + icmp


def ipv4_udp(
    src: str = "10.99.100.1",
    dst: str = "10.99.0.10",
    *,
    sport: int = 40000,
    dport: int = 9,
    data: bytes = b"",
) -> bytes:
    """An IPv4 UDP datagram (checksum 0, allowed for IPv4 by RFC 768)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    return ipv4_header(src, dst, IPPROTO_UDP, len(udp)) + udp


def ipv6_udp(
    src: str = "fd00:99::1",
    dst: str = "fd00:99:0:1::10",
    *,
    sport: int = 40000,
    dport: int = 9,
    data: bytes = b"",
) -> bytes:
    """An IPv6 UDP datagram with the mandatory checksum over the pseudo-header (RFC 8200 8.1)."""
    length = 8 + len(data)
    pseudo = (
        ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + struct.pack("!I3xB", length, IPPROTO_UDP)
    )
    udp = struct.pack("!HHHH", sport, dport, length, 0) + data
    checksum = ones_complement_checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", checksum) + udp[8:]
    return ipv6_header(src, dst, IPPROTO_UDP, length) + udp


@dataclass(frozen=True, slots=True)
class IcmpEcho:
    """The fields of an IPv4 ICMP echo that a test compares."""

    src: str
    dst: str
    icmp_type: int
    ident: int
    seq: int
    data: bytes


def parse_ipv4_icmp_echo(packet: bytes) -> IcmpEcho:
    """Decode an IPv4 ICMP echo request/reply, asserting every length and checksum on the way.

    Raises AssertionError (a test failure) when the packet is anything else.
    """
    assert len(packet) >= 28, f"too short for IPv4 + ICMP: {len(packet)}"
    assert packet[0] == 0x45, f"not an option-less IPv4 header: {packet[0]:#x}"
    total = struct.unpack_from("!H", packet, 2)[0]
    assert total == len(packet), f"IPv4 total length {total} != {len(packet)} octets held"
    assert ones_complement_checksum(packet[:20]) == 0, "IPv4 header checksum is wrong"
    assert packet[9] == IPPROTO_ICMP, f"protocol {packet[9]} is not ICMP"
    icmp = packet[20:]
    assert ones_complement_checksum(icmp) == 0, "ICMP checksum is wrong"
    icmp_type, code, _checksum, ident, seq = struct.unpack_from("!BBHHH", icmp, 0)
    assert icmp_type in (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY), f"ICMP type {icmp_type}"
    assert code == 0
    return IcmpEcho(
        src=str(ipaddress.IPv4Address(packet[12:16])),
        dst=str(ipaddress.IPv4Address(packet[16:20])),
        icmp_type=icmp_type,
        ident=ident,
        seq=seq,
        data=icmp[8:],
    )


# --- An independent ESP sealer ---------------------------------------------------------------


def esp_trailer(payload_len: int, next_header: int, alignment: int) -> bytes:
    """RFC 4303 2.4-2.6: padding 1, 2, 3, ..., pad length, next header, minimal to align."""
    pad = -(payload_len + 2) % alignment
    return bytes(range(1, pad + 1)) + bytes((pad, next_header))


def reference_esp_seal(
    suite_name: str,
    keymat: bytes,
    spi: int,
    seq: int,
    plaintext: bytes,
    iv: bytes,
    *,
    esn: bool = False,
) -> bytes:
    """Seal an already padded ESP plaintext (payload || trailer) the way RFC 4106/7634/3602 say.

    Written from the RFCs with ``cryptography`` only, without looking at
    ``common.esp``, so tests can craft packets our own encapsulate refuses to
    build (wrong next header, bad padding, dummy packets) and compare bytes.
    """
    header = struct.pack("!II", spi, seq & 0xFFFFFFFF)
    seq_high = struct.pack("!I", seq >> 32)
    if suite_name in ("aes128gcm16", "aes256gcm16", "chacha20poly1305"):
        key, salt = keymat[:-4], keymat[-4:]
        aead = ChaCha20Poly1305(key) if suite_name.startswith("chacha") else AESGCM(key)
        # RFC 4106 5 / RFC 7634 2.1: AAD = SPI || [seq high] || seq low.
        aad = header[:4] + seq_high + header[4:] if esn else header
        return header + iv + aead.encrypt(salt + iv, plaintext, aad)
    key_bits, hash_bits = (int(part) for part in suite_name[3:].split("-sha"))
    key, integ = keymat[: key_bits // 8], keymat[key_bits // 8 :]
    assert len(integ) == hash_bits // 8
    assert len(plaintext) % 16 == 0
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    body = header + iv + encryptor.update(plaintext) + encryptor.finalize()
    # RFC 4303 2.2.1: with ESN the high half is appended for the ICV only, never sent.
    mac = hmac.new(integ, body + (seq_high if esn else b""), getattr(hashlib, f"sha{hash_bits}"))
    return body + mac.digest()[: hash_bits // 16]
