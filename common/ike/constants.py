"""IANA "Internet Key Exchange Version 2 (IKEv2) Parameters" registries.

Member names are the IANA names verbatim (Python case where the registry has
spaces), each registry with the RFC section that defines its use. Only the
values this implementation meets are listed; a value missing here is handled
as "unknown" by the codecs, never as an error by itself.
https://www.iana.org/assignments/ikev2-parameters/ikev2-parameters.xhtml
"""

from __future__ import annotations

from enum import IntEnum


class TransformType(IntEnum):
    """Transform types, RFC 7296 section 3.3.2."""

    ENCR = 1
    PRF = 2
    INTEG = 3
    KE = 4  # "Diffie-Hellman Group" in RFC 7296; renamed KE by RFC 9370
    ESN = 5


class ExchangeType(IntEnum):
    """IKEv2 Exchange Types, RFC 7296 section 3.1."""

    IKE_SA_INIT = 34
    IKE_AUTH = 35
    CREATE_CHILD_SA = 36
    INFORMATIONAL = 37


class PayloadType(IntEnum):
    """IKEv2 Payload Types, RFC 7296 section 3.2 (SKF: RFC 7383 section 2.5)."""

    NO_NEXT_PAYLOAD = 0
    SA = 33
    KE = 34
    IDI = 35
    IDR = 36
    CERT = 37
    CERTREQ = 38
    AUTH = 39
    NONCE = 40
    NOTIFY = 41
    DELETE = 42
    VENDOR_ID = 43
    TSI = 44
    TSR = 45
    SK = 46
    CP = 47
    EAP = 48
    SKF = 53


class ProtocolId(IntEnum):
    """Security Protocol Identifiers, RFC 7296 section 3.3.1."""

    IKE = 1
    AH = 2
    ESP = 3


class EncryptionAlgorithm(IntEnum):
    """Transform Type 1, Encryption Algorithm Transform IDs."""

    ENCR_3DES = 3  # RFC 2451; listed only to be named in logs, never offered
    ENCR_NULL = 11  # RFC 2410; never offered
    ENCR_AES_CBC = 12  # RFC 3602 (ESP), RFC 7296 section 3.3.2 (IKE)
    ENCR_AES_GCM_16 = 20  # RFC 4106 (ESP), RFC 5282 (IKE)
    ENCR_CHACHA20_POLY1305 = 28  # RFC 7634


class PseudorandomFunction(IntEnum):
    """Transform Type 2, Pseudorandom Function Transform IDs (RFC 7296 3.3.2, RFC 4868)."""

    PRF_HMAC_MD5 = 1
    PRF_HMAC_SHA1 = 2
    PRF_AES128_XCBC = 4
    PRF_HMAC_SHA2_256 = 5
    PRF_HMAC_SHA2_384 = 6
    PRF_HMAC_SHA2_512 = 7


class IntegrityAlgorithm(IntEnum):
    """Transform Type 3, Integrity Algorithm Transform IDs."""

    NONE = 0  # combined-mode (AEAD) ciphers carry no separate integrity transform
    AUTH_HMAC_SHA1_96 = 2  # RFC 2404; named only
    AUTH_AES_XCBC_96 = 5  # RFC 3566; named only
    AUTH_HMAC_SHA2_256_128 = 12  # RFC 4868
    AUTH_HMAC_SHA2_384_192 = 13  # RFC 4868
    AUTH_HMAC_SHA2_512_256 = 14  # RFC 4868


class KeyExchangeMethod(IntEnum):
    """Transform Type 4, Key Exchange Method Transform IDs ("Diffie-Hellman groups")."""

    NONE = 0  # RFC 7296 3.3.2: no PFS in a CREATE_CHILD_SA proposal
    MODP_2048 = 14  # RFC 3526 section 3
    ECP_256 = 19  # RFC 5903
    ECP_384 = 20  # RFC 5903
    CURVE25519 = 31  # RFC 8031


class ExtendedSequenceNumbers(IntEnum):
    """Transform Type 5, Extended Sequence Numbers Transform IDs (RFC 7296 section 3.3.2)."""

    NO_EXTENDED_SEQUENCE_NUMBERS = 0
    EXTENDED_SEQUENCE_NUMBERS = 1


class TransformAttribute(IntEnum):
    """Transform Attribute Types, RFC 7296 section 3.3.5 (always TV format, AF bit set)."""

    KEY_LENGTH = 14


