"""Readers of each configuration section (the rules are in ``concentrator.config``).

One function per section, each taking the section's ``Table`` and returning
its dataclass; checks that involve two sections (a pool overlapping the LAN, a
user's subnets outside it) are made by the reader of the later one, which gets
the earlier one's result.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

from common.config_files import read_certificates, read_file, read_private_key, readable_warning
from common.ike import defaults
from common.ike.config import IpAddress, IpNetwork
from common.ike.identities import PATTERN, identity_key, parse_identity, parse_identity_pattern
from common.ike.proposals import esp_proposal, ike_proposal
from common.tomlreader import Table
from concentrator.config_model import (
    DEFAULT_COOKIE_THRESHOLD,
    DEFAULT_DPD_INTERVAL_S,
    DEFAULT_DPD_TIMEOUT_S,
    DEFAULT_TUN,
    CaConfig,
    CookieConfig,
    DpdConfig,
    GroupConfig,
    IkeConfig,
    LanConfig,
    LifetimesConfig,
    MetricsConfig,
    PoolConfig,
    ServerConfig,
    UserConfig,
)

PSK_MIN_BYTES: Final = 8  # below: an error (guessable offline from one handshake)
PSK_WEAK_BYTES: Final = 16  # below: a warning (RFC 7296 2.15: as strong as the PRF key)
_IFNAMSIZ: Final = 16  # Linux interface names: 15 characters and a NUL

T = TypeVar("T")


# --- Values --------------------------------------------------------------------------


def _address(table: Table, key: str, text: str) -> IpAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise table.error(key, f"{text!r} is not an IPv4 or IPv6 address") from None


def _network(table: Table, key: str, text: str) -> IpNetwork:
    try:
        return ipaddress.ip_network(text)
    except ValueError as exc:
        hint = "host bits set" if "host bits" in str(exc) else "not a CIDR network"
        raise table.error(key, f"{text!r}: {hint}") from None


def _addresses(table: Table, key: str, *, required: bool) -> tuple[IpAddress, ...]:
    texts = table.strings(key)
    if not texts:
        if required:
            raise table.error(key, "missing or empty (required)")
        return ()
    result = tuple(_address(table, f"{key}[{i}]", text) for i, text in enumerate(texts))
    for i, address in enumerate(result):
        if address in result[:i]:
            raise table.error(f"{key}[{i}]", f"{address} is listed twice")
    return result


def _networks(table: Table, key: str) -> tuple[IpNetwork, ...] | None:
    texts = table.strings(key)
    if texts is None:
        return None
    if not texts:
        raise table.error(key, "must not be empty")
    return tuple(_network(table, f"{key}[{i}]", text) for i, text in enumerate(texts))


def _within_lan(table: Table, key: str, subnets: Sequence[IpNetwork], lan: LanConfig) -> None:
    """Refuse a network the concentrator does not route (see ``concentrator.config``)."""
    for i, net in enumerate(subnets):
        if not any(
            net.version == outer.version and net.subnet_of(outer)  # type: ignore[arg-type]
            for outer in lan.subnets
        ):
            raise table.error(f"{key}[{i}]", f"{net} is not within [lan] subnets")


# --- [server] --------------------------------------------------------------------------


def load_server(table: Table | None, base: Path, warnings: list[str]) -> ServerConfig:
    """``[server]``: listen addresses, ports, our identity, certificate, TUN, MSS clamp."""
    assert table is not None
    listen = _addresses(table, "listen", required=True)
    identity_text = table.required_string("identity")
    try:
        identity = parse_identity(identity_text)
    except ValueError as exc:
        raise table.error("identity", str(exc)) from None
    ike_port = table.integer("ike_port", defaults.IKE_PORT, minimum=0, maximum=65535)
    natt_port = table.integer("natt_port", defaults.NAT_T_PORT, minimum=0, maximum=65535)
    if ike_port and ike_port == natt_port:
        raise table.error("natt_port", f"must differ from ike_port ({ike_port})")
    tun = table.string("tun") or DEFAULT_TUN
    if len(tun) >= _IFNAMSIZ or "/" in tun or any(ch.isspace() for ch in tun):
        raise table.error("tun", f"{tun!r} is not a valid interface name (15 characters max)")
    certificate = chain = private_key = None
    has_cert, has_key = table.has("certificate"), table.has("private_key")
    if has_cert != has_key:
        missing = "private_key" if has_cert else "certificate"
        raise table.error(missing, "certificate and private_key go together")
    if has_cert:
        certificate, *chain = read_certificates(table, "certificate", base)
        private_key, key_path = read_private_key(table, "private_key", base)
        if warning := readable_warning(table, "private_key", key_path):
            warnings.append(warning)
        if private_key.public_key() != certificate.public_key():
            raise table.error("private_key", "does not match the certificate's public key")
    mss_clamp = table.boolean("mss_clamp", True)
    table.finish()
    return ServerConfig(
        listen=listen,
        identity=identity,
        ike_port=ike_port,
        natt_port=natt_port,
        certificate=certificate,
        certificate_chain=tuple(chain or ()),
        private_key=private_key,
        tun=tun,
        mss_clamp=mss_clamp,
    )


# --- [lan], [pool], [[groups]] ---------------------------------------------------------


def load_lan(table: Table | None) -> LanConfig:
    """``[lan]``: the office networks clients may reach."""
    assert table is not None
    subnets = _networks(table, "subnets")
    if subnets is None:
        raise table.error("subnets", "missing (required)")
    table.finish()
    return LanConfig(subnets)


def load_pool(table: Table | None, lan: LanConfig) -> PoolConfig:
    """``[pool]``: IPv4 (required) and IPv6 ranges, DNS servers; no overlap with the LAN."""
    assert table is not None
    ipv4 = _pool_network(table, "ipv4", 4, lan, required=True)
    ipv6 = _pool_network(table, "ipv6", 6, lan, required=False)
    dns = _addresses(table, "dns", required=False)
    table.finish()
    assert isinstance(ipv4, ipaddress.IPv4Network)
    assert ipv6 is None or isinstance(ipv6, ipaddress.IPv6Network)
    return PoolConfig(ipv4=ipv4, ipv6=ipv6, dns=dns)


def _pool_network(
    table: Table, key: str, version: int, lan: LanConfig, *, required: bool
) -> IpNetwork | None:
    text = table.string(key)
    if text is None:
        if required:
            raise table.error(key, "missing (required)")
        return None
    net = _network(table, key, text)
    if net.version != version:
        raise table.error(key, f"{net} is not an IPv{version} network")
    # The gateway takes one host, so a pool needs room for it and one client:
    # a /30 (IPv4, with network and broadcast) or a /126 (IPv6).
    if net.prefixlen > net.max_prefixlen - 2:
        raise table.error(key, f"{net} is too small (at most /{net.max_prefixlen - 2})")
    for i, subnet in enumerate(lan.subnets):
        if subnet.version == version and subnet.prefixlen and subnet.overlaps(net):
            raise table.error(key, f"{net} overlaps lan.subnets[{i}] ({subnet})")
    return net


def load_groups(tables: list[Table], lan: LanConfig) -> tuple[GroupConfig, ...]:
    """``[[groups]]``: named network sets, each within the LAN."""
    groups: list[GroupConfig] = []
    for table in tables:
        name = table.required_string("name")
        if any(group.name == name for group in groups):
            raise table.error("name", f"group {name!r} is defined twice")
        subnets = _networks(table, "subnets")
        if subnets is None:
            raise table.error("subnets", "missing (required)")
        _within_lan(table, "subnets", subnets, lan)
        table.finish()
        groups.append(GroupConfig(name, subnets))
    return tuple(groups)


# --- [ca] --------------------------------------------------------------------------


def load_ca(table: Table | None, base: Path) -> CaConfig | None:
    """``[ca]``: the CA file for certificate users and the ``authorize`` rule."""
    if table is None:
        return None
    path = base / table.required_string("certificate")
    certificates = read_certificates(table, "certificate", base)
    authorize = table.string("authorize") or "listed"
    if authorize not in ("any", "listed"):
        raise table.error("authorize", f'{authorize!r}: expected "any" or "listed"')
    table.finish()
    return CaConfig(path, tuple(certificates), "any" if authorize == "any" else "listed")


# --- [[users]] -------------------------------------------------------------------------


def load_users(
    tables: list[Table],
    lan: LanConfig,
    groups: Sequence[GroupConfig],
    ca: CaConfig | None,
    base: Path,
    warnings: list[str],
) -> tuple[UserConfig, ...]:
    """``[[users]]``: ids (exact or ``{n}`` patterns), keys, networks; ids unique."""
    users: list[UserConfig] = []
    seen: dict[str, int] = {}
    for index, table in enumerate(tables):
        user = _load_user(table, lan, groups, ca, base, warnings)
        key = identity_key(parse_identity(user.id))
        if key in seen:
            raise table.error("id", f"{user.id!r} is already users[{seen[key]}]")
        seen[key] = index
        users.append(user)
    return tuple(users)


def _load_user(
    table: Table,
    lan: LanConfig,
    groups: Sequence[GroupConfig],
    ca: CaConfig | None,
    base: Path,
    warnings: list[str],
) -> UserConfig:
    user_id = table.required_string("id")
    identity_type = _user_identity_type(table, user_id)
    n_min = table.integer("n_min", 0, minimum=0, maximum=2**63)
    n_max = table.optional_integer("n_max", minimum=0, maximum=2**63)
    if PATTERN not in user_id and (table.has("n_min") or table.has("n_max")):
        raise table.error("n_max" if table.has("n_max") else "n_min", "only for {n} patterns")
    if n_max is not None and n_max < n_min:
        raise table.error("n_max", f"{n_max} is below n_min ({n_min})")
    psk = _user_psk(table, base, warnings)
    if psk is None and ca is None:
        raise table.error("psk", "set psk or psk_file (certificate users need a [ca] section)")
    group = table.string("group")
    own = _networks(table, "subnets")
    if own is not None:
        _within_lan(table, "subnets", own, lan)
    subnets = own or lan.subnets
    if group is not None:
        found = next((g for g in groups if g.name == group), None)
        if found is None:
            raise table.error("group", f"no [[groups]] entry named {group!r}")
        subnets = own or found.subnets
    table.finish()
    return UserConfig(
        id=user_id,
        identity_type=identity_type,
        subnets=subnets,
        psk=psk,
        group=group,
        n_min=n_min,
        n_max=n_max,
    )


def _user_identity_type(table: Table, user_id: str) -> int:
    try:
        identity = parse_identity_pattern(user_id)
    except ValueError as exc:
        raise table.error("id", str(exc)) from None
    return int(identity.id_type)


def _user_psk(table: Table, base: Path, warnings: list[str]) -> bytes | None:
    """The user's PSK from ``psk`` or ``psk_file``; never quoted in any message."""
    if table.has("psk") and table.has("psk_file"):
        raise table.error("psk_file", "psk and psk_file are mutually exclusive")
    if table.has("psk"):
        key = "psk"
        text = table.string("psk")
        assert text is not None
        psk = text.encode("utf-8")
    elif table.has("psk_file"):
        key = "psk_file"
        path, psk = read_file(table, key, base)
        psk = psk.removesuffix(b"\n").removesuffix(b"\r")
        if warning := readable_warning(table, key, path):
            warnings.append(warning)
    else:
        table.string("psk")
        table.string("psk_file")
        return None
    if len(psk) < PSK_MIN_BYTES:
        raise table.error(key, f"the PSK is shorter than {PSK_MIN_BYTES} bytes")
    if len(psk) < PSK_WEAK_BYTES:
        warnings.append(
            f"{table.source}: {table.key_path(key)}: the PSK is shorter than "
            f"{PSK_WEAK_BYTES} bytes; a longer random one resists offline guessing"
        )
    return psk


