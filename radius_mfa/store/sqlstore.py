"""Every Store method, written once for SQLite and PostgreSQL.

:class:`SqlStore` holds the statements and the logic around them; a dialect
(:class:`~radius_mfa.store.sqlite.SqliteStore`,
:class:`~radius_mfa.store.postgres.PostgresStore`) is a short subclass that
supplies only what truly differs, as Django's database backends do:

- how it connects, and ``_write`` (a write transaction: SQLite's ``BEGIN
  IMMEDIATE`` takes the file's write lock before it reads; PostgreSQL locks
  the rows it reads, ``FOR_UPDATE`` / ``FOR_KEY_SHARE``, or a user's sends
  with an advisory lock, ``_lock_sends``);
- the spelling of a statement (``_sql``): every statement here is in
  PostgreSQL's form (``%s`` placeholders, ``"user"`` quoted, ``greatest`` /
  ``least``, ``IS NOT DISTINCT FROM``), which SQLite's store rewrites;
- executing many rows at once, and savepoints;
- which driver errors are a taken key or a missing user (``_violation``);
- its schema's column types (each dialect's ``MIGRATIONS``).

Statements used by more than one method live in :mod:`radius_mfa.store.sql`.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import threading
import time
import weakref
from typing import Any, ClassVar, ContextManager, Iterable, Iterator, Sequence

from radius_mfa.errors import AlreadyExistsError, NotFoundError, RefusedError, StoreError
from radius_mfa.model import AppPassword, Attempt, AuthRecord, Challenge, ClientSeen, Device, Pairing, Push, SentCode, Token, User
from radius_mfa.model import EnrolLink, PortalSession, SignIn, portal_seal_context
from radius_mfa.secretbox import SecretBox, is_sealed
from radius_mfa.store import rows as _rows
from radius_mfa.usage import UsageCounts
from radius_mfa.store.sql import (_ADVANCE_TOTP, _DELETE_RENAMED_USER, _EVICT_CHALLENGES, _FINISH_ATTEMPT, _NOTE_DROP,
                                  _RENAME_USER, _TAKE_ATTEMPT)

UNIQUE = "unique"
FOREIGN_KEY = "foreign_key"

#: The self-service page's tables that refer to a user.
_PORTAL_TABLES = ("enrol_links", "portal_sessions")

_TOKEN_INSERT = (
    'INSERT INTO tokens (serial, type, secret, "user", digits, period, algorithm, counter,'
    " last_step, drift, hardware, created) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_USER_INSERT = (
    "INSERT INTO users (name, display_name, email, phone, password_hash,"
    " disabled, failures, locked_until, created) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


class _Connection:
    """A thread's connection, with the process that opened it.

    A holder rather than the bare connection because sqlite3 connections
    cannot be weakly referenced, and the store tracks its connections weakly
    (a thread's connection goes away with the thread).
    """

    __slots__ = ("conn", "pid", "__weakref__")

    def __init__(self, conn: Any):
        self.conn = conn
        self.pid = os.getpid()


class TransactionCounts:
    """The transactions a store has run since it opened, reads and writes
    (a statement on its own is a transaction of its own), for the metrics
    and the benchmarks' transactions per request. Any thread may count."""

    __slots__ = ("reads", "writes", "_lock")

    def __init__(self) -> None:
        self.reads = 0
        self.writes = 0
        self._lock = threading.Lock()

    def read(self) -> None:
        with self._lock:
            self.reads += 1

    def write(self) -> None:
        with self._lock:
            self.writes += 1


class SqlStore:
    """:class:`radius_mfa.store.base.Store` over a SQL database; a dialect
    subclass supplies the connection and the differences listed in the
    module's docstring."""

    #: What errors and messages call the store (a path, a redacted URL).
    label: str
    _box: SecretBox
    #: The driver's base exception class.
    DB_ERROR: ClassVar[type[BaseException]]
    #: Appended to a SELECT inside ``_write`` that must hold the row until the
    #: transaction ends ("" where the transaction locks everything already).
    FOR_UPDATE: ClassVar[str] = ""
    #: Likewise, for a row that must only not be deleted meanwhile.
    FOR_KEY_SHARE: ClassVar[str] = ""
    #: Values per ``IN (...)`` list, and rows per batch of an import.
    CHUNK: ClassVar[int] = 500

    # --- one connection per thread --------------------------------------------

    def _open_connections(self) -> None:
        self.transactions = TransactionCounts()
        self._local = threading.local()
        self._all: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._all_lock = threading.Lock()   # guards the WeakSet only, never the database
        self._closed = False

    def _conn(self) -> Any:
        """This thread's connection: opened on first use, and again when the
        one it had broke or belongs to the parent process."""
        if self._closed:
            raise StoreError(f"the store {self.label} is closed")
        holder: _Connection | None = getattr(self._local, "holder", None)
        if holder is not None and holder.pid != os.getpid():
            self._inherited(holder)
            holder = None
        if holder is not None and not self._usable(holder.conn):
            self._drop(holder)
            holder = None
        if holder is None:
            holder = _Connection(self._connect())
            self._local.holder = holder
            with self._all_lock:
                self._all.add(holder)
        return holder.conn

    def _drop(self, holder: _Connection) -> None:
        """Forget this thread's broken connection (the next call opens another)."""
        if getattr(self._local, "holder", None) is holder:
            self._local.holder = None
        with self._all_lock:
            self._all.discard(holder)
        with contextlib.suppress(Exception):
            holder.conn.close()

    def close(self) -> None:
        """Close the connections this process opened for the store, where the
        driver lets us (sqlite3 ties each to its thread: those of other threads
        close when their thread ends); the store cannot be used afterwards."""
        self._closed = True
        with self._all_lock:         # before this thread's reference goes: the set is weak
            holders = list(self._all)
            self._all.clear()
        self._local.holder = None
        for holder in holders:
            if holder.pid == os.getpid():
                with contextlib.suppress(Exception):
                    holder.conn.close()

    # --- what a dialect supplies ---------------------------------------------

    def _connect(self) -> Any:
        raise NotImplementedError

    def _usable(self, conn: Any) -> bool:
        """False for a connection the server closed."""
        return True

    def _inherited(self, holder: _Connection) -> None:
        """A connection the parent process opened (we were forked): never
        used here again."""

    def _write(self, operation: str) -> ContextManager[Any]:
        """A short write transaction, yielding a connection whose ``execute``
        takes statements in the form written here."""
        raise NotImplementedError

    def _read(self, operation: str, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    def _change(self, operation: str, sql: str, params: Sequence[Any] = ()) -> int:
        """One writing statement, atomic on its own; the rows it changed."""
        raise NotImplementedError

    def _returning(self, operation: str, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """One writing statement with ``RETURNING``, atomic on its own."""
        raise NotImplementedError

    def _executemany(self, conn: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    def _savepoint(self, conn: Any) -> ContextManager[None]:
        """A savepoint inside ``_write``: an error undoes only what it holds."""
        raise NotImplementedError

    def _lock_sends(self, conn: Any, user: str) -> None:
        """Inside ``_write``: hold the user's rate-limit count until the end
        of the transaction (nothing to do where the transaction locks the
        whole store)."""

    def _lock_challenges(self, conn: Any, user: str) -> None:
        """Inside ``_write``: hold the user's open challenges until the end
        of the transaction, so that the cap on them holds when servers open
        challenges for one user at once (nothing to do where the transaction
        locks the whole store)."""

    def _violation(self, exc: BaseException | None) -> str | None:
        """``UNIQUE`` or ``FOREIGN_KEY`` when the driver error ``exc`` is that
        constraint refusing a row; None for anything else."""
        raise NotImplementedError

    def _refused(self, exc: BaseException, kind: str) -> bool:
        """Whether ``exc`` (a StoreError or a driver error) is ``kind`` of
        constraint refusing a row."""
        cause = exc.__cause__ if isinstance(exc, StoreError) else exc
        return self._violation(cause) == kind

    # --- schema and key ---------------------------------------------------------

    def _upgrade(self, conn: Any, found: int, migrations: Sequence[Sequence[str]]) -> None:
        """Run the steps of ``migrations`` after version ``found`` (inside the
        caller's transaction); refuse a schema newer than this code."""
        latest = len(migrations)
        if found > latest:
            raise StoreError(
                f"the store {self.label} has schema version {found}, newer than the "
                f"version {latest} this radius-mfa knows: upgrade radius-mfa"
            )
        for statements in migrations[found:]:
            for statement in statements:
                conn.execute(statement)
        if found < latest:
            conn.execute("UPDATE schema_version SET version = %s", (latest,))

    def _check_key(self, conn: Any) -> None:
        """Check that the key is this store's; on the first open with a key,
        record its check value and seal every secret still in clear (inside
        the caller's transaction)."""
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

    # --- users -------------------------------------------------------------

    def add_user(self, user: User) -> None:
        """Create a user; AlreadyExistsError when the name is taken.
        A ``created`` of 0 is read as "now"."""
        if not user.name:
            raise RefusedError("a user name must not be empty")
        now = time.time()
        details = {kind: value for kind, value in (("phone", user.phone), ("email", user.email)) if value}
        try:
            if details:                     # the enrolment history keeps phone and address
                with self._write("add user") as conn:
                    conn.execute(_USER_INSERT, _user_row(user, now))
                    _enrol_details(conn, user.name, details, now)
            else:
                self._change("add user", _USER_INSERT, _user_row(user, now))
        except StoreError as exc:
            if self._refused(exc, UNIQUE):
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
                if len(batch_users) >= self.CHUNK or len(batch_tokens) >= self.CHUNK:
                    count += self._insert_batch(conn, batch_users, batch_tokens, now)
                    batch_users, batch_tokens = [], []
            if batch_users or batch_tokens:
                count += self._insert_batch(conn, batch_users, batch_tokens, now)
        return count

    def _existing(self, table: str, column: str, values: Iterable[str]) -> set[str]:
        """Which of ``values`` are in ``table.column``: asked ``CHUNK`` at a
        time, so 100,000 names are a few hundred queries, not 100,000."""
        found: set[str] = set()
        for chunk in _chunks(values, self.CHUNK):
            rows = self._read(f"find {table}",
                              f"SELECT {column} AS v FROM {table} WHERE {column} IN ({_marks(chunk)})", chunk)
            found.update(row["v"] for row in rows)
        return found

    def _insert_batch(self, conn: Any, users: list[User], tokens: list[Token], now: float) -> int:
        """Write a batch of users, then tokens, in a savepoint; the number of
        rows written (users when there are any, else tokens). When a key is
        taken or a user missing, the savepoint is rolled back and the culprit
        looked up: the same answer whatever language the server speaks."""
        try:
            with self._savepoint(conn):
                if users:
                    self._executemany(conn, _USER_INSERT, [_user_row(user, now) for user in users])
                if tokens:
                    self._executemany(conn, _TOKEN_INSERT, [self._token_row(token, now) for token in tokens])
                enrolled = [(u.name, kind, kind, now) for u in users for kind in ("phone", "email")
                            if getattr(u, kind)]
                enrolled += [(t.user, "token", t.serial, now) for t in tokens if t.user is not None]
                if enrolled:
                    self._executemany(conn, _ENROL, enrolled)
        except self.DB_ERROR as exc:
            if self._violation(exc) is None:
                raise
            culprit = self._culprit(users, tokens)
            if culprit is None:
                raise
            raise culprit from None
        return len(users) if users else len(tokens)

    def _culprit(self, users: list[User], tokens: list[Token]) -> RefusedError | None:
        """After a batch was refused: the first user or token of it that
        exists already (in the store or earlier in the import), or a token of
        a user who does not; None when none is found."""
        names = [user.name for user in users]
        known = self._existing("users", "name", {*names, *(t.user for t in tokens if t.user is not None)})
        seen: set[str] = set()
        for name in names:
            if name in known or name in seen:
                return AlreadyExistsError(f"user {name} exists already")
            seen.add(name)
        known |= seen
        taken = self._existing("tokens", "serial", [token.serial for token in tokens])
        seen = set()
        for token in tokens:
            if token.serial in taken or token.serial in seen:
                return AlreadyExistsError(f"token {token.serial} exists already")
            if token.user is not None and token.user not in known:
                return NotFoundError(f"token {token.serial}: no such user: {token.user}")
            seen.add(token.serial)
        return None

    def _token_row(self, token: Token, now: float) -> tuple:
        return (
            token.serial, token.type, self._box.seal(token.secret, token.serial), token.user, token.digits,
            token.period, token.algorithm, token.counter, token.last_step, token.drift, bool(token.hardware),
            token.created or now,
        )

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
        sql = f"UPDATE users SET {assignments} WHERE name = %s RETURNING *"
        details = {key: values[key] for key in ("phone", "email") if key in values}
        if details:                         # the enrolment history follows phone and address
            with self._write("update user") as conn:
                rows = conn.execute(sql, (*values.values(), name)).fetchall()
                if rows:
                    _enrol_details(conn, name, details, time.time())
        else:
            rows = self._returning("update user", sql, (*values.values(), name))
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
                conn.execute('UPDATE enrolments SET "user" = %s WHERE "user" = %s', (new, old))
                for table in _PORTAL_TABLES:
                    conn.execute(f'UPDATE {table} SET "user" = %s WHERE "user" = %s', (new, old))
                conn.execute(_DELETE_RENAMED_USER, (old,))
        except StoreError as exc:
            if self._refused(exc, UNIQUE):
                raise AlreadyExistsError(f"user {new} exists already") from None
            raise

    def remove_user(self, name: str) -> None:
        """Delete the user, their software tokens, sent codes, devices,
        pairing links, pushes and app passwords; their hardware tokens go
        back to the pool, unassigned; NotFoundError. The user's row is locked
        first, so no token, device or pairing can be given to them meanwhile."""
        with self._write("remove user") as conn:
            if conn.execute("SELECT 1 AS one FROM users WHERE name = %s" + self.FOR_UPDATE,
                            (name,)).fetchone() is None:
                raise NotFoundError(f"no such user: {name}")
            _release_tokens(conn, name)
            _drop_push_state(conn, name)    # before the user: these refer to them
            _end_enrolments(conn, 'WHERE "user" = %s', (name,))
            conn.execute("DELETE FROM users WHERE name = %s", (name,))
            _drop_sent_codes(conn, name)

    def reset_user(self, name: str) -> int:
        """Remove every factor of the user (software tokens deleted, hardware
        tokens unassigned; sent codes, devices, pairing links, pushes and app
        passwords dropped); returns how many tokens the user lost;
        NotFoundError."""
        with self._write("reset user") as conn:
            if conn.execute("SELECT 1 AS one FROM users WHERE name = %s" + self.FOR_UPDATE,
                            (name,)).fetchone() is None:
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
            " failures = CASE WHEN failures + 1 >= %s THEN 0 ELSE failures + 1 END,"
            " locked_until = CASE WHEN failures + 1 >= %s THEN %s ELSE locked_until END"
            " WHERE name = %s RETURNING *",
            (limit, limit, float(now + lock_seconds), name),
        )
        return _rows.user(rows[0]) if rows else None

    def take_attempt(self, name: str, now: float, limit: int, lock_seconds: float) -> Attempt | None:
        """Take one attempt at an answer and count it as a failure, in one
        statement (its row lock orders servers taking at once), before the
        answer is checked: None when the user is locked (or unknown). The
        attempt that reaches ``limit`` locks the user until ``now +
        lock_seconds``; ``finish_attempt`` undoes that lock only if this very
        answer was right. A lock that ran out starts a new count."""
        if limit < 1:
            raise ValueError("take_attempt: limit must be at least 1")
        now = float(now)
        rows = self._returning("take attempt", _TAKE_ATTEMPT,
                               (now, now, limit, float(now + lock_seconds), now, name, now))
        return Attempt(rows[0]["failures"], rows[0]["locked_until"]) if rows else None

    def begin_sign_in(self, name: str, now: float, limit: int, lock_seconds: float) -> SignIn:
        """One store step (one thread hop from the reactor) for what three
        were: read the user and the tokens, take the attempt. The attempt is
        still its own atomic statement, which a lock set meanwhile refuses."""
        user = self.get_user(name)
        if user is None:
            return SignIn(None)
        tokens = tuple(self.list_tokens(name))
        if user.disabled or (user.locked_until is not None and user.locked_until > now):
            return SignIn(user, tokens)
        return SignIn(user, tokens, self.take_attempt(name, now, limit, lock_seconds))

    def finish_attempt(self, name: str, attempt: Attempt, success: bool) -> None:
        """The answer of ``attempt`` was not a wrong one: ``success`` (the
        sign-in goes on or is accepted) ends the run of failures; otherwise
        (nobody's fault: an upstream down, a code sent) the attempt is given
        back. Either way a lock this attempt set is lifted."""
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
                if len(batch) == self.CHUNK:
                    count += self._insert_batch(conn, [], batch, now)
                    batch = []
            if batch:
                count += self._insert_batch(conn, [], batch, now)
        return count

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
            row = conn.execute('SELECT "user" FROM tokens WHERE serial = %s' + self.FOR_UPDATE,
                               (serial,)).fetchone()
            if row is None:
                raise NotFoundError(f"no such token: {serial}")
            if conn.execute("SELECT 1 AS one FROM users WHERE name = %s" + self.FOR_KEY_SHARE,
                            (user,)).fetchone() is None:
                raise NotFoundError(f"no such user: {user}")
            owner = row["user"]
            if owner == user:
                return
            if owner is not None:
                raise RefusedError(f"token {serial} is assigned to {owner} already")
            conn.execute('UPDATE tokens SET "user" = %s WHERE serial = %s', (user, serial))
            conn.execute(_ENROL, (user, "token", serial, time.time()))

    def remove_token(self, serial: str) -> None:
        """NotFoundError."""
        with self._write("remove token") as conn:
            if conn.execute("DELETE FROM tokens WHERE serial = %s", (serial,)).rowcount == 0:
                raise NotFoundError(f"no such token: {serial}")
            _end_enrolments(conn, "WHERE kind = 'token' AND ref = %s", (serial,))

    def advance_totp(self, serial: str, step: int, settle: tuple[str, Attempt] | None = None) -> bool:
        """True when ``step`` is later than every step used before (atomic
        compare-and-set); False for a replay or an unknown serial. With
        ``settle`` (name, attempt), a step taken also finishes that attempt
        as a success, in the same transaction."""
        params = (step, serial, step)
        if settle is None:
            return self._change("advance totp", _ADVANCE_TOTP, params) == 1
        name, attempt = settle
        with self._write("advance totp") as conn:
            if conn.execute(_ADVANCE_TOTP, params).rowcount != 1:
                return False
            conn.execute(_FINISH_ATTEMPT, (1, attempt.locked_until, name))
            return True

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
            "UPDATE tokens SET drift = %s, last_step = %s WHERE serial = %s AND type = 'totp'"
            " AND (last_step IS NULL OR last_step < %s)",
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
                if max_open is not None:
                    self._lock_challenges(conn, challenge.user)
                conn.execute(
                    'INSERT INTO challenges (state_digest, "user", client, created, expires, factors, data)'
                    " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (challenge.state_digest, challenge.user, challenge.client,
                     challenge.created, challenge.expires, factors, data),
                )
                if max_open is not None:
                    conn.execute(_EVICT_CHALLENGES, (challenge.user, max_open))
        except StoreError as exc:
            if self._refused(exc, UNIQUE):
                raise AlreadyExistsError("a challenge with this State exists already") from None
            raise

    def take_challenge(self, state_digest: str, now: float | None = None) -> Challenge | None:
        """Mark the challenge used and return it, expired or not; of two
        callers racing for it exactly one gets it (one ``UPDATE ...
        RETURNING``). A used challenge is kept until it expires
        (``used_challenge``)."""
        rows = self._returning(
            "take challenge",
            "UPDATE challenges SET used = %s WHERE state_digest = %s AND used IS NULL RETURNING *",
            (float(time.time() if now is None else now), state_digest),
        )
        return _rows.challenge(rows[0]) if rows else None

    def take_challenge_with_user(self, state_digest: str, now: float, name: str) -> tuple[Challenge | None, SignIn]:
        """``take_challenge`` and, in the same store step (one thread hop),
        the user ``name`` and their tokens, as the answer to a challenge needs them."""
        challenge = self.take_challenge(state_digest, now)
        user = self.get_user(name)
        return challenge, SignIn(user, tuple(self.list_tokens(name)) if user is not None else ())

    def used_challenge(self, state_digest: str) -> Challenge | None:
        """The challenge of this State if it was answered already (its
        ``used`` time set); None for an unknown or still open one."""
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
            if self._refused(exc, UNIQUE):
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
               " AND calling_station_id IS NOT DISTINCT FROM CAST(%s AS TEXT) AND created >= %s AND expires > %s")
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
        holding the user's sends (``_lock_sends``), so servers sharing the
        store cannot together exceed the limit."""
        _rows.check_send_kind(kind)
        with self._write("rate limit") as conn:
            self._lock_sends(conn, user)
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
            if self._refused(exc, FOREIGN_KEY):
                raise NotFoundError(f"no such user: {pairing.user}") from None
            if self._refused(exc, UNIQUE):
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
            user_exists = conn.execute("SELECT 1 AS one FROM users WHERE name = %s" + self.FOR_KEY_SHARE,
                                       (found["user"],)).fetchone() is not None
            row = conn.execute("DELETE FROM pairings WHERE token_digest = %s RETURNING *", (token_digest,)).fetchone()
            if row is None or not user_exists or row["user"] != found["user"] or row["expires"] <= now:
                return None
            try:
                with self._savepoint(conn):     # a taken id leaves the pairing deleted
                    stored = conn.execute(
                        'INSERT INTO devices (id, "user", name, public_key, created, last_seen)'
                        " VALUES (%s, %s, %s, %s, %s, %s) RETURNING *",
                        (device.id, row["user"], device.name, device.public_key, device.created or now,
                         device.last_seen),
                    ).fetchone()
            except self.DB_ERROR as exc:
                if self._violation(exc) != UNIQUE:
                    raise
                taken = True
            if not taken:
                conn.execute(_ENROL, (row["user"], "device", stored["id"], now))
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
        with self._write("remove device") as conn:
            if conn.execute('DELETE FROM devices WHERE id = %s AND "user" = %s', (device_id, user)).rowcount == 0:
                raise NotFoundError(f"user {user} has no device {device_id}")
            _end_enrolments(conn, "WHERE kind = 'device' AND ref = %s", (device_id,))

    def touch_device(self, device_id: str, now: float) -> None:
        """Record the device's last signed request; the time only moves
        forward (a late request cannot set it back)."""
        now = float(now)
        self._change("touch device",
                     "UPDATE devices SET last_seen = greatest(coalesce(last_seen, %s), %s) WHERE id = %s",
                     (now, now, device_id))

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
                 push.expires, push.number, str(push.status), push.device, push.answered),
            )
        except StoreError as exc:
            if self._refused(exc, UNIQUE):
                raise AlreadyExistsError("a push with this id exists already") from None
            raise

    def get_push(self, push_id: str) -> Push | None:
        rows = self._read("read push", "SELECT * FROM pushes WHERE id = %s", (push_id,))
        return _rows.push(rows[0]) if rows else None

    def pushes_by_ids(self, push_ids: Sequence[str]) -> list[Push]:
        """The pushes of these ids that exist, in any order; asked ``CHUNK``
        at a time (SQLite limits the parameters of one statement)."""
        found: list[Push] = []
        for chunk in _chunks(dict.fromkeys(push_ids), self.CHUNK):
            rows = self._read("read pushes", f"SELECT * FROM pushes WHERE id IN ({_marks(chunk)})", chunk)
            found.extend(_rows.push(row) for row in rows)
        return found

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
            " AND calling_station_id IS NOT DISTINCT FROM CAST(%s AS TEXT) AND created >= %s AND expires > %s"
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
        now = float(now)
        rows = self._returning(
            "answer push",
            "UPDATE pushes SET status = %s, device = %s, answered = %s"
            " WHERE id = %s AND status = 'pending' AND expires > %s RETURNING *",
            (str(status), device, now, push_id, now),
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

    # --- app passwords ---------------------------------------------------------

    def add_app_password(self, app_password: AppPassword) -> None:
        """Store an app password (its hash); NotFoundError when the user does
        not exist (the foreign key decides, so a user removed meanwhile gets
        none), AlreadyExistsError for a taken id."""
        ap = app_password
        try:
            with self._write("add app password") as conn:
                conn.execute(
                    'INSERT INTO app_passwords (id, "user", label, password_hash, created, last_used)'
                    " VALUES (%s, %s, %s, %s, %s, %s)",
                    (ap.id, ap.user, ap.label, ap.password_hash, float(ap.created or time.time()), ap.last_used),
                )
                conn.execute(_ENROL, (ap.user, "app_password", ap.id, time.time()))
        except StoreError as exc:
            if self._refused(exc, FOREIGN_KEY):
                raise NotFoundError(f"no such user: {ap.user}") from None
            if self._refused(exc, UNIQUE):
                raise AlreadyExistsError(f"app password {ap.id} exists already") from None
            raise

    def list_app_passwords(self, user: str) -> list[AppPassword]:
        """The user's app passwords, oldest first, hashes included (the
        caller checks against them and never prints them)."""
        rows = self._read("list app passwords",
                          'SELECT * FROM app_passwords WHERE "user" = %s ORDER BY created, id', (user,))
        return [_rows.app_password(row) for row in rows]

    def delete_app_password(self, user: str, app_password_id: str) -> None:
        """NotFoundError when the user has no app password of this id."""
        with self._write("delete app password") as conn:
            if conn.execute('DELETE FROM app_passwords WHERE id = %s AND "user" = %s',
                            (app_password_id, user)).rowcount == 0:
                raise NotFoundError(f"user {user} has no app password {app_password_id}")
            _end_enrolments(conn, "WHERE kind = 'app_password' AND ref = %s", (app_password_id,))

    def delete_app_passwords(self, user: str) -> int:
        """Delete every app password of the user; how many there were."""
        with self._write("delete app passwords") as conn:
            _end_enrolments(conn, "WHERE kind = 'app_password' AND \"user\" = %s", (user,))
            return conn.execute('DELETE FROM app_passwords WHERE "user" = %s', (user,)).rowcount

    def touch_app_password(self, app_password_id: str, now: float) -> None:
        """Record the app password's last use; the time only moves forward."""
        now = float(now)
        self._change("touch app password",
                     "UPDATE app_passwords SET last_used = greatest(coalesce(last_used, %s), %s) WHERE id = %s",
                     (now, now, app_password_id))

    # --- enrolment links and self-service sessions ---------------------------

    def add_enrol_link(self, link: EnrolLink) -> None:
        """Remember a one-time enrolment link (its digest); NotFoundError
        when the user does not exist (the foreign key decides)."""
        try:
            self._change(
                "add enrol link",
                'INSERT INTO enrol_links (token_digest, "user", created, expires, used) VALUES (%s, %s, %s, %s, %s)',
                (link.token_digest, link.user, float(link.created), float(link.expires), link.used),
            )
        except StoreError as exc:
            if self._refused(exc, FOREIGN_KEY):
                raise NotFoundError(f"no such user: {link.user}") from None
            if self._refused(exc, UNIQUE):
                raise AlreadyExistsError("an enrolment link with this token exists already") from None
            raise

    def redeem_enrol_link(self, token_digest: str, now: float) -> EnrolLink | None:
        """Use the link up: one ``UPDATE ... WHERE used IS NULL AND expires >
        now RETURNING``, so of callers racing with one link (on any server
        sharing the store) exactly one gets it. None for an unknown, used or
        expired link."""
        now = float(now)
        rows = self._returning(
            "redeem enrol link",
            "UPDATE enrol_links SET used = %s WHERE token_digest = %s AND used IS NULL AND expires > %s RETURNING *",
            (now, token_digest, now),
        )
        return _rows.enrol_link(rows[0]) if rows else None

    def put_portal_session(self, session: PortalSession) -> None:
        """Store a new signed-in session; NotFoundError when the user does
        not exist."""
        ps = session
        try:
            self._change(
                "put portal session",
                'INSERT INTO portal_sessions (id_digest, "user", csrf, created, last_seen, expires, pending_totp)'
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (ps.id_digest, ps.user, ps.csrf, float(ps.created), float(ps.last_seen), float(ps.expires),
                 self._seal_pending(ps.id_digest, ps.pending_totp)),
            )
        except StoreError as exc:
            if self._refused(exc, FOREIGN_KEY):
                raise NotFoundError(f"no such user: {ps.user}") from None
            if self._refused(exc, UNIQUE):
                raise AlreadyExistsError("a session with this id exists already") from None
            raise

    def touch_portal_session(self, id_digest: str, now: float, idle_seconds: float) -> PortalSession | None:
        """The session, when it has been used within ``idle_seconds`` and
        its absolute expiry is after ``now``; its ``last_seen`` set to
        ``now`` in the same statement. None for an unknown or expired one."""
        now = float(now)
        rows = self._returning(
            "touch portal session",
            "UPDATE portal_sessions SET last_seen = greatest(last_seen, %s)"
            " WHERE id_digest = %s AND last_seen > %s AND expires > %s RETURNING *",
            (now, id_digest, now - float(idle_seconds), now),
        )
        return _rows.portal_session(rows[0], self._box) if rows else None

    def set_portal_pending_totp(self, id_digest: str, secret: str | None) -> None:
        """Keep (sealed) or forget the secret the session shows for enrolment."""
        self._change("set pending totp", "UPDATE portal_sessions SET pending_totp = %s WHERE id_digest = %s",
                     (self._seal_pending(id_digest, secret), id_digest))

    def take_portal_pending_totp(self, id_digest: str) -> str | None:
        """The session's pending secret, forgotten in the same transaction
        (one confirmation per secret, even from two tabs at once)."""
        with self._write("take pending totp") as conn:
            row = conn.execute("SELECT pending_totp FROM portal_sessions WHERE id_digest = %s" + self.FOR_UPDATE,
                               (id_digest,)).fetchone()
            if row is None or row["pending_totp"] is None:
                return None
            conn.execute("UPDATE portal_sessions SET pending_totp = NULL WHERE id_digest = %s", (id_digest,))
        return self._box.open(row["pending_totp"], portal_seal_context(id_digest))

    def delete_portal_session(self, id_digest: str) -> None:
        """Sign-out (absent: nothing happens)."""
        self._change("delete portal session", "DELETE FROM portal_sessions WHERE id_digest = %s", (id_digest,))

    def purge_portal(self, now: float, idle_seconds: float) -> int:
        """Delete sessions expired at ``now`` (idle or absolute) and
        enrolment links expired before it; returns the sessions deleted."""
        now = float(now)
        with self._write("purge portal") as conn:
            conn.execute("DELETE FROM enrol_links WHERE expires < %s", (now,))
            return conn.execute("DELETE FROM portal_sessions WHERE expires <= %s OR last_seen <= %s",
                                (now, now - float(idle_seconds))).rowcount

    def _seal_pending(self, id_digest: str, secret: str | None) -> str | None:
        return None if secret is None else self._box.seal(secret, portal_seal_context(id_digest))

    # --- health --------------------------------------------------------------

    def ping(self) -> None:
        """One trivial round trip: the database answers."""
        self._read("ping", "SELECT 1 AS one")

    # --- clients -----------------------------------------------------------

    def note_client_request(self, name: str, now: float, with_message_authenticator: bool, count: int = 1) -> None:
        """Count ``count`` requests from the client, seen last at ``now``.
        Times only move forward, so servers reporting late cannot set them back."""
        column = "last_with_ma" if with_message_authenticator else "last_without_ma"
        first = (", first_with_ma = least(coalesce(clients_seen.first_with_ma, excluded.first_with_ma),"
                 " excluded.first_with_ma)") if with_message_authenticator else ""
        self._change(
            "note client request",
            f"INSERT INTO clients_seen (name, requests, last_seen, {column}, first_with_ma)"
            " VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (name) DO UPDATE SET"
            " requests = clients_seen.requests + excluded.requests,"
            " last_seen = greatest(coalesce(clients_seen.last_seen, excluded.last_seen), excluded.last_seen),"
            f" {column} = greatest(coalesce(clients_seen.{column}, excluded.{column}), excluded.{column})"
            + first,
            (name, count, now, now, now if with_message_authenticator else None),
        )

    def note_client_drops(self, drops: Sequence[tuple[str, str, int, float]]) -> None:
        """Count requests dropped unanswered: (client, reason, count, last time)."""
        with self._write("note client drops") as conn:
            self._executemany(conn, _NOTE_DROP, [(c, r, n, float(t)) for c, r, n, t in drops])

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
        trail in batches: one write for many sign-ins)."""
        with self._write("add auth records") as conn:
            self._executemany(conn, 'INSERT INTO auth_log (time, "user", fields, result, factor)'
                              " VALUES (%s, %s, %s, %s, %s)",
                              [_rows.auth_log_row(record) for record in records])

    def auth_records(self, since: float | None = None, user: str | None = None) -> list[AuthRecord]:
        """Oldest first; ``since`` inclusive."""
        return [record for _, record in self.auth_log(since, user)]

    def auth_log(self, since: float | None = None, user: str | None = None, limit: int | None = None,
                 after_id: int | None = None) -> list[tuple[int, AuthRecord]]:
        """(id, record) pairs, oldest first (by time, then id); ``since``
        inclusive; with ``limit`` only the newest ``limit`` of them; with
        ``after_id`` only rows of a larger id (`report auth --follow`: ids
        grow with every row written)."""
        clauses, params = [], []
        if since is not None:
            clauses.append("time >= %s")
            params.append(since)
        if user is not None:
            clauses.append('"user" = %s')
            params.append(user)
        if after_id is not None:
            clauses.append("id > %s")
            params.append(after_id)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        if limit is None:
            sql = f"SELECT id, time, fields FROM auth_log{where} ORDER BY time, id"
        else:
            sql = f"SELECT id, time, fields FROM auth_log{where} ORDER BY time DESC, id DESC LIMIT %s"
            params.append(max(int(limit), 0))
        rows = self._read("read auth log", sql, params)
        if limit is not None:
            rows.reverse()
        return [(int(row["id"]), AuthRecord(time=row["time"], fields=json.loads(row["fields"]))) for row in rows]

    def auth_log_last_id(self) -> int:
        """The largest id in the authentication log, 0 when it is empty
        (`report auth --follow` starts after it)."""
        rows = self._read("read auth log", "SELECT MAX(id) AS n FROM auth_log")
        return int(rows[0]["n"] or 0)

    def usage_counts(self, start: float, end: float, kinds: Sequence[str]) -> UsageCounts:
        """`report usage` for ``start`` ≤ time < ``end``: the records counted
        by factor and result, the users with an accept by a second factor
        (not ``none``), and those users together with every user who held a
        factor of one of ``kinds`` at some moment of the period (the
        enrolment history). Three GROUP BY / DISTINCT queries that the index
        ``auth_log_usage`` answers."""
        counts = self._read("count usage", _USAGE_BY_FACTOR, (start, end))
        completed = self._read("count usage", f'SELECT COUNT(DISTINCT "user") AS n FROM auth_log{_COMPLETED}',
                               (start, end))
        kinds = list(kinds) or [""]
        configured = self._read(
            "count usage",
            'SELECT COUNT(*) AS n FROM (SELECT "user" FROM enrolments WHERE since < %s'
            f" AND (until IS NULL OR until > %s) AND kind IN ({_marks(kinds)})"
            f' UNION SELECT "user" FROM auth_log{_COMPLETED}) AS configured',
            (end, start, *kinds, start, end),
        )
        return UsageCounts(
            users_configured=int(configured[0]["n"]),
            users_completed_mfa=int(completed[0]["n"]),
            counts=[(row["factor"], row["result"], int(row["n"])) for row in counts],
        )


# `report usage`. Params: start, end.
_USAGE_BY_FACTOR = ("SELECT factor, result, COUNT(*) AS n FROM auth_log WHERE time >= %s AND time < %s"
                    " GROUP BY factor, result")
# The records of users who completed MFA: an accept by a factor that is one.
_COMPLETED = (" WHERE time >= %s AND time < %s AND result = 'accept' AND factor IS NOT NULL"
              " AND factor != 'none' AND \"user\" IS NOT NULL")


# --- helpers ------------------------------------------------------------------


def _chunks(values: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for value in values:
        chunk.append(value)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _marks(values: Sequence[Any]) -> str:
    return ", ".join(["%s"] * len(values))


def _user_row(user: User, now: float) -> tuple:
    return (user.name, user.display_name, user.email, user.phone, user.password_hash, bool(user.disabled),
            user.failures, user.locked_until, user.created or now)


def _release_tokens(conn: Any, name: str) -> int:
    """Take every token from the user: software ones are deleted, hardware
    ones return to the pool with their counter and replay guard; the count."""
    _end_enrolments(conn, "WHERE kind = 'token' AND \"user\" = %s", (name,))
    deleted = conn.execute('DELETE FROM tokens WHERE "user" = %s AND NOT hardware', (name,)).rowcount
    return deleted + conn.execute('UPDATE tokens SET "user" = NULL WHERE "user" = %s', (name,)).rowcount


def _drop_sent_codes(conn: Any, name: str) -> None:
    """A user reset or removed: their pending codes and send history go too."""
    conn.execute('DELETE FROM sent_codes WHERE "user" = %s', (name,))
    conn.execute('DELETE FROM code_sends WHERE "user" = %s', (name,))


def _drop_push_state(conn: Any, name: str) -> None:
    """A user reset or removed: their devices, pairing links, pushes and app
    passwords go (the caller holds the user's row)."""
    _end_enrolments(conn, "WHERE kind IN ('app_password', 'device') AND \"user\" = %s", (name,))
    conn.execute('DELETE FROM app_passwords WHERE "user" = %s', (name,))
    conn.execute('DELETE FROM devices WHERE "user" = %s', (name,))
    conn.execute('DELETE FROM pairings WHERE "user" = %s', (name,))
    conn.execute('DELETE FROM pushes WHERE "user" = %s', (name,))
    for table in _PORTAL_TABLES:        # links and signed-in pages: the user starts again
        conn.execute(f'DELETE FROM {table} WHERE "user" = %s', (name,))


# --- the enrolment history (`report usage`) -----------------------------------

# Params: user, kind, ref, since.
_ENROL = 'INSERT INTO enrolments ("user", kind, ref, since) VALUES (%s, %s, %s, %s)'


def _end_enrolments(conn: Any, where: str, params: Sequence[Any]) -> None:
    """Inside a write: the factors ``where`` selects are held no longer."""
    conn.execute(f"UPDATE enrolments SET until = %s {where} AND until IS NULL", (time.time(), *params))


def _enrol_details(conn: Any, name: str, details: dict[str, str | None], now: float) -> None:
    """Inside a write: the user's phone or address (``details``: kind →
    value) was set or cleared; a change of number keeps the enrolment."""
    for kind, value in details.items():
        if value:
            conn.execute(
                'INSERT INTO enrolments ("user", kind, ref, since) SELECT %s, %s, %s, %s WHERE NOT EXISTS'
                ' (SELECT 1 FROM enrolments WHERE "user" = %s AND kind = %s AND until IS NULL)',
                (name, kind, kind, now, name, kind),
            )
        else:
            _end_enrolments(conn, 'WHERE "user" = %s AND kind = %s', (name, kind))
