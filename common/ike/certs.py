"""X.509 certificate validation and identity binding for IKEv2 (RFC 7296 3.6, RFC 4945 3.1, 5).

A peer that authenticates with a signature sends its end-entity certificate
(and maybe intermediates) in CERT payloads; before its AUTH signature means
anything we must know that the certificate chains to a CA we trust, is valid
at ``now``, and names the identity in IDi/IDr. This module does those three
things and nothing else: no I/O (certificates arrive as bytes, configuration
loads files and hands us ``x509.Certificate`` objects), no clock (``now`` is a
parameter, STYLE.md sans-IO), no revocation (CRL/OCSP need I/O; a gap).

Path validation is cryptography's RFC 5280 verifier, with the end-entity
policy relaxed from Web PKI to what IKE deployments use (see ``_ike_ee_policy``).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from enum import Enum
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from common.ike.constants import CertificateEncoding, IdType, NotifyType
from common.ike.errors import RemoteProtocolError
from common.ike.payloads.id_auth import CertificateRequest

__all__ = [
    "CertificateRejectReason",
    "CertificateRejected",
    "CertificateVerifier",
    "auth_public_key",
    "identity_matches",
    "load_certificate",
    "load_certificates",
    "parse_peer_certificate",
]


class CertificateRejectReason(Enum):
    """Why a peer certificate was refused; logged and counted, never sent (RFC 7296 2.21.2)."""

    MALFORMED = "malformed certificate"
    UNTRUSTED_ISSUER = "untrusted issuer"
    EXPIRED = "expired"
    NOT_YET_VALID = "not yet valid"
    BAD_SIGNATURE = "bad signature"
    POLICY = "policy violation"  # key usage, EKU, basic constraints, key or signature type


class CertificateRejected(RemoteProtocolError):  # noqa: N818 (an event-like name, as h11's)
    """The peer's certificate chain is not acceptable.

    The peer gets AUTHENTICATION_FAILED (RFC 7296 2.21.2) and nothing more:
    ``reason`` and the message are for our logs only, so an attacker probing
    the CA list learns nothing from the answer.

    Attributes:
        reason: the classified cause.
    """

    def __init__(self, reason: CertificateRejectReason, detail: str) -> None:
        super().__init__(
            f"certificate rejected ({reason.value}): {detail}", NotifyType.AUTHENTICATION_FAILED
        )
        self.reason = reason


# --- Loading ---------------------------------------------------------------------------


def load_certificate(data: bytes) -> x509.Certificate:
    """One certificate from PEM or DER bytes (as read from a configuration file).

    Raises:
        ValueError: when the bytes are neither; local configuration errors are
            the caller's to report, so this is not a protocol error.
    """
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle (a CA file), or the single one in DER bytes.

    Raises:
        ValueError: when nothing parses.
    """
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def parse_peer_certificate(der: bytes) -> x509.Certificate:
    """A certificate from a CERT payload (X509_CERTIFICATE_SIGNATURE is DER, RFC 7296 3.6).

    Raises:
        CertificateRejected: MALFORMED, so bad peer bytes end as
            AUTHENTICATION_FAILED like every other certificate failure.
    """
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise CertificateRejected(CertificateRejectReason.MALFORMED, str(exc)) from exc


AuthPublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey


def auth_public_key(certificate: x509.Certificate) -> AuthPublicKey:
    """The certificate's key, narrowed to the types ``auth.verify_signature_auth`` accepts.

    Raises:
        CertificateRejected: POLICY for key types we cannot verify AUTH with
            (DSA, Ed448, X25519...), so the caller never passes them on.
    """
    try:
        key = certificate.public_key()
    except UnsupportedAlgorithm as exc:
        raise CertificateRejected(CertificateRejectReason.POLICY, str(exc)) from exc
    if isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
        return key
    raise CertificateRejected(
        CertificateRejectReason.POLICY, f"unsupported public key type {type(key).__name__}"
    )


# --- Path validation -------------------------------------------------------------------

# RFC 4945 5.1.3.12 lets an IKE end entity carry no EKU, anyExtendedKeyUsage or id-kp-ipsecIKE.
# serverAuth and clientAuth are accepted too: Windows and macOS clients demand serverAuth on
# the gateway certificate, and public-CA certificates carry serverAuth/clientAuth only.
_IKE_EKUS: Final = frozenset(
    {
        ExtendedKeyUsageOID.IPSEC_IKE,
        ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }
)


