"""`user import FILE`: bulk onboarding from a CSV file, all or nothing.

The file has a header row naming its columns (any order, any case)::

    name,display_name,email,phone,password,totp_secret
    alice,Alice Liddell,alice@example.org,+4915112345678,$scrypt$ln=14,…,JBSWY3DPEHPK3PXP

Why it is built this way:

* **Several passes, no rows held.** Pass 1 reads and checks every row and
  keeps only ``name → line`` (for "repeats line N" and the one batched
  question to the store: who exists already). Pass 2 (only when the file has
  plain passwords) reads it again and hashes them into an anonymous temporary
  file. Pass 3 reads it once more and streams the users into
  :meth:`Store.add_users`, one transaction. A file of a million rows costs
  the memory of its names, not of its rows.
* **Every problem at once.** A migration file is fixed in one round: each bad
  row is reported with its line (the first :data:`MAX_PROBLEMS` kept, the rest
  counted), and nothing is written while anything is wrong.
* **Hashing last, in parallel.** scrypt costs ~40 ms a password, so hashing
  waits until the whole file has validated (a typo on line 9,000 must not cost
  minutes first), then runs in a process pool with a bounded number of
  passwords in flight, so memory stays flat whatever the file's size. It runs
  before the write transaction, not inside it: the store's write lock is held
  for the second the inserts take, not the minutes of hashing, so a server
  using the same store keeps recording sign-ins meanwhile.
* **Hashes carried over as they are.** A ``password`` that is already a hash
  :func:`radius_mfa.passwords.verify_password` understands is stored verbatim:
  that is how a migration keeps passwords it does not know (the local backend
  replaces it with the configured scheme at the user's next sign-in). A value
  that looks like a hash of another scheme (``$2b$…``, ``$argon2id$…``) is
  refused rather than hashed as if it were the password itself, and so is one
  below a minimum cost (PBKDF2 under 1,000 iterations, scrypt under N=2^10).
  Plain passwords are hashed with the configured ``passwords`` scheme.
* **The file cannot change between the passes unnoticed.** Passes 2 and 3
  check every row again and compare a digest of the whole file with pass
  1's; in pass 3 a mismatch raises inside the transaction, which rolls back.

Neither passwords nor secrets appear in any message: a problem with a
``password`` cell reads ``users.csv:12: password: …`` and no more.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import os
import re
import secrets
import tempfile
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator, TextIO

from radius_mfa import passwords
from radius_mfa.errors import RefusedError, StoreError
from radius_mfa.importing import ImportFailed, Problem, Problems, Tap, open_tap, progress_bar
from radius_mfa.model import Token, User
from radius_mfa.validate import (encode_base32, normalize_base32_secret, quoted, validate_display_name,
                                 validate_email, validate_phone, validate_user_name)

if TYPE_CHECKING:
    from radius_mfa.config import PasswordsConfig
    from radius_mfa.store.base import Store

COLUMNS = ("name", "display_name", "email", "phone", "password", "totp_secret")
SERIAL_ATTEMPTS = 10          # rounds of drawing fresh serials for the ones taken
IN_FLIGHT_PER_WORKER = 8      # passwords queued per hash worker: busy workers, flat memory

# The stored-hash forms passwords.verify_password reads (see passwords.py).
HASH_PREFIXES = ("$scrypt$", "$pbkdf2-sha256$")
# "$scheme$…": modular-crypt form, the way other systems export their hashes.
_CRYPT_LIKE = re.compile(r"\$[A-Za-z0-9][A-Za-z0-9.-]*\$")


@dataclass(frozen=True)
class UserImportSummary:
    users: int
    passwords: int      # users with a password (hashed here or carried over)
    tokens: int         # TOTP tokens enrolled
    seconds: float
    file: str


def import_users(
    store: "Store",
    path: str,
    *,
    progress: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
    issuer: str = "radius-mfa",
    hash_workers: int | None = None,
    passwords_config: "PasswordsConfig | None" = None,
    canonical: Callable[[str], str] = str,
) -> UserImportSummary:
    """Import every user of the CSV file at ``path``, or none.

    Raises :class:`ImportFailed` listing the problems (store unchanged);
    :class:`radius_mfa.errors.AlreadyExistsError` when another process adds
    one of the users between the check and the write (rolled back too).
    ``progress``: where a progress bar goes, only when it is a terminal.
    ``hash_workers``: processes hashing plain passwords (default: one per
    CPU; 1 hashes in this process). ``issuer`` is accepted for symmetry with
    the token commands; the import prints no URI, so it is not used.
    ``passwords_config``: the ``passwords`` section plain passwords are
    hashed with (None: scrypt, the default). ``canonical``: the names as
    the store keeps them (radius_mfa.usernames, policy.username), so that
    ``Alice`` and ``alice`` in one file are one user repeated.
    """
    started = clock()
    try:
        passwords.needs_rehash("", passwords_config)      # a section hash_password cannot use
    except ValueError as exc:
        raise ImportFailed([Problem(path, str(exc))]) from None
    plan = _check(store, path, progress, canonical)
    serials = _fresh_serials(store, plan.tokens)
    workers = min(hash_workers or os.cpu_count() or 1, plan.plain_passwords)
    hashes = (_hash_passwords(path, plan, workers, progress, passwords_config)
              if plan.plain_passwords else None)
    users = _users(path, plan, hashes, serials, progress)
    try:
        count = store.add_users(users)
    finally:
        users.close()
        if hashes is not None:
            hashes.close()
    return UserImportSummary(
        users=count,
        passwords=plan.plain_passwords + plan.hashed_passwords,
        tokens=plan.tokens,
        seconds=clock() - started,
        file=path,
    )


# --- one row ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    """A checked row. Exactly one of ``password`` (plain, to be hashed) and
    ``password_hash`` (carried over) is set when the row has a password."""
    line: int
    name: str
    display_name: str | None
    email: str | None
    phone: str | None
    password: str | None = field(repr=False)
    password_hash: str | None = field(repr=False)
    secret: str | None = field(repr=False)    # base32, normalised


def _parse_row(line: int, cells: list[str], columns: list[str],
               canonical: Callable[[str], str] = str) -> tuple[_Row | None, list[str]]:
    """The row, or None and what is wrong with it (each message names its
    cell; none repeats a password or a secret)."""
    if any(cell.strip() for cell in cells[len(columns):]):
        # The cells no longer line up with the columns: checking them would
        # only add noise. The usual cause is a comma inside an unquoted cell.
        hint = "; a cell with a comma needs double quotes"
        if any(cell.startswith("$scrypt$") for cell in cells):
            hint += " (every $scrypt$ hash has commas)"
        return None, [f"{len(cells)} cells, but the header names {len(columns)} columns{hint}"]
    problems: list[str] = []
    if any(cell.strip() for column, cell in zip(columns, cells) if not column):
        problems.append("a value in a column without a name in the header")
    raw = dict(zip(columns, cells))

    def text(column: str) -> str | None:
        # Surrounding blanks are CSV layout ("alice, Alice"), not data;
        # passwords are the exception and are read verbatim.
        return raw.get(column, "").strip() or None

    def check(column: str, validator: Callable[[str], Any]) -> Any:
        value = text(column)
        if value is None:
            return None
        try:
            return validator(value)
        except RefusedError as exc:
            problems.append(str(exc))
            return None

    name = text("name")
    if name is None or not canonical(name):
        problems.append("name is empty")
        name = None
    else:
        try:
            name = validate_user_name(canonical(name))
        except RefusedError as exc:
            problems.append(str(exc))
            name = None
    display_name = check("display_name", validate_display_name)
    email = check("email", validate_email)
    phone = check("phone", validate_phone)
    secret = check("totp_secret", lambda v: encode_base32(normalize_base32_secret(v, "totp_secret")))
    plain = hashed = None
    if raw.get("password", "").strip():     # blank: not set; otherwise verbatim
        try:
            plain, hashed = _classify_password(raw["password"])
        except RefusedError as exc:
            problems.append(str(exc))
    if problems or name is None:
        return None, problems
    return _Row(line, name, display_name, email, phone, plain, hashed, secret), []


def _classify_password(value: str) -> tuple[str | None, str | None]:
    """``(plain, None)`` or ``(None, stored_hash)``; RefusedError for a value
    that looks like a hash radius-mfa could not verify (hashing it as a
    password would lock the user out without a word), or one below the
    minimum cost of a carried-over hash: PBKDF2 with fewer than
    :data:`~radius_mfa.passwords.MIN_IMPORTED_PBKDF2_ITERATIONS` (1,000,
    the minimum of RFC 8018) iterations, scrypt with N below
    2^:data:`~radius_mfa.passwords.MIN_IMPORTED_SCRYPT_LOG2_N` (2^10). Such a
    hash falls to a brute force of a stolen store in moments; the timing
    floor of the local backend keeps any carried-over hash from showing by
    its speed, and a weaker-than-configured one is replaced at the user's
    next sign-in, but an absurd one is refused here."""
    for prefix in HASH_PREFIXES:
        if value.startswith(prefix):
            if not passwords.is_verifiable_hash(value):
                raise RefusedError(
                    f"password: looks like a {prefix} hash but is malformed "
                    "or has parameters out of range")
            problem = passwords.imported_hash_problem(value)
            if problem is not None:
                raise RefusedError(f"password: the {prefix} hash is too weak to carry over "
                                   f"({problem}); import the users without it and set "
                                   "their passwords anew")
            return None, value
    if _CRYPT_LIKE.match(value):
        raise RefusedError(
            "password: looks like a $scheme$ hash that radius-mfa cannot verify "
            f"(it reads {' and '.join(HASH_PREFIXES)})")
    return value, None



def _hash(password: str, config: "PasswordsConfig | None" = None) -> str:
    """The hash of a plain password (looked up at call time, so tests may
    replace the slow scrypt with a cheap stand-in)."""
    return passwords.hash_password(password, config)


# --- reading the file ------------------------------------------------------------


@contextlib.contextmanager
def _open(path: str) -> Iterator[tuple[Iterator[tuple[int, list[str]]], Tap]]:
    """The file's non-blank records with the line each begins on (a quoted
    cell may span lines), and the tap on its bytes. UTF-8, BOM or not."""
    tap = open_tap(path)
    with io.TextIOWrapper(io.BufferedReader(tap), encoding="utf-8-sig", newline="") as text:
        yield _records(path, csv.reader(text, strict=True)), tap


def _records(path: str, reader: Any) -> Iterator[tuple[int, list[str]]]:
    while True:
        line = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except UnicodeDecodeError:
            # The text layer decodes ahead of the parser: find the real line.
            where = f"{path}:{_undecodable_line(path) or line}"
            raise ImportFailed([Problem(where, "not UTF-8 text")]) from None
        except csv.Error as exc:
            raise ImportFailed([Problem(f"{path}:{line}", f"not valid CSV: {exc}")]) from None
        if any(cell.strip() for cell in cells):
            yield line, cells


def _undecodable_line(path: str) -> int | None:
    """The first line with bytes that are not UTF-8 (a newline byte never
    occurs inside a UTF-8 sequence, so lines can be decoded one by one)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    number = 0
    try:
        with open(path, "rb") as raw:
            for number, data in enumerate(raw, 1):
                decoder.decode(data)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return number
    except OSError:
        return None
    return None


