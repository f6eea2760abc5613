"""RFC 7634 Appendix A, byte for byte: the one published ChaCha20-Poly1305 ESP packet.

https://www.rfc-editor.org/rfc/rfc7634#appendix-A

This pins everything an AEAD ESP implementation can get subtly wrong while
still talking to itself: KEYMAT split (key, then salt), nonce = salt || IV,
AAD = SPI || sequence number, the padding bytes 1, 2, ..., pad length, next
header, and where the IV and ICV sit in the packet.
"""

from __future__ import annotations

import struct

import pytest

from common.esp.sa import Drop, InboundSa, OutboundSa
from common.esp.suites import suite_by_name
from common.wire.ip import internet_checksum, parse_ip_header
from tests.helpers.packets import parse_ipv4_icmp_echo
from tests.helpers.vectors import load_nist_vectors, load_vectors_from_file, unhex

RFC7634_URL = "https://www.rfc-editor.org/rfc/rfc7634#appendix-A"
CHACHA = suite_by_name("chacha20poly1305")


@pytest.fixture(scope="module")
def vector() -> dict[str, str]:
    vectors = load_vectors_from_file("rfc7634/esp-example.txt", load_nist_vectors)
    assert len(vectors) == 1
    return vectors[0]


def test_vector_file_is_self_consistent(vector: dict[str, str]) -> None:
    """Guards the transcription: the parts must add up to the whole packet."""
    keymat = unhex(vector["keymat"])
    assert keymat == unhex(vector["key"]) + unhex(vector["salt"])
    assert unhex(vector["nonce"]) == unhex(vector["salt"]) + unhex(vector["iv"])
    assert unhex(vector["aad"]) == unhex(vector["spi"]) + unhex(vector["seq"])
    assert unhex(vector["esp_packet"]) == (
        unhex(vector["spi"])
        + unhex(vector["seq"])
        + unhex(vector["iv"])
        + unhex(vector["ciphertext"])
        + unhex(vector["icv"])
    )
    trailer = unhex(vector["padding"]) + unhex(vector["pad_length"]) + unhex(vector["next_header"])
    assert len(unhex(vector["ciphertext"])) == len(unhex(vector["plaintext"])) + len(trailer)


def test_encapsulate_reproduces_the_rfc_packet(vector: dict[str, str]) -> None:
    spi = int(vector["spi"], 16)
    seq = int(vector["seq"], 16)
    outbound = OutboundSa(spi, CHACHA, unhex(vector["keymat"]))

    packet = outbound.encapsulate_at(unhex(vector["plaintext"]), seq, unhex(vector["iv"]))

    assert packet.hex() == vector["esp_packet"], RFC7634_URL
    assert outbound.seq == 0, "encapsulate_at must leave the live sequence counter alone"


def test_live_encapsulate_uses_the_sequence_number_as_iv(vector: dict[str, str]) -> None:
    """With IV = 64-bit seq (our choice, RFC 7634 2 allows it) and seq 5, only the IV differs."""
    outbound = OutboundSa(int(vector["spi"], 16), CHACHA, unhex(vector["keymat"]))
    outbound.seq = int(vector["seq"], 16) - 1

    packet = outbound.encapsulate(unhex(vector["plaintext"]))

    assert isinstance(packet, bytes)
    assert packet[:8] == unhex(vector["spi"]) + unhex(vector["seq"])
    assert packet[8:16] == struct.pack("!Q", 5)
    rebuilt = outbound.encapsulate_at(unhex(vector["plaintext"]), 5, struct.pack("!Q", 5))
    assert packet == rebuilt
    assert len(packet) == len(unhex(vector["esp_packet"]))


def test_decapsulate_recovers_the_rfc_plaintext(vector: dict[str, str]) -> None:
    inbound = InboundSa(int(vector["spi"], 16), CHACHA, unhex(vector["keymat"]))

    inner = inbound.decapsulate(unhex(vector["esp_packet"]))

    assert inner == unhex(vector["plaintext"]), RFC7634_URL
    echo = parse_ipv4_icmp_echo(inner)
    assert (echo.src, echo.dst, echo.icmp_type) == ("198.51.100.5", "192.0.2.5", 8)
    assert inbound.packets == 1
    assert inbound.octets == len(inner)
    assert inbound.replay.top == 5
    assert inbound.decapsulate(unhex(vector["esp_packet"])) is Drop.REPLAYED


def test_decapsulate_rejects_the_rfc_packet_under_a_wrong_salt(vector: dict[str, str]) -> None:
    """The salt is part of the nonce: a key-only implementation would still 'work' on itself."""
    keymat = unhex(vector["keymat"])
    inbound = InboundSa(int(vector["spi"], 16), CHACHA, keymat[:-1] + b"\x00")

    assert inbound.decapsulate(unhex(vector["esp_packet"])) is Drop.AUTH_FAILED
    assert inbound.replay.top == 0, "a packet that failed its ICV must not move the window"


def test_outer_header_of_the_example(vector: dict[str, str]) -> None:
    """The outer IPv4 header printed with the example: ESP (50), right length and checksum."""
    outer = unhex(vector["outer_ipv4_header"])
    esp = unhex(vector["esp_packet"])
    header = parse_ip_header(outer + esp)
    assert header is not None
    assert header.protocol == 50
    assert header.total_length == len(outer) + len(esp)
    assert internet_checksum(outer) == 0
