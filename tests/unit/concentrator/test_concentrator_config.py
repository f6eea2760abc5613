"""Concentrator configuration: every rule, every error path, and no secret in any message.

Named ``test_concentrator_config.py`` (not ``test_config.py``) because test
directories here have no ``__init__.py``, so basenames must be unique across
the suite (tests/unit/common/ike/test_config.py exists).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from common.ike.constants import IdType
from common.ike.policy import Identity
from concentrator.config import ConfigError, load_config
from tests.helpers import pki
from tests.helpers.concentrator_config import (
    ALICE_PSK,
    BOB_PSK,
    LOAD_PSK,
    Document,
    base_document,
    write_config,
)

REPO = Path(__file__).resolve().parents[3]
SECRETS = (ALICE_PSK, BOB_PSK, LOAD_PSK)


def _assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def _load_error(tmp_path: Path, document: Document) -> ConfigError:
    path = write_config(tmp_path, document)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value


# --- The valid base ------------------------------------------------------------------


def test_base_config_loads_with_resolved_subnets_and_defaults(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, base_document()))
    lan = tuple(ipaddress.ip_network(n) for n in ("10.99.0.0/24", "10.99.1.0/24", "fd00:99::/64"))
    alice, bob, load = config.users
    assert alice.subnets == lan  # no subnets, no group: the LAN
    assert bob.subnets == (ipaddress.ip_network("10.99.1.0/24"),)  # the group's
    assert alice.psk == ALICE_PSK.encode()
    assert load.is_pattern
    assert load.n_min == 0
    assert load.n_max == 99
    assert config.server.identity == Identity.fqdn("vpn.example.com")
    assert config.server.listen == (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
    assert (config.server.ike_port, config.server.natt_port) == (500, 4500)
    assert config.server.tun == "outpost0"
    assert config.server.mss_clamp is True
    assert config.pool.gateway4 == ipaddress.ip_address("10.99.100.1")
    assert config.pool.gateway6 == ipaddress.ip_address("fd00:99:100::1")
    assert config.store.path == tmp_path / "state.db"  # relative to the config file
    assert config.control.socket == tmp_path / "control.sock"
    assert config.metrics is None
    assert config.ca is None
    assert config.warnings == ()


def test_example_config_in_deploy_loads() -> None:
    config = load_config(REPO / "deploy" / "concentrator.example.toml")
    assert config.users
    assert config.pool.ipv4 == ipaddress.ip_network("10.99.100.0/24")
    assert any(user.is_pattern for user in config.users)
    assert config.metrics is not None
    assert config.metrics.port == 9810


def test_reprs_never_show_a_psk(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, base_document()))
    _assert_no_secret(repr(config))
    _assert_no_secret(str(config))
    for user in config.users:
        _assert_no_secret(repr(user))


def test_user_subnets_win_over_group_and_ip_identities(tmp_path: Path) -> None:
    document = base_document()
    document["users"][1]["subnets"] = ["10.99.0.128/25"]
    document["users"].append({"id": "192.0.2.7", "psk": "an-ip-identity-psk-000"})
    config = load_config(write_config(tmp_path, document))
    assert config.users[1].subnets == (ipaddress.ip_network("10.99.0.128/25"),)
    assert config.users[1].group == "ops"
    assert config.users[3].identity_type == IdType.ID_IPV4_ADDR


def test_metrics_ipv6_and_overrides(tmp_path: Path) -> None:
    document = base_document()
    document["metrics"] = {"listen": "[::1]:9810"}
    document["server"].update(ike_port=0, natt_port=0, tun="vpn9", mss_clamp=False)
    document["cookies"] = {"threshold": 0}
    document["dpd"] = {"interval": 5, "timeout": 12.5}
    config = load_config(write_config(tmp_path, document))
    assert config.metrics is not None
    assert (config.metrics.host, config.metrics.port) == (
        "::1",
        9810,
    )
    assert (config.server.ike_port, config.server.natt_port) == (0, 0)
    assert config.server.tun == "vpn9"
    assert not config.server.mss_clamp
    assert config.cookies.threshold == 0
    assert (config.dpd.interval, config.dpd.timeout) == (5.0, 12.5)


def test_full_tunnel_lan_may_contain_the_pool(tmp_path: Path) -> None:
    document = base_document()
    document["lan"]["subnets"] = ["0.0.0.0/0", "::/0"]
    load_config(write_config(tmp_path, document))


# --- PSK files and warnings ------------------------------------------------------------


def test_psk_file_relative_to_config_dir_newline_dropped(tmp_path: Path) -> None:
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir()
    (secret_dir / "alice.psk").write_bytes(ALICE_PSK.encode() + b"\n")
    os.chmod(secret_dir / "alice.psk", 0o600)
    document = base_document()
    document["users"][0] = {"id": "alice@example.com", "psk_file": "secrets/alice.psk"}
    config = load_config(write_config(tmp_path, document))
    assert config.users[0].psk == ALICE_PSK.encode()
    assert config.warnings == ()


def test_world_readable_psk_file_and_short_psk_warn_without_the_secret(tmp_path: Path) -> None:
    (tmp_path / "alice.psk").write_text(ALICE_PSK)
    os.chmod(tmp_path / "alice.psk", 0o644)
    document = base_document()
    document["users"][0] = {"id": "alice@example.com", "psk_file": "alice.psk"}
    document["users"][1]["psk"] = "short-12byte"
    config = load_config(write_config(tmp_path, document))
    assert len(config.warnings) == 2
    readable, short = config.warnings
    assert "users[0].psk_file" in readable
    assert "world-readable" in readable
    assert "users[1].psk" in short
    assert "16 bytes" in short
    for warning in config.warnings:
        _assert_no_secret(warning)
        assert "short-12byte" not in warning


# --- Certificates -----------------------------------------------------------------------


def test_server_certificate_and_ca(tmp_path: Path) -> None:
    ca = pki.make_ca()
    gateway = pki.make_leaf(ca, "vpn.example.com", dns_names=["vpn.example.com"])
    gateway.write_pem(tmp_path / "gw.pem", tmp_path / "gw.key")
    os.chmod(tmp_path / "gw.key", 0o600)
    ca.write_pem(tmp_path / "ca.pem")
    document = base_document()
    document["server"].update(certificate="gw.pem", private_key="gw.key")
    document["ca"] = {"certificate": "ca.pem"}
    document["users"].append({"id": "carol@example.com"})  # a certificate user
    config = load_config(write_config(tmp_path, document))
    assert config.server.certificate == gateway.certificate
    assert config.server.private_key is not None
    assert config.ca is not None
    assert config.ca.certificates == (ca.certificate,)
    assert config.ca.authorize == "listed"
    assert config.users[3].psk is None
    assert "PRIVATE" not in repr(config.server)


def test_mismatched_private_key_is_refused(tmp_path: Path) -> None:
    ca = pki.make_ca()
    gateway = pki.make_leaf(ca, "vpn.example.com", dns_names=["vpn.example.com"])
    other = pki.make_ca("Other")
    gateway.write_pem(tmp_path / "gw.pem")
    (tmp_path / "gw.key").write_bytes(other.key_pem)
    document = base_document()
    document["server"].update(certificate="gw.pem", private_key="gw.key")
    error = _load_error(tmp_path, document)
    assert error.key == "server.private_key"
    assert "does not match" in str(error)
    assert "PRIVATE KEY" not in str(error)


# --- Every error path: one line, file and key named, no secret --------------------------

Mutation = Callable[[Document], None]


def _set(section: str, key: str, value: object) -> Mutation:
    def mutate(document: Document) -> None:
        document[section][key] = value

    return mutate


def _set_user(index: int, key: str, value: object) -> Mutation:
    def mutate(document: Document) -> None:
        document["users"][index][key] = value

    return mutate


def _drop(section: str, key: str | None = None) -> Mutation:
    def mutate(document: Document) -> None:
        if key is None:
            del document[section]
        else:
            del document[section][key]

    return mutate


def _add(section: str, value: object) -> Mutation:
    def mutate(document: Document) -> None:
        document[section] = value

    return mutate


def _append_user(user: dict[str, object]) -> Mutation:
    def mutate(document: Document) -> None:
        document["users"].append(user)

    return mutate


ERROR_CASES: list[tuple[str, Mutation, str, str]] = [
    ("unknown-section", _add("sever", {"listen": ["127.0.0.1"]}), "sever", "unknown key"),
    ("unknown-key", _set("server", "mss_clmap", False), "server.mss_clmap", "unknown key"),
    ("unknown-user-key", _set_user(1, "pks", BOB_PSK), "users[1].pks", "unknown key"),
    ("missing-server", _drop("server"), "server", "missing section"),
    ("missing-identity", _drop("server", "identity"), "server.identity", "missing"),
    ("bad-listen", _set("server", "listen", ["::1", "300.1.1.1"]), "server.listen[1]", "300.1"),
    ("empty-listen", _set("server", "listen", []), "server.listen", "empty"),
    ("dup-listen", _set("server", "listen", ["::1", "::1"]), "server.listen[1]", "twice"),
    ("listen-type", _set("server", "listen", "::1"), "server.listen", "expected an array"),
    ("identity-space", _set("server", "identity", "vpn example"), "server.identity", "ASCII"),
    ("port-range", _set("server", "ike_port", 70000), "server.ike_port", "out of range"),
    ("same-ports", _set("server", "natt_port", 500), "server.natt_port", "differ"),
    ("tun-long", _set("server", "tun", "x" * 16), "server.tun", "interface name"),
    ("bool-as-int", _set("server", "mss_clamp", 1), "server.mss_clamp", "expected a boolean"),
    ("cert-no-key", _set("server", "certificate", "gw.pem"), "server.private_key", "together"),
    ("pool-host-bits", _set("pool", "ipv4", "10.99.100.1/24"), "pool.ipv4", "host bits"),
    ("pool-v6-as-v4", _set("pool", "ipv4", "fd00::/64"), "pool.ipv4", "not an IPv4"),
    ("pool-tiny", _set("pool", "ipv4", "10.99.100.0/31"), "pool.ipv4", "too small"),
    ("pool-overlap", _set("pool", "ipv4", "10.99.0.0/25"), "pool.ipv4", "overlaps lan.subnets[0]"),
    ("pool6-overlap", _set("pool", "ipv6", "fd00:99::/120"), "pool.ipv6", "overlaps"),
    ("pool-missing", _drop("pool", "ipv4"), "pool.ipv4", "missing"),
    ("bad-dns", _set("pool", "dns", ["dns.example.com"]), "pool.dns[0]", "not an IPv4 or IPv6"),
    ("lan-missing", _drop("lan", "subnets"), "lan.subnets", "missing"),
    ("lan-bad", _set("lan", "subnets", ["10.99.0.0/24", "10.99.1/24"]), "lan.subnets[1]", "CIDR"),
    ("lan-empty", _set("lan", "subnets", []), "lan.subnets", "empty"),
    ("psk-and-file", _set_user(0, "psk_file", "a.psk"), "users[0].psk_file", "mutually"),
    ("psk-short", _set_user(0, "psk", "seven77"), "users[0].psk", "shorter than 8"),
    ("psk-type", _set_user(0, "psk", 12345678), "users[0].psk", "expected a string"),
    (
        "psk-file-missing",
        _append_user({"id": "d@x", "psk_file": "nope.psk"}),
        "users[3].psk_file",
        "cannot read",
    ),
    ("no-credential", _append_user({"id": "d@x"}), "users[3].psk", "[ca]"),
    (
        "dup-user",
        _append_user({"id": "ALICE@example.com", "psk": LOAD_PSK}),
        "users[3].id",
        "users[0]",
    ),
    (
        "user-subnet-outside",
        _set_user(0, "subnets", ["192.168.0.0/24"]),
        "users[0].subnets[0]",
        "within [lan]",
    ),
    ("user-subnet-empty", _set_user(0, "subnets", []), "users[0].subnets", "empty"),
    ("unknown-group", _set_user(1, "group", "devs"), "users[1].group", "devs"),
    ("two-placeholders", _set_user(2, "id", "u-{n}-{n}@lt"), "users[2].id", "at most one"),
    ("other-placeholder", _set_user(2, "id", "u-{m}@lt"), "users[2].id", "only placeholder"),
    ("ip-pattern", _set_user(2, "id", "10.0.0.{n}"), "users[2].id", "FQDN and e-mail"),
    ("range-backwards", _set_user(2, "n_min", 100), "users[2].n_max", "below n_min"),
    ("range-not-pattern", _set_user(0, "n_max", 5), "users[0].n_max", "only for {n}"),
    ("users-not-tables", _add("users", ["alice"]), "users[0]", "expected a table"),
    (
        "group-outside-lan",
        lambda d: d["groups"][0].update(subnets=["10.0.0.0/8"]),
        "groups[0].subnets[0]",
        "within [lan]",
    ),
    (
        "dup-group",
        lambda d: d["groups"].append({"name": "ops", "subnets": ["10.99.0.0/24"]}),
        "groups[1].name",
        "twice",
    ),
    (
        "ca-missing-file",
        _add("ca", {"certificate": "missing-ca.pem"}),
        "ca.certificate",
        "cannot read",
    ),
    ("dpd-order", _add("dpd", {"interval": 60, "timeout": 30}), "dpd.timeout", "shorter"),
    ("dpd-negative", _add("dpd", {"interval": -1}), "dpd.interval", "positive"),
    ("lifetime-zero", _add("lifetimes", {"ike": 0}), "lifetimes.ike", "positive"),
    ("bad-proposal", _add("ike", {"proposals": ["aes256gcm16-x25519"]}), "ike.proposals[0]", "PRF"),
    ("bad-esp", _add("ike", {"esp_proposals": ["des"]}), "ike.esp_proposals[0]", "des"),
    ("metrics-no-port", _add("metrics", {"listen": "127.0.0.1"}), "metrics.listen", "host:port"),
    ("cookies-negative", _add("cookies", {"threshold": -1}), "cookies.threshold", "out of range"),
    ("store-type", _add("store", {"path": 5}), "store.path", "expected a string"),
    ("control-unknown", _add("control", {"sock": "x"}), "control.sock", "unknown key"),
]


@pytest.mark.parametrize(
    ("mutation", "key", "problem"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_error_is_one_line_naming_file_and_key(
    tmp_path: Path, mutation: Mutation, key: str, problem: str
) -> None:
    document = base_document()
    mutation(document)
    error = _load_error(tmp_path, document)
    message = str(error)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'concentrator.toml'}: {key}: "), message
    assert error.key == key
    assert problem in message
    _assert_no_secret(message)
    _assert_no_secret(repr(error))
    assert "seven77" not in message


def test_ca_authorize_must_be_any_or_listed(tmp_path: Path) -> None:
    pki.make_ca().write_pem(tmp_path / "ca.pem")
    document = base_document()
    document["ca"] = {"certificate": "ca.pem", "authorize": "everyone"}
    error = _load_error(tmp_path, document)
    assert error.key == "ca.authorize"


def test_ca_file_that_is_not_a_certificate(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    document = base_document()
    document["ca"] = {"certificate": "ca.pem"}
    assert _load_error(tmp_path, document).key == "ca.certificate"


def test_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(f'[server]\nlisten = ["::1"\n[[users]]\npsk = "{ALICE_PSK}"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: TOML syntax error")
    assert "line" in message
    assert "\n" not in message
    _assert_no_secret(message)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")
