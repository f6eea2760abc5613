"""Load-test profiles: a client profile, plus an issuing CA for certificate users.

A load-test profile is a client profile (``client.profile``: same file, same
rules, same one-line errors) whose ``[auth] id`` may hold ``{n}``. For
certificate users it may instead of ``psk`` or ``certificate`` hold two keys
that only ``outpost-loadtest`` reads::

    [auth]
    id = "user-{n}@loadtest"
    certificate_ca = "loadtest-ca.pem"      # the test CA the gateway trusts
    certificate_ca_key = "loadtest-ca.key"  # its private key: the tester issues from it
    ca = "gateway-ca.pem"                   # checks the gateway's certificate (required)

Client *n* then authenticates with its own ECDSA P-256 certificate for
``user-n@loadtest``, issued by ``loadtest.issuer`` just before its handshake.

Why these keys live here and not in ``client.profile``: a CA's private key
has no business on a laptop. The normal client reads profiles strictly, so
it refuses ``certificate_ca`` as an unknown key (and a ``{n}`` id anyway);
this module takes the two keys out of ``[auth]`` and hands the rest to the
client's own parser, so everything else is checked exactly as ``outpost up``
would check it, with errors that name the real file and key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from cryptography import x509

from client.profile import Profile, ProfileError, load_profile, profile_from_document
from common.config_files import read_certificates, read_private_key, readable_warning
from common.ike.auth import SigningKey
from common.tomlreader import ConfigError, Table

CA_KEYS: Final = ("certificate_ca", "certificate_ca_key")
_EXCLUSIVE: Final = ("psk", "psk_file", "certificate", "key")


@dataclass(frozen=True)
class IssuingCa:
    """The test CA a load-test profile names: certificate and key (never printed)."""

    certificate: x509.Certificate
    key: SigningKey


@dataclass(frozen=True)
class LoadProfile:
    """A checked load-test profile: the client profile, and the issuing CA if any."""

    profile: Profile
    issuing_ca: IssuingCa | None = None
    warnings: tuple[str, ...] = ()


def load_loadtest_profile(path: Path | str) -> LoadProfile:
    """Read a load-test profile (``{n}`` allowed; ``certificate_ca`` keys allowed).

    Raises:
        ProfileError: as ``client.profile.load_profile``, and for a CA that
            can not issue (no key, key not matching, not a CA certificate).
    """
    source = Path(path)
    data = _parse(source)
    auth = data.get("auth")
    if not isinstance(auth, dict) or not any(key in auth for key in CA_KEYS):
        profile = load_profile(source, allow_pattern=True)
        return LoadProfile(profile, None, profile.warnings)
    try:
        ca, warnings = _issuing_ca(source, auth)
        # The client's parser wants one way to authenticate: give it the CA's
        # own certificate and key (they match, and ``ca`` stays required), then
        # take them out again, so the profile never signs as the CA.
        stand_in = {key: value for key, value in auth.items() if key not in CA_KEYS}
        stand_in["certificate"] = auth["certificate_ca"]
        stand_in["key"] = auth["certificate_ca_key"]
        parsed = _build({**data, "auth": stand_in}, source)
    except ProfileError:
        raise
    except ConfigError as exc:
        raise ProfileError(exc.source, exc.key, exc.problem) from None
    profile = replace(
        parsed,
        auth=replace(parsed.auth, certificate=None, certificate_chain=(), private_key=None),
        # The stand-in "auth.key" warning is the CA key's, already said under its own name.
        warnings=(*(w for w in parsed.warnings if "auth.key:" not in w), *warnings),
    )
    return LoadProfile(profile, ca, profile.warnings)


def _parse(source: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(source.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ProfileError(source, "", f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ProfileError(source, "", "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(source, "", f"TOML syntax error: {exc}") from None


def _issuing_ca(source: Path, auth: dict[str, Any]) -> tuple[IssuingCa, list[str]]:
    table = Table(source, "auth", {name: auth[name] for name in CA_KEYS if name in auth})
    for name in CA_KEYS:
        if name not in auth:
            raise table.error(name, f"missing ({CA_KEYS[0]} and {CA_KEYS[1]} go together)")
    for name in _EXCLUSIVE:
        if name in auth:
            raise table.error(name, f"{name} and {CA_KEYS[0]} are mutually exclusive")
    base = source.parent
    certificate, *_ = read_certificates(table, CA_KEYS[0], base)
    key, key_path = read_private_key(table, CA_KEYS[1], base)
    if key.public_key() != certificate.public_key():
        raise table.error(CA_KEYS[1], "does not match the certificate_ca's public key")
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise table.error(CA_KEYS[0], "is not a CA certificate (basicConstraints CA:TRUE)")
    warning = readable_warning(table, CA_KEYS[1], key_path)
    return IssuingCa(certificate, key), [warning] if warning else []


def _build(data: dict[str, Any], source: Path) -> Profile:
    """The client's own checks on the document (one parser, errors naming the real file)."""
    return profile_from_document(source, data, allow_pattern=True)
