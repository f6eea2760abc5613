"""RFC 7427 RSASSA-PSS AUTH and the SIGNATURE_HASH_ALGORITHMS notify (RFC 7427 sections 3, 4).

The PSS AlgorithmIdentifier is pinned twice: to the octets RFC 7427 Appendix A.4.3
prints (https://www.rfc-editor.org/rfc/rfc7427#appendix-A.4.3) and to what OpenSSL,
through ``cryptography``'s x509 builder, writes into an RSA-PSS certificate.
"""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from common.ike.auth import (
    ALGORITHM_IDENTIFIERS,
    SUPPORTED_HASH_ALGORITHMS,
    SignatureScheme,
    choose_signature_hash,
    choose_signature_scheme,
    decode_signature_hash_algorithms,
    encode_signature_hash_algorithms,
    signature_auth_data,
    verify_signature_auth,
)
from common.ike.constants import HashAlgorithm
from common.ike.errors import MalformedMessage
from tests.helpers.pki import make_ca, make_key

PSS_SCHEMES = [
    SignatureScheme.RSA_PSS_SHA256,
    SignatureScheme.RSA_PSS_SHA384,
    SignatureScheme.RSA_PSS_SHA512,
]
OCTETS = b"RealMessage1 | NonceRData | MACedIDForI"

# RFC 7427 Appendix A.4.3, "RSASSA-PSS with SHA-256": Length = 67.
RFC7427_A43 = bytes.fromhex(
    "3041 0609 2a86 4886 f70d 0101 0a30 34a0"
    "0f30 0d06 0960 8648 0165 0304 0201 0500"
    "a11c 301a 0609 2a86 4886 f70d 0101 0830"
    "0d06 0960 8648 0165 0304 0201 0500 a203"
    "0201 20"
)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    key = make_key("rsa2048")
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def test_pss_sha256_identifier_is_rfc7427_appendix_a43() -> None:
    assert len(RFC7427_A43) == 67
    assert ALGORITHM_IDENTIFIERS[SignatureScheme.RSA_PSS_SHA256] == RFC7427_A43


@pytest.mark.parametrize(
    ("scheme", "algorithm"),
    [
        (SignatureScheme.RSA_PSS_SHA256, hashes.SHA256()),
        (SignatureScheme.RSA_PSS_SHA384, hashes.SHA384()),
        (SignatureScheme.RSA_PSS_SHA512, hashes.SHA512()),
    ],
    ids=["sha256", "sha384", "sha512"],
)
def test_pss_identifier_is_what_openssl_writes(
    scheme: SignatureScheme, algorithm: hashes.SHA256 | hashes.SHA384 | hashes.SHA512
) -> None:
    ca = make_ca("PSS CA", key_kind="rsa2048")
    pss = padding.PSS(padding.MGF1(algorithm), padding.PSS.DIGEST_LENGTH)
    assert isinstance(ca.key, rsa.RSAPrivateKey)
    cert = (
        x509.CertificateBuilder()
        .subject_name(ca.certificate.subject)
        .issuer_name(ca.certificate.subject)
        .public_key(ca.key.public_key())
        .serial_number(1)
        .not_valid_before(ca.certificate.not_valid_before_utc)
        .not_valid_after(ca.certificate.not_valid_after_utc)
        .sign(ca.key, algorithm, rsa_padding=pss)
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    assert ALGORITHM_IDENTIFIERS[scheme] in der


@pytest.mark.parametrize("scheme", PSS_SCHEMES, ids=lambda s: s.name)
def test_pss_round_trip_tamper_wrong_key(
    scheme: SignatureScheme, rsa_key: rsa.RSAPrivateKey
) -> None:
    auth = signature_auth_data(scheme, rsa_key, OCTETS)
    identifier = ALGORITHM_IDENTIFIERS[scheme]
    assert auth[0] == len(identifier)
    assert auth[1 : 1 + auth[0]] == identifier
    assert len(auth) == 1 + len(identifier) + 256  # signature is as long as the modulus
    public = rsa_key.public_key()
    assert verify_signature_auth(public, auth, OCTETS)
    assert not verify_signature_auth(public, auth, OCTETS + b"x")
    assert not verify_signature_auth(public, auth[:-1] + bytes((auth[-1] ^ 1,)), OCTETS)
    assert not verify_signature_auth(public, auth[:-1], OCTETS)  # truncated signature
    other = rsa.generate_private_key(65537, 2048).public_key()
    assert not verify_signature_auth(other, auth, OCTETS)
    # An RSA signature against an EC or Ed25519 key is refused, not crashed on.
    assert not verify_signature_auth(
        ec.generate_private_key(ec.SECP256R1()).public_key(), auth, OCTETS
    )
    assert not verify_signature_auth(
        ed25519.Ed25519PrivateKey.generate().public_key(), auth, OCTETS
    )


def test_pss_identifier_swap_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    # A SHA-256 PSS signature relabelled as SHA-384 must not verify: the hash is bound.
    auth = signature_auth_data(SignatureScheme.RSA_PSS_SHA256, rsa_key, OCTETS)
    signature = auth[1 + auth[0] :]
    relabelled = ALGORITHM_IDENTIFIERS[SignatureScheme.RSA_PSS_SHA384]
    forged = bytes((len(relabelled),)) + relabelled + signature
    assert not verify_signature_auth(rsa_key.public_key(), forged, OCTETS)


def test_pss_other_salt_length_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    # The identifier promises salt length 32; a maximum-salt signature must not pass.
    signature = rsa_key.sign(
        OCTETS, padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.MAX_LENGTH), hashes.SHA256()
    )
    identifier = ALGORITHM_IDENTIFIERS[SignatureScheme.RSA_PSS_SHA256]
    auth = bytes((len(identifier),)) + identifier + signature
    assert not verify_signature_auth(rsa_key.public_key(), auth, OCTETS)


