"""Checks of what administrators type or import: names, phone numbers, mail
addresses, base32 secrets. Shared by the commands and the bulk importers; each
raises RefusedError with one line that says what is wrong (never the secret).
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata

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
