"""Lease stores: SQLite persists across reopen and creates its schema; memory matches it."""

from __future__ import annotations

import ipaddress
import sqlite3
import stat
from pathlib import Path

import pytest

from concentrator.store import SCHEMA_VERSION, Lease, MemoryStore, SqliteStore, Store, StoreError

A4 = ipaddress.ip_address("10.99.100.2")
A6 = ipaddress.ip_address("fd00::2")


def _exercise(store: Store) -> None:
    store.put_lease(Lease(A4, "ID_RFC822_ADDR:alice@x", True, 1))
    store.put_lease(Lease(A6, "ID_RFC822_ADDR:alice@x", False, 2))
    store.put_lease(Lease(A4, "ID_RFC822_ADDR:bob@x", False, 3))  # replaces by address
    store.set("cookie-secret", "abc")


def test_sqlite_creates_directory_schema_and_private_file(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "outpost" / "state.db"
    store = SqliteStore(path)
    assert store.schema_version() == SCHEMA_VERSION
    store.close()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert {"schema_version", "leases", "kv"} <= tables
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    _exercise(store)
    store.close()
    reopened = SqliteStore(path)
    assert sorted(reopened.list_leases(), key=lambda lease: lease.seq) == [
        Lease(A6, "ID_RFC822_ADDR:alice@x", False, 2),
        Lease(A4, "ID_RFC822_ADDR:bob@x", False, 3),
    ]
    assert reopened.get_lease(A4) == Lease(A4, "ID_RFC822_ADDR:bob@x", False, 3)
    assert reopened.get("cookie-secret") == "abc"
    assert reopened.get("absent") is None
    reopened.delete_lease(A4)
    reopened.delete_lease(A4)  # absent: not an error
    assert reopened.get_lease(A4) is None
    assert reopened.schema_version() == SCHEMA_VERSION
    reopened.close()


def test_memory_store_behaves_like_sqlite(tmp_path: Path) -> None:
    memory, sqlite = MemoryStore(), SqliteStore(tmp_path / "s.db")
    for store in (memory, sqlite):
        _exercise(store)
    key = lambda lease: lease.seq  # noqa: E731
    assert sorted(memory.list_leases(), key=key) == sorted(sqlite.list_leases(), key=key)
    assert memory.get("cookie-secret") == sqlite.get("cookie-secret")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SqliteStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer"):
        SqliteStore(path)


def test_unusable_path_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError):
        SqliteStore(tmp_path / "file" / "state.db")
