"""ESP suite table: sizes from the RFCs, KEYMAT layout, and the tunnel MTU search.

Sizes are written out here from the RFCs rather than derived, so a typo in
the table cannot agree with itself: RFC 4106 3 and 8.1 (AES-GCM-16), RFC 7634 2
(ChaCha20-Poly1305), RFC 3602 (AES-CBC) and RFC 4868 2.1-2.3 (HMAC-SHA2).
"""

from __future__ import annotations

import itertools

import pytest

from common.esp.sa import OutboundSa
from common.esp.suites import (
    IPV4_HEADER,
    IPV6_HEADER,
    SUITES,
    UDP_HEADER,
    EspSuite,
    suite_by_name,
    suite_for_transforms,
    tunnel_mtu,
)
from common.ike.constants import EncryptionAlgorithm, IntegrityAlgorithm
from tests.helpers.packets import ipv4_udp

# name: (key, salt, iv, icv, integrity key, alignment, hash)
EXPECTED_SIZES: dict[str, tuple[int, int, int, int, int, int, str]] = {
    "aes128gcm16": (16, 4, 8, 16, 0, 4, ""),
    "aes256gcm16": (32, 4, 8, 16, 0, 4, ""),
    "chacha20poly1305": (32, 4, 8, 16, 0, 4, ""),
    "aes128-sha256": (16, 0, 16, 16, 32, 16, "sha256"),
    "aes128-sha384": (16, 0, 16, 24, 48, 16, "sha384"),
    "aes128-sha512": (16, 0, 16, 32, 64, 16, "sha512"),
    "aes256-sha256": (32, 0, 16, 16, 32, 16, "sha256"),
    "aes256-sha384": (32, 0, 16, 24, 48, 16, "sha384"),
    "aes256-sha512": (32, 0, 16, 32, 64, 16, "sha512"),
}
ALL_SUITES = sorted(SUITES)


def test_the_table_holds_exactly_the_profile_suites() -> None:
    """DESIGN.md "Protocol profile": no suite added or lost silently."""
    assert sorted(SUITES) == sorted(EXPECTED_SIZES)


@pytest.mark.parametrize("name", ALL_SUITES)
def test_sizes_match_the_rfcs(name: str) -> None:
    suite = suite_by_name(name)
    key, salt, iv, icv, integ, alignment, hash_name = EXPECTED_SIZES[name]
    assert (suite.key_len, suite.salt_len, suite.iv_len, suite.icv_len) == (key, salt, iv, icv)
    assert (suite.integ_key_len, suite.alignment, suite.hash_name) == (integ, alignment, hash_name)
    assert suite.keymat_len == key + salt + integ
    assert suite.key_bits == key * 8
    assert suite.is_aead == (integ == 0)
    assert suite.name == name


@pytest.mark.parametrize("name", ALL_SUITES)
def test_split_keymat_takes_key_then_salt_then_integrity_key(name: str) -> None:
    """RFC 7296 2.17 / RFC 4106 8.1: encryption key first; the AEAD salt is its last 4 octets."""
    suite = suite_by_name(name)
    keymat = bytes(range(suite.keymat_len))
    key, salt, integ = suite.split_keymat(keymat)
    assert key == keymat[: suite.key_len]
    assert salt == keymat[suite.key_len : suite.key_len + suite.salt_len]
    assert integ == keymat[suite.key_len + suite.salt_len :]
    assert key + salt + integ == keymat
    assert (len(key), len(salt), len(integ)) == (suite.key_len, suite.salt_len, suite.integ_key_len)


@pytest.mark.parametrize("name", ALL_SUITES)
@pytest.mark.parametrize("delta", [-1, 1, -4])
def test_split_keymat_rejects_a_wrong_length(name: str, delta: int) -> None:
    suite = suite_by_name(name)
    with pytest.raises(ValueError, match=f"{suite.keymat_len} octets"):
        suite.split_keymat(bytes(suite.keymat_len + delta))


def test_suite_by_name_lists_the_known_names_when_unknown() -> None:
    with pytest.raises(ValueError, match="aes128gcm16") as info:
        suite_by_name("aes128gcm8")
    assert "aes128gcm8" in str(info.value)


