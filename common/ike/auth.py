"""AUTH payload computation: the signed octets and shared-key MIC (RFC 7296 2.15).

Each peer proves its identity over the message it sent first, so both
IKE_SA_INIT messages are bound to the authenticated identities:

    InitiatorSignedOctets = RealMessage1 | NonceRData | MACedIDForI
    ResponderSignedOctets = RealMessage2 | NonceIData | MACedIDForR
    MACedIDForI = prf(SK_pi, RestOfInitIDPayload)
    MACedIDForR = prf(SK_pr, RestOfRespIDPayload)

and, for SHARED_KEY_MESSAGE_INTEGRITY_CODE (auth method 2):

    AUTH = prf( prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>)

Signature authentication (RFC 7427, auth method DIGITAL_SIGNATURE) signs the
same octets; ECDSA with SHA-256/384 and Ed25519 (RFC 8420) are implemented,
RSA-PSS is not yet.
"""

from __future__ import annotations

import hmac
from enum import Enum
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from common.ike.constants import PseudorandomFunction
from common.ike.keys import prf

# RFC 7296 2.15: the 17 ASCII characters, without a terminating NUL.
KEY_PAD: Final = b"Key Pad for IKEv2"


def signed_octets(
    real_message: bytes,
    peer_nonce: bytes,
    prf_alg: PseudorandomFunction,
    sk_p: bytes,
    id_payload_body: bytes,
) -> bytes:
    """The octets an AUTH payload covers (RFC 7296 2.15).

    Args:
        real_message: our own first message as sent, from the IKE header to
            the end (the IKE_SA_INIT request for the initiator, the response for
            the responder), without a non-ESP marker.
        peer_nonce: the *other* side's Nonce Data (Nr for the initiator's AUTH,
            Ni for the responder's).
        prf_alg: the IKE SA's PRF.
        sk_p: SK_pi for the initiator's AUTH, SK_pr for the responder's.
        id_payload_body: our ID payload without its generic payload header:
            ID Type, three RESERVED octets, identification data
            (RFC 7296 2.15 "RestOfInitIDPayload").
    """
    return real_message + peer_nonce + prf(prf_alg, sk_p, id_payload_body)


def psk_auth(prf_alg: PseudorandomFunction, psk: bytes, octets: bytes) -> bytes:
    """AUTH data for SHARED_KEY_MESSAGE_INTEGRITY_CODE (RFC 7296 2.15).

    The inner prf with the "Key Pad for IKEv2" constant turns a PSK of any
    length into a PRF key, so a PSK is never used directly as a MAC key.

    Raises:
        ValueError: for an empty PSK; RFC 7296 2.15 warns that a PSK is only as
            strong as its entropy, and an empty one is a configuration mistake.
    """
    if not psk:
        raise ValueError("the pre-shared key is empty")
    return prf(prf_alg, prf(prf_alg, psk, KEY_PAD), octets)


def verify_psk_auth(
    prf_alg: PseudorandomFunction, psk: bytes, octets: bytes, auth_data: bytes
) -> bool:
    """Whether the peer's AUTH data matches the PSK MIC over ``octets``.

    The comparison is constant-time (``hmac.compare_digest``), so a forger
    learns nothing from how long a wrong guess took. A False answer means
    AUTHENTICATION_FAILED (RFC 7296 2.21.2); the caller sends or raises it.
    """
    return hmac.compare_digest(psk_auth(prf_alg, psk, octets), auth_data)


def id_payload_body(id_type: int, data: bytes) -> bytes:
    """RestOfIDPayload for an ID (RFC 7296 3.5): ID Type, three zero RESERVED octets, data."""
    if not 0 <= id_type <= 255:
        raise ValueError(f"ID type {id_type} does not fit one octet")
    return bytes((id_type, 0, 0, 0)) + data


# --- Digital signature AUTH (RFC 7427, auth method 14) ------------------------------------


