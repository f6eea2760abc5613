"""Client certificates issued on the fly: one ECDSA P-256 key and one CA signature per client.

Issue 6 asks for certificate users at load "from a CA that issues many
client certificates quickly". Writing ten thousand certificate and key
files ahead of a run would make the load test about file handling; instead
the tester holds a test CA's key (``[auth] certificate_ca`` and
``certificate_ca_key`` of a load-test profile, ``loadtest.profile``) and each
worker issues client *n*'s certificate just before its handshake: one key
generation and one signature, about a third of a millisecond on this
machine, next to the handshake's own key exchange and AUTH signature.

The certificate is what a gateway checks and nothing more (RFC 4945 3.1, and
what our verifier and charon's accept): the identity as a subjectAltName
(rfc822Name for ``user-n@loadtest``, dNSName for an FQDN id, iPAddress for
an address id) so the IDi is "named in the certificate", basicConstraints
CA:FALSE, keyUsage digitalSignature, extendedKeyUsage clientAuth, the
authority key identifier that chains it to the CA, and a validity from an
hour ago (clock skew between tester and gateway) to ``lifetime`` ahead.
Everything that is the same for every certificate (issuer name, AKI,
validity, fixed extensions) is built once per issuer.
"""

from __future__ import annotations

import datetime
import ipaddress
import time
from dataclasses import dataclass, field
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.ike.auth import SigningKey
from common.ike.constants import IdType
from common.ike.policy import Identity

DEFAULT_LIFETIME: Final = datetime.timedelta(days=7)
_SKEW: Final = datetime.timedelta(hours=1)
_KEY_USAGE: Final = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


class IssuerError(ValueError):
    """The CA certificate and key can not issue client certificates (one line, no key material)."""


@dataclass(frozen=True)
class IssuedCertificate:
    """One client's certificate and its private key (never printed)."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)


class CertificateIssuer:
    """Issues a fresh ECDSA P-256 certificate per identity, signed by the test CA.

    Not thread-safe and not meant to be: each worker process has its own.
    ``issued``, ``seconds`` (and ``last_seconds``, the latest one's) count
    what it did, for the report's cost per certificate.
    """

    def __init__(
        self,
        ca_certificate: x509.Certificate,
        ca_key: SigningKey,
        *,
        now: datetime.datetime | None = None,
        lifetime: datetime.timedelta = DEFAULT_LIFETIME,
    ) -> None:
        if ca_key.public_key() != ca_certificate.public_key():
            raise IssuerError("the CA key does not match the CA certificate")
        try:
            constraints = ca_certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        except x509.ExtensionNotFound:
            raise IssuerError("the CA certificate has no basicConstraints CA:TRUE") from None
        if not constraints.value.ca:
            raise IssuerError("the CA certificate is not a CA (basicConstraints CA:FALSE)")
        self.ca_certificate = ca_certificate
        self._ca_key = ca_key
        # Ed25519 signs without a separate hash; ECDSA and RSA with SHA-256.
        self._hash: hashes.SHA256 | None = (
            None if isinstance(ca_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
        )
        start = now or datetime.datetime.now(datetime.UTC)
        aki = _authority_key_identifier(ca_certificate)
        template = (
            x509.CertificateBuilder()
            .issuer_name(ca_certificate.subject)
            .not_valid_before(start - _SKEW)
            .not_valid_after(start + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_KEY_USAGE, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )
        self._template = template.add_extension(aki, critical=False)
        self.issued = 0
        self.seconds = 0.0
        self.last_seconds = 0.0

    def issue(self, identity: Identity) -> IssuedCertificate:
        """A new key and certificate naming ``identity`` (subject CN and subjectAltName)."""
        started = time.perf_counter()
        key = ec.generate_private_key(ec.SECP256R1())
        text, san = _names(identity)
        certificate = (
            self._template.subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .sign(self._ca_key, self._hash)
        )
        self.last_seconds = time.perf_counter() - started
        self.issued += 1
        self.seconds += self.last_seconds
        return IssuedCertificate(certificate, key)


def _authority_key_identifier(ca: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The AKI that chains a leaf to ``ca``: the CA's own SKI when it has one (RFC 5280 4.2.1.1)."""
    try:
        ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        public = ca.public_key()
        if not isinstance(
            public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
        ):
            raise IssuerError("the CA certificate's key can not sign certificates") from None
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(public)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)


def _names(identity: Identity) -> tuple[str, x509.GeneralName]:
    """The subject CN text and the subjectAltName that names ``identity`` (RFC 4945 3.1)."""
    data = identity.data
    match identity.id_type:
        case IdType.ID_RFC822_ADDR:
            text = data.decode("ascii")
            return text, x509.RFC822Name(text)
        case IdType.ID_FQDN:
            text = data.decode("ascii")
            return text, x509.DNSName(text)
        case IdType.ID_IPV4_ADDR | IdType.ID_IPV6_ADDR:
            address = ipaddress.ip_address(data)
            return str(address), x509.IPAddress(address)
    raise IssuerError(f"cannot issue a certificate for an id of type {identity.id_type.name}")