def test_pss_needs_rsa_key_of_2048_bits() -> None:
    with pytest.raises(ValueError, match="RSA key"):
        signature_auth_data(
            SignatureScheme.RSA_PSS_SHA256, ec.generate_private_key(ec.SECP256R1()), OCTETS
        )
    small = rsa.generate_private_key(65537, 1024)
    with pytest.raises(ValueError, match="1024 bits"):
        signature_auth_data(SignatureScheme.RSA_PSS_SHA256, small, OCTETS)
    # A 1024-bit signature made outside our API is refused on verification too.
    signature = small.sign(OCTETS, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    identifier = ALGORITHM_IDENTIFIERS[SignatureScheme.RSA_PSS_SHA256]
    auth = bytes((len(identifier),)) + identifier + signature
    assert not verify_signature_auth(small.public_key(), auth, OCTETS)


# --- SIGNATURE_HASH_ALGORITHMS ---------------------------------------------------------


def test_hash_algorithms_encode() -> None:
    data = encode_signature_hash_algorithms(
        [HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.IDENTITY]
    )
    assert data == bytes.fromhex("0002 0003 0005")


def test_hash_algorithms_decode_keeps_order_and_unknown_values() -> None:
    decoded = decode_signature_hash_algorithms(bytes.fromhex("0004 1234 0002"))
    assert decoded == (HashAlgorithm.SHA2_512, 0x1234, HashAlgorithm.SHA2_256)
    assert isinstance(decoded[0], HashAlgorithm)
    assert not isinstance(decoded[1], HashAlgorithm)
    assert decode_signature_hash_algorithms(b"") == ()


def test_hash_algorithms_round_trip() -> None:
    values = (*SUPPORTED_HASH_ALGORITHMS, 0xFFFF, 0)
    assert decode_signature_hash_algorithms(encode_signature_hash_algorithms(values)) == values


@pytest.mark.parametrize("data", [b"\x00", b"\x00\x02\x00"], ids=["one", "three"])
def test_hash_algorithms_odd_length_is_malformed(data: bytes) -> None:
    with pytest.raises(MalformedMessage, match="odd length"):
        decode_signature_hash_algorithms(data)


def test_hash_algorithms_encode_rejects_oversized() -> None:
    with pytest.raises(ValueError, match="16 bits"):
        encode_signature_hash_algorithms([0x10000])


def test_supported_list_excludes_unverifiable_sha512() -> None:
    # We could not verify ecdsa-with-SHA512, so announcing SHA2_512 would be a lie.
    assert HashAlgorithm.SHA2_512 not in SUPPORTED_HASH_ALGORITHMS
    assert HashAlgorithm.SHA1 not in SUPPORTED_HASH_ALGORITHMS


def test_choose_signature_hash_follows_our_preference() -> None:
    ours = [HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_256]
    assert choose_signature_hash(ours, [HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384]) == (
        HashAlgorithm.SHA2_384
    )
    assert choose_signature_hash(ours, [HashAlgorithm.SHA1, 0x1234]) is None
    assert choose_signature_hash(ours, []) is None


def test_choose_signature_scheme_per_key_type(rsa_key: rsa.RSAPrivateKey) -> None:
    both = [HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384]
    p256 = ec.generate_private_key(ec.SECP256R1())
    p384 = ec.generate_private_key(ec.SECP384R1())
    ed = ed25519.Ed25519PrivateKey.generate()
    assert choose_signature_scheme(p256, both) is SignatureScheme.ECDSA_SHA256
    assert choose_signature_scheme(p384, both) is SignatureScheme.ECDSA_SHA384
    assert choose_signature_scheme(p384, [HashAlgorithm.SHA2_256]) is SignatureScheme.ECDSA_SHA256
    assert choose_signature_scheme(rsa_key, both) is SignatureScheme.RSA_PSS_SHA256
    assert choose_signature_scheme(rsa_key, [HashAlgorithm.SHA2_512]) is (
        SignatureScheme.RSA_PSS_SHA512
    )
    assert choose_signature_scheme(ed, both) is None
    assert choose_signature_scheme(ed, [HashAlgorithm.IDENTITY]) is SignatureScheme.ED25519
    # The chosen scheme really signs with that key.
    scheme = choose_signature_scheme(rsa_key, decode_signature_hash_algorithms(b"\x00\x03"))
    assert scheme is SignatureScheme.RSA_PSS_SHA384
    assert verify_signature_auth(
        rsa_key.public_key(), signature_auth_data(scheme, rsa_key, OCTETS), OCTETS
    )
