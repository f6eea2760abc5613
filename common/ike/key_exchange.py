"""Ephemeral Diffie-Hellman for the KE payload: groups 14, 19, 20 and 31.

Responsibility: make our KE data and turn the peer's KE data into g^ir, and
refuse peer values that would weaken or void the exchange. The encodings are
the ones IKEv2 puts in the KE payload's Key Exchange Data field:

- group 31, Curve25519 (RFC 8031 section 2): the 32-octet X25519 u-coordinate;
  g^ir is the X25519 output (RFC 7748 section 5). pynacl does the scalar
  multiplication (DESIGN.md: measured faster than ``cryptography`` here).
- groups 19 and 20, ECP-256/384 (RFC 5903 section 7): x | y, each padded to the
  field size, with *no* 0x04 point-format octet; g^ir is the x-coordinate only.
- group 14, MODP-2048 (RFC 3526 section 3, generator 2): the public value
  zero-padded to 256 octets (RFC 7296 3.4), and so is g^ir.

Randomness is an input (``rng``, default ``os.urandom``), so tests and
interop vectors can fix the private value. Private values live only inside
the objects, whose ``repr`` shows the group and nothing else.

The MODP arithmetic uses Python's ``pow``, which is not constant-time; the
exponent is ephemeral and used once, which bounds what a timing observer could
learn, but prefer groups 31/19/20 (RFC 8247 section 2.4 recommends them too).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Final

import nacl.bindings
import nacl.exceptions
from cryptography.hazmat.primitives.asymmetric import ec

from common.ike.constants import KeyExchangeMethod, NotifyType
from common.ike.errors import RemoteProtocolError

Rng = Callable[[int], bytes]


class InvalidKeyExchange(RemoteProtocolError, ValueError):  # noqa: N818 - like MalformedMessage
    """The peer's Key Exchange Data is unusable: wrong length, not a group element, or weak.

    Raised by :meth:`KeyExchange.shared_secret`. It is the peer's fault, hence a
    ``RemoteProtocolError``; the hint is INVALID_SYNTAX (RFC 7296 3.10.1), since
    the KE payload's contents are not valid for the group it names.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, NotifyType.INVALID_SYNTAX)


# --- group parameters ----------------------------------------------------------------------

# RFC 3526 section 3, 2048-bit MODP group: p = 2^2048 - 2^1984 - 1 + 2^64 * ([2^1918 pi] + 124476)
# https://www.rfc-editor.org/rfc/rfc3526#section-3
MODP_2048_P: Final = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)
MODP_2048_G: Final = 2
_MODP_2048_LEN: Final = 256
# Private exponent size: 256 bits, twice the 112-bit strength of the group
# (NIST SP 800-57 part 1 table 2; strongSwan and RFC 3526 section 8 use the same order).
_MODP_EXPONENT_LEN: Final = 32

# (curve, field size in octets, group order n) for the RFC 5903 groups.
_ECP: Final[dict[KeyExchangeMethod, tuple[ec.EllipticCurve, int, int]]] = {
    KeyExchangeMethod.ECP_256: (
        ec.SECP256R1(),
        32,
        0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    ),
    KeyExchangeMethod.ECP_384: (
        ec.SECP384R1(),
        48,
        0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973,
    ),
}

_PUBLIC_VALUE_LEN: Final[dict[KeyExchangeMethod, int]] = {
    KeyExchangeMethod.MODP_2048: _MODP_2048_LEN,
    KeyExchangeMethod.ECP_256: 64,
    KeyExchangeMethod.ECP_384: 96,
    KeyExchangeMethod.CURVE25519: 32,
}

SUPPORTED_GROUPS: Final = frozenset(_PUBLIC_VALUE_LEN)

# A broken rng that keeps returning out-of-range values must not loop forever.
_MAX_DRAWS: Final = 64


def public_value_length(group: KeyExchangeMethod) -> int:
    """Octets of Key Exchange Data for ``group`` (the KE payload length check needs it).

    Raises:
        ValueError: for a group we do not implement (including NONE).
    """
    try:
        return _PUBLIC_VALUE_LEN[group]
    except KeyError:
        raise ValueError(f"key exchange method {group!r} is not implemented") from None


def _check_length(group: KeyExchangeMethod, peer_public: bytes) -> None:
    expected = _PUBLIC_VALUE_LEN[group]
    if len(peer_public) != expected:
        raise InvalidKeyExchange(
            f"{group.name} Key Exchange Data must be {expected} octets, got {len(peer_public)}"
        )


class KeyExchange(ABC):
    """One side's ephemeral key for one KE payload.

    Drivers: ``generate`` when building a KE payload (IKE_SA_INIT, or
    CREATE_CHILD_SA with PFS / IKE SA rekey), ``public_value`` into the payload,
    ``shared_secret`` with the peer's KE data once it arrives. A fresh object
    per exchange: RFC 7296 2.12 allows reuse, we never do.
    """

    __slots__ = ("group",)

    group: KeyExchangeMethod

    def __init__(self, group: KeyExchangeMethod) -> None:
        self.group = group

    @staticmethod
    def generate(group: KeyExchangeMethod, rng: Rng = os.urandom) -> KeyExchange:
        """A new private value for ``group``, drawn from ``rng``.

        Deterministic for a given ``rng``: X25519 takes ``rng(32)`` as the
        private key; ECP reads the scalar from ``rng(field size)``; MODP reads
        the exponent from ``rng(32)``.

        Raises:
            ValueError: for a group we do not implement.
        """
        if group is KeyExchangeMethod.CURVE25519:
            return _X25519(rng)
        if group in _ECP:
            return _Ecp(group, rng)
        if group is KeyExchangeMethod.MODP_2048:
            return _Modp2048(rng)
        raise ValueError(f"key exchange method {group!r} is not implemented")

    @property
    @abstractmethod
    def public_value(self) -> bytes:
        """Our Key Exchange Data, exactly ``public_value_length(group)`` octets."""

    @abstractmethod
    def shared_secret(self, peer_public: bytes) -> bytes:
        """g^ir from the peer's Key Exchange Data.

        Raises:
            InvalidKeyExchange: the peer's value has the wrong length, is not a
                valid group element, or yields a degenerate secret.
        """

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.group.name}>"


