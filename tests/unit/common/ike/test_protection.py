"""SK payload protection against the strongSwan 5.9.8 captures, plus unit cases.

Vectors: tests/vectors/strongswan/ (README there and
/work/shared/interop/vectors/README.md, "Verification": nonce = salt | IV,
AAD = IKE header + SK generic payload header, 16-octet ICV).

The capture is walked here with ``struct`` on purpose: the message codec is
someone else's module and must not be the witness for this one.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

import pytest

from common.ike.constants import EncryptionAlgorithm, IntegrityAlgorithm, PayloadType
from common.ike.ike_suites import (
    AES128_GCM16,
    AES256_GCM16,
    CHACHA20_POLY1305,
    IKE_SUITES,
    IkeSuite,
    ike_suite_by_name,
    ike_suite_for_transforms,
)
from common.ike.protection import IntegrityCheckFailed, open_sk, seal_sk
from tests.helpers.vectors import load_json_vectors, udp_datagrams, vector_path

CAPTURES = ("strongswan-gcm-psk.json", "strongswan-chacha-psk.json")
NON_ESP_MARKER = b"\x00\x00\x00\x00"  # RFC 3948 2.2


class Protected(NamedTuple):
    frame: int
    message: bytes
    sk_offset: int
    sk_e: bytes


def sk_offset_of(message: bytes) -> int:
    """Offset of the SK payload: follow Next Payload from the IKE header (RFC 7296 3.1, 3.2)."""
    next_payload = message[16]
    offset = 28
    while next_payload != PayloadType.SK:
        next_payload, _flags, length = struct.unpack_from("!BBH", message, offset)
        offset += length
    return offset


def protected_messages(name: str) -> tuple[IkeSuite, list[Protected]]:
    vectors: dict[str, Any] = load_json_vectors(f"strongswan/{name}")
    transforms = {t["type"]: t for t in vectors["ike_sas"][0]["transforms_iana"]}
    suite = ike_suite_for_transforms(
        transforms["ENCR"]["id"], transforms["ENCR"]["key_length"], None
    )
    assert suite is not None
    by_frame = {m["frame"]: m for m in vectors["ike_messages"]}
    found = []
    for datagram in udp_datagrams(vector_path("strongswan", vectors["pcap"])):
        info = by_frame.get(datagram.frame)
        if info is None or 4500 not in (datagram.sport, datagram.dport):
            continue
        assert datagram.payload.startswith(NON_ESP_MARKER)
        message = datagram.payload[4:]
        ike_sa = vectors["ike_sas"][info["ike_sa"]]
        # RFC 7296 2.14: the original initiator sends with SK_ei, the responder with SK_er.
        key = ike_sa["sk_ei"] if info["sender_is_original_initiator"] else ike_sa["sk_er"]
        found.append(Protected(datagram.frame, message, sk_offset_of(message), bytes.fromhex(key)))
    return suite, found


@pytest.mark.parametrize("name", CAPTURES)
def test_strongswan_messages_open_and_reseal_byte_for_byte(name: str) -> None:
    suite, messages = protected_messages(name)
    # Frames 3-4, 11-14, 19-22 and 27-28 (README): 12 protected messages.
    assert [m.frame for m in messages] == [3, 4, 11, 12, 13, 14, 19, 20, 21, 22, 27, 28]
    for m in messages:
        first, chain = open_sk(m.message, m.sk_offset, suite, m.sk_e, b"")
        if chain:  # the chain decodes: its first payload header names a known payload
            assert first in set(PayloadType)
            assert struct.unpack_from("!H", chain, 2)[0] <= len(chain)
        else:  # frames 22 and 28: the empty INFORMATIONAL response to a DELETE
            assert first == PayloadType.NO_NEXT_PAYLOAD
        iv = m.message[m.sk_offset + 4 : m.sk_offset + 4 + suite.iv_len]
        header = m.message[:28]
        assert seal_sk(header, first, chain, suite, m.sk_e, b"", iv=iv) == m.message, m.frame


@pytest.mark.parametrize("name", CAPTURES)
def test_strongswan_messages_fail_with_the_other_directions_key(name: str) -> None:
    suite, messages = protected_messages(name)
    for m in messages:
        wrong = bytes(b ^ 1 for b in m.sk_e)
        with pytest.raises(IntegrityCheckFailed):
            open_sk(m.message, m.sk_offset, suite, wrong, b"")


def test_reseal_ignores_template_length_and_next_payload() -> None:
    suite, messages = protected_messages(CAPTURES[0])
    m = messages[0]
    first, chain = open_sk(m.message, m.sk_offset, suite, m.sk_e, b"")
    template = m.message[:16] + b"\x00" + m.message[17:24] + b"\x00\x00\x00\x00"
    iv = m.message[32:40]
    assert seal_sk(template, first, chain, suite, m.sk_e, b"", iv=iv) == m.message


# --- suites ----------------------------------------------------------------------------


def test_suite_lookup_from_transforms() -> None:
    gcm = EncryptionAlgorithm.ENCR_AES_GCM_16
    assert ike_suite_for_transforms(gcm, 256, None) is AES256_GCM16
    assert ike_suite_for_transforms(gcm, 128, IntegrityAlgorithm.NONE) is AES128_GCM16
    assert ike_suite_for_transforms(gcm, None, None) is None  # AES needs a Key Length
    assert ike_suite_for_transforms(gcm, 192, None) is None  # not implemented
    chacha = EncryptionAlgorithm.ENCR_CHACHA20_POLY1305
    assert ike_suite_for_transforms(chacha, None, None) is CHACHA20_POLY1305
    cbc = EncryptionAlgorithm.ENCR_AES_CBC
    suite = ike_suite_for_transforms(cbc, 256, IntegrityAlgorithm.AUTH_HMAC_SHA2_384_192)
    assert suite is ike_suite_by_name("aes256-sha384")
    assert ike_suite_for_transforms(cbc, 256, None) is None  # CBC without integrity


@pytest.mark.parametrize(
    ("name", "sk_e_len", "sk_a_len", "iv_len", "icv_len", "block_len"),
    [
        ("aes128gcm16", 20, 0, 8, 16, 1),  # RFC 5282: key + 4-octet salt
        ("aes256gcm16", 36, 0, 8, 16, 1),
        ("chacha20poly1305", 36, 0, 8, 16, 1),  # RFC 7634 3
        ("aes128-sha256", 16, 32, 16, 16, 16),  # RFC 4868 2.1.1
        ("aes128-sha384", 16, 48, 16, 24, 16),
        ("aes256-sha512", 32, 64, 16, 32, 16),
    ],
)
def test_suite_sizes(
    name: str, sk_e_len: int, sk_a_len: int, iv_len: int, icv_len: int, block_len: int
) -> None:
    suite = ike_suite_by_name(name)
    assert (suite.sk_e_len, suite.sk_a_len, suite.iv_len, suite.icv_len, suite.block_len) == (
        sk_e_len,
        sk_a_len,
        iv_len,
        icv_len,
        block_len,
    )


def test_unknown_suite_name() -> None:
    with pytest.raises(ValueError, match="unknown IKE suite"):
        ike_suite_by_name("des")


# --- sealing rules ---------------------------------------------------------------------

HEADER = bytes.fromhex("010203040506070811121314151617182e2023000000000200000000")


def keys(suite: IkeSuite) -> tuple[bytes, bytes]:
    return bytes(range(suite.sk_e_len)), bytes(range(100, 100 + suite.sk_a_len))


@pytest.mark.parametrize("name", sorted(IKE_SUITES))
@pytest.mark.parametrize("length", [0, 1, 14, 15, 16, 17, 100])
def test_seal_layout_and_round_trip(name: str, length: int) -> None:
    suite = ike_suite_by_name(name)
    sk_e, sk_a = keys(suite)
    chain = bytes(range(length))
    message = seal_sk(HEADER, PayloadType.NOTIFY, chain, suite, sk_e, sk_a, rng=bytes)
    assert message[16] == PayloadType.SK
    assert struct.unpack_from("!I", message, 24)[0] == len(message)
    next_payload, flags, payload_len = struct.unpack_from("!BBH", message, 28)
    assert (next_payload, flags, payload_len) == (PayloadType.NOTIFY, 0, len(message) - 28)
    assert message[32 : 32 + suite.iv_len] == bytes(suite.iv_len)  # the rng's IV
    encrypted = payload_len - 4 - suite.iv_len - suite.icv_len
    assert encrypted % suite.block_len == 0
    assert encrypted - 1 - length < suite.block_len  # RFC 7296 3.14: minimal padding
    assert payload_len == suite.sk_payload_len(length)
    assert open_sk(message, 28, suite, sk_e, sk_a) == (PayloadType.NOTIFY, chain)


def test_cbc_accepts_any_aligned_pad_length() -> None:
    """RFC 7296 3.14: the recipient MUST accept any pad length that aligns."""
    import hmac

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    suite = ike_suite_by_name("aes128-sha256")
    sk_e, sk_a = keys(suite)
    chain = b"payloads"
    inner = chain + b"\xaa" * 23 + bytes((23,))  # 32 octets: two blocks, one spare
    iv = bytes(16)
    encryptor = Cipher(algorithms.AES(sk_e), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(inner) + encryptor.finalize()
    payload_len = 4 + 16 + len(ciphertext) + 16
    header = HEADER[:24] + struct.pack("!I", 28 + payload_len)
    body = header + struct.pack("!BBH", 41, 0, payload_len) + iv + ciphertext
    message = body + hmac.new(sk_a, body, "sha256").digest()[:16]
    assert open_sk(message, 28, suite, sk_e, sk_a) == (41, chain)


def test_aead_pad_length_beyond_plaintext_is_refused() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    suite = AES128_GCM16
    sk_e, sk_a = keys(suite)
    key, salt = suite.split_sk_e(sk_e)
    iv = bytes(8)
    payload_len = 4 + 8 + 3 + 16
    header = HEADER[:24] + struct.pack("!I", 28 + payload_len)
    aad = header + struct.pack("!BBH", 41, 0, payload_len)
    message = aad + iv + AESGCM(key).encrypt(salt + iv, b"ab\x05", aad)
    with pytest.raises(IntegrityCheckFailed, match="pad length"):
        open_sk(message, 28, suite, sk_e, sk_a)


@pytest.mark.parametrize("name", ["aes256gcm16", "aes256-sha512"])
def test_truncated_and_extended_messages_are_refused(name: str) -> None:
    suite = ike_suite_by_name(name)
    sk_e, sk_a = keys(suite)
    message = seal_sk(HEADER, 41, b"x" * 40, suite, sk_e, sk_a)
    for cut in range(len(message)):
        with pytest.raises(IntegrityCheckFailed):
            open_sk(message[:cut], 28, suite, sk_e, sk_a)
    with pytest.raises(IntegrityCheckFailed):
        open_sk(message + b"\x00", 28, suite, sk_e, sk_a)
    with pytest.raises(IntegrityCheckFailed):
        open_sk(message, 0, suite, sk_e, sk_a)


def test_misuse_fails_fast() -> None:
    sk_e, sk_a = keys(AES256_GCM16)
    with pytest.raises(ValueError, match="header"):
        seal_sk(HEADER[:27], 41, b"", AES256_GCM16, sk_e, sk_a)
    with pytest.raises(ValueError, match="IV"):
        seal_sk(HEADER, 41, b"", AES256_GCM16, sk_e, sk_a, iv=b"short")
    with pytest.raises(ValueError, match="SK_e"):
        seal_sk(HEADER, 41, b"", AES256_GCM16, sk_e[:32], sk_a)
    with pytest.raises(ValueError, match="fragment it"):
        seal_sk(HEADER, 41, bytes(70_000), AES256_GCM16, sk_e, sk_a)


def test_errors_carry_no_notify_and_no_secrets() -> None:
    suite = AES256_GCM16
    sk_e, sk_a = keys(suite)
    message = bytearray(seal_sk(HEADER, 41, b"secret-payloads", suite, sk_e, sk_a))
    message[-1] ^= 1
    with pytest.raises(IntegrityCheckFailed) as caught:
        open_sk(bytes(message), 28, suite, sk_e, sk_a)
    assert caught.value.notify is None  # RFC 7296 2.21: dropped, never answered
    assert isinstance(caught.value, ValueError)
    text = str(caught.value) + repr(caught.value)
    assert sk_e.hex() not in text
    assert "secret-payloads" not in text
