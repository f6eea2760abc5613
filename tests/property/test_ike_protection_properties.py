"""Property tests of SK/SKF protection and reassembly (hypothesis).

STYLE.md property tier: round trips; any flipped bit is detected; a receiver
given arbitrary bytes raises only its one documented error. Settings are
modest so the file stays well under 30 s.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.ike.fragments import (
    FragmentRejected,
    Reassembler,
    SkFragment,
    open_skf,
    seal_fragments,
)
from common.ike.ike_suites import IKE_SUITES, IkeSuite
from common.ike.protection import IntegrityCheckFailed, open_sk, seal_sk

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SUITE_NAMES = sorted(IKE_SUITES)
HEADER = bytes.fromhex("010203040506070811121314151617182e2023000000000500000000")


@st.composite
def suite_and_keys(draw: st.DrawFn) -> tuple[IkeSuite, bytes, bytes]:
    suite = IKE_SUITES[draw(st.sampled_from(SUITE_NAMES))]
    sk_e = draw(st.binary(min_size=suite.sk_e_len, max_size=suite.sk_e_len))
    sk_a = draw(st.binary(min_size=suite.sk_a_len, max_size=suite.sk_a_len))
    return suite, sk_e, sk_a


@SETTINGS
@given(
    keyed=suite_and_keys(),
    header=st.binary(min_size=28, max_size=28),
    first=st.integers(0, 255),
    plaintext=st.binary(max_size=300),
    iv_seed=st.binary(min_size=16, max_size=16),
)
def test_seal_open_round_trip(
    keyed: tuple[IkeSuite, bytes, bytes],
    header: bytes,
    first: int,
    plaintext: bytes,
    iv_seed: bytes,
) -> None:
    suite, sk_e, sk_a = keyed
    message = seal_sk(header, first, plaintext, suite, sk_e, sk_a, iv=iv_seed[: suite.iv_len])
    assert open_sk(message, 28, suite, sk_e, sk_a) == (first, plaintext)


@SETTINGS
@given(keyed=suite_and_keys(), plaintext=st.binary(max_size=120), data=st.data())
def test_any_flipped_bit_is_detected(
    keyed: tuple[IkeSuite, bytes, bytes], plaintext: bytes, data: st.DataObject
) -> None:
    suite, sk_e, sk_a = keyed
    message = seal_sk(HEADER, 41, plaintext, suite, sk_e, sk_a)
    bit = data.draw(st.integers(0, len(message) * 8 - 1), label="bit")
    tampered = bytearray(message)
    tampered[bit // 8] ^= 0x80 >> (bit % 8)
    with pytest.raises(IntegrityCheckFailed):
        open_sk(bytes(tampered), 28, suite, sk_e, sk_a)


@SETTINGS
@given(keyed=suite_and_keys(), junk=st.binary(max_size=200), offset=st.integers(0, 60))
def test_arbitrary_bytes_raise_only_integrity_check_failed(
    keyed: tuple[IkeSuite, bytes, bytes], junk: bytes, offset: int
) -> None:
    suite, sk_e, sk_a = keyed
    for opener in (open_sk, open_skf):
        with contextlib.suppress(IntegrityCheckFailed):
            opener(junk, offset, suite, sk_e, sk_a)


@st.composite
def deliveries(draw: st.DrawFn, count: int) -> list[int]:
    """A delivery order of fragment indices: a permutation with some duplicates mixed in."""
    order = draw(st.permutations(range(count)))
    duplicates = draw(st.lists(st.integers(0, count - 1), max_size=count))
    mixed = list(order)
    for index in duplicates:
        mixed.insert(draw(st.integers(0, len(mixed))), index)
    return mixed


@SETTINGS
@given(
    keyed=suite_and_keys(),
    first=st.integers(1, 255),
    plaintext=st.binary(max_size=600),
    fragment_size=st.integers(1, 200),
    data=st.data(),
)
def test_fragments_reassemble_in_any_order_with_duplicates(
    keyed: tuple[IkeSuite, bytes, bytes],
    first: int,
    plaintext: bytes,
    fragment_size: int,
    data: st.DataObject,
) -> None:
    suite, sk_e, sk_a = keyed
    messages = seal_fragments(
        HEADER, first, plaintext, suite, sk_e, sk_a, fragment_size=fragment_size
    )
    order = data.draw(deliveries(len(messages)), label="order")
    reassembler = Reassembler(max_fragments=1000)
    results = []
    for index in order:
        fragment = open_skf(messages[index], 28, suite, sk_e, sk_a)
        result = reassembler.receive(5, fragment)
        if result is not None:
            results.append(result)
            # Fragments after completion start a new (harmless) reassembly.
            reassembler.discard(5)
            break
    assert len(results) == 1
    assert (results[0].first_inner_payload, results[0].plaintext) == (first, plaintext)


@SETTINGS
@given(keyed=suite_and_keys(), plaintext=st.binary(min_size=1, max_size=200), data=st.data())
def test_tampered_fragment_is_detected(
    keyed: tuple[IkeSuite, bytes, bytes], plaintext: bytes, data: st.DataObject
) -> None:
    suite, sk_e, sk_a = keyed
    messages = seal_fragments(HEADER, 41, plaintext, suite, sk_e, sk_a, fragment_size=50)
    message = data.draw(st.sampled_from(messages), label="fragment")
    bit = data.draw(st.integers(0, len(message) * 8 - 1), label="bit")
    tampered = bytearray(message)
    tampered[bit // 8] ^= 0x80 >> (bit % 8)
    with pytest.raises(IntegrityCheckFailed):
        open_skf(bytes(tampered), 28, suite, sk_e, sk_a)


@SETTINGS
@given(total=st.integers(2, 20), smaller=st.integers(1, 19), data=st.data())
def test_inconsistent_smaller_total_is_rejected(
    total: int, smaller: int, data: st.DataObject
) -> None:
    smaller = min(smaller, total - 1)
    reassembler = Reassembler()
    first_number = data.draw(st.integers(1, total), label="first")
    assert reassembler.receive(9, SkFragment(first_number, total, 41, b"a")) is None
    number = data.draw(st.integers(1, smaller), label="number")
    with pytest.raises(FragmentRejected):
        reassembler.receive(9, SkFragment(number, smaller, 0, b"b"))
    assert reassembler.pending_messages == 1  # the earlier fragments are kept


@SETTINGS
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),
            st.integers(0, 12),
            st.integers(0, 12),
            st.integers(0, 255),
            st.binary(max_size=40),
        ),
        max_size=60,
    )
)
def test_reassembler_raises_only_fragment_rejected_and_stays_bounded(
    events: list[tuple[int, int, int, int, bytes]],
) -> None:
    reassembler = Reassembler(max_fragments=8, max_message_size=100, max_pending_messages=2)
    for message_id, number, total, next_payload, chunk in events:
        try:
            result = reassembler.receive(message_id, SkFragment(number, total, next_payload, chunk))
        except FragmentRejected:
            continue
        if result is not None:
            assert len(result.plaintext) <= 100
        assert reassembler.pending_messages <= 2
