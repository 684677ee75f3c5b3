"""The PostgreSQL store: one database shared by every server and the commands.

Several servers may answer for the same clients; whatever one of them starts
(a challenge and its State, a code sent by SMS, a push waiting for a device,
an HOTP counter, a lockout count, a rate limit) another finishes, because all of it lives here. Races
between them are closed in the database, never in process memory: every
read-modify-write is one statement (compare-and-set ``UPDATE ... WHERE``,
``DELETE ... RETURNING``, ``INSERT ... ON CONFLICT``) or a short transaction
that locks what it reads first (``SELECT ... FOR UPDATE``, or a transaction
advisory lock for things that have no row to lock, such as a user's rate
limit). Constraints (primary keys; the foreign keys of tokens, devices and
pairing links to users) refuse what slipped past.

Each thread gets its own connection (psycopg 3, autocommit), opened lazily.
A connection the server closed (a restart, an administrator's
``pg_terminate_backend``) is noticed before it is used, or fails one call, and
is replaced by a fresh one on the next. A process forked after the store was
opened opens fresh connections: a connection must not cross fork. The child
never closes what it inherited (psycopg does not either, when it collects
them), so the parent's sessions outlive it.

The tables are created in the connection's current schema (the first schema
of its ``search_path``), so the database may hold other applications' tables;
``?options=-csearch_path%3Dradius_mfa`` in the store URL picks a schema of our
own. The schema carries a version, as the SQLite store's does:
:data:`MIGRATIONS` lists the steps from nothing to the current version; they
run in one transaction that holds an advisory lock, so two servers starting
together migrate once, and a schema written by a newer release is refused.

Token secrets are sealed (AES-256-GCM, :mod:`radius_mfa.secretbox`) with a key
kept outside the database; every server sharing the store must hold the same
key file, and the store refuses another one. A store URL may carry a password:
errors name the store as ``postgresql://host/database`` only, and repeat only
the server's primary message (which names tables and columns, never the
values of a row).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import select
import threading
import time
import weakref
from typing import Any, Iterable, Iterator, Sequence

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from radius_mfa.errors import AlreadyExistsError, NotFoundError, RefusedError, StoreError
from radius_mfa.model import Attempt, AuthRecord, Challenge, ClientSeen, Device, Pairing, Push, SentCode, Token, User
from radius_mfa.secretbox import SecretBox, is_sealed
from radius_mfa.store import rows as _rows
from radius_mfa.store.sql import _DELETE_RENAMED_USER, _RENAME_USER, _EVICT_CHALLENGES, _FINISH_ATTEMPT, _NOTE_DROP, _TAKE_ATTEMPT

CONNECT_TIMEOUT_SECONDS = 5

# Rows per round trip when an import writes users or tokens: 100,000 tokens
# are a hundred batches, not 100,000 statements.
BATCH_ROWS = 1000

# Each migration is the list of statements that takes the schema from version
# i to version i + 1 (MIGRATIONS[0]: nothing → version 1). Append, never edit a
# released step.
#
# The tables and columns are the SQLite store's at its latest version, so both
# stores read alike. Names and serials sort byte by byte (COLLATE "C"), as in
# SQLite, whatever the database's locale. "user" is a reserved word in
# PostgreSQL and is quoted wherever it is used as a column.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE users (
            name          TEXT COLLATE "C" PRIMARY KEY,
            display_name  TEXT,
            email         TEXT,
            phone         TEXT,
            password_hash TEXT,
            disabled      BOOLEAN NOT NULL DEFAULT FALSE,
            failures      INTEGER NOT NULL DEFAULT 0,
            locked_until  DOUBLE PRECISION,
            created       DOUBLE PRECISION NOT NULL
        )
        """,
        """
        CREATE TABLE tokens (
            serial    TEXT COLLATE "C" PRIMARY KEY,
            type      TEXT NOT NULL CHECK (type IN ('totp', 'hotp')),
            secret    TEXT NOT NULL,
            "user"    TEXT COLLATE "C" REFERENCES users (name),
            digits    INTEGER NOT NULL,
            period    INTEGER NOT NULL,
            algorithm TEXT NOT NULL CHECK (algorithm IN ('sha1', 'sha256', 'sha512')),
            counter   BIGINT NOT NULL DEFAULT 0,
            last_step BIGINT,
            drift     INTEGER NOT NULL DEFAULT 0,
            hardware  BOOLEAN NOT NULL DEFAULT FALSE,
            created   DOUBLE PRECISION NOT NULL
        )
        """,
        'CREATE INDEX tokens_user ON tokens ("user")',
        """
        CREATE TABLE challenges (
            state_digest TEXT PRIMARY KEY,
            "user"       TEXT NOT NULL,
            client       TEXT NOT NULL,
            created      DOUBLE PRECISION NOT NULL,
            expires      DOUBLE PRECISION NOT NULL,
            factors      TEXT NOT NULL,
            data         TEXT NOT NULL
        )
        """,
        "CREATE INDEX challenges_expires ON challenges (expires)",
        """
        CREATE TABLE clients_seen (
            name            TEXT COLLATE "C" PRIMARY KEY,
            requests        BIGINT NOT NULL DEFAULT 0,
            last_seen       DOUBLE PRECISION,
            last_with_ma    DOUBLE PRECISION,
            last_without_ma DOUBLE PRECISION
        )
        """,
        """
        CREATE TABLE auth_log (
            id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            time   DOUBLE PRECISION NOT NULL,
            "user" TEXT,
            fields TEXT NOT NULL
        )
        """,
        "CREATE INDEX auth_log_time ON auth_log (time)",
        'CREATE INDEX auth_log_user ON auth_log ("user", time)',
        # facts about the store itself: the check value of the key that seals secrets
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        # codes sent by SMS, voice call or mail: an HMAC of (user, code), never the code
        """
        CREATE TABLE sent_codes (
            id                 TEXT COLLATE "C" PRIMARY KEY,
            "user"             TEXT NOT NULL,
            channel            TEXT NOT NULL,
            code_mac           TEXT NOT NULL,
            client             TEXT NOT NULL,
            calling_station_id TEXT,
            provider           TEXT,
            created            DOUBLE PRECISION NOT NULL,
            expires            DOUBLE PRECISION NOT NULL
        )
        """,
        'CREATE INDEX sent_codes_user ON sent_codes ("user", created)',
        "CREATE INDEX sent_codes_expires ON sent_codes (expires)",
        # one row per code sent, for the per-user rate limit
        'CREATE TABLE code_sends ("user" TEXT NOT NULL, time DOUBLE PRECISION NOT NULL)',
        'CREATE INDEX code_sends_user ON code_sends ("user", time)',
    ),
    (
        # push approval. Sends are counted by kind ("code": SMS, voice, email;
        # "push"), each kind against its own limit; the sends recorded before
        # were all codes.
        "ALTER TABLE code_sends ADD COLUMN kind TEXT NOT NULL DEFAULT 'code'",
        "DROP INDEX code_sends_user",
        'CREATE INDEX code_sends_user ON code_sends ("user", kind, time)',
        # one-time pairing links: the SHA-256 of the token, never the token
        """
        CREATE TABLE pairings (
            token_digest TEXT PRIMARY KEY,
            "user"       TEXT COLLATE "C" NOT NULL REFERENCES users (name),
            created      DOUBLE PRECISION NOT NULL,
            expires      DOUBLE PRECISION NOT NULL
        )
        """,
        'CREATE INDEX pairings_user ON pairings ("user")',
        "CREATE INDEX pairings_expires ON pairings (expires)",
        # paired devices: a device never outlives its user (the foreign key)
        """
        CREATE TABLE devices (
            id         TEXT COLLATE "C" PRIMARY KEY,
            "user"     TEXT COLLATE "C" NOT NULL REFERENCES users (name),
            name       TEXT NOT NULL,
            public_key TEXT NOT NULL,
            created    DOUBLE PRECISION NOT NULL,
            last_seen  DOUBLE PRECISION
        )
        """,
        'CREATE INDEX devices_user ON devices ("user", created)',
        # login attempts waiting for (or answered by) a device
        """
        CREATE TABLE pushes (
            id                 TEXT COLLATE "C" PRIMARY KEY,
            "user"             TEXT COLLATE "C" NOT NULL,
            client             TEXT NOT NULL,
            calling_station_id TEXT,
            user_ip            TEXT,
            created            DOUBLE PRECISION NOT NULL,
            expires            DOUBLE PRECISION NOT NULL,
            number             INTEGER,
            status             TEXT NOT NULL CHECK (status IN
                                   ('pending', 'approved', 'used', 'denied', 'fraud', 'wrong_number')),
            device             TEXT,
            answered           DOUBLE PRECISION
        )
        """,
        'CREATE INDEX pushes_user_status ON pushes ("user", status, created)',
        'CREATE INDEX pushes_client_user ON pushes (client, "user", created)',
        "CREATE INDEX pushes_expires ON pushes (expires)",
    ),
    (
        # a State is honoured once: an answered challenge is kept (used) until
        # it expires, so a NAS retry of the answer to a push prompt can be
        # told from a made-up State
        "ALTER TABLE challenges ADD COLUMN used DOUBLE PRECISION",
        # when a client first sent a Message-Authenticator: since then `auto` requires it
        "ALTER TABLE clients_seen ADD COLUMN first_with_ma DOUBLE PRECISION",
        'CREATE INDEX challenges_user ON challenges ("user", created)',
        # requests dropped unanswered, per client and reason (`report clients`)
        """
        CREATE TABLE client_drops (
            client TEXT NOT NULL,
            reason TEXT NOT NULL,
            count  BIGINT NOT NULL DEFAULT 0,
            last   DOUBLE PRECISION,
            PRIMARY KEY (client, reason)
        )
        """,
    ),
)

