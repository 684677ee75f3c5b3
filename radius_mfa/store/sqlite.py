"""The SQLite store: one file shared by the server, its workers and the commands.

The statements are :class:`~radius_mfa.store.sqlstore.SqlStore`'s, written
once for both stores; this module holds what only SQLite has: the file, its
connections and transactions, the spelling of a statement (:func:`spelled`),
its constraint errors and its schema's migrations.

Concurrency is SQLite's job, not ours: the file is in WAL mode (readers never
block the writer), every connection waits up to ``BUSY_TIMEOUT_MS`` for a lock
instead of failing, and every read-modify-write is either one statement
(compare-and-set ``UPDATE ... WHERE``, ``DELETE ... RETURNING``) or runs in a
``BEGIN IMMEDIATE`` transaction, which takes the write lock before it reads.
Nothing is locked in process memory, so two processes behave like two threads.

Each thread gets its own connection, opened lazily (sqlite3 connections must
stay in the thread that made them). A process forked after the store was
opened opens fresh connections too: a SQLite connection must not cross fork.

The schema carries a version. :data:`MIGRATIONS` lists the steps from an empty
file to the current version; on open, the missing steps run in order inside one
transaction, so a later release adds tables without losing data, and a file
written by a newer release is refused rather than misread.

Token secrets are sealed (AES-256-GCM, :mod:`radius_mfa.secretbox`) with a key
kept outside the database; the store keeps a check value of that key and
refuses to open with another one. A store written before secrets were sealed
has its secrets sealed in place the first time it is opened with a key. The
file is still made private (mode 0600, in a 0700 directory): it holds password
hashes and the audit trail.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
from typing import Any, Iterator, Sequence

from radius_mfa.errors import StoreError
from radius_mfa.secretbox import SecretBox, give_to_directory_owner
from radius_mfa.store.sqlstore import FOREIGN_KEY, UNIQUE, SqlStore, _Connection

BUSY_TIMEOUT_MS = 5000

# Each migration is the list of statements that takes the schema from version
# i to version i + 1 (MIGRATIONS[0]: empty file → version 1). Append, never
# edit a released step.
#
# tokens.user references users(name) without ON DELETE CASCADE, on purpose:
# what happens to a user's tokens is decided in code (remove_user deletes
# software tokens now; hardware tokens may go back to the pool later), and the
# foreign key only guarantees that no token points at a user who is gone.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE users (
            name          TEXT PRIMARY KEY NOT NULL,
            display_name  TEXT,
            email         TEXT,
            phone         TEXT,
            password_hash TEXT,
            disabled      INTEGER NOT NULL DEFAULT 0,
            failures      INTEGER NOT NULL DEFAULT 0,
            locked_until  REAL,
            created       REAL NOT NULL
        )
        """,
        """
        CREATE TABLE tokens (
            serial    TEXT PRIMARY KEY NOT NULL,
            type      TEXT NOT NULL CHECK (type IN ('totp', 'hotp')),
            secret    TEXT NOT NULL,
            user      TEXT REFERENCES users (name),
            digits    INTEGER NOT NULL,
            period    INTEGER NOT NULL,
            algorithm TEXT NOT NULL CHECK (algorithm IN ('sha1', 'sha256', 'sha512')),
            counter   INTEGER NOT NULL DEFAULT 0,
            last_step INTEGER,
            created   REAL NOT NULL
        )
        """,
        "CREATE INDEX tokens_user ON tokens (user)",
        """
        CREATE TABLE challenges (
            state_digest TEXT PRIMARY KEY NOT NULL,
            user         TEXT NOT NULL,
            client       TEXT NOT NULL,
            created      REAL NOT NULL,
            expires      REAL NOT NULL,
            factors      TEXT NOT NULL,
            data         TEXT NOT NULL
        )
        """,
        "CREATE INDEX challenges_expires ON challenges (expires)",
        """
        CREATE TABLE clients_seen (
            name            TEXT PRIMARY KEY NOT NULL,
            requests        INTEGER NOT NULL DEFAULT 0,
            last_seen       REAL,
            last_with_ma    REAL,
            last_without_ma REAL
        )
        """,
        """
        CREATE TABLE auth_log (
            id     INTEGER PRIMARY KEY,
            time   REAL NOT NULL,
            user   TEXT,
            fields TEXT NOT NULL
        )
        """,
        "CREATE INDEX auth_log_time ON auth_log (time)",
        "CREATE INDEX auth_log_user ON auth_log (user, time)",
    ),
    (
        # token resync: a TOTP token's clock offset, in time steps
        "ALTER TABLE tokens ADD COLUMN drift INTEGER NOT NULL DEFAULT 0",
        # an imported key fob outlives its user: unassigned, not deleted (its
        # counter and replay guard stay, so old codes stay refused)
        "ALTER TABLE tokens ADD COLUMN hardware INTEGER NOT NULL DEFAULT 0",
        # facts about the store itself: the check value of the key that seals secrets
        "CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)",
        # codes sent by SMS, voice call or mail: an HMAC of (user, code), never the code
        """
        CREATE TABLE sent_codes (
            id                 TEXT PRIMARY KEY NOT NULL,
            user               TEXT NOT NULL,
            channel            TEXT NOT NULL,
            code_mac           TEXT NOT NULL,
            client             TEXT NOT NULL,
            calling_station_id TEXT,
            provider           TEXT,
            created            REAL NOT NULL,
            expires            REAL NOT NULL
        )
        """,
        "CREATE INDEX sent_codes_user ON sent_codes (user, created)",
        "CREATE INDEX sent_codes_expires ON sent_codes (expires)",
        # one row per code sent, for the per-user rate limit
        "CREATE TABLE code_sends (user TEXT NOT NULL, time REAL NOT NULL)",
        "CREATE INDEX code_sends_user ON code_sends (user, time)",
    ),
    (
        # push approval. Sends are counted by kind ("code": SMS, voice, email;
        # "push"), each kind against its own limit; the sends recorded before
        # were all codes.
        "ALTER TABLE code_sends ADD COLUMN kind TEXT NOT NULL DEFAULT 'code'",
        "DROP INDEX code_sends_user",
        "CREATE INDEX code_sends_user ON code_sends (user, kind, time)",
        # one-time pairing links: the SHA-256 of the token, never the token
        """
        CREATE TABLE pairings (
            token_digest TEXT PRIMARY KEY NOT NULL,
            user         TEXT NOT NULL REFERENCES users (name),
            created      REAL NOT NULL,
            expires      REAL NOT NULL
        )
        """,
        "CREATE INDEX pairings_user ON pairings (user)",
        "CREATE INDEX pairings_expires ON pairings (expires)",
        # paired devices: a device never outlives its user (the foreign key)
        """
        CREATE TABLE devices (
            id         TEXT PRIMARY KEY NOT NULL,
            user       TEXT NOT NULL REFERENCES users (name),
            name       TEXT NOT NULL,
            public_key TEXT NOT NULL,
            created    REAL NOT NULL,
            last_seen  REAL
        )
        """,
        "CREATE INDEX devices_user ON devices (user, created)",
        # login attempts waiting for (or answered by) a device
        """
        CREATE TABLE pushes (
            id                 TEXT PRIMARY KEY NOT NULL,
            user               TEXT NOT NULL,
            client             TEXT NOT NULL,
            calling_station_id TEXT,
            user_ip            TEXT,
            created            REAL NOT NULL,
            expires            REAL NOT NULL,
            number             INTEGER,
            status             TEXT NOT NULL CHECK (status IN
                                   ('pending', 'approved', 'used', 'denied', 'fraud', 'wrong_number')),
            device             TEXT,
            answered           REAL
        )
        """,
        "CREATE INDEX pushes_user_status ON pushes (user, status, created)",
        "CREATE INDEX pushes_client_user ON pushes (client, user, created)",
        "CREATE INDEX pushes_expires ON pushes (expires)",
    ),
    (
        # a State is honoured once: an answered challenge is kept (used) until
        # it expires, so a NAS retry of the answer to a push prompt can be
        # told from a made-up State
        "ALTER TABLE challenges ADD COLUMN used REAL",
        # when a client first sent a Message-Authenticator: since then `auto` requires it
        "ALTER TABLE clients_seen ADD COLUMN first_with_ma REAL",
        "CREATE INDEX challenges_user ON challenges (user, created)",
        # requests dropped unanswered, per client and reason (`report clients`)
        """
        CREATE TABLE client_drops (
            client TEXT NOT NULL,
            reason TEXT NOT NULL,
            count  INTEGER NOT NULL DEFAULT 0,
            last   REAL,
            PRIMARY KEY (client, reason)
        )
        """,
    ),
    (
        # app passwords: only their slow hash, as a user's password
        """
        CREATE TABLE app_passwords (
            id            TEXT PRIMARY KEY NOT NULL,
            user          TEXT NOT NULL REFERENCES users (name),
            label         TEXT,
            password_hash TEXT NOT NULL,
            created       REAL NOT NULL,
            last_used     REAL
        )
        """,
        "CREATE INDEX app_passwords_user ON app_passwords (user, created)",
    ),
    (
        # one-time enrolment links to the self-service page: the SHA-256 of
        # the token, never the token; ``used`` set once, by one compare-and-set
        """
        CREATE TABLE enrol_links (
            token_digest TEXT PRIMARY KEY NOT NULL,
            user         TEXT NOT NULL REFERENCES users (name),
            created      REAL NOT NULL,
            expires      REAL NOT NULL,
            used         REAL
        )
        """,
        "CREATE INDEX enrol_links_user ON enrol_links (user)",
        "CREATE INDEX enrol_links_expires ON enrol_links (expires)",
        # signed-in browsers of the self-service page, shared by every worker
        # and server: the SHA-256 of the cookie, never the cookie
        """
        CREATE TABLE portal_sessions (
            id_digest    TEXT PRIMARY KEY NOT NULL,
            user         TEXT NOT NULL REFERENCES users (name),
            csrf         TEXT NOT NULL,
            created      REAL NOT NULL,
            last_seen    REAL NOT NULL,
            expires      REAL NOT NULL,
            pending_totp TEXT
        )
        """,
        "CREATE INDEX portal_sessions_user ON portal_sessions (user)",
        "CREATE INDEX portal_sessions_expires ON portal_sessions (expires)",
    ),
    (
        # `report usage`: each record's result and factor in columns of their
        # own (filled from the JSON for the records kept so far), and one
        # index that answers the month's counts without reading the records
        "ALTER TABLE auth_log ADD COLUMN result TEXT",
        "ALTER TABLE auth_log ADD COLUMN factor TEXT",
        "UPDATE auth_log SET result = json_extract(fields, '$.result'), factor = json_extract(fields, '$.factor')",
        "CREATE INDEX auth_log_usage ON auth_log (time, result, factor, user)",
        # the enrolment history: one row per factor a user came to hold
        # (kind token, device, app_password, phone or email; ref its serial,
        # id or the kind), ``until`` set when it was taken away
        """
        CREATE TABLE enrolments (
            id    INTEGER PRIMARY KEY,
            user  TEXT NOT NULL,
            kind  TEXT NOT NULL,
            ref   TEXT NOT NULL,
            since REAL NOT NULL,
            until REAL
        )
        """,
        "CREATE INDEX enrolments_user ON enrolments (user, kind, ref)",
        "CREATE INDEX enrolments_ref ON enrolments (kind, ref)",
        # what the store holds now, since it was made (or the user was, for a phone or address)
        "INSERT INTO enrolments (user, kind, ref, since) SELECT user, 'token', serial, created FROM tokens"
        " WHERE user IS NOT NULL",
        "INSERT INTO enrolments (user, kind, ref, since) SELECT user, 'device', id, created FROM devices",
        "INSERT INTO enrolments (user, kind, ref, since) SELECT user, 'app_password', id, created FROM app_passwords",
        "INSERT INTO enrolments (user, kind, ref, since) SELECT name, 'phone', 'phone', created FROM users"
        " WHERE phone IS NOT NULL AND phone != ''",
        "INSERT INTO enrolments (user, kind, ref, since) SELECT name, 'email', 'email', created FROM users"
        " WHERE email IS NOT NULL AND email != ''",
    ),
)