class SignatureScheme(Enum):
    """The RFC 7427 schemes we sign with: each names a key type and a hash."""

    ECDSA_SHA256 = "ecdsa-with-sha256"
    ECDSA_SHA384 = "ecdsa-with-sha384"
    ED25519 = "ed25519"  # RFC 8420: signs the octets themselves ("Identity" hash)


# DER AlgorithmIdentifier of each scheme, sent before the signature (RFC 7427 section 3,
# byte strings listed in its Appendix A; Ed25519 from RFC 8420 section 2 / RFC 8410).
ALGORITHM_IDENTIFIERS: Final[dict[SignatureScheme, bytes]] = {
    # SEQUENCE { OID 1.2.840.10045.4.3.2 } (RFC 7427 Appendix A.3; no parameters, RFC 5758 3.2)
    SignatureScheme.ECDSA_SHA256: bytes.fromhex("300a06082a8648ce3d040302"),
    # SEQUENCE { OID 1.2.840.10045.4.3.3 } (RFC 7427 Appendix A.3)
    SignatureScheme.ECDSA_SHA384: bytes.fromhex("300a06082a8648ce3d040303"),
    # SEQUENCE { OID 1.3.101.112 } (RFC 8410 section 3: parameters MUST be absent)
    SignatureScheme.ED25519: bytes.fromhex("300506032b6570"),
}

_SCHEME_BY_IDENTIFIER: Final = {der: scheme for scheme, der in ALGORITHM_IDENTIFIERS.items()}

SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
VerifyingKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


def signature_auth_data(scheme: SignatureScheme, private_key: SigningKey, octets: bytes) -> bytes:
    """Authentication Data for auth method DIGITAL_SIGNATURE (RFC 7427 section 3).

    Layout: one octet giving the AlgorithmIdentifier's length, the DER
    AlgorithmIdentifier, then the signature over the signed octets. ECDSA
    signatures are the DER Ecdsa-Sig-Value (RFC 7427 section 3), which is what
    ``cryptography`` produces.

    Raises:
        ValueError: when the key does not fit the scheme.
    """
    algorithm_identifier = ALGORITHM_IDENTIFIERS[scheme]
    if scheme is SignatureScheme.ED25519:
        if not isinstance(private_key, ed25519.Ed25519PrivateKey):
            raise ValueError("the Ed25519 scheme needs an Ed25519 key")
        signature = private_key.sign(octets)
    else:
        if not isinstance(private_key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{scheme.value} needs an ECDSA key")
        signature = private_key.sign(octets, ec.ECDSA(_ECDSA_HASH[scheme]))
    return bytes((len(algorithm_identifier),)) + algorithm_identifier + signature


def verify_signature_auth(public_key: VerifyingKey, auth_data: bytes, octets: bytes) -> bool:
    """Whether RFC 7427 Authentication Data is a valid signature by ``public_key``.

    Only the schemes in ``ALGORITHM_IDENTIFIERS`` are accepted, and only with
    a key of the matching type, so a peer cannot pick a weaker algorithm than
    the one its certificate's key implies. False means AUTHENTICATION_FAILED
    (RFC 7296 2.21.2).
    """
    if not auth_data:
        return False
    length = auth_data[0]
    scheme = _SCHEME_BY_IDENTIFIER.get(auth_data[1 : 1 + length])
    signature = auth_data[1 + length :]
    if scheme is None or not signature:
        return False
    try:
        if scheme is SignatureScheme.ED25519:
            if not isinstance(public_key, ed25519.Ed25519PublicKey):
                return False
            public_key.verify(signature, octets)
        else:
            if not isinstance(public_key, ec.EllipticCurvePublicKey):
                return False
            public_key.verify(signature, octets, ec.ECDSA(_ECDSA_HASH[scheme]))
    except InvalidSignature:
        return False
    return True


_ECDSA_HASH: Final[dict[SignatureScheme, hashes.HashAlgorithm]] = {
    SignatureScheme.ECDSA_SHA256: hashes.SHA256(),
    SignatureScheme.ECDSA_SHA384: hashes.SHA384(),
}
