"""Key derivation (RFC 7296 2.13, 2.14, 2.17, 2.18) against strongSwan 5.9.8 and plain hmac.

The strongSwan vectors (``tests/vectors/strongswan``) hold every key charon
derived in two real exchanges; no RFC publishes IKEv2 SKEYSEED vectors for
these suites, so where strongSwan has no value (PFS KEYMAT, SHA-384) the test
recomputes prf+ here with ``hmac`` directly, written from the RFC text.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest

from common.esp.suites import AES128_GCM16, suite_by_name
from common.ike.constants import PseudorandomFunction
from common.ike.ike_suites import ike_suite_by_name
from common.ike.keys import (
    IkeSaKeys,
    child_sa_keymat,
    derive_ike_sa_keys,
    derive_rekeyed_ike_sa_keys,
    prf,
    prf_plus,
)
from tests.helpers.vectors import load_json_vectors, unhex

SHA256 = PseudorandomFunction.PRF_HMAC_SHA2_256
SHA384 = PseudorandomFunction.PRF_HMAC_SHA2_384
SK_NAMES = ("sk_d", "sk_ai", "sk_ar", "sk_ei", "sk_er", "sk_pi", "sk_pr")
CAPTURES = ("strongswan-gcm-psk.json", "strongswan-chacha-psk.json")


@pytest.fixture(params=CAPTURES, ids=["gcm", "chacha"])
def capture(request: pytest.FixtureRequest) -> dict[str, Any]:
    data: dict[str, Any] = load_json_vectors(f"strongswan/{request.param}")
    assert data["suite"]["prf"] == "PRF_HMAC_SHA2_256"
    return data


def _reference_prf_plus(hash_name: str, key: bytes, seed: bytes, length: int) -> bytes:
    """prf+ exactly as RFC 7296 2.13 spells it, independent of the code under test."""
    t = b""
    out = b""
    n = 1
    while len(out) < length:
        t = hmac.new(key, t + seed + bytes([n]), hash_name).digest()
        out += t
        n += 1
    return out[:length]


# --- prf / prf+ ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alg", "hash_name"), [(SHA256, "sha256"), (SHA384, "sha384")], ids=["sha256", "sha384"]
)
@pytest.mark.parametrize("length", [0, 1, 31, 32, 33, 100, 255 * 32])
def test_prf_plus_matches_rfc_text(alg: PseudorandomFunction, hash_name: str, length: int) -> None:
    key, seed = b"k" * 20, bytes(range(70))
    expected = _reference_prf_plus(hash_name, key, seed, length)
    assert prf_plus(alg, key, seed, length) == expected


def test_prf_plus_refuses_more_than_255_blocks() -> None:
    prf_plus(SHA256, b"k", b"s", 255 * 32)  # the largest allowed
    with pytest.raises(ValueError, match="255"):
        prf_plus(SHA256, b"k", b"s", 255 * 32 + 1)


def test_prf_is_hmac() -> None:
    assert prf(SHA256, b"key", b"data") == hmac.new(b"key", b"data", hashlib.sha256).digest()


def test_unimplemented_prf_refused() -> None:
    with pytest.raises(ValueError, match="not implemented"):
        prf(PseudorandomFunction.PRF_AES128_XCBC, b"k", b"d")


# --- IKE SA keys against strongSwan ---------------------------------------------------------


def _lengths(capture: dict[str, Any]) -> tuple[int, int]:
    """(SK_e* length, SK_a* length) of the capture's IKE suite: 36 and 0 for both AEADs."""
    suite = ike_suite_by_name(capture["suite"]["ike_encr"])
    return suite.sk_e_len, suite.sk_a_len


def test_initial_ike_sa_keys_match_strongswan(capture: dict[str, Any]) -> None:
    sa = capture["ike_sas"][0]
    skeyseed, keys = derive_ike_sa_keys(
        SHA256,
        unhex(sa["ni"]),
        unhex(sa["nr"]),
        unhex(sa["g_ir"]),
        unhex(sa["spi_i"]),
        unhex(sa["spi_r"]),
        encr_key_len=_lengths(capture)[0],
        integ_key_len=_lengths(capture)[1],
    )
    assert skeyseed.hex() == sa["skeyseed"]
    for name in SK_NAMES:
        assert getattr(keys, name).hex() == sa[name], name
    # AEAD: SK_e* is key | 4-octet salt (RFC 5282 7.1, RFC 7634 4).
    assert keys.sk_ei[-4:].hex() == sa["sk_ei_salt"]
    assert keys.sk_er[-4:].hex() == sa["sk_er_salt"]


