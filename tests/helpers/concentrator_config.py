"""Concentrator configurations for tests: a valid base as a dict, and a TOML writer.

Tests mutate ``base_document()`` (a plain dict, one key per TOML section) to
make exactly one thing wrong, then ``write_config`` it and load it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ALICE_PSK = "alice-very-secret-psk-0123456789"
BOB_PSK = "bob-very-secret-psk-9876543210xy"
LOAD_PSK = "loadtest-shared-psk-abcdefghijkl"

Document = dict[str, Any]


def base_document() -> Document:
    """A small valid configuration: two users, a group, a pattern, IPv4 and IPv6 pools."""
    return {
        "server": {"listen": ["127.0.0.1", "::1"], "identity": "vpn.example.com"},
        "pool": {"ipv4": "10.99.100.0/24", "ipv6": "fd00:99:100::/120", "dns": ["10.99.0.53"]},
        "lan": {"subnets": ["10.99.0.0/24", "10.99.1.0/24", "fd00:99::/64"]},
        "groups": [{"name": "ops", "subnets": ["10.99.1.0/24"]}],
        "users": [
            {"id": "alice@example.com", "psk": ALICE_PSK},
            {"id": "bob@example.com", "psk": BOB_PSK, "group": "ops"},
            {"id": "user-{n}@loadtest", "psk": LOAD_PSK, "n_max": 99},
        ],
        "store": {"path": "state.db"},
        "control": {"socket": "control.sock"},
    }


def _value(value: Any) -> str:
    # JSON strings, numbers, booleans and arrays of them are valid TOML values.
    return json.dumps(value)


def dumps(document: Document) -> str:
    """TOML text for ``document`` (scalars first, then tables, then arrays of tables)."""
    lines = [f"{k} = {_value(v)}" for k, v in document.items() if not isinstance(v, dict | list)]
    for key, value in document.items():
        if isinstance(value, dict):
            lines.append(f"[{key}]")
            lines += [f"{k} = {_value(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                lines.append(f"[[{key}]]")
                lines += [f"{k} = {_value(v)}" for k, v in item.items()]
        elif isinstance(value, list):
            lines.insert(0, f"{key} = {_value(value)}")
    return "\n".join(lines) + "\n"


def write_config(directory: Path, document: Document, name: str = "concentrator.toml") -> Path:
    """Write ``document`` as ``directory/name`` and return the path."""
    path = directory / name
    path.write_text(dumps(document))
    return path