def test_suite_for_transforms_maps_ike_transforms() -> None:
    assert suite_for_transforms(
        EncryptionAlgorithm.ENCR_AES_GCM_16, 256, IntegrityAlgorithm.NONE
    ) is suite_by_name("aes256gcm16")
    assert suite_for_transforms(
        EncryptionAlgorithm.ENCR_AES_CBC, 128, IntegrityAlgorithm.AUTH_HMAC_SHA2_384_192
    ) is suite_by_name("aes128-sha384")
    assert (
        suite_for_transforms(EncryptionAlgorithm.ENCR_AES_GCM_16, 192, IntegrityAlgorithm.NONE)
        is None
    )


@pytest.mark.parametrize("name", ALL_SUITES)
def test_overhead_matches_a_built_packet(name: str) -> None:
    """overhead() must equal what the SA really adds, for every padding remainder."""
    suite = suite_by_name(name)
    outbound = OutboundSa(0x1000, suite, bytes(suite.keymat_len), rng=lambda n: bytes(n))
    for data_len in range(0, 2 * suite.alignment + 1):
        inner = ipv4_udp(data=bytes(data_len))
        packet = outbound.encapsulate(inner)
        assert isinstance(packet, bytes)
        assert len(packet) == len(inner) + suite.overhead(len(inner))
        assert (len(packet) - 8 - suite.iv_len - suite.icv_len) % suite.alignment == 0


def _fits(suite: EspSuite, inner: int, path_mtu: int, outer_ipv6: bool) -> bool:
    outer = (IPV6_HEADER if outer_ipv6 else IPV4_HEADER) + UDP_HEADER
    return inner + suite.overhead(inner) + outer <= path_mtu


@pytest.mark.parametrize("name", ALL_SUITES)
@pytest.mark.parametrize("outer_ipv6", [False, True], ids=["outer4", "outer6"])
@pytest.mark.parametrize("path_mtu", [1280, 1400, 1492, 1500, 9000])
def test_tunnel_mtu_is_the_largest_inner_size_that_fits(
    name: str, outer_ipv6: bool, path_mtu: int
) -> None:
    suite = suite_by_name(name)
    inner = tunnel_mtu(path_mtu, (suite,), outer_ipv6)
    assert _fits(suite, inner, path_mtu, outer_ipv6)
    assert not _fits(suite, inner + 1, path_mtu, outer_ipv6)


def test_tunnel_mtu_known_values() -> None:
    """Worked by hand, so the search is checked against arithmetic, not against itself.

    Outer IPv4 + UDP = 28. GCM adds 8 (SPI, seq) + 8 (IV) + 16 (ICV) = 32, so
    payload + 2-octet trailer <= 1440, a multiple of 4: inner 1438 (IPv6 outer:
    20 more, 1418). CBC/SHA-256 adds 8 + 16 + 16 = 40: payload + trailer <= 1432,
    a multiple of 16 is 1424: inner 1422.
    """
    assert tunnel_mtu(1500, (suite_by_name("aes128gcm16"),), False) == 1438
    assert tunnel_mtu(1500, (suite_by_name("aes128-sha256"),), False) == 1422
    assert tunnel_mtu(1500, (suite_by_name("aes128gcm16"),), True) == 1418


@pytest.mark.parametrize("outer_ipv6", [False, True], ids=["outer4", "outer6"])
@pytest.mark.parametrize("path_mtu", [1280, 1500])
@pytest.mark.parametrize("pair", list(itertools.combinations(ALL_SUITES, 2)), ids=str)
def test_tunnel_mtu_takes_the_worst_of_several_suites(
    pair: tuple[str, str], outer_ipv6: bool, path_mtu: int
) -> None:
    suites = tuple(suite_by_name(name) for name in pair)
    inner = tunnel_mtu(path_mtu, suites, outer_ipv6)
    assert all(_fits(suite, inner, path_mtu, outer_ipv6) for suite in suites)
    assert not all(_fits(suite, inner + 1, path_mtu, outer_ipv6) for suite in suites)
    assert inner == min(tunnel_mtu(path_mtu, (suite,), outer_ipv6) for suite in suites)
