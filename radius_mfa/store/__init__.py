"""Where the server and the commands keep their state: pick a store by URL.

``sqlite:////abs/path.db`` (four slashes: an absolute path) or
``sqlite:///rel/path.db`` (three: relative to the working directory) open
:class:`~radius_mfa.store.sqlite.SqliteStore`: one server, or servers on one
host. ``postgresql://user@host:port/database`` (also spelled ``postgres://``
or ``postgresql+psycopg://``) opens
:class:`~radius_mfa.store.postgres.PostgresStore`, which servers on several
hosts share; every query parameter libpq knows passes through, e.g.
``?sslmode=verify-full`` or ``?options=-csearch_path%3Dradius_mfa`` (the
schema that holds the tables). A store URL may carry a database password, so
no error message here ever repeats the URL.
"""

from __future__ import annotations

import os

from radius_mfa.errors import StoreError
from radius_mfa.secretbox import SecretBox
from radius_mfa.store.base import Store
from radius_mfa.store.sqlite import SqliteStore

__all__ = ["SqliteStore", "Store", "open_store"]

_SQLITE_PREFIX = "sqlite:///"
_POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg", "postgres+psycopg")


def open_store(url: str, key_file: str) -> Store:
    """The store named by ``url``, its token secrets sealed with the key in
    ``key_file`` (made on first use); StoreError when it names none we have
    or cannot be opened."""
    scheme, separator, _rest = url.partition("://")
    if not separator:
        raise StoreError("the store must be a URL such as sqlite:////var/lib/radius-mfa/radius-mfa.db")
    scheme = scheme.lower()
    if scheme == "sqlite":
        return _open_sqlite(url, key_file)
    if scheme in _POSTGRES_SCHEMES:
        return _open_postgres(url, key_file)
    if not scheme.replace("+", "").isalnum():
        raise StoreError(
            "the store URL has no recognisable scheme: use sqlite:////path/to/file.db"
            " or postgresql://user@host/database"
        )
    raise StoreError(
        f"unsupported store URL scheme {scheme}: use sqlite:////path/to/file.db or postgresql://user@host/database"
    )


def _open_sqlite(url: str, key_file: str) -> Store:
    if not url.lower().startswith(_SQLITE_PREFIX):
        raise StoreError(
            "a SQLite store URL has no host: sqlite:////absolute/path.db or sqlite:///relative/path.db"
        )
    path = url[len(_SQLITE_PREFIX):]
    if not path or path.endswith("/") or path == ":memory:":
        raise StoreError("a SQLite store URL must name a file: sqlite:////absolute/path.db")
    return SqliteStore(os.path.abspath(path), SecretBox.from_file(key_file))


def _open_postgres(url: str, key_file: str) -> Store:
    # imported here: a SQLite store works without psycopg installed
    try:
        from radius_mfa.store.postgres import PostgresStore
    except ImportError:
        raise StoreError("the PostgreSQL store needs psycopg 3: pip install 'psycopg[binary]'") from None
    return PostgresStore(url, SecretBox.from_file(key_file))
