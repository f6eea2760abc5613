"""IANA "Internet Key Exchange Version 2 (IKEv2) Parameters" registries.

Only the transform registries the ESP core shares live here for now; the IKEv2
core (issue 3) adds the rest. Member names are the IANA names verbatim.
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


class EncryptionAlgorithm(IntEnum):
    """Transform Type 1, Encryption Algorithm Transform IDs."""

    ENCR_AES_CBC = 12  # RFC 3602 (ESP), RFC 7296 section 3.3.2 (IKE)
    ENCR_AES_GCM_16 = 20  # RFC 4106 (ESP), RFC 5282 (IKE)
    ENCR_CHACHA20_POLY1305 = 28  # RFC 7634


class IntegrityAlgorithm(IntEnum):
    """Transform Type 3, Integrity Algorithm Transform IDs."""

    NONE = 0  # combined-mode (AEAD) ciphers carry no separate integrity transform
    AUTH_HMAC_SHA2_256_128 = 12  # RFC 4868
    AUTH_HMAC_SHA2_384_192 = 13  # RFC 4868
    AUTH_HMAC_SHA2_512_256 = 14  # RFC 4868


class ExtendedSequenceNumbers(IntEnum):
    """Transform Type 5, Extended Sequence Numbers Transform IDs (RFC 7296 section 3.3.2)."""

    NO_EXTENDED_SEQUENCE_NUMBERS = 0
    EXTENDED_SEQUENCE_NUMBERS = 1


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