# The tables of the store: finding one of them in a schema without a
# schema_version table means something else made it, and it is not ours to use.
OUR_TABLES = frozenset({
    "schema_version", "users", "tokens", "challenges", "clients_seen", "auth_log", "meta",
    "sent_codes", "code_sends", "pairings", "devices", "pushes", "client_drops",
})


# Advisory lock keys: a label hashed with the current schema, so stores in
# different schemas of one database never wait for each other.
_SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('radius-mfa schema ' || coalesce(current_schema(), ''), 0))"
_SEND_LOCK = ("SELECT pg_advisory_xact_lock(hashtextextended("
              "'radius-mfa sends ' || coalesce(current_schema(), '') || ' ' || %s, 0))")

_TOKEN_INSERT = (
    'INSERT INTO tokens (serial, type, secret, "user", digits, period, algorithm, counter,'
    " last_step, drift, hardware, created) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_USER_INSERT = (
    "INSERT INTO users (name, display_name, email, phone, password_hash,"
    " disabled, failures, locked_until, created) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


def schema_version() -> int:
    """The schema version this code writes (the number of migrations)."""
    return len(MIGRATIONS)


def redacted_label(url: str) -> str:
    """``postgresql://host[:port]/database`` for ``url``: what errors and logs
    may show of a store URL (never its user, password or options)."""
    try:
        params = conninfo_to_dict(_libpq_url(url))
    except psycopg.Error:
        return "postgresql://(unreadable URL)"
    host = params.get("host") or "localhost"
    port = params.get("port")
    database = params.get("dbname") or params.get("user") or "postgres"
    return f"postgresql://{host}{':' + port if port else ''}/{database}"


def _libpq_url(url: str) -> str:
    """The URL as libpq takes it: ``postgresql+psycopg://`` (SQLAlchemy's
    spelling) becomes ``postgresql://``, and the scheme lower case."""
    scheme, separator, rest = url.partition("://")
    base = scheme.lower().split("+", 1)[0]
    if separator and base in ("postgresql", "postgres"):
        return f"{base}://{rest}"
    return url


class _Connection:
    """A thread's connection, with the process that opened it."""

    __slots__ = ("conn", "pid", "__weakref__")

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn
        self.pid = os.getpid()


class PostgresStore:
    """:class:`radius_mfa.store.base.Store` on a PostgreSQL database.

    ``url`` is a libpq URL (``postgresql://user@host:port/database?...``;
    every query parameter libpq knows passes through). Opening connects,
    brings the schema up to date and checks the key; it raises StoreError when
    the database cannot be used.
    """

    def __init__(self, url: str, box: SecretBox):
        self.label = redacted_label(url)
        self._conninfo = _libpq_url(url)
        try:
            params = conninfo_to_dict(self._conninfo)
        except psycopg.Error:
            raise StoreError(
                "the PostgreSQL store URL cannot be read: write it as postgresql://user@host:port/database"
            ) from None
        self._secrets = [value for value in (params.get("password"), url, self._conninfo) if value]
        self._options: dict[str, Any] = {"autocommit": True, "row_factory": dict_row}
        if "connect_timeout" not in params:
            self._options["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
        if "application_name" not in params:
            self._options["application_name"] = "radius-mfa"
        self._local = threading.local()
        self._all: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._all_lock = threading.Lock()   # guards the WeakSet only, never the database
        self._closed = False
        self._box = box
        try:
            with self._write("open") as conn:
                conn.execute(_SCHEMA_LOCK)
                self._migrate(conn)
                self._bind_key(conn)
        except BaseException:
            self.close()
            raise

    # --- connections and transactions ------------------------------------

    def _conn(self) -> psycopg.Connection:
        """This thread's connection: opened on first use, and again when the
        one it had was closed by the server or belongs to the parent process."""
        if self._closed:
            raise StoreError(f"the store {self.label} is closed")
        holder: _Connection | None = getattr(self._local, "holder", None)
        if holder is not None and holder.pid != os.getpid():
            holder = None      # the parent's: psycopg never closes it from here
        if holder is not None and not _usable(holder.conn):
            self._drop(holder)
            holder = None
        if holder is None:
            holder = _Connection(self._connect())
            self._local.holder = holder
            with self._all_lock:
                self._all.add(holder)
        return holder.conn

    def _connect(self) -> psycopg.Connection:
        try:
            return psycopg.connect(self._conninfo, **self._options)
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot connect to the store {self.label}: {self._reason(exc)}"
            ) from None

    def _drop(self, holder: _Connection) -> None:
        """Forget this thread's broken connection (the next call opens another)."""
        if getattr(self._local, "holder", None) is holder:
            self._local.holder = None
        with self._all_lock:
            self._all.discard(holder)
        with contextlib.suppress(Exception):
            holder.conn.close()

    def _reason(self, exc: BaseException) -> str:
        """What went wrong, in one line: the server's primary message only
        (its detail may repeat a row's values), never the URL or password."""
        diag = getattr(exc, "diag", None)
        text = getattr(diag, "message_primary", None) if diag is not None else None
        if not text:
            text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        text = text or type(exc).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @contextlib.contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        """Turn a database failure into StoreError; a connection that broke on
        the way is dropped, so the next call opens another."""
        try:
            yield
        except psycopg.Error as exc:
            holder: _Connection | None = getattr(self._local, "holder", None)
            if holder is not None and (holder.conn.broken or holder.conn.closed):
                self._drop(holder)
            raise StoreError(f"store {self.label}: {operation} failed: {self._reason(exc)}") from exc

    @contextlib.contextmanager
    def _write(self, operation: str) -> Iterator[psycopg.Connection]:
        """A short transaction (a savepoint when one is open already, as when
        an import's input reads the store). Whatever it reads that others may
        change, it locks first."""
        with self._errors(operation):
            conn = self._conn()
            with conn.transaction():
                yield conn

    def _read(self, operation: str, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._errors(operation):
            return self._conn().execute(sql, params).fetchall()

    def _change(self, operation: str, sql: str, params: Sequence[Any] = ()) -> int:
        """One writing statement, atomic on its own (autocommit); the number
        of rows it changed."""
        with self._errors(operation):
            return self._conn().execute(sql, params).rowcount

    def _returning(self, operation: str, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """One writing statement with ``RETURNING``, atomic on its own."""
        return self._read(operation, sql, params)

    def _migrate(self, conn: psycopg.Connection) -> None:
        """Bring the schema up to date; the caller holds the schema lock in
        the transaction these statements run in."""
        found = self._current_version(conn)
        latest = schema_version()
        if found > latest:
            raise StoreError(
                f"the store {self.label} has schema version {found}, newer than the "
                f"version {latest} this radius-mfa knows: upgrade radius-mfa"
            )
        for statements in MIGRATIONS[found:]:
            for statement in statements:
                conn.execute(statement)
        if found < latest:
            conn.execute("UPDATE schema_version SET version = %s", (latest,))

    def _current_version(self, conn: psycopg.Connection) -> int:
        """The schema version in the current schema; 0 when none of our
        tables is there yet. Refuses a schema where tables of ours exist
        without a version: something else made them."""
        row = conn.execute("SELECT current_schema() AS name").fetchone()
        if row is None or row["name"] is None:
            raise StoreError(
                f"the store {self.label} has no schema to create its tables in:"
                " check search_path (the first schema it names must exist)"
            )
        schema = row["name"]
        tables = {
            r["tablename"]
            for r in conn.execute("SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = %s", (schema,))
        }
        if "schema_version" not in tables:
            ours = sorted(tables & OUR_TABLES)
            if ours:
                raise StoreError(
                    f"the schema {schema} of {self.label} holds a table {ours[0]} that radius-mfa did not"
                    " make: use another schema (options=-csearch_path=...) or another database"
                )
            conn.execute(
                "CREATE TABLE schema_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"
            )
            conn.execute("INSERT INTO schema_version (id, version) VALUES (1, 0)")
            return 0
        columns = {
            r["column_name"]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s"
                " AND table_name = 'schema_version'",
                (schema,),
            )
        }
        if columns != {"id", "version"}:
            raise StoreError(
                f"the schema {schema} of {self.label} holds a table schema_version that radius-mfa did not"
                " make: use another schema (options=-csearch_path=...) or another database"
            )
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            raise StoreError(f"the store {self.label} has no schema version")
        return int(row["version"])

    def _bind_key(self, conn: psycopg.Connection) -> None:
        """Check that the key is this store's; on the first open with a key,
        record its check value and seal every secret still in clear (the
        caller's transaction holds the schema lock)."""
        row = conn.execute("SELECT value FROM meta WHERE key = 'key_check'").fetchone()
        if row is not None:
            if not hmac.compare_digest(row["value"], self._box.check_value):
                raise StoreError(
                    f"the key in {self._box.source} is not the key of the store {self.label}:"
                    " its token secrets were sealed with another key file"
                )
            return
        conn.execute("INSERT INTO meta (key, value) VALUES ('key_check', %s)", (self._box.check_value,))
        for plain in conn.execute("SELECT serial, secret FROM tokens").fetchall():
            if not is_sealed(plain["secret"]):
                conn.execute("UPDATE tokens SET secret = %s WHERE serial = %s",
                             (self._box.seal(plain["secret"], plain["serial"]), plain["serial"]))

    def close(self) -> None:
        """Close every connection this process opened for the store; the
        store cannot be used afterwards."""
        self._closed = True
        self._local.holder = None
        with self._all_lock:
            holders = list(self._all)
            self._all.clear()
        for holder in holders:
            if holder.pid == os.getpid():
                with contextlib.suppress(Exception):
                    holder.conn.close()

    # --- users -------------------------------------------------------------

    def add_user(self, user: User) -> None:
        """Create a user; AlreadyExistsError when the name is taken.
        A ``created`` of 0 is read as "now"."""
        if not user.name:
            raise RefusedError("a user name must not be empty")
        try:
            self._change("add user", _USER_INSERT, _user_row(user, time.time()))
        except StoreError as exc:
            if isinstance(exc.__cause__, pg_errors.UniqueViolation):
                raise AlreadyExistsError(f"user {user.name} exists already") from None
            raise

    def existing_user_names(self, names: Iterable[str]) -> set[str]:
        """Which of ``names`` are users already (asked in chunks)."""
        return self._existing("users", "name", names)

    def add_users(self, users: Iterable[tuple[User, Sequence[Token]]]) -> int:
        """`user import`: all or nothing in one transaction, streamed in
        batches; AlreadyExistsError naming the first user or serial that
        exists (or repeats), NotFoundError for a token of a user who is
        neither in the store nor in the import."""
        now = time.time()
        count = 0
        batch_users: list[User] = []
        batch_tokens: list[Token] = []
        with self._write("import users") as conn:
            for user, tokens in users:
                if not user.name:
                    raise RefusedError("a user name must not be empty")
                for token in tokens:
                    _rows.check_token(token)
                batch_users.append(user)
                batch_tokens.extend(tokens)
                if len(batch_users) >= BATCH_ROWS or len(batch_tokens) >= BATCH_ROWS:
                    count += self._insert_batch(conn, batch_users, batch_tokens, now)
                    batch_users, batch_tokens = [], []
            if batch_users or batch_tokens:
                count += self._insert_batch(conn, batch_users, batch_tokens, now)
        return count

    def _existing(self, table: str, column: str, values: Iterable[str]) -> set[str]:
        """Which of ``values`` are in ``table.column``: asked a thousand at a
        time, so 100,000 names are a hundred queries, not 100,000."""
        found: set[str] = set()
        chunk: list[str] = []

        def ask() -> None:
            rows = self._read(f"find {table}", f"SELECT {column} AS v FROM {table} WHERE {column} = ANY(%s)",
                              (chunk,))
            found.update(row["v"] for row in rows)
            chunk.clear()

        for value in values:
            chunk.append(value)
            if len(chunk) == BATCH_ROWS:
                ask()
        if chunk:
            ask()
        return found

    def get_user(self, name: str) -> User | None:
        rows = self._read("read user", "SELECT * FROM users WHERE name = %s", (name,))
        return _rows.user(rows[0]) if rows else None

    def list_users(self) -> list[User]:
        """Every user, sorted by name."""
        return [_rows.user(row) for row in self._read("list users", "SELECT * FROM users ORDER BY name")]

    def update_user(self, name: str, **fields: Any) -> User:
        """Set display_name, email, phone, password_hash or disabled; returns the
        new record; NotFoundError when absent, TypeError for any other field."""
        unknown = sorted(set(fields) - _rows.USER_FIELDS)
        if unknown:
            raise TypeError(f"update_user: fields that cannot be set: {', '.join(unknown)}")
        if not fields:
            user = self.get_user(name)
            if user is None:
                raise NotFoundError(f"no such user: {name}")
            return user
        values = {key: bool(value) if key == "disabled" else value for key, value in fields.items()}
        assignments = ", ".join(f"{key} = %s" for key in values)
        rows = self._returning(
            "update user",
            f"UPDATE users SET {assignments} WHERE name = %s RETURNING *",
            (*values.values(), name),
        )
        if not rows:
            raise NotFoundError(f"no such user: {name}")
        return _rows.user(rows[0])

    def rename_user(self, old: str, new: str) -> None:
        """Give a user another name, with everything that refers to them,
        in one transaction; AlreadyExistsError when ``new`` is taken,
        NotFoundError when ``old`` is absent."""
        try:
            with self._write("rename user") as conn:
                if conn.execute(_RENAME_USER[0], (new, old)).rowcount != 1:
                    raise NotFoundError(f"no such user: {old}")
                for statement in _RENAME_USER[1:]:
                    conn.execute(statement, (new, old))
                conn.execute(_DELETE_RENAMED_USER, (old,))
        except pg_errors.UniqueViolation:
            raise AlreadyExistsError(f"user {new} exists already") from None
        except StoreError as exc:
            if isinstance(exc.__cause__, pg_errors.UniqueViolation):
                raise AlreadyExistsError(f"user {new} exists already") from None
            raise

    def remove_user(self, name: str) -> None:
        """Delete the user, their software tokens, sent codes, devices,
        pairing links and pushes; their hardware tokens go back to the pool,
        unassigned; NotFoundError. The user's row is locked first, so no
        token, device or pairing can be given to them meanwhile."""
        with self._write("remove user") as conn:
            if conn.execute("SELECT 1 FROM users WHERE name = %s FOR UPDATE", (name,)).fetchone() is None:
                raise NotFoundError(f"no such user: {name}")
            _release_tokens(conn, name)
            _drop_push_state(conn, name)    # before the user: devices and pairings refer to them
            conn.execute("DELETE FROM users WHERE name = %s", (name,))
            _drop_sent_codes(conn, name)

    def reset_user(self, name: str) -> int:
        """Remove every factor of the user (software tokens deleted, hardware
        tokens unassigned; sent codes, devices, pairing links and pushes
        dropped; app passwords as they come); returns how many tokens the
        user lost; NotFoundError."""
        with self._write("reset user") as conn:
            if conn.execute("SELECT 1 FROM users WHERE name = %s FOR UPDATE", (name,)).fetchone() is None:
                raise NotFoundError(f"no such user: {name}")
            _drop_sent_codes(conn, name)
            _drop_push_state(conn, name)
            return _release_tokens(conn, name)

    # --- lockout -----------------------------------------------------------

    def record_failure(self, name: str, now: float, limit: int, lock_seconds: float) -> User | None:
        """Atomically count one more bad answer in a row; at ``limit`` lock the
        user until ``now + lock_seconds`` and count from zero again. Returns the
        new record (None: no such user). One ``UPDATE``: its row lock orders
        servers counting at once."""
        if limit < 1:
            raise ValueError("record_failure: limit must be at least 1")
        rows = self._returning(
            "record failure",
            "UPDATE users SET"
            " failures = CASE WHEN failures + 1 >= %(limit)s THEN 0 ELSE failures + 1 END,"
            " locked_until = CASE WHEN failures + 1 >= %(limit)s THEN %(until)s ELSE locked_until END"
            " WHERE name = %(name)s RETURNING *",
            {"limit": limit, "until": float(now + lock_seconds), "name": name},
        )
        return _rows.user(rows[0]) if rows else None

    def take_attempt(self, name: str, now: float, limit: int, lock_seconds: float) -> Attempt | None:
        """Take one attempt at an answer and count it as a failure, in one
        statement (its row lock orders servers taking at once), before the
        answer is checked: None when the user is locked (or unknown). See
        the SQLite store for the whole contract."""
        if limit < 1:
            raise ValueError("take_attempt: limit must be at least 1")
        now = float(now)
        rows = self._returning("take attempt", _TAKE_ATTEMPT,
                               (now, now, limit, float(now + lock_seconds), now, name, now))
        return Attempt(rows[0]["failures"], rows[0]["locked_until"]) if rows else None

    def finish_attempt(self, name: str, attempt: Attempt, success: bool) -> None:
        """The answer of ``attempt`` was not a wrong one: ``success`` ends
        the run of failures, else the attempt is given back; a lock this
        attempt set is lifted."""
        self._change("finish attempt", _FINISH_ATTEMPT, (int(success), attempt.locked_until, name))

    def clear_failures(self, name: str) -> None:
        """A success: the run of bad answers ends (lock untouched)."""
        self._change("clear failures", "UPDATE users SET failures = 0 WHERE name = %s AND failures != 0", (name,))

    def unlock(self, name: str) -> None:
        """`user unlock`: failures 0, locked_until None; NotFoundError."""
        changed = self._change(
            "unlock user", "UPDATE users SET failures = 0, locked_until = NULL WHERE name = %s", (name,)
        )
        if changed == 0:
            raise NotFoundError(f"no such user: {name}")

    # --- tokens ------------------------------------------------------------

    def add_token(self, token: Token) -> None:
        """AlreadyExistsError when the serial is taken; NotFoundError when the
        token is assigned to a user who does not exist."""
        self.add_tokens([token])

    def add_tokens(self, tokens: Iterable[Token]) -> int:
        """All or nothing, in one transaction, written in batches as ``tokens``
        is read; AlreadyExistsError naming the first serial that exists (or
        repeats). Returns the count."""
        now = time.time()
        count = 0
        batch: list[Token] = []
        with self._write("add tokens") as conn:
            for token in tokens:
                _rows.check_token(token)
                batch.append(token)
                if len(batch) == BATCH_ROWS:
                    count += self._insert_batch(conn, [], batch, now)
                    batch = []
            if batch:
                count += self._insert_batch(conn, [], batch, now)
        return count

    def _insert_batch(self, conn: psycopg.Connection, users: list[User], tokens: list[Token], now: float) -> int:
        """Write a batch of users, then tokens, in a savepoint; the number of
        rows written (users when there are any, else tokens). When a key is
        taken or a user missing, the savepoint is rolled back and the culprit
        looked up: the same answer whatever language the server speaks."""
        try:
            with conn.transaction(), conn.cursor() as cursor:
                if users:
                    cursor.executemany(_USER_INSERT, [_user_row(user, now) for user in users])
                if tokens:
                    cursor.executemany(_TOKEN_INSERT, [self._token_row(token, now) for token in tokens])
        except (pg_errors.UniqueViolation, pg_errors.ForeignKeyViolation):
            culprit = _culprit(conn, users, tokens)
            if culprit is None:
                raise
            raise culprit from None
        return len(users) if users else len(tokens)

    def _token_row(self, token: Token, now: float) -> tuple:
        return (
            token.serial, token.type, self._box.seal(token.secret, token.serial), token.user, token.digits,
            token.period, token.algorithm, token.counter, token.last_step, token.drift, bool(token.hardware),
            token.created or now,
        )

    def existing_token_serials(self, serials: Iterable[str]) -> set[str]:
        """Which of ``serials`` the store holds already (asked in chunks)."""
        return self._existing("tokens", "serial", serials)

    def get_token(self, serial: str) -> Token | None:
        rows = self._read("read token", "SELECT * FROM tokens WHERE serial = %s", (serial,))
        return _rows.token(rows[0], self._box) if rows else None

    def list_tokens(self, user: str | None = None) -> list[Token]:
        """All tokens (user None) or the user's, sorted by serial."""
        if user is None:
            rows = self._read("list tokens", "SELECT * FROM tokens ORDER BY serial")
        else:
            rows = self._read("list tokens", 'SELECT * FROM tokens WHERE "user" = %s ORDER BY serial', (user,))
        return [_rows.token(row, self._box) for row in rows]

    def assign_token(self, serial: str, user: str) -> None:
        """NotFoundError for an unknown serial or user; RefusedError when the
        token belongs to another user already (assigning it to its own user
        again changes nothing). The token's row is locked while deciding."""
        with self._write("assign token") as conn:
            row = conn.execute('SELECT "user" FROM tokens WHERE serial = %s FOR UPDATE', (serial,)).fetchone()
            if row is None:
                raise NotFoundError(f"no such token: {serial}")
            if conn.execute("SELECT 1 FROM users WHERE name = %s FOR KEY SHARE", (user,)).fetchone() is None:
                raise NotFoundError(f"no such user: {user}")
            owner = row["user"]
            if owner == user:
                return
            if owner is not None:
                raise RefusedError(f"token {serial} is assigned to {owner} already")
            conn.execute('UPDATE tokens SET "user" = %s WHERE serial = %s', (user, serial))

    def remove_token(self, serial: str) -> None:
        """NotFoundError."""
        if self._change("remove token", "DELETE FROM tokens WHERE serial = %s", (serial,)) == 0:
            raise NotFoundError(f"no such token: {serial}")

    def advance_totp(self, serial: str, step: int) -> bool:
        """True when ``step`` is later than every step used before (atomic
        compare-and-set); False for a replay or an unknown serial."""
        changed = self._change(
            "advance totp",
            "UPDATE tokens SET last_step = %(step)s WHERE serial = %(serial)s AND type = 'totp'"
            " AND (last_step IS NULL OR last_step < %(step)s)",
            {"step": step, "serial": serial},
        )
        return changed == 1

    def advance_hotp(self, serial: str, expected: int, new_counter: int) -> bool:
        """Move the HOTP counter from ``expected`` to ``new_counter``: True when
        it still was ``expected`` (atomic compare-and-set), else False."""
        changed = self._change(
            "advance hotp",
            "UPDATE tokens SET counter = %s WHERE serial = %s AND type = 'hotp' AND counter = %s",
            (new_counter, serial, expected),
        )
        return changed == 1

    def set_totp_drift(self, serial: str, drift: int, last_step: int) -> bool:
        """`token resync` of a TOTP token: True when ``last_step`` is later
        than every step used before (atomic compare-and-set), else False."""
        changed = self._change(
            "resync totp",
            "UPDATE tokens SET drift = %(drift)s, last_step = %(step)s WHERE serial = %(serial)s"
            " AND type = 'totp' AND (last_step IS NULL OR last_step < %(step)s)",
            {"drift": drift, "step": last_step, "serial": serial},
        )
        return changed == 1

    # --- challenges --------------------------------------------------------

    def put_challenge(self, challenge: Challenge, max_open: int | None = None) -> None:
        """Store a pending challenge; AlreadyExistsError when its digest is
        stored already (States are random: that would be a bug). With
        ``max_open``, the user's oldest open challenges beyond that many are
        dropped in the same transaction."""
        factors = _rows.to_json(list(challenge.factors), "challenge factors")
        data = _rows.to_json(challenge.data, "challenge data")
        try:
            with self._write("put challenge") as conn:
                conn.execute(
                    'INSERT INTO challenges (state_digest, "user", client, created, expires, factors, data)'
                    " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (challenge.state_digest, challenge.user, challenge.client,
                     challenge.created, challenge.expires, factors, data),
                )
                if max_open is not None:
                    conn.execute(_EVICT_CHALLENGES, (challenge.user, max_open))
        except StoreError as exc:
            if isinstance(exc.__cause__, pg_errors.UniqueViolation):
                raise AlreadyExistsError("a challenge with this State exists already") from None
            raise

    def take_challenge(self, state_digest: str, now: float | None = None) -> Challenge | None:
        """Mark the challenge used and return it, expired or not; of two
        callers racing for it exactly one gets it (one ``UPDATE ...
        RETURNING``). A used challenge is kept until it expires."""
        rows = self._returning(
            "take challenge",
            "UPDATE challenges SET used = %s WHERE state_digest = %s AND used IS NULL RETURNING *",
            (float(time.time() if now is None else now), state_digest),
        )
        return _rows.challenge(rows[0]) if rows else None

    def used_challenge(self, state_digest: str) -> Challenge | None:
        """The challenge of this State if it was answered already."""
        rows = self._read("read used challenge",
                          "SELECT * FROM challenges WHERE state_digest = %s AND used IS NOT NULL",
                          (state_digest,))
        return _rows.challenge(rows[0]) if rows else None

    def purge_challenges(self, now: float) -> int:
        """Delete the challenges that expired before ``now``; returns the count."""
        return self._change("purge challenges", "DELETE FROM challenges WHERE expires < %s", (now,))

    def count_challenges(self, now: float) -> int:
        """How many challenges are pending (not used, not expired at ``now``)."""
        rows = self._read("count challenges",
                          "SELECT COUNT(*) AS n FROM challenges WHERE expires >= %s AND used IS NULL", (now,))
        return int(rows[0]["n"])

    # --- sent codes (SMS, voice, email) -----------------------------------

    def sent_code_key(self) -> bytes:
        """The key that MACs sent codes: derived from the store key, so every
        server sharing the store (and its key file) checks the same codes."""
        return self._box.derive(b"sent codes")

    def put_sent_code(self, sent: SentCode) -> None:
        """Store a code about to be sent; AlreadyExistsError when its id is
        taken (ids are random: that would be a bug)."""
        try:
            self._change(
                "put sent code",
                'INSERT INTO sent_codes (id, "user", channel, code_mac, client, calling_station_id,'
                " provider, created, expires) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (sent.id, sent.user, sent.channel, sent.code_mac, sent.client,
                 sent.calling_station_id, sent.provider, sent.created, sent.expires),
            )
        except StoreError as exc:
            if isinstance(exc.__cause__, pg_errors.UniqueViolation):
                raise AlreadyExistsError("a sent code with this id exists already") from None
            raise

    def set_sent_code_provider(self, code_id: str, provider: str) -> None:
        """Record which provider delivered the code (for a joined attempt's audit)."""
        self._change("note provider", "UPDATE sent_codes SET provider = %s WHERE id = %s", (provider, code_id))

    def sent_codes_for(self, user: str) -> list[SentCode]:
        """The user's codes not yet taken, expired ones included (the caller
        decides, so the audit can say ``expired``), newest first."""
        rows = self._read("sent codes", 'SELECT * FROM sent_codes WHERE "user" = %s ORDER BY created DESC, id',
                          (user,))
        return [_rows.sent_code(row) for row in rows]

    def take_sent_code(self, code_id: str) -> bool:
        """Use the code up: True for exactly one of any callers racing for it
        (one ``DELETE``), False when it was taken or removed already."""
        return self._change("take sent code", "DELETE FROM sent_codes WHERE id = %s", (code_id,)) == 1

    def pending_sent_code(self, client: str, user: str, calling_station_id: str | None,
                          since: float, now: float, channel: str | None = None) -> SentCode | None:
        """The newest unexpired code sent for this login attempt (same client,
        user and Calling-Station-Id, and ``channel`` when given) at ``since``
        or later; None when there is none."""
        sql = ('SELECT * FROM sent_codes WHERE client = %s AND "user" = %s'
               " AND calling_station_id IS NOT DISTINCT FROM %s::text AND created >= %s AND expires > %s")
        params: list[Any] = [client, user, calling_station_id, since, now]
        if channel is not None:
            sql += " AND channel = %s"
            params.append(channel)
        rows = self._read("pending sent code", sql + " ORDER BY created DESC LIMIT 1", params)
        return _rows.sent_code(rows[0]) if rows else None

    def remove_sent_code(self, code_id: str) -> None:
        """Forget a code that was never delivered (absent: nothing happens)."""
        self._change("remove sent code", "DELETE FROM sent_codes WHERE id = %s", (code_id,))

    def allow_send(self, user: str, now: float, limit: int, window_seconds: float,
                   kind: str = "code") -> bool:
        """The rate limit: True, and the send recorded, when fewer than
        ``limit`` sends of ``kind`` ("code" or "push", counted apart) went to
        the user in the last ``window_seconds``; else False. One transaction
        holding an advisory lock on the user's sends, so servers sharing the
        store cannot together exceed the limit."""
        _rows.check_send_kind(kind)
        with self._write("rate limit") as conn:
            conn.execute(_SEND_LOCK, (user,))
            conn.execute('DELETE FROM code_sends WHERE "user" = %s AND kind = %s AND time <= %s',
                         (user, kind, now - window_seconds))
            row = conn.execute('SELECT COUNT(*) AS n FROM code_sends WHERE "user" = %s AND kind = %s',
                               (user, kind)).fetchone()
            if row["n"] >= limit:
                return False
            conn.execute('INSERT INTO code_sends ("user", kind, time) VALUES (%s, %s, %s)', (user, kind, now))
            return True

    def purge_sent_codes(self, now: float, keep_sends_seconds: float = 86400.0) -> int:
        """Delete the codes that expired before ``now`` (and rate-limit
        records older than ``keep_sends_seconds``); returns the codes deleted."""
        with self._write("purge sent codes") as conn:
            conn.execute("DELETE FROM code_sends WHERE time < %s", (now - keep_sends_seconds,))
            return conn.execute("DELETE FROM sent_codes WHERE expires < %s", (now,)).rowcount

    # --- push devices and approvals ----------------------------------------

    def add_pairing(self, pairing: Pairing) -> None:
        """Remember a one-time pairing token (its digest) for a user;
        NotFoundError when the user does not exist (the foreign key decides,
        so a user removed meanwhile cannot be paired)."""
        try:
            self._change(
                "add pairing",
                'INSERT INTO pairings (token_digest, "user", created, expires) VALUES (%s, %s, %s, %s)',
                (pairing.token_digest, pairing.user, pairing.created, pairing.expires),
            )
        except StoreError as exc:
            if isinstance(exc.__cause__, pg_errors.ForeignKeyViolation):
                raise NotFoundError(f"no such user: {pairing.user}") from None
            if isinstance(exc.__cause__, pg_errors.UniqueViolation):
                raise AlreadyExistsError("a pairing with this token exists already") from None
            raise

    def get_pairing(self, token_digest: str) -> Pairing | None:
        rows = self._read("read pairing", "SELECT * FROM pairings WHERE token_digest = %s", (token_digest,))
        return _rows.pairing(rows[0]) if rows else None

    def complete_pairing(self, token_digest: str, device: Device, now: float) -> Device | None:
        """Use the pairing up and store ``device`` for its user, in one
        transaction: of two callers racing with one token, one deletes the
        pairing and pairs, the other waits for it and finds nothing. The
        user's row is locked (key share) before the pairing, the order user
        removal and reset take them in, so neither waits for the other in a
        circle. The pairing is deleted whatever happens next; None for an
        unknown, used or expired token or a user gone meanwhile.
        AlreadyExistsError when the device id is taken (ids are random: that
        would be a bug)."""
        taken = False
        with self._write("complete pairing") as conn:
            found = conn.execute('SELECT "user" FROM pairings WHERE token_digest = %s', (token_digest,)).fetchone()
            if found is None:
                return None
            user_exists = conn.execute("SELECT 1 FROM users WHERE name = %s FOR KEY SHARE",
                                       (found["user"],)).fetchone() is not None
            row = conn.execute("DELETE FROM pairings WHERE token_digest = %s RETURNING *", (token_digest,)).fetchone()
            if row is None or not user_exists or row["user"] != found["user"] or row["expires"] <= now:
                return None
            try:
                with conn.transaction():    # a savepoint: a taken id leaves the pairing deleted
                    stored = conn.execute(
                        'INSERT INTO devices (id, "user", name, public_key, created, last_seen)'
                        " VALUES (%s, %s, %s, %s, %s, %s) RETURNING *",
                        (device.id, row["user"], device.name, device.public_key, device.created or now,
                         device.last_seen),
                    ).fetchone()
            except pg_errors.UniqueViolation:
                taken = True
        if taken:
            raise AlreadyExistsError(f"device {device.id} exists already")
        return _rows.device(stored)

    def get_device(self, device_id: str) -> Device | None:
        rows = self._read("read device", "SELECT * FROM devices WHERE id = %s", (device_id,))
        return _rows.device(rows[0]) if rows else None

    def list_devices(self, user: str | None = None) -> list[Device]:
        """All devices (user None) or the user's, oldest first."""
        if user is None:
            rows = self._read("list devices", "SELECT * FROM devices ORDER BY created, id")
        else:
            rows = self._read("list devices", 'SELECT * FROM devices WHERE "user" = %s ORDER BY created, id',
                              (user,))
        return [_rows.device(row) for row in rows]

    def remove_device(self, user: str, device_id: str) -> None:
        """NotFoundError when the user has no such device (another user's
        device is not theirs to remove)."""
        changed = self._change("remove device", 'DELETE FROM devices WHERE id = %s AND "user" = %s',
                               (device_id, user))
        if changed == 0:
            raise NotFoundError(f"user {user} has no device {device_id}")

    def touch_device(self, device_id: str, now: float) -> None:
        """Record the device's last signed request; the time only moves
        forward (a late request cannot set it back)."""
        self._change("touch device",
                     "UPDATE devices SET last_seen = GREATEST(last_seen, %(now)s) WHERE id = %(id)s",
                     {"now": float(now), "id": device_id})

    def put_push(self, push: Push) -> None:
        """Store a new push; AlreadyExistsError for a taken id (ids are
        random: that would be a bug), RefusedError for an unknown status."""
        _rows.check_push(push)
        try:
            self._change(
                "put push",
                'INSERT INTO pushes (id, "user", client, calling_station_id, user_ip, created, expires,'
                " number, status, device, answered) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (push.id, push.user, push.client, push.calling_station_id, push.user_ip, push.created,
                 push.expires, push.number, push.status, push.device, push.answered),
            )
        except StoreError as exc:
            if isinstance(exc.__cause__, pg_errors.UniqueViolation):
                raise AlreadyExistsError("a push with this id exists already") from None
            raise

    def get_push(self, push_id: str) -> Push | None:
        rows = self._read("read push", "SELECT * FROM pushes WHERE id = %s", (push_id,))
        return _rows.push(rows[0]) if rows else None

    def pushes_by_ids(self, push_ids: Sequence[str]) -> list[Push]:
        """The pushes of these ids that exist, in any order: one query."""
        ids = list(dict.fromkeys(push_ids))
        if not ids:
            return []
        rows = self._read("read pushes", "SELECT * FROM pushes WHERE id = ANY(%s)", (ids,))
        return [_rows.push(row) for row in rows]

    def pending_pushes(self, user: str, now: float) -> list[Push]:
        """The user's pushes still pending and not expired at ``now``, oldest first."""
        rows = self._read(
            "pending pushes",
            'SELECT * FROM pushes WHERE "user" = %s AND status = \'pending\' AND expires > %s'
            " ORDER BY created, id",
            (user, now),
        )
        return [_rows.push(row) for row in rows]

    def joinable_push(self, client: str, user: str, calling_station_id: str | None,
                      since: float, now: float) -> Push | None:
        """The newest push of this login attempt (client, user and
        Calling-Station-Id, None matching None) created at ``since`` or
        later, not expired at ``now``, pending or approved; None when there
        is none."""
        rows = self._read(
            "joinable push",
            'SELECT * FROM pushes WHERE client = %s AND "user" = %s'
            " AND calling_station_id IS NOT DISTINCT FROM %s::text AND created >= %s AND expires > %s"
            " AND status IN ('pending', 'approved') ORDER BY created DESC, id DESC LIMIT 1",
            (client, user, calling_station_id, since, now),
        )
        return _rows.push(rows[0]) if rows else None

    def answer_push(self, push_id: str, status: str, device: str, now: float) -> Push | None:
        """Compare-and-set, one ``UPDATE ... WHERE status = 'pending' AND
        expires > now RETURNING``: the new record for exactly one of racing
        answers (the row lock orders them, and the losers see the status
        the winner set); None when the push is gone, answered already or
        expired. RefusedError for a status a device cannot answer with."""
        _rows.check_answer(status)
        rows = self._returning(
            "answer push",
            "UPDATE pushes SET status = %(status)s, device = %(device)s, answered = %(now)s"
            " WHERE id = %(id)s AND status = 'pending' AND expires > %(now)s RETURNING *",
            {"status": status, "device": device, "now": float(now), "id": push_id},
        )
        return _rows.push(rows[0]) if rows else None

    def use_push(self, push_id: str) -> bool:
        """Compare-and-set approved → used: True for the first caller only."""
        changed = self._change(
            "use push", "UPDATE pushes SET status = 'used' WHERE id = %s AND status = 'approved'", (push_id,)
        )
        return changed == 1

    def purge_pushes(self, now: float, keep_seconds: float = 86400.0) -> int:
        """Delete pushes that expired more than ``keep_seconds`` before
        ``now`` and pairings expired before ``now``; returns the pushes deleted."""
        with self._write("purge pushes") as conn:
            conn.execute("DELETE FROM pairings WHERE expires < %s", (now,))
            return conn.execute("DELETE FROM pushes WHERE expires < %s", (now - keep_seconds,)).rowcount

    # --- health --------------------------------------------------------------

    def ping(self) -> None:
        """One trivial round trip: the database answers."""
        self._read("ping", "SELECT 1 AS one")

    # --- clients -----------------------------------------------------------

    def note_client_request(self, name: str, now: float, with_message_authenticator: bool, count: int = 1) -> None:
        """Count ``count`` requests from the client, seen last at ``now``.
        Times only move forward, so servers reporting late cannot set them back."""
        column = "last_with_ma" if with_message_authenticator else "last_without_ma"
        first = (f", first_with_ma = LEAST(coalesce(clients_seen.first_with_ma, excluded.first_with_ma),"
                 " excluded.first_with_ma)") if with_message_authenticator else ""
        self._change(
            "note client request",
            f"INSERT INTO clients_seen (name, requests, last_seen, {column}, first_with_ma)"
            f" VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (name) DO UPDATE SET"
            " requests = clients_seen.requests + excluded.requests,"
            " last_seen = GREATEST(clients_seen.last_seen, excluded.last_seen),"
            f" {column} = GREATEST(clients_seen.{column}, excluded.{column})" + first,
            (name, count, now, now, now if with_message_authenticator else None),
        )

    def note_client_drops(self, drops: Sequence[tuple[str, str, int, float]]) -> None:
        """Count requests dropped unanswered: (client, reason, count, last time)."""
        with self._write("note client drops") as conn:
            conn.cursor().executemany(_NOTE_DROP, [(c, r, n, float(t)) for c, r, n, t in drops])

    def list_clients_seen(self) -> list[ClientSeen]:
        """Every client that sent something, sorted by name, with its drops."""
        rows = self._read("list clients", "SELECT * FROM clients_seen ORDER BY name")
        drops = self._read("list client drops", "SELECT * FROM client_drops ORDER BY client, reason")
        return _rows.clients_seen(rows, drops)

    # --- authentication log ------------------------------------------------

    def add_auth_record(self, record: AuthRecord) -> None:
        """Append one record; ``fields["user"]`` is indexed for `report auth --user`."""
        self.add_auth_records([record])

    def add_auth_records(self, records: Sequence[AuthRecord]) -> None:
        """Append the records in one transaction (the server writes its audit
        trail in batches: one round trip for many sign-ins)."""
        with self._write("add auth records") as conn:
            with conn.cursor() as cursor:
                cursor.executemany('INSERT INTO auth_log (time, "user", fields) VALUES (%s, %s, %s)',
                                   [_rows.auth_log_row(record) for record in records])

    def auth_records(self, since: float | None = None, user: str | None = None) -> list[AuthRecord]:
        """Oldest first; ``since`` inclusive."""
        clauses, params = [], []
        if since is not None:
            clauses.append("time >= %s")
            params.append(since)
        if user is not None:
            clauses.append('"user" = %s')
            params.append(user)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._read("read auth log", f"SELECT time, fields FROM auth_log{where} ORDER BY time, id", params)
        return [AuthRecord(time=row["time"], fields=json.loads(row["fields"])) for row in rows]


