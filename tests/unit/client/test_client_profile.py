"""Client profiles: issue 5's example loads; every broken one is one line naming file and key."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any

import pytest

from client.profile import (
    GatewayUnresolved,
    ProfileError,
    find_profile,
    list_profiles,
    load_profile,
    profiles_dir,
    resolve_gateway,
)
from common.ike.constants import IdType
from common.ike.policy import Identity
from tests.helpers.pki import make_ca, make_leaf

SECRET = "correct horse battery staple"

ISSUE_EXAMPLE = f"""
[gateway]
address = "vpn.example.com"     # name or IP
identity = "vpn.example.com"    # the gateway's IKE identity
[auth]
id = "alice@example.com"
psk = "{SECRET}"
[tunnel]
mode = "split"                   # or "full"
subnets = []                     # office subnets beyond those the gateway sends
"""


def write(tmp_path: Path, text: str, name: str = "office.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(path: Path, **kwargs: Any) -> ProfileError:
    with pytest.raises(ProfileError) as info:
        load_profile(path, **kwargs)
    error = info.value
    message = str(error)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert SECRET not in message
    assert SECRET not in repr(error)
    return error


# --- The happy paths -----------------------------------------------------------------


def test_issue_example_loads(tmp_path: Path) -> None:
    profile = load_profile(write(tmp_path, ISSUE_EXAMPLE))
    assert profile.name == "office"
    assert profile.gateway.address == "vpn.example.com"
    assert profile.gateway.identity == Identity.fqdn("vpn.example.com")
    assert profile.gateway.port == 500
    assert profile.identity == Identity.rfc822("alice@example.com")
    assert profile.auth.psk == SECRET.encode()
    assert profile.auth.method == "psk"
    assert profile.tunnel.mode == "split"
    assert profile.tunnel.subnets == ()
    assert profile.tunnel.dns is True
    assert profile.tunnel.ipv6 is False
    assert profile.dpd_interval == 30.0
    assert profile.max_backoff == 60.0


def test_secrets_never_in_repr(tmp_path: Path) -> None:
    profile = load_profile(write(tmp_path, ISSUE_EXAMPLE))
    assert SECRET not in repr(profile)
    config = profile.ike_configuration()
    assert SECRET not in repr(config)
    assert config.psk == SECRET.encode()


def test_every_optional_section(tmp_path: Path) -> None:
    text = """
