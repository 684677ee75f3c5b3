"""The SQLite store: one file shared by the server, its workers and the commands.

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
import hmac
import json
import os
import sqlite3
import threading
import time
import weakref
from typing import Any, Iterable, Iterator, Sequence

from radius_mfa.errors import AlreadyExistsError, NotFoundError, RefusedError, StoreError
from radius_mfa.model import Attempt, AuthRecord, Challenge, ClientSeen, Device, Pairing, Push, SentCode, Token, User
from radius_mfa.secretbox import SecretBox, is_sealed
from radius_mfa.store import rows as _rows
from radius_mfa.store.sql import _DELETE_RENAMED_USER, _RENAME_USER, _EVICT_CHALLENGES, _FINISH_ATTEMPT, _NOTE_DROP, _TAKE_ATTEMPT

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
)



def schema_version() -> int:
    """The schema version this code writes (the number of migrations)."""
    return len(MIGRATIONS)


class _Connection:
    """A thread's connection, with the process that opened it.

    A holder rather than the bare connection because sqlite3 connections
    cannot be weakly referenced, and the store tracks its connections weakly
    (a thread's connection goes away with the thread).
    """

    __slots__ = ("conn", "pid", "__weakref__")

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.pid = os.getpid()


# Connections inherited across fork: never used nor closed in the child (closing
# could disturb the parent's locks); kept referenced so they are not finalised.
_ABANDONED_AFTER_FORK: list[_Connection] = []


class SqliteStore:
    """:class:`radius_mfa.store.base.Store` on one SQLite file.

    Opening creates the file (and its directory) when missing and brings the
    schema up to date; it raises StoreError when the file cannot be used.
    """

    def __init__(self, path: str, box: SecretBox):
        if not path or path == ":memory:" or path.startswith("file:"):
            raise StoreError("the SQLite store needs a file path (an in-memory database cannot be shared)")
        self.path = os.path.abspath(path)
        self._local = threading.local()
        self._all: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._all_lock = threading.Lock()   # guards the WeakSet only, never the database
        self._closed = False
        self._box = box
        _create_file(self.path)
        with self._errors("open"):
            conn = self._conn()
            conn.execute("PRAGMA journal_mode=WAL").fetchall()
            self._migrate(conn)
        self._bind_key()

    # --- connections and transactions ------------------------------------

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        if self._closed:
            raise StoreError(f"the store {self.path} is closed")
        holder: _Connection | None = getattr(self._local, "holder", None)
        if holder is not None and holder.pid != os.getpid():
            _ABANDONED_AFTER_FORK.append(holder)
            holder = None
        if holder is None:
            holder = _Connection(self._connect())
            self._local.holder = holder
            with self._all_lock:
                self._all.add(holder)
        return holder.conn

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
    def _write(self, operation: str) -> Iterator[sqlite3.Connection]:
        """A short write transaction that holds the write lock from the start
        (``BEGIN IMMEDIATE``), so what it reads cannot change before it writes."""
        with self._errors(operation):
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise

    def _read(self, operation: str, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._errors(operation):
            return self._conn().execute(sql, params).fetchall()

    def _change(self, operation: str, sql: str, params: Sequence[Any] = ()) -> int:
        """One writing statement, atomic on its own (autocommit); the number
        of rows it changed."""
        with self._errors(operation):
            return self._conn().execute(sql, params).rowcount

    def _returning(self, operation: str, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """One writing statement with ``RETURNING``, atomic on its own. Fetching
        every row runs it to completion, which ends its transaction."""
        with self._errors(operation):
            return self._conn().execute(sql, params).fetchall()

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            found = _current_version(conn, self.path)
            latest = schema_version()
            if found > latest:
                raise StoreError(
                    f"the store {self.path} has schema version {found}, newer than the "
                    f"version {latest} this radius-mfa knows: upgrade radius-mfa"
                )
            for statements in MIGRATIONS[found:]:
                for statement in statements:
                    conn.execute(statement)
            if found < latest:
                conn.execute("UPDATE schema_version SET version = ?", (latest,))
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    def _bind_key(self) -> None:
        """Check that the key is this store's; on the first open with a key,
        record its check value and seal every secret still in clear, in one
        transaction."""
        with self._write("check the store key") as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'key_check'").fetchone()
            if row is not None:
                if not hmac.compare_digest(row["value"], self._box.check_value):
                    raise StoreError(
                        f"the key in {self._box.source} is not the key of the store {self.path}:"
                        " its token secrets were sealed with another key file"
                    )
                return
            conn.execute("INSERT INTO meta (key, value) VALUES ('key_check', ?)", (self._box.check_value,))
            plain = conn.execute("SELECT serial, secret FROM tokens").fetchall()
            for serial, secret in plain:
                if not is_sealed(secret):
                    conn.execute("UPDATE tokens SET secret = ? WHERE serial = ?",
                                 (self._box.seal(secret, serial), serial))

    def close(self) -> None:
        """Close this thread's connection and, where SQLite lets us, the
        others; the store cannot be used afterwards. Connections of other
        threads that refuse (sqlite3 ties them to their thread) close when
        their thread ends."""
        self._closed = True
        holder: _Connection | None = getattr(self._local, "holder", None)
        self._local.holder = None
        with self._all_lock:
            others = [h for h in self._all if h is not holder]
            self._all.clear()
        if holder is not None and holder.pid == os.getpid():
            holder.conn.close()
        for other in others:
            if other.pid == os.getpid():
                with contextlib.suppress(sqlite3.Error):
                    other.conn.close()

    # --- users -------------------------------------------------------------

    def add_user(self, user: User) -> None:
        """Create a user; AlreadyExistsError when the name is taken.
        A ``created`` of 0 is read as "now"."""
        if not user.name:
            raise RefusedError("a user name must not be empty")
        try:
            self._change(
                "add user",
                "INSERT INTO users (name, display_name, email, phone, password_hash,"
                " disabled, failures, locked_until, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    user.name, user.display_name, user.email, user.phone, user.password_hash,
                    int(user.disabled), user.failures, user.locked_until, user.created or time.time(),
                ),
            )
        except StoreError as exc:
            if _is_constraint(exc, "SQLITE_CONSTRAINT_PRIMARYKEY"):
                raise AlreadyExistsError(f"user {user.name} exists already") from None
            raise

    def existing_user_names(self, names: Iterable[str]) -> set[str]:
        """Which of ``names`` are users already (asked in chunks)."""
        return self._existing("users", "name", names)

    def add_users(self, users: Iterable[tuple[User, Sequence[Token]]]) -> int:
        """`user import`: all or nothing in one transaction, streamed."""
        now = time.time()
        count = 0
        with self._write("import users") as conn:
            for user, tokens in users:
                if not user.name:
                    raise RefusedError("a user name must not be empty")
                try:
                    conn.execute(
                        "INSERT INTO users (name, display_name, email, phone, password_hash,"
                        " disabled, failures, locked_until, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (user.name, user.display_name, user.email, user.phone, user.password_hash,
                         int(user.disabled), user.failures, user.locked_until, user.created or now),
                    )
                except sqlite3.IntegrityError as exc:
                    if getattr(exc, "sqlite_errorname", "") == "SQLITE_CONSTRAINT_PRIMARYKEY":
                        raise AlreadyExistsError(f"user {user.name} exists already") from None
                    raise
                for token in tokens:
                    _rows.check_token(token)
                    _insert_token(conn, token, self._box.seal(token.secret, token.serial), now)
                count += 1
        return count

    def _existing(self, table: str, column: str, values: Iterable[str]) -> set[str]:
        """Which of ``values`` are in ``table.column``: asked 500 at a time,
        so 100,000 names are a few hundred queries, not 100,000."""
        found: set[str] = set()
        chunk: list[str] = []

        def ask() -> None:
            marks = ", ".join("?" * len(chunk))
            rows = self._read(f"find {table}", f"SELECT {column} FROM {table} WHERE {column} IN ({marks})", chunk)
            found.update(row[0] for row in rows)
            chunk.clear()

        for value in values:
            chunk.append(value)
            if len(chunk) == 500:
                ask()
        if chunk:
            ask()
        return found

    def get_user(self, name: str) -> User | None:
        rows = self._read("read user", "SELECT * FROM users WHERE name = ?", (name,))
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
        values = {key: int(value) if key == "disabled" else value for key, value in fields.items()}
        assignments = ", ".join(f"{key} = ?" for key in values)
        rows = self._returning(
            "update user",
            f"UPDATE users SET {assignments} WHERE name = ? RETURNING *",
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
                if conn.execute(_RENAME_USER[0].replace("%s", "?"), (new, old)).rowcount != 1:
                    raise NotFoundError(f"no such user: {old}")
                for statement in _RENAME_USER[1:]:
                    conn.execute(statement.replace("%s", "?"), (new, old))
                conn.execute(_DELETE_RENAMED_USER.replace("%s", "?"), (old,))
        except sqlite3.IntegrityError:
            raise AlreadyExistsError(f"user {new} exists already") from None
        except StoreError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise AlreadyExistsError(f"user {new} exists already") from None
            raise

    def remove_user(self, name: str) -> None:
        """Delete the user, their software tokens, sent codes, devices,
        pairing links and pushes; their hardware tokens go back to the pool,
        unassigned; NotFoundError."""
        with self._write("remove user") as conn:
            _release_tokens(conn, name)
            _drop_push_state(conn, name)    # before the user: devices and pairings refer to them
            if conn.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 0:
                raise NotFoundError(f"no such user: {name}")
            _drop_sent_codes(conn, name)

    def reset_user(self, name: str) -> int:
        """Remove every factor of the user (software tokens deleted, hardware
        tokens unassigned; sent codes, devices, pairing links and pushes
        dropped; app passwords as they come); returns how many tokens the
        user lost; NotFoundError."""
        with self._write("reset user") as conn:
            if conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone() is None:
                raise NotFoundError(f"no such user: {name}")
            _drop_sent_codes(conn, name)
            _drop_push_state(conn, name)
            return _release_tokens(conn, name)

    # --- lockout -----------------------------------------------------------

    def record_failure(self, name: str, now: float, limit: int, lock_seconds: float) -> User | None:
        """Atomically count one more bad answer in a row; at ``limit`` lock the
        user until ``now + lock_seconds`` and count from zero again. Returns the
        new record (None: no such user)."""
        if limit < 1:
            raise ValueError("record_failure: limit must be at least 1")
        with self._write("record failure") as conn:
            row = conn.execute("SELECT failures FROM users WHERE name = ?", (name,)).fetchone()
            if row is None:
                return None
            failures = row["failures"] + 1
            if failures >= limit:
                conn.execute(
                    "UPDATE users SET failures = 0, locked_until = ? WHERE name = ?",
                    (now + lock_seconds, name),
                )
            else:
                conn.execute("UPDATE users SET failures = ? WHERE name = ?", (failures, name))
            return _rows.user(conn.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone())

    def take_attempt(self, name: str, now: float, limit: int, lock_seconds: float) -> Attempt | None:
        """Take one attempt at an answer and count it as a failure, in one
        statement, before the answer is checked: None when the user is locked
        (or unknown). The attempt that reaches ``limit`` locks the user until
        ``now + lock_seconds``; ``finish_attempt`` undoes that lock only if
        this very answer was right. A lock that ran out starts a new count."""
        if limit < 1:
            raise ValueError("take_attempt: limit must be at least 1")
        rows = self._returning("take attempt", _TAKE_ATTEMPT.replace("%s", "?"),
                               (now, now, limit, now + lock_seconds, now, name, now))
        return Attempt(rows[0]["failures"], rows[0]["locked_until"]) if rows else None

    def finish_attempt(self, name: str, attempt: Attempt, success: bool) -> None:
        """The answer of ``attempt`` was not a wrong one: ``success`` (the
        sign-in goes on or is accepted) ends the run of failures; otherwise
        (nobody's fault: an upstream down, a code sent) the attempt is given
        back. Either way a lock this attempt set is lifted."""
        self._change("finish attempt", _FINISH_ATTEMPT.replace("%s", "?"),
                     (int(success), attempt.locked_until, name))

    def clear_failures(self, name: str) -> None:
        """A success: the run of bad answers ends (lock untouched)."""
        self._change("clear failures", "UPDATE users SET failures = 0 WHERE name = ? AND failures != 0", (name,))

    def unlock(self, name: str) -> None:
        """`user unlock`: failures 0, locked_until None; NotFoundError."""
        changed = self._change(
            "unlock user", "UPDATE users SET failures = 0, locked_until = NULL WHERE name = ?", (name,)
        )
        if changed == 0:
            raise NotFoundError(f"no such user: {name}")

    # --- tokens ------------------------------------------------------------

    def add_token(self, token: Token) -> None:
        """AlreadyExistsError when the serial is taken; NotFoundError when the
        token is assigned to a user who does not exist."""
        self.add_tokens([token])

    def add_tokens(self, tokens: Iterable[Token]) -> int:
        """All or nothing, in one transaction; AlreadyExistsError naming the
        first serial that exists (or repeats). Returns the count."""
        now = time.time()
        count = 0
        with self._write("add tokens") as conn:
            for token in tokens:
                _rows.check_token(token)
                _insert_token(conn, token, self._box.seal(token.secret, token.serial), now)
                count += 1
        return count

    def existing_token_serials(self, serials: Iterable[str]) -> set[str]:
        """Which of ``serials`` the store holds already (asked in chunks)."""
        return self._existing("tokens", "serial", serials)

    def get_token(self, serial: str) -> Token | None:
        rows = self._read("read token", "SELECT * FROM tokens WHERE serial = ?", (serial,))
        return _rows.token(rows[0], self._box) if rows else None

    def list_tokens(self, user: str | None = None) -> list[Token]:
        """All tokens (user None) or the user's, sorted by serial."""
        if user is None:
            rows = self._read("list tokens", "SELECT * FROM tokens ORDER BY serial")
        else:
            rows = self._read("list tokens", "SELECT * FROM tokens WHERE user = ? ORDER BY serial", (user,))
        return [_rows.token(row, self._box) for row in rows]

    def assign_token(self, serial: str, user: str) -> None:
        """NotFoundError for an unknown serial or user; RefusedError when the
        token belongs to another user already (assigning it to its own user
        again changes nothing)."""
        with self._write("assign token") as conn:
            row = conn.execute("SELECT user FROM tokens WHERE serial = ?", (serial,)).fetchone()
            if row is None:
                raise NotFoundError(f"no such token: {serial}")
            if conn.execute("SELECT 1 FROM users WHERE name = ?", (user,)).fetchone() is None:
                raise NotFoundError(f"no such user: {user}")
            owner = row["user"]
            if owner == user:
                return
            if owner is not None:
                raise RefusedError(f"token {serial} is assigned to {owner} already")
            conn.execute("UPDATE tokens SET user = ? WHERE serial = ?", (user, serial))

    def remove_token(self, serial: str) -> None:
        """NotFoundError."""
        if self._change("remove token", "DELETE FROM tokens WHERE serial = ?", (serial,)) == 0:
            raise NotFoundError(f"no such token: {serial}")

    def advance_totp(self, serial: str, step: int) -> bool:
        """True when ``step`` is later than every step used before (atomic
        compare-and-set); False for a replay or an unknown serial."""
        changed = self._change(
            "advance totp",
            "UPDATE tokens SET last_step = ? WHERE serial = ? AND type = 'totp'"
            " AND (last_step IS NULL OR last_step < ?)",
            (step, serial, step),
        )
        return changed == 1

    def advance_hotp(self, serial: str, expected: int, new_counter: int) -> bool:
        """Move the HOTP counter from ``expected`` to ``new_counter``: True when
        it still was ``expected`` (atomic compare-and-set), else False."""
        changed = self._change(
            "advance hotp",
            "UPDATE tokens SET counter = ? WHERE serial = ? AND type = 'hotp' AND counter = ?",
            (new_counter, serial, expected),
        )
        return changed == 1

    def set_totp_drift(self, serial: str, drift: int, last_step: int) -> bool:
        """`token resync` of a TOTP token: True when ``last_step`` is later
        than every step used before (atomic compare-and-set), else False."""
        changed = self._change(
            "resync totp",
            "UPDATE tokens SET drift = ?, last_step = ? WHERE serial = ? AND type = 'totp'"
            " AND (last_step IS NULL OR last_step < ?)",
            (drift, last_step, serial, last_step),
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
                    "INSERT INTO challenges (state_digest, user, client, created, expires, factors, data)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (challenge.state_digest, challenge.user, challenge.client,
                     challenge.created, challenge.expires, factors, data),
                )
                if max_open is not None:
                    conn.execute(_EVICT_CHALLENGES.replace("%s", "?"), (challenge.user, max_open))
        except StoreError as exc:
            if _is_constraint(exc, "SQLITE_CONSTRAINT_PRIMARYKEY"):
                raise AlreadyExistsError("a challenge with this State exists already") from None
            raise
        except sqlite3.IntegrityError:
            raise AlreadyExistsError("a challenge with this State exists already") from None

    def take_challenge(self, state_digest: str, now: float | None = None) -> Challenge | None:
        """Mark the challenge used and return it, expired or not; of two
        callers racing for it exactly one gets it (one ``UPDATE ...
        RETURNING``). A used challenge is kept until it expires
        (``used_challenge``)."""
        rows = self._returning(
            "take challenge",
            "UPDATE challenges SET used = ? WHERE state_digest = ? AND used IS NULL RETURNING *",
            (time.time() if now is None else now, state_digest),
        )
        return _rows.challenge(rows[0]) if rows else None

    def used_challenge(self, state_digest: str) -> Challenge | None:
        """The challenge of this State if it was answered already (its
        ``used`` time set); None for an unknown or still open one."""
        rows = self._read("read used challenge",
                          "SELECT * FROM challenges WHERE state_digest = ? AND used IS NOT NULL",
                          (state_digest,))
        return _rows.challenge(rows[0]) if rows else None

    def purge_challenges(self, now: float) -> int:
        """Delete the challenges that expired before ``now``; returns the count."""
        return self._change("purge challenges", "DELETE FROM challenges WHERE expires < ?", (now,))

    def count_challenges(self, now: float) -> int:
        """How many challenges are pending (not used, not expired at ``now``)."""
        rows = self._read("count challenges",
                          "SELECT COUNT(*) FROM challenges WHERE expires >= ? AND used IS NULL", (now,))
        return int(rows[0][0])

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
                "INSERT INTO sent_codes (id, user, channel, code_mac, client, calling_station_id,"
                " provider, created, expires) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sent.id, sent.user, sent.channel, sent.code_mac, sent.client,
                 sent.calling_station_id, sent.provider, sent.created, sent.expires),
            )
        except StoreError as exc:
            if _is_constraint(exc, "SQLITE_CONSTRAINT_PRIMARYKEY"):
                raise AlreadyExistsError("a sent code with this id exists already") from None
            raise

    def set_sent_code_provider(self, code_id: str, provider: str) -> None:
        """Record which provider delivered the code (for a joined attempt's audit)."""
        self._change("note provider", "UPDATE sent_codes SET provider = ? WHERE id = ?", (provider, code_id))

    def sent_codes_for(self, user: str) -> list[SentCode]:
        """The user's codes not yet taken, expired ones included (the caller
        decides, so the audit can say ``expired``), newest first."""
        rows = self._read("sent codes", "SELECT * FROM sent_codes WHERE user = ? ORDER BY created DESC, id",
                          (user,))
        return [_rows.sent_code(row) for row in rows]

    def take_sent_code(self, code_id: str) -> bool:
        """Use the code up: True for exactly one of any callers racing for it
        (one ``DELETE``), False when it was taken or removed already."""
        return self._change("take sent code", "DELETE FROM sent_codes WHERE id = ?", (code_id,)) == 1

    def pending_sent_code(self, client: str, user: str, calling_station_id: str | None,
                          since: float, now: float, channel: str | None = None) -> SentCode | None:
        """The newest unexpired code sent for this login attempt (same client,
        user and Calling-Station-Id, and ``channel`` when given) at ``since``
        or later; None when there is none."""
        sql = ("SELECT * FROM sent_codes WHERE client = ? AND user = ? AND calling_station_id IS ?"
               " AND created >= ? AND expires > ?")
        params: list[Any] = [client, user, calling_station_id, since, now]
        if channel is not None:
            sql += " AND channel = ?"
            params.append(channel)
        rows = self._read("pending sent code", sql + " ORDER BY created DESC LIMIT 1", params)
        return _rows.sent_code(rows[0]) if rows else None

    def remove_sent_code(self, code_id: str) -> None:
        """Forget a code that was never delivered (absent: nothing happens)."""
        self._change("remove sent code", "DELETE FROM sent_codes WHERE id = ?", (code_id,))

    def allow_send(self, user: str, now: float, limit: int, window_seconds: float,
                   kind: str = "code") -> bool:
        """The rate limit: True, and the send recorded, when fewer than
        ``limit`` sends of ``kind`` ("code" or "push", counted apart) went to
        the user in the last ``window_seconds``; else False. One write
        transaction, so servers sharing the store cannot together exceed the
        limit."""
        _rows.check_send_kind(kind)
        with self._write("rate limit") as conn:
            conn.execute("DELETE FROM code_sends WHERE user = ? AND kind = ? AND time <= ?",
                         (user, kind, now - window_seconds))
            (count,) = conn.execute("SELECT COUNT(*) FROM code_sends WHERE user = ? AND kind = ?",
                                    (user, kind)).fetchone()
            if count >= limit:
                return False
            conn.execute("INSERT INTO code_sends (user, kind, time) VALUES (?, ?, ?)", (user, kind, now))
            return True

    def purge_sent_codes(self, now: float, keep_sends_seconds: float = 86400.0) -> int:
        """Delete the codes that expired before ``now`` (and rate-limit
        records older than ``keep_sends_seconds``); returns the codes deleted."""
        with self._write("purge sent codes") as conn:
            conn.execute("DELETE FROM code_sends WHERE time < ?", (now - keep_sends_seconds,))
            return conn.execute("DELETE FROM sent_codes WHERE expires < ?", (now,)).rowcount

    # --- push devices and approvals ----------------------------------------

    def add_pairing(self, pairing: Pairing) -> None:
        """Remember a one-time pairing token (its digest) for a user;
        NotFoundError when the user does not exist (the foreign key decides,
        so a user removed meanwhile cannot be paired)."""
        try:
            self._change(
                "add pairing",
                "INSERT INTO pairings (token_digest, user, created, expires) VALUES (?, ?, ?, ?)",
                (pairing.token_digest, pairing.user, pairing.created, pairing.expires),
            )
        except StoreError as exc:
            if _is_constraint(exc, "SQLITE_CONSTRAINT_FOREIGNKEY"):
                raise NotFoundError(f"no such user: {pairing.user}") from None
            if _is_constraint(exc, "SQLITE_CONSTRAINT_PRIMARYKEY"):
                raise AlreadyExistsError("a pairing with this token exists already") from None
            raise

    def get_pairing(self, token_digest: str) -> Pairing | None:
        rows = self._read("read pairing", "SELECT * FROM pairings WHERE token_digest = ?", (token_digest,))
        return _rows.pairing(rows[0]) if rows else None

    def complete_pairing(self, token_digest: str, device: Device, now: float) -> Device | None:
        """Use the pairing up and store ``device`` for its user, in one write
        transaction: of two callers racing with one token, one pairs. The
        pairing is deleted whatever happens next; None for an unknown, used or
        expired token or a user gone meanwhile. AlreadyExistsError when the
        device id is taken (ids are random: that would be a bug)."""
        taken = False
        with self._write("complete pairing") as conn:
            rows = conn.execute("DELETE FROM pairings WHERE token_digest = ? RETURNING *",
                                (token_digest,)).fetchall()
            if not rows or rows[0]["expires"] <= now:
                return None
            pairing = _rows.pairing(rows[0])
            if conn.execute("SELECT 1 FROM users WHERE name = ?", (pairing.user,)).fetchone() is None:
                return None
            try:
                # a failed INSERT undoes itself only: the pairing stays deleted
                stored = conn.execute(
                    "INSERT INTO devices (id, user, name, public_key, created, last_seen)"
                    " VALUES (?, ?, ?, ?, ?, ?) RETURNING *",
                    (device.id, pairing.user, device.name, device.public_key, device.created or now,
                     device.last_seen),
                ).fetchall()
            except sqlite3.IntegrityError as exc:
                if getattr(exc, "sqlite_errorname", "") != "SQLITE_CONSTRAINT_PRIMARYKEY":
                    raise
                taken = True
        if taken:
            raise AlreadyExistsError(f"device {device.id} exists already")
        return _rows.device(stored[0])

    def get_device(self, device_id: str) -> Device | None:
        rows = self._read("read device", "SELECT * FROM devices WHERE id = ?", (device_id,))
        return _rows.device(rows[0]) if rows else None

    def list_devices(self, user: str | None = None) -> list[Device]:
        """All devices (user None) or the user's, oldest first."""
        if user is None:
            rows = self._read("list devices", "SELECT * FROM devices ORDER BY created, id")
        else:
            rows = self._read("list devices", "SELECT * FROM devices WHERE user = ? ORDER BY created, id", (user,))
        return [_rows.device(row) for row in rows]

    def remove_device(self, user: str, device_id: str) -> None:
        """NotFoundError when the user has no such device (another user's
        device is not theirs to remove)."""
        if self._change("remove device", "DELETE FROM devices WHERE id = ? AND user = ?", (device_id, user)) == 0:
            raise NotFoundError(f"user {user} has no device {device_id}")

    def touch_device(self, device_id: str, now: float) -> None:
        """Record the device's last signed request; the time only moves
        forward (a late request cannot set it back)."""
        self._change("touch device",
                     "UPDATE devices SET last_seen = max(coalesce(last_seen, ?), ?) WHERE id = ?",
                     (now, now, device_id))

    def put_push(self, push: Push) -> None:
        """Store a new push; AlreadyExistsError for a taken id (ids are
        random: that would be a bug), RefusedError for an unknown status."""
        _rows.check_push(push)
        try:
            self._change(
                "put push",
                "INSERT INTO pushes (id, user, client, calling_station_id, user_ip, created, expires,"
                " number, status, device, answered) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (push.id, push.user, push.client, push.calling_station_id, push.user_ip, push.created,
                 push.expires, push.number, push.status, push.device, push.answered),
            )
        except StoreError as exc:
            if _is_constraint(exc, "SQLITE_CONSTRAINT_PRIMARYKEY"):
                raise AlreadyExistsError("a push with this id exists already") from None
            raise

    def get_push(self, push_id: str) -> Push | None:
        rows = self._read("read push", "SELECT * FROM pushes WHERE id = ?", (push_id,))
        return _rows.push(rows[0]) if rows else None

    def pushes_by_ids(self, push_ids: Sequence[str]) -> list[Push]:
        """The pushes of these ids that exist, in any order; asked 500 at a
        time (SQLite limits the parameters of one statement)."""
        ids = list(dict.fromkeys(push_ids))
        found: list[Push] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ", ".join("?" * len(chunk))
            rows = self._read("read pushes", f"SELECT * FROM pushes WHERE id IN ({marks})", chunk)
            found.extend(_rows.push(row) for row in rows)
        return found

    def pending_pushes(self, user: str, now: float) -> list[Push]:
        """The user's pushes still pending and not expired at ``now``, oldest first."""
        rows = self._read(
            "pending pushes",
            "SELECT * FROM pushes WHERE user = ? AND status = 'pending' AND expires > ? ORDER BY created, id",
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
            "SELECT * FROM pushes WHERE client = ? AND user = ? AND calling_station_id IS ?"
            " AND created >= ? AND expires > ? AND status IN ('pending', 'approved')"
            " ORDER BY created DESC, id DESC LIMIT 1",
            (client, user, calling_station_id, since, now),
        )
        return _rows.push(rows[0]) if rows else None

    def answer_push(self, push_id: str, status: str, device: str, now: float) -> Push | None:
        """Compare-and-set, one ``UPDATE ... WHERE status = 'pending' AND
        expires > now RETURNING``: the new record for exactly one of racing
        answers; None when the push is gone, answered already or expired.
        RefusedError for a status a device cannot answer with."""
        _rows.check_answer(status)
        rows = self._returning(
            "answer push",
            "UPDATE pushes SET status = ?, device = ?, answered = ?"
            " WHERE id = ? AND status = 'pending' AND expires > ? RETURNING *",
            (status, device, now, push_id, now),
        )
        return _rows.push(rows[0]) if rows else None

    def use_push(self, push_id: str) -> bool:
        """Compare-and-set approved → used: True for the first caller only."""
        changed = self._change("use push", "UPDATE pushes SET status = 'used' WHERE id = ? AND status = 'approved'",
                               (push_id,))
        return changed == 1

    def purge_pushes(self, now: float, keep_seconds: float = 86400.0) -> int:
        """Delete pushes that expired more than ``keep_seconds`` before
        ``now`` and pairings expired before ``now``; returns the pushes deleted."""
        with self._write("purge pushes") as conn:
            conn.execute("DELETE FROM pairings WHERE expires < ?", (now,))
            return conn.execute("DELETE FROM pushes WHERE expires < ?", (now - keep_seconds,)).rowcount

    # --- health --------------------------------------------------------------

    def ping(self) -> None:
        """One trivial query: the file can be read."""
        self._read("ping", "SELECT 1")

    # --- clients -----------------------------------------------------------

    def note_client_request(self, name: str, now: float, with_message_authenticator: bool, count: int = 1) -> None:
        """Count ``count`` requests from the client, seen last at ``now``.
        Times only move forward, so workers reporting late cannot set them back."""
        column = "last_with_ma" if with_message_authenticator else "last_without_ma"
        first = (f", first_with_ma = min(coalesce(clients_seen.first_with_ma, excluded.first_with_ma),"
                 " excluded.first_with_ma)") if with_message_authenticator else ""
        self._change(
            "note client request",
            f"INSERT INTO clients_seen (name, requests, last_seen, {column}, first_with_ma)"
            f" VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET"
            " requests = requests + excluded.requests,"
            " last_seen = max(coalesce(last_seen, excluded.last_seen), excluded.last_seen),"
            f" {column} = max(coalesce({column}, excluded.{column}), excluded.{column})" + first,
            (name, count, now, now, now if with_message_authenticator else None),
        )

    def note_client_drops(self, drops: Sequence[tuple[str, str, int, float]]) -> None:
        """Count requests dropped unanswered: (client, reason, count, last time)."""
        with self._write("note client drops") as conn:
            conn.executemany(_NOTE_DROP.replace("%s", "?").replace("greatest(", "max("), drops)

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
        trail in batches: one write lock for many sign-ins)."""
        with self._write("add auth records") as conn:
            conn.executemany("INSERT INTO auth_log (time, user, fields) VALUES (?, ?, ?)",
                             [_rows.auth_log_row(record) for record in records])

    def auth_records(self, since: float | None = None, user: str | None = None) -> list[AuthRecord]:
        """Oldest first; ``since`` inclusive."""
        clauses, params = [], []
        if since is not None:
            clauses.append("time >= ?")
            params.append(since)
        if user is not None:
            clauses.append("user = ?")
            params.append(user)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._read("read auth log", f"SELECT time, fields FROM auth_log{where} ORDER BY time, id", params)
        return [AuthRecord(time=row["time"], fields=json.loads(row["fields"])) for row in rows]


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


def _is_constraint(exc: StoreError, name: str) -> bool:
    cause = exc.__cause__
    return isinstance(cause, sqlite3.IntegrityError) and getattr(cause, "sqlite_errorname", "") == name



def _release_tokens(conn: sqlite3.Connection, name: str) -> int:
    """Take every token from the user: software ones are deleted, hardware
    ones return to the pool with their counter and replay guard; the count."""
    deleted = conn.execute("DELETE FROM tokens WHERE user = ? AND hardware = 0", (name,)).rowcount
    return deleted + conn.execute("UPDATE tokens SET user = NULL WHERE user = ?", (name,)).rowcount


def _insert_token(conn: sqlite3.Connection, token: Token, sealed_secret: str, now: float) -> None:
    try:
        conn.execute(
            "INSERT INTO tokens (serial, type, secret, user, digits, period, algorithm, counter,"
            " last_step, drift, hardware, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                token.serial, token.type, sealed_secret, token.user, token.digits, token.period,
                token.algorithm, token.counter, token.last_step, token.drift, int(token.hardware),
                token.created or now,
            ),
        )
    except sqlite3.IntegrityError as exc:
        name = getattr(exc, "sqlite_errorname", "")
        if name == "SQLITE_CONSTRAINT_PRIMARYKEY":
            raise AlreadyExistsError(f"token {token.serial} exists already") from None
        if name == "SQLITE_CONSTRAINT_FOREIGNKEY":
            raise NotFoundError(f"token {token.serial}: no such user: {token.user}") from None
        raise




def _drop_sent_codes(conn: sqlite3.Connection, name: str) -> None:
    """A user reset or removed: their pending codes and send history go too."""
    conn.execute("DELETE FROM sent_codes WHERE user = ?", (name,))
    conn.execute("DELETE FROM code_sends WHERE user = ?", (name,))


def _drop_push_state(conn: sqlite3.Connection, name: str) -> None:
    """A user reset or removed: their devices, pairing links and pushes go."""
    conn.execute("DELETE FROM devices WHERE user = ?", (name,))
    conn.execute("DELETE FROM pairings WHERE user = ?", (name,))
    conn.execute("DELETE FROM pushes WHERE user = ?", (name,))