def _header(path: str, records: Iterator[tuple[int, list[str]]]) -> list[str]:
    """The column of each cell position; every header problem at once."""
    first = next(records, None)
    if first is None:
        raise ImportFailed([Problem(path, "the file is empty: a header row naming the columns is needed "
                                          f"({', '.join(COLUMNS)})")])
    line, cells = first
    where = f"{path}:{line}"
    columns = [cell.strip().lower() for cell in cells]
    problems = []
    seen: set[str] = set()
    for column in columns:
        if not column:
            continue    # a blank header cell: spreadsheets export them; its cells must be empty
        if column not in COLUMNS:
            problems.append(Problem(where, f"unknown column {quoted(column)} "
                                           f"(columns are {', '.join(COLUMNS)})"))
        elif column in seen:
            problems.append(Problem(where, f"column {column} appears twice"))
        seen.add(column)
    if "name" not in seen:
        problems.append(Problem(where, "no name column: the header must name one"))
    if problems:
        raise ImportFailed(problems)
    return columns


# --- pass 1: check everything, keep names only ------------------------------------


@dataclass(frozen=True)
class _Plan:
    """What pass 1 learnt; pass 2 must read the very same file."""
    columns: list[str]
    names: dict[str, int]       # name → line
    plain_passwords: int
    hashed_passwords: int
    tokens: int
    size: int
    digest: bytes
    canonical: Callable[[str], str] = str


