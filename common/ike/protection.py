"""The Encrypted payload: sealing and opening SK{...} (RFC 7296 3.14, RFC 5282, RFC 7634).

Works on bytes only, below the message codec: the caller hands over the
already encoded inner payload chain and gets the whole datagram back, or hands
over a received datagram and the offset of its SK payload. The same code
protects SKF fragments (RFC 7383 section 2.5), whose payload header carries 4
more octets (Fragment Number, Total Fragments) that are authenticated too.

Flow, outbound (``seal_sk``)::

    inner payload chain || padding (zeros) || pad length    (RFC 7296 3.14)
      --> IKE header with Next Payload = SK and Length = final length
      --> AEAD: nonce = salt || IV, AAD = IKE header .. end of SK payload header
                (RFC 5282 5.1), ciphertext || 16-octet ICV
          CBC:  random IV, AES-CBC, ICV = HMAC over IKE header .. last ciphertext
                octet, truncated (RFC 7296 3.14, RFC 4868)
      --> IKE header || SK header || IV || ciphertext || ICV

Flow, inbound (``open_sk``)::

    datagram --> lengths (SK is the last payload, header length = datagram length)
      --> CBC: ICV verified before anything is decrypted; AEAD: decrypt+verify
      --> pad length within the plaintext --> (first inner payload type, chain)

Padding: we pad to the minimum the RFC asks for (RFC 7296 3.14: the sender
SHOULD use the minimum), which for AEAD is none at all (block size 1): that is
exactly what strongSwan 5.9.8 sends (every SK payload in tests/vectors/strongswan
has pad length 0), so re-sealing a captured plaintext with its IV gives the
captured bytes.

Errors: ``open_sk`` raises only ``IntegrityCheckFailed`` on any received bytes.
Everything it can find wrong is either unauthenticated (a short or inconsistent
SK payload, a bad ICV) or a bad pad length that no honest peer sends; the caller
drops such a message silently and counts it (RFC 7296 2.21: an unauthenticated
message must not change state or be answered).
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Callable
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from common.ike.constants import EncryptionAlgorithm, PayloadType
from common.ike.errors import RemoteProtocolError
from common.ike.ike_suites import IkeSuite

IKE_HEADER_LEN: Final = 28  # RFC 7296 3.1
_NEXT_PAYLOAD_OFFSET: Final = 16
_LENGTH_OFFSET: Final = 24
_GENERIC_HEADER: Final = struct.Struct("!BBH")  # RFC 7296 3.2
_LENGTH: Final = struct.Struct("!I")
_MAX_PAYLOAD_LEN: Final = 0xFFFF  # the generic header's Payload Length is 16 bits


class IntegrityCheckFailed(RemoteProtocolError, ValueError):  # noqa: N818 - like MalformedMessage
    """A received SK/SKF payload could not be authenticated and decrypted.

    The single error ``open_sk`` raises on received bytes. It is not a
    ``MalformedMessage`` on purpose: that one is answered with INVALID_SYNTAX,
    while this one carries ``notify = None`` because the message is dropped
    silently and counted (RFC 7296 2.21: unauthenticated messages are never
    answered). The text says what was wrong but never carries key or
    plaintext octets.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, None)


