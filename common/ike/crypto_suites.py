"""PRF transforms of the IKE SA: hash and sizes (RFC 7296 2.13, 2.14; RFC 4868 2.1.2).

``keys.prf``/``keys.prf_plus`` look the negotiated PRF up here. Encryption and
integrity sizes (SK_e*, SK_a*) live in ``common.ike.ike_suites`` (``IkeSuite.sk_e_len``,
``IkeSuite.sk_a_len``), so no size is written twice.

- HMAC-SHA2 PRFs, RFC 4868 section 2.1.2: the preferred key length and the
  output length are both the hash size (32, 48, 64 octets); that key length is
  the length of SK_d, SK_pi and SK_pr (RFC 7296 2.14).
- PRF_AES128_XCBC (RFC 4434) and the MD5/SHA-1 PRFs are deliberately absent:
  we never negotiate them (RFC 8247 section 2.3 demotes them).
"""

from __future__ import annotations

from typing import Final

from common.ike.constants import PseudorandomFunction

# hashlib name and output size of each HMAC PRF we implement.
PRF_HASH: Final[dict[PseudorandomFunction, tuple[str, int]]] = {
    PseudorandomFunction.PRF_HMAC_SHA2_256: ("sha256", 32),
    PseudorandomFunction.PRF_HMAC_SHA2_384: ("sha384", 48),
    PseudorandomFunction.PRF_HMAC_SHA2_512: ("sha512", 64),
}


def _lookup(alg: PseudorandomFunction) -> tuple[str, int]:
    try:
        return PRF_HASH[alg]
    except KeyError:
        raise ValueError(f"PRF {alg!r} is not implemented") from None


def prf_hash_name(alg: PseudorandomFunction) -> str:
    """hashlib name of an HMAC PRF; ``ValueError`` for PRFs we do not implement."""
    return _lookup(alg)[0]


def prf_output_len(alg: PseudorandomFunction) -> int:
    """Octets one PRF call produces (the block prf+ concatenates)."""
    return _lookup(alg)[1]


def prf_key_len(alg: PseudorandomFunction) -> int:
    """Preferred key length of the PRF: the length of SK_d, SK_pi and SK_pr (RFC 7296 2.14).

    For HMAC this equals the output length (RFC 4868 section 2.1.2).
    """
    return _lookup(alg)[1]