def _check(store: "Store", path: str, progress: TextIO | None,
           canonical: Callable[[str], str] = str) -> _Plan:
    problems = Problems()

    def problem(line: int, message: str) -> None:
        problems.add(line, Problem(f"{path}:{line}", message))

    names: dict[str, int] = {}
    plain = hashed = tokens = 0
    with _open(path) as (records, tap):
        columns = _header(path, records)
        total = _file_size(path)
        with progress_bar(progress, "checking", total, "B") as bar:
            shown = 0
            for line, cells in records:
                row, row_problems = _parse_row(line, cells, columns, canonical)
                for message in row_problems:
                    problem(line, message)
                name = row.name if row else _valid_name(cells, columns, canonical)
                if name is not None:
                    first = names.setdefault(name, line)
                    if first != line:
                        problem(line, f"user {quoted(name)} repeats line {first}")
                if row is not None:
                    plain += row.password is not None
                    hashed += row.password_hash is not None
                    tokens += row.secret is not None
                bar.update(tap.bytes_read - shown)
                shown = tap.bytes_read
        # the text layer reads ahead: drain what it left, so the digest covers every byte
        while tap.read(1 << 16):
            pass
        size, digest = tap.bytes_read, tap.digest.digest()
    if not names and not problems.total:
        raise ImportFailed([Problem(path, "no users: the file has a header row but no rows after it")])
    for name in sorted(store.existing_user_names(names), key=names.__getitem__):
        problem(names[name], f"user {quoted(name)} exists already")
    problems.raise_if_any()
    return _Plan(columns, names, plain, hashed, tokens, size, digest, canonical)