# --- [dpd], [lifetimes], [ike], [store], [control], [metrics], [cookies] ---------------


@dataclass(frozen=True, slots=True)
class SimpleSections:
    """The sections that stand alone (no cross-section checks)."""

    dpd: DpdConfig
    lifetimes: LifetimesConfig
    ike: IkeConfig
    store_path: str | None
    control_socket: str | None
    metrics: MetricsConfig | None
    cookies: CookieConfig


def load_simple_sections(top: Table) -> SimpleSections:
    """Read the sections that need nothing from the others."""
    dpd = _read(top, "dpd", _dpd, DpdConfig())
    lifetimes = _read(top, "lifetimes", _lifetimes, LifetimesConfig())
    ike = _read(top, "ike", _ike, IkeConfig())
    store = _read(top, "store", lambda t: t.string("path"), None)
    control = _read(top, "control", lambda t: t.string("socket"), None)
    metrics = _read(top, "metrics", _metrics, None)
    cookies = _read(top, "cookies", _cookies, CookieConfig())
    return SimpleSections(dpd, lifetimes, ike, store, control, metrics, cookies)


def _read(top: Table, name: str, reader: Callable[[Table], T], default: T) -> T:
    table = top.table(name)
    if table is None:
        return default
    value = reader(table)
    table.finish()
    return value