def _check_ike_eku(
    policy: Policy, certificate: x509.Certificate, eku: x509.ExtendedKeyUsage | None
) -> None:
    if eku is not None and _IKE_EKUS.isdisjoint(eku):
        raise ValueError("extendedKeyUsage allows no IKE use")


def _check_signing_key_usage(
    policy: Policy, certificate: x509.Certificate, key_usage: x509.KeyUsage | None
) -> None:
    # RFC 4945 5.1.3.2: when keyUsage is present, digitalSignature or nonRepudiation must be
    # set for the key to sign AUTH payloads.
    if key_usage is not None and not (key_usage.digital_signature or key_usage.content_commitment):
        raise ValueError("keyUsage allows neither digitalSignature nor nonRepudiation")


def _ike_ee_policy() -> ExtensionPolicy:
    """Web PKI end-entity rules, minus the two that IKE deployments do not follow.

    - subjectAltName may be absent: a certificate identified by ID_DER_ASN1_DN
      needs none (RFC 4945 3.1.5), whereas the Web PKI requires one.
    - extendedKeyUsage is checked against ``_IKE_EKUS`` instead of requiring
      clientAuth, which cryptography's client verifier would otherwise do.
    """
    return (
        ExtensionPolicy.webpki_defaults_ee()
        .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
        .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _check_ike_eku)
        .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _check_signing_key_usage)
    )


class CertificateVerifier:
    """Validates a peer's end-entity certificate against configured trust anchors.

    Drivers: the IKE_AUTH task calls ``verify`` with the CERT payloads' data and
    ``now``, then ``identity_matches`` with the peer's ID payload, then
    ``auth.verify_signature_auth`` with ``auth_public_key(certificate)``.

    The verifier holds no state between calls beyond the trust store, so one
    instance serves every session of a concentrator.
    """

    def __init__(self, ca_certificates: list[x509.Certificate]) -> None:
        """Trust ``ca_certificates`` as anchors (roots or pinned intermediates).

        Raises:
            ValueError: with no CA at all, which would reject everything and is
                certainly a configuration mistake.
        """
        if not ca_certificates:
            raise ValueError("a CertificateVerifier needs at least one CA certificate")
        self._ca_certificates = list(ca_certificates)
        self._store = Store(self._ca_certificates)

    def verify(
        self, end_entity_der: bytes, intermediates_der: list[bytes], *, now: datetime.datetime
    ) -> x509.Certificate:
        """Validate the peer's certificate path (RFC 5280 6) at ``now`` and return the leaf.

        Args:
            end_entity_der: the first CERT payload's data (RFC 7296 3.6: the
                certificate whose key signed AUTH comes first).
            intermediates_der: the other CERT payloads' data, untrusted helpers
                for path building; they need not be in order.
            now: the validation time, timezone-aware (the core reads no clock).

        Returns:
            The validated end-entity certificate, for ``identity_matches`` and
            ``auth_public_key``.

        Raises:
            CertificateRejected: with the reason classified as precisely as the
                underlying verifier allows.
            ValueError: when ``now`` is naive; an ambiguous time is a caller bug.
        """
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        leaf = parse_peer_certificate(end_entity_der)
        intermediates = [parse_peer_certificate(der) for der in intermediates_der]
        _check_validity(leaf, now, "")
        verifier = (
            PolicyBuilder()
            .store(self._store)
            .time(now)
            .extension_policies(
                ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=_ike_ee_policy()
            )
            .build_client_verifier()
        )
        try:
            verifier.verify(leaf, intermediates)
        except VerificationError as exc:
            raise self._diagnose(leaf, intermediates, now, str(exc)) from exc
        return leaf

    def _diagnose(
        self,
        leaf: x509.Certificate,
        intermediates: list[x509.Certificate],
        now: datetime.datetime,
        message: str,
    ) -> CertificateRejected:
        """Turn the verifier's error text into a reason by re-checking the leaf's issuer.

        cryptography reports one string for every failure, so the common cases
        are recognised directly: no issuer by that name, a signature that no
        issuer by that name made, an issuer outside its validity. Anything
        else (EKU, key usage, forbidden algorithm, depth) is POLICY with the
        verifier's text.
        """
        candidates = [
            c for c in (*intermediates, *self._ca_certificates) if c.subject == leaf.issuer
        ]
        if not candidates:
            return CertificateRejected(
                CertificateRejectReason.UNTRUSTED_ISSUER,
                f"no trusted or supplied issuer {leaf.issuer.rfc4514_string()!r}",
            )
        signers = [c for c in candidates if _issued_by(leaf, c)]
        if not signers:
            return CertificateRejected(
                CertificateRejectReason.BAD_SIGNATURE,
                f"signature does not verify under any {leaf.issuer.rfc4514_string()!r} key",
            )
        for signer in signers:
            _check_validity(signer, now, "issuer ")
        if "candidates exhausted: all candidates exhausted" in message:
            return CertificateRejected(CertificateRejectReason.UNTRUSTED_ISSUER, message)
        return CertificateRejected(CertificateRejectReason.POLICY, message)


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _check_validity(certificate: x509.Certificate, now: datetime.datetime, which: str) -> None:
    """RFC 5280 4.1.2.5: valid from notBefore to notAfter, both inclusive."""
    subject = certificate.subject.rfc4514_string()
    if now < certificate.not_valid_before_utc:
        raise CertificateRejected(
            CertificateRejectReason.NOT_YET_VALID,
            f"{which}{subject!r} valid from {certificate.not_valid_before_utc.isoformat()}",
        )
    if now > certificate.not_valid_after_utc:
        raise CertificateRejected(
            CertificateRejectReason.EXPIRED,
            f"{which}{subject!r} expired {certificate.not_valid_after_utc.isoformat()}",
        )


