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
same octets; ECDSA with SHA-256/384, Ed25519 (RFC 8420) and RSASSA-PSS with
SHA-256/384/512 are implemented. RSASSA-PKCS1-v1_5 is deliberately not: PSS
is the RSA scheme with a security proof, RFC 7427 Appendix A lists it, and it
covers every RSA key; add v1.5 only if an interop peer needs it.

RFC 7427 section 4 also defines the SIGNATURE_HASH_ALGORITHMS notify, which
each side sends in IKE_SA_INIT to list the hashes it can verify; the codec and
the choice of a scheme for our key from the peer's list are at the end.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence
from enum import Enum
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from common.ike.constants import HashAlgorithm, PseudorandomFunction
from common.ike.errors import MalformedMessage
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
    RSA_PSS_SHA256 = "rsassa-pss-sha256"  # RFC 7427 Appendix A.4.3, RFC 4055 section 3.1
    RSA_PSS_SHA384 = "rsassa-pss-sha384"
    RSA_PSS_SHA512 = "rsassa-pss-sha512"


def _rsassa_pss_identifier(hash_oid_last: int, salt_length: int) -> bytes:
    """DER AlgorithmIdentifier for id-RSASSA-PSS with explicit SHA-2 parameters (RFC 4055 3.1).

    RFC 7427 requires the parameters to be present (section 3: the receiver
    must know hash, MGF and salt before it verifies), so they are spelled out
    even where they equal nothing like RFC 4055's SHA-1 defaults:

        SEQUENCE {                                 -- AlgorithmIdentifier
          OID 1.2.840.113549.1.1.10                -- id-RSASSA-PSS
          SEQUENCE {                               -- RSASSA-PSS-params
            [0] SEQUENCE { OID sha-2, NULL }       -- hashAlgorithm
            [1] SEQUENCE { OID 1.2.840.113549.1.1.8  -- maskGenAlgorithm id-mgf1
                           SEQUENCE { OID sha-2, NULL } }
            [2] INTEGER salt_length                -- saltLength = hash length
          } }                                      -- trailerField 1 is the DEFAULT: DER omits it

    The hash AlgorithmIdentifiers carry an explicit NULL, as OpenSSL and
    strongSwan write them and as RFC 7427 Appendix A.4.3 lists the octets;
    the unit tests pin the SHA-256 string to that appendix and all three to
    what OpenSSL puts in an RSA-PSS certificate.
    """
    hash_identifier = (
        bytes.fromhex("300d06096086480165030402") + bytes((hash_oid_last,)) + b"\x05\x00"
    )
    mgf1 = bytes.fromhex("301a06092a864886f70d010108") + hash_identifier
    params = (
        b"\xa0" + bytes((len(hash_identifier),)) + hash_identifier
        + b"\xa1" + bytes((len(mgf1),)) + mgf1
        + b"\xa2\x03\x02\x01" + bytes((salt_length,))
    )  # fmt: skip
    body = bytes.fromhex("06092a864886f70d01010a") + b"\x30" + bytes((len(params),)) + params
    return b"\x30" + bytes((len(body),)) + body


# DER AlgorithmIdentifier of each scheme, sent before the signature (RFC 7427 section 3,
# byte strings listed in its Appendix A; Ed25519 from RFC 8420 section 2 / RFC 8410).
ALGORITHM_IDENTIFIERS: Final[dict[SignatureScheme, bytes]] = {
    # SEQUENCE { OID 1.2.840.10045.4.3.2 } (RFC 7427 Appendix A.3; no parameters, RFC 5758 3.2)
    SignatureScheme.ECDSA_SHA256: bytes.fromhex("300a06082a8648ce3d040302"),
    # SEQUENCE { OID 1.2.840.10045.4.3.3 } (RFC 7427 Appendix A.3)
    SignatureScheme.ECDSA_SHA384: bytes.fromhex("300a06082a8648ce3d040303"),
    # SEQUENCE { OID 1.3.101.112 } (RFC 8410 section 3: parameters MUST be absent)
    SignatureScheme.ED25519: bytes.fromhex("300506032b6570"),
    # RSASSA-PSS, MGF1 with the same hash, salt length = hash length (RFC 7427 A.4.3 for
    # SHA-256; RFC 8017 9.1 recommends sLen = hLen). sha256/384/512 OIDs end .2.1/.2.2/.2.3.
    SignatureScheme.RSA_PSS_SHA256: _rsassa_pss_identifier(1, 32),
    SignatureScheme.RSA_PSS_SHA384: _rsassa_pss_identifier(2, 48),
    SignatureScheme.RSA_PSS_SHA512: _rsassa_pss_identifier(3, 64),
}

