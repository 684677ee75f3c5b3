"""The PostgreSQL store: one database shared by every server and the commands.

The statements are :class:`~radius_mfa.store.sqlstore.SqlStore`'s, written
once for both stores; this module holds what only PostgreSQL has: the
connections, row and advisory locks, its constraint errors and its schema's
migrations.

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
import select
from typing import Any, Iterator, Sequence

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from radius_mfa.errors import StoreError
from radius_mfa.secretbox import SecretBox
from radius_mfa.store.sqlstore import FOREIGN_KEY, UNIQUE, SqlStore, _Connection

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
    (
        # app passwords: only their slow hash, as a user's password
        """
        CREATE TABLE app_passwords (
            id            TEXT COLLATE "C" PRIMARY KEY,
            "user"        TEXT COLLATE "C" NOT NULL REFERENCES users (name),
            label         TEXT,
            password_hash TEXT NOT NULL,
            created       DOUBLE PRECISION NOT NULL,
            last_used     DOUBLE PRECISION
        )
        """,
        'CREATE INDEX app_passwords_user ON app_passwords ("user", created)',
    ),
    (
        # one-time enrolment links to the self-service page: the SHA-256 of
        # the token, never the token; ``used`` set once, by one compare-and-set
        """
        CREATE TABLE enrol_links (
            token_digest TEXT PRIMARY KEY,
            "user"       TEXT COLLATE "C" NOT NULL REFERENCES users (name),
            created      DOUBLE PRECISION NOT NULL,
            expires      DOUBLE PRECISION NOT NULL,
            used         DOUBLE PRECISION
        )
        """,
        'CREATE INDEX enrol_links_user ON enrol_links ("user")',
        "CREATE INDEX enrol_links_expires ON enrol_links (expires)",
        # signed-in browsers of the self-service page, shared by every worker
        # and server: the SHA-256 of the cookie, never the cookie
        """
        CREATE TABLE portal_sessions (
            id_digest    TEXT PRIMARY KEY,
            "user"       TEXT COLLATE "C" NOT NULL REFERENCES users (name),
            csrf         TEXT NOT NULL,
            created      DOUBLE PRECISION NOT NULL,
            last_seen    DOUBLE PRECISION NOT NULL,
            expires      DOUBLE PRECISION NOT NULL,
            pending_totp TEXT
        )
        """,
        'CREATE INDEX portal_sessions_user ON portal_sessions ("user")',
        "CREATE INDEX portal_sessions_expires ON portal_sessions (expires)",
    ),
    (
        # `report usage`: each record's result and factor in columns of their
        # own (filled from the JSON for the records kept so far), and one
        # index that answers the month's counts without reading the records
        "ALTER TABLE auth_log ADD COLUMN result TEXT",
        "ALTER TABLE auth_log ADD COLUMN factor TEXT",
        "UPDATE auth_log SET result = fields::jsonb ->> 'result', factor = fields::jsonb ->> 'factor'",
        'CREATE INDEX auth_log_usage ON auth_log (time, result, factor, "user")',
        # the enrolment history: one row per factor a user came to hold
        # (kind token, device, app_password, phone or email; ref its serial,
        # id or the kind), ``until`` set when it was taken away
        """
        CREATE TABLE enrolments (
            id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            "user"  TEXT COLLATE "C" NOT NULL,
            kind    TEXT NOT NULL,
            ref     TEXT COLLATE "C" NOT NULL,
            since   DOUBLE PRECISION NOT NULL,
            until   DOUBLE PRECISION
        )
        """,
        'CREATE INDEX enrolments_user ON enrolments ("user", kind, ref)',
        "CREATE INDEX enrolments_ref ON enrolments (kind, ref)",
        # what the store holds now, since it was made (or the user was, for a phone or address)
        "INSERT INTO enrolments (\"user\", kind, ref, since) SELECT \"user\", 'token', serial, created FROM tokens"
        ' WHERE "user" IS NOT NULL',
        "INSERT INTO enrolments (\"user\", kind, ref, since) SELECT \"user\", 'device', id, created FROM devices",
        "INSERT INTO enrolments (\"user\", kind, ref, since)"
        " SELECT \"user\", 'app_password', id, created FROM app_passwords",
        "INSERT INTO enrolments (\"user\", kind, ref, since) SELECT name, 'phone', 'phone', created FROM users"
        " WHERE phone IS NOT NULL AND phone != ''",
        "INSERT INTO enrolments (\"user\", kind, ref, since) SELECT name, 'email', 'email', created FROM users"
        " WHERE email IS NOT NULL AND email != ''",
    ),
)

# The tables of the store: finding one of them in a schema without a
# schema_version table means something else made it, and it is not ours to use.
OUR_TABLES = frozenset({
    "schema_version", "users", "tokens", "challenges", "clients_seen", "auth_log", "meta",
    "sent_codes", "code_sends", "pairings", "devices", "pushes", "client_drops", "app_passwords",
    "enrol_links", "portal_sessions",
    "enrolments",
})


# Advisory lock keys: a label hashed with the current schema, so stores in
# different schemas of one database never wait for each other.
_SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('radius-mfa schema ' || coalesce(current_schema(), ''), 0))"
_SEND_LOCK = ("SELECT pg_advisory_xact_lock(hashtextextended("
              "'radius-mfa sends ' || coalesce(current_schema(), '') || ' ' || %s, 0))")
_CHALLENGE_LOCK = ("SELECT pg_advisory_xact_lock(hashtextextended("
                   "'radius-mfa challenges ' || coalesce(current_schema(), '') || ' ' || %s, 0))")


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


class PostgresStore(SqlStore):
    """:class:`radius_mfa.store.base.Store` on a PostgreSQL database.

    ``url`` is a libpq URL (``postgresql://user@host:port/database?...``;
    every query parameter libpq knows passes through). Opening connects,
    brings the schema up to date and checks the key; it raises StoreError when
    the database cannot be used.
    """

    DB_ERROR = psycopg.Error
    FOR_UPDATE = " FOR UPDATE"
    FOR_KEY_SHARE = " FOR KEY SHARE"
    CHUNK = BATCH_ROWS

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
        self._open_connections()
        self._box = box
        try:
            with self._write("open") as conn:
                conn.execute(_SCHEMA_LOCK)
                self._migrate(conn)
                self._check_key(conn)
        except BaseException:
            self.close()
            raise

    # --- connections and transactions ------------------------------------

    def _usable(self, conn: psycopg.Connection) -> bool:
        return _usable(conn)

    def _connect(self) -> psycopg.Connection:
        try:
            return psycopg.connect(self._conninfo, **self._options)
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot connect to the store {self.label}: {self._reason(exc)}"
            ) from None

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
        self.transactions.write()
        with self._errors(operation):
            conn = self._conn()
            with conn.transaction():
                yield conn

    def _read(self, operation: str, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        self.transactions.read()
        with self._errors(operation):
            return self._conn().execute(sql, params).fetchall()

    def _change(self, operation: str, sql: str, params: Sequence[Any] = ()) -> int:
        """One writing statement, atomic on its own (autocommit); the number
        of rows it changed."""
        self.transactions.write()
        with self._errors(operation):
            return self._conn().execute(sql, params).rowcount

    def _returning(self, operation: str, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """One writing statement with ``RETURNING``, atomic on its own."""
        self.transactions.write()
        with self._errors(operation):
            return self._conn().execute(sql, params).fetchall()

    def _migrate(self, conn: psycopg.Connection) -> None:
        """Bring the schema up to date; the caller holds the schema lock in
        the transaction these statements run in."""
        self._upgrade(conn, self._current_version(conn), MIGRATIONS)

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

    def _executemany(self, conn: psycopg.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with conn.cursor() as cursor:
            cursor.executemany(sql, rows)

    def _savepoint(self, conn: psycopg.Connection) -> contextlib.AbstractContextManager[Any]:
        return conn.transaction()

    def _lock_sends(self, conn: psycopg.Connection, user: str) -> None:
        """An advisory lock on the user's sends: they have no row to lock."""
        conn.execute(_SEND_LOCK, (user,))

    def _lock_challenges(self, conn: psycopg.Connection, user: str) -> None:
        """An advisory lock on the user's challenges: the cap counts rows
        that concurrent transactions would not see yet."""
        conn.execute(_CHALLENGE_LOCK, (user,))

    def _violation(self, exc: BaseException | None) -> str | None:
        if isinstance(exc, pg_errors.UniqueViolation):
            return UNIQUE
        if isinstance(exc, pg_errors.ForeignKeyViolation):
            return FOREIGN_KEY
        return None


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
