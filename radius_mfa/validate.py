"""Checks of what administrators type or import: names, phone numbers, mail
addresses, base32 secrets. Shared by the commands and the bulk importers; each
raises RefusedError with one line that says what is wrong (never the secret).

:func:`check_machine` is check-config's second half: what the machine says
about a configuration that parsed (clients, store key, store, listen
addresses), found without changing anything.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import re
import socket
import unicodedata
from dataclasses import dataclass, field

import yaml

from radius_mfa.errors import RefusedError
from radius_mfa.otp import MIN_SECRET_BITS

_PHONE_RE = re.compile(r"\+[1-9][0-9]{7,14}")
_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")
_NAME_MAX = 253
_TEXT_MAX = 256


def quoted(name: str) -> str:
    """A name inside a message: quoted, with anything unprintable escaped."""
    return repr(name)


def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text)


def validate_user_name(name: str) -> str:
    """1–253 characters (RADIUS User-Name's limit), no control characters,
    no whitespace at either end (a NAS or a delimiter split would trim it)."""
    if not 1 <= len(name) <= _NAME_MAX:
        raise RefusedError(f"user name must be 1 to {_NAME_MAX} characters long")
    if _has_control(name):
        raise RefusedError(f"user name {quoted(name)} contains control characters")
    if name != name.strip():
        raise RefusedError(f"user name {quoted(name)} begins or ends with whitespace")
    return name


def validate_phone(phone: str) -> str:
    """E.164: ``+``, then 8 to 15 digits, the first not 0."""
    if not _PHONE_RE.fullmatch(phone):
        raise RefusedError(f"phone {quoted(phone)} is not in E.164 form (e.g. +4915112345678)")
    return phone


def validate_email(email: str) -> str:
    """A plausible address: local@domain.tld, no spaces or control characters."""
    if len(email) > 254 or _has_control(email) or not _EMAIL_RE.fullmatch(email):
        raise RefusedError(f"email {quoted(email)} is not a valid mail address")
    return email


def validate_display_name(text: str) -> str:
    if len(text) > _TEXT_MAX or _has_control(text):
        raise RefusedError(f"display name must be at most {_TEXT_MAX} printable characters")
    return text


def normalize_base32_secret(text: str, what: str = "--secret") -> bytes:
    """Decode a base32 secret as people paste it: any case, spaces (and
    hyphens) between groups, with or without ``=`` padding. RefusedError
    when it is not base32 or shorter than 80 bits."""
    compact = re.sub(r"[\s-]+", "", text).upper().rstrip("=")
    if not compact:
        raise RefusedError(f"{what} is empty")
    padded = compact + "=" * (-len(compact) % 8)
    try:
        raw = base64.b32decode(padded, casefold=False)
    except (binascii.Error, ValueError):
        raise RefusedError(f"{what} is not valid base32 (letters A-Z and digits 2-7)") from None
    if len(raw) * 8 < MIN_SECRET_BITS:
        raise RefusedError(f"{what} is too short: {len(raw) * 8} bits, at least {MIN_SECRET_BITS} needed")
    return raw


def encode_base32(raw: bytes) -> str:
    """Base32 without padding: what authenticator apps and otpauth URIs expect."""
    return base64.b32encode(raw).decode("ascii").rstrip("=")


# --------------------------------------------------------------------------
# check-config: what the machine says about a configuration that parsed
# --------------------------------------------------------------------------


@dataclass
class MachineFindings:
    """``FILE:LINE: key.path: message`` lines: ``problems`` make check-config
    exit 2, ``warnings`` (``… warning: …``) leave the exit code alone."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_machine(config, label: str, *, store_timeout: float = 5.0) -> MachineFindings:
    """What check-config can learn without changing anything: clients
    configured, the store key file readable and well formed, the store
    reachable, each listen address bindable (a socket bound and closed at
    once). Nothing is created, sent or signed in."""
    lines = _KeyLines(config.path)
    found = MachineFindings()

    def problem(path: str, message: str) -> None:
        found.problems.append(f"{label}:{lines.line(path)}: {path}: {message}")

    def warning(path: str, message: str) -> None:
        found.warnings.append(f"{label}:{lines.line(path)}: {path}: warning: {message}")

    if not config.clients:
        problem("clients", "no clients: every request would be dropped; add at least one")
    _check_key_file(config, problem)
    _check_store(config, problem, store_timeout)
    for path, address, kind in _listen_addresses(config):
        _check_bindable(path, address, kind, problem, warning)
    return found


def _check_key_file(config, problem) -> None:
    from radius_mfa.errors import StoreError
    from radius_mfa.secretbox import _read_key

    path = config.store_key_file
    try:
        _read_key(path)
    except FileNotFoundError:
        directory = _existing_ancestor(os.path.dirname(path))
        if not os.access(directory, os.W_OK | os.X_OK):
            problem("store_key_file", f"{path} does not exist and cannot be made: {directory} is not writable")
    except StoreError as exc:                         # unreadable, malformed, or others may read it
        problem("store_key_file", str(exc))


def _check_store(config, problem, seconds: float) -> None:
    from radius_mfa.connectivity import CheckFailed, store_check

    try:
        store_check(config.store, config.store_key_file, seconds)
    except CheckFailed as exc:
        problem("store", f"the store cannot be reached: {exc}")
    except OSError as exc:
        problem("store", f"the store cannot be reached: {exc.strerror or exc}")


def _listen_addresses(config):
    """(key path, ListenAddress, "udp" | "tcp") of everything serve would bind."""
    for index, address in enumerate(config.server.listen):
        tls = address.transport == "tls"
        yield f"server.listen[{index}].{address.transport}", address, "tcp" if tls else "udp"
    push = config.factors.push
    if push is not None:
        yield "factors.push.listen", push.listen, "tcp"
    portal = config.portal
    if portal is not None and not (push is not None and portal.listen == push.listen):
        yield "portal.listen", portal.listen, "tcp"
    if config.metrics is not None:
        yield "metrics.listen", config.metrics.listen, "tcp"


def _check_bindable(path: str, address, kind: str, problem, warning) -> None:
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM) as sock:
        if kind == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)    # as the server does
        try:
            sock.bind((address.host, address.port))
        except OSError as exc:
            where = f"{address.host}:{address.port}" if family == socket.AF_INET else f"[{address.host}]:{address.port}"
            if exc.errno == errno.EADDRINUSE:
                warning(path, f"{where}/{kind} in use (a running server?)")
            elif exc.errno == errno.EADDRNOTAVAIL:
                problem(path, f"{where} is not an address of this machine")
            elif exc.errno == errno.EACCES:
                problem(path, f"{where}/{kind}: permission denied (a port below 1024 needs root "
                              "or CAP_NET_BIND_SERVICE)")
            else:
                problem(path, f"{where}/{kind} cannot be bound: {exc.strerror or exc}")


def _existing_ancestor(directory: str) -> str:
    while directory and not os.path.exists(directory):
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    return directory or "."


class _KeyLines:
    """The line of a key path (``server.listen[0].udp``) in the YAML file, or
    of its nearest ancestor present; 1 when the file no longer reads."""

    def __init__(self, path: str):
        try:
            with open(path, encoding="utf-8") as stream:
                self._root = yaml.compose(stream, Loader=yaml.SafeLoader)
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            self._root = None

    def line(self, path: str) -> int:
        node, line = self._root, 1
        for step in re.findall(r"[^.\[\]]+|\[\d+\]", path):
            if isinstance(node, yaml.MappingNode) and not step.startswith("["):
                match = next(((k, v) for k, v in node.value if getattr(k, "value", None) == step), None)
                if match is None:
                    break
                line, node = match[0].start_mark.line + 1, match[1]
            elif isinstance(node, yaml.SequenceNode) and step.startswith("["):
                index = int(step[1:-1])
                if index >= len(node.value):
                    break
                node = node.value[index]
                line = node.start_mark.line + 1
            else:
                break
        return line
