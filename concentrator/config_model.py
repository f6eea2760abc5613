"""The configuration's data model: frozen dataclasses, one per TOML section.

``concentrator.config`` documents the rules and builds these; everything else
(the service, the user directory, the pool) only reads them. Secrets are kept
out of ``repr`` (``field(repr=False)``) so that logging a configuration never
logs a key.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography import x509

from common.ike import defaults
from common.ike.auth import SigningKey
from common.ike.config import IpAddress, IpNetwork
from common.ike.policy import Identity

DEFAULT_TUN = "outpost0"
DEFAULT_STORE = Path("/var/lib/outpost/state.db")
DEFAULT_CONTROL_SOCKET = Path("/run/outpost/control.sock")
DEFAULT_DPD_INTERVAL_S = 30.0
DEFAULT_DPD_TIMEOUT_S = 150.0
# Half-open IKE SAs (IKE_SA_INIT answered, IKE_AUTH not yet) above which new
# initiators must return a COOKIE (RFC 7296 2.6). A burst of a few hundred
# honest handshakes stays below it; a spoofed flood soon does not.
DEFAULT_COOKIE_THRESHOLD = 200


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``[server]``: where we listen and who we are.

    ``ike_port``/``natt_port`` are 500 and 4500; tests override them (0 asks
    the OS for a free port). ``certificate``/``private_key`` are loaded from
    the files the configuration names; ``certificate_chain`` holds any further
    certificates of that PEM file (intermediates to send after ours).
    """

    listen: tuple[IpAddress, ...]
    identity: Identity
    ike_port: int = defaults.IKE_PORT
    natt_port: int = defaults.NAT_T_PORT
    certificate: x509.Certificate | None = None
    certificate_chain: tuple[x509.Certificate, ...] = ()
    private_key: SigningKey | None = field(default=None, repr=False, compare=False)
    tun: str = DEFAULT_TUN
    mss_clamp: bool = True


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """``[pool]``: the inner addresses handed to clients, and their DNS servers."""

    ipv4: ipaddress.IPv4Network
    ipv6: ipaddress.IPv6Network | None = None
    dns: tuple[IpAddress, ...] = ()

    @property
    def gateway4(self) -> ipaddress.IPv4Address:
        """The concentrator's own address on the TUN: the first usable host."""
        return self.ipv4.network_address + 1

    @property
    def gateway6(self) -> ipaddress.IPv6Address | None:
        """The IPv6 gateway address (``::1`` of the prefix), if there is a pool."""
        return None if self.ipv6 is None else self.ipv6.network_address + 1


@dataclass(frozen=True, slots=True)
class LanConfig:
    """``[lan]``: the office networks behind the concentrator (split include)."""

    subnets: tuple[IpNetwork, ...]


@dataclass(frozen=True, slots=True)
class GroupConfig:
    """``[[groups]]``: a named set of networks users can share."""

    name: str
    subnets: tuple[IpNetwork, ...]


@dataclass(frozen=True, slots=True)
class UserConfig:
    """``[[users]]``: one user, or one pattern of users (``user-{n}@loadtest``).

    ``subnets`` is already resolved (own, else group's, else the LAN's).
    ``psk`` is None for a certificate user; it is left out of ``repr``.
    """

    id: str
    identity_type: int
    subnets: tuple[IpNetwork, ...]
    psk: bytes | None = field(default=None, repr=False)
    group: str | None = None
    n_min: int = 0
    n_max: int | None = None

    @property
    def is_pattern(self) -> bool:
        """Whether ``id`` stands for many identities (``{n}``)."""
        return "{n}" in self.id


@dataclass(frozen=True, slots=True)
class CaConfig:
    """``[ca]``: trust anchors for certificate users and who of them may connect."""

    path: Path
    certificates: tuple[x509.Certificate, ...]
    authorize: Literal["any", "listed"] = "listed"


@dataclass(frozen=True, slots=True)
class DpdConfig:
    """``[dpd]``: probe a client idle for ``interval`` s; drop it after ``timeout`` s."""

    interval: float = DEFAULT_DPD_INTERVAL_S
    timeout: float = DEFAULT_DPD_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class LifetimesConfig:
    """``[lifetimes]``: rekey times of IKE and Child SAs, seconds."""

    ike: float = defaults.IKE_REKEY_TIME_S
    child: float = defaults.CHILD_REKEY_TIME_S


@dataclass(frozen=True, slots=True)
class IkeConfig:
    """``[ike]``: strongSwan-style proposal strings we accept (``common.ike.proposals``)."""

    proposals: tuple[str, ...] = defaults.IKE_PROPOSALS
    esp_proposals: tuple[str, ...] = defaults.ESP_PROPOSALS


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """``[store]``: the SQLite file holding leases across restarts."""

    path: Path = DEFAULT_STORE


@dataclass(frozen=True, slots=True)
class ControlConfig:
    """``[control]``: the local socket of ``status``, ``sessions``, ``disconnect``."""

    socket: Path = DEFAULT_CONTROL_SOCKET


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """``[metrics]``: where the Prometheus endpoint listens."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class CookieConfig:
    """``[cookies]``: half-open IKE SAs beyond which IKE_SA_INIT needs a COOKIE."""

    threshold: int = DEFAULT_COOKIE_THRESHOLD


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration, as loaded from ``source``."""

    source: Path
    server: ServerConfig
    pool: PoolConfig
    lan: LanConfig
    users: tuple[UserConfig, ...]
    groups: tuple[GroupConfig, ...] = ()
    ca: CaConfig | None = None
    dpd: DpdConfig = DpdConfig()
    lifetimes: LifetimesConfig = LifetimesConfig()
    ike: IkeConfig = IkeConfig()
    store: StoreConfig = StoreConfig()
    control: ControlConfig = ControlConfig()
    metrics: MetricsConfig | None = None
    cookies: CookieConfig = CookieConfig()
    warnings: tuple[str, ...] = field(default=(), compare=False)