def seal_sk(
    header: bytes,
    first_inner_payload: int,
    plaintext: bytes,
    suite: IkeSuite,
    sk_e: bytes,
    sk_a: bytes,
    *,
    iv: bytes | None = None,
    rng: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """Build a whole protected IKE message: header || SK{plaintext}.

    Args:
        header: the 28-octet IKE header as the codec encodes it. Its Next
            Payload field is set to SK (46) and its Length field to the final
            message length here, so the template's values of those two fields
            do not matter (they must be final before the ICV is computed).
        first_inner_payload: type of the first payload inside SK; it goes into
            the SK payload's Next Payload field (RFC 7296 3.14). 0 when the
            chain is empty (an empty INFORMATIONAL, e.g. a liveness check).
        plaintext: the encoded inner payload chain.
        suite: the IKE SA's suite.
        sk_e: SK_ei or SK_er of the sending side (key || salt for AEAD).
        sk_a: SK_ai or SK_ar (empty for AEAD).
        iv: the explicit IV. For AEAD it MUST never repeat under one key
            (RFC 5282 section 3.1, RFC 7634 section 2): the session should pass
            a counter. Without it the IV is ``rng(iv_len)``: unpredictable, as
            CBC requires (RFC 7296 3.14: a new unpredictable IV for every
            message), and a 64-bit random AEAD IV is safe for the few messages
            an IKE SA sends.
        rng: randomness source for the IV.

    Returns:
        The datagram (without the non-ESP marker).

    Raises:
        ValueError: misuse: wrong header, key or IV length, or a chain too long
            for one SK payload (fragment it, ``common.ike.fragments``).
    """
    return seal_encrypted(
        header, PayloadType.SK, first_inner_payload, b"", plaintext, suite, sk_e, sk_a, iv, rng
    )


def open_sk(
    message: bytes, sk_payload_offset: int, suite: IkeSuite, sk_e: bytes, sk_a: bytes
) -> tuple[int, bytes]:
    """Authenticate and decrypt the SK payload at ``sk_payload_offset``.

    Args:
        message: the whole IKE message (without the non-ESP marker).
        sk_payload_offset: where the SK payload's generic header starts (28 when
            SK is the first payload, as it always is in practice).
        suite: the IKE SA's suite.
        sk_e: the peer's SK_e (SK_er when we are the original initiator).
        sk_a: the peer's SK_a (empty for AEAD).

    Returns:
        (type of the first inner payload, the inner payload chain).

    Raises:
        IntegrityCheckFailed: on anything wrong with the received bytes.
        ValueError: misuse: key lengths that do not fit ``suite``.
    """
    next_payload, _extra, inner = open_encrypted(message, sk_payload_offset, 0, suite, sk_e, sk_a)
    return next_payload, inner


# --- the generic Encrypted payload, shared by SK and SKF (fragments.py) ------------------


def seal_encrypted(
    header: bytes,
    payload_type: int,
    next_payload: int,
    extra: bytes,
    plaintext: bytes,
    suite: IkeSuite,
    sk_e: bytes,
    sk_a: bytes,
    iv: bytes | None,
    rng: Callable[[int], bytes],
) -> bytes:
    """Seal one SK (``extra`` empty) or SKF (``extra`` = fragment fields) message.

    The one sealing routine behind ``seal_sk`` and ``fragments.seal_fragments``:
    SK and SKF differ only in the payload type and the octets that follow the
    generic payload header, which are authenticated as part of the header
    (RFC 7296 3.14; RFC 7383 2.5: the AAD runs to the end of the SKF header).

    Args:
        header: the 28-octet IKE header; Next Payload and Length are set here.
        payload_type: ``PayloadType.SK`` or ``PayloadType.SKF``.
        next_payload: the first inner payload type (0 for SKF fragments after the first).
        extra: octets between the generic header and the IV (SKF: Fragment
            Number, Total Fragments); empty for SK.
        plaintext: the inner payload chain (or one fragment's chunk of it).
        suite, sk_e, sk_a, iv, rng: as for ``seal_sk``.

    Raises:
        ValueError: misuse, as for ``seal_sk``.
    """
    if len(header) != IKE_HEADER_LEN:
        raise ValueError(f"the IKE header is {IKE_HEADER_LEN} octets, got {len(header)}")
    if not 0 <= next_payload <= 0xFF:
        raise ValueError(f"payload type {next_payload} does not fit one octet")
    _check_keys(suite, sk_e, sk_a)
    if iv is None:
        iv = rng(suite.iv_len)
    if len(iv) != suite.iv_len:
        raise ValueError(f"{suite.name} takes a {suite.iv_len}-octet IV, got {len(iv)}")
    # RFC 7296 3.14: payloads || padding || pad length is a multiple of the block
    # size; the sender SHOULD pad to the minimum. Padding octets may be anything.
    pad_len = -(len(plaintext) + 1) % suite.block_len
    inner = plaintext + bytes(pad_len) + bytes((pad_len,))
    payload_len = 4 + len(extra) + suite.iv_len + len(inner) + suite.icv_len
    if payload_len > _MAX_PAYLOAD_LEN:
        raise ValueError(f"an SK payload of {payload_len} octets exceeds 65535: fragment it")
    fixed = bytearray(header)
    fixed[_NEXT_PAYLOAD_OFFSET] = payload_type
    _LENGTH.pack_into(fixed, _LENGTH_OFFSET, IKE_HEADER_LEN + payload_len)
    # Critical bit and RESERVED MUST be zero on sending (RFC 7296 3.2).
    authenticated = bytes(fixed) + _GENERIC_HEADER.pack(next_payload, 0, payload_len) + extra
    key, salt = suite.split_sk_e(sk_e)
    if suite.is_aead:
        # RFC 5282 5.1 / RFC 7634 3: AAD = IKE header .. end of the SK(F) payload header.
        sealed = _aead(suite, key).encrypt(salt + iv, inner, authenticated)
        return authenticated + iv + sealed
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    body = authenticated + iv + encryptor.update(inner) + encryptor.finalize()
    # RFC 7296 3.14: the checksum covers the whole message, IKE header through
    # the end of the encrypted data, truncated per RFC 4868.
    return body + _icv(suite, sk_a, body)


def open_encrypted(
    message: bytes,
    offset: int,
    extra_len: int,
    suite: IkeSuite,
    sk_e: bytes,
    sk_a: bytes,
) -> tuple[int, bytes, bytes]:
    """Open one SK or SKF payload: (next payload, the ``extra_len`` octets, inner chain).

    The one opening routine behind ``open_sk`` and ``fragments.open_skf``; the
    ``extra_len`` octets after the generic header (SKF: 4) are returned as
    they were authenticated.

    Raises:
        IntegrityCheckFailed: on anything wrong with the received bytes.
        ValueError: misuse: key lengths that do not fit ``suite``.
    """
    _check_keys(suite, sk_e, sk_a)
    fixed_len = 4 + extra_len
    minimum = fixed_len + suite.iv_len + suite.block_len + suite.icv_len
    if offset < IKE_HEADER_LEN or len(message) < offset + minimum:
        raise IntegrityCheckFailed("message too short for an encrypted payload")
    (length,) = _LENGTH.unpack_from(message, _LENGTH_OFFSET)
    next_payload, _flags, payload_len = _GENERIC_HEADER.unpack_from(message, offset)
    # RFC 7296 3.14: the Encrypted payload MUST be the last one in the message.
    # The critical bit is ignored: SK is a payload type we understand (RFC 7296 3.2).
    if length != len(message) or offset + payload_len != len(message):
        raise IntegrityCheckFailed("encrypted payload length does not match the message")
    extra = message[offset + 4 : offset + fixed_len]
    iv_start = offset + fixed_len
    ct_start = iv_start + suite.iv_len
    iv = message[iv_start:ct_start]
    key, salt = suite.split_sk_e(sk_e)
    if suite.is_aead:
        try:
            inner = _aead(suite, key).decrypt(salt + iv, message[ct_start:], message[:iv_start])
        except InvalidTag:
            raise IntegrityCheckFailed("AEAD authentication failed") from None
    else:
        icv_start = len(message) - suite.icv_len
        # RFC 7296 3.14 / 2.21: verify the checksum before decrypting anything.
        if not hmac.compare_digest(_icv(suite, sk_a, message[:icv_start]), message[icv_start:]):
            raise IntegrityCheckFailed("integrity checksum mismatch")
        ciphertext = message[ct_start:icv_start]
        if len(ciphertext) % suite.block_len:
            raise IntegrityCheckFailed("ciphertext is not a whole number of blocks")
        decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        inner = decryptor.update(ciphertext) + decryptor.finalize()
    # RFC 7296 3.14: the recipient MUST accept any pad length that gives proper
    # alignment, so only one that reaches beyond the plaintext is refused.
    if not inner:
        raise IntegrityCheckFailed("no pad length octet")
    pad_len = inner[-1]
    if pad_len + 1 > len(inner):
        raise IntegrityCheckFailed("pad length exceeds the decrypted data")
    return next_payload, extra, inner[: len(inner) - 1 - pad_len]


def _check_keys(suite: IkeSuite, sk_e: bytes, sk_a: bytes) -> None:
    if len(sk_e) != suite.sk_e_len or len(sk_a) != suite.sk_a_len:
        raise ValueError(
            f"{suite.name} needs SK_e of {suite.sk_e_len} and SK_a of {suite.sk_a_len} octets"
        )


def _aead(suite: IkeSuite, key: bytes) -> AESGCM | ChaCha20Poly1305:
    if suite.encryption is EncryptionAlgorithm.ENCR_CHACHA20_POLY1305:
        return ChaCha20Poly1305(key)
    return AESGCM(key)


def _icv(suite: IkeSuite, sk_a: bytes, data: bytes) -> bytes:
    return hmac.new(sk_a, data, suite.hash_name).digest()[: suite.icv_len]
