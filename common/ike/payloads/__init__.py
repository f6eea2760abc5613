"""IKEv2 payload codecs, one module per family (RFC 7296 section 3).

Each payload is a frozen dataclass with a ``payload_type``; each family has
``pull_<payload>(buf, length)`` reading the ``length`` body octets after the
generic payload header and ``push_<payload>(buf, payload)`` writing them back.
The generic header and the payload chain are ``common.ike.message``'s.
"""

from __future__ import annotations

from common.ike.payloads.cp import ConfigurationAttribute, ConfigurationPayload
from common.ike.payloads.delete import Delete
from common.ike.payloads.id_auth import (
    Authentication,
    Certificate,
    CertificateRequest,
    IdInitiator,
    IdPayload,
    IdResponder,
)
from common.ike.payloads.ke import KeyExchange, Nonce
from common.ike.payloads.misc import Eap, UnknownPayload, VendorId
from common.ike.payloads.notify import Notify
from common.ike.payloads.sa import Proposal, SecurityAssociation, Transform, TransformAttr
from common.ike.payloads.ts import (
    TrafficSelector,
    TsInitiator,
    TsPayload,
    TsResponder,
    UnknownTrafficSelector,
)

KnownPayload = (
    SecurityAssociation
    | KeyExchange
    | IdInitiator
    | IdResponder
    | Certificate
    | CertificateRequest
    | Authentication
    | Nonce
    | Notify
    | Delete
    | VendorId
    | TsInitiator
    | TsResponder
    | ConfigurationPayload
    | Eap
)

__all__ = [
    "Authentication",
    "Certificate",
    "CertificateRequest",
    "ConfigurationAttribute",
    "ConfigurationPayload",
    "Delete",
    "Eap",
    "IdInitiator",
    "IdPayload",
    "IdResponder",
    "KeyExchange",
    "KnownPayload",
    "Nonce",
    "Notify",
    "Proposal",
    "SecurityAssociation",
    "TrafficSelector",
    "Transform",
    "TransformAttr",
    "TsInitiator",
    "TsPayload",
    "TsResponder",
    "UnknownPayload",
    "UnknownTrafficSelector",
    "VendorId",
]