class NotifyType(IntEnum):
    """Notify Message Types, RFC 7296 section 3.10.1: errors below 16384, status above."""

    UNSUPPORTED_CRITICAL_PAYLOAD = 1
    INVALID_IKE_SPI = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_SYNTAX = 7
    INVALID_MESSAGE_ID = 9
    INVALID_SPI = 11
    NO_PROPOSAL_CHOSEN = 14
    INVALID_KE_PAYLOAD = 17
    AUTHENTICATION_FAILED = 24
    SINGLE_PAIR_REQUIRED = 34
    NO_ADDITIONAL_SAS = 35
    INTERNAL_ADDRESS_FAILURE = 36
    FAILED_CP_REQUIRED = 37
    TS_UNACCEPTABLE = 38
    INVALID_SELECTORS = 39
    TEMPORARY_FAILURE = 43  # RFC 7296 2.25
    CHILD_SA_NOT_FOUND = 44  # RFC 7296 2.25
    INITIAL_CONTACT = 16384
    SET_WINDOW_SIZE = 16385
    ADDITIONAL_TS_POSSIBLE = 16386
    IPCOMP_SUPPORTED = 16387
    NAT_DETECTION_SOURCE_IP = 16388
    NAT_DETECTION_DESTINATION_IP = 16389
    COOKIE = 16390
    USE_TRANSPORT_MODE = 16391
    HTTP_CERT_LOOKUP_SUPPORTED = 16392
    REKEY_SA = 16393
    ESP_TFC_PADDING_NOT_SUPPORTED = 16394
    NON_FIRST_FRAGMENTS_ALSO = 16395
    MOBIKE_SUPPORTED = 16396  # RFC 4555
    UPDATE_SA_ADDRESSES = 16400  # RFC 4555
    MULTIPLE_AUTH_SUPPORTED = 16404  # RFC 4739
    REDIRECT_SUPPORTED = 16406  # RFC 5685
    REDIRECT = 16407  # RFC 5685
    EAP_ONLY_AUTHENTICATION = 16417  # RFC 5998
    CHILDLESS_IKEV2_SUPPORTED = 16418  # RFC 6023
    IKEV2_FRAGMENTATION_SUPPORTED = 16430  # RFC 7383
    SIGNATURE_HASH_ALGORITHMS = 16431  # RFC 7427


class IdType(IntEnum):
    """IKEv2 Identification Payload ID Types, RFC 7296 section 3.5."""

    ID_IPV4_ADDR = 1
    ID_FQDN = 2
    ID_RFC822_ADDR = 3
    ID_IPV6_ADDR = 5
    ID_DER_ASN1_DN = 9
    ID_DER_ASN1_GN = 10
    ID_KEY_ID = 11


class CertificateEncoding(IntEnum):
    """IKEv2 Certificate Encodings, RFC 7296 section 3.6."""

    X509_CERTIFICATE_SIGNATURE = 4
    RAW_RSA_KEY = 11
    HASH_AND_URL_X509_CERTIFICATE = 12
    HASH_AND_URL_X509_BUNDLE = 13


class AuthMethod(IntEnum):
    """IKEv2 Authentication Method, RFC 7296 section 3.8 (DIGITAL_SIGNATURE: RFC 7427)."""

    RSA_DIGITAL_SIGNATURE = 1
    SHARED_KEY_MESSAGE_INTEGRITY_CODE = 2
    DSS_DIGITAL_SIGNATURE = 3
    ECDSA_SHA256_P256 = 9  # RFC 4754
    ECDSA_SHA384_P384 = 10  # RFC 4754
    ECDSA_SHA512_P521 = 11  # RFC 4754
    DIGITAL_SIGNATURE = 14  # RFC 7427


class HashAlgorithm(IntEnum):
    """Hash Algorithms for SIGNATURE_HASH_ALGORITHMS, RFC 7427 section 4 (IDENTITY: RFC 8420)."""

    SHA1 = 1
    SHA2_256 = 2
    SHA2_384 = 3
    SHA2_512 = 4
    IDENTITY = 5


class TrafficSelectorType(IntEnum):
    """IKEv2 Traffic Selector Types, RFC 7296 section 3.13.1."""

    TS_IPV4_ADDR_RANGE = 7
    TS_IPV6_ADDR_RANGE = 8


class ConfigType(IntEnum):
    """IKEv2 Configuration Payload CFG Types, RFC 7296 section 3.15."""

    CFG_REQUEST = 1
    CFG_REPLY = 2
    CFG_SET = 3
    CFG_ACK = 4


class ConfigurationAttributeType(IntEnum):
    """IKEv2 Configuration Payload Attribute Types, RFC 7296 section 3.15.1."""

    INTERNAL_IP4_ADDRESS = 1
    INTERNAL_IP4_NETMASK = 2
    INTERNAL_IP4_DNS = 3
    INTERNAL_IP4_NBNS = 4
    INTERNAL_IP4_DHCP = 6
    APPLICATION_VERSION = 7
    INTERNAL_IP6_ADDRESS = 8
    INTERNAL_IP6_DNS = 10
    INTERNAL_IP6_DHCP = 12
    INTERNAL_IP4_SUBNET = 13
    SUPPORTED_ATTRIBUTES = 14
    INTERNAL_IP6_SUBNET = 15
    INTERNAL_DNS_DOMAIN = 25  # RFC 8598 split DNS
    INTERNAL_DNSSEC_TA = 26  # RFC 8598


class IpProtocol(IntEnum):
    """IANA "Assigned Internet Protocol Numbers" used as ESP next header (RFC 4303 section 2.6)."""

    ICMP = 1
    IPV4 = 4  # IP-in-IP: tunnel mode carrying an IPv4 packet
    TCP = 6
    UDP = 17
    IPV6 = 41  # tunnel mode carrying an IPv6 packet
    ESP = 50
    ICMPV6 = 58
    NO_NEXT_HEADER = 59  # "dummy" packet for traffic flow confidentiality, RFC 4303 section 2.6