class _X25519(KeyExchange):
    """Group 31 (RFC 8031) with libsodium's X25519."""

    __slots__ = ("_private", "_public")

    def __init__(self, rng: Rng) -> None:
        super().__init__(KeyExchangeMethod.CURVE25519)
        # RFC 8031 2: the private key is 32 random octets; X25519 clamps it (RFC 7748 5).
        self._private = rng(32)
        if len(self._private) != 32:
            raise ValueError("rng returned the wrong number of octets")
        self._public = nacl.bindings.crypto_scalarmult_base(self._private)

    @property
    def public_value(self) -> bytes:
        return self._public

    def shared_secret(self, peer_public: bytes) -> bytes:
        _check_length(self.group, peer_public)  # RFC 8031 2: exactly 32 octets
        try:
            secret = nacl.bindings.crypto_scalarmult(self._private, peer_public)
        except nacl.exceptions.RuntimeError:
            # libsodium refuses an all-zero result (a small-order peer point).
            secret = bytes(32)
        # RFC 8031 2.2 / RFC 7748 6.1: MUST check for the all-zero value and abort.
        if secret == bytes(32):
            raise InvalidKeyExchange("X25519 shared secret is all zero (small-order peer point)")
        return bytes(secret)


class _Ecp(KeyExchange):
    """Groups 19 and 20 (RFC 5903) with ``cryptography``'s ECDH."""

    __slots__ = ("_field_len", "_private", "_public")

    def __init__(self, group: KeyExchangeMethod, rng: Rng) -> None:
        super().__init__(group)
        curve, self._field_len, order = _ECP[group]
        # Rejection sampling (NIST SP 800-56A 5.6.1.2.2, "testing candidates"):
        # take field-size octets and keep them when 1 <= d < n, so every scalar is
        # equally likely and a test can hand RFC 5903's private value in directly.
        for _ in range(_MAX_DRAWS):
            candidate = int.from_bytes(rng(self._field_len), "big")
            if 1 <= candidate < order:
                break
        else:
            raise ValueError("rng produced no usable ECP private scalar")
        self._private = ec.derive_private_key(candidate, curve)
        numbers = self._private.public_key().public_numbers()
        # RFC 5903 7: x | y, each padded to the field size, no point-format octet.
        self._public = numbers.x.to_bytes(self._field_len, "big") + numbers.y.to_bytes(
            self._field_len, "big"
        )

    @property
    def public_value(self) -> bytes:
        return self._public

    def shared_secret(self, peer_public: bytes) -> bytes:
        _check_length(self.group, peer_public)
        curve = _ECP[self.group][0]
        try:
            # RFC 6989 (ECP groups): the peer's point MUST be checked to lie on the
            # curve, or an invalid-curve attack reads our scalar. from_encoded_point
            # does exactly that (and rejects the point at infinity).
            peer = ec.EllipticCurvePublicKey.from_encoded_point(curve, b"\x04" + peer_public)
        except ValueError:
            raise InvalidKeyExchange(f"{self.group.name} peer point is not on the curve") from None
        # RFC 5903 7: g^ir is the x-coordinate of the shared point.
        return self._private.exchange(ec.ECDH(), peer)


class _Modp2048(KeyExchange):
    """Group 14 (RFC 3526 section 3)."""

    __slots__ = ("_exponent", "_public")

    def __init__(self, rng: Rng) -> None:
        super().__init__(KeyExchangeMethod.MODP_2048)
        for _ in range(_MAX_DRAWS):
            exponent = int.from_bytes(rng(_MODP_EXPONENT_LEN), "big")
            if exponent >= 2:  # 0 and 1 would give a public value of 1 or g
                break
        else:
            raise ValueError("rng produced no usable MODP exponent")
        self._exponent = exponent
        # RFC 7296 3.4: the value is zero-padded to the length of the prime.
        self._public = pow(MODP_2048_G, exponent, MODP_2048_P).to_bytes(_MODP_2048_LEN, "big")

    @property
    def public_value(self) -> bytes:
        return self._public

    def shared_secret(self, peer_public: bytes) -> bytes:
        _check_length(self.group, peer_public)
        y = int.from_bytes(peer_public, "big")
        # RFC 6989 (MODP groups) and NIST SP 800-56A rev. 3 5.6.2.3.1 require
        # 1 < y < p-1, which excludes 0, 1, p-1 and anything >= p, the values
        # that would force g^ir into {0, 1, p-1}.
        if not 1 < y < MODP_2048_P - 1:
            raise InvalidKeyExchange("MODP-2048 peer value is outside 1 < y < p-1")
        # RFC 7296 2.14: g^ir is the full-length, zero-padded value.
        return pow(y, self._exponent, MODP_2048_P).to_bytes(_MODP_2048_LEN, "big")
