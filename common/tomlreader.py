"""Typed, strict reading of a parsed TOML document, with errors that name file and key.

The concentrator's configuration and the client's profiles are written by
hand, so every mistake must be reported as precisely as possible and in one
line a person can act on: ``/etc/outpost/concentrator.toml: users[2].psk:
shorter than 8 bytes``. It lives in ``common/`` because both products read
TOML this way (one reader, one error format).
``Table`` wraps one TOML table with its key path; its getters check types and
remember which keys were read, and ``finish()`` turns every key nobody read
into an error, so a typo (``mss_clmap``) never passes silently as a default.

The errors raised here never quote a value (a type error says only what type
was found, an unknown key names only the key, which may be a misspelt ``psk``):
secrets do not belong in logs. Callers quote values only of keys that hold no secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Final

_TYPE_NAMES: Final[dict[type, str]] = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    list: "an array",
    dict: "a table",
}


class ConfigError(Exception):
    """A configuration problem: which file, which key, what is wrong.

    ``str()`` is always a single line, so it can go to stderr or a log as is.
    Attributes ``source``, ``key`` and ``problem`` let callers (and tests) look
    at the parts.
    """

    def __init__(self, source: Path | str, key: str, problem: str) -> None:
        self.source = str(source)
        self.key = key
        self.problem = problem
        super().__init__(self.source, key, problem)

    def __str__(self) -> str:
        line = f"{self.source}: {self.key}: {self.problem}" if self.key else ""
        line = line or f"{self.source}: {self.problem}"
        return " ".join(line.split())


def _kind(value: object) -> str:
    for python_type, name in _TYPE_NAMES.items():
        if type(value) is python_type:
            return name
    return type(value).__name__


class Table:
    """One TOML table being read, with the key path that names it in errors."""

    def __init__(self, source: Path, path: str, data: Mapping[str, object]) -> None:
        self.source = source
        self.path = path
        self._data = data
        self._read: set[str] = set()

    # --- Errors ---------------------------------------------------------------

    def key_path(self, key: str) -> str:
        """``section.key`` (or just ``key`` at the top level)."""
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, problem: str) -> ConfigError:
        """A ``ConfigError`` about ``key`` of this table (``key=""``: the table itself)."""
        return ConfigError(self.source, self.key_path(key) if key else self.path, problem)

    def finish(self) -> None:
        """Refuse every key of this table that no getter asked for (typos, stale keys)."""
        for key in self._data:
            if key not in self._read:
                raise self.error(key, "unknown key")

    # --- Getters --------------------------------------------------------------

    def has(self, key: str) -> bool:
        """Whether ``key`` is present (without marking it read)."""
        return key in self._data

    def _get(self, key: str, expected: type) -> object | None:
        self._read.add(key)
        if key not in self._data:
            return None
        value = self._data[key]
        # bool is an int subclass in Python; TOML keeps them apart and so do we.
        ok = type(value) is expected or (expected is float and type(value) is int)
        if not ok:
            raise self.error(key, f"expected {_TYPE_NAMES[expected]}, got {_kind(value)}")
        return value

    def string(self, key: str) -> str | None:
        """A string, or None when absent."""
        value = self._get(key, str)
        assert value is None or isinstance(value, str)
        return value

    def required_string(self, key: str) -> str:
        """A string that must be present and non-empty."""
        value = self.string(key)
        if value is None:
            raise self.error(key, "missing (required)")
        if not value.strip():
            raise self.error(key, "must not be empty")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        """A boolean, or ``default``."""
        value = self._get(key, bool)
        assert value is None or isinstance(value, bool)
        return default if value is None else value

    def integer(self, key: str, default: int, *, minimum: int, maximum: int) -> int:
        """An integer within [minimum, maximum], or ``default``."""
        value = self._get(key, int)
        if value is None:
            return default
        assert isinstance(value, int)
        if not minimum <= value <= maximum:
            raise self.error(key, f"{value} is out of range {minimum}..{maximum}")
        return value

    def optional_integer(self, key: str, *, minimum: int, maximum: int) -> int | None:
        """An integer within [minimum, maximum], or None when absent."""
        if key not in self._data:
            self._read.add(key)
            return None
        return self.integer(key, 0, minimum=minimum, maximum=maximum)

    def seconds(self, key: str, default: float) -> float:
        """A positive duration in seconds (integer or float), or ``default``."""
        value = self._get(key, float)
        if value is None:
            return default
        assert isinstance(value, int | float)
        if not value > 0:
            raise self.error(key, f"{value} must be a positive number of seconds")
        return float(value)

    def strings(self, key: str) -> list[str] | None:
        """An array of strings, or None when absent."""
        value = self._get(key, list)
        if value is None:
            return None
        assert isinstance(value, list)
        for index, item in enumerate(value):
            if type(item) is not str:
                raise self.error(f"{key}[{index}]", f"expected a string, got {_kind(item)}")
        return list(value)

    def table(self, key: str) -> Table | None:
        """A sub-table, or None when absent."""
        value = self._get(key, dict)
        if value is None:
            return None
        assert isinstance(value, dict)
        return Table(self.source, self.key_path(key), value)

    def tables(self, key: str) -> list[Table]:
        """An array of tables (``[[users]]``); empty when absent."""
        value = self._get(key, list)
        if value is None:
            return []
        assert isinstance(value, list)
        result = []
        for index, item in enumerate(value):
            path = f"{self.key_path(key)}[{index}]"
            if type(item) is not dict:
                raise ConfigError(self.source, path, f"expected a table, got {_kind(item)}")
            result.append(Table(self.source, path, item))
        return result