# --- helpers ------------------------------------------------------------------


def _usable(conn: psycopg.Connection) -> bool:
    """Whether a connection can take the next statement. An idle connection
    has nothing to say unless the server is saying goodbye (a restart, an
    administrator ending the session, an idle timeout): one with something
    to read is replaced rather than trusted."""
    if conn.closed or conn.broken:
        return False
    if conn.info.transaction_status != TransactionStatus.IDLE:
        return True    # inside this thread's own transaction
    try:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        return not poller.poll(0)
    except (psycopg.Error, OSError, ValueError):
        return False


def _culprit(conn: psycopg.Connection, users: list[User], tokens: list[Token]) -> RefusedError | None:
    """After a batch was refused: the first user or token of it that exists
    already (in the store or earlier in the import), or a token of a user
    who does not; None when none is found."""
    names = [user.name for user in users]
    wanted = list({*names, *(token.user for token in tokens if token.user is not None)})
    known = {row["name"] for row in conn.execute("SELECT name FROM users WHERE name = ANY(%s)", (wanted,))}
    seen: set[str] = set()
    for name in names:
        if name in known or name in seen:
            return AlreadyExistsError(f"user {name} exists already")
        seen.add(name)
    known |= seen
    serials = [token.serial for token in tokens]
    taken = {row["serial"] for row in conn.execute("SELECT serial FROM tokens WHERE serial = ANY(%s)", (serials,))}
    seen = set()
    for token in tokens:
        if token.serial in taken or token.serial in seen:
            return AlreadyExistsError(f"token {token.serial} exists already")
        if token.user is not None and token.user not in known:
            return NotFoundError(f"token {token.serial}: no such user: {token.user}")
        seen.add(token.serial)
    return None