def _dpd(table: Table) -> DpdConfig:
    interval = table.seconds("interval", DEFAULT_DPD_INTERVAL_S)
    timeout = table.seconds("timeout", max(DEFAULT_DPD_TIMEOUT_S, interval))
    if timeout < interval:
        raise table.error("timeout", f"{timeout:g} s is shorter than the interval ({interval:g} s)")
    return DpdConfig(interval, timeout)


def _lifetimes(table: Table) -> LifetimesConfig:
    return LifetimesConfig(
        ike=table.seconds("ike", defaults.IKE_REKEY_TIME_S),
        child=table.seconds("child", defaults.CHILD_REKEY_TIME_S),
    )


def _ike(table: Table) -> IkeConfig:
    result = []
    for key, check, default in (
        ("proposals", ike_proposal, defaults.IKE_PROPOSALS),
        ("esp_proposals", esp_proposal, defaults.ESP_PROPOSALS),
    ):
        specs = table.strings(key)
        if specs is None:
            result.append(tuple(default))
            continue
        if not specs:
            raise table.error(key, "must not be empty")
        for i, spec in enumerate(specs):
            try:
                check(spec)
            except ValueError as exc:
                raise table.error(f"{key}[{i}]", str(exc)) from None
        result.append(tuple(specs))
    return IkeConfig(proposals=result[0], esp_proposals=result[1])


def _metrics(table: Table) -> MetricsConfig:
    text = table.required_string("listen")
    host, sep, port_text = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise table.error("listen", f"{text!r}: expected host:port (IPv6 as [addr]:port)")
    return MetricsConfig(host, int(port_text))


def _cookies(table: Table) -> CookieConfig:
    return CookieConfig(
        table.integer("threshold", DEFAULT_COOKIE_THRESHOLD, minimum=0, maximum=10**6)
    )
