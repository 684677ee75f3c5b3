"""The `radius-mfa` command line: argument parsing and the admin commands.

No business logic lives here: each command reads the configuration, opens the
store, calls one or two store methods and formats the answer. Exit codes are
those of docs/reference.md: 0 done; 1 refused or not found (one line on stderr);
2 bad usage (argparse's own) or bad configuration (every problem line on
stderr). Expected errors never produce a traceback.

Personal data in output: tables and detail views show phone numbers and mail
addresses masked, as everywhere else in the product. ``--json`` output shows
them in full: it is what scripts ask for when they need the data back (the
administrator typed it in), and JSON is never a log. Password hashes and
token secrets are never shown, except the one secret ``token add`` prints at
enrolment, which is the point of that command.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import io
import json
import os
import secrets
import sys
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence, TextIO

from radius_mfa.errors import (
    AlreadyExistsError,
    ConfigError,
    NotFoundError,
    RadiusMfaError,
    RefusedError,
    StoreError,
    UsageError,
)
from radius_mfa import audit, version
from radius_mfa.masking import mask_email, mask_phone
from radius_mfa.model import ClientSeen, Token, User
from radius_mfa.otp import WARN_SECRET_BITS, provisioning_uri
from radius_mfa.validate import (
    encode_base32,
    normalize_base32_secret,
    quoted,
    validate_display_name,
    validate_email,
    validate_phone,
    validate_user_name,
)

if TYPE_CHECKING:
    from radius_mfa.config import Config
    from radius_mfa.store.base import Store

PROG = "radius-mfa"
DEFAULT_CONFIG = "/etc/radius-mfa/radius-mfa.yaml"
CONFIG_ENV = "RADIUS_MFA_CONFIG"

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Secret sizes follow RFC 4226/6238: as long as the HMAC's output.
SECRET_BYTES = {"sha1": 20, "sha256": 32, "sha512": 64}
SERIAL_ATTEMPTS = 10

# Columns of `report auth --csv`, in docs/reference.md's order; other keys follow, sorted.
AUDIT_COLUMNS = (
    "time", "server", "server_ip", "client", "client_ip", "user_ip", "user",
    "display_name", "email", "phone", "device", "primary", "factor", "result",
    "reason", "duration_ms", "request_id",
)



# --------------------------------------------------------------------------
# The run context: configuration and store, opened on first use
# --------------------------------------------------------------------------


@dataclass
class Context:
    """What a command handler gets: its arguments' config path and the
    streams, with the config and the store loaded lazily so that `--help`
    and bad usage never touch either."""

    config_path: str
    stdin: TextIO
    stdout: TextIO
    stderr: TextIO
    now: Callable[[], float] = time.time
    _config: "Config | None" = field(default=None, repr=False)
    _store: "Store | None" = field(default=None, repr=False)

    def config(self) -> "Config":
        """The loaded Config; ConfigError (exit 2) when the file is wrong."""
        if self._config is None:
            from radius_mfa.config import load_config

            try:
                self._config = load_config(self.config_path)
            except OSError as exc:
                # A missing or unreadable file is a bad configuration, not a refusal.
                raise ConfigError([f"{self.config_path}: cannot read: {exc.strerror or exc}"]) from None
        return self._config

    def store_for(self, name: str) -> "tuple[Store, User]":
        """The store and the user ``name`` in it (NotFoundError: exit 1)."""
        store = self.store()
        return store, require_user(store, name)

    def store(self) -> "Store":
        """The store named by the config, opened once and closed by main()."""
        if self._store is None:
            from radius_mfa.store import open_store

            self._store = open_store(self.config().store, self.config().store_key_file)
            from radius_mfa.usernames import canonicalise_store

            canonicalise_store(self._store, self.config().policy.username)
        return self._store

    def name(self, typed: str) -> str:
        """A user name as the store keeps it (policy.username)."""
        from radius_mfa.usernames import canonical

        return canonical(typed, self.config().policy.username)

    def close(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            store.close()

    def out(self, line: str = "") -> None:
        print(line, file=self.stdout)

    def warn(self, message: str) -> None:
        print(f"{PROG}: warning: {message}", file=self.stderr)

    def warn_line(self, line: str) -> None:
        """A line of a list of problems on stderr (a file's bad rows)."""
        print(line, file=self.stderr)

    def json(self, obj: Any) -> None:
        json.dump(obj, self.stdout, indent=2, ensure_ascii=False)
        self.stdout.write("\n")


# --------------------------------------------------------------------------
# Small formatting helpers
# --------------------------------------------------------------------------


def iso_time(ts: float | None) -> str | None:
    """Epoch seconds → ``2024-05-01T12:00:00Z`` (UTC, whole seconds), None stays None."""
    return audit.iso_time(ts, timespec="seconds")


def printable(value: Any) -> str:
    """A table cell: None as ``-``; control characters escaped, so that a
    name imported from elsewhere cannot rewrite the administrator's terminal."""
    if value is None:
        return "-"
    text = str(value)
    if any(unicodedata.category(ch)[0] == "C" for ch in text):
        text = text.encode("unicode_escape").decode("ascii")
    return text


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces, no trailing blanks."""
    cells = [list(headers)] + [[printable(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def is_locked(user: User, now: float) -> bool:
    return user.locked_until is not None and user.locked_until > now


def user_status(user: User, now: float) -> str:
    states = []
    if user.disabled:
        states.append("disabled")
    if is_locked(user, now):
        states.append(f"locked until {iso_time(user.locked_until)}")
    return ", ".join(states) or "active"


# --------------------------------------------------------------------------
# Input validation (argparse `type=` functions raise ArgumentTypeError → exit 2;
# the value checks of docs/reference.md's "refused" kind raise RefusedError → exit 1)
# --------------------------------------------------------------------------


def _positive_period(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid period: {text!r}") from None
    if not 1 <= value <= 3600:
        raise argparse.ArgumentTypeError("period must be 1 to 3600 seconds")
    return value


def _check_timeout(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0.1 <= seconds <= 300:
        raise argparse.ArgumentTypeError("timeout must be 0.1 to 300 seconds")
    return seconds


def _iso_since(text: str) -> float:
    """``--since``: an ISO 8601 date or time; without a zone it means UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


# --------------------------------------------------------------------------
# Store look-ups that turn "absent" into a clear refusal
# --------------------------------------------------------------------------


def require_user(store: "Store", name: str) -> User:
    user = store.get_user(name)
    if user is None:
        raise NotFoundError(f"user {quoted(name)} not found")
    return user


def require_token(store: "Store", serial: str) -> Token:
    token = store.get_token(serial)
    if token is None:
        raise NotFoundError(f"token {quoted(serial)} not found")
    return token


# --------------------------------------------------------------------------
# serve, check-config
# --------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, ctx: Context) -> int:
    """Imported lazily: only `serve` pulls in Twisted's reactor."""
    config = ctx.config()
    from radius_mfa import service

    return int(service.run(config, debug=args.debug))


def cmd_check_config(args: argparse.Namespace, ctx: Context) -> int:
    """Exit 0, or 2 with every problem (main prints them); warnings go to
    stderr as ``FILE:LINE: key.path: warning: message`` and leave the exit
    code alone. Then what the machine says (radius_mfa.validate.check_machine):
    no clients, an unreadable store key, an unreachable store or a listen
    address that cannot be bound are errors; an address in use is a warning."""
    from radius_mfa.validate import check_machine

    config = ctx.config()
    machine = check_machine(config, ctx.config_path)
    for warning in (*config.warnings, *machine.warnings):
        print(warning, file=ctx.stderr)
    if machine.problems:
        raise ConfigError(machine.problems)
    ctx.out(f"{ctx.config_path}: OK")
    return EXIT_OK


def cmd_check_connectivity(args: argparse.Namespace, ctx: Context) -> int:
    """One line per upstream (radius_mfa.connectivity); exit 0 when all answer, else 1."""
    from radius_mfa import connectivity

    outcomes = connectivity.run_checks(connectivity.checks_for(ctx.config()), args.timeout)
    for outcome in outcomes:
        ctx.out(outcome.line())
    return EXIT_OK if all(outcome.ok for outcome in outcomes) else EXIT_REFUSED


# --------------------------------------------------------------------------
# user …
# --------------------------------------------------------------------------


def read_password(ctx: Context) -> str:
    """One line from stdin, the trailing newline removed and nothing else.

    On a terminal the line is read without echo. The password is never
    printed, logged or put into an error message.
    """
    if ctx.stdin.isatty():
        line = getpass.getpass("Password: ", stream=ctx.stderr)
    else:
        line = ctx.stdin.readline()
        if line.endswith("\n"):
            line = line[:-1]
            if line.endswith("\r"):
                line = line[:-1]
    if not line:
        raise RefusedError("empty password refused")
    return line


def cmd_user_add(args: argparse.Namespace, ctx: Context) -> int:
    name = validate_user_name(args.name)
    display_name = validate_display_name(args.display_name) if args.display_name is not None else None
    email = validate_email(args.email) if args.email is not None else None
    phone = validate_phone(args.phone) if args.phone is not None else None
    password_hash = None
    if args.password_stdin:
        from radius_mfa.passwords import hash_password

        password_hash = hash_password(read_password(ctx), ctx.config().passwords)
    store = ctx.store()
    if store.get_user(name) is not None:
        raise AlreadyExistsError(f"user {quoted(name)} exists already")
    store.add_user(
        User(
            name=name,
            display_name=display_name,
            email=email,
            phone=phone,
            password_hash=password_hash,
            created=ctx.now(),
        )
    )
    ctx.out(f"user {quoted(name)} added")
    return EXIT_OK


def cmd_user_import(args: argparse.Namespace, ctx: Context) -> int:
    from radius_mfa.userimport import ImportFailed, import_users

    store = ctx.store()
    try:
        summary = import_users(store, args.file, progress=ctx.stderr, issuer=ctx.config().server.name,
                               passwords_config=ctx.config().passwords, canonical=ctx.name)
    except ImportFailed as exc:
        raise _import_failed(ctx, exc, args.file) from None
    ctx.out(f"imported {summary.users} user{'s' if summary.users != 1 else ''} from {args.file} "
            f"({summary.passwords} with a password, {summary.tokens} with a TOTP token) "
            f"in {summary.seconds:.1f} s")
    return EXIT_OK


def _user_json(user: User, tokens: list[Token], now: float) -> dict:
    """Everything about a user a script may need; never the password hash."""
    return {
        "name": user.name,
        "display_name": user.display_name,
        "email": user.email,
        "phone": user.phone,
        "has_password": user.password_hash is not None,
        "disabled": user.disabled,
        "locked": is_locked(user, now),
        "locked_until": iso_time(user.locked_until) if is_locked(user, now) else None,
        "failures": user.failures,
        "created": iso_time(user.created) if user.created else None,
        "tokens": [t.public() for t in tokens],
    }


def cmd_user_list(args: argparse.Namespace, ctx: Context) -> int:
    store = ctx.store()
    users = store.list_users()
    tokens_by_user: dict[str, list[Token]] = {}
    for token in store.list_tokens():
        if token.user is not None:
            tokens_by_user.setdefault(token.user, []).append(token)
    now = ctx.now()
    if args.json:
        ctx.json([_user_json(u, tokens_by_user.get(u.name, []), now) for u in users])
        return EXIT_OK
    rows = [
        (u.name, u.display_name, len(tokens_by_user.get(u.name, [])), user_status(u, now))
        for u in users
    ]
    ctx.out(format_table(("NAME", "DISPLAY NAME", "TOKENS", "STATUS"), rows))
    return EXIT_OK


def cmd_user_show(args: argparse.Namespace, ctx: Context) -> int:
    store, user = ctx.store_for(args.name)
    tokens = store.list_tokens(user.name)
    now = ctx.now()
    if args.json:
        ctx.json(_user_json(user, tokens, now))
        return EXIT_OK
    details = [
        ("name", user.name),
        ("display name", user.display_name),
        ("email", mask_email(user.email)),
        ("phone", mask_phone(user.phone)),
        ("password", "set" if user.password_hash is not None else "not set"),
        ("status", user_status(user, now)),
        ("failures", user.failures),
        ("created", iso_time(user.created) if user.created else None),
        ("tokens", len(tokens)),
    ]
    width = max(len(k) for k, _ in details)
    for key, value in details:
        ctx.out(f"{key + ':':<{width + 1}} {printable(value)}")
    for token in tokens:
        ctx.out(f"  {printable(token.serial)}  {token.type}")
    return EXIT_OK


def cmd_user_remove(args: argparse.Namespace, ctx: Context) -> int:
    store, _ = ctx.store_for(args.name)
    store.remove_user(args.name)
    ctx.out(f"user {quoted(args.name)} removed")
    return EXIT_OK


def cmd_user_reset(args: argparse.Namespace, ctx: Context) -> int:
    store, _ = ctx.store_for(args.name)
    removed = store.reset_user(args.name)
    ctx.out(f"user {quoted(args.name)} reset: {removed} factor(s) removed; they must enrol again")
    return EXIT_OK


def cmd_user_update(args: argparse.Namespace, ctx: Context) -> int:
    """The enrolled details: only here (or on the self-service page) does an
    enrolled phone or address change, never because a directory says so.
    An empty value ("") removes it."""
    changes: dict = {}
    for field_name, validate in (("display_name", validate_display_name), ("email", validate_email),
                                 ("phone", validate_phone)):
        value = getattr(args, field_name)
        if value is not None:
            changes[field_name] = validate(value) if value != "" else None
    if not changes:
        raise UsageError("nothing to change: give --display-name, --email or --phone")
    store, _ = ctx.store_for(args.name)
    store.update_user(args.name, **changes)
    ctx.out(f"user {quoted(args.name)} updated: {', '.join(sorted(changes))}")
    return EXIT_OK


def _set_disabled(args: argparse.Namespace, ctx: Context, disabled: bool) -> int:
    store, _ = ctx.store_for(args.name)
    store.update_user(args.name, disabled=disabled)
    ctx.out(f"user {quoted(args.name)} {'disabled' if disabled else 'enabled'}")
    return EXIT_OK


def cmd_user_disable(args: argparse.Namespace, ctx: Context) -> int:
    return _set_disabled(args, ctx, True)


def cmd_user_enable(args: argparse.Namespace, ctx: Context) -> int:
    return _set_disabled(args, ctx, False)


def cmd_user_unlock(args: argparse.Namespace, ctx: Context) -> int:
    store, _ = ctx.store_for(args.name)
    store.unlock(args.name)
    ctx.out(f"user {quoted(args.name)} unlocked")
    return EXIT_OK


def cmd_user_enrol_link(args: argparse.Namespace, ctx: Context) -> int:
    """A one-time link to the self-service page (radius_mfa.enrolment)."""
    from radius_mfa.enrolment import create_now

    portal = ctx.config().portal
    if portal is None:
        raise UsageError(f"the self-service page is not configured: add a portal section to {ctx.config_path}")
    store, user = ctx.store_for(args.name)
    url, expires = create_now(store, ctx.now, portal.public_url, user.name)
    if args.json:
        ctx.json({"url": url, "expires": iso_time(expires)})
        return EXIT_OK
    ctx.out(f"enrolment link for {quoted(user.name)}, valid once until {iso_time(expires)}:")
    ctx.out(url)
    return EXIT_OK


# --------------------------------------------------------------------------
# token …
# --------------------------------------------------------------------------


def new_serial(kind: str) -> str:
    """``TOTP1A2B3C4D``: the type, then 32 random bits in upper-case hex."""
    return kind.upper() + secrets.token_hex(4).upper()


def _store_new_token(store: "Store", kind: str, make: Callable[[str], Token]) -> Token:
    """Add a token under a fresh random serial, drawing again on the (rare)
    collision: uniqueness is the store's unique key, not a check-then-act."""
    for _ in range(SERIAL_ATTEMPTS):
        token = make(new_serial(kind))
        try:
            store.add_token(token)
        except AlreadyExistsError:
            continue
        return token
    raise StoreError("could not find a free token serial")


def cmd_token_add(args: argparse.Namespace, ctx: Context) -> int:
    if args.secret is not None:
        raw = normalize_base32_secret(args.secret)
        if len(raw) * 8 < WARN_SECRET_BITS:
            ctx.warn(f"the secret has only {len(raw) * 8} bits; {WARN_SECRET_BITS} or more are recommended")
    else:
        raw = secrets.token_bytes(SECRET_BYTES[args.algorithm])
    secret = encode_base32(raw)
    config = ctx.config()
    store, user = ctx.store_for(args.name)

    def make(serial: str) -> Token:
        return Token(
            serial=serial,
            type=args.type,
            secret=secret,
            user=user.name,
            digits=args.digits,
            period=args.period,
            algorithm=args.algorithm,
            counter=0,
            created=ctx.now(),
        )

    from radius_mfa import qr

    image = _qr_image_file(args.qr)       # before the token: a path that cannot be written changes nothing
    try:
        token = _store_new_token(store, args.type, make)
    except BaseException:
        if image is not None:
            image.discard()
        raise
    uri = provisioning_uri(token, config.server.name)
    if image is not None:
        image.write(uri)
    if args.json:
        ctx.json({"serial": token.serial, "type": token.type, "secret": secret, "uri": uri})
        return EXIT_OK
    timing = f"{token.period} s" if token.type == "totp" else "counter 0"
    ctx.out(f"token {token.serial} enrolled for {quoted(user.name)} "
            f"({token.type}, {token.digits} digits, {timing}, {token.algorithm})")
    ctx.out(f"secret (base32, for manual entry): {secret}")
    ctx.out(f"URI: {uri}")
    if image is not None:
        ctx.out(f"QR code ({image.kind}) written to {image.path}: it holds the secret, delete it once scanned")
        return EXIT_OK
    ctx.out()
    qr.write_terminal_qr(uri, ctx.stdout)
    return EXIT_OK


def _qr_image_file(option: Sequence[str] | None):
    """``--qr svg|png FILE`` opened for writing, or None without the option."""
    if option is None:
        return None
    from radius_mfa.qr import ImageFile

    kind, path = option
    try:
        return ImageFile(kind, path)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise RefusedError(f"cannot write {path}: {exc.strerror or exc}") from None


def cmd_token_list(args: argparse.Namespace, ctx: Context) -> int:
    store = ctx.store()
    if args.name is not None:
        require_user(store, args.name)
    tokens = store.list_tokens(args.name)
    if args.json:
        ctx.json([t.public() for t in tokens])
        return EXIT_OK
    rows = [
        (
            t.serial,
            t.type,
            t.user,
            t.digits,
            f"{t.period} s" if t.type == "totp" else f"counter {t.counter}",
            t.algorithm,
        )
        for t in tokens
    ]
    ctx.out(format_table(("SERIAL", "TYPE", "USER", "DIGITS", "PERIOD/COUNTER", "ALGORITHM"), rows))
    return EXIT_OK


def cmd_token_assign(args: argparse.Namespace, ctx: Context) -> int:
    store = ctx.store()
    require_token(store, args.serial)
    require_user(store, args.name)
    store.assign_token(args.serial, args.name)
    ctx.out(f"token {quoted(args.serial)} assigned to {quoted(args.name)}")
    return EXIT_OK


def _hex_key(text: str) -> bytes:
    """``--key``: an AES key of 128, 192 or 256 bits in hexadecimal."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("must be hexadecimal digits") from None
    if len(key) not in (16, 24, 32):
        raise argparse.ArgumentTypeError("must be 32, 48 or 64 hexadecimal digits (an AES-128/192/256 key)")
    return key


def _import_failed(ctx: Context, exc, file: str) -> RefusedError:
    """Every problem of a refused import on its own line, then one line that
    says nothing was imported (the exit line of every refusal)."""
    for problem in exc.problems:
        ctx.warn_line(str(problem))
    hidden = exc.total - len(exc.problems)
    if hidden > 0:
        ctx.warn_line(f"… and {hidden} more")
    count = f"{exc.total} problem{'s' if exc.total != 1 else ''}"
    return RefusedError(f"nothing imported from {file}: {count}")


def cmd_token_import(args: argparse.Namespace, ctx: Context) -> int:
    from radius_mfa.tokenimport import ImportFailed, import_tokens

    password = read_password(ctx) if args.password_stdin else None
    store = ctx.store()
    try:
        summary = import_tokens(store, args.file, format=args.format, key=args.key,
                                password=password, progress=ctx.stderr)
    except ImportFailed as exc:
        raise _import_failed(ctx, exc, args.file) from None
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(summary.by_type.items()))
    ctx.out(f"imported {summary.count} token{'s' if summary.count != 1 else ''} from {args.file} "
            f"({summary.format}{': ' + kinds if kinds else ''}) in {summary.seconds:.1f} s; "
            "unassigned until `radius-mfa token assign SERIAL NAME`")
    return EXIT_OK


def cmd_token_resync(args: argparse.Namespace, ctx: Context) -> int:
    from radius_mfa.resync import resync

    result = resync(ctx.store(), args.serial, args.code1, args.code2, ctx.now())
    if result.type == "hotp":
        ctx.out(f"token {quoted(args.serial)} resynchronised: next counter {result.counter}")
    else:
        ctx.out(f"token {quoted(args.serial)} resynchronised: its clock is {result.drift:+d} "
                f"time steps from ours")
    return EXIT_OK


def cmd_token_remove(args: argparse.Namespace, ctx: Context) -> int:
    store = ctx.store()
    require_token(store, args.serial)
    store.remove_token(args.serial)
    ctx.out(f"token {quoted(args.serial)} removed")
    return EXIT_OK


# --------------------------------------------------------------------------
# device … (push approval)
# --------------------------------------------------------------------------


def _push_config(ctx: Context):
    """factors.push, or a usage error: pairing makes no sense without it."""
    push = ctx.config().factors.push
    if push is None:
        raise UsageError(f"push is not configured: add a factors.push section to {ctx.config_path}")
    return push


def device_api_base_url(push) -> str:
    """Where paired devices reach the device API: ``public_url``, or
    ``https://<this host's FQDN>:<listen port>``."""
    if push.public_url:
        return push.public_url.rstrip("/")
    import socket

    host = socket.getfqdn()
    return f"https://{host}:{push.listen.port}"


def cmd_device_pair(args: argparse.Namespace, ctx: Context) -> int:
    from urllib.parse import urlsplit

    from radius_mfa.model import Pairing
    from radius_mfa.push import crypto

    push = _push_config(ctx)
    store, user = ctx.store_for(args.name)
    names: tuple[str, ...] = ()
    if push.public_url and urlsplit(push.public_url).hostname:
        names = (urlsplit(push.public_url).hostname,)
    try:
        crypto.ensure_certificate(push.tls_cert, push.tls_key, names)
    except OSError as exc:
        raise RefusedError(f"cannot make the device API certificate {push.tls_cert}: "
                           f"{exc.strerror or exc}") from None
    try:
        fingerprint = crypto.certificate_fingerprint(push.tls_cert)
    except OSError as exc:
        raise RefusedError(f"cannot read the device API certificate {push.tls_cert}: "
                           f"{exc.strerror or exc}") from None
    except ValueError:
        raise RefusedError(f"{push.tls_cert} is not a PEM certificate") from None
    token = crypto.new_pairing_token()
    now = ctx.now()
    expires = now + push.pairing_ttl
    image = _qr_image_file(args.qr)       # before the pairing: a path that cannot be written changes nothing
    try:
        store.add_pairing(Pairing(token_digest=crypto.token_digest(token), user=user.name,
                                  created=now, expires=expires))
    except BaseException:
        if image is not None:
            image.discard()
        raise
    url = crypto.pairing_url(device_api_base_url(push), token, fingerprint)
    if image is not None:
        image.write(url)
    if args.json:
        ctx.json({"url": url, "expires": iso_time(expires)})
        return EXIT_OK
    ctx.out(f"pairing link for {quoted(user.name)}, valid once until {iso_time(expires)}:")
    ctx.out(url)
    if image is not None:
        ctx.out(f"QR code ({image.kind}) written to {image.path}: it holds the one-time link, delete it once scanned")
        return EXIT_OK
    ctx.out()
    from radius_mfa.qr import write_terminal_qr

    write_terminal_qr(url, ctx.stdout)
    ctx.out("Scan it with the authenticator app, or run: radius-mfa-authenticator pair 'URL'")
    return EXIT_OK


def cmd_app_password_create(args: argparse.Namespace, ctx: Context) -> int:
    """A new app password, printed once; the store keeps only its hash."""
    from radius_mfa.verifiers.app_password import new_record

    label = validate_display_name(args.label) if args.label is not None else None
    store, _ = ctx.store_for(args.name)
    record, password = new_record(args.name, label, ctx.config().passwords, ctx.now())
    store.add_app_password(record)
    if args.json:
        ctx.json({"id": record.id, "label": record.label, "password": password,
                  "created": iso_time(record.created)})
        return EXIT_OK
    ctx.out(f"app password {record.id} for {quoted(args.name)}"
            f"{f' ({label})' if label else ''}, shown this once:")
    ctx.out(f"  {password}")
    ctx.out("It stands in for the password and the second factor: type it alone, in place of both.")
    return EXIT_OK


def _app_password_entry(record) -> dict:
    return {"id": record.id, "label": record.label, "created": iso_time(record.created),
            "last_used": iso_time(record.last_used)}


def cmd_app_password_list(args: argparse.Namespace, ctx: Context) -> int:
    store, _ = ctx.store_for(args.name)
    entries = [_app_password_entry(r) for r in store.list_app_passwords(args.name)]
    if args.json:
        ctx.json(entries)
        return EXIT_OK
    ctx.out(format_table(("ID", "LABEL", "CREATED", "LAST USED"),
                         [(e["id"], e["label"], e["created"], e["last_used"]) for e in entries]))
    return EXIT_OK


def cmd_app_password_delete(args: argparse.Namespace, ctx: Context) -> int:
    store, _ = ctx.store_for(args.name)
    store.delete_app_password(args.name, args.id)
    ctx.out(f"app password {args.id} of {quoted(args.name)} deleted")
    return EXIT_OK


def cmd_app_password_delete_all(args: argparse.Namespace, ctx: Context) -> int:
    store, _ = ctx.store_for(args.name)
    count = store.delete_app_passwords(args.name)
    ctx.out(f"{count} app password(s) of {quoted(args.name)} deleted")
    return EXIT_OK


def cmd_device_list(args: argparse.Namespace, ctx: Context) -> int:
    store = ctx.store()
    if args.name is not None:
        require_user(store, args.name)
    devices = store.list_devices(args.name)
    if args.json:
        ctx.json([d.public() for d in devices])
        return EXIT_OK
    rows = [(d.id, d.user, d.name, iso_time(d.created) if d.created else None, iso_time(d.last_seen))
            for d in devices]
    ctx.out(format_table(("ID", "USER", "NAME", "CREATED", "LAST SEEN"), rows))
    return EXIT_OK


def cmd_device_remove(args: argparse.Namespace, ctx: Context) -> int:
    store, _ = ctx.store_for(args.name)
    try:
        store.remove_device(args.name, args.device_id)
    except NotFoundError:
        raise NotFoundError(f"no such device: {quoted(args.name)} has no device "
                            f"{quoted(args.device_id)}") from None
    ctx.out(f"device {quoted(args.device_id)} of {quoted(args.name)} removed")
    return EXIT_OK


# --------------------------------------------------------------------------
# report …
# --------------------------------------------------------------------------


def message_authenticator_seen(seen: ClientSeen | None) -> str:
    """``yes`` / ``no`` / ``mixed`` / ``unknown``: what the client has sent so far."""
    if seen is None:
        return "unknown"
    with_ma = seen.last_with_message_authenticator is not None
    without_ma = seen.last_without_message_authenticator is not None
    if with_ma and without_ma:
        return "mixed"
    if with_ma:
        return "yes"
    if without_ma:
        return "no"
    return "unknown"


def _client_address(network) -> str:
    """A single-host network shows as the plain address."""
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


def cmd_report_clients(args: argparse.Namespace, ctx: Context) -> int:
    config = ctx.config()
    seen_by_name = {s.name: s for s in ctx.store().list_clients_seen()}
    entries = []
    for client in config.clients:
        seen = seen_by_name.get(client.name)
        required, since = _requirement_in_force(client, seen)
        drops = dict(seen.drops) if seen else {}
        entries.append({
            "name": client.name,
            "address": _client_address(client.network),
            "transport": client.transport,
            "requests": seen.requests if seen else 0,
            "last_seen": iso_time(seen.last_seen) if seen else None,
            "sends_message_authenticator": message_authenticator_seen(seen),
            "last_with_message_authenticator": iso_time(seen.last_with_message_authenticator) if seen else None,
            "last_without_message_authenticator": iso_time(seen.last_without_message_authenticator) if seen else None,
            "require_message_authenticator": client.require_message_authenticator.value,
            "requires_message_authenticator_now": required,
            "required_since": iso_time(since),
            "dropped": drops,
            "last_dropped": iso_time(seen.last_drop) if seen else None,
        })
    if args.json:
        ctx.json(entries)
        return EXIT_OK
    rows = [
        (e["name"], e["address"], e["transport"], e["requests"], e["last_seen"],
         e["sends_message_authenticator"], _requirement_text(e),
         ", ".join(f"{reason} {n}" for reason, n in sorted(e["dropped"].items())) or "0")
        for e in entries
    ]
    ctx.out(format_table(("NAME", "ADDRESS", "TRANSPORT", "REQUESTS", "LAST SEEN", "SENDS MSG-AUTH",
                          "REQUIRES MSG-AUTH", "DROPPED"), rows))
    return EXIT_OK


def _requirement_in_force(client, seen) -> tuple[bool, float | None]:
    """Whether a request without Message-Authenticator is dropped now, and
    since when where ``auto`` switched it on (the first one seen)."""
    from radius_mfa.config import RequireMA

    policy = client.require_message_authenticator
    if policy is RequireMA.AUTO:
        first = seen.first_with_message_authenticator if seen else None
        if first is None and seen is not None and seen.last_with_message_authenticator is not None:
            first = seen.last_with_message_authenticator     # seen before first times were kept
        return first is not None, first
    return policy is RequireMA.TRUE, None


def _requirement_text(entry: dict) -> str:
    if entry["require_message_authenticator"] != "auto":
        return entry["require_message_authenticator"]
    if entry["requires_message_authenticator_now"]:
        return f"auto: yes since {entry['required_since']}"
    return "auto: not yet"


def cmd_report_auth(args: argparse.Namespace, ctx: Context) -> int:
    if args.follow:
        return _follow_auth(args, ctx)
    if args.limit is not None:
        records = [record for _, record in ctx.store().auth_log(since=args.since, user=args.user, limit=args.limit)]
    else:
        records = ctx.store().auth_records(since=args.since, user=args.user)
    if args.json:
        ctx.json([r.fields for r in records])
        return EXIT_OK
    if args.csv:
        extra = sorted({k for r in records for k in r.fields} - set(AUDIT_COLUMNS))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=[*AUDIT_COLUMNS, *extra], extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for record in records:
            writer.writerow({k: _csv_value(v) for k, v in record.fields.items()})
        ctx.stdout.write(buffer.getvalue())
        return EXIT_OK
    rows = [
        (iso_time(r.time), r.fields.get("user"), r.fields.get("client"), r.fields.get("factor"),
         r.fields.get("result"), r.fields.get("reason"))
        for r in records
    ]
    ctx.out(format_table(("TIME", "USER", "CLIENT", "FACTOR", "RESULT", "REASON"), rows))
    return EXIT_OK


def _csv_value(value: Any) -> Any:
    """Nested values (lists, dicts) as JSON inside the cell; None as empty."""
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return value


# `report auth --follow`: how often the store is asked, and how long a row
# id is remembered before every lower id counts as written (rows of two
# servers' transactions may become visible out of id order, never this late).
FOLLOW_POLL_SECONDS = 1.0
FOLLOW_SETTLE_SECONDS = 5.0
# Fixed widths of the table that --follow prints as rows come.
_FOLLOW_WIDTHS = (20, 16, 12, 12, 9)


def _follow_auth(args: argparse.Namespace, ctx: Context) -> int:
    """Print the matching records (the newest ``--limit``), then every new
    one, polling the store each second, until SIGINT or SIGTERM: exit 0.
    ``--json`` prints one object per line (JSON Lines), ``--csv`` the header
    once; the table has fixed widths, printed as rows come."""
    import signal

    store = ctx.store()
    stop: list[int] = []

    def stopped(signum, frame) -> None:
        stop.append(signum)

    previous = {sig: signal.signal(sig, stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        floor = store.auth_log_last_id()      # rows up to it: shown now (the newest --limit) or never
        found = store.auth_log(since=args.since, user=args.user, limit=args.limit)
        write = _follow_writer(args, ctx, [record for _, record in found])
        for _, record in found:
            write(record)
        ctx.stdout.flush()
        # ids above the floor printed already, and when
        seen: dict[int, float] = {row_id: time.monotonic() for row_id, _ in found if row_id > floor}
        while not stop:
            deadline = time.monotonic() + FOLLOW_POLL_SECONDS
            while not stop and time.monotonic() < deadline:
                time.sleep(0.05)
            if stop:
                break
            now = time.monotonic()
            for row_id, record in store.auth_log(since=args.since, user=args.user, after_id=floor):
                if row_id not in seen:
                    seen[row_id] = now
                    write(record)
            ctx.stdout.flush()
            settled = [row_id for row_id, when in seen.items() if now - when >= FOLLOW_SETTLE_SECONDS]
            if settled:
                floor = max(floor, *settled)
                seen = {row_id: when for row_id, when in seen.items() if row_id > floor}
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_OK


def _follow_writer(args: argparse.Namespace, ctx: Context, first: list) -> Callable[[Any], None]:
    """A function printing one record in the format asked for (the header,
    if any, printed now)."""
    if args.json:
        def write_json(record) -> None:
            ctx.stdout.write(json.dumps(record.fields, ensure_ascii=False) + "\n")
        return write_json
    if args.csv:
        extra = sorted({k for r in first for k in r.fields} - set(AUDIT_COLUMNS))
        writer = csv.DictWriter(ctx.stdout, fieldnames=[*AUDIT_COLUMNS, *extra], extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        return lambda record: writer.writerow({k: _csv_value(v) for k, v in record.fields.items()})

    def line(cells: Sequence[Any]) -> str:
        texts = [printable(cell) for cell in cells]
        return "  ".join([*(t.ljust(w) for t, w in zip(texts, _FOLLOW_WIDTHS)), texts[-1]]).rstrip()

    ctx.out(line(("TIME", "USER", "CLIENT", "FACTOR", "RESULT", "REASON")))
    return lambda r: ctx.out(line((iso_time(r.time), r.fields.get("user"), r.fields.get("client"),
                                   r.fields.get("factor"), r.fields.get("result"), r.fields.get("reason"))))


def cmd_report_usage(args: argparse.Namespace, ctx: Context) -> int:
    """The month's billing figures (radius_mfa.usage says what each counts)."""
    from radius_mfa import usage

    month = args.month.strip()
    start, end = usage.month_bounds(month)       # a bad month: exit 2 before the config is read
    counts = ctx.store().usage_counts(start, end, usage.enrolment_kinds(ctx.config()))
    report = usage.usage_report(month, counts)
    if args.json:
        ctx.json(report)
    else:
        for text in usage.usage_lines(report):
            ctx.out(text)
    return EXIT_OK


def _positive_limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("--limit must be at least 1")
    return value


# --------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------


def _config_option() -> argparse.ArgumentParser:
    """`-c/--config`, shared by every parser level. SUPPRESS as the default
    keeps a value given before the command words from being overwritten by a
    subparser that did not see one; main() resolves the fallbacks."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-c", "--config", metavar="FILE", default=argparse.SUPPRESS,
        help=f"configuration file (default: ${CONFIG_ENV}, then {DEFAULT_CONFIG})",
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    common = _config_option()
    parser = argparse.ArgumentParser(
        prog=PROG, parents=[common],
        description="A RADIUS server that adds multi-factor authentication, and its admin commands.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(group, name: str, handler, help: str) -> argparse.ArgumentParser:
        sub = group.add_parser(name, parents=[common], help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    def add_group(name: str, help: str):
        sub = commands.add_parser(name, parents=[common], help=help, description=help)
        return sub.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)

    p = add(commands, "serve", cmd_serve, "run the server in the foreground")
    p.add_argument("--debug", action="store_true",
                   help="also print each request's steps to stderr, for a person (never a secret)")
    add(commands, "check-config", cmd_check_config, "validate the configuration file")
    p = add(commands, "check-connectivity", cmd_check_connectivity,
            "contact every upstream server the configuration names, signing nobody in")
    p.add_argument("--timeout", metavar="SECONDS", type=_check_timeout, default=10.0,
                   help="seconds each check may take (default: 10)")

    users = add_group("user", "manage users")
    p = add(users, "add", cmd_user_add, "create a user")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--display-name", metavar="X")
    p.add_argument("--email", metavar="X")
    p.add_argument("--phone", metavar="+E164")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the local password from one line of standard input")
    p = add(users, "update", cmd_user_update,
            "change a user's display name, email or phone (\"\" removes one)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--display-name", metavar="X")
    p.add_argument("--email", metavar="X")
    p.add_argument("--phone", metavar="+E164")
    p = add(users, "import", cmd_user_import, "create users in bulk from a CSV file (all or nothing)")
    p.add_argument("file", metavar="FILE",
                   help="CSV with a header row: name, display_name, email, phone, password, totp_secret")
    p = add(users, "list", cmd_user_list, "list users")
    p.add_argument("--json", action="store_true")
    p = add(users, "show", cmd_user_show, "show one user")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true")
    for name, handler, help in (
        ("remove", cmd_user_remove, "delete a user and their tokens"),
        ("reset", cmd_user_reset, "remove every factor of a user: they must enrol again"),
        ("disable", cmd_user_disable, "refuse every sign-in of a user"),
        ("enable", cmd_user_enable, "allow a disabled user again"),
        ("unlock", cmd_user_unlock, "lift a lockout after too many bad answers"),
    ):
        add(users, name, handler, help).add_argument("name", metavar="NAME")
    p = add(users, "enrol-link", cmd_user_enrol_link,
            "a one-time link to the self-service page for a user (valid 15 minutes)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true")

    tokens = add_group("token", "manage OTP tokens")
    p = add(tokens, "add", cmd_token_add, "enrol a software token for a user")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--type", required=True, choices=("totp", "hotp"))
    p.add_argument("--secret", metavar="BASE32", help="the shared secret; generated when absent")
    p.add_argument("--digits", type=int, choices=(6, 8), default=6)
    p.add_argument("--period", type=_positive_period, default=30, help="TOTP time step in seconds")
    p.add_argument("--algorithm", choices=tuple(SECRET_BYTES), default="sha1")
    p.add_argument("--json", action="store_true", help='print {"serial", "type", "secret", "uri"} only')
    p.add_argument("--qr", nargs=2, metavar=("svg|png", "FILE"),
                   help="write the QR code to FILE as an image instead of drawing it in the terminal")
    p = add(tokens, "list", cmd_token_list, "list tokens, all or one user's")
    p.add_argument("name", metavar="NAME", nargs="?")
    p.add_argument("--json", action="store_true")
    p = add(tokens, "assign", cmd_token_assign, "assign a token to a user")
    p.add_argument("serial", metavar="SERIAL")
    p.add_argument("name", metavar="NAME")
    p = add(tokens, "import", cmd_token_import, "import hardware tokens, unassigned (all or nothing)")
    p.add_argument("file", metavar="FILE", help="PSKC (RFC 6030) or CSV: serial,secret_base32[,period[,digits[,algorithm]]]")
    p.add_argument("--format", choices=("pskc", "csv"), help="default: recognised from the content")
    secret_source = p.add_mutually_exclusive_group()
    secret_source.add_argument("--key", metavar="HEX", type=_hex_key,
                               help="the pre-shared AES key that encrypts the PSKC file")
    secret_source.add_argument("--password-stdin", action="store_true",
                               help="read the PSKC file's password (PBKDF2) from one line of standard input")
    p = add(tokens, "resync", cmd_token_resync,
            "resynchronise a hardware token from two consecutive codes")
    p.add_argument("serial", metavar="SERIAL")
    p.add_argument("code1", metavar="CODE1")
    p.add_argument("code2", metavar="CODE2")
    p = add(tokens, "remove", cmd_token_remove, "delete a token")
    p.add_argument("serial", metavar="SERIAL")

    apps = add_group("app-password", "manage app passwords (password and factor in one, for clients without MFA)")
    p = add(apps, "create", cmd_app_password_create, "make an app password for a user, shown once")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--label", metavar="X", help="what it is for (a mail client, a laptop)")
    p.add_argument("--json", action="store_true", help='print {"id", "label", "password", "created"} only')
    p = add(apps, "list", cmd_app_password_list, "list a user's app passwords (never the passwords)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true")
    p = add(apps, "delete", cmd_app_password_delete, "delete one app password of a user")
    p.add_argument("name", metavar="NAME")
    p.add_argument("id", metavar="ID")
    p = add(apps, "delete-all", cmd_app_password_delete_all,
            "delete every app password of a user (a lost phone or laptop)")
    p.add_argument("name", metavar="NAME")

    devices = add_group("device", "manage push devices")
    p = add(devices, "pair", cmd_device_pair,
            "start pairing a push device: a one-time pairing link and its QR code")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true", help='print {"url", "expires"} only')
    p.add_argument("--qr", nargs=2, metavar=("svg|png", "FILE"),
                   help="write the QR code to FILE as an image instead of drawing it in the terminal")
    p = add(devices, "list", cmd_device_list, "list paired devices, all or one user's")
    p.add_argument("name", metavar="NAME", nargs="?")
    p.add_argument("--json", action="store_true")
    p = add(devices, "remove", cmd_device_remove, "unpair a device of a user")
    p.add_argument("name", metavar="NAME")
    p.add_argument("device_id", metavar="DEVICE_ID")

    reports = add_group("report", "reports from the store")
    p = add(reports, "clients", cmd_report_clients, "configured clients and what they sent")
    p.add_argument("--json", action="store_true")
    p = add(reports, "auth", cmd_report_auth, "the authentication log")
    p.add_argument("--since", metavar="ISO8601", type=_iso_since,
                   help="only records from this time on (UTC when no zone is given)")
    p.add_argument("--user", metavar="NAME")
    p.add_argument("--limit", metavar="N", type=_positive_limit,
                   help="only the newest N records (printed oldest first)")
    p.add_argument("--follow", action="store_true",
                   help="then print new records as they come, until interrupted (--json: one object a line)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")
    p = add(reports, "usage", cmd_report_usage,
            "a month's figures for billing: users configured, users who completed MFA, authentications")
    p.add_argument("--month", metavar="YYYY-MM", required=True, help="the month, in UTC")
    p.add_argument("--json", action="store_true")
    return parser


def resolve_config_path(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    """`-c` wherever it was given, else the environment, else the packaged default."""
    return getattr(args, "config", None) or environ.get(CONFIG_ENV) or DEFAULT_CONFIG


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


def _fail(stream: TextIO, message: str) -> None:
    print(f"{PROG}: {message}", file=stream)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run one command, map expected errors to exit codes."""
    stdout, stderr = sys.stdout, sys.stderr
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:          # --help (0) or bad usage (2), already printed
        if exc.code is None:
            return EXIT_OK
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    ctx = Context(config_path=resolve_config_path(args, os.environ),
                  stdin=sys.stdin, stdout=stdout, stderr=stderr)
    try:
        for attribute in ("name", "user"):
            # every NAME (and report auth --user) in the form the store keeps
            if isinstance(getattr(args, attribute, None), str):
                setattr(args, attribute, ctx.name(getattr(args, attribute)))
        return args.handler(args, ctx)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=stderr)
        return EXIT_USAGE
    except UsageError as exc:
        _fail(stderr, str(exc))
        return EXIT_USAGE
    except (RefusedError, StoreError) as exc:
        _fail(stderr, str(exc) or type(exc).__name__)
        return EXIT_REFUSED
    except RadiusMfaError as exc:
        _fail(stderr, str(exc) or type(exc).__name__)
        return EXIT_REFUSED
    except BrokenPipeError:
        # `radius-mfa user list | head`: the reader left; say nothing more.
        _silence_stdout()
        return EXIT_REFUSED
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        _fail(stderr, f"{where}{exc.strerror or exc}")
        return EXIT_REFUSED
    finally:
        try:
            ctx.close()
        except (RadiusMfaError, OSError) as exc:
            _fail(stderr, f"closing the store: {exc}")


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush of a
    broken pipe does not print a second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass


if __name__ == "__main__":
    sys.exit(main())
