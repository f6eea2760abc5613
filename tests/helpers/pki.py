"""A throwaway PKI for certificate tests: CAs and leaves built in memory with ``cryptography``.

Tests need a handful of certificates that differ in one property at a time
(key type, SANs, validity window, issuer), so everything here is a keyword
argument with a sensible default rather than a fixture file: a test states
the one property it is about and nothing else. Nothing touches the clock:
validity is anchored at ``EPOCH`` so tests pass ``now`` explicitly, as the
sans-IO core requires.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyKind = Literal["ecdsa-p256", "ecdsa-p384", "ed25519", "rsa2048"]
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey

# Fixed reference time: certificates are valid from EPOCH - 1 day to EPOCH + 365 days.
EPOCH: Final = datetime.datetime(2025, 6, 1, 12, 0, tzinfo=datetime.UTC)
DAY: Final = datetime.timedelta(days=1)

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@cache
def _rsa_key(slot: int) -> rsa.RSAPrivateKey:
    """RSA key generation is slow (~50 ms); tests reuse a few keys by slot."""
    del slot
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_key(kind: KeyKind, *, fresh: bool = False) -> PrivateKey:
    """A private key of ``kind``. RSA keys are cached unless ``fresh`` (they are slow)."""
    if kind == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(65537, 2048) if fresh else _rsa_key(0)


def name(common_name: str, organization: str = "Outpost Test") -> x509.Name:
    """A subject DN ``O=<organization>, CN=<common_name>``."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _sign(builder: x509.CertificateBuilder, key: PrivateKey, *, rsa_pss: bool) -> x509.Certificate:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return builder.sign(key, None)
    if isinstance(key, rsa.RSAPrivateKey) and rsa_pss:
        pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
        return builder.sign(key, hashes.SHA256(), rsa_padding=pss)
    return builder.sign(key, hashes.SHA256())


@dataclass(frozen=True)
class Issued:
    """A certificate with its private key (and DER, which is what travels in CERT payloads)."""

    certificate: x509.Certificate
    key: PrivateKey = field(repr=False)

    @property
    def der(self) -> bytes:
        """The DER encoding (RFC 7296 3.6 X509_CERTIFICATE_SIGNATURE data)."""
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> bytes:
        """The PEM encoding, as a configuration file would hold it."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (strongSwan ``private/``, our driver)."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write_pem(self, certificate: Path, key: Path | None = None) -> None:
        """Write the certificate (and, given ``key``, the private key) as PEM files."""
        certificate.parent.mkdir(parents=True, exist_ok=True)
        certificate.write_bytes(self.pem)
        if key is not None:
            key.parent.mkdir(parents=True, exist_ok=True)
            key.write_bytes(self.key_pem)


def make_ca(
    common_name: str = "Outpost Test Root CA",
    *,
    key_kind: KeyKind = "ecdsa-p256",
    issuer: Issued | None = None,
    not_before: datetime.datetime = EPOCH - DAY,
    not_after: datetime.datetime = EPOCH + 3650 * DAY,
    rsa_pss: bool = False,
) -> Issued:
    """A CA certificate: self-signed root, or an intermediate when ``issuer`` is given.

    Carries the extensions a strict RFC 5280 path validator wants from a CA
    (basicConstraints CA, keyCertSign, SKI/AKI).
    """
    key = make_key(key_kind, fresh=True)
    subject = name(common_name)
    signer_key = issuer.key if issuer else key
    issuer_name = issuer.certificate.subject if issuer else subject
    issuer_public = issuer.certificate.public_key() if issuer else key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public),  # type: ignore[arg-type]
            critical=False,
        )
    )
    return Issued(_sign(builder, signer_key, rsa_pss=rsa_pss), key)


def make_leaf(
    issuer: Issued,
    common_name: str = "client.outpost.test",
    *,
    key_kind: KeyKind = "ecdsa-p256",
    dns_names: Sequence[str] = (),
    emails: Sequence[str] = (),
    ips: Sequence[str] = (),
    not_before: datetime.datetime = EPOCH - DAY,
    not_after: datetime.datetime = EPOCH + 365 * DAY,
    eku: Sequence[x509.ObjectIdentifier] | None = (ExtendedKeyUsageOID.CLIENT_AUTH,),
    rsa_pss: bool = False,
) -> Issued:
    """An end-entity certificate issued by ``issuer``.

    Args:
        issuer: the signing CA.
        common_name: CN of the subject DN.
        key_kind: the leaf's own key type (what its AUTH payload is signed with).
        dns_names, emails, ips: subjectAltName entries; no SAN extension when all empty.
        not_before, not_after: validity window.
        eku: extendedKeyUsage OIDs, or None to leave the extension out.
        rsa_pss: sign with RSA-PSS when the issuer's key is RSA.
    """
    key = make_key(key_kind)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(common_name))
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer.certificate.public_key()  # type: ignore[arg-type]
            ),
            critical=False,
        )
    )
    general_names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    general_names += [x509.RFC822Name(e) for e in emails]
    general_names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if general_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(general_names), critical=False)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return Issued(_sign(builder, issuer.key, rsa_pss=rsa_pss), key)