def _release_tokens(conn: psycopg.Connection, name: str) -> int:
    """Take every token from the user: software ones are deleted, hardware
    ones return to the pool with their counter and replay guard; the count."""
    deleted = conn.execute('DELETE FROM tokens WHERE "user" = %s AND NOT hardware', (name,)).rowcount
    return deleted + conn.execute('UPDATE tokens SET "user" = NULL WHERE "user" = %s', (name,)).rowcount


def _drop_sent_codes(conn: psycopg.Connection, name: str) -> None:
    """A user reset or removed: their pending codes and send history go too."""
    conn.execute('DELETE FROM sent_codes WHERE "user" = %s', (name,))
    conn.execute('DELETE FROM code_sends WHERE "user" = %s', (name,))


def _drop_push_state(conn: psycopg.Connection, name: str) -> None:
    """A user reset or removed: their devices, pairing links and pushes go
    (the caller holds the user's row lock)."""
    conn.execute('DELETE FROM devices WHERE "user" = %s', (name,))
    conn.execute('DELETE FROM pairings WHERE "user" = %s', (name,))
    conn.execute('DELETE FROM pushes WHERE "user" = %s', (name,))



def _user_row(user: User, now: float) -> tuple:
    return (user.name, user.display_name, user.email, user.phone, user.password_hash, bool(user.disabled),
            user.failures, user.locked_until, user.created or now)