def schema_version() -> int:
    """The schema version this code writes (the number of migrations)."""
    return len(MIGRATIONS)


# Connections inherited across fork: never used nor closed in the child (closing
# could disturb the parent's locks); kept referenced so they are not finalised.
_ABANDONED_AFTER_FORK: list[_Connection] = []


class SqliteStore(SqlStore):
    """:class:`radius_mfa.store.base.Store` on one SQLite file.

    Opening creates the file (and its directory) when missing and brings the
    schema up to date; it raises StoreError when the file cannot be used.
    """

    DB_ERROR = sqlite3.Error
    CHUNK = 500     # SQLite limits the parameters of one statement

    def __init__(self, path: str, box: SecretBox):
        if not path or path == ":memory:" or path.startswith("file:"):
            raise StoreError("the SQLite store needs a file path (an in-memory database cannot be shared)")
        self.path = os.path.abspath(path)
        self.label = self.path
        self._open_connections()
        self._box = box
        _create_file(self.path)
        with self._errors("open"):
            conn = self._conn()
            conn.execute("PRAGMA journal_mode=WAL").fetchall()
            self._migrate(conn)
        with self._write("check the store key") as conn:
            self._check_key(conn)

    # --- connections and transactions ------------------------------------

    def _inherited(self, holder: _Connection) -> None:
        _ABANDONED_AFTER_FORK.append(holder)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        """Turn a database failure into StoreError. SQLite's messages name
        tables and columns, never values, so no secret can leak through."""
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"store {self.path}: {operation} failed: {exc}") from exc

    @contextlib.contextmanager
    def _write(self, operation: str) -> Iterator[_Spelled]:
        """A short write transaction that holds the write lock from the start
        (``BEGIN IMMEDIATE``), so what it reads cannot change before it writes."""
        self.transactions.write()
        with self._errors(operation):
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield _Spelled(conn)
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise

    def _read(self, operation: str, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        self.transactions.read()
        with self._errors(operation):
            return self._conn().execute(spelled(sql), params).fetchall()

    def _change(self, operation: str, sql: str, params: Sequence[Any] = ()) -> int:
        """One writing statement, atomic on its own (autocommit); the number
        of rows it changed."""
        self.transactions.write()
        with self._errors(operation):
            return self._conn().execute(spelled(sql), params).rowcount

    def _returning(self, operation: str, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """One writing statement with ``RETURNING``, atomic on its own. Fetching
        every row runs it to completion, which ends its transaction."""
        self.transactions.write()
        with self._errors(operation):
            return self._conn().execute(spelled(sql), params).fetchall()

    def _executemany(self, conn: _Spelled, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        conn.executemany(sql, rows)

    @contextlib.contextmanager
    def _savepoint(self, conn: _Spelled) -> Iterator[None]:
        conn.execute("SAVEPOINT part")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK TO part")
            conn.execute("RELEASE part")
            raise
        conn.execute("RELEASE part")

    def _violation(self, exc: BaseException | None) -> str | None:
        if not isinstance(exc, sqlite3.IntegrityError):
            return None
        return _VIOLATIONS.get(getattr(exc, "sqlite_errorname", ""))

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._upgrade(_Spelled(conn), _current_version(conn, self.path), MIGRATIONS)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise


# --- the dialect ----------------------------------------------------------------

#: SQLite's spelling of what the shared statements write PostgreSQL's way.
_SPELLING = (
    ("%s", "?"),
    ("greatest(", "max("),
    ("least(", "min("),
    (" IS NOT DISTINCT FROM ", " IS "),
)

_VIOLATIONS = {
    "SQLITE_CONSTRAINT_PRIMARYKEY": UNIQUE,
    "SQLITE_CONSTRAINT_UNIQUE": UNIQUE,
    "SQLITE_CONSTRAINT_FOREIGNKEY": FOREIGN_KEY,
}


@functools.lru_cache(maxsize=512)
def spelled(sql: str) -> str:
    """A shared statement as SQLite reads it: ``?`` placeholders, ``max`` /
    ``min`` for ``greatest`` / ``least`` (SQLite's return NULL for a NULL
    argument: the statements coalesce first), ``IS`` for ``IS NOT DISTINCT
    FROM``."""
    for theirs, ours in _SPELLING:
        sql = sql.replace(theirs, ours)
    return sql


class _Spelled:
    """A connection inside a write transaction that takes the shared
    statements (:func:`spelled`)."""

    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(spelled(sql), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> sqlite3.Cursor:
        return self.conn.executemany(spelled(sql), rows)


# --- helpers ------------------------------------------------------------------


def _create_file(path: str) -> None:
    """Make the directory (0700) and the file (0600) before SQLite does, so
    SQLite never creates them with the process umask; its -wal and -shm
    files take the database file's mode."""
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the directory of the store {path}: {exc.strerror}") from exc
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreError(f"cannot create the store {path}: {exc.strerror}") from exc
    try:
        give_to_directory_owner(fd, os.path.dirname(path))    # root: the service user's file
    finally:
        os.close(fd)


def _rollback(conn: sqlite3.Connection) -> None:
    """End a failed transaction; a failure here must not hide the first one."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _current_version(conn: sqlite3.Connection, path: str) -> int:
    """The schema version of the open file; 0 for an empty file. Refuses a
    SQLite file that holds tables of something else."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "schema_version" not in tables:
        if tables:
            raise StoreError(f"{path} is a SQLite database, but not a radius-mfa store")
        conn.execute(
            "CREATE TABLE schema_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"
        )
        conn.execute("INSERT INTO schema_version (id, version) VALUES (1, 0)")
        return 0
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    if row is None:
        raise StoreError(f"the store {path} has no schema version")
    return int(row[0])
