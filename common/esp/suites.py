"""ESP cipher suites: sizes and keying-material layout per transform.

One table answers every size question the ESP core and the IKE core ask
(key, salt, IV, ICV, padding alignment, KEYMAT length), so no size is written
twice. Names follow strongSwan's proposal keywords, which admins already know.

- AES-GCM with a 16-octet ICV, RFC 4106: KEYMAT = key || 4-octet salt,
  8-octet explicit IV, padding to a 4-octet boundary (section 3.2).
- ChaCha20-Poly1305, RFC 7634: KEYMAT = 32-octet key || 4-octet salt,
  8-octet IV, padding to 4 octets (section 2).
- AES-CBC, RFC 3602 (16-octet random IV, padding to the 16-octet block) with
  HMAC-SHA2, RFC 4868 (ICV truncated to half the hash). RFC 7296 section 2.17
  orders KEYMAT as encryption key, then integrity key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from common.ike.constants import EncryptionAlgorithm, IntegrityAlgorithm


@dataclass(frozen=True, slots=True)
class EspSuite:
    """Sizes of one ESP transform combination; all lengths in octets."""

    name: str
    encryption: EncryptionAlgorithm
    key_bits: int
    integrity: IntegrityAlgorithm
    key_len: int
    salt_len: int
    iv_len: int
    icv_len: int
    integ_key_len: int
    hash_name: str  # hashlib name for HMAC suites, "" for AEAD
    alignment: int  # the ciphertext (payload..next header) is a multiple of this

    @property
    def is_aead(self) -> bool:
        return self.integrity is IntegrityAlgorithm.NONE

    @property
    def keymat_len(self) -> int:
        """Octets of KEYMAT one direction takes (RFC 7296 section 2.17)."""
        return self.key_len + self.salt_len + self.integ_key_len

    def split_keymat(self, keymat: bytes) -> tuple[bytes, bytes, bytes]:
        """(encryption key, salt, integrity key) from one direction's KEYMAT slice."""
        if len(keymat) != self.keymat_len:
            raise ValueError(
                f"{self.name} needs {self.keymat_len} octets of keying material, got {len(keymat)}"
            )
        key = keymat[: self.key_len]
        salt = keymat[self.key_len : self.key_len + self.salt_len]
        integ = keymat[self.key_len + self.salt_len :]
        return key, salt, integ

    def overhead(self, inner_len: int) -> int:
        """ESP octets added to ``inner_len`` octets: header, IV, padding, trailer, ICV."""
        pad = -(inner_len + 2) % self.alignment
        return 8 + self.iv_len + pad + 2 + self.icv_len


def _aead(name: str, encryption: EncryptionAlgorithm, key_bits: int) -> EspSuite:
    return EspSuite(
        name=name,
        encryption=encryption,
        key_bits=key_bits,
        integrity=IntegrityAlgorithm.NONE,
        key_len=key_bits // 8,
        salt_len=4,
        iv_len=8,
        icv_len=16,
        integ_key_len=0,
        hash_name="",
        alignment=4,
    )


def _cbc(key_bits: int, integrity: IntegrityAlgorithm, hash_bits: int) -> EspSuite:
    return EspSuite(
        name=f"aes{key_bits}-sha{hash_bits}",
        encryption=EncryptionAlgorithm.ENCR_AES_CBC,
        key_bits=key_bits,
        integrity=integrity,
        key_len=key_bits // 8,
        salt_len=0,
        iv_len=16,
        icv_len=hash_bits // 16,
        integ_key_len=hash_bits // 8,
        hash_name=f"sha{hash_bits}",
        alignment=16,
    )


AES128_GCM16: Final = _aead("aes128gcm16", EncryptionAlgorithm.ENCR_AES_GCM_16, 128)
AES256_GCM16: Final = _aead("aes256gcm16", EncryptionAlgorithm.ENCR_AES_GCM_16, 256)
CHACHA20_POLY1305: Final = _aead(
    "chacha20poly1305", EncryptionAlgorithm.ENCR_CHACHA20_POLY1305, 256
)

# The AES-CBC + HMAC-SHA2 combinations native OS clients offer, shared with the
# IKE suite table (common.ike.ike_suites): (AES key bits, integrity, hash bits).
CBC_HMAC_COMBINATIONS: Final = tuple(
    (key_bits, integrity, hash_bits)
    for key_bits in (128, 256)
    for integrity, hash_bits in (
        (IntegrityAlgorithm.AUTH_HMAC_SHA2_256_128, 256),
        (IntegrityAlgorithm.AUTH_HMAC_SHA2_384_192, 384),
        (IntegrityAlgorithm.AUTH_HMAC_SHA2_512_256, 512),
    )
)

SUITES: Final[dict[str, EspSuite]] = {
    suite.name: suite
    for suite in (
        AES128_GCM16,
        AES256_GCM16,
        CHACHA20_POLY1305,
        *(_cbc(*combination) for combination in CBC_HMAC_COMBINATIONS),
    )
}


def suite_by_name(name: str) -> EspSuite:
    """Look a suite up by its strongSwan-style keyword, with a readable error."""
    try:
        return SUITES[name]
    except KeyError:
        known = ", ".join(sorted(SUITES))
        raise ValueError(f"unknown ESP suite {name!r} (known: {known})") from None


def suite_for_transforms(
    encryption: EncryptionAlgorithm, key_bits: int, integrity: IntegrityAlgorithm
) -> EspSuite | None:
    """The suite negotiated by IKE transforms, or ``None`` when we do not implement it."""
    for suite in SUITES.values():
        if (suite.encryption, suite.key_bits, suite.integrity) == (encryption, key_bits, integrity):
            return suite
    return None


# Outer headers below ESP: IP and the UDP header of RFC 3948 encapsulation.
IPV4_HEADER: Final = 20
IPV6_HEADER: Final = 40
UDP_HEADER: Final = 8


def tunnel_mtu(path_mtu: int, suites: tuple[EspSuite, ...], outer_ipv6: bool) -> int:
    """Largest inner packet that still fits one outer ESP-in-UDP packet of ``path_mtu``.

    Computed from each suite's real overhead (padding depends on the length,
    so it is searched, not guessed), taking the worst of the suites that may be
    negotiated, so the TUN MTU never makes the outer packet fragment.
    """
    outer = (IPV6_HEADER if outer_ipv6 else IPV4_HEADER) + UDP_HEADER
    best = path_mtu - outer
    for suite in suites:
        inner = path_mtu - outer - (8 + suite.iv_len + 2 + suite.icv_len)
        while inner > 0 and inner + suite.overhead(inner) + outer > path_mtu:
            inner -= 1
        best = min(best, inner)
    if best < 68:  # RFC 791: every IPv4 host must take 68-octet packets (IPv6 needs 1280)
        raise ValueError(f"a path MTU of {path_mtu} leaves no room for tunnelled packets")
    return best