def test_rekeyed_ike_sa_keys_match_strongswan(capture: dict[str, Any]) -> None:
    old, new = capture["ike_sas"]
    assert new["rekey_of"] == 0
    skeyseed, keys = derive_rekeyed_ike_sa_keys(
        SHA256,
        unhex(old["sk_d"]),
        unhex(new["g_ir"]),
        unhex(new["ni"]),
        unhex(new["nr"]),
        unhex(new["spi_i"]),
        unhex(new["spi_r"]),
        encr_key_len=_lengths(capture)[0],
        integ_key_len=_lengths(capture)[1],
    )
    assert skeyseed.hex() == new["skeyseed"]
    for name in SK_NAMES:
        assert getattr(keys, name).hex() == new[name], name


def test_rekey_skeyseed_is_not_the_initial_formula(capture: dict[str, Any]) -> None:
    # RFC 7296 2.18 differs from 2.14: feeding the rekey inputs to the initial formula
    # must not produce strongSwan's value (guards against a mix-up of the two).
    new = capture["ike_sas"][1]
    skeyseed, _ = derive_ike_sa_keys(
        SHA256,
        unhex(new["ni"]),
        unhex(new["nr"]),
        unhex(new["g_ir"]),
        unhex(new["spi_i"]),
        unhex(new["spi_r"]),
        encr_key_len=_lengths(capture)[0],
        integ_key_len=_lengths(capture)[1],
    )
    assert skeyseed.hex() != new["skeyseed"]


def test_ike_sa_keys_hide_secrets_in_repr(capture: dict[str, Any]) -> None:
    sa = capture["ike_sas"][0]
    _, keys = derive_ike_sa_keys(
        SHA256,
        unhex(sa["ni"]),
        unhex(sa["nr"]),
        unhex(sa["g_ir"]),
        unhex(sa["spi_i"]),
        unhex(sa["spi_r"]),
        encr_key_len=_lengths(capture)[0],
        integ_key_len=_lengths(capture)[1],
    )
    text = repr(keys)
    assert text == "IkeSaKeys()"
    for name in SK_NAMES:
        value = getattr(keys, name)
        assert not value or value.hex() not in text


def test_ike_spis_must_be_eight_octets() -> None:
    with pytest.raises(ValueError, match="8 octets"):
        derive_ike_sa_keys(
            SHA256, b"n" * 32, b"n" * 32, b"g" * 32, b"s" * 4, b"s" * 8,
            encr_key_len=36, integ_key_len=0,
        )  # fmt: skip


# --- Child SA KEYMAT against strongSwan -----------------------------------------------------


@pytest.mark.parametrize("index", [0, 1], ids=["office1-ike-auth", "office2-rekey-no-pfs"])
def test_child_sa_keymat_matches_strongswan(capture: dict[str, Any], index: int) -> None:
    child = capture["child_sas"][index]
    ike_sa = capture["ike_sas"][child["ike_sa"]]
    esp_suite = suite_by_name(capture["suite"]["esp_encr"])
    i_to_r, r_to_i = child_sa_keymat(
        SHA256, unhex(ike_sa["sk_d"]), unhex(child["ni"]), unhex(child["nr"]), esp_suite
    )
    assert i_to_r.hex() == child["i_to_r"]["key_salt"]
    assert r_to_i.hex() == child["r_to_i"]["key_salt"]
    assert len(i_to_r) == len(r_to_i) == esp_suite.keymat_len
    key, salt, integ = esp_suite.split_keymat(i_to_r)
    assert (key.hex(), salt.hex(), integ) == (child["i_to_r"]["key"], child["i_to_r"]["salt"], b"")


def test_child_sa_keymat_with_pfs_prepends_g_ir() -> None:
    # RFC 7296 2.17: KEYMAT = prf+(SK_d, g^ir (new) | Ni | Nr); no strongSwan vector uses PFS.
    sk_d, ni, nr, g_ir = b"d" * 32, b"i" * 32, b"r" * 32, b"g" * 32
    suite = suite_by_name("aes256-sha256")  # CBC + HMAC: exercises the integrity key too
    expected = _reference_prf_plus("sha256", sk_d, g_ir + ni + nr, 2 * suite.keymat_len)
    i_to_r, r_to_i = child_sa_keymat(SHA256, sk_d, ni, nr, suite, g_ir=g_ir)
    assert i_to_r + r_to_i == expected
    assert len(i_to_r) == 32 + 32  # encryption key, then integrity key
    assert child_sa_keymat(SHA256, sk_d, ni, nr, suite) != (i_to_r, r_to_i)


def test_child_sa_keymat_sizes_follow_the_suite() -> None:
    i_to_r, r_to_i = child_sa_keymat(SHA384, b"d" * 48, b"i" * 32, b"r" * 32, AES128_GCM16)
    assert len(i_to_r) == len(r_to_i) == 16 + 4
    expected = _reference_prf_plus("sha384", b"d" * 48, b"i" * 32 + b"r" * 32, 40)
    assert i_to_r + r_to_i == expected


def test_ike_sa_keys_is_frozen() -> None:
    keys = IkeSaKeys(*(bytes([n]) for n in range(7)))
    with pytest.raises(AttributeError):
        keys.sk_d = b"x"  # type: ignore[misc]