[gateway]
address = "2001:db8::1"
port = 4500
[auth]
id = "laptop.example.com"
psk = "0123456789abcdef"
[tunnel]
mode = "full"
subnets = ["10.1.0.0/16", "fd00:1::/64"]
ipv6 = true
dns = false
[ike]
proposals = ["chacha20poly1305-prfsha256-x25519"]
esp_proposals = ["chacha20poly1305"]
[dpd]
interval = 10
[reconnect]
max_backoff = 120.5
"""
    profile = load_profile(write(tmp_path, text))
    assert profile.gateway.identity.id_type == IdType.ID_IPV6_ADDR  # defaults to the address
    assert profile.gateway.port == 4500
    assert profile.tunnel.mode == "full"
    assert profile.tunnel.subnets == (
        ipaddress.ip_network("10.1.0.0/16"),
        ipaddress.ip_network("fd00:1::/64"),
    )
    assert profile.tunnel.ipv6
    assert not profile.tunnel.dns
    assert profile.ike_proposals == ("chacha20poly1305-prfsha256-x25519",)
    assert profile.esp_proposals == ("chacha20poly1305",)
    assert profile.dpd_interval == 10.0
    assert profile.max_backoff == 120.5
    config = profile.ike_configuration()
    assert config.request_ipv6 is True
    assert config.remote_id == profile.gateway.identity
    assert config.local_id == Identity.fqdn("laptop.example.com")


def test_psk_file_relative_to_the_profile(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    secret = tmp_path / "keys" / "office.psk"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o644)
    text = ISSUE_EXAMPLE.replace(f'psk = "{SECRET}"', 'psk_file = "keys/office.psk"')
    profile = load_profile(write(tmp_path, text))
    assert profile.auth.psk == SECRET.encode()  # one trailing newline dropped
    assert len(profile.warnings) == 1
    assert "auth.psk_file" in profile.warnings[0]
    assert "world-readable" in profile.warnings[0]
    assert SECRET not in profile.warnings[0]


def _write_pki(tmp_path: Path) -> None:
    ca = make_ca()
    leaf = make_leaf(ca, emails=("alice@example.com",))
    leaf.write_pem(tmp_path / "alice.pem", tmp_path / "alice.key")
    (tmp_path / "alice.key").chmod(0o600)
    ca.write_pem(tmp_path / "ca.pem")
    other = make_leaf(ca)
    other.write_pem(tmp_path / "other.pem", tmp_path / "other.key")


CERT_PROFILE = """
[gateway]
address = "192.0.2.1"
identity = "vpn.example.com"
[auth]
id = "alice@example.com"
certificate = "alice.pem"
key = "alice.key"
ca = "ca.pem"
"""


def test_certificate_profile(tmp_path: Path) -> None:
    _write_pki(tmp_path)
    profile = load_profile(write(tmp_path, CERT_PROFILE))
    assert profile.auth.method == "certificate"
    assert profile.auth.certificate is not None
    assert profile.auth.private_key is not None
    assert len(profile.auth.ca_certificates) == 1
    assert profile.warnings == ()
    assert "PrivateKey" not in repr(profile)
    config = profile.ike_configuration(validation_time=None)
    assert config.signs
    assert config.ca_certificates == profile.auth.ca_certificates


# --- {n}: the load tester's per-client identities (issue 6) ----------------------------


def test_pattern_id_for_the_load_tester(tmp_path: Path) -> None:
    path = write(tmp_path, ISSUE_EXAMPLE.replace("alice@example.com", "user-{n}@loadtest"))
    profile = load_profile(path, allow_pattern=True)
    assert profile.is_pattern
    assert profile.identity_for(17) == Identity.rfc822("user-17@loadtest")
    assert profile.ike_configuration(profile.identity_for(3)).local_id == Identity.rfc822(
        "user-3@loadtest"
    )
    with pytest.raises(ProfileError, match=r"auth\.id: holds \{n\}"):
        _ = profile.identity
    with pytest.raises(ValueError, match="negative"):
        profile.identity_for(-1)


def test_pattern_id_refused_by_the_normal_client(tmp_path: Path) -> None:
    path = write(tmp_path, ISSUE_EXAMPLE.replace("alice@example.com", "user-{n}@loadtest"))
    error = load_error(path)
    assert error.key == "auth.id"
    assert "outpost-loadtest" in error.problem


def test_identity_for_without_pattern_is_the_one_identity(tmp_path: Path) -> None:
    profile = load_profile(write(tmp_path, ISSUE_EXAMPLE), allow_pattern=True)
    assert profile.identity_for(5) == profile.identity


# --- Every error path: one line, file + key, never the secret ------------------------------


def _replace(old: str, new: str) -> str:
    assert old in ISSUE_EXAMPLE
    return ISSUE_EXAMPLE.replace(old, new)


BROKEN: list[tuple[str, str, str, str]] = [
    # (test id, profile text, key named, words of the problem)
    ("missing gateway", "[auth]\nid = 'a@b'\npsk = 'x'\n", "gateway", "missing section"),
    ("missing auth", "[gateway]\naddress = '192.0.2.1'\n", "auth", "missing section"),
    ("unknown top key", ISSUE_EXAMPLE + "\n[extra]\n", "extra", "unknown key"),
    ("unknown auth key", _replace("[tunnel]", "pks = 'x'\n[tunnel]"), "auth.pks", "unknown key"),
    ("address missing", _replace('address = "vpn.example.com"', ""), "gateway.address", "missing"),
    (
        "address bad",
        _replace('"vpn.example.com"     #', '"vpn example"  #'),
        "gateway.address",
        "neither",
    ),
    (
        "address type",
        _replace('"vpn.example.com"     #', "5 #"),
        "gateway.address",
        "expected a string",
    ),
    ("identity bad", _replace('"vpn.example.com"    #', '"a b" #'), "gateway.identity", "ASCII"),
    ("port range", _replace("[auth]", "port = 0\n[auth]"), "gateway.port", "out of range"),
    ("id missing", _replace('id = "alice@example.com"', ""), "auth.id", "missing"),
    ("id bad", _replace('id = "alice@example.com"', 'id = "al ice"'), "auth.id", "ASCII"),
    ("two patterns", _replace("alice@example.com", "{n}-{n}@x"), "auth.id", "at most one"),
    ("other brace", _replace("alice@example.com", "{m}@x"), "auth.id", "only placeholder"),
    ("ip pattern", _replace("alice@example.com", "10.0.0.{n}"), "auth.id", "patterns are for"),
    ("psk type", _replace(f'"{SECRET}"', "12345678"), "auth.psk", "expected a string"),
    ("psk empty", _replace(f'"{SECRET}"', '""'), "auth.psk", "empty"),
    ("no credentials", _replace(f'psk = "{SECRET}"', ""), "auth.psk", "set psk"),
    (
        "psk and file",
        _replace("[tunnel]", "psk_file = 'x'\n[tunnel]"),
        "auth.psk_file",
        "mutually exclusive",
    ),
    (
        "psk and cert",
        _replace("[tunnel]", "certificate = 'x'\n[tunnel]"),
        "auth.certificate",
        "mutually exclusive",
    ),
    ("key alone", _replace("[tunnel]", "key = 'x'\n[tunnel]"), "auth.key", "only with certificate"),
    (
        "psk file gone",
        _replace(f'psk = "{SECRET}"', 'psk_file = "nope"'),
        "auth.psk_file",
        "cannot read",
    ),
    ("mode", _replace('mode = "split"', 'mode = "half"'), "tunnel.mode", "expected"),
    (
        "subnet host bits",
        _replace("subnets = []", 'subnets = ["10.0.0.1/8"]'),
        "tunnel.subnets[0]",
        "host bits",
    ),
    ("subnet text", _replace("subnets = []", 'subnets = ["x"]'), "tunnel.subnets[0]", "not a CIDR"),
    (
        "subnet type",
        _replace("subnets = []", "subnets = [1]"),
        "tunnel.subnets[0]",
        "expected a string",
    ),
    ("ipv6 type", _replace("subnets = []", 'ipv6 = "yes"'), "tunnel.ipv6", "expected a boolean"),
    ("dns type", _replace("subnets = []", "dns = 1"), "tunnel.dns", "expected a boolean"),
    ("tunnel unknown", _replace("subnets = []", "split = true"), "tunnel.split", "unknown key"),
    ("proposal", ISSUE_EXAMPLE + '[ike]\nproposals = ["aes999"]\n', "ike.proposals[0]", ""),
    ("esp empty", ISSUE_EXAMPLE + "[ike]\nesp_proposals = []\n", "ike.esp_proposals", "empty"),
    ("ike unknown", ISSUE_EXAMPLE + "[ike]\nlifetime = 1\n", "ike.lifetime", "unknown key"),
    ("dpd", ISSUE_EXAMPLE + "[dpd]\ninterval = 0\n", "dpd.interval", "positive"),
    ("dpd unknown", ISSUE_EXAMPLE + "[dpd]\ntimeout = 5\n", "dpd.timeout", "unknown key"),
    (
        "backoff",
        ISSUE_EXAMPLE + "[reconnect]\nmax_backoff = -1\n",
        "reconnect.max_backoff",
        "positive",
    ),
    ("section type", "dpd = 5\n" + ISSUE_EXAMPLE, "dpd", "expected a table"),
]


@pytest.mark.parametrize(
    ("text", "key", "words"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN]
)
def test_broken_profile(tmp_path: Path, text: str, key: str, words: str) -> None:
    error = load_error(write(tmp_path, text))
    assert error.key == key
    assert words in error.problem
    assert f": {key}: " in str(error)


def test_certificate_errors(tmp_path: Path) -> None:
    _write_pki(tmp_path)
    cases = [
        (CERT_PROFILE.replace('key = "alice.key"\n', ""), "auth.key", "missing"),
        (CERT_PROFILE.replace('ca = "ca.pem"\n', ""), "auth.ca", "missing"),
        (CERT_PROFILE.replace('"alice.key"', '"other.key"'), "auth.key", "does not match"),
        (CERT_PROFILE.replace('"alice.key"', '"alice.pem"'), "auth.key", "not an unencrypted"),
        (CERT_PROFILE.replace('"alice.pem"', '"alice.key"'), "auth.certificate", "no PEM or DER"),
        (CERT_PROFILE.replace('"ca.pem"', '"missing.pem"'), "auth.ca", "cannot read"),
    ]
    for text, key, words in cases:
        error = load_error(write(tmp_path, text))
        assert (error.key, words in error.problem) == (key, True), str(error)
        assert "PRIVATE KEY" not in str(error)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    assert "cannot read" in load_error(missing).problem
    assert "TOML syntax error" in load_error(write(tmp_path, "[gateway\n")).problem
    bad = tmp_path / "latin.toml"
    bad.write_bytes(b"# caf\xe9\n")
    assert load_error(bad).problem == "not UTF-8 text"


def test_toml_syntax_error_does_not_quote_the_psk_line(tmp_path: Path) -> None:
    # A syntax error on the PSK's own line: tomllib names line and column only.
    error = load_error(write(tmp_path, ISSUE_EXAMPLE.replace(f'"{SECRET}"', f'"{SECRET}')))
    assert "TOML syntax error" in error.problem


# --- Where profiles live -----------------------------------------------------------------


def test_list_profiles_honours_xdg_config_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    folder = tmp_path / "outpost" / "profiles"
    assert profiles_dir() == folder
    assert list_profiles() == []  # no directory yet: nothing, no error
    folder.mkdir(parents=True)
    for name in ("lab.toml", "office.toml", "notes.txt"):
        (folder / name).write_text(ISSUE_EXAMPLE)
    (folder / "dir.toml").mkdir()
    assert [p.name for p in list_profiles()] == ["lab.toml", "office.toml"]
    assert find_profile("office") == folder / "office.toml"
    assert load_profile(find_profile("lab")).name == "lab"
    with pytest.raises(ProfileError, match="no such profile"):
        find_profile("home")


def test_profiles_dir_default_and_relative_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    home = Path.home()
    assert profiles_dir({}) == home / ".config" / "outpost" / "profiles"
    assert profiles_dir({"XDG_CONFIG_HOME": "relative"}) == home / ".config/outpost/profiles"


def test_find_profile_by_path(tmp_path: Path) -> None:
    path = write(tmp_path, ISSUE_EXAMPLE)
    assert find_profile(str(path)) == path


# --- Resolving the gateway: apart from loading -----------------------------------------------


def test_loading_does_no_name_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("loading resolved a name")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    load_profile(write(tmp_path, ISSUE_EXAMPLE))


def test_resolve_gateway(tmp_path: Path) -> None:
    profile = load_profile(write(tmp_path, ISSUE_EXAMPLE))
    seen: list[tuple[object, ...]] = []

    def fake(host: str, port: int, **kwargs: object) -> list[tuple[Any, ...]]:
        seen.append((host, port))
        return [
            (socket.AF_INET6, socket.SOCK_DGRAM, 17, "", ("fe80::1%eth0", 500, 0, 2)),
            (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("192.0.2.7", 500)),
        ]

    assert resolve_gateway(profile, getaddrinfo=fake) == ipaddress.ip_address("fe80::1")
    assert seen == [("vpn.example.com", 500)]


def test_resolve_literal_needs_no_resolver(tmp_path: Path) -> None:
    profile = load_profile(write(tmp_path, _replace('"vpn.example.com"     #', '"192.0.2.9" #')))

    def refuse(*args: object, **kwargs: object) -> list[tuple[Any, ...]]:
        raise AssertionError("resolved a literal")

    assert resolve_gateway(profile, getaddrinfo=refuse) == ipaddress.ip_address("192.0.2.9")


def test_resolve_failure_is_one_clear_line(tmp_path: Path) -> None:
    profile = load_profile(write(tmp_path, ISSUE_EXAMPLE))

    def fail(*args: object, **kwargs: object) -> list[tuple[Any, ...]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(GatewayUnresolved) as info:
        resolve_gateway(profile, getaddrinfo=fail)
    assert str(info.value) == (
        "cannot resolve the gateway vpn.example.com (profile office): Name or service not known"
    )
    with pytest.raises(GatewayUnresolved, match="no IPv4 or IPv6 address"):
        resolve_gateway(profile, getaddrinfo=lambda *a, **k: [])
