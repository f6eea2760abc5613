"""Cross-check against scapy's ESP (scapy.layers.ipsec), an implementation nobody here wrote.

Tunnel mode, both directions, every suite, with and without ESN:

- scapy encrypts -> our InboundSa decapsulates to the same inner packet;
- our OutboundSa encapsulates -> scapy decrypts (and its own ICV check passes),
  and scapy sees the padding 1, 2, 3... and next header 4/41 we wrote;
- given the same sequence number and IV, scapy's ESP bytes equal ours exactly.

scapy names and key layout (checked in scapy 2.8 ``ipsec.py``): AEAD
``crypt_key`` is key || 4-octet salt (``salt_size=4`` for 'AES-GCM' and
'CHACHA20-POLY1305'), which is exactly one direction's KEYMAT slice; ESN is
``esn_en=True`` plus ``esn=<high 32 bits>``, with the low 32 bits as ``seq_num``.
"""

from __future__ import annotations

import struct

import pytest
from scapy.compat import raw
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, IPSecIntegrityError, SecurityAssociation
from scapy.packet import Packet, Raw

from common.esp.sa import InboundSa, OutboundSa
from common.esp.suites import EspSuite, suite_by_name

SPI = 0x8765_4321
OUTER_SRC, OUTER_DST = "192.0.2.2", "192.0.2.1"
TWO_32 = 1 << 32

# our suite name -> (scapy crypt_algo, scapy auth_algo)
SCAPY_NAMES: dict[str, tuple[str, str | None]] = {
    "aes128gcm16": ("AES-GCM", None),
    "aes256gcm16": ("AES-GCM", None),
    "chacha20poly1305": ("CHACHA20-POLY1305", None),
    "aes128-sha256": ("AES-CBC", "SHA2-256-128"),
    "aes128-sha384": ("AES-CBC", "SHA2-384-192"),
    "aes128-sha512": ("AES-CBC", "SHA2-512-256"),
    "aes256-sha256": ("AES-CBC", "SHA2-256-128"),
    "aes256-sha384": ("AES-CBC", "SHA2-384-192"),
    "aes256-sha512": ("AES-CBC", "SHA2-512-256"),
}
SUITE_NAMES = sorted(SCAPY_NAMES)

# Full sequence numbers exercised: the start, the end of the 32-bit space, and (ESN) past it.
SEQ_PLAIN = [1, 2, 77, 0xFFFFFFFF]
SEQ_ESN = [1, 0xFFFFFFFF, TWO_32, TWO_32 + 1, (5 << 32) | 0x1234]


def keymat_for(suite: EspSuite) -> bytes:
    return bytes((0x30 + 7 * index) & 0xFF for index in range(suite.keymat_len))


def scapy_sa(name: str, *, esn: bool) -> SecurityAssociation:
    suite = suite_by_name(name)
    keymat = keymat_for(suite)
    crypt_algo, auth_algo = SCAPY_NAMES[name]
    if suite.is_aead:
        crypt_key, auth_key = keymat, None  # scapy splits the salt off itself
    else:
        crypt_key, auth_key = keymat[: suite.key_len], keymat[suite.key_len :]
    return SecurityAssociation(  # type: ignore[no-untyped-call]
        ESP,
        spi=SPI,
        crypt_algo=crypt_algo,
        crypt_key=crypt_key,
        auth_algo=auth_algo,
        auth_key=auth_key,
        tunnel_header=IP(src=OUTER_SRC, dst=OUTER_DST),
        esn_en=esn,
        esn=0,
    )


def scapy_encrypt(
    sa: SecurityAssociation, inner: Packet, seq: int, iv: bytes | None = None
) -> bytes:
    """scapy's ESP bytes for ``inner`` at full sequence number ``seq``.

    scapy treats ``seq_num=0`` and ``esn=0`` as "not given" (``seq_num or
    self.seq_num``), so both are set on the SA object instead of passed.
    """
    sa.seq_num = seq & 0xFFFFFFFF
    sa.esn = seq >> 32
    outer = sa.encrypt(inner, iv=iv)  # type: ignore[no-untyped-call]
    assert outer.haslayer(ESP)
    assert outer[ESP].seq == seq & 0xFFFFFFFF
    return bytes(raw(outer[ESP]))


def scapy_decrypt(sa: SecurityAssociation, esp: bytes, seq: int) -> tuple[Packet, Packet]:
    """(inner packet, _ESPPlain with padding and next header) as scapy decrypts ``esp``."""
    sa.esn = seq >> 32
    outer = IP(raw(IP(src=OUTER_SRC, dst=OUTER_DST, proto=50) / Raw(esp)))
    plain = sa.crypt_algo.decrypt(  # type: ignore[no-untyped-call]
        sa,
        outer[ESP],
        sa.crypt_key,
        sa.crypt_icv_size or sa.crypt_algo.icv_size or sa.auth_algo.icv_size,
        esn_en=sa.esn_en,
        esn=sa.esn,
    )
    # decrypt verifies the ICV too (HMAC suites), then strips the tunnel header
    inner = sa.decrypt(outer)  # type: ignore[no-untyped-call]
    return inner, plain


