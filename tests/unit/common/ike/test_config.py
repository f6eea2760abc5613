"""Configuration payload semantics against hand-built RFC 7296 3.15.1 layouts.

Each vector spells the attribute out field by field (type (2), length (2),
value) and goes through the payload codec, so a build/parse pair that agrees
with itself but not with the RFC fails here.
https://www.rfc-editor.org/rfc/rfc7296#section-3.15.1
https://www.rfc-editor.org/rfc/rfc8598#section-4.1
"""

from __future__ import annotations

import contextlib
from ipaddress import IPv4Address, IPv6Address, IPv6Interface, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.ike.config import (
    AssignedConfig,
    build_cp_reply,
    build_cp_request,
    parse_cp_reply,
    requested,
)
from common.ike.constants import ConfigType, ConfigurationAttributeType
from common.ike.errors import MalformedMessage
from common.ike.payloads import ConfigurationAttribute, ConfigurationPayload, cp
from common.wire.buffer import Buffer

A = ConfigurationAttributeType


def encode(payload: ConfigurationPayload) -> bytes:
    buf = Buffer()
    cp.push_cp(buf, payload)
    return buf.data


def decode(data: bytes) -> ConfigurationPayload:
    buf = Buffer(data)
    payload = cp.pull_cp(buf, len(data))
    assert buf.eof()
    return payload


def reply_of(*attributes: str) -> ConfigurationPayload:
    """A CFG_REPLY body from hex attributes (type, length, value)."""
    return decode(bytes.fromhex("02 000000" + "".join(attributes)))


def test_request_layout() -> None:
    # CFG_REQUEST (1), RESERVED; INTERNAL_IP4_ADDRESS (1) and INTERNAL_IP4_DNS (3), empty.
    assert encode(build_cp_request()) == bytes.fromhex("01 000000  0001 0000  0003 0000")
    both = build_cp_request(ipv6=True, split_dns=True)
    # + INTERNAL_IP6_ADDRESS (8), INTERNAL_IP6_DNS (10), INTERNAL_DNS_DOMAIN (25)
    assert encode(both) == bytes.fromhex(
        "01 000000  0001 0000  0008 0000  0003 0000  000a 0000  0019 0000"
    )
    assert encode(build_cp_request(ipv4=False, ipv6=True, dns=False)) == bytes.fromhex(
        "01 000000  0008 0000"
    )
    assert requested(decode(encode(both))) == {
        A.INTERNAL_IP4_ADDRESS,
        A.INTERNAL_IP6_ADDRESS,
        A.INTERNAL_IP4_DNS,
        A.INTERNAL_IP6_DNS,
        A.INTERNAL_DNS_DOMAIN,
    }


FULL = AssignedConfig(
    addresses_v4=(IPv4Address("10.99.0.7"),),
    addresses_v6=(IPv6Interface("fd00:99::7/96"),),
    dns_servers=(IPv4Address("10.99.0.1"), IPv6Address("fd00:99::1")),
    subnets=(ip_network("10.99.0.0/24"), ip_network("fd00:99::/48")),
    dns_domains=("corp.example",),
)

FULL_WIRE = (
    "02 000000"  # CFG_REPLY, RESERVED
    "0001 0004 0a630007"  # INTERNAL_IP4_ADDRESS 10.99.0.7
    "0008 0011 fd000099000000000000000000000007 60"  # INTERNAL_IP6_ADDRESS fd00:99::7, /96
    "0003 0004 0a630001"  # INTERNAL_IP4_DNS 10.99.0.1
    "000a 0010 fd000099000000000000000000000001"  # INTERNAL_IP6_DNS fd00:99::1
    "000d 0008 0a630000 ffffff00"  # INTERNAL_IP4_SUBNET 10.99.0.0 / 255.255.255.0
    "000f 0011 fd000099000000000000000000000000 30"  # INTERNAL_IP6_SUBNET fd00:99::/48
    "0019 000c" + b"corp.example".hex()  # INTERNAL_DNS_DOMAIN (RFC 8598), no NUL
)


