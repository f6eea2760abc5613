"""Files a configuration names: certificates, private keys, PSK files.

The concentrator's config and the client's profiles both point at PEM/DER
files from a TOML key. Reading them the same way in one place keeps the
errors alike (one line naming the file, the key and the problem, never a
byte of key material) and the world-readable warning alike.
"""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from common.ike.auth import SigningKey
from common.ike.certs import load_certificates
from common.tomlreader import Table


def read_file(table: Table, key: str, base: Path) -> tuple[Path, bytes]:
    """The file named by ``key`` (relative to ``base``, ``~`` expanded) and its bytes."""
    path = base / Path(table.required_string(key)).expanduser()
    try:
        return path, path.read_bytes()
    except OSError as exc:
        raise table.error(key, f"cannot read {path}: {exc.strerror or exc}") from None


def read_certificates(table: Table, key: str, base: Path) -> list[x509.Certificate]:
    """Every certificate in the PEM or DER file named by ``key``, in file order."""
    path, data = read_file(table, key, base)
    try:
        return load_certificates(data)
    except ValueError:
        raise table.error(key, f"{path} holds no PEM or DER certificate") from None


def read_private_key(table: Table, key: str, base: Path) -> tuple[SigningKey, Path]:
    """The unencrypted signing key named by ``key`` and its path (for ``readable_warning``)."""
    path, data = read_file(table, key, base)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            loaded = serialization.load_pem_private_key(data, password=None)
        else:
            loaded = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError):
        # The parser's message may quote key material; say only what the file is not.
        raise table.error(key, f"{path} is not an unencrypted PEM/DER private key") from None
    if not isinstance(
        loaded, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    ):
        raise table.error(key, "only ECDSA, Ed25519 and RSA keys can sign IKE AUTH")
    return loaded, path


def readable_warning(table: Table, key: str, path: Path) -> str | None:
    """A one-line warning when the secret file ``path`` is world-readable, else None."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if mode & stat.S_IROTH:
        return f"{table.source}: {table.key_path(key)}: {path} is world-readable; chmod o-r it"
    return None
