"""`token import FILE`: hardware OATH tokens from a vendor's seed file, all or nothing.

Two formats, told apart by content (:func:`detect_format`) unless named:

**PSKC** (RFC 6030), as token vendors ship their seeds: plain, encrypted with
a pre-shared key (``--key HEX``) or with a key derived from a password
(PBKDF2, ``--password-stdin``). Read through python-pskc. Each ``<Key>``
becomes one token: HOTP or TOTP from its ``Algorithm`` URI; digits from
``ResponseFormat Length`` (default 6, 6 to 8, DECIMAL only); hash from
``AlgorithmParameters/Suite`` (HMAC-SHA1, -SHA256, -SHA512; default SHA-1);
period from ``TimeInterval`` (default 30); counter from ``Counter`` (default
0); clock drift from ``TimeDrift`` (RFC 6030: device count minus server count,
which is exactly our ``Token.drift``); serial from ``DeviceInfo/SerialNo``,
else the key's ``Id``. Refused per key: other algorithms (OCRA, PIN…), a
``Time`` other than 0 (RFC 6030 defines it as a count of intervals "from a
specific start point" with no instant attached, so it cannot be turned into
a drift; 0 is what vendors write for the Unix epoch), check digits, a PIN
policy that puts a PIN into the codes, policy elements we do not know (RFC
6030 §5: such a key must not be used).

**CSV**, one token per line::

    # serial,secret_base32[,period[,digits[,algorithm]]]
    serial,secret,period,digits,algorithm        <- optional header row
    HW000001, GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ              # TOTP, 30 s, 6 digits, SHA-1
    HW000002,GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ,60,8,sha256
    HW000003,GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ,hotp,6        # HOTP, counter 0

UTF-8 (a BOM is fine); ``#`` starts a comment, on its own line or after the
fields; blank lines are skipped; blanks around fields are ignored; the first
row is a header and skipped when its first field is ``serial`` (any case).
``period``: empty for 30, a number of seconds (1 to 3600) for TOTP, or the
word ``hotp`` (any case) for an HOTP token starting at counter 0 — our
extension of the usual three-column vendor format. ``digits``: 6, 7 or 8
(default 6). ``algorithm``: sha1, sha256 or sha512, any case (default sha1).
The secret is base32 as ``token add --secret`` takes it (any case, spaces and
``=`` padding allowed), at least 80 bits. A serial is 1 to 64 printable
characters without blanks or commas.

Why it is built this way:

* **All or nothing, every problem at once.** Pass 1 reads and checks every
  entry and keeps only ``serial → line`` (or key number): enough to report
  "serial X repeats line N" and to ask the store once which serials exist.
  Any problem raises :class:`ImportFailed` listing them (the first
  :data:`MAX_PROBLEMS`, the rest counted) before anything is written.
* **Memory flat.** Pass 2 reads the file again and streams the tokens into
  :meth:`Store.add_tokens` (one transaction) through a generator; no list of
  tokens is ever built. PSKC is read one ``<KeyPackage>`` at a time
  (``iterparse``, each package dropped once read) and handed to
  python-pskc's own parser for that package, rather than parsed whole: the
  library would hold the document twice (it keeps a deep copy for signature
  checks) plus its key objects, a few hundred bytes per element.
* **The file cannot change between the passes unnoticed.** Pass 2 checks
  every entry again and compares a digest of the whole file with pass 1's;
  a mismatch raises inside the transaction, which rolls back.
* **MACs checked as RFC 6030 §6.1.1 says.** Values encrypted with a cipher
  that has no integrity check of its own (CBC modes) must carry a
  ``ValueMAC`` over IV‖ciphertext; one without is refused, and the MAC is
  compared in constant time before python-pskc decrypts (the library also
  accepts a MAC over the plaintext, from an old draft; we do not). A wrong
  key or password makes every key fail alike: that is reported once, for
  the file.

The XML is read with the standard library's expat parser, which fetches no
external entities (and expat ≥ 2.4 bounds entity expansion). No message
ever contains a secret, a key or a password; an invalid serial is
described, not echoed (it may be a secret pasted into the wrong column).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import os
import re
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, TextIO

from radius_mfa.errors import AlreadyExistsError, RefusedError, UsageError
from radius_mfa.importing import ImportFailed, Problem, Problems, Tap, open_tap, progress_bar, shows_progress
from radius_mfa.model import Token
from radius_mfa.otp import MIN_SECRET_BITS
from radius_mfa.validate import encode_base32, normalize_base32_secret, quoted

if TYPE_CHECKING:
    from radius_mfa.store.base import Store

FORMATS = ("pskc", "csv")
MAX_SERIAL = 64
MAX_PERIOD = 3600             # seconds; beyond an hour is a column mix-up, not a token
MAX_COUNTER = 2**62           # the store keeps counters in a signed 64-bit integer
CSV_SHAPE = "serial,secret_base32[,period[,digits[,algorithm]]]"
ALGORITHMS = ("sha1", "sha256", "sha512")
WRONG_KEY = "wrong key or password, or the file was altered"
MAC_MISMATCH = f"the MAC does not match: {WRONG_KEY}"
MAX_PBKDF2_ITERATIONS = 10_000_000   # a file cannot make us spin for hours
_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = ((b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))


# --- the public records ----------------------------------------------------------


@dataclass(frozen=True)
class ImportSummary:
    count: int
    by_type: dict[str, int]          # "totp" / "hotp" → how many (types present only)
    seconds: float
    file: str
    format: str                      # "pskc" | "csv"

    def __str__(self) -> str:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.by_type.items()))
        noun = "token" if self.count == 1 else "tokens"
        return (f"imported {self.count} {noun} ({kinds}) from {self.file} ({self.format}) "
                f"in {self.seconds:.1f} s; unassigned until `token assign`")


# --- the entry point ---------------------------------------------------------------


def detect_format(path: str) -> str:
    """``"pskc"`` when the first character that is neither blank nor a BOM
    is ``<`` (XML), else ``"csv"``."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as exc:
        raise ImportFailed([Problem(path, f"cannot read the file: {exc.strerror or exc}")]) from None
    for bom, codec in _UTF16_BOMS:                # expat reads UTF-16 itself
        if head.startswith(bom):
            head = head[len(bom):len(bom) + 2 * (len(head) // 2 - 1)].decode(codec, "replace").encode()
            break
    head = head.removeprefix(_BOM).lstrip()
    return "pskc" if head.startswith(b"<") else "csv"


def import_tokens(
    store: "Store",
    path: str,
    *,
    format: str | None = None,
    key: bytes | None = None,
    password: str | None = None,
    progress: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> ImportSummary:
    """Import every token of ``path`` unassigned, or none.

    ``format``: ``"pskc"``, ``"csv"`` or None (by content). ``key`` (the
    pre-shared key) or ``password`` unlock an encrypted PSKC file. Raises
    :class:`ImportFailed` listing the problems (store unchanged);
    UsageError for options that do not fit the file. ``progress``: where a
    progress bar goes, only when it is a terminal.
    """
    started = clock()
    if format is None:
        format = detect_format(path)
    if format not in FORMATS:
        raise UsageError(f"unknown format {quoted(format)}: pskc or csv")
    if key is not None and password is not None:
        raise UsageError("give --key or --password-stdin, not both")
    if key is not None and not key:
        raise UsageError("--key is empty")
    source: _Source
    if format == "csv":
        if key is not None or password is not None:
            raise UsageError("--key and --password-stdin apply to PSKC files only")
        source = _CsvSource(path)
    else:
        source = _PskcSource(path, key=key, password=password)
    plan = _check(store, source, progress)
    tokens = _tokens(source, plan, progress)
    try:
        count = store.add_tokens(tokens)
    except AlreadyExistsError as exc:
        # Another process added one of the serials since pass 1: rolled back.
        raise ImportFailed([Problem(path, str(exc))]) from None
    finally:
        tokens.close()
    return ImportSummary(count=count, by_type=dict(plan.by_type), seconds=clock() - started,
                         file=path, format=format)


# --- the passes, common to both formats ---------------------------------------------


class _MacProblem(Problem):
    """A key whose MAC or decryption failed: when every key fails so, the
    key (or password) is wrong and the file gets one problem, not one per key."""


@dataclass(frozen=True)
class _Plan:
    """What pass 1 learnt; pass 2 must read the very same file."""
    serials: dict[str, int]          # serial → line or key number
    by_type: dict[str, int]
    size: int
    digest: bytes


def _check(store: "Store", source: "_Source", progress: TextIO | None) -> _Plan:
    """Pass 1: every entry checked, only serials kept; ImportFailed when
    anything is wrong."""
    problems = Problems()
    macs = Problems()
    serials: dict[str, int] = {}
    by_type: dict[str, int] = {}
    entries = 0
    with source.reading(progress, "checking") as (items, tap):
        for position, item in items:
            if position > 0:
                entries += 1
            if isinstance(item, _MacProblem):
                macs.add(position, item)
            elif isinstance(item, Problem):
                problems.add(position, item)
            else:
                first = serials.setdefault(item.serial, position)
                if first != position:
                    problems.add(position, Problem(source.where(position, item.serial),
                                                   f"serial {item.serial} repeats {source.noun} {first}"))
                else:
                    by_type[item.type] = by_type.get(item.type, 0) + 1
        size, digest = tap.finish()
    if macs.total and macs.total == entries:
        problems.add(0, Problem(source.path, f"{MAC_MISMATCH} (every key fails to decrypt)"))
    else:
        for position, problem in macs.kept():
            problems.add(position, problem)
        problems.total += macs.total - len(macs.kept())
    if not entries and not problems.total:
        problems.add(0, Problem(source.path, "the file holds no tokens"))
    for serial in sorted(store.existing_token_serials(serials), key=serials.__getitem__):
        position = serials[serial]
        problems.add(position, Problem(source.where(position, serial),
                                       f"serial {serial} exists in the store already"))
    problems.raise_if_any()
    return _Plan(serials, by_type, size, digest)


def _tokens(source: "_Source", plan: _Plan, progress: TextIO | None) -> Iterator[Token]:
    """Pass 2: the tokens again, each checked again against pass 1; raises
    (inside the store's transaction: rolled back) if the file changed."""
    count = 0
    with source.reading(progress, "importing", total=len(plan.serials)) as (items, tap):
        for position, item in items:
            if isinstance(item, Problem) or plan.serials.get(item.serial) != position:
                raise _changed(source.path)
            count += 1
            yield item
        if count != len(plan.serials) or tap.finish() != (plan.size, plan.digest):
            raise _changed(source.path)


def _changed(path: str) -> ImportFailed:
    return ImportFailed([Problem(path, "the file changed while it was being imported")])


class _Source:
    """One format's reader: ``reading()`` yields ``(position, Token |
    Problem)`` for one pass; position 0 is the file itself."""
    path: str
    noun: str                        # "line" | "key"

    def reading(self, progress: TextIO | None, what: str,
                total: int | None = None) -> contextlib.AbstractContextManager:
        raise NotImplementedError

    def where(self, position: int, serial: str | None = None) -> str:
        raise NotImplementedError


# --- reading bytes: digest, progress -------------------------------------------------


def _serial_problem(serial: str) -> str | None:
    """What is wrong with a serial, without repeating it (it may be a secret
    in the wrong column); None when it is fine."""
    if not serial:
        return "the serial is empty"
    if len(serial) > MAX_SERIAL:
        return f"the serial is {len(serial)} characters long, at most {MAX_SERIAL} allowed"
    if any(ch.isspace() for ch in serial):
        return "the serial contains a blank"
    if "," in serial:
        return "the serial contains a comma"
    if not serial.isprintable():
        return "the serial contains an unprintable character"
    return None


def _secret_problem(raw: bytes) -> str | None:
    if len(raw) * 8 < MIN_SECRET_BITS:
        return f"the secret is too short: {len(raw) * 8} bits, at least {MIN_SECRET_BITS} needed"
    return None


# --- CSV -------------------------------------------------------------------------------


class _CsvSource(_Source):
    noun = "line"

    def __init__(self, path: str):
        self.path = path
        self._lines: int | None = None

    def where(self, position: int, serial: str | None = None) -> str:
        return f"{self.path}:{position}" if position else self.path

    @contextlib.contextmanager
    def reading(self, progress: TextIO | None, what: str,
                total: int | None = None) -> Iterator[tuple[Iterator[tuple[int, Token | Problem]], Tap]]:
        tap = open_tap(self.path)
        with tap, io.BufferedReader(tap) as lines:
            if total is None:
                total, unit = (self._line_count() if shows_progress(progress) else None), " lines"
            else:
                unit = " tokens"
            with progress_bar(progress, what, total, unit) as bar:
                yield self._entries(lines, bar, per_token=unit == " tokens"), tap

    def _line_count(self) -> int:
        """Lines in the file, for the bar's total: a cheap count of newlines."""
        if self._lines is None:
            newlines, last = 0, b"\n"
            with open_tap(self.path) as tap:
                while chunk := tap.read(1 << 20):
                    newlines += chunk.count(b"\n")
                    last = chunk[-1:]
            self._lines = newlines + (last != b"\n")
        return self._lines

    def _entries(self, lines: io.BufferedReader, bar: Any, per_token: bool) -> Iterator[tuple[int, Token | Problem]]:
        header_possible = True
        for number, raw in enumerate(lines, 1):
            if not per_token:
                bar.update()
            if number == 1:
                raw = raw.removeprefix(_BOM)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, Problem(self.where(number), "the line is not UTF-8 text")
                continue
            content = text.split("#", 1)[0].strip()
            if not content:
                continue
            fields = [field.strip() for field in content.split(",")]
            if header_possible:
                header_possible = False
                if fields[0].lower() == "serial":
                    continue
            token, problems = _csv_token(fields)
            if token is None:
                yield number, Problem(self.where(number), "; ".join(problems))
            else:
                if per_token:
                    bar.update()
                yield number, token


def _csv_token(fields: list[str]) -> tuple[Token | None, list[str]]:
    """The token of one CSV row, or None and what is wrong with the row
    (every problem of the row; none repeats the secret)."""
    if len(fields) < 2:
        return None, [f"expected {CSV_SHAPE}: found 1 field"]
    if len(fields) > 5:
        return None, [f"too many fields: {len(fields)}, at most 5 ({CSV_SHAPE})"]
    serial, secret, period, digits, algorithm = fields + [""] * (5 - len(fields))
    problems = []
    if problem := _serial_problem(serial):
        problems.append(problem)
    raw = b""
    try:
        raw = normalize_base32_secret(secret, "the secret")
    except RefusedError as exc:
        problems.append(str(exc))
    kind, seconds = "totp", 30
    if period.lower() == "hotp":
        kind = "hotp"
    elif period:
        if period.isascii() and period.isdigit() and 1 <= int(period) <= MAX_PERIOD:
            seconds = int(period)
        else:
            problems.append(f"the period must be a number of seconds from 1 to {MAX_PERIOD}, or hotp")
    if digits and digits not in ("6", "7", "8"):
        problems.append("digits must be 6, 7 or 8")
    if algorithm and algorithm.lower() not in ALGORITHMS:
        problems.append("the algorithm must be sha1, sha256 or sha512")
    if problems:
        return None, problems
    token = Token(serial=serial, type=kind, secret=encode_base32(raw), digits=int(digits or 6),
                  period=seconds, algorithm=(algorithm or "sha1").lower(), counter=0, hardware=True)
    return token, []


# --- PSKC ------------------------------------------------------------------------------


class _Fatal(Exception):
    """A problem that ends the reading of a PSKC file (nothing after it can
    be checked): no key, unreadable XML…"""

    def __init__(self, problem: Problem):
        super().__init__(problem.message)
        self.problem = problem


# python-pskc's names of the values a <Data> may hold (any of them encrypted), and their elements
_ELEMENTS = {"secret": "Secret", "counter": "Counter", "time_offset": "Time",
             "time_interval": "TimeInterval", "time_drift": "TimeDrift"}
_ENCRYPTABLE = tuple(_ELEMENTS)
_PIN_IN_CODE = ("Prepend", "Append", "Algorithmic")     # PINUsageMode values the server would have to check


class _PskcSource(_Source):
    """A PSKC file, one ``<KeyPackage>`` at a time. The key material (the
    pre-shared key, or the one derived from the password: PBKDF2 is slow on
    purpose, so it is derived once) is kept for the second pass."""
    noun = "key"

    def __init__(self, path: str, *, key: bytes | None, password: str | None):
        self.path = path
        self._given_key = key
        self._password = password
        self._key = key                      # the decryption key, once known

    def where(self, position: int, serial: str | None = None) -> str:
        if not position:
            return self.path
        return f"{self.path}: key {position}" + (f" (serial {serial})" if serial else "")

    @contextlib.contextmanager
    def reading(self, progress: TextIO | None, what: str,
                total: int | None = None) -> Iterator[tuple[Iterator[tuple[int, Token | Problem]], Tap]]:
        tap = open_tap(self.path)
        with tap, io.BufferedReader(tap) as data:
            if total is None:
                total, unit = _file_size(self.path), "B"
            else:
                unit = " tokens"
            with progress_bar(progress, what, total, unit) as bar:
                yield self._entries(data, tap, bar, per_token=unit == " tokens"), tap

    def _entries(self, data: io.BufferedReader, tap: Tap, bar: Any,
                 per_token: bool) -> Iterator[tuple[int, Token | Problem]]:
        from pskc import PSKC

        pass_ = _Pass(pskc=PSKC())
        try:
            for position, item in self._keys(data, pass_):
                if per_token and not isinstance(item, Problem):
                    bar.update()
                elif not per_token:
                    bar.update(tap.bytes_read - bar.n)
                yield position, item
        except _Fatal as fatal:
            yield 0, fatal.problem
            return
        if not pass_.encrypted and (self._given_key is not None or self._password is not None):
            option = "--key" if self._given_key is not None else "--password-stdin"
            yield 0, Problem(self.path, f"the file is not encrypted: leave out {option}")

    def _keys(self, data: io.BufferedReader, pass_: "_Pass") -> Iterator[tuple[int, Token | Problem]]:
        """Every key of the document, parsed by python-pskc one package at a
        time; each top-level element is dropped from the tree once read."""
        from pskc.device import Device
        from pskc.parser import PSKCParser

        depth = 0
        root = None
        position = 0
        try:
            for event, element in self._xml_events(data):
                if event == "start":
                    depth += 1
                    if depth == 1:
                        root = element
                        self._check_container(element)
                    continue
                depth -= 1
                if depth != 1:
                    continue
                tag = _local(element.tag)
                _strip_namespaces(element)
                try:
                    if tag in ("KeyPackage", "Device"):
                        device = Device(pass_.pskc)
                        try:
                            PSKCParser.parse_key_package(device, element)
                        except Exception as exc:  # the library's errors for bad values: ValueError, ParseError…
                            position += 1
                            yield position, Problem(self.where(position), f"not a valid key package: {_reason(exc)}")
                            continue
                        for key in device.keys:
                            position += 1
                            yield position, self._entry(pass_, key, position)
                    else:
                        self._header(pass_, tag, element)
                finally:
                    assert root is not None
                    root.remove(element)
        except ElementTree.ParseError as exc:
            raise _Fatal(Problem(self.path, f"not a PSKC document: not well-formed XML ({exc})")) from None

    def _xml_events(self, data: io.BufferedReader) -> Iterator[tuple[str, ElementTree.Element]]:
        """The parser's (event, element) pairs. An encoding that the parser
        cannot read (one Python does not know, like ``UTF-9``, or a multi-byte
        one expat refuses, like ``UTF-7``) is a one-line problem. Only the
        parser's own errors are caught here, never those of the caller's loop."""
        events = ElementTree.iterparse(data, events=("start", "end"))
        while True:
            try:
                event, element = next(events)
            except StopIteration:
                return
            except ElementTree.ParseError:
                raise
            except (LookupError, ValueError, UnicodeError) as exc:
                raise _Fatal(Problem(self.path, "not a PSKC document: cannot read its character encoding "
                                                f"({_printable(_reason(exc).split(';')[0])}); "
                                                "save it as UTF-8")) from None
            yield event, element

    def _header(self, pass_: "_Pass", tag: str, element: ElementTree.Element) -> None:
        """The container's encryption and MAC settings (they come before the
        packages); other top-level elements (Signature…) are not used."""
        from pskc.parser import PSKCParser

        try:
            if tag in ("EncryptionKey", "EncryptionMethod"):
                PSKCParser.parse_encryption(pass_.pskc.encryption, element)
            elif tag in ("MACMethod", "DigestMethod"):
                PSKCParser.parse_mac_method(pass_.pskc.mac, element)
            elif tag == "MACAlgorithm":
                pass_.pskc.mac.algorithm = (element.text or "").strip()
        except Exception as exc:  # what the library raises for a bad algorithm, bad base64…
            raise self._fatal(f"cannot read <{tag}>: {_reason(exc)}") from None

    def _check_container(self, root: ElementTree.Element) -> None:
        tag = _local(root.tag)
        if tag not in ("KeyContainer", "SecretContainer"):
            raise _Fatal(Problem(self.path, f"not a PSKC document: the root element is <{tag}>, not <KeyContainer>"))
        version = root.get("Version") or root.get("version")
        if tag == "KeyContainer" and version and version not in ("1", "1.0"):
            raise _Fatal(Problem(self.path, f"unsupported PSKC version {quoted(version)} (1.0 is)"))

    # --- one key --------------------------------------------------------------------

    def _entry(self, pass_: "_Pass", key: Any, position: int) -> Token | Problem:
        from pskc.exceptions import DecryptionError
        from pskc.key import EncryptedValue

        serial = (key.serial or key.id or "").strip()
        serial_problem = _serial_problem(serial) if serial else (
            "the key has neither a serial number (DeviceInfo/SerialNo) nor an Id")
        where = self.where(position, None if serial_problem else serial)
        values: dict[str, Any] = {}
        for name in _ENCRYPTABLE:
            stored = getattr(key, "_" + name, None)     # python-pskc's stored form: plain or EncryptedValue
            if not isinstance(stored, EncryptedValue):
                values[name] = stored
                continue
            pass_.encrypted = True
            self._unlock(pass_)
            element = _ELEMENTS[name]
            if stored.mac_value is None:
                if _needs_mac(stored.algorithm or pass_.pskc.encryption.algorithm):
                    return Problem(where, f"the encrypted {element} has no ValueMAC: RFC 6030 (section 6.1.1) "
                                          f"requires one with {_short(pass_.pskc.encryption.algorithm)}")
            elif pass_.mac_hash is None:
                return Problem(where, f"the encrypted {element} has a ValueMAC but the file has no MACMethod")
            elif not hmac.compare_digest(hmac.digest(pass_.mac_key, stored.cipher_value, pass_.mac_hash),
                                         stored.mac_value):
                return _MacProblem(where, MAC_MISMATCH)
            try:
                if type(stored) is EncryptedValue:
                    # MAC checked above; python-pskc's get_value would compute two more (slow) ones
                    values[name] = pass_.pskc.encryption.decrypt_value(stored.cipher_value, stored.algorithm)
                else:
                    values[name] = getattr(key, name)   # an integer: the library's decoding
            except DecryptionError:
                return _MacProblem(where, MAC_MISMATCH)
        if serial_problem:
            return Problem(where, serial_problem)
        token = _pskc_token(key, serial, values)
        return token if isinstance(token, Token) else Problem(where, token)

    def _unlock(self, pass_: "_Pass") -> None:
        """Make the key material ready, once per pass; _Fatal with what the
        administrator must give or fix otherwise."""
        if pass_.unlocked:
            return
        from pskc.exceptions import DecryptionError, KeyDerivationError
        from pskc.key import EncryptedValue

        encryption, mac = pass_.pskc.encryption, pass_.pskc.mac
        if not encryption.algorithm:
            raise self._fatal("the file has encrypted values but names no encryption algorithm")
        try:
            lengths = encryption.algorithm_key_lengths
        except DecryptionError:
            raise self._fatal(f"unsupported encryption algorithm {quoted(encryption.algorithm)}") from None
        if self._key is None:
            how, option = _how_encrypted(encryption)
            if self._password is None:
                raise self._fatal(f"the file is encrypted with {how}: give {option}")
            if option != "--password-stdin":
                raise self._fatal(f"the file is encrypted with {how}, not a password: give {option}")
            iterations = encryption.derivation.pbkdf2_iterations or 0
            if iterations > MAX_PBKDF2_ITERATIONS:
                raise self._fatal(f"the PBKDF2 iteration count {iterations} is above {MAX_PBKDF2_ITERATIONS:,}")
            try:
                encryption.derive_key(self._password)
            except (KeyDerivationError, DecryptionError, ValueError, TypeError) as exc:
                raise self._fatal(f"cannot derive the key from the password: {_reason(exc)}") from None
            self._key = encryption.key
        encryption.key = self._key
        if len(self._key) not in lengths:
            need = " or ".join(f"{n} bytes ({2 * n} hex digits)" for n in lengths)
            what = "the key" if self._given_key is not None else "the key derived from the password"
            raise self._fatal(f"{what} is {len(self._key)} bytes long; {_short(encryption.algorithm)} needs {need}")
        if _needs_mac(encryption.algorithm) and not mac.algorithm:
            raise self._fatal(f"the values are encrypted with {_short(encryption.algorithm)}, which has no "
                              "integrity check of its own, and the file has no MACMethod: RFC 6030 "
                              "(section 6.1.1) requires a MAC")
        if mac.algorithm:
            pass_.mac_hash = _hmac_hash(mac.algorithm)
            if pass_.mac_hash is None:
                raise self._fatal(f"unsupported MAC algorithm {quoted(mac.algorithm)}")
            sealed = getattr(mac, "_key", None)     # python-pskc keeps the MACKey sealed until asked
            try:
                pass_.mac_key = sealed.get_value(pass_.pskc) if isinstance(sealed, EncryptedValue) else mac.key
            except DecryptionError:
                raise self._fatal(f"cannot decrypt the MAC key: {WRONG_KEY}") from None
        pass_.unlocked = True

    def _fatal(self, message: str) -> _Fatal:
        return _Fatal(Problem(self.path, message))


@dataclass
class _Pass:
    """The state of one reading of a PSKC file."""
    pskc: Any                        # pskc.PSKC: the container's encryption and MAC settings
    unlocked: bool = False
    mac_key: bytes | None = None     # decrypted once per pass
    mac_hash: str | None = None      # hashlib name of the MAC's hash
    encrypted: bool = False          # some value of some key is encrypted


def _hmac_hash(algorithm: str) -> str | None:
    """``…#hmac-sha256`` → ``"sha256"`` (a hashlib name), None when unknown."""
    match = re.search(r"hmac-([a-z0-9-]+)$", algorithm.lower())
    name = match.group(1).replace("-", "") if match else ""
    return name if name in hashlib.algorithms_available else None


def _pskc_token(key: Any, serial: str, values: dict[str, Any]) -> Token | str:
    """The token of one checked, decrypted PSKC key, or what is wrong with it."""
    uri = key.algorithm
    if not uri:
        return "the key names no algorithm"
    kind = re.split(r"[:#/]", uri.strip())[-1].lower()
    if kind not in ("hotp", "totp"):
        return f"unsupported algorithm {quoted(uri)}: only HOTP and TOTP tokens can be imported"
    policy = key.policy
    if policy.unknown_policy_elements:
        return "the key's policy has elements this importer does not know (RFC 6030 section 5: do not use the key)"
    if policy.key_usage and "OTP" not in policy.key_usage:
        return f"the key's policy does not allow OTP use (KeyUsage {', '.join(policy.key_usage)})"
    if policy.pin_usage in _PIN_IN_CODE:
        return f"the key's PIN policy (PINUsageMode {policy.pin_usage}) puts a PIN into the codes: not supported"
    if key.response_encoding and key.response_encoding.upper() != "DECIMAL":
        return f"the response encoding is {quoted(key.response_encoding)}: only DECIMAL codes are supported"
    if key.response_check:
        return "codes with a check digit (CheckDigits) are not supported"
    digits = key.response_length if key.response_length is not None else 6
    if not 6 <= digits <= 8:
        return f"the response length is {digits}: 6, 7 or 8 digits are supported"
    algorithm = _hash_name(key.algorithm_suite)
    if algorithm is None:
        return f"unsupported hash {quoted(key.algorithm_suite)}: HMAC-SHA1, HMAC-SHA256 or HMAC-SHA512"
    secret = values["secret"]
    if not secret:
        return "the key has no secret"
    if problem := _secret_problem(secret):
        return problem
    common = dict(serial=serial, secret=encode_base32(secret), digits=digits, algorithm=algorithm,
                  hardware=True)
    if kind == "hotp":
        counter = values["counter"] or 0
        if not 0 <= counter < MAX_COUNTER:
            return f"the counter {counter} is out of range"
        return Token(type="hotp", counter=counter, **common)
    period = values["time_interval"] if values["time_interval"] is not None else 30
    if not 1 <= period <= MAX_PERIOD:
        return f"the time interval is {period}: 1 to {MAX_PERIOD} seconds are supported"
    if values["time_offset"]:
        return (f"the Time element is {values['time_offset']}: only tokens counting from the Unix epoch "
                "(Time 0 or absent) are supported")
    drift = values["time_drift"] or 0
    if abs(drift) >= MAX_COUNTER:
        return f"the time drift {drift} is out of range"
    return Token(type="totp", period=period, drift=drift, **common)


def _hash_name(suite: str | None) -> str | None:
    """``HMAC-SHA256`` (and ``SHA256``, ``hmac-sha-256``…) → ``sha256``."""
    if suite is None:
        return "sha1"
    name = re.sub(r"[-_\s]", "", suite).lower().removeprefix("hmac")
    return name if name in ALGORITHMS else None


def _how_encrypted(encryption: Any) -> tuple[str, str]:
    """How the file is encrypted, in words, and the option that unlocks it."""
    names = ", ".join(quoted(name) for name in encryption.key_names)
    derivation = encryption.derivation.algorithm
    if derivation is not None:
        method = "PBKDF2" if derivation.endswith("pbkdf2") else derivation
        named = f", MasterKeyName {names}" if names else ""
        return f"a key derived from a password ({method}{named})", "--password-stdin"
    named = f" (KeyName {names})" if names else ""
    return f"a pre-shared key{named}", "--key HEX"


def _needs_mac(algorithm: str | None) -> bool:
    """CBC modes have no integrity check of their own; key-wrap modes do."""
    return bool(algorithm) and algorithm.lower().endswith("-cbc")


def _short(uri: str) -> str:
    return uri.rsplit("#", 1)[-1]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _strip_namespaces(element: ElementTree.Element) -> None:
    """``{urn:…:pskc}Key`` → ``Key`` in a subtree, as python-pskc's parser
    expects (its own helper does the same with a regular expression, slower)."""
    for node in element.iter():
        if node.tag[:1] == "{":
            node.tag = node.tag.split("}", 1)[1]


def _printable(text: str) -> str:
    """*text* (which may quote the file) with anything unprintable escaped."""
    return text if text.isprintable() else repr(text)[1:-1]


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _file_size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None
