"""Client profiles: one TOML file per office, read strictly into frozen dataclasses.

A profile is what the person on the road picks ("office", "lab"); it says
which gateway to reach, how to authenticate, and what to route. They live in
``$XDG_CONFIG_HOME/outpost/profiles/*.toml`` (``~/.config`` by default) or are
given by path (issue 5)::

    [gateway]
    address = "vpn.example.com"     # name or IP
    identity = "vpn.example.com"    # the gateway's IKE identity (default: address)
    port = 500                      # optional
    [auth]
    id = "alice@example.com"        # may hold {n} for outpost-loadtest (issue 6)
    psk = "..."                     # or psk_file, or certificate + key (+ ca)
    [tunnel]
    mode = "split"                  # or "full"
    subnets = []                    # office subnets beyond those the gateway sends
    ipv6 = false                    # also ask for an inner IPv6 address
    dns = true                      # use the gateway's DNS servers
    [ike]                           # optional, strongSwan-style proposal strings
    proposals = ["aes256gcm16-prfsha256-x25519"]
    esp_proposals = ["aes256gcm16"]
    [dpd]
    interval = 30                   # seconds
    [reconnect]
    max_backoff = 60                # seconds

Reading is the concentrator's (``common.tomlreader``): every problem is one
``ProfileError`` line naming the file, the key and the problem, unknown keys
are errors (a typo never passes as a default), and no message or ``repr``
carries a pre-shared or private key. Loading reads local files only (the
PSK, certificate, key and CA files, relative to the profile's directory); the
gateway's name is resolved by :func:`resolve_gateway`, apart, so a profile can
be checked or listed offline and the controller decides when to do network I/O.

Authentication rules: exactly one of ``psk``, ``psk_file`` or ``certificate``
(with ``key``). With a certificate the gateway must prove itself with one too,
so ``ca`` is required; with a PSK, ``ca`` is optional and, when given, lets a
gateway that signs (strongSwan with a server certificate) be verified.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from cryptography import x509

from common.config_files import read_certificates, read_file, read_private_key, readable_warning
from common.ike import defaults
from common.ike.auth import SigningKey
from common.ike.config import IpAddress, IpNetwork
from common.ike.identities import PATTERN, parse_identity, parse_identity_pattern
from common.ike.policy import Identity, IkeConfiguration
from common.ike.proposals import esp_proposal, ike_proposal
from common.tomlreader import ConfigError, Table

DEFAULT_DPD_INTERVAL_S: Final = 30.0
DEFAULT_MAX_BACKOFF_S: Final = 60.0
_HOSTNAME: Final = re.compile(
    r"(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)

Mode = Literal["split", "full"]


class ProfileError(ConfigError):
    """A broken profile: ``str()`` is one line, ``file: key: problem``, and holds no secret."""


class GatewayUnresolved(Exception):  # noqa: N818 - reads as what happened
    """The gateway's name does not resolve; the message is one line a person can act on."""


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """Where the gateway is and who it must prove to be."""

    address: str  # a name or an IP address, as written
    identity: Identity
    port: int = defaults.IKE_PORT


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """How we prove who we are; the secrets never show in ``repr``."""

    id: str  # as written, possibly holding {n}
    psk: bytes | None = field(default=None, repr=False)
    certificate: x509.Certificate | None = None
    certificate_chain: tuple[x509.Certificate, ...] = ()
    private_key: SigningKey | None = field(default=None, repr=False)
    ca_certificates: tuple[x509.Certificate, ...] = ()

    @property
    def method(self) -> Literal["psk", "certificate"]:
        """``"certificate"`` when we sign, else ``"psk"``."""
        return "certificate" if self.certificate is not None else "psk"


@dataclass(frozen=True, slots=True)
class TunnelSettings:
    """What goes into the tunnel."""

    mode: Mode = "split"
    subnets: tuple[IpNetwork, ...] = ()
    ipv6: bool = False
    dns: bool = True


