"""Stores of either kind for the tests, and a PostgreSQL to keep them in.

The store tests run against SQLite and PostgreSQL alike. PostgreSQL is the
real server at 127.0.0.1:5432 (user postgres, trust auth), which CI starts;
when it does not answer the tests fail, they are not skipped. Isolation costs
no CREATE DATABASE per test: every test gets a schema ``t_<random>`` of its
own in the database ``radius_mfa_test`` (made once when missing), named by
``?options=-csearch_path%3Dt_<random>`` in the store URL. A test of the
schema itself (``pg_url``) gets a new one, dropped with everything in it when
it ends; a test that only uses a store (``make_store``) gets one whose tables
an earlier test emptied, which is several times cheaper. The schemas are
dropped when the test run ends.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import psycopg
import pytest

from radius_mfa.secretbox import SecretBox

HOST = "127.0.0.1"
PORT = 5432
DATABASE = "radius_mfa_test"
ADMIN_URL = f"postgresql://postgres@{HOST}:{PORT}/postgres"
DATABASE_URL = f"postgresql://postgres@{HOST}:{PORT}/{DATABASE}"

KINDS = ("sqlite", "postgresql")

T = TypeVar("T")

_database_ready = False


def _connect(url: str) -> psycopg.Connection:
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {HOST}:{PORT} (user postgres, trust auth); the store tests"
            f" need it running: {' '.join(str(exc).split())}",
            pytrace=False,
        )


def ensure_database() -> None:
    """Create the test database once, when missing (two test processes
    racing to make it both succeed)."""
    global _database_ready
    if _database_ready:
        return
    with _connect(ADMIN_URL) as admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
            with contextlib.suppress(psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
                admin.execute(f"CREATE DATABASE {DATABASE}")
    _database_ready = True


def schema_url(schema: str) -> str:
    """The store URL whose tables live in ``schema`` of the test database."""
    return f"{DATABASE_URL}?options=-csearch_path%3D{schema}"


@contextlib.contextmanager
def fresh_schema() -> Iterator[str]:
    """A new empty schema for one test, dropped with its tables afterwards;
    yields the store URL that uses it."""
    ensure_database()
    schema = f"t_{os.urandom(6).hex()}"
    with _connect(DATABASE_URL) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            yield schema_url(schema)
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


# Schemas holding a migrated, emptied store, free for the next test: emptying
# one costs a fraction of creating, migrating and dropping another.
_FREE: list[str] = []
_POOLED: list[str] = []
_admin: psycopg.Connection | None = None
_STORE_TABLES = ("enrolments", "enrol_links", "portal_sessions", "tokens", "devices", "pairings", "pushes", "app_passwords", "users", "challenges",
                 "clients_seen", "client_drops", "auth_log", "meta", "sent_codes", "code_sends")


def _pool_admin() -> psycopg.Connection:
    global _admin
    if _admin is None or _admin.closed or _admin.broken:
        ensure_database()
        _admin = _connect(DATABASE_URL)
        _admin.execute("SET lock_timeout = '5s'")
    return _admin


@contextlib.contextmanager
def store_schema() -> Iterator[str]:
    """A schema for a test that uses a PostgreSQL store as it is (not its
    schema): new and empty, or one an earlier test used, emptied, with its
    tables in place. Yields the store URL that uses it."""
    if _FREE:
        schema = _FREE.pop()
    else:
        schema = f"t_{os.urandom(6).hex()}"
        _pool_admin().execute(f"CREATE SCHEMA {schema}")
        _POOLED.append(schema)
    reusable = False
    try:
        yield schema_url(schema)
        admin = _pool_admin()
        tables = {row[0] for row in admin.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))}
        if tables <= {*_STORE_TABLES, "schema_version"}:   # nothing the test added
            with admin.transaction():
                for table in _STORE_TABLES:
                    if table in tables:
                        admin.execute(f"DELETE FROM {schema}.{table}")
            reusable = True
    finally:
        if reusable:
            _FREE.append(schema)
        else:
            _drop_pooled(schema)


def _drop_pooled(schema: str) -> None:
    with contextlib.suppress(psycopg.Error):
        _pool_admin().execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    with contextlib.suppress(ValueError):
        _POOLED.remove(schema)
    with contextlib.suppress(ValueError):
        _FREE.remove(schema)


@atexit.register
def _drop_pool() -> None:
    """At the end of the test run, in the process that made them."""
    for schema in list(_POOLED):
        _drop_pooled(schema)
    if _admin is not None:
        _admin.close()


def admin_connection() -> psycopg.Connection:
    """A connection of our own to the test database (autocommit), for what a
    test does behind a store's back."""
    ensure_database()
    return _connect(DATABASE_URL)


def new_store(kind: str, tmp_path: Path, pg_url: str | None = None):
    """An opened store of ``kind`` ("sqlite" or "postgresql"), its key in
    ``tmp_path/store.key``: every store opened on one ``tmp_path`` (and, for
    PostgreSQL, one ``pg_url``) shares the database and the key."""
    from radius_mfa.store.postgres import PostgresStore
    from radius_mfa.store.sqlite import SqliteStore

    box = SecretBox.from_file(str(Path(tmp_path) / "store.key"))
    if kind == "sqlite":
        return SqliteStore(str(Path(tmp_path) / "store.db"), box)
    if kind == "postgresql":
        if pg_url is None:
            raise ValueError("a PostgreSQL store needs the URL of its schema (the pg_url fixture)")
        return PostgresStore(pg_url, box)
    raise ValueError(f"no store of kind {kind}")


class StoreMaker:
    """Opens stores of one kind on one database, as many as a test wants
    (several servers sharing a store), and closes them all at the end."""

    def __init__(self, kind: str, tmp_path: Path, pg_url: str | None):
        self.kind = kind
        self.tmp_path = Path(tmp_path)
        self.pg_url = pg_url
        self._opened: list = []

    def __call__(self):
        store = new_store(self.kind, self.tmp_path, self.pg_url)
        self._opened.append(store)
        return store

    def with_box(self, box: SecretBox):
        """The same database opened with another key (refused, normally)."""
        from radius_mfa.store.postgres import PostgresStore
        from radius_mfa.store.sqlite import SqliteStore

        if self.kind == "sqlite":
            store = SqliteStore(str(self.tmp_path / "store.db"), box)
        else:
            store = PostgresStore(self.pg_url, box)
        self._opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self._opened:
            store.close()
        self._opened.clear()


def raw_rows(store, sql: str) -> list[tuple]:
    """Rows of ``sql`` (no parameters) through the store's own connection:
    what the database holds, as plain tuples, for either kind."""
    conn = store._conn()
    if store.__class__.__name__ == "PostgresStore":
        from psycopg.rows import tuple_row

        with conn.cursor(row_factory=tuple_row) as cursor:
            return cursor.execute(sql).fetchall()
    return [tuple(row) for row in conn.execute(sql).fetchall()]


def race(workers: list[Callable[[], T]]) -> list[T]:
    """Run the callables in threads released at the same instant."""
    barrier = threading.Barrier(len(workers))
    results: list = [None] * len(workers)
    errors: list[BaseException] = []

    def run(index: int, work: Callable[[], T]) -> None:
        try:
            barrier.wait()
            results[index] = work()
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, w)) for i, w in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return results