# --- Identity binding (RFC 4945 3.1) -----------------------------------------------------


def _subject_alt_names(certificate: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def identity_matches(certificate: x509.Certificate, id_type: int, id_data: bytes) -> bool:
    """Whether an IDi/IDr payload names the identity the certificate vouches for.

    RFC 4945 3.1: the ID must be backed by the certificate, else a peer with
    any valid certificate could claim any identity. Matching is exact, with
    no wildcard expansion: a wildcard SAN would let one certificate stand for
    many peers, which a remote-access concentrator must not allow by default.

    - ID_FQDN: a dNSName SAN, case-insensitive (DNS names are, RFC 4343).
    - ID_RFC822_ADDR: an rfc822Name SAN; the domain case-insensitive, the
      local part exact (RFC 5321 2.4).
    - ID_IPV4_ADDR / ID_IPV6_ADDR: an iPAddress SAN holding that address.
    - ID_DER_ASN1_DN: the subject DN, DER octet for octet.
    - ID_DER_ASN1_GN, ID_KEY_ID, anything else: False; a key ID is not a
      certificate identity, and GN matching is not implemented.
    """
    if id_type == IdType.ID_DER_ASN1_DN:
        return bool(id_data) and id_data == certificate.subject.public_bytes()
    sans = _subject_alt_names(certificate)
    if sans is None:
        return False
    if id_type == IdType.ID_FQDN:
        fqdn = _ascii(id_data)
        return fqdn is not None and any(
            name.lower() == fqdn.lower() for name in sans.get_values_for_type(x509.DNSName)
        )
    if id_type == IdType.ID_RFC822_ADDR:
        address = _ascii(id_data)
        return address is not None and any(
            _same_email(address, san) for san in sans.get_values_for_type(x509.RFC822Name)
        )
    if id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
        if len(id_data) != (4 if id_type == IdType.ID_IPV4_ADDR else 16):
            return False
        ip = ipaddress.ip_address(id_data)
        return any(san == ip for san in sans.get_values_for_type(x509.IPAddress))
    return False


def _ascii(data: bytes) -> str | None:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text or None


def _same_email(a: str, b: str) -> bool:
    local_a, at_a, domain_a = a.rpartition("@")
    local_b, at_b, domain_b = b.rpartition("@")
    if not (at_a and at_b):
        return False
    return local_a == local_b and domain_a.lower() == domain_b.lower()


def certificate_request(ca_certificates: tuple[x509.Certificate, ...]) -> CertificateRequest:
    """CERTREQ for X.509: SHA-1 hashes of the CAs' SubjectPublicKeyInfo, concatenated
    (RFC 7296 3.7)."""
    data = b"".join(
        hashlib.sha1(
            ca.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            usedforsecurity=False,
        ).digest()
        for ca in ca_certificates
    )
    return CertificateRequest(CertificateEncoding.X509_CERTIFICATE_SIGNATURE, data)
