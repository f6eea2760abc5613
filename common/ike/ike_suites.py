"""IKE SA protection suites: sizes of the Encrypted (SK) payload per transform pair.

One table answers every size question that key derivation (RFC 7296 section
2.14: how long SK_e* and SK_a* are) and SK protection (IV, ICV, padding
alignment) ask, so no size is written twice. It mirrors ``common/esp/suites.py``
but is kept apart because IKE and ESP differ in the details: IKE pads to the
cipher block (RFC 7296 section 3.14) where ESP pads to 4 octets, and the IKE
table is looked up by the IKE SA proposal's transforms.

- AES-GCM with a 16-octet ICV, RFC 5282: SK_e = key || 4-octet salt
  (section 7.1), 8-octet explicit IV, no padding requirement (block size 1).
- ChaCha20-Poly1305, RFC 7634 section 3 (IKEv2): SK_e = 32-octet key ||
  4-octet salt, 8-octet IV, 16-octet ICV, no padding requirement.
- AES-CBC (RFC 7296 section 3.14, RFC 3602): 16-octet IV and block, with
  HMAC-SHA2 (RFC 4868 section 2.1.1: integrity key as long as the hash output,
  ICV truncated to half of it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from common.esp.suites import CBC_HMAC_COMBINATIONS
from common.ike.constants import EncryptionAlgorithm, IntegrityAlgorithm


@dataclass(frozen=True, slots=True)
class IkeSuite:
    """Sizes of one IKE SA encryption + integrity combination; all lengths in octets."""

    name: str
    encryption: EncryptionAlgorithm
    key_bits: int
    integrity: IntegrityAlgorithm
    key_len: int  # cipher key, without the salt
    salt_len: int  # AEAD only: the implicit nonce part, taken from the end of SK_e
    iv_len: int  # explicit IV carried in every SK payload
    icv_len: int
    block_len: int  # payloads || padding || pad length is a multiple of this (RFC 7296 3.14)
    integ_key_len: int
    hash_name: str  # hashlib name for HMAC suites, "" for AEAD

    @property
    def is_aead(self) -> bool:
        return self.integrity is IntegrityAlgorithm.NONE

    @property
    def sk_e_len(self) -> int:
        """Length of SK_ei / SK_er as prf+ produces them: key and salt together.

        RFC 5282 section 7.1 and RFC 7634 section 3: the salt is keying
        material of the encryption key, so key derivation must take these
        extra octets (strongSwan prints the 36-octet value as "Sk_ei secret").
        """
        return self.key_len + self.salt_len

    @property
    def sk_a_len(self) -> int:
        """Length of SK_ai / SK_ar; zero for AEAD suites (RFC 5282 section 7.1)."""
        return self.integ_key_len

    def split_sk_e(self, sk_e: bytes) -> tuple[bytes, bytes]:
        """(cipher key, salt) of an SK_e value; raises ``ValueError`` on a wrong length."""
        if len(sk_e) != self.sk_e_len:
            raise ValueError(f"{self.name} needs a {self.sk_e_len}-octet SK_e, got {len(sk_e)}")
        return sk_e[: self.key_len], sk_e[self.key_len :]

    def sk_payload_len(self, inner_len: int, header_extra: int = 0) -> int:
        """Octets of the SK (or SKF) payload that carries ``inner_len`` octets of payloads.

        ``header_extra`` is 4 for SKF (Fragment Number, Total Fragments). The
        padding is the minimal one the sender should use (RFC 7296 3.14).
        """
        pad = -(inner_len + 1) % self.block_len
        return 4 + header_extra + self.iv_len + inner_len + pad + 1 + self.icv_len


def _aead(name: str, encryption: EncryptionAlgorithm, key_bits: int) -> IkeSuite:
    return IkeSuite(
        name=name,
        encryption=encryption,
        key_bits=key_bits,
        integrity=IntegrityAlgorithm.NONE,
        key_len=key_bits // 8,
        salt_len=4,
        iv_len=8,
        icv_len=16,
        block_len=1,
        integ_key_len=0,
        hash_name="",
    )


def _cbc(key_bits: int, integrity: IntegrityAlgorithm, hash_bits: int) -> IkeSuite:
    return IkeSuite(
        name=f"aes{key_bits}-sha{hash_bits}",
        encryption=EncryptionAlgorithm.ENCR_AES_CBC,
        key_bits=key_bits,
        integrity=integrity,
        key_len=key_bits // 8,
        salt_len=0,
        iv_len=16,
        icv_len=hash_bits // 16,  # RFC 4868 2.1.1: truncated to half the output
        block_len=16,
        integ_key_len=hash_bits // 8,  # RFC 4868 2.1.1: key length = output length
        hash_name=f"sha{hash_bits}",
    )


AES128_GCM16: Final = _aead("aes128gcm16", EncryptionAlgorithm.ENCR_AES_GCM_16, 128)
AES256_GCM16: Final = _aead("aes256gcm16", EncryptionAlgorithm.ENCR_AES_GCM_16, 256)
CHACHA20_POLY1305: Final = _aead(
    "chacha20poly1305", EncryptionAlgorithm.ENCR_CHACHA20_POLY1305, 256
)

IKE_SUITES: Final[dict[str, IkeSuite]] = {
    suite.name: suite
    for suite in (
        AES128_GCM16,
        AES256_GCM16,
        CHACHA20_POLY1305,
        *(_cbc(*combination) for combination in CBC_HMAC_COMBINATIONS),
    )
}


def ike_suite_by_name(name: str) -> IkeSuite:
    """Look a suite up by its strongSwan-style keyword, with a readable error."""
    try:
        return IKE_SUITES[name]
    except KeyError:
        known = ", ".join(sorted(IKE_SUITES))
        raise ValueError(f"unknown IKE suite {name!r} (known: {known})") from None


def ike_suite_for_transforms(
    encryption: int, key_length: int | None, integrity: int | None
) -> IkeSuite | None:
    """The suite a negotiated IKE proposal selects, or ``None`` when we do not implement it.

    Args:
        encryption: ENCR transform ID.
        key_length: the Key Length attribute in bits, ``None`` when absent.
            AES needs it (RFC 7296 section 3.3.5: variable-length ciphers carry
            it); ChaCha20-Poly1305 has a fixed 256-bit key (RFC 7634 section 3),
            so an absent attribute means 256.
        integrity: INTEG transform ID, ``None`` when the proposal has none.
            AEAD suites take none or NONE (RFC 5282 section 8); CBC needs one.
    """
    if encryption == EncryptionAlgorithm.ENCR_CHACHA20_POLY1305 and key_length is None:
        key_length = 256
    if key_length is None:
        return None
    wanted = IntegrityAlgorithm.NONE if integrity is None else integrity
    for suite in IKE_SUITES.values():
        if (suite.encryption, suite.key_bits, suite.integrity) == (
            encryption,
            key_length,
            wanted,
        ):
            return suite
    return None