@dataclass(frozen=True, slots=True)
class Profile:
    """One loaded profile. ``name`` is the file's stem, what the TUI lists."""

    name: str
    source: Path
    gateway: GatewaySettings
    auth: AuthSettings
    tunnel: TunnelSettings
    ike_proposals: tuple[str, ...] = defaults.IKE_PROPOSALS
    esp_proposals: tuple[str, ...] = defaults.ESP_PROPOSALS
    dpd_interval: float = DEFAULT_DPD_INTERVAL_S
    max_backoff: float = DEFAULT_MAX_BACKOFF_S
    warnings: tuple[str, ...] = ()

    @property
    def is_pattern(self) -> bool:
        """Whether ``[auth] id`` holds ``{n}`` (a load-test profile)."""
        return PATTERN in self.auth.id

    @property
    def identity(self) -> Identity:
        """Our IKE identity, for the normal client.

        Raises:
            ProfileError: the id holds ``{n}``, which only the load tester fills in.
        """
        if self.is_pattern:
            raise ProfileError(self.source, "auth.id", _PATTERN_REFUSED)
        return parse_identity(self.auth.id)

    def identity_for(self, n: int) -> Identity:
        """Simulated client ``n``'s identity: ``{n}`` replaced by ``n`` in decimal.

        A profile without ``{n}`` gives every client the same identity, which a
        gateway sees as one user connecting many times (it may keep only one).
        """
        if n < 0:
            raise ValueError(f"client number {n} must not be negative")
        return parse_identity(self.auth.id.replace(PATTERN, str(n)))

    def ike_configuration(
        self, identity: Identity | None = None, **overrides: Any
    ) -> IkeConfiguration:
        """The initiator core's settings for this profile.

        Args:
            identity: our IDi; default :attr:`identity` (load testers pass
                ``identity_for(n)``).
            overrides: further ``IkeConfiguration`` fields the caller owns,
                such as ``validation_time`` (the core reads no clock).
        """
        auth = self.auth
        return IkeConfiguration(
            local_id=self.identity if identity is None else identity,
            remote_id=self.gateway.identity,
            psk=auth.psk or b"",
            ike_proposals=self.ike_proposals,
            esp_proposals=self.esp_proposals,
            request_address=True,
            request_ipv6=self.tunnel.ipv6,
            private_key=auth.private_key,
            certificate=auth.certificate,
            certificate_chain=auth.certificate_chain,
            ca_certificates=auth.ca_certificates,
            **overrides,
        )


_PATTERN_REFUSED: Final = "holds {n}, which only outpost-loadtest fills in"


# --- Where profiles live -----------------------------------------------------------------