def test_reply_layout_and_round_trip() -> None:
    data = encode(build_cp_reply(FULL))
    assert data == bytes.fromhex(FULL_WIRE)
    assert parse_cp_reply(decode(data)) == FULL
    assert parse_cp_reply(build_cp_reply(AssignedConfig())) == AssignedConfig()


def test_reply_skips_empty_and_unknown_attributes() -> None:
    config = parse_cp_reply(
        reply_of(
            "0001 0000",  # empty INTERNAL_IP4_ADDRESS: allowed by the table, carries nothing
            "4000 0003 010203",  # unregistered type: ignored
            "0002 0004 ffffff00",  # INTERNAL_IP4_NETMASK: valid, not used
            "0001 0004 0a630008",
        )
    )
    assert config == AssignedConfig(addresses_v4=(IPv4Address("10.99.0.8"),))


def test_reply_masks_host_bits_of_a_subnet() -> None:
    config = parse_cp_reply(reply_of("000d 0008 0a630005 ffffff00"))
    assert config.subnets == (ip_network("10.99.0.0/24"),)


@pytest.mark.parametrize(
    "attribute",
    [
        "0001 0003 0a6300",  # INTERNAL_IP4_ADDRESS: 0 or 4
        "0001 0005 0a63000700",
        "0008 0010 fd000099000000000000000000000007",  # INTERNAL_IP6_ADDRESS: 0 or 17
        "0003 0010 fd000099000000000000000000000001",  # INTERNAL_IP4_DNS: 0 or 4
        "000a 0004 0a630001",  # INTERNAL_IP6_DNS: 0 or 16
        "000d 0004 0a630000",  # INTERNAL_IP4_SUBNET: 0 or 8
        "000f 0000",  # INTERNAL_IP6_SUBNET: 17
        "000f 0010 fd000099000000000000000000000000",
        "0002 0002 ffff",  # INTERNAL_IP4_NETMASK: 0 or 4
        "000e 0003 000100",  # SUPPORTED_ATTRIBUTES: multiple of 2
        "0008 0011 fd000099000000000000000000000007 81",  # prefix length 129
        "000d 0008 0a630000 ff00ff00",  # non-contiguous netmask
        "000d 0008 0a630000 000000ff",  # not a hostmask either
        "0019 0004 636f72ff",  # non-ASCII domain
        "0019 0005 636f727000",  # NUL-terminated domain (RFC 8598 4.1)
    ],
)
def test_reply_rejects_bad_attributes(attribute: str) -> None:
    payload = reply_of(attribute)
    with pytest.raises(MalformedMessage):
        parse_cp_reply(payload)


@pytest.mark.parametrize("cfg_type", [ConfigType.CFG_REQUEST, ConfigType.CFG_SET, 77])
def test_reply_must_be_cfg_reply(cfg_type: int) -> None:
    with pytest.raises(MalformedMessage):
        parse_cp_reply(ConfigurationPayload(cfg_type, ()))


def test_reply_rejects_non_ascii_domain_at_build() -> None:
    with pytest.raises(ValueError, match="ascii"):
        build_cp_reply(AssignedConfig(dns_domains=("bücher.example",)))
    with pytest.raises(ValueError, match="empty"):
        build_cp_reply(AssignedConfig(dns_domains=("",)))


def test_requested_keeps_unknown_types_and_ignores_values() -> None:
    payload = ConfigurationPayload(
        ConfigType.CFG_REQUEST,
        (
            ConfigurationAttribute(A.INTERNAL_IP4_ADDRESS, bytes.fromhex("0a630009")),
            ConfigurationAttribute(0x4000),
        ),
    )
    assert requested(payload) == {A.INTERNAL_IP4_ADDRESS, 0x4000}


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.builds(
            ConfigurationAttribute,
            st.sampled_from([*A, 0x4000]),
            st.binary(max_size=20),
        ),
        max_size=6,
    )
)
def test_parse_cp_reply_raises_only_malformed_message(
    attributes: list[ConfigurationAttribute],
) -> None:
    # STYLE.md: peer input yields a result or MalformedMessage, nothing else.
    with contextlib.suppress(MalformedMessage):
        parse_cp_reply(ConfigurationPayload(ConfigType.CFG_REPLY, tuple(attributes)))
