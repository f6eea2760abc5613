"""The concentrator's configuration: one TOML file read into frozen dataclasses.

``load_config(path)`` reads and validates everything that can be checked
without touching the network (addresses, networks and their overlaps, user
ids, key and certificate files), so ``outpost-concentrator check-config`` tells
an admin about a mistake before a restart does. Any problem raises one
``ConfigError`` whose ``str()`` is a single line naming the file, the key path
(``users[2].psk``, indices from 0) and the problem; no message, ``repr`` or log
line ever carries a pre-shared key or a private key.

Decisions an admin should know (also in deploy/concentrator.example.toml):

- ``[pool] ipv4``: the first usable host is the gateway's own address on the
  TUN device and is never leased, nor are the network and broadcast
  addresses; ``ipv6`` likewise loses its subnet-router anycast (``::``) and
  gateway (``::1``) addresses. The pools must not overlap any LAN subnet,
  except a LAN ``0.0.0.0/0`` or ``::/0`` (full tunnel) that overlaps everything.
- A user's networks are its own ``subnets``, else its group's, else
  ``[lan] subnets``; each must lie within ``[lan] subnets``, which is what the
  concentrator routes, so a typo can not open a network nobody meant to expose.
- ``psk`` or ``psk_file`` (relative to this file's directory; one trailing
  newline is dropped): under 8 bytes is an error, under 16 a warning, and a
  world-readable file a warning. A user with neither authenticates with a
  certificate and needs a ``[ca]``.
- A user ``id`` holding ``{n}`` is a pattern (issue 6): ``user-{n}@loadtest``
  matches ``user-17@loadtest`` for n a decimal integer without leading zeros
  in ``n_min..n_max`` (0 and unbounded by default); all of them share the
  entry's PSK. An exact id wins over a pattern; patterns are tried in order.
- ``[ca] authorize = "listed"`` (default) admits a certified identity only if a
  ``[[users]]`` entry (exact or pattern) names it; ``"any"`` admits whoever the
  CA vouches for, with ``[lan] subnets`` unless an entry says otherwise.

Warnings (weak PSKs, readable key files) do not stop loading; they are in
``Config.warnings`` for the CLI and the service to report.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from common.tomlreader import ConfigError, Table
from concentrator.config_model import (
    DEFAULT_CONTROL_SOCKET,
    DEFAULT_STORE,
    CaConfig,
    Config,
    ControlConfig,
    CookieConfig,
    DpdConfig,
    GroupConfig,
    IkeConfig,
    LanConfig,
    LifetimesConfig,
    MetricsConfig,
    PoolConfig,
    ServerConfig,
    StoreConfig,
    UserConfig,
)
from concentrator.config_sections import (
    load_ca,
    load_groups,
    load_lan,
    load_pool,
    load_server,
    load_simple_sections,
    load_users,
)

__all__ = [
    "CaConfig",
    "Config",
    "ConfigError",
    "ControlConfig",
    "CookieConfig",
    "DpdConfig",
    "GroupConfig",
    "IkeConfig",
    "LanConfig",
    "LifetimesConfig",
    "MetricsConfig",
    "PoolConfig",
    "ServerConfig",
    "StoreConfig",
    "UserConfig",
    "load_config",
]


def load_config(path: Path | str) -> Config:
    """Read, parse and validate the configuration file at ``path``.

    Raises:
        ConfigError: the file can not be read, is not TOML, or any value is
            wrong; the message is one line and holds no secret.
    """
    source = Path(path)
    try:
        raw = source.read_bytes()
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(source, "", "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"TOML syntax error: {exc}") from None
    return _build(source, Table(source, "", data))


def _build(source: Path, top: Table) -> Config:
    base = source.parent
    warnings: list[str] = []
    server = load_server(_section(top, "server", required=True), base, warnings)
    lan = load_lan(_section(top, "lan", required=True))
    pool = load_pool(_section(top, "pool", required=True), lan)
    groups = load_groups(top.tables("groups"), lan)
    ca = load_ca(_section(top, "ca"), base)
    users = load_users(top.tables("users"), lan, groups, ca, base, warnings)
    simple = load_simple_sections(top)
    top.finish()
    return Config(
        source=source,
        server=server,
        pool=pool,
        lan=lan,
        users=users,
        groups=groups,
        ca=ca,
        dpd=simple.dpd,
        lifetimes=simple.lifetimes,
        ike=simple.ike,
        store=StoreConfig(_relative(base, simple.store_path, DEFAULT_STORE)),
        control=ControlConfig(_relative(base, simple.control_socket, DEFAULT_CONTROL_SOCKET)),
        metrics=simple.metrics,
        cookies=simple.cookies,
        warnings=tuple(warnings),
    )


def _section(top: Table, name: str, *, required: bool = False) -> Table | None:
    table = top.table(name)
    if table is None and required:
        raise top.error(name, "missing section (required)")
    return table


def _relative(base: Path, value: str | None, default: Path) -> Path:
    return default if value is None else base / value
