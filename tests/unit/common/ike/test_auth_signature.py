"""RFC 7427 signature AUTH: AlgorithmIdentifier bytes and sign/verify round trips.

The DER AlgorithmIdentifiers are checked against the ones OpenSSL writes into a
certificate (through ``cryptography``'s x509 builder), an encoder independent of
the constants under test.
"""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from common.ike.auth import (
    ALGORITHM_IDENTIFIERS,
    SignatureScheme,
    SigningKey,
    signature_auth_data,
    verify_signature_auth,
)


def _key(scheme: SignatureScheme) -> SigningKey:
    if scheme is SignatureScheme.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    if scheme.name.startswith("RSA_PSS"):
        return rsa.generate_private_key(65537, 2048)
    curve = ec.SECP256R1() if scheme is SignatureScheme.ECDSA_SHA256 else ec.SECP384R1()
    return ec.generate_private_key(curve)


def _cert_der(key: SigningKey, algorithm: hashes.SHA256 | hashes.SHA384 | None) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw.lab.example")])
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1))
        .sign(key, algorithm)
    )
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(
    ("scheme", "algorithm"),
    [
        (SignatureScheme.ECDSA_SHA256, hashes.SHA256()),
        (SignatureScheme.ECDSA_SHA384, hashes.SHA384()),
        (SignatureScheme.ED25519, None),
    ],
    ids=lambda x: getattr(x, "name", ""),
)
def test_algorithm_identifier_is_what_openssl_writes(
    scheme: SignatureScheme, algorithm: hashes.SHA256 | hashes.SHA384 | None
) -> None:
    der = _cert_der(_key(scheme), algorithm)
    # Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }:
    # the signatureAlgorithm sits right before the BIT STRING that ends the certificate.
    assert ALGORITHM_IDENTIFIERS[scheme] in der


@pytest.mark.parametrize("scheme", list(SignatureScheme), ids=lambda s: s.name)
def test_sign_verify_round_trip(scheme: SignatureScheme) -> None:
    key = _key(scheme)
    octets = b"RealMessage | Nonce | prf(SK_p, ID')"
    auth = signature_auth_data(scheme, key, octets)
    algorithm_identifier = ALGORITHM_IDENTIFIERS[scheme]
    assert auth[0] == len(algorithm_identifier)
    assert auth[1 : 1 + auth[0]] == algorithm_identifier
    assert verify_signature_auth(key.public_key(), auth, octets)
    assert not verify_signature_auth(key.public_key(), auth, octets + b"x")
    assert not verify_signature_auth(_key(scheme).public_key(), auth, octets)
    assert not verify_signature_auth(key.public_key(), auth[:-1] + bytes((auth[-1] ^ 1,)), octets)
    assert not verify_signature_auth(key.public_key(), b"", octets)
    assert not verify_signature_auth(key.public_key(), auth[: 1 + auth[0]], octets)


def test_scheme_and_key_type_must_match() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(ValueError, match="Ed25519"):
        signature_auth_data(SignatureScheme.ED25519, ec_key, b"o")
    with pytest.raises(ValueError, match="ECDSA"):
        signature_auth_data(SignatureScheme.ECDSA_SHA256, ed_key, b"o")
    # An Ed25519 signature presented against an ECDSA key is refused, not crashed on.
    auth = signature_auth_data(SignatureScheme.ED25519, ed_key, b"o")
    assert not verify_signature_auth(ec_key.public_key(), auth, b"o")


def test_unknown_algorithm_identifier_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    auth = signature_auth_data(SignatureScheme.ECDSA_SHA256, key, b"o")
    # ecdsa-with-SHA512 (…04 03 04) is not in our list.
    tampered = auth[:12] + b"\x04" + auth[13:]
    assert not verify_signature_auth(key.public_key(), tampered, b"o")