_SCHEME_BY_IDENTIFIER: Final = {der: scheme for scheme, der in ALGORITHM_IDENTIFIERS.items()}

SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
VerifyingKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey

# The RSA floor cryptography's X.509 verifier applies too (Policy.minimum_rsa_modulus):
# an AUTH signature is no stronger than the key that made it.
MIN_RSA_KEY_BITS: Final = 2048

_HASH: Final[dict[SignatureScheme, hashes.HashAlgorithm]] = {
    SignatureScheme.ECDSA_SHA256: hashes.SHA256(),
    SignatureScheme.ECDSA_SHA384: hashes.SHA384(),
    SignatureScheme.RSA_PSS_SHA256: hashes.SHA256(),
    SignatureScheme.RSA_PSS_SHA384: hashes.SHA384(),
    SignatureScheme.RSA_PSS_SHA512: hashes.SHA512(),
}

_RSA_PSS_SCHEMES: Final = frozenset(
    {SignatureScheme.RSA_PSS_SHA256, SignatureScheme.RSA_PSS_SHA384, SignatureScheme.RSA_PSS_SHA512}
)


def _pss(scheme: SignatureScheme) -> padding.PSS:
    """The PSS parameters ALGORITHM_IDENTIFIERS announces: MGF1 with the same hash, sLen = hLen.

    A fixed salt length (not ``PSS.AUTO``) on verification means a signature
    made with other parameters than the ones the identifier states is refused.
    """
    algorithm = _HASH[scheme]
    return padding.PSS(mgf=padding.MGF1(algorithm), salt_length=algorithm.digest_size)


