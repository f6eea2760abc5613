"""User directory: the responder policy from the configuration; patterns; reload keeps leases."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from common.ike.policy import CertificatePolicy, Identity, ResponderPolicy
from concentrator.config import Config, load_config
from concentrator.pool import AddressPool
from concentrator.store import MemoryStore
from concentrator.users import UserDirectory
from tests.helpers import pki
from tests.helpers.concentrator_config import (
    ALICE_PSK,
    BOB_PSK,
    LOAD_PSK,
    Document,
    base_document,
    write_config,
)

ALICE = Identity.rfc822("alice@example.com")
BOB = Identity.rfc822("bob@example.com")
net = ipaddress.ip_network


def _config(tmp_path: Path, document: Document | None = None, name: str = "c.toml") -> Config:
    return load_config(write_config(tmp_path, document or base_document(), name))


def _directory(config: Config) -> UserDirectory:
    return UserDirectory(config, AddressPool.from_config(config.pool, MemoryStore()))


@pytest.fixture
def directory(tmp_path: Path) -> UserDirectory:
    return _directory(_config(tmp_path))


def test_is_a_certificate_policy(directory: UserDirectory) -> None:
    policy: ResponderPolicy = directory
    assert isinstance(policy, CertificatePolicy)


def test_psk_exact_and_case_insensitive(directory: UserDirectory) -> None:
    assert directory.psk_for(ALICE) == ALICE_PSK.encode()
    assert directory.psk_for(Identity.rfc822("Bob@Example.COM")) == BOB_PSK.encode()
    assert directory.psk_for(Identity.rfc822("mallory@example.com")) is None
    # Same text, other ID type: not the same identity.
    assert directory.psk_for(Identity.fqdn("alice@example.com")) is None


@pytest.mark.parametrize(
    ("name", "matches"),
    [
        ("user-0@loadtest", True),
        ("user-17@loadtest", True),
        ("USER-99@LOADTEST", True),
        ("user-100@loadtest", False),  # n_max = 99
        ("user-017@loadtest", False),  # no leading zeros: one spelling per user
        ("user-@loadtest", False),
        ("user-1x@loadtest", False),
        ("user-1@loadtest.evil", False),
        ("xuser-1@loadtest", False),
    ],
)
def test_pattern_users(directory: UserDirectory, name: str, matches: bool) -> None:
    expected = LOAD_PSK.encode() if matches else None
    assert directory.psk_for(Identity.rfc822(name)) == expected


def test_exact_entry_wins_over_pattern_and_n_min(tmp_path: Path) -> None:
    document = base_document()
    document["users"][2]["n_min"] = 10
    document["users"].append({"id": "user-12@loadtest", "psk": "an-exact-override-psk"})
    directory = _directory(_config(tmp_path, document))
    assert directory.psk_for(Identity.rfc822("user-12@loadtest")) == b"an-exact-override-psk"
    assert directory.psk_for(Identity.rfc822("user-13@loadtest")) == LOAD_PSK.encode()
    assert directory.psk_for(Identity.rfc822("user-9@loadtest")) is None


def test_subnets_per_user_and_group_and_dns(directory: UserDirectory) -> None:
    assert directory.subnets_for(ALICE) == (
        net("10.99.0.0/24"),
        net("10.99.1.0/24"),
        net("fd00:99::/64"),
    )
    assert directory.subnets_for(BOB) == (net("10.99.1.0/24"),)  # group "ops"
    assert directory.subnets_for(Identity.rfc822("nobody@example.com")) == ()
    assert directory.dns_servers() == (ipaddress.ip_address("10.99.0.53"),)


def test_lease_release_sticky_per_identity(directory: UserDirectory) -> None:
    a4, a6 = directory.lease_address(ALICE, 4), directory.lease_address(ALICE, 6)
    b4 = directory.lease_address(Identity.rfc822("BOB@example.com"), 4)
    assert a4 is not None
    assert a6 is not None
    assert b4 is not None
    assert a4.version == 4
    assert a6.version == 6
    assert a4 != b4
    assert directory.release(a4)
    assert directory.release(b4)
    assert not directory.release(a4)
    assert directory.lease_address(BOB, 4) == b4  # case-insensitive owner
    assert directory.lease_address(ALICE, 4) == a4


def test_certificate_users_listed_or_any(tmp_path: Path) -> None:
    ca = pki.make_ca()
    ca.write_pem(tmp_path / "ca.pem")
    leaf = pki.make_leaf(ca, "carol", emails=["carol@example.com"]).certificate
    carol, dave = Identity.rfc822("carol@example.com"), Identity.rfc822("dave@example.com")
    document = base_document()
    document["ca"] = {"certificate": "ca.pem"}
    document["users"].append({"id": "carol@example.com", "subnets": ["10.99.0.0/24"]})
    listed = _directory(_config(tmp_path, document))
    assert listed.ca_certificates() == (ca.certificate,)
    assert listed.authorize(carol, leaf)
    assert not listed.authorize(dave, leaf)
    assert listed.psk_for(carol) is None  # a certificate user has no PSK to guess
    assert listed.subnets_for(carol) == (net("10.99.0.0/24"),)
    assert listed.subnets_for(dave) == ()

    document["ca"]["authorize"] = "any"
    anyone = _directory(_config(tmp_path, document))
    assert anyone.authorize(dave, leaf)
    assert anyone.subnets_for(dave) == anyone.config.lan.subnets

    no_ca = _directory(_config(tmp_path))
    assert no_ca.ca_certificates() == ()
    assert not no_ca.authorize(ALICE, leaf)


def test_reload_swaps_users_and_keeps_leases(tmp_path: Path) -> None:
    directory = _directory(_config(tmp_path))
    alice_address = directory.lease_address(ALICE, 4)
    bob_address = directory.lease_address(BOB, 4)
    assert alice_address is not None
    assert bob_address is not None

    document = base_document()
    del document["users"][1]  # bob removed
    document["users"][0]["psk"] = "alice-has-a-new-psk-now"  # alice changed
    document["users"].append({"id": "erin@example.com", "psk": "erin-psk-0123456789"})
    new = _config(tmp_path, document, "new.toml")
    report = directory.reload(new)

    assert report.added == ("erin@example.com",)
    assert report.removed == ("bob@example.com",)
    assert report.changed == ("alice@example.com",)
    assert report.restart_required == ()
    assert report.users_changed
    assert directory.config is new
    assert directory.psk_for(ALICE) == b"alice-has-a-new-psk-now"
    assert directory.psk_for(BOB) is None
    assert not directory.may_connect(BOB, certificate=False)
    assert directory.may_connect(ALICE, certificate=False)
    # Live leases untouched: bob's address is still his, nobody else gets it.
    others = {directory.lease_address(Identity.rfc822(f"user-{i}@loadtest"), 4) for i in range(5)}
    assert bob_address not in others
    assert alice_address not in others
    assert directory.release(bob_address)
    assert directory.lease_address(ALICE, 4) != alice_address  # alice's is still active


def test_reload_reports_settings_that_need_a_restart(tmp_path: Path) -> None:
    directory = _directory(_config(tmp_path))
    document = base_document()
    document["pool"]["ipv4"] = "10.99.200.0/24"
    document["server"]["tun"] = "vpn1"
    report = directory.reload(_config(tmp_path, document, "new.toml"))
    assert report.restart_required == ("server", "pool.ipv4")
    assert not report.users_changed
