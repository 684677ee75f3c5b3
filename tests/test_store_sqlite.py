"""The SQLite store: what only it has (its file, its pragmas, its schema's
migrations, sqlite:// URLs). Every Store method is tested on both stores in
test_store.py."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from helpers import open_sqlite
from radius_mfa.errors import StoreError
from radius_mfa.model import Device, Pairing, Push, User
from radius_mfa.secretbox import SecretBox
from radius_mfa.store import open_store
from radius_mfa.store import sqlite as sqlite_module
from radius_mfa.store.sqlite import SqliteStore, schema_version

NOW = 1_700_000_000.0


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "radius-mfa.db")


@pytest.fixture
def store(db_path: str):
    opened = open_sqlite(db_path)
    yield opened
    opened.close()


# --- schema, file, open ------------------------------------------------------


def test_schema_version_is_recorded(store: SqliteStore, db_path: str) -> None:
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(schema_version(),)]
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert schema_version() >= 1


def test_connection_settings(store: SqliteStore) -> None:
    conn = store._conn()
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1   # NORMAL


def test_newer_schema_is_refused(db_path: str) -> None:
    open_sqlite(db_path).close()
    with sqlite3.connect(db_path) as raw:
        raw.execute("UPDATE schema_version SET version = 99")
    raw.close()
    with pytest.raises(StoreError, match="99.*upgrade radius-mfa"):
        open_sqlite(db_path)


def test_migration_adds_a_table_and_keeps_data(db_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    first = open_sqlite(db_path)
    first.add_user(User("alice", created=NOW))
    first.close()
    step = ("CREATE TABLE gadgets (id TEXT PRIMARY KEY, user TEXT REFERENCES users (name))",)
    monkeypatch.setattr(sqlite_module, "MIGRATIONS", sqlite_module.MIGRATIONS + (step,))
    second = open_sqlite(db_path)
    assert second.get_user("alice") == User("alice", created=NOW)
    conn = second._conn()
    assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == schema_version()
    assert conn.execute("SELECT count(*) FROM gadgets").fetchone()[0] == 0
    second.close()


def test_failed_migration_changes_nothing(db_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    open_sqlite(db_path).close()
    before = len(sqlite_module.MIGRATIONS)
    step = ("CREATE TABLE gadgets (id TEXT PRIMARY KEY)", "THIS IS NOT SQL")
    monkeypatch.setattr(sqlite_module, "MIGRATIONS", sqlite_module.MIGRATIONS + (step,))
    with pytest.raises(StoreError):
        open_sqlite(db_path)
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("SELECT version FROM schema_version").fetchone()[0] == before
        assert raw.execute("SELECT count(*) FROM sqlite_master WHERE name = 'gadgets'").fetchone()[0] == 0
    raw.close()


def test_a_store_of_the_previous_version_upgrades_to_push_approval(
        db_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    previous = sqlite_module.MIGRATIONS[:-1]
    with monkeypatch.context() as patch:
        patch.setattr(sqlite_module, "MIGRATIONS", previous)
        old = open_sqlite(db_path)
        old.add_user(User("alice", created=NOW))
        old.close()
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("SELECT version FROM schema_version").fetchone()[0] == len(previous)
        raw.execute("INSERT INTO code_sends (user, time) VALUES ('alice', ?)", (NOW,))   # a code sent before
    raw.close()

    store = open_sqlite(db_path)
    conn = store._conn()
    assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == schema_version()
    assert [tuple(row) for row in conn.execute("SELECT user, kind, time FROM code_sends")] == [("alice", "code", NOW)]
    assert store.get_user("alice") == User("alice", created=NOW)
    assert store.allow_send("alice", NOW + 1, 1, 300) is False              # the old send was a code
    assert store.allow_send("alice", NOW + 1, 1, 300, kind="push") is True
    store.add_pairing(Pairing("ab" * 32, "alice", NOW, NOW + 600))
    device = store.complete_pairing("ab" * 32, Device("d0123456789abcdef", "", "phone", "a2V5"), NOW + 1)
    assert store.list_devices("alice") == [device]
    store.put_push(Push("0" * 32, "alice", "vpn", None, None, NOW, NOW + 60))
    assert [p.id for p in store.pending_pushes("alice", NOW)] == ["0" * 32]
    store.close()


def test_close_closes_this_threads_connection_so_a_copy_of_the_file_is_whole(
        db_path: str, tmp_path: Path) -> None:
    """After close() the write-ahead log is folded back into the file: a
    byte copy of it (what a backup or a benchmark's template does) holds
    every row written, not an empty database beside a WAL left behind."""
    opened = open_sqlite(db_path)
    opened.add_user(User(name="alice", created=NOW))
    opened.close()
    assert not os.path.exists(db_path + "-wal")
    copy = tmp_path / "copy.db"
    copy.write_bytes(Path(db_path).read_bytes())
    with sqlite3.connect(copy) as conn:
        assert conn.execute("SELECT name FROM users").fetchall() == [("alice",)]


def test_file_and_directory_are_private(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "store.db"
    open_sqlite(str(path)).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_foreign_sqlite_file_is_refused(db_path: str) -> None:
    with sqlite3.connect(db_path) as raw:
        raw.execute("CREATE TABLE something_else (x)")
    raw.close()
    with pytest.raises(StoreError, match="not a radius-mfa store"):
        open_sqlite(db_path)


def test_file_that_is_not_a_database_is_refused(db_path: str) -> None:
    Path(db_path).write_bytes(b"this is not a database, just some text" * 100)
    with pytest.raises(StoreError, match="not a database"):
        open_sqlite(db_path)


def test_directory_that_cannot_be_made_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot create"):
        SqliteStore(str(blocker / "store.db"), SecretBox(bytes(32)))


# --- open_store --------------------------------------------------------------


def test_open_store_absolute_sqlite_url(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/abs.db", str(tmp_path / "store.key"))
    assert isinstance(store, SqliteStore)
    assert store.path == str(tmp_path / "abs.db")
    store.close()


def test_open_store_relative_sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///sub/rel.db", "store.key")
    assert store.path == str(tmp_path / "sub" / "rel.db")
    store.close()


@pytest.mark.parametrize(
    "url",
    [
        "mysql://root:hunter2@localhost/mfa",
        "/var/lib/radius-mfa/hunter2.db",
        "sqlite://user:hunter2@host/x.db",
        "sqlite:///",
        "sqlite:///:memory:",
        "hun ter2://x",
    ],
)
def test_bad_store_url_is_refused_without_echoing_it(url: str) -> None:
    with pytest.raises(StoreError) as caught:
        open_store(url, "store.key")
    assert "hunter2" not in str(caught.value)
