"""RFC 7383 fragmentation: SKF layout, fragment sizing and the Reassembler's rules."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from common.ike.constants import PayloadType
from common.ike.fragments import (
    DEFAULT_FRAGMENT_SIZE_IPV4,
    DEFAULT_FRAGMENT_SIZE_IPV6,
    MIN_FRAGMENT_SIZE,
    FragmentRejected,
    Reassembler,
    SkFragment,
    default_fragment_size,
    fits,
    fragment_size_for,
    is_fragment,
    open_skf,
    seal_fragments,
)
from common.ike.ike_suites import AES256_GCM16, IKE_SUITES, IkeSuite, ike_suite_by_name
from common.ike.protection import IntegrityCheckFailed

HEADER = bytes.fromhex("010203040506070811121314151617182e2023000000000100000000")


def keys(suite: IkeSuite) -> tuple[bytes, bytes]:
    return bytes(range(suite.sk_e_len)), bytes(range(100, 100 + suite.sk_a_len))


def test_skf_layout_and_aad_covers_fragment_fields() -> None:
    suite = AES256_GCM16
    sk_e, sk_a = keys(suite)
    chain = bytes(range(250))
    messages = seal_fragments(
        HEADER, PayloadType.IDI, chain, suite, sk_e, sk_a, fragment_size=100, rng=bytes
    )
    assert len(messages) == 3
    for number, message in enumerate(messages, start=1):
        assert message[16] == PayloadType.SKF  # RFC 7383 2.5
        assert message[:16] + message[17:24] == HEADER[:16] + HEADER[17:24]  # same Message ID
        assert struct.unpack_from("!I", message, 24)[0] == len(message)
        next_payload, _flags, length, fragment_number, total = struct.unpack_from(
            "!BBHHH", message, 28
        )
        assert (fragment_number, total, length) == (number, 3, len(message) - 28)
        assert next_payload == (PayloadType.IDI if number == 1 else 0)
        # Independent check of RFC 7383 2.5: AAD = IKE header || 8-octet SKF header.
        key, salt = suite.split_sk_e(sk_e)
        iv = message[36:44]
        plain = AESGCM(key).decrypt(salt + iv, message[44:], message[:36])
        assert plain[:-1] == chain[(number - 1) * 100 : number * 100]
        fragment = open_skf(message, 28, suite, sk_e, sk_a)
        assert (fragment.fragment_number, fragment.total_fragments) == (number, 3)


def test_empty_chain_is_one_fragment() -> None:
    sk_e, sk_a = keys(AES256_GCM16)
    (message,) = seal_fragments(HEADER, 0, b"", AES256_GCM16, sk_e, sk_a, fragment_size=10)
    fragment = open_skf(message, 28, AES256_GCM16, sk_e, sk_a)
    result = Reassembler().receive(1, fragment)
    assert result is not None
    assert (result.first_inner_payload, result.plaintext) == (0, b"")


def test_default_sizes() -> None:
    """RFC 7383 2.5.1: over IPv6, the 1280 minimum MTU less IPv6 and UDP headers;
    over IPv4, strongSwan's 1280; the floor is a 576-octet IPv4 datagram's payload."""
    assert default_fragment_size(ipv6=True) == DEFAULT_FRAGMENT_SIZE_IPV6 == 1280 - 40 - 8
    assert default_fragment_size(ipv6=False) == DEFAULT_FRAGMENT_SIZE_IPV4 == 1280
    assert MIN_FRAGMENT_SIZE == 576 - 20 - 8


@pytest.mark.parametrize("name", sorted(IKE_SUITES))
@pytest.mark.parametrize(
    "budget", [MIN_FRAGMENT_SIZE, DEFAULT_FRAGMENT_SIZE_IPV6, DEFAULT_FRAGMENT_SIZE_IPV4]
)
@pytest.mark.parametrize("marker", [True, False])
def test_fragment_size_fills_but_never_exceeds_the_datagram(
    name: str, budget: int, marker: bool
) -> None:
    """Each fragment plus the non-ESP marker (on port 4500) fits the UDP payload budget."""
    suite = ike_suite_by_name(name)
    sk_e, sk_a = keys(suite)
    size = fragment_size_for(suite, budget, non_esp_marker=marker)
    marker_len = 4 if marker else 0
    messages = seal_fragments(HEADER, 41, bytes(size * 3), suite, sk_e, sk_a, fragment_size=size)
    assert len(messages) == 3
    for message in messages:
        assert marker_len + len(message) <= budget
        assert fits(message, budget, non_esp_marker=marker)
        assert is_fragment(message)
    # One more octet would not fit: the size is the largest possible.
    bigger = seal_fragments(HEADER, 41, bytes(size + 1), suite, sk_e, sk_a, fragment_size=size + 1)
    assert marker_len + len(bigger[0]) > budget
    assert not fits(bigger[0], budget, non_esp_marker=marker)


def test_fragment_size_too_small_a_budget() -> None:
    with pytest.raises(ValueError, match="cannot carry"):
        fragment_size_for(AES256_GCM16, 60, non_esp_marker=True)


def test_tampered_fragment_is_refused() -> None:
    suite = ike_suite_by_name("aes128-sha256")
    sk_e, sk_a = keys(suite)
    (message, _second) = seal_fragments(HEADER, 41, bytes(40), suite, sk_e, sk_a, fragment_size=20)
    tampered = bytearray(message)
    tampered[33] ^= 0x01  # Fragment Number: covered by the ICV
    with pytest.raises(IntegrityCheckFailed):
        open_skf(bytes(tampered), 28, suite, sk_e, sk_a)


def frag(number: int, total: int, data: bytes = b"x", next_payload: int = 0) -> SkFragment:
    return SkFragment(number, total, next_payload, data)


def test_reassembly_in_any_order_with_duplicates() -> None:
    reassembler = Reassembler()
    assert reassembler.receive(7, frag(3, 3, b"cc")) is None
    assert reassembler.receive(7, frag(3, 3, b"cc")) is None  # duplicate ignored
    assert reassembler.receive(7, frag(1, 3, b"aa", next_payload=41)) is None
    assert reassembler.pending_messages == 1
    done = reassembler.receive(7, frag(2, 3, b"bb"))
    assert done is not None
    assert (done.message_id, done.first_inner_payload, done.plaintext) == (7, 41, b"aabbcc")
    assert reassembler.pending_messages == 0
    assert "aabbcc" not in repr(done)


@pytest.mark.parametrize(("number", "total"), [(0, 3), (4, 3), (1, 0)])
def test_misnumbered_fragments_are_rejected(number: int, total: int) -> None:
    with pytest.raises(FragmentRejected):
        Reassembler().receive(1, frag(number, total))


def test_smaller_total_is_rejected_greater_total_restarts() -> None:
    """RFC 7383 2.6: a greater Total Fragments restarts reassembly, a smaller one is dropped."""
    reassembler = Reassembler()
    reassembler.receive(1, frag(1, 3, b"old", 41))
    with pytest.raises(FragmentRejected, match="smaller"):
        reassembler.receive(1, frag(2, 2, b"?"))
    assert reassembler.receive(1, frag(2, 4, b"B")) is None  # restart: "old" is gone
    assert reassembler.receive(1, frag(1, 4, b"A", 41)) is None
    assert reassembler.receive(1, frag(3, 4, b"C")) is None
    done = reassembler.receive(1, frag(4, 4, b"D"))
    assert done is not None
    assert done.plaintext == b"ABCD"


def test_limits() -> None:
    reassembler = Reassembler(max_fragments=4, max_message_size=10, max_pending_messages=2)
    with pytest.raises(FragmentRejected, match="limit"):
        reassembler.receive(1, frag(1, 5))
    reassembler.receive(1, frag(1, 4, b"123456"))
    with pytest.raises(FragmentRejected, match="octets"):
        reassembler.receive(1, frag(2, 4, b"123456"))
    assert reassembler.pending_messages == 0  # the whole message was dropped
    reassembler.receive(1, frag(1, 2))
    reassembler.receive(2, frag(1, 2))
    reassembler.receive(3, frag(1, 2))  # evicts message 1, the oldest
    assert reassembler.pending_messages == 2
    assert reassembler.receive(1, frag(2, 2)) is None  # message 1 starts over
    reassembler.discard(2)
    reassembler.discard(99)
    assert reassembler.pending_messages == 2


def test_completed_message_is_never_handed_out_again() -> None:
    """A duplicated fragment after completion must not make the message reappear."""
    reassembler = Reassembler(max_pending_messages=1)
    assert reassembler.receive(5, frag(1, 2, b"a", 41)) is None
    assert reassembler.receive(5, frag(2, 2, b"b")) is not None
    assert reassembler.receive(5, frag(1, 2, b"a", 41)) is None
    assert reassembler.receive(5, frag(2, 2, b"b")) is None
    assert reassembler.pending_messages == 0


def test_new_message_id_discards_the_partial_set() -> None:
    """RFC 7383 2.6 with window 1: a fragment of a new Message ID drops the old set."""
    reassembler = Reassembler(max_pending_messages=1)
    reassembler.receive(1, frag(1, 2, b"old", 41))
    reassembler.receive(2, frag(1, 2, b"A", 41))
    assert reassembler.pending_messages == 1
    assert reassembler.receive(1, frag(2, 2, b"?")) is None  # message 1 starts again
    done = reassembler.receive(2, frag(2, 2, b"B"))
    assert done is None  # message 2 was evicted by message 1's restart
    assert reassembler.receive(2, frag(1, 2, b"A", 41)) is not None


def test_is_fragment_reads_the_header() -> None:
    assert not is_fragment(HEADER[:16] + bytes([PayloadType.SK]) + HEADER[17:])
    assert is_fragment(HEADER[:16] + bytes([PayloadType.SKF]) + HEADER[17:])
    assert not is_fragment(b"")