def _valid_name(cells: list[str], columns: list[str],
                canonical: Callable[[str], str] = str) -> str | None:
    """The name of a row that has other problems, when the name itself is
    fine: it still counts for repeats and for "exists already"."""
    raw = canonical(dict(zip(columns, cells)).get("name", "").strip())
    try:
        return validate_user_name(raw) if raw else None
    except RefusedError:
        return None


def _file_size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _fresh_serials(store: "Store", count: int) -> list[str]:
    """``count`` new TOTP serials, distinct and free in the store. With 32
    random bits a 10,000-token import draws a repeat about one time in a
    hundred, so the draw is checked, not assumed."""
    chosen: set[str] = set()
    for _ in range(SERIAL_ATTEMPTS):
        if len(chosen) == count:
            return list(chosen)
        drawn: set[str] = set()
        while len(chosen) + len(drawn) < count:
            serial = "TOTP" + secrets.token_hex(4).upper()
            if serial not in chosen:
                drawn.add(serial)
        chosen |= drawn - store.existing_token_serials(drawn)
    if len(chosen) == count:
        return list(chosen)
    raise StoreError("could not find enough free token serials")


# --- pass 2: hash the plain passwords into a spool ----------------------------------


def _rows(path: str, plan: _Plan) -> Iterator[_Row]:
    """The rows again, each checked again against what pass 1 saw; a file
    that changed since raises (inside the write transaction: rolled back)."""
    with _open(path) as (records, tap):
        if _header(path, records) != plan.columns:
            raise _changed(path)
        for line, cells in records:
            row, problems = _parse_row(line, cells, plan.columns, plan.canonical)
            if problems or row is None or plan.names.get(row.name) != line:
                raise _changed(path)
            yield row
        while tap.read(1 << 16):
            pass
        if tap.bytes_read != plan.size or tap.digest.digest() != plan.digest:
            raise _changed(path)


