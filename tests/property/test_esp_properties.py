"""Property tests of the ESP SA (hypothesis): round trips, tampering, replays, junk input.

DESIGN.md testing tier 3: "round trips; tampering always detected; replays
always dropped", and STYLE.md: "decapsulate ... never raises (any byte string)".
Settings are modest on purpose: the whole tier must stay under a minute on
two slow cores.
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from common.esp.sa import DROP_COUNT, SEQ_LIMIT_32, SEQ_LIMIT_64, Drop, InboundSa, OutboundSa
from common.esp.suites import SUITES, suite_by_name
from tests.helpers.packets import ipv4_header, ipv6_header

SPI = 0x1234_5678
SUITE_NAMES = sorted(SUITES)
PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def keymat_for(name: str) -> bytes:
    return bytes((0x61 + 5 * index) & 0xFF for index in range(suite_by_name(name).keymat_len))


def make_pair(name: str, esn: bool, next_seq: int) -> tuple[OutboundSa, InboundSa]:
    """SAs whose next packet carries ``next_seq``, the receiver following the sender."""
    suite = suite_by_name(name)
    counter = iter(range(1, 1 << 30))
    outbound = OutboundSa(
        SPI, suite, keymat_for(name), esn=esn, rng=lambda n: next(counter).to_bytes(n, "big")
    )
    inbound = InboundSa(SPI, suite, keymat_for(name), esn=esn)
    outbound.seq = next_seq - 1
    if next_seq > 1:
        inbound.replay.commit(next_seq - 1)
    return outbound, inbound


@st.composite
def inner_packets(draw: st.DrawFn) -> bytes:
    """A valid IPv4 or IPv6 packet with a random payload, or raw bytes with an IP version nibble."""
    payload = draw(st.binary(max_size=300))
    kind = draw(st.sampled_from(["v4", "v6", "raw"]))
    if kind == "v4":
        protocol = draw(st.integers(0, 255))
        return ipv4_header("10.0.0.1", "10.0.0.2", protocol, len(payload)) + payload
    if kind == "v6":
        next_header = draw(st.integers(0, 255))
        return ipv6_header("fd00::1", "fd00::2", next_header, len(payload)) + payload
    nibble = draw(st.sampled_from([4, 6]))
    low = draw(st.integers(0, 15))
    return bytes([nibble << 4 | low]) + payload


@st.composite
def sa_setups(draw: st.DrawFn) -> tuple[str, bool, int]:
    """(suite, esn, next sequence number), including the ends of the 32- and 64-bit spaces."""
    name = draw(st.sampled_from(SUITE_NAMES))
    esn = draw(st.booleans())
    limit = SEQ_LIMIT_64 if esn else SEQ_LIMIT_32
    next_seq = draw(
        st.one_of(
            st.integers(1, 1000),
            st.integers(1, limit),
            st.integers(max(1, limit - 5), limit),
            st.integers(SEQ_LIMIT_32 - 3, SEQ_LIMIT_32 + 3).filter(lambda s: 1 <= s <= limit),
        )
    )
    return name, esn, next_seq


@PROPERTY_SETTINGS
@given(setup=sa_setups(), inners=st.lists(inner_packets(), min_size=1, max_size=4))
def test_round_trip(setup: tuple[str, bool, int], inners: list[bytes]) -> None:
    name, esn, next_seq = setup
    outbound, inbound = make_pair(name, esn, next_seq)
    for inner in inners:
        esp = outbound.encapsulate(inner)
        if outbound.seq == outbound.seq_limit and esp is Drop.SEQUENCE_EXHAUSTED:
            return  # the space ran out: correct, and nothing more to send
        assert isinstance(esp, bytes)
        assert len(esp) == len(inner) + outbound.suite.overhead(len(inner))
        assert inbound.decapsulate(esp) == inner
    assert inbound.drops == [0] * DROP_COUNT


@PROPERTY_SETTINGS
@given(setup=sa_setups(), inner=inner_packets(), data=st.data())
def test_any_single_bit_flip_is_dropped(
    setup: tuple[str, bool, int], inner: bytes, data: st.DataObject
) -> None:
    name, esn, next_seq = setup
    outbound, inbound = make_pair(name, esn, next_seq)
    esp = outbound.encapsulate(inner)
    assume(isinstance(esp, bytes))
    assert isinstance(esp, bytes)
    bit = data.draw(st.integers(0, len(esp) * 8 - 1), label="bit")
    tampered = bytearray(esp)
    tampered[bit // 8] ^= 0x80 >> (bit % 8)

    result = inbound.decapsulate(bytes(tampered))

    assert isinstance(result, Drop), f"bit {bit} flipped and the packet was delivered"
    if bit < 32:
        assert result is Drop.MALFORMED  # another SPI: not this SA's packet
    elif bit < 64:
        assert result in (Drop.AUTH_FAILED, Drop.REPLAYED)  # the number is authenticated
    else:
        assert result is Drop.AUTH_FAILED  # IV, ciphertext and ICV are all covered
    assert inbound.decapsulate(esp) == inner, "a tampered copy must not spend the real one"


@PROPERTY_SETTINGS
@given(
    name=st.sampled_from(SUITE_NAMES),
    esn=st.booleans(),
    count=st.integers(1, 40),
    data=st.data(),
)
def test_reordering_within_the_window_is_accepted_exactly_once(
    name: str, esn: bool, count: int, data: st.DataObject
) -> None:
    start = data.draw(st.sampled_from([1, SEQ_LIMIT_32 - 20]), label="start") if esn else 1
    outbound, inbound = make_pair(name, esn, start)
    inner = ipv4_header("10.0.0.1", "10.0.0.2", 17, 0)
    sent = [outbound.encapsulate(inner) for _ in range(count)]
    packets = [packet for packet in sent if isinstance(packet, bytes)]
    assert len(packets) == count
    order = data.draw(st.permutations(range(count)), label="order")
    duplicates = data.draw(st.lists(st.sampled_from(range(count)), max_size=10), label="dups")
    delivered = set()
    for index in list(order) + duplicates:
        result = inbound.decapsulate(packets[index])
        if index in delivered:
            assert result is Drop.REPLAYED
        else:
            assert result == inner
            delivered.add(index)
    assert delivered == set(range(count))
    assert inbound.packets == count
    assert inbound.drops[Drop.REPLAYED] == len(duplicates)


@PROPERTY_SETTINGS
@given(
    name=st.sampled_from(SUITE_NAMES),
    esn=st.booleans(),
    top=st.integers(0, SEQ_LIMIT_64 - 1),
    junk=st.binary(max_size=200),
    with_spi=st.booleans(),
)
def test_arbitrary_bytes_only_ever_give_a_drop(
    name: str, esn: bool, top: int, junk: bytes, with_spi: bool
) -> None:
    """Never raises, never delivers: with or without our SPI in front, any window position."""
    inbound = InboundSa(SPI, suite_by_name(name), keymat_for(name), esn=esn)
    top = top if esn else top & SEQ_LIMIT_32
    if top:
        inbound.replay.commit(top)
    packet = struct.pack("!I", SPI) + junk if with_spi else junk

    result = inbound.decapsulate(packet)

    assert isinstance(result, Drop)
    assert result in (Drop.MALFORMED, Drop.REPLAYED, Drop.AUTH_FAILED)
    assert sum(inbound.drops) == 1
    assert inbound.packets == 0


@PROPERTY_SETTINGS
@given(name=st.sampled_from(SUITE_NAMES), junk=st.binary(max_size=64))
def test_encapsulate_never_raises(name: str, junk: bytes) -> None:
    outbound = OutboundSa(SPI, suite_by_name(name), keymat_for(name))
    result = outbound.encapsulate(junk)
    if junk and junk[0] >> 4 in (4, 6):
        assert isinstance(result, bytes)
    else:
        assert result is Drop.NOT_IP