def signature_auth_data(scheme: SignatureScheme, private_key: SigningKey, octets: bytes) -> bytes:
    """Authentication Data for auth method DIGITAL_SIGNATURE (RFC 7427 section 3).

    Layout: one octet giving the AlgorithmIdentifier's length, the DER
    AlgorithmIdentifier, then the signature over the signed octets. ECDSA
    signatures are the DER Ecdsa-Sig-Value (RFC 7427 section 3), which is what
    ``cryptography`` produces; RSA-PSS signatures are the RFC 8017 8.1.1
    octet string, as long as the modulus.

    Raises:
        ValueError: when the key does not fit the scheme, or an RSA key is
            shorter than ``MIN_RSA_KEY_BITS``.
    """
    algorithm_identifier = ALGORITHM_IDENTIFIERS[scheme]
    if scheme is SignatureScheme.ED25519:
        if not isinstance(private_key, ed25519.Ed25519PrivateKey):
            raise ValueError("the Ed25519 scheme needs an Ed25519 key")
        signature = private_key.sign(octets)
    elif scheme in _RSA_PSS_SCHEMES:
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise ValueError(f"{scheme.value} needs an RSA key")
        if private_key.key_size < MIN_RSA_KEY_BITS:
            raise ValueError(f"RSA key of {private_key.key_size} bits < {MIN_RSA_KEY_BITS}")
        signature = private_key.sign(octets, _pss(scheme), _HASH[scheme])
    else:
        if not isinstance(private_key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{scheme.value} needs an ECDSA key")
        signature = private_key.sign(octets, ec.ECDSA(_HASH[scheme]))
    return bytes((len(algorithm_identifier),)) + algorithm_identifier + signature


def verify_signature_auth(public_key: VerifyingKey, auth_data: bytes, octets: bytes) -> bool:
    """Whether RFC 7427 Authentication Data is a valid signature by ``public_key``.

    Only the schemes in ``ALGORITHM_IDENTIFIERS`` are accepted, and only with
    a key of the matching type, so a peer cannot pick a weaker algorithm than
    the one its certificate's key implies. RSA keys below ``MIN_RSA_KEY_BITS``
    are refused whatever the signature. False means AUTHENTICATION_FAILED
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
        elif scheme in _RSA_PSS_SCHEMES:
            if not isinstance(public_key, rsa.RSAPublicKey):
                return False
            if public_key.key_size < MIN_RSA_KEY_BITS:
                return False
            public_key.verify(signature, octets, _pss(scheme), _HASH[scheme])
        else:
            if not isinstance(public_key, ec.EllipticCurvePublicKey):
                return False
            public_key.verify(signature, octets, ec.ECDSA(_HASH[scheme]))
    except InvalidSignature:
        return False
    return True


# --- SIGNATURE_HASH_ALGORITHMS (RFC 7427 section 4) ---------------------------------------

# The hash each scheme announces in SIGNATURE_HASH_ALGORITHMS terms (RFC 8420: Ed25519 is
# "Identity", the signature covers the octets themselves).
SCHEME_HASH: Final[dict[SignatureScheme, HashAlgorithm]] = {
    SignatureScheme.ECDSA_SHA256: HashAlgorithm.SHA2_256,
    SignatureScheme.ECDSA_SHA384: HashAlgorithm.SHA2_384,
    SignatureScheme.ED25519: HashAlgorithm.IDENTITY,
    SignatureScheme.RSA_PSS_SHA256: HashAlgorithm.SHA2_256,
    SignatureScheme.RSA_PSS_SHA384: HashAlgorithm.SHA2_384,
    SignatureScheme.RSA_PSS_SHA512: HashAlgorithm.SHA2_512,
}

# What we send in our SIGNATURE_HASH_ALGORITHMS notify: hashes we can verify with *every*
# key type a peer may pair them with. SHA2_512 is left out because ecdsa-with-SHA512 is not
# in ALGORITHM_IDENTIFIERS; announcing it would invite an ECDSA peer to sign with a scheme we
# then refuse. RSA-PSS with SHA-512 is still verified when a peer uses it unasked.
SUPPORTED_HASH_ALGORITHMS: Final[tuple[HashAlgorithm, ...]] = (
    HashAlgorithm.SHA2_256,
    HashAlgorithm.SHA2_384,
    HashAlgorithm.IDENTITY,
)


def encode_signature_hash_algorithms(algorithms: Iterable[int]) -> bytes:
    """Notification Data of SIGNATURE_HASH_ALGORITHMS: 2-octet hash IDs (RFC 7427 section 4).

    Raises:
        ValueError: for an ID that does not fit 16 bits (a caller bug).
    """
    data = bytearray()
    for algorithm in algorithms:
        if not 0 <= algorithm <= 0xFFFF:
            raise ValueError(f"hash algorithm {algorithm} does not fit 16 bits")
        data += int(algorithm).to_bytes(2, "big")
    return bytes(data)


def decode_signature_hash_algorithms(data: bytes) -> tuple[int, ...]:
    """The hash algorithm IDs in a SIGNATURE_HASH_ALGORITHMS Notification Data.

    Known IDs come back as ``HashAlgorithm`` members and unknown ones as plain
    ints (constants.py: an unregistered value is "unknown", not an error);
    the peer's order is kept. An empty list parses to ``()``: it is odd but
    well-formed, and simply leaves no signature scheme to choose.

    Raises:
        MalformedMessage: when the length is odd, so the data is not a list of
            2-octet IDs (RFC 7427 section 4).
    """
    if len(data) % 2:
        raise MalformedMessage(f"SIGNATURE_HASH_ALGORITHMS data of odd length {len(data)}")
    algorithms: list[int] = []
    for offset in range(0, len(data), 2):
        value = int.from_bytes(data[offset : offset + 2], "big")
        try:
            algorithms.append(HashAlgorithm(value))
        except ValueError:
            algorithms.append(value)
    return tuple(algorithms)


def signature_schemes_for_key(key: SigningKey | VerifyingKey) -> tuple[SignatureScheme, ...]:
    """The schemes a key can sign with, most preferred first.

    ECDSA prefers the hash that matches the curve's strength (RFC 5656 6.2.1
    style: P-256 with SHA-256, P-384 with SHA-384) and falls back to the other;
    RSA prefers SHA-256, the one hash every RFC 7427 peer is known to support.
    """
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return (SignatureScheme.ED25519,)
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return (
            SignatureScheme.RSA_PSS_SHA256,
            SignatureScheme.RSA_PSS_SHA384,
            SignatureScheme.RSA_PSS_SHA512,
        )
    if key.curve.key_size >= 384:
        return (SignatureScheme.ECDSA_SHA384, SignatureScheme.ECDSA_SHA256)
    return (SignatureScheme.ECDSA_SHA256, SignatureScheme.ECDSA_SHA384)


def choose_signature_hash(
    preferred: Sequence[int], peer_algorithms: Iterable[int]
) -> HashAlgorithm | int | None:
    """The first hash in our ``preferred`` order that the peer also announced, or None."""
    offered = set(peer_algorithms)
    return next((algorithm for algorithm in preferred if algorithm in offered), None)


def choose_signature_scheme(
    private_key: SigningKey, peer_algorithms: Iterable[int]
) -> SignatureScheme | None:
    """The scheme to sign our AUTH with, given the peer's SIGNATURE_HASH_ALGORITHMS.

    RFC 7427 section 4: the signer uses a hash the verifier announced. None
    means no common hash for this key; the caller then falls back to another
    method or gives up, which is a policy decision this function does not make.
    When the peer sent no notify at all the caller decides too (pass ``()``).
    """
    schemes = signature_schemes_for_key(private_key)
    chosen = choose_signature_hash([SCHEME_HASH[s] for s in schemes], peer_algorithms)
    return next((s for s in schemes if SCHEME_HASH[s] == chosen), None)