def inner_packet(version: int, size: int) -> Packet:
    if version == 4:
        return IP(src="10.99.100.1", dst="10.99.0.10") / ICMP(id=7, seq=size) / Raw(bytes(size))
    return IPv6(src="fd00:99::1", dst="fd00:99::10") / UDP(sport=5353, dport=53) / Raw(b"q" * size)


def cases(esn: bool) -> list[tuple[int, Packet]]:
    """(full sequence number, inner packet) pairs, kept few because scapy is slow.

    Each sequence number gets IPv4 and IPv6 packets, and over all cases the
    inner lengths (28 + even sizes for IPv4, 48 + odd sizes for IPv6) hit all
    16 remainders modulo 16, so every CBC and AEAD padding length is seen.
    """
    seqs = SEQ_ESN if esn else SEQ_PLAIN
    return [
        (seq, inner_packet(4 if k % 2 == 0 else 6, (4 * j + k) % 16))
        for j, seq in enumerate(seqs)
        for k in range(4)
    ]


def _inbound_at(name: str, seq: int, *, esn: bool) -> InboundSa:
    """An InboundSa whose window has followed the SA to just before ``seq``."""
    suite = suite_by_name(name)
    inbound = InboundSa(SPI, suite, keymat_for(suite), esn=esn)
    if seq > 1:
        inbound.replay.commit(seq - 1)
    return inbound


@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
@pytest.mark.parametrize("name", SUITE_NAMES)
def test_scapy_encrypts_we_decapsulate(name: str, esn: bool) -> None:
    sa = scapy_sa(name, esn=esn)
    for seq, inner in cases(esn):
        esp = scapy_encrypt(sa, inner, seq)
        inbound = _inbound_at(name, seq, esn=esn)

        result = inbound.decapsulate(esp)

        assert result == raw(inner), (hex(seq), inner.summary())


@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
@pytest.mark.parametrize("name", SUITE_NAMES)
def test_we_encapsulate_scapy_decrypts(name: str, esn: bool) -> None:
    suite = suite_by_name(name)
    sa = scapy_sa(name, esn=esn)
    outbound = OutboundSa(SPI, suite, keymat_for(suite), esn=esn)
    for seq, inner in cases(esn):
        outbound.seq = seq - 1  # the next packet goes out with number seq
        esp = outbound.encapsulate(raw(inner))
        assert isinstance(esp, bytes)

        decrypted, plain = scapy_decrypt(sa, esp, seq)

        assert raw(decrypted) == raw(inner), (hex(seq), inner.summary())
        assert plain.nh == (4 if inner.version == 4 else 41)
        assert plain.padding == bytes(range(1, plain.padlen + 1))
        assert plain.padlen < suite.alignment, "minimal padding"


@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
@pytest.mark.parametrize("name", SUITE_NAMES)
def test_same_seq_and_iv_give_the_same_bytes_as_scapy(name: str, esn: bool) -> None:
    suite = suite_by_name(name)
    sa = scapy_sa(name, esn=esn)
    outbound = OutboundSa(SPI, suite, keymat_for(suite), esn=esn)
    for seq, inner in cases(esn):
        iv = struct.pack("!Q", seq) if suite.iv_len == 8 else bytes(range(16))
        theirs = scapy_encrypt(sa, inner, seq, iv)
        ours = outbound.encapsulate_at(raw(inner), seq, iv)
        assert ours == theirs, (hex(seq), inner.summary())


@pytest.mark.parametrize("name", ["aes128gcm16", "chacha20poly1305", "aes128-sha256"])
def test_scapy_rejects_our_packet_under_the_wrong_esn_high_bits(name: str) -> None:
    """Shows the high half really is in our AAD/ICV, seen from the other implementation."""
    suite = suite_by_name(name)
    sa = scapy_sa(name, esn=True)
    original = inner_packet(4, 5)
    esp = OutboundSa(SPI, suite, keymat_for(suite), esn=True).encapsulate_at(
        raw(original), (3 << 32) | 9, struct.pack("!Q", 9) if suite.iv_len == 8 else bytes(16)
    )
    inner, _ = scapy_decrypt(sa, esp, (3 << 32) | 9)
    assert raw(inner) == raw(original)
    with pytest.raises(IPSecIntegrityError):
        scapy_decrypt(sa, esp, (2 << 32) | 9)
