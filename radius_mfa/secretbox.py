"""Token secrets encrypted at rest, with a key kept outside the store.

The store never holds an OATH seed in clear: each secret is sealed with
AES-256-GCM under a 32-byte key read from a file of its own (64 hex digits,
mode 0600, made on first use). A copy of the database, a backup or a
``sqlite3`` session shows only ciphertext; the key file lives elsewhere
(``store_key_file``, by default beside the configuration, not the database).
Making the key prints one line on stderr: where it is, and that it must be
backed up. Made by root (an admin command), it belongs to the owner of its
directory, so the service user can read it.

Each sealed value is bound to its token by the additional authenticated data
(the serial), so a row's secret cannot be moved to another token. The store
also keeps a check value of the key (an HMAC of a fixed label, never the key):
opening a store with another key file is refused with a clear message instead
of failing later on every sign-in.

Format of a sealed value: ``aesgcm1:`` + URL-safe base64 of nonce (12 bytes)
and ciphertext with its 16-byte tag.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stat
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from radius_mfa.errors import StoreError

KEY_BYTES = 32
PREFIX = "aesgcm1:"
_NONCE_BYTES = 12
_CHECK_LABEL = b"radius-mfa store key check v1"
_DERIVE_PREFIX = b"radius-mfa derived key v1:"


class SecretBox:
    """Seals and opens token secrets with one key."""

    def __init__(self, key: bytes, *, source: str = "the store key"):
        if len(key) != KEY_BYTES:
            raise StoreError(f"{source}: the key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(key)
        self._check = hmac.new(key, _CHECK_LABEL, hashlib.sha256).hexdigest()[:32]
        self._derive_key = key          # only ever fed to HMAC, never returned
        self.source = source

    def __repr__(self) -> str:           # never the key
        return f"SecretBox({self.source})"

    @property
    def check_value(self) -> str:
        """What the store keeps to recognise its key: not the key, and not
        usable to recover it."""
        return self._check

    def derive(self, label: bytes) -> bytes:
        """A 32-byte key for one purpose (``label``), derived from the store
        key with HMAC-SHA256: other uses of the key (the MAC of a sent code)
        get a key of their own, and none of them reveals this one."""
        return hmac.new(self._derive_key, _DERIVE_PREFIX + label, hashlib.sha256).digest()

    @classmethod
    def from_file(cls, path: str, *, create: bool = True) -> "SecretBox":
        """The key in ``path``; with ``create``, a new random key is written
        there (mode 0600, atomically: two processes starting at once agree on
        one key) when the file does not exist."""
        path = os.path.abspath(path)
        try:
            return cls(_read_key(path), source=path)
        except FileNotFoundError:
            if not create:
                raise StoreError(f"the store key file {path} does not exist") from None
        _create_key_file(path)
        try:
            return cls(_read_key(path), source=path)
        except FileNotFoundError:
            raise StoreError(f"the store key file {path} vanished while it was being made") from None

    def seal(self, plaintext: str, context: str) -> str:
        """``plaintext`` encrypted and bound to ``context`` (the token serial)."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), context.encode())
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def open(self, sealed: str, context: str) -> str:
        """The plaintext of a sealed value; StoreError when it was not sealed
        with this key for this context (or was altered)."""
        if not is_sealed(sealed):
            raise StoreError(f"the secret of token {context} is not sealed")
        try:
            blob = base64.urlsafe_b64decode(sealed[len(PREFIX):].encode("ascii"))
            plain = self._aead.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], context.encode())
        except (InvalidTag, ValueError):
            raise StoreError(
                f"the secret of token {context} does not open with {self.source}: wrong key, or the row was altered"
            ) from None
        return plain.decode()


def is_sealed(value: str) -> bool:
    return value.startswith(PREFIX)


def _read_key(path: str) -> bytes:
    """The key from its file: 64 hex digits (whitespace ignored). Refuses a
    file that others may read: the key protects every seed in the store."""
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            text = handle.read(4096)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StoreError(f"cannot read the store key file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise StoreError(
            f"the store key file {path} is readable by others (mode {stat.S_IMODE(mode):04o}): chmod 600 it"
        )
    digits = b"".join(text.split())
    try:
        key = bytes.fromhex(digits.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise StoreError(f"the store key file {path} must hold {KEY_BYTES * 2} hexadecimal digits")
    return key


def _create_key_file(path: str) -> None:
    """Write a new key to a private temporary file, then link it into place:
    the link fails if another process made the file first, and theirs wins."""
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the directory of the store key file {path}: {exc.strerror}") from None
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{os.urandom(4).hex()}")
    made = False
    try:
        fd = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            give_to_directory_owner(fd, directory)
            os.write(fd, os.urandom(KEY_BYTES).hex().encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
            made = True
        except FileExistsError:
            pass
    except OSError as exc:
        raise StoreError(f"cannot create the store key file {path}: {exc.strerror}") from None
    finally:
        try:
            os.unlink(temporary)
        except OSError:
            pass
    if made:        # once, by the process whose key won
        print(f"radius-mfa: made a new store key in {path}: back it up, apart from the store's "
              "backups; without it the token secrets in the store cannot be read", file=sys.stderr)


def give_to_directory_owner(fd: int, directory: str) -> None:
    """Run as root (an admin command), give a file just made the owner and
    group of its directory, so that the service user that owns the directory
    (/var/lib/radius-mfa) can open it; otherwise nothing. The file's mode
    stays as made (0600)."""
    if os.geteuid() != 0:
        return
    info = os.stat(directory or ".")
    if (info.st_uid, info.st_gid) != (0, 0):
        os.fchown(fd, info.st_uid, info.st_gid)