def profiles_dir(environ: os._Environ[str] | dict[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/outpost/profiles`` (XDG: ``~/.config`` when unset or relative)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".config"
    return root / "outpost" / "profiles"


def list_profiles(directory: Path | None = None) -> list[Path]:
    """The profile files (``*.toml``) in ``directory`` (default :func:`profiles_dir`), by name.

    Only lists; a broken profile shows up here and fails when loaded, so the
    TUI can show it with its error instead of hiding it.
    """
    folder = profiles_dir() if directory is None else directory
    try:
        return sorted(p for p in folder.glob("*.toml") if p.is_file())
    except OSError:
        return []


def find_profile(name_or_path: str, directory: Path | None = None) -> Path:
    """A path as given (``./office.toml``), else the profile of that name in the directory.

    Raises:
        ProfileError: neither exists.
    """
    given = Path(name_or_path).expanduser()
    if given.is_file() or os.sep in name_or_path or name_or_path.endswith(".toml"):
        return given
    folder = profiles_dir() if directory is None else directory
    candidate = folder / f"{name_or_path}.toml"
    if candidate.is_file():
        return candidate
    raise ProfileError(name_or_path, "", f"no such profile file, nor {candidate}")


# --- Loading -----------------------------------------------------------------------------


def load_profile(path: Path | str, *, allow_pattern: bool = False) -> Profile:
    """Read, parse and validate the profile at ``path`` (local files only, no network).

    Args:
        allow_pattern: accept ``{n}`` in ``[auth] id`` (the load tester); the
            normal client refuses it at load time rather than at connect time.

    Raises:
        ProfileError: the file or a file it names can not be read, is not
            TOML, or a value is wrong; one line, naming file and key, no secret.
    """
    source = Path(path)
    try:
        raw = source.read_bytes()
    except OSError as exc:
        raise ProfileError(source, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ProfileError(source, "", "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(source, "", f"TOML syntax error: {exc}") from None
    return profile_from_document(source, data, allow_pattern=allow_pattern)


def profile_from_document(
    source: Path, data: dict[str, Any], *, allow_pattern: bool = False
) -> Profile:
    """Check an already parsed profile document (``load_profile`` after reading the file).

    For tools that add keys of their own (the load tester's issuing CA), take
    them out and hand the rest here: one parser, errors naming ``source``.

    Raises:
        ProfileError: as ``load_profile``.
    """
    try:
        return _build(source, Table(source, "", data), allow_pattern)
    except ProfileError:
        raise
    except ConfigError as exc:  # the shared reader's errors, as the client's type
        raise ProfileError(exc.source, exc.key, exc.problem) from None


def _build(source: Path, top: Table, allow_pattern: bool) -> Profile:
    base = source.parent
    warnings: list[str] = []
    gateway = _gateway(_required(top, "gateway"))
    auth = _auth(_required(top, "auth"), base, warnings, allow_pattern)
    tunnel_table = top.table("tunnel")
    tunnel = TunnelSettings() if tunnel_table is None else _tunnel(tunnel_table)
    proposals: tuple[tuple[str, ...], tuple[str, ...]] = (
        defaults.IKE_PROPOSALS,
        defaults.ESP_PROPOSALS,
    )
    ike = top.table("ike")
    if ike is not None:
        proposals = (
            _proposals(ike, "proposals", ike_proposal, defaults.IKE_PROPOSALS),
            _proposals(ike, "esp_proposals", esp_proposal, defaults.ESP_PROPOSALS),
        )
        ike.finish()
    dpd_interval = _seconds_section(top, "dpd", "interval", DEFAULT_DPD_INTERVAL_S)
    max_backoff = _seconds_section(top, "reconnect", "max_backoff", DEFAULT_MAX_BACKOFF_S)
    top.finish()
    return Profile(
        name=source.stem,
        source=source,
        gateway=gateway,
        auth=auth,
        tunnel=tunnel,
        ike_proposals=proposals[0],
        esp_proposals=proposals[1],
        dpd_interval=dpd_interval,
        max_backoff=max_backoff,
        warnings=tuple(warnings),
    )


def _required(top: Table, name: str) -> Table:
    table = top.table(name)
    if table is None:
        raise top.error(name, "missing section (required)")
    return table


def _seconds_section(top: Table, name: str, key: str, default: float) -> float:
    table = top.table(name)
    if table is None:
        return default
    value = table.seconds(key, default)
    table.finish()
    return value


def _gateway(table: Table) -> GatewaySettings:
    address = table.required_string("address")
    if not _is_ip(address) and not _HOSTNAME.fullmatch(address):
        raise table.error("address", f"{address!r} is neither an IP address nor a host name")
    identity_text = table.string("identity")
    key = "identity" if identity_text is not None else "address"
    try:
        identity = parse_identity(identity_text if identity_text is not None else address)
    except ValueError as exc:
        raise table.error(key, str(exc)) from None
    port = table.integer("port", defaults.IKE_PORT, minimum=1, maximum=65535)
    table.finish()
    return GatewaySettings(address=address, identity=identity, port=port)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _auth(table: Table, base: Path, warnings: list[str], allow_pattern: bool) -> AuthSettings:
    user_id = table.required_string("id")
    _check_id(table, user_id, allow_pattern)
    given = [key for key in ("psk", "psk_file", "certificate") if table.has(key)]
    if len(given) > 1:
        raise table.error(given[1], f"{given[0]} and {given[1]} are mutually exclusive")
    if not given:
        raise table.error("psk", "set psk, psk_file, or certificate with key")
    if table.has("key") and given[0] != "certificate":
        raise table.error("key", "only with certificate")
    ca = read_certificates(table, "ca", base) if table.has("ca") else ()
    table.string("ca")  # mark read when absent
    psk = certificate = private_key = None
    chain: list[x509.Certificate] = []
    if given[0] == "psk":
        text = table.string("psk")
        assert text is not None
        psk = text.encode("utf-8")
    elif given[0] == "psk_file":
        path, psk = read_file(table, "psk_file", base)
        psk = psk.removesuffix(b"\n").removesuffix(b"\r")
        if warning := readable_warning(table, "psk_file", path):
            warnings.append(warning)
    else:
        if not table.has("key"):
            raise table.error("key", "missing (certificate needs its private key)")
        if not ca:
            raise table.error("ca", "missing (with a certificate, the gateway's must be checked)")
        certificate, *chain = read_certificates(table, "certificate", base)
        private_key, key_path = read_private_key(table, "key", base)
        if warning := readable_warning(table, "key", key_path):
            warnings.append(warning)
        if private_key.public_key() != certificate.public_key():
            raise table.error("key", "does not match the certificate's public key")
    if psk is not None and not psk:
        raise table.error(given[0], "the PSK is empty")
    table.finish()
    return AuthSettings(
        id=user_id,
        psk=psk,
        certificate=certificate,
        certificate_chain=tuple(chain),
        private_key=private_key,
        ca_certificates=tuple(ca),
    )


def _check_id(table: Table, user_id: str, allow_pattern: bool) -> None:
    """The same ``{n}`` rules as the concentrator's ``[[users]]`` ids (issue 6)."""
    try:
        parse_identity_pattern(user_id)
    except ValueError as exc:
        raise table.error("id", str(exc)) from None
    if PATTERN in user_id and not allow_pattern:
        raise table.error("id", _PATTERN_REFUSED)


def _tunnel(table: Table) -> TunnelSettings:
    mode = table.string("mode") or "split"
    if mode not in ("split", "full"):
        raise table.error("mode", f'{mode!r}: expected "split" or "full"')
    subnets: list[IpNetwork] = []
    for i, text in enumerate(table.strings("subnets") or []):
        try:
            subnets.append(ipaddress.ip_network(text))
        except ValueError as exc:
            hint = "host bits set" if "host bits" in str(exc) else "not a CIDR network"
            raise table.error(f"subnets[{i}]", f"{text!r}: {hint}") from None
    ipv6 = table.boolean("ipv6", False)
    dns = table.boolean("dns", True)
    table.finish()
    return TunnelSettings(
        mode="full" if mode == "full" else "split", subnets=tuple(subnets), ipv6=ipv6, dns=dns
    )


def _proposals(
    table: Table, key: str, check: Callable[[str], object], default: Sequence[str]
) -> tuple[str, ...]:
    specs = table.strings(key)
    if specs is None:
        return tuple(default)
    if not specs:
        raise table.error(key, "must not be empty")
    for i, spec in enumerate(specs):
        try:
            check(spec)
        except ValueError as exc:
            raise table.error(f"{key}[{i}]", str(exc)) from None
    return tuple(specs)


# --- Files ---------------------------------------------------------------------------------


# --- Resolving the gateway (network I/O, kept apart from loading) ------------------------

GetAddrInfo = Callable[..., list[tuple[Any, ...]]]


def resolve_gateway(
    profile: Profile, *, getaddrinfo: GetAddrInfo = socket.getaddrinfo
) -> IpAddress:
    """The gateway's address: the literal one, or the first the resolver answers.

    Blocking (it may wait for DNS); an asyncio caller runs it in an executor.
    The resolver's order (RFC 6724 preference, ``/etc/gai.conf``) is kept, so
    IPv6 is used when the host prefers it and has a route.

    Raises:
        GatewayUnresolved: the name does not resolve (the message names it).
    """
    address = profile.gateway.address
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        pass
    try:
        answers = getaddrinfo(address, profile.gateway.port, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise GatewayUnresolved(
            f"cannot resolve the gateway {address} (profile {profile.name}): {reason}"
        ) from None
    for family, _type, _proto, _canon, sockaddr in answers:
        if family in (socket.AF_INET, socket.AF_INET6):
            return ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
    raise GatewayUnresolved(
        f"cannot resolve the gateway {address} (profile {profile.name}): no IPv4 or IPv6 address"
    )
