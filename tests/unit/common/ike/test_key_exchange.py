"""Key exchange: RFC 7748 (X25519), RFC 5903 (ECP-256/384) vectors and RFC 3526 MODP-2048 checks."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from common.ike.constants import KeyExchangeMethod
from common.ike.errors import RemoteProtocolError
from common.ike.key_exchange import (
    MODP_2048_P,
    SUPPORTED_GROUPS,
    InvalidKeyExchange,
    KeyExchange,
    public_value_length,
)
from tests.helpers.vectors import load_nist_vectors, load_vectors_from_file, unhex

X25519_VECTORS = load_vectors_from_file("ike/rfc7748-x25519.txt", load_nist_vectors)
ECP_VECTORS = load_vectors_from_file("ike/rfc5903-ecp.txt", load_nist_vectors)


def fixed_rng(*chunks: bytes) -> Callable[[int], bytes]:
    """An rng that hands out ``chunks`` in order and checks each is the size asked for."""
    queue = list(chunks)

    def rng(n: int) -> bytes:
        chunk = queue.pop(0)
        assert len(chunk) == n, f"rng asked for {n} octets, the test prepared {len(chunk)}"
        return chunk

    return rng


def counting_rng() -> Callable[[int], bytes]:
    """Deterministic, distinct outputs: enough for "two parties agree" tests."""
    counter = itertools.count(1)

    def rng(n: int) -> bytes:
        return next(counter).to_bytes(4, "big") * (n // 4) + bytes(n % 4)

    return rng


# --- X25519 (group 31) --------------------------------------------------------------------


@pytest.mark.parametrize(
    "vector", [v for v in X25519_VECTORS if v["section"] == "scalarmult"], ids=lambda v: v["count"]
)
def test_x25519_rfc7748_scalarmult(vector: dict[str, str]) -> None:
    ke = KeyExchange.generate(KeyExchangeMethod.CURVE25519, fixed_rng(unhex(vector["scalar"])))
    assert ke.shared_secret(unhex(vector["u"])) == unhex(vector["output"])


def test_x25519_rfc7748_iterated() -> None:
    expected = {
        int(v["count"]): unhex(v["k"]) for v in X25519_VECTORS if v["section"] == "iterated"
    }
    k = u = (9).to_bytes(32, "little")
    for round_ in range(1, max(expected) + 1):
        ke = KeyExchange.generate(KeyExchangeMethod.CURVE25519, fixed_rng(k))
        k, u = ke.shared_secret(u), k
        if round_ in expected:
            assert k == expected[round_], f"after {round_} rounds"


def test_x25519_rfc7748_diffie_hellman() -> None:
    (v,) = [v for v in X25519_VECTORS if v["section"] == "diffie-hellman"]
    alice = KeyExchange.generate(KeyExchangeMethod.CURVE25519, fixed_rng(unhex(v["alice_private"])))
    bob = KeyExchange.generate(KeyExchangeMethod.CURVE25519, fixed_rng(unhex(v["bob_private"])))
    assert alice.public_value == unhex(v["alice_public"])
    assert bob.public_value == unhex(v["bob_public"])
    assert alice.shared_secret(bob.public_value) == unhex(v["shared"])
    assert bob.shared_secret(alice.public_value) == unhex(v["shared"])


# Points of small order on Curve25519 (and its twist): X25519 with any scalar gives the
# all-zero output, which RFC 8031 section 2.2 says MUST be rejected. From the list in
# https://cr.yp.to/ecdh.html#validate (0, 1, and an order-8 point).
LOW_ORDER_POINTS = [
    bytes(32),
    (1).to_bytes(32, "little"),
    unhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    unhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
]


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8])
def test_x25519_low_order_point_rejected(point: bytes) -> None:
    ke = KeyExchange.generate(KeyExchangeMethod.CURVE25519, counting_rng())
    with pytest.raises(InvalidKeyExchange, match="all zero"):
        ke.shared_secret(point)


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_x25519_wrong_length_rejected(length: int) -> None:
    ke = KeyExchange.generate(KeyExchangeMethod.CURVE25519, counting_rng())
    with pytest.raises(InvalidKeyExchange, match="32 octets"):
        ke.shared_secret(b"\x09" * length)


# --- ECP-256 / ECP-384 (groups 19, 20) ----------------------------------------------------


@pytest.mark.parametrize("vector", ECP_VECTORS, ids=lambda v: v["section"])
def test_ecp_rfc5903_vectors(vector: dict[str, str]) -> None:
    group = KeyExchangeMethod[vector["section"]]
    initiator = KeyExchange.generate(group, fixed_rng(unhex(vector["i"])))
    responder = KeyExchange.generate(group, fixed_rng(unhex(vector["r"])))
    # RFC 5903 section 7: KE data is x | y without a point-format octet.
    assert initiator.public_value == unhex(vector["gix"] + vector["giy"])
    assert responder.public_value == unhex(vector["grx"] + vector["gry"])
    assert len(initiator.public_value) == public_value_length(group)
    # g^ir is the x-coordinate only.
    assert initiator.shared_secret(responder.public_value) == unhex(vector["girx"])
    assert responder.shared_secret(initiator.public_value) == unhex(vector["girx"])


@pytest.mark.parametrize("vector", ECP_VECTORS, ids=lambda v: v["section"])
def test_ecp_point_not_on_curve_rejected(vector: dict[str, str]) -> None:
    group = KeyExchangeMethod[vector["section"]]
    ke = KeyExchange.generate(group, fixed_rng(unhex(vector["i"])))
    good = unhex(vector["grx"] + vector["gry"])
    off_curve = good[:-1] + bytes((good[-1] ^ 1,))
    with pytest.raises(InvalidKeyExchange, match="not on the curve"):
        ke.shared_secret(off_curve)
    with pytest.raises(InvalidKeyExchange):
        ke.shared_secret(bytes(len(good)))  # (0, 0): not on the curve either


@pytest.mark.parametrize("vector", ECP_VECTORS, ids=lambda v: v["section"])
def test_ecp_wrong_length_rejected(vector: dict[str, str]) -> None:
    group = KeyExchangeMethod[vector["section"]]
    ke = KeyExchange.generate(group, fixed_rng(unhex(vector["i"])))
    good = unhex(vector["grx"] + vector["gry"])
    for bad in (good[:-1], good + b"\x00", b"\x04" + good, good[: len(good) // 2]):
        with pytest.raises(InvalidKeyExchange, match="octets"):
            ke.shared_secret(bad)


def test_ecp_rng_out_of_range_is_redrawn() -> None:
    # All-ones is above the P-256 order, so it is rejected and the next draw is used.
    i = unhex(next(v for v in ECP_VECTORS if v["section"] == "ECP_256")["i"])
    ke = KeyExchange.generate(KeyExchangeMethod.ECP_256, fixed_rng(b"\xff" * 32, bytes(32), i))
    assert ke.public_value.hex().startswith("dad0b653")


# --- MODP-2048 (group 14) -----------------------------------------------------------------


def _pi_scaled(bits: int) -> int:
    """floor(2^bits * pi) by Machin's formula, exactly, in integers."""
    guard = 64
    one = 1 << (bits + guard)

    def arctan_inv(x: int) -> int:
        total = term = one // x
        n, sign = 1, -1
        while term:
            term //= x * x
            total += sign * (term // (2 * n + 1))
            sign, n = -sign, n + 1
        return total

    return (4 * (4 * arctan_inv(5) - arctan_inv(239))) >> guard


def test_modp_2048_prime_matches_rfc3526_formula() -> None:
    # RFC 3526 section 3: p = 2^2048 - 2^1984 - 1 + 2^64 * { [2^1918 pi] + 124476 }
    # https://www.rfc-editor.org/rfc/rfc3526#section-3
    expected = 2**2048 - 2**1984 - 1 + 2**64 * (_pi_scaled(1918) + 124476)
    assert expected == MODP_2048_P
    assert pow(2, MODP_2048_P - 1, MODP_2048_P) == 1  # a Fermat witness, cheap sanity


def test_modp_2048_two_parties_agree() -> None:
    rng = counting_rng()
    a = KeyExchange.generate(KeyExchangeMethod.MODP_2048, rng)
    b = KeyExchange.generate(KeyExchangeMethod.MODP_2048, rng)
    assert len(a.public_value) == len(b.public_value) == 256
    secret = a.shared_secret(b.public_value)
    assert secret == b.shared_secret(a.public_value)
    assert len(secret) == 256


def test_modp_2048_is_deterministic_and_padded() -> None:
    # Exponent 2: g^x = 4, the public value is 4 zero-padded to 256 octets (RFC 7296 3.4);
    # with the peer value 3 the shared secret is 9, padded the same way.
    ke = KeyExchange.generate(KeyExchangeMethod.MODP_2048, fixed_rng((2).to_bytes(32, "big")))
    assert ke.public_value == (4).to_bytes(256, "big")
    assert ke.shared_secret((3).to_bytes(256, "big")) == (9).to_bytes(256, "big")


@pytest.mark.parametrize(
    "value", [0, 1, MODP_2048_P - 1, MODP_2048_P, 2**2048 - 1], ids=["0", "1", "p-1", "p", "max"]
)
def test_modp_2048_degenerate_peer_values_rejected(value: int) -> None:
    ke = KeyExchange.generate(KeyExchangeMethod.MODP_2048, counting_rng())
    with pytest.raises(InvalidKeyExchange, match="1 < y < p-1"):
        ke.shared_secret(value.to_bytes(256, "big"))


@pytest.mark.parametrize("value", [2, MODP_2048_P - 2])
def test_modp_2048_boundary_peer_values_accepted(value: int) -> None:
    ke = KeyExchange.generate(KeyExchangeMethod.MODP_2048, counting_rng())
    assert len(ke.shared_secret(value.to_bytes(256, "big"))) == 256


@pytest.mark.parametrize("length", [0, 255, 257])
def test_modp_2048_wrong_length_rejected(length: int) -> None:
    ke = KeyExchange.generate(KeyExchangeMethod.MODP_2048, counting_rng())
    with pytest.raises(InvalidKeyExchange, match="256 octets"):
        ke.shared_secret(b"\x02".rjust(length, b"\x00") if length else b"")


# --- common behaviour ---------------------------------------------------------------------


@pytest.mark.parametrize("group", sorted(SUPPORTED_GROUPS))
def test_every_group_agrees_and_hides_its_key(group: KeyExchangeMethod) -> None:
    rng = counting_rng()
    a = KeyExchange.generate(group, rng)
    b = KeyExchange.generate(group, rng)
    assert len(a.public_value) == public_value_length(group)
    assert a.shared_secret(b.public_value) == b.shared_secret(a.public_value)
    assert repr(a) == f"<{type(a).__name__} {group.name}>"


def test_invalid_key_exchange_is_a_remote_error_with_a_hint() -> None:
    ke = KeyExchange.generate(KeyExchangeMethod.CURVE25519, counting_rng())
    with pytest.raises(RemoteProtocolError) as info:
        ke.shared_secret(bytes(32))
    assert isinstance(info.value, ValueError)
    assert info.value.notify is not None


@pytest.mark.parametrize("group", [KeyExchangeMethod.NONE, 2])
def test_unsupported_group_refused(group: int) -> None:
    with pytest.raises(ValueError, match="not implemented"):
        KeyExchange.generate(group, counting_rng())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not implemented"):
        public_value_length(group)  # type: ignore[arg-type]
