"""IKEv2 key derivation: prf, prf+, SKEYSEED, the SK_* split and Child SA KEYMAT.

Implements RFC 7296:

- 2.13 prf+ (the expansion every other key comes from);
- 2.14 SKEYSEED = prf(Ni | Nr, g^ir) and
  {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr);
- 2.17 KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr) for Child SAs;
- 2.18 SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) for a rekeyed IKE SA.

Everything is a pure function of its inputs, so the strongSwan captures in
``tests/vectors/strongswan`` can check it byte for byte. Names follow the RFC
(``skeyseed``, ``sk_d``, ``ni``...) so the code can be read beside section 2.14.

For the AEAD ciphers (AES-GCM, RFC 5282 section 7.1; ChaCha20-Poly1305,
RFC 7634 section 4) SK_ei/SK_er carry the cipher key followed by a 4-octet
salt, and SK_ai/SK_ar are empty; callers express that through
``encr_key_len`` (key + salt) and ``integ_key_len`` (0).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Final

from common.esp.suites import EspSuite
from common.ike.constants import PseudorandomFunction
from common.ike.crypto_suites import prf_hash_name, prf_key_len, prf_output_len

# RFC 7296 2.13: the counter octet runs 0x01..0xff, so prf+ stops after 255 blocks.
PRF_PLUS_MAX_ITERATIONS: Final = 255


def prf(alg: PseudorandomFunction, key: bytes, data: bytes) -> bytes:
    """One call of the negotiated PRF (HMAC, RFC 2104 / RFC 4868).

    HMAC accepts keys of any length, which is what lets SKEYSEED use the full
    nonces as its key (RFC 7296 2.14).
    """
    return hmac.digest(key, data, prf_hash_name(alg))


def prf_plus(alg: PseudorandomFunction, key: bytes, seed: bytes, length: int) -> bytes:
    """prf+ (RFC 7296 2.13): T1 | T2 | ... truncated to ``length`` octets.

    T1 = prf(K, S | 0x01), Tn = prf(K, T(n-1) | S | n).

    Raises:
        ValueError: when ``length`` needs more than 255 blocks; the counter is one
            octet and RFC 7296 2.13 leaves prf+ undefined past 0xff.
    """
    if length < 0:
        raise ValueError("prf+ length must not be negative")
    block = prf_output_len(alg)
    iterations = -(-length // block)
    if iterations > PRF_PLUS_MAX_ITERATIONS:  # RFC 7296 2.13: counter is a single octet
        raise ValueError(
            f"prf+ cannot produce {length} octets: {iterations} blocks exceed the limit of 255"
        )
    name = prf_hash_name(alg)
    out: list[bytes] = []
    previous = b""
    for counter in range(1, iterations + 1):
        previous = hmac.digest(key, previous + seed + bytes((counter,)), name)
        out.append(previous)
    return b"".join(out)[:length]


@dataclass(frozen=True, slots=True)
class IkeSaKeys:
    """The seven IKE SA keys of RFC 7296 2.14, in the order prf+ produces them.

    Every field is ``repr=False``: a logged or printed ``IkeSaKeys`` shows no
    key material (STYLE.md, "Secrets never appear in reprs").
    """

    sk_d: bytes = field(repr=False)
    sk_ai: bytes = field(repr=False)
    sk_ar: bytes = field(repr=False)
    sk_ei: bytes = field(repr=False)
    sk_er: bytes = field(repr=False)
    sk_pi: bytes = field(repr=False)
    sk_pr: bytes = field(repr=False)


def _split_ike_sa_keys(
    prf_alg: PseudorandomFunction,
    skeyseed: bytes,
    ni: bytes,
    nr: bytes,
    spi_i: bytes,
    spi_r: bytes,
    encr_key_len: int,
    integ_key_len: int,
) -> IkeSaKeys:
    """{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni|Nr|SPIi|SPIr)."""
    if len(spi_i) != 8 or len(spi_r) != 8:
        raise ValueError("IKE SPIs are 8 octets (RFC 7296 3.1)")
    if encr_key_len < 0 or integ_key_len < 0:
        raise ValueError("key lengths must not be negative")
    # RFC 7296 2.14: SK_d, SK_pi and SK_pr are as long as the PRF's preferred key.
    prf_len = prf_key_len(prf_alg)
    lengths = (prf_len, integ_key_len, integ_key_len, encr_key_len, encr_key_len, prf_len, prf_len)
    stream = prf_plus(prf_alg, skeyseed, ni + nr + spi_i + spi_r, sum(lengths))
    parts: list[bytes] = []
    offset = 0
    for size in lengths:
        parts.append(stream[offset : offset + size])
        offset += size
    sk_d, sk_ai, sk_ar, sk_ei, sk_er, sk_pi, sk_pr = parts
    return IkeSaKeys(sk_d, sk_ai, sk_ar, sk_ei, sk_er, sk_pi, sk_pr)


def derive_ike_sa_keys(
    prf_alg: PseudorandomFunction,
    ni: bytes,
    nr: bytes,
    g_ir: bytes,
    spi_i: bytes,
    spi_r: bytes,
    *,
    encr_key_len: int,
    integ_key_len: int,
) -> tuple[bytes, IkeSaKeys]:
    """Keys of an IKE SA made by IKE_SA_INIT (RFC 7296 2.14).

    SKEYSEED = prf(Ni | Nr, g^ir); for the HMAC PRFs the whole nonces are the
    key (only fixed-key PRFs such as AES-XCBC truncate them, and we do not
    implement those).

    Args:
        prf_alg: the negotiated PRF transform.
        ni, nr: Nonce Data of the initiator and the responder.
        g_ir: the Diffie-Hellman shared secret (``KeyExchange.shared_secret``).
        spi_i, spi_r: the 8-octet IKE SPIs.
        encr_key_len: SK_ei/SK_er length; for AEAD ciphers the key *plus* the
            4-octet salt (RFC 5282 section 7.1, RFC 7634 section 4), i.e.
            ``IkeSuite.sk_e_len`` from ``common.ike.ike_suites``.
        integ_key_len: SK_ai/SK_ar length (``IkeSuite.sk_a_len``); 0 for AEAD.

    Returns:
        ``(skeyseed, keys)``. SKEYSEED is returned for tests and key-export
        tooling; the protocol needs only ``keys``, so callers should drop it.
    """
    skeyseed = prf(prf_alg, ni + nr, g_ir)
    keys = _split_ike_sa_keys(prf_alg, skeyseed, ni, nr, spi_i, spi_r, encr_key_len, integ_key_len)
    return skeyseed, keys


def derive_rekeyed_ike_sa_keys(
    prf_alg: PseudorandomFunction,
    old_sk_d: bytes,
    g_ir_new: bytes,
    ni: bytes,
    nr: bytes,
    spi_i: bytes,
    spi_r: bytes,
    *,
    encr_key_len: int,
    integ_key_len: int,
    old_prf_alg: PseudorandomFunction | None = None,
) -> tuple[bytes, IkeSaKeys]:
    """Keys of an IKE SA made by rekeying one with CREATE_CHILD_SA (RFC 7296 2.18).

    SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr), then the SK_* split of
    2.14 with the new SA's PRF, nonces and SPIs. A rekey always carries a KE
    payload (2.18: the exchange MUST include one), so ``g_ir_new`` is required.

    Args:
        prf_alg: the PRF negotiated for the *new* IKE SA (used for prf+).
        old_sk_d: SK_d of the IKE SA being rekeyed.
        g_ir_new: shared secret of this CREATE_CHILD_SA's key exchange.
        ni, nr: nonces of this CREATE_CHILD_SA exchange; "i" is whoever
            initiated the rekey, not the original initiator.
        spi_i, spi_r: the new IKE SA's SPIs, from the SA payloads.
        old_prf_alg: the old SA's PRF, which keys SKEYSEED with SK_d (old);
            only differs from ``prf_alg`` when the rekey changes PRF
            (strongSwan does the same). Defaults to ``prf_alg``.

    Returns:
        ``(skeyseed, keys)`` as in :func:`derive_ike_sa_keys`.
    """
    skeyseed = prf(old_prf_alg or prf_alg, old_sk_d, g_ir_new + ni + nr)
    keys = _split_ike_sa_keys(prf_alg, skeyseed, ni, nr, spi_i, spi_r, encr_key_len, integ_key_len)
    return skeyseed, keys


def child_sa_keymat(
    prf_alg: PseudorandomFunction,
    sk_d: bytes,
    ni: bytes,
    nr: bytes,
    esp_suite: EspSuite,
    *,
    g_ir: bytes | None = None,
) -> tuple[bytes, bytes]:
    """KEYMAT of a Child SA, split by direction (RFC 7296 2.17).

    KEYMAT = prf+(SK_d, Ni | Nr), or prf+(SK_d, g^ir (new) | Ni | Nr) when the
    CREATE_CHILD_SA carried a KE payload (PFS). The Child SA created inside
    IKE_AUTH uses the IKE_SA_INIT nonces and never a new g^ir.

    RFC 7296 2.17: keys are taken for the initiator-to-responder direction
    first, then responder-to-initiator; within each, the encryption key (with
    its salt for AEAD, RFC 4106 section 8.1 / RFC 7634 section 2) comes before
    the integrity key. That is the layout ``EspSuite.split_keymat`` reads.

    Returns:
        ``(keymat_i_to_r, keymat_r_to_i)``, each ``esp_suite.keymat_len`` octets.
        Here "i" is the initiator of the exchange that created the Child SA.
    """
    seed = (g_ir or b"") + ni + nr
    half = esp_suite.keymat_len
    keymat = prf_plus(prf_alg, sk_d, seed, 2 * half)
    return keymat[:half], keymat[half:]
