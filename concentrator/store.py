"""Where the concentrator keeps state that must outlive the process: address leases.

``Store`` is the small interface (DESIGN.md "Where it goes beyond one
machine"): SQLite by default (``SqliteStore``, one file, no set-up), an
in-memory ``MemoryStore`` for tests, and later PostgreSQL when several
concentrators share a pool. It holds rows, not policy: which address to hand
to whom is ``concentrator.pool``'s job, and the pool writes through to the
store on every change so a crash loses nothing it already promised.

Besides leases, a string key-value table holds anything else small that must
survive a restart (the service may keep, say, a COOKIE secret or counters).

Not thread-safe: the control plane is one asyncio thread.
"""

from __future__ import annotations

import ipaddress
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from common.ike.config import IpAddress

SCHEMA_VERSION: Final = 1

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS leases (
        address TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        active INTEGER NOT NULL,
        seq INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS leases_owner ON leases (owner)",
    "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


class StoreError(Exception):
    """The store can not be used: unreadable file, or a schema newer than this code."""


@dataclass(frozen=True, slots=True)
class Lease:
    """One address and the identity it belongs to.

    Attributes:
        address: the inner address (IPv4 or IPv6).
        owner: the identity key (``common.ike.identities.identity_key``).
        active: a live session holds it; otherwise it is released, kept for
            ``owner`` until the pool runs out of never-used addresses.
        seq: when it was last leased or released, as a counter that only
            grows (the pool's clock): the least recently released lease is
            the lowest ``seq`` among the released ones.
    """

    address: IpAddress
    owner: str
    active: bool
    seq: int


class Store(Protocol):
    """Persistent leases (one row per address) and a small key-value table."""

    def get_lease(self, address: IpAddress) -> Lease | None:
        """The lease row of ``address``, if there is one."""
        ...

    def put_lease(self, lease: Lease) -> None:
        """Insert or replace the row of ``lease.address`` (one atomic write)."""
        ...

    def delete_lease(self, address: IpAddress) -> None:
        """Forget ``address`` entirely (no owner keeps it); absent is not an error."""
        ...

    def list_leases(self) -> list[Lease]:
        """Every lease row, in no particular order."""
        ...

    def get(self, key: str) -> str | None:
        """The value stored under ``key``, if any."""
        ...

    def set(self, key: str, value: str) -> None:
        """Store ``value`` under ``key``, replacing any previous value."""
        ...

    def close(self) -> None:
        """Release the underlying resources; the store is unusable afterwards."""
        ...


class MemoryStore:
    """A ``Store`` in a dict: for tests, and for a service that wants no persistence."""

    def __init__(self) -> None:
        self._leases: dict[IpAddress, Lease] = {}
        self._kv: dict[str, str] = {}

    def get_lease(self, address: IpAddress) -> Lease | None:
        return self._leases.get(address)

    def put_lease(self, lease: Lease) -> None:
        self._leases[lease.address] = lease

    def delete_lease(self, address: IpAddress) -> None:
        self._leases.pop(address, None)

    def list_leases(self) -> list[Lease]:
        return list(self._leases.values())

    def get(self, key: str) -> str | None:
        return self._kv.get(key)

    def set(self, key: str, value: str) -> None:
        self._kv[key] = value

    def close(self) -> None:
        pass


class SqliteStore:
    """A ``Store`` in one SQLite file, created (with its directory) on first use.

    WAL journaling with ``synchronous=NORMAL``: a committed lease survives a
    process crash and costs no fsync per handshake (a power loss may forget
    the last few, which then are simply leased again). The directory is made
    0700 and the file 0600: leases map identities to addresses, which is
    nobody else's business.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fresh = not self.path.exists()
            self._db = sqlite3.connect(self.path, isolation_level=None)
            if fresh:
                os.chmod(self.path, 0o600)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{self.path}: {exc}") from exc

    def _migrate(self) -> None:
        """Create the schema on first use; refuse a file written by newer code."""
        with self._transaction():
            for statement in _SCHEMA:
                self._db.execute(statement)
            row = self._db.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                self._db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            elif row[0] > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: schema version {row[0]} is newer than this "
                    f"concentrator's ({SCHEMA_VERSION})"
                )

    def _transaction(self) -> sqlite3.Connection:
        # In autocommit mode the connection's context manager does not open a
        # transaction; BEGIN IMMEDIATE does, and ``with`` commits or rolls back.
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def schema_version(self) -> int:
        """The schema version recorded in the file."""
        row = self._db.execute("SELECT version FROM schema_version").fetchone()
        return int(row[0])

    def get_lease(self, address: IpAddress) -> Lease | None:
        row = self._db.execute(
            "SELECT address, owner, active, seq FROM leases WHERE address = ?", (str(address),)
        ).fetchone()
        return None if row is None else _lease(row)

    def put_lease(self, lease: Lease) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO leases (address, owner, active, seq) VALUES (?, ?, ?, ?)",
            (str(lease.address), lease.owner, int(lease.active), lease.seq),
        )

    def delete_lease(self, address: IpAddress) -> None:
        self._db.execute("DELETE FROM leases WHERE address = ?", (str(address),))

    def list_leases(self) -> list[Lease]:
        rows = self._db.execute("SELECT address, owner, active, seq FROM leases").fetchall()
        return [_lease(row) for row in rows]

    def get(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, value))

    def close(self) -> None:
        self._db.close()


def _lease(row: tuple[str, str, int, int]) -> Lease:
    return Lease(ipaddress.ip_address(row[0]), row[1], bool(row[2]), int(row[3]))
