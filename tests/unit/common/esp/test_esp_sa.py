"""OutboundSa / InboundSa behaviour: sequence limits, ESN, trailer checks, CBC integrity, counters.

Packets our encapsulate would never build (dummy packets, wrong next header,
bad padding) are crafted with ``reference_esp_seal``, an independent sealer
written from RFC 4106/7634/3602 with ``cryptography`` directly.
RFC 4303: https://www.rfc-editor.org/rfc/rfc4303
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from common.esp.sa import DROP_COUNT, SEQ_LIMIT_32, SEQ_LIMIT_64, Drop, InboundSa, OutboundSa
from common.esp.suites import SUITES, suite_by_name
from tests.helpers.packets import (
    esp_trailer,
    ipv4_icmp_echo,
    ipv4_udp,
    ipv6_udp,
    reference_esp_seal,
)

SPI = 0xC0FFEE01
AEAD_SUITES = ["aes128gcm16", "aes256gcm16", "chacha20poly1305"]
CBC_SUITES = sorted(name for name in SUITES if name not in AEAD_SUITES)
ALL_SUITES = AEAD_SUITES + CBC_SUITES
TWO_32 = 1 << 32
NH_IPV4, NH_IPV6, NH_UDP, NH_DUMMY = 4, 41, 17, 59


def keymat_for(name: str, fill: int = 0x42) -> bytes:
    """Distinct bytes per position, so a mis-split key/salt cannot pass by symmetry."""
    length = suite_by_name(name).keymat_len
    return bytes((fill + index) & 0xFF for index in range(length))


def counting_rng() -> Callable[[int], bytes]:
    """Deterministic, never-repeating IVs for CBC (a stand-in for os.urandom)."""
    state = {"n": 0}

    def rng(size: int) -> bytes:
        state["n"] += 1
        return state["n"].to_bytes(size, "big")

    return rng


def pair(
    name: str, *, esn: bool = False, soft_limit: int | None = None
) -> tuple[OutboundSa, InboundSa]:
    """A matching outbound/inbound pair on one key, as the two ends of a Child SA see it."""
    keymat = keymat_for(name)
    suite = suite_by_name(name)
    outbound = OutboundSa(SPI, suite, keymat, esn=esn, soft_limit=soft_limit, rng=counting_rng())
    return outbound, InboundSa(SPI, suite, keymat, esn=esn)


def craft(name: str, seq: int, plaintext: bytes, *, esn: bool = False, spi: int = SPI) -> bytes:
    """An authentic packet around an arbitrary (already padded) plaintext."""
    iv_len = suite_by_name(name).iv_len
    iv = struct.pack("!Q", seq) if iv_len == 8 else seq.to_bytes(16, "big")
    return reference_esp_seal(name, keymat_for(name), spi, seq, plaintext, iv, esn=esn)


def sealed(result: bytes | Drop) -> bytes:
    """The packet encapsulate returned, failing the test on a Drop."""
    assert isinstance(result, bytes), result
    return result


def alignment(name: str) -> int:
    return suite_by_name(name).alignment


# --- construction ---------------------------------------------------------------------------


@pytest.mark.parametrize("spi", [0, 1, 255, 1 << 32])
def test_reserved_or_oversized_spi_is_refused(spi: int) -> None:
    """RFC 4303 2.1: SPIs 1-255 are reserved by IANA, 0 is for local use."""
    suite = suite_by_name("aes128gcm16")
    with pytest.raises(ValueError, match="SPI"):
        OutboundSa(spi, suite, keymat_for("aes128gcm16"))
    with pytest.raises(ValueError, match="SPI"):
        InboundSa(spi, suite, keymat_for("aes128gcm16"))


@pytest.mark.parametrize("name", ALL_SUITES)
def test_keymat_of_the_wrong_length_is_refused(name: str) -> None:
    suite = suite_by_name(name)
    with pytest.raises(ValueError, match="keying material"):
        OutboundSa(SPI, suite, keymat_for(name)[:-1])
    with pytest.raises(ValueError, match="keying material"):
        InboundSa(SPI, suite, keymat_for(name) + b"\x00")


@pytest.mark.parametrize("soft_limit", [0, -1, SEQ_LIMIT_32 + 1])
def test_soft_limit_outside_the_sequence_space_is_refused(soft_limit: int) -> None:
    with pytest.raises(ValueError, match="soft"):
        OutboundSa(
            SPI, suite_by_name("aes128gcm16"), keymat_for("aes128gcm16"), soft_limit=soft_limit
        )


# --- round trips and the bytes on the wire --------------------------------------------------


@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
@pytest.mark.parametrize("name", ALL_SUITES)
def test_round_trip_ipv4_and_ipv6(name: str, esn: bool) -> None:
    outbound, inbound = pair(name, esn=esn)
    packets = [ipv4_icmp_echo(seq=n) for n in range(3)] + [
        ipv6_udp(data=bytes(n)) for n in range(17)
    ]
    for inner in packets:
        esp = outbound.encapsulate(inner)
        assert isinstance(esp, bytes)
        assert inbound.decapsulate(esp) == inner
    assert outbound.seq == len(packets)
    assert outbound.packets == inbound.packets == len(packets)
    assert outbound.octets == inbound.octets == sum(map(len, packets))
    assert inbound.drops == [0] * DROP_COUNT


@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
@pytest.mark.parametrize("name", ALL_SUITES)
def test_encapsulate_equals_the_reference_sealer(name: str, esn: bool) -> None:
    """Byte equality with an independent implementation, for every padding remainder."""
    outbound, _ = pair(name, esn=esn)
    outbound.seq = TWO_32 + 6 if esn else 6
    for data_len in range(2 * alignment(name)):
        for inner, next_header in (
            (ipv4_udp(data=bytes(data_len)), NH_IPV4),
            (ipv6_udp(data=bytes(data_len)), NH_IPV6),
        ):
            esp = outbound.encapsulate(inner)
            assert isinstance(esp, bytes)
            seq = outbound.seq
            iv = esp[8 : 8 + suite_by_name(name).iv_len]
            plaintext = inner + esp_trailer(len(inner), next_header, alignment(name))
            expected = reference_esp_seal(name, keymat_for(name), SPI, seq, plaintext, iv, esn=esn)
            assert esp == expected, (data_len, next_header)


@pytest.mark.parametrize("name", AEAD_SUITES)
def test_aead_iv_is_the_64_bit_sequence_number_and_never_repeats(name: str) -> None:
    """RFC 4106 3.1 / RFC 7634 2: the IV must be unique per key; the counter guarantees it."""
    outbound, _ = pair(name)
    ivs = set()
    for expected_seq in range(1, 50):
        esp = outbound.encapsulate(ipv4_udp())
        assert isinstance(esp, bytes)
        assert esp[4:8] == struct.pack("!I", expected_seq)
        assert esp[8:16] == struct.pack("!Q", expected_seq)
        ivs.add(esp[8:16])
    assert len(ivs) == 49


@pytest.mark.parametrize("name", CBC_SUITES)
def test_cbc_iv_comes_from_the_injected_rng(name: str) -> None:
    """RFC 3602 3: the IV must be unpredictable, so it comes from the rng, 16 octets each time."""
    requested: list[int] = []

    def rng(size: int) -> bytes:
        requested.append(size)
        return bytes([len(requested)]) * size

    outbound = OutboundSa(SPI, suite_by_name(name), keymat_for(name), rng=rng)
    first = outbound.encapsulate(ipv4_udp())
    second = outbound.encapsulate(ipv4_udp())
    assert isinstance(first, bytes)
    assert isinstance(second, bytes)
    assert requested == [16, 16]
    assert first[8:24] == b"\x01" * 16
    assert second[8:24] == b"\x02" * 16


@pytest.mark.parametrize("name", ALL_SUITES)
def test_next_header_is_4_for_ipv4_and_41_for_ipv6(name: str) -> None:
    """Tunnel mode, RFC 4303 2.6: IP-in-IP is 4, IPv6 is 41. Read back by decrypting directly."""
    outbound, _ = pair(name)
    for inner, expected in ((ipv4_udp(data=b"x"), NH_IPV4), (ipv6_udp(data=b"x"), NH_IPV6)):
        esp = outbound.encapsulate(inner)
        assert isinstance(esp, bytes)
        plaintext = _open_reference(name, esp, outbound.seq)
        assert plaintext[-1] == expected
        pad = plaintext[-2]
        assert plaintext[: len(inner)] == inner
        assert plaintext[len(inner) : -2] == bytes(range(1, pad + 1))
        assert pad < alignment(name)


def _open_reference(name: str, esp: bytes, seq: int) -> bytes:
    """Decrypt without common.esp: AES-GCM/ChaCha via cryptography, CBC via a fresh cipher."""
    keymat = keymat_for(name)
    if name in AEAD_SUITES:
        aead = ChaCha20Poly1305(keymat[:-4]) if name.startswith("chacha") else AESGCM(keymat[:-4])
        return aead.decrypt(keymat[-4:] + esp[8:16], esp[16:], esp[:8])
    suite = suite_by_name(name)
    decryptor = Cipher(algorithms.AES(keymat[: suite.key_len]), modes.CBC(esp[8:24])).decryptor()
    return decryptor.update(esp[24 : len(esp) - suite.icv_len]) + decryptor.finalize()


# --- sequence number limits -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["aes128gcm16", "aes128-sha256"])
def test_32_bit_counter_never_cycles(name: str) -> None:
    """RFC 4303 3.3.3: without ESN, 2^32 - 1 is the last number; then the SA is exhausted."""
    outbound, _ = pair(name)
    outbound.seq = SEQ_LIMIT_32 - 1
    last = outbound.encapsulate(ipv4_udp())
    assert isinstance(last, bytes)
    assert last[4:8] == b"\xff\xff\xff\xff"
    assert outbound.seq == SEQ_LIMIT_32
    packets_before = outbound.packets

    assert outbound.encapsulate(ipv4_udp()) is Drop.SEQUENCE_EXHAUSTED
    assert outbound.encapsulate(ipv4_udp()) is Drop.SEQUENCE_EXHAUSTED
    assert outbound.seq == SEQ_LIMIT_32
    assert outbound.packets == packets_before
    assert outbound.rekey_needed


def test_sa_at_the_last_32_bit_number_is_exhausted() -> None:
    outbound, _ = pair("chacha20poly1305")
    outbound.seq = SEQ_LIMIT_32
    assert outbound.encapsulate(ipv4_udp()) is Drop.SEQUENCE_EXHAUSTED
    assert outbound.seq_limit == SEQ_LIMIT_32


def test_soft_limit_sets_rekey_needed_exactly_at_the_limit() -> None:
    outbound, _ = pair("aes128gcm16", soft_limit=10)
    flags = []
    for _ in range(12):
        assert isinstance(outbound.encapsulate(ipv4_udp()), bytes), "the soft limit still sends"
        flags.append(outbound.rekey_needed)
    assert flags == [False] * 9 + [True] * 3  # raised by the packet numbered 10


@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
def test_default_soft_limit_leaves_room_for_a_rekey(esn: bool) -> None:
    outbound, _ = pair("aes128gcm16", esn=esn)
    outbound.seq = outbound.seq_limit // 2
    assert isinstance(outbound.encapsulate(ipv4_udp()), bytes)
    assert not outbound.rekey_needed, "half the space used is too early to rekey"
    outbound.seq = outbound.seq_limit - 1000
    assert isinstance(outbound.encapsulate(ipv4_udp()), bytes)
    assert outbound.rekey_needed, "1000 packets from exhaustion must have asked for a rekey"


@pytest.mark.parametrize("name", ["aes256gcm16", "chacha20poly1305", "aes256-sha512"])
def test_esn_goes_past_2_32(name: str) -> None:
    """RFC 4303 2.2.1: with ESN the low 32 bits wrap on the wire and the high half is implicit."""
    outbound, inbound = pair(name, esn=True)
    assert outbound.seq_limit == SEQ_LIMIT_64
    outbound.seq = TWO_32 - 3
    inbound.replay.commit(TWO_32 - 10)  # the receiver has followed the SA up to here
    for expected in range(TWO_32 - 2, TWO_32 + 3):
        inner = ipv4_icmp_echo(seq=expected & 0xFFFF)
        esp = outbound.encapsulate(inner)
        assert isinstance(esp, bytes), hex(expected)
        assert esp[4:8] == struct.pack("!I", expected & SEQ_LIMIT_32)
        assert inbound.decapsulate(esp) == inner
        assert inbound.replay.top == expected
    assert outbound.seq == TWO_32 + 2
    assert not outbound.rekey_needed


@pytest.mark.parametrize("name", ["aes128gcm16", "chacha20poly1305", "aes128-sha256"])
def test_esn_high_bits_are_authenticated(name: str) -> None:
    """The high half is never sent but is in the AAD/ICV: a receiver that guesses wrong fails."""
    outbound, _ = pair(name, esn=True)
    outbound.seq = TWO_32  # next packet: high 1, low 1
    esp = outbound.encapsulate(ipv4_udp())
    assert isinstance(esp, bytes)
    assert esp[4:8] == struct.pack("!I", 1)
    keymat, suite = keymat_for(name), suite_by_name(name)

    without_esn = InboundSa(SPI, suite, keymat, esn=False)
    assert without_esn.decapsulate(esp) is Drop.AUTH_FAILED

    fresh_esn = InboundSa(SPI, suite, keymat, esn=True)  # infers high 0
    assert fresh_esn.decapsulate(esp) is Drop.AUTH_FAILED
    assert fresh_esn.replay.top == 0

    following = InboundSa(SPI, suite, keymat, esn=True)
    following.replay.commit(TWO_32 - 1)
    assert following.decapsulate(esp) == ipv4_udp()


# --- inbound trailer checks (RFC 4303 2.4-2.6) ----------------------------------------------


@pytest.mark.parametrize("name", ALL_SUITES)
def test_dummy_packets_are_dropped_as_dummy(name: str) -> None:
    """RFC 4303 2.6: next header 59 is traffic-flow padding; discard it silently."""
    _, inbound = pair(name)
    empty = esp_trailer(0, NH_DUMMY, alignment(name))
    with_junk = b"\xaa" * 13 + esp_trailer(13, NH_DUMMY, alignment(name))
    assert inbound.decapsulate(craft(name, 1, empty)) is Drop.DUMMY
    assert inbound.decapsulate(craft(name, 2, with_junk)) is Drop.DUMMY
    assert inbound.drops[Drop.DUMMY] == 2
    assert inbound.packets == 0
    assert inbound.replay.top == 2, "dummy packets are authentic: their numbers are used up"


@pytest.mark.parametrize("name", ALL_SUITES)
@pytest.mark.parametrize(
    ("inner", "next_header"),
    [
        (ipv4_udp(), NH_IPV6),
        (ipv6_udp(), NH_IPV4),
        (ipv4_udp(), NH_UDP),  # transport mode payload in a tunnel-mode SA
        (ipv4_udp(), 0),
        (ipv6_udp(), 255),
    ],
    ids=["v4-as-41", "v6-as-4", "udp-17", "hop-by-hop-0", "reserved-255"],
)
def test_wrong_next_header_is_dropped(name: str, inner: bytes, next_header: int) -> None:
    _, inbound = pair(name)
    plaintext = inner + esp_trailer(len(inner), next_header, alignment(name))
    assert inbound.decapsulate(craft(name, 1, plaintext)) is Drop.BAD_NEXT_HEADER
    assert inbound.drops[Drop.BAD_NEXT_HEADER] == 1
    assert inbound.packets == 0


@pytest.mark.parametrize("name", ALL_SUITES)
def test_empty_payload_with_ip_next_header_is_dropped(name: str) -> None:
    _, inbound = pair(name)
    assert (
        inbound.decapsulate(craft(name, 1, esp_trailer(0, NH_IPV4, alignment(name))))
        is Drop.BAD_NEXT_HEADER
    )


@pytest.mark.parametrize("name", ALL_SUITES)
def test_padding_bytes_other_than_1_2_3_are_dropped(name: str) -> None:
    """RFC 4303 2.4: the receiver checks the padding pattern (our policy, as Linux does)."""
    _, inbound = pair(name)
    align = alignment(name)
    inner = ipv4_udp(data=bytes(-(28 + 2 + 4) % align))  # room for exactly 4 octets of padding
    good = inner + b"\x01\x02\x03\x04" + bytes((4, NH_IPV4))
    assert len(good) % align == 0
    for bad_padding in (b"\x00\x00\x00\x00", b"\x01\x02\x03\x05", b"\x02\x02\x03\x04"):
        plaintext = inner + bad_padding + bytes((4, NH_IPV4))
        assert (
            inbound.decapsulate(craft(name, inbound.replay.top + 1, plaintext)) is Drop.BAD_PADDING
        )
    assert inbound.decapsulate(craft(name, inbound.replay.top + 1, good)) == inner
    assert inbound.drops[Drop.BAD_PADDING] == 3


@pytest.mark.parametrize("name", ALL_SUITES)
def test_pad_length_beyond_the_payload_is_dropped(name: str) -> None:
    _, inbound = pair(name)
    align = alignment(name)
    filler = bytes(range(1, align - 1))  # plaintext of exactly one alignment unit
    plaintext = filler + bytes((255, NH_IPV4))
    assert len(plaintext) == align
    assert inbound.decapsulate(craft(name, 1, plaintext)) is Drop.BAD_PADDING


@pytest.mark.parametrize("name", ALL_SUITES)
def test_long_tfc_padding_up_to_255_is_accepted(name: str) -> None:
    """RFC 4303 2.4: a sender may pad more than needed (up to 255) to hide the length."""
    _, inbound = pair(name)
    align = alignment(name)
    inner = ipv4_udp(data=bytes(-(28 + 2 + 255) % align))
    plaintext = inner + bytes(range(1, 256)) + bytes((255, NH_IPV4))
    assert len(plaintext) % align == 0
    assert inbound.decapsulate(craft(name, 1, plaintext)) == inner


# --- integrity and malformed input ----------------------------------------------------------


@pytest.mark.parametrize("name", CBC_SUITES)
@pytest.mark.parametrize("where", ["iv", "ciphertext", "last-block", "icv"])
def test_cbc_tampering_fails_the_icv(name: str, where: str) -> None:
    """RFC 4303 3.4.4: integrity is verified for CBC, any changed octet is AUTH_FAILED."""
    outbound, inbound = pair(name)
    esp = bytearray(sealed(outbound.encapsulate(ipv4_icmp_echo())))
    icv_len = suite_by_name(name).icv_len
    offset = {
        "iv": 10,
        "ciphertext": 30,
        "last-block": len(esp) - icv_len - 1,
        "icv": len(esp) - 1,
    }[where]
    esp[offset] ^= 0x01
    assert inbound.decapsulate(bytes(esp)) is Drop.AUTH_FAILED
    assert inbound.drops[Drop.AUTH_FAILED] == 1
    assert inbound.replay.top == 0


@pytest.mark.parametrize("name", ALL_SUITES)
def test_forged_far_ahead_packet_does_not_move_the_window(name: str) -> None:
    """RFC 4303 3.4.3: the window moves only after the ICV verified."""
    outbound, inbound = pair(name)
    legit = outbound.encapsulate(ipv4_udp())
    assert isinstance(legit, bytes)
    forged = bytearray(legit)
    forged[4:8] = struct.pack("!I", 1_000_000)
    assert inbound.decapsulate(bytes(forged)) is Drop.AUTH_FAILED
    assert inbound.replay.top == 0
    assert inbound.decapsulate(legit) == ipv4_udp()


@pytest.mark.parametrize("name", CBC_SUITES)
def test_cbc_ciphertext_not_block_aligned_is_malformed(name: str) -> None:
    outbound, inbound = pair(name)
    esp = outbound.encapsulate(ipv4_udp(data=bytes(40)))
    assert isinstance(esp, bytes)
    icv_len = suite_by_name(name).icv_len
    shortened = esp[: len(esp) - icv_len - 3] + esp[len(esp) - icv_len :]
    assert inbound.decapsulate(shortened) is Drop.MALFORMED


@pytest.mark.parametrize("name", ALL_SUITES)
def test_short_packets_and_foreign_spi_are_malformed(name: str) -> None:
    outbound, inbound = pair(name)
    esp = outbound.encapsulate(ipv4_udp())
    assert isinstance(esp, bytes)
    suite = suite_by_name(name)
    least = 8 + suite.iv_len + (2 if suite.is_aead else 16) + suite.icv_len
    no_ciphertext = esp[: 8 + suite.iv_len] + esp[len(esp) - suite.icv_len :]
    for packet in (esp[:0], esp[:1], esp[:7], esp[:8], esp[: least - 1], no_ciphertext):
        assert inbound.decapsulate(packet) is Drop.MALFORMED, len(packet)
    assert inbound.decapsulate(struct.pack("!I", SPI + 1) + esp[4:]) is Drop.MALFORMED
    assert inbound.drops[Drop.MALFORMED] == 7
    assert inbound.decapsulate(esp) == ipv4_udp(), "junk must not have moved anything"


@pytest.mark.parametrize(
    "inner", [b"", b"\x50" + bytes(30), b"\x00" * 20, b"\xff"], ids=["empty", "v5", "v0", "vf"]
)
def test_non_ip_inner_packet_is_refused_without_using_a_number(inner: bytes) -> None:
    outbound, _ = pair("aes128gcm16")
    assert outbound.encapsulate(inner) is Drop.NOT_IP
    assert outbound.seq == 0
    assert outbound.packets == 0


# --- counters -------------------------------------------------------------------------------


def test_counters_count_every_outcome() -> None:
    name = "aes256gcm16"
    outbound, inbound = pair(name)
    inner = ipv4_icmp_echo()
    sent = [sealed(outbound.encapsulate(inner)) for _ in range(4)]
    assert (outbound.packets, outbound.octets) == (4, 4 * len(inner))

    assert inbound.decapsulate(sent[0]) == inner  # delivered
    assert inbound.decapsulate(sent[0]) is Drop.REPLAYED
    assert inbound.decapsulate(b"\x00" * 5) is Drop.MALFORMED
    tampered = bytearray(sent[1])
    tampered[-1] ^= 0x80
    assert inbound.decapsulate(bytes(tampered)) is Drop.AUTH_FAILED
    assert inbound.decapsulate(craft(name, 3, esp_trailer(0, NH_DUMMY, 4))) is Drop.DUMMY
    assert inbound.decapsulate(sent[1]) == inner  # the tampered copy did not burn seq 2
    assert inbound.decapsulate(sent[3]) == inner

    assert (inbound.packets, inbound.octets) == (3, 3 * len(inner))
    expected = [0] * DROP_COUNT
    for reason in (Drop.REPLAYED, Drop.MALFORMED, Drop.AUTH_FAILED, Drop.DUMMY):
        expected[reason] = 1
    assert inbound.drops == expected


@pytest.mark.parametrize("name", ["aes128gcm16", "chacha20poly1305", "aes128-sha256"])
def test_esn_counter_never_cycles(name: str) -> None:
    """RFC 4303 3.3.3 with ESN: 2^64 - 1 is the last number."""
    outbound, _ = pair(name, esn=True)
    outbound.seq = SEQ_LIMIT_64 - 1
    assert isinstance(outbound.encapsulate(ipv4_udp()), bytes)
    assert outbound.encapsulate(ipv4_udp()) is Drop.SEQUENCE_EXHAUSTED
    assert outbound.seq == SEQ_LIMIT_64


@pytest.mark.parametrize("name", ["aes128gcm16", "chacha20poly1305", "aes128-sha256"])
def test_esn_decapsulate_never_raises_at_the_end_of_the_64_bit_space(name: str) -> None:
    """Found by tests/property: with the window in the last 2^32 subspace, a low half
    below the window makes infer_esn return 2^64 + low, and packing it as 64 bits raises
    struct.error out of decapsulate (STYLE.md: the data path raises nothing)."""
    outbound, inbound = pair(name, esn=True)
    inbound.replay.commit(SEQ_LIMIT_64 - 100)
    esp = outbound.encapsulate_at(
        ipv4_udp(), (0xFFFFFFFF << 32) | 5, bytes(suite_by_name(name).iv_len)
    )

    result = inbound.decapsulate(esp)  # low half 5 is far below the window

    assert isinstance(result, Drop)
    assert inbound.replay.top == SEQ_LIMIT_64 - 100
