"""Configuration payload semantics: the road warrior's address, DNS and split include.

``common.ike.payloads.cp`` moves attributes as raw bytes; this module gives them
meaning (RFC 7296 3.15, 3.15.1 and RFC 8598 for INTERNAL_DNS_DOMAIN):

- the client builds a CFG_REQUEST (``build_cp_request``) and reads the
  concentrator's CFG_REPLY (``parse_cp_reply``) into an ``AssignedConfig``;
- the concentrator reads what was asked for (``requested``) and answers
  (``build_cp_reply``).

``parse_cp_reply`` reads peer input, so it raises only ``MalformedMessage``
(STYLE.md); the builders take our own values, so bad ones are API misuse
(``ValueError``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final, TypeAlias

from common.ike.constants import ConfigType, ConfigurationAttributeType
from common.ike.errors import MalformedMessage
from common.ike.payloads.cp import ConfigurationAttribute, ConfigurationPayload

IpAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

_Attr = ConfigurationAttributeType

# RFC 7296 3.15.1 (table) and RFC 8598 4.1: the lengths each attribute may have.
# An empty value is how a CFG_REQUEST asks for "any"; RFC 7296 allows it in the
# table for most types, so a reply with an empty one is not malformed, just empty.
# None means "any length" (multi-valued or free-form types).
_ALLOWED_LENGTHS: Final[dict[int, frozenset[int] | None]] = {
    _Attr.INTERNAL_IP4_ADDRESS: frozenset({0, 4}),
    _Attr.INTERNAL_IP4_NETMASK: frozenset({0, 4}),
    _Attr.INTERNAL_IP4_DNS: frozenset({0, 4}),
    _Attr.INTERNAL_IP4_NBNS: frozenset({0, 4}),
    _Attr.INTERNAL_IP4_DHCP: frozenset({0, 4}),
    _Attr.APPLICATION_VERSION: None,
    _Attr.INTERNAL_IP6_ADDRESS: frozenset({0, 17}),
    _Attr.INTERNAL_IP6_DNS: frozenset({0, 16}),
    _Attr.INTERNAL_IP6_DHCP: frozenset({0, 16}),
    _Attr.INTERNAL_IP4_SUBNET: frozenset({0, 8}),
    _Attr.SUPPORTED_ATTRIBUTES: None,  # a multiple of 2, checked below
    _Attr.INTERNAL_IP6_SUBNET: frozenset({17}),  # RFC 7296 3.15.1: "17 octets", no empty form
    _Attr.INTERNAL_DNS_DOMAIN: None,  # RFC 8598 4.1: "0 or more"
    _Attr.INTERNAL_DNSSEC_TA: None,  # RFC 8598 4.2: variable, not interpreted here
}


@dataclass(frozen=True, slots=True)
class AssignedConfig:
    """What the concentrator assigns to a client in its CFG_REPLY.

    Attributes:
        addresses_v4: inner IPv4 addresses (INTERNAL_IP4_ADDRESS); usually one.
        addresses_v6: inner IPv6 addresses with their prefix length
            (INTERNAL_IP6_ADDRESS carries both, RFC 7296 3.15.1).
        dns_servers: INTERNAL_IP4_DNS and INTERNAL_IP6_DNS, in reply order.
        subnets: the protected networks (INTERNAL_IP4_SUBNET,
            INTERNAL_IP6_SUBNET): a split-include hint for the client's routes.
            RFC 7296 3.15.2 makes them advisory; the TS still decide.
        dns_domains: split-DNS domains (INTERNAL_DNS_DOMAIN, RFC 8598), in
            presentation format ("corp.example").
    """

    addresses_v4: tuple[ipaddress.IPv4Address, ...] = ()
    addresses_v6: tuple[ipaddress.IPv6Interface, ...] = ()
    dns_servers: tuple[IpAddress, ...] = ()
    subnets: tuple[IpNetwork, ...] = ()
    dns_domains: tuple[str, ...] = ()


def build_cp_request(
    *, ipv4: bool = True, ipv6: bool = False, dns: bool = True, split_dns: bool = False
) -> ConfigurationPayload:
    """The client's CFG_REQUEST, asking for an inner address and DNS servers.

    Every attribute is empty: RFC 7296 3.15.1 lets a request leave the value
    out to ask the responder to pick one.

    Args:
        ipv4: ask for INTERNAL_IP4_ADDRESS (and INTERNAL_IP4_DNS if ``dns``).
        ipv6: ask for INTERNAL_IP6_ADDRESS (and INTERNAL_IP6_DNS if ``dns``).
        dns: ask for DNS servers of each requested family.
        split_dns: add an empty INTERNAL_DNS_DOMAIN; RFC 8598 3.1 has the
            initiator signal split-DNS support this way, and a responder should
            send domains only to initiators that did.
    """
    types: list[int] = []
    if ipv4:
        types.append(_Attr.INTERNAL_IP4_ADDRESS)
    if ipv6:
        types.append(_Attr.INTERNAL_IP6_ADDRESS)
    if dns and ipv4:
        types.append(_Attr.INTERNAL_IP4_DNS)
    if dns and ipv6:
        types.append(_Attr.INTERNAL_IP6_DNS)
    if split_dns:
        types.append(_Attr.INTERNAL_DNS_DOMAIN)
    return ConfigurationPayload(
        ConfigType.CFG_REQUEST, tuple(ConfigurationAttribute(t) for t in types)
    )


def requested(payload: ConfigurationPayload) -> frozenset[int]:
    """The attribute types a CFG_REQUEST asks for, for the responder to answer.

    Values the initiator may have put in (a preferred address, RFC 7296
    3.15.1) are not returned: the pool decides. The caller dispatches on
    ``payload.cfg_type`` first; this function does not check it.
    """
    return frozenset(attr.attr_type for attr in payload.attributes)


def build_cp_reply(config: AssignedConfig) -> ConfigurationPayload:
    """The concentrator's CFG_REPLY carrying ``config`` (RFC 7296 3.15.1 layouts).

    Raises:
        ValueError: a DNS domain is not ASCII (RFC 8598 4.1 wants IDNA
            A-labels; converting is the caller's business) or is empty.
    """
    attrs: list[ConfigurationAttribute] = []
    for v4 in config.addresses_v4:
        attrs.append(ConfigurationAttribute(_Attr.INTERNAL_IP4_ADDRESS, v4.packed))
    for v6 in config.addresses_v6:
        # RFC 7296 3.15.1: 16 octets of address, then one of prefix length.
        value = v6.ip.packed + bytes((v6.network.prefixlen,))
        attrs.append(ConfigurationAttribute(_Attr.INTERNAL_IP6_ADDRESS, value))
    for server in config.dns_servers:
        dns_type = _Attr.INTERNAL_IP4_DNS if server.version == 4 else _Attr.INTERNAL_IP6_DNS
        attrs.append(ConfigurationAttribute(dns_type, server.packed))
    for subnet in config.subnets:
        if isinstance(subnet, ipaddress.IPv4Network):
            # RFC 7296 3.15.1: address then netmask, 4 octets each.
            value = subnet.network_address.packed + subnet.netmask.packed
            attrs.append(ConfigurationAttribute(_Attr.INTERNAL_IP4_SUBNET, value))
        else:
            value = subnet.network_address.packed + bytes((subnet.prefixlen,))
            attrs.append(ConfigurationAttribute(_Attr.INTERNAL_IP6_SUBNET, value))
    for domain in config.dns_domains:
        if not domain:
            raise ValueError("empty DNS domain")  # API misuse: it would mean "any"
        # RFC 8598 4.1: presentation format, A-labels, not NUL-terminated.
        attrs.append(ConfigurationAttribute(_Attr.INTERNAL_DNS_DOMAIN, domain.encode("ascii")))
    return ConfigurationPayload(ConfigType.CFG_REPLY, tuple(attrs))


def parse_cp_reply(payload: ConfigurationPayload) -> AssignedConfig:
    """Read the concentrator's CFG_REPLY into an ``AssignedConfig``.

    Each attribute's length is checked against RFC 7296 3.15.1 (and RFC 8598
    4.1), including the types this client does not use, so a broken peer is
    noticed instead of half-understood. Empty values (allowed by the table)
    carry nothing and are skipped. Attribute types outside the registry are
    ignored: RFC 7296 3.15.1 gives no way to mark one as critical.

    Raises:
        MalformedMessage: the CFG type is not CFG_REPLY, or an attribute's
            length or content does not fit its type.
    """
    if payload.cfg_type != ConfigType.CFG_REPLY:
        raise MalformedMessage(f"CP of CFG type {payload.cfg_type} where CFG_REPLY was due")
    addresses_v4: list[ipaddress.IPv4Address] = []
    addresses_v6: list[ipaddress.IPv6Interface] = []
    dns_servers: list[IpAddress] = []
    subnets: list[IpNetwork] = []
    dns_domains: list[str] = []
    for attr in payload.attributes:
        _check_length(attr)
        value = attr.value
        if not value:
            continue
        if attr.attr_type == _Attr.INTERNAL_IP4_ADDRESS:
            addresses_v4.append(ipaddress.IPv4Address(value))
        elif attr.attr_type == _Attr.INTERNAL_IP6_ADDRESS:
            addresses_v6.append(ipaddress.IPv6Interface((value[:16], _prefix_length(value[16]))))
        elif attr.attr_type == _Attr.INTERNAL_IP4_DNS:
            dns_servers.append(ipaddress.IPv4Address(value))
        elif attr.attr_type == _Attr.INTERNAL_IP6_DNS:
            dns_servers.append(ipaddress.IPv6Address(value))
        elif attr.attr_type == _Attr.INTERNAL_IP4_SUBNET:
            subnets.append(_ip4_subnet(value))
        elif attr.attr_type == _Attr.INTERNAL_IP6_SUBNET:
            network = (ipaddress.IPv6Address(value[:16]), _prefix_length(value[16]))
            subnets.append(ipaddress.IPv6Network(network, strict=False))
        elif attr.attr_type == _Attr.INTERNAL_DNS_DOMAIN:
            dns_domains.append(_dns_domain(value))
    return AssignedConfig(
        addresses_v4=tuple(addresses_v4),
        addresses_v6=tuple(addresses_v6),
        dns_servers=tuple(dns_servers),
        subnets=tuple(subnets),
        dns_domains=tuple(dns_domains),
    )


def _check_length(attr: ConfigurationAttribute) -> None:
    if attr.attr_type not in _ALLOWED_LENGTHS:
        return  # unknown attribute types are ignored
    allowed = _ALLOWED_LENGTHS[attr.attr_type]
    length = len(attr.value)
    if allowed is not None and length not in allowed:
        raise MalformedMessage(
            f"configuration attribute {attr.attr_type} has length {length}"
        )  # RFC 7296 3.15.1
    if attr.attr_type == _Attr.SUPPORTED_ATTRIBUTES and length % 2:
        raise MalformedMessage("SUPPORTED_ATTRIBUTES of odd length")  # RFC 7296 3.15.1


def _prefix_length(octet: int) -> int:
    if octet > 128:
        raise MalformedMessage(f"IPv6 prefix length {octet}")  # RFC 7296 3.15.1
    return octet


def _ip4_subnet(value: bytes) -> ipaddress.IPv4Network:
    address, netmask = ipaddress.IPv4Address(value[:4]), int.from_bytes(value[4:], "big")
    prefix_length = netmask.bit_count()
    # Parsed by hand: ipaddress would read a mask such as 0.0.0.255 as a hostmask.
    if netmask != (0xFFFFFFFF << (32 - prefix_length)) & 0xFFFFFFFF:
        raise MalformedMessage(f"INTERNAL_IP4_SUBNET netmask {netmask:#010x} is not contiguous")
    # Host bits are tolerated (masked off): the prefix is what routes use.
    return ipaddress.IPv4Network((address, prefix_length), strict=False)


def _dns_domain(value: bytes) -> str:
    # RFC 8598 4.1: DNS presentation format with A-labels, "not null terminated".
    try:
        name = value.decode("ascii")
    except UnicodeDecodeError as exc:
        raise MalformedMessage("INTERNAL_DNS_DOMAIN is not ASCII") from exc
    if "\x00" in name:
        raise MalformedMessage("INTERNAL_DNS_DOMAIN contains NUL")
    return name
