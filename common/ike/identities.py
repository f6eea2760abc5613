"""IKE identities as configurations write them (concentrator, client profiles) and look them up.

A configuration names a peer with one string; its IKE ID type follows from its
shape, the way strongSwan's ``identification_create_from_string`` decides:

- an IPv4 or IPv6 address: ID_IPV4_ADDR / ID_IPV6_ADDR (the packed address);
- anything with an ``@``: ID_RFC822_ADDR (``alice@example.com``);
- anything else: ID_FQDN (``vpn.example.com``).

Lookups compare ``identity_key`` values: the ID type plus the text, lower-cased
for FQDN and RFC822 names, because strongSwan compares those IDs without regard
to case and a user must not lose their sticky address (or their account) for
typing ``Alice@Example.com`` in their client.
"""

from __future__ import annotations

import ipaddress
from typing import Final

from common.ike.constants import IdType
from common.ike.policy import Identity

_TEXT_TYPES = (IdType.ID_FQDN, IdType.ID_RFC822_ADDR)


def parse_identity(text: str) -> Identity:
    """The IKE identity a configuration string names (see the module docstring).

    Raises:
        ValueError: an empty or non-ASCII name, or one with whitespace; IKE
            carries FQDN and RFC822 IDs as ASCII (RFC 7296 3.5).
    """
    if not text:
        raise ValueError("empty identity")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        id_type = IdType.ID_IPV4_ADDR if address.version == 4 else IdType.ID_IPV6_ADDR
        return Identity(id_type, address.packed)
    if not text.isascii() or any(ch.isspace() for ch in text):
        raise ValueError(f"identity {text!r} must be ASCII without spaces")
    return Identity.rfc822(text) if "@" in text else Identity.fqdn(text)


def identity_text(identity: Identity) -> str:
    """The identity as a configuration would write it (addresses in text form)."""
    if identity.id_type == IdType.ID_IPV4_ADDR and len(identity.data) == 4:
        return str(ipaddress.IPv4Address(identity.data))
    if identity.id_type == IdType.ID_IPV6_ADDR and len(identity.data) == 16:
        return str(ipaddress.IPv6Address(identity.data))
    return str(identity)


def identity_key(identity: Identity) -> str:
    """A canonical string naming ``identity``: the lookup key and the lease owner.

    Two identities a peer could send for the same user map to the same key
    (case of FQDN/RFC822 names); different ID types never do, so an FQDN can
    not pass for an e-mail address that happens to be spelled alike.
    """
    text = identity_text(identity)
    if identity.id_type in _TEXT_TYPES:
        text = text.lower()
    return f"{identity.id_type.name}:{text}"


PATTERN: Final = "{n}"  # a load-test identity family: user-{n}@loadtest (issue 6)


def parse_identity_pattern(text: str) -> Identity:
    """``parse_identity`` for an id that may hold one ``{n}`` (checked with n = 0).

    The concentrator's ``[[users]]`` ids and the load tester's profile ids
    follow the same rules, so both ask here.

    Raises:
        ValueError: more than one ``{n}``, another placeholder, an id that does
            not parse, or a pattern in an IP address id (one line each).
    """
    if text.count(PATTERN) > 1:
        raise ValueError(f"{text!r}: at most one {PATTERN}")
    rest = text.replace(PATTERN, "")
    if "{" in rest or "}" in rest:
        raise ValueError(f"{text!r}: the only placeholder is {PATTERN}")
    identity = parse_identity(text.replace(PATTERN, "0"))
    if PATTERN in text and identity.id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
        raise ValueError(f"{text!r}: patterns are for FQDN and e-mail ids")
    return identity