def _hash_passwords(path: str, plan: _Plan, workers: int, progress: TextIO | None,
                    config: "PasswordsConfig | None" = None) -> IO[str]:
    """The hashes of the plain passwords, one per line in file order, in an
    anonymous temporary file. Hashing before the write transaction, not
    inside it, keeps the store's write lock for the seconds the inserts take
    rather than the minutes scrypt takes: a live server keeps writing."""
    spool = tempfile.TemporaryFile("w+", encoding="ascii", newline="\n")
    try:
        with progress_bar(progress, "hashing", plan.plain_passwords, " passwords") as bar:
            if workers <= 1:
                for row in _rows(path, plan):
                    if row.password is not None:
                        spool.write(_hash(row.password, config) + "\n")
                        bar.update()
            else:
                _hash_in_pool(_rows(path, plan), spool, workers, bar, config)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool


def _hash_in_pool(rows: Iterator[_Row], spool: IO[str], workers: int, bar: Any,
                  config: "PasswordsConfig | None" = None) -> None:
    """Hash in ``workers`` processes, in file order, with at most
    ``IN_FLIGHT_PER_WORKER`` passwords queued per worker (Executor.map would
    queue the whole file)."""
    window = workers * IN_FLIGHT_PER_WORKER
    pending: deque[Future[str]] = deque()
    with ProcessPoolExecutor(max_workers=workers) as executor:
        try:
            for row in rows:
                if row.password is None:
                    continue
                pending.append(executor.submit(passwords.hash_password, row.password, config))
                while len(pending) >= window or (pending and pending[0].done()):
                    spool.write(pending.popleft().result() + "\n")
                    bar.update()
            while pending:
                spool.write(pending.popleft().result() + "\n")
                bar.update()
        except BaseException:
            executor.shutdown(wait=True, cancel_futures=True)
            raise


# --- pass 3: stream the users into one transaction ---------------------------------


def _users(path: str, plan: _Plan, hashes: IO[str] | None, serials: list[str],
           progress: TextIO | None) -> Iterator[tuple[User, list[Token]]]:
    """The users to write, in file order, with their hashes from the spool."""
    with progress_bar(progress, "writing", len(plan.names), " users") as bar:
        for row in _rows(path, plan):
            password_hash = row.password_hash
            if row.password is not None:
                password_hash = hashes.readline().rstrip("\n") if hashes is not None else ""
                if not password_hash:
                    raise _changed(path)
            user = User(name=row.name, display_name=row.display_name, email=row.email,
                        phone=row.phone, password_hash=password_hash)
            tokens = []
            if row.secret is not None:
                tokens.append(Token(serial=serials.pop(), type="totp", secret=row.secret,
                                    user=row.name, digits=6, period=30, algorithm="sha1"))
            yield user, tokens
            bar.update()


def _changed(path: str) -> ImportFailed:
    return ImportFailed([Problem(path, "the file changed while it was being imported; nothing was imported")])
