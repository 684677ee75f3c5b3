"""Slow salted password hashes, with the standard library only.

New hashes use the configured scheme (``passwords.scheme``), written with
their parameters so that the cost can be raised later without breaking the
hashes already stored: scrypt (memory-hard, the default)::

    $scrypt$ln=14,r=8,p=1$<salt>$<key>

or PBKDF2-SHA256 with ``passwords.pbkdf2_iterations`` (the form passlib
writes, for sites that must use a FIPS-approved function)::

    $pbkdf2-sha256$<iterations>$<salt>$<key>

Both forms are verified whatever the configuration, so users can be imported
from elsewhere; :func:`needs_rehash` says when a stored hash is weaker than the
configured one (another scheme, or a lower cost) and should be replaced at the
next successful sign-in. :func:`verify_dummy` spends what one check of the
configured hash costs: the timing floor of every password check.

Salts and keys are base64 without padding; the "adapted" alphabet of passlib
(``.`` for ``+``) is accepted when reading. Verification never raises on a
malformed hash: it returns False, so a damaged record cannot crash a request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from radius_mfa.config import PasswordsConfig

SCHEMES = ("scrypt", "pbkdf2-sha256")
SCRYPT_LOG2_N = 14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32

# Upper bounds on what a stored hash may ask for: a damaged or hostile hash
# string must not make one verification take minutes or gigabytes.
_MAX_SCRYPT_MEMORY = 1 << 30           # bytes
_MAX_PBKDF2_ITERATIONS = 10_000_000
_MIN_KEY_BYTES, _MAX_KEY_BYTES = 16, 64

# The least a carried-over hash may cost to be imported (`user import`): below
# it a hash is not a password hash but a checksum (PBKDF2 with a handful of
# iterations, scrypt with N of a few dozen), brute-forced from a stolen store
# in moments. The timing floor already hides the cost of any stored hash from
# a client; this refuses the absurd. 1,000 iterations is the minimum of RFC
# 8018 (section 4.2) and N = 2^10 a sixteenth of scrypt's interactive default.
MIN_IMPORTED_PBKDF2_ITERATIONS = 1_000
MIN_IMPORTED_SCRYPT_LOG2_N = 10

# A hash of a random password nobody knows, made once with the default
# parameters; verify_dummy runs against it (or, for pbkdf2-sha256, against its
# salt with the configured iterations) so that an unknown user costs as much
# time as a known one.
_DUMMY_HASH = (
    "$scrypt$ln=14,r=8,p=1$a1PfAEZaRotTsro+6xf4gA"
    "$85OZUNZacXdrQQk3s6XflYOnI0gGBK9FKGvtokaBQQA"
)


@dataclass(frozen=True)
class _Scrypt:
    log2_n: int
    r: int
    p: int
    salt: bytes
    key: bytes


@dataclass(frozen=True)
class _Pbkdf2:
    iterations: int
    salt: bytes
    key: bytes


def hash_password(password: str | bytes, config: "PasswordsConfig | None" = None) -> str:
    """A new hash of ``password`` (UTF-8 when a str) with a fresh salt, in the
    configured scheme (scrypt N=2^14, r=8, p=1 when ``config`` is None).
    ValueError for a scheme or an iteration count this module cannot use."""
    scheme, iterations = _configured(config)
    salt = secrets.token_bytes(SALT_BYTES)
    if scheme == "pbkdf2-sha256":
        key = hashlib.pbkdf2_hmac("sha256", _as_bytes(password), salt, iterations, KEY_BYTES)
        return f"$pbkdf2-sha256${iterations}${_b64encode(salt)}${_b64encode(key)}"
    key = _scrypt(_as_bytes(password), salt, SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P, KEY_BYTES)
    return (
        f"$scrypt$ln={SCRYPT_LOG2_N},r={SCRYPT_R},p={SCRYPT_P}"
        f"${_b64encode(salt)}${_b64encode(key)}"
    )


def verify_password(password: str | bytes, encoded: str) -> bool:
    """True when ``password`` matches ``encoded``; False for a wrong password,
    a malformed or unsupported hash, or a password that is not text."""
    if not isinstance(password, (str, bytes)):
        return False
    parsed = _parse(encoded)
    if parsed is None:
        return False
    try:
        candidate = _derive(_as_bytes(password), parsed)
    except (ValueError, MemoryError, OverflowError):
        return False
    return hmac.compare_digest(candidate, parsed.key)


def is_verifiable_hash(encoded: str) -> bool:
    """True when ``encoded`` is a hash string :func:`verify_password` can
    check (scrypt or PBKDF2-SHA256 in their ``$…$`` forms): `user import`
    keeps such a value as it is instead of hashing it as a password."""
    return _parse(encoded) is not None


def imported_hash_problem(encoded: str) -> str | None:
    """Why a carried-over hash may not be imported, or None when it may: it
    must be verifiable (see :func:`is_verifiable_hash`) and cost at least
    :data:`MIN_IMPORTED_PBKDF2_ITERATIONS` PBKDF2 iterations or scrypt
    N = 2^:data:`MIN_IMPORTED_SCRYPT_LOG2_N`. The message names no part of
    the hash but its cost."""
    parsed = _parse(encoded)
    if parsed is None:
        return "malformed or has parameters out of range"
    if isinstance(parsed, _Pbkdf2) and parsed.iterations < MIN_IMPORTED_PBKDF2_ITERATIONS:
        return (f"{parsed.iterations} iterations, fewer than the "
                f"{MIN_IMPORTED_PBKDF2_ITERATIONS:,} a carried-over hash needs")
    if isinstance(parsed, _Scrypt) and parsed.log2_n < MIN_IMPORTED_SCRYPT_LOG2_N:
        return (f"N=2^{parsed.log2_n}, less than the 2^{MIN_IMPORTED_SCRYPT_LOG2_N} "
                "a carried-over hash needs")
    return None


def needs_rehash(encoded: str, config: "PasswordsConfig | None" = None) -> bool:
    """True when ``encoded`` is weaker than what :func:`hash_password` makes
    with ``config``: another scheme, a lower cost (scrypt N, r, p; PBKDF2
    iterations), a shorter salt or key, or not a hash we can read."""
    scheme, iterations = _configured(config)
    parsed = _parse(encoded)
    if parsed is None or len(parsed.salt) < SALT_BYTES or len(parsed.key) < KEY_BYTES:
        return True
    if scheme == "pbkdf2-sha256":
        return not isinstance(parsed, _Pbkdf2) or parsed.iterations < iterations
    if not isinstance(parsed, _Scrypt):
        return True
    return parsed.log2_n < SCRYPT_LOG2_N or parsed.r < SCRYPT_R or parsed.p < SCRYPT_P


def verify_dummy(password: str | bytes, config: "PasswordsConfig | None" = None) -> bool:
    """Spend the time of one verification of the configured hash, then
    return False.

    Called when there is no hash to check (unknown user, no local password,
    locked, disabled), and after checking a hash weaker than the configured
    one, so that every answer takes at least as long as for a user with a
    current hash: no enumeration of user names, nor of migrated users, by
    timing.
    """
    if not isinstance(password, (str, bytes)):
        password = b""
    target = _dummy(config)
    try:
        candidate = _derive(_as_bytes(password), target)
    except (ValueError, MemoryError, OverflowError):
        return False
    hmac.compare_digest(candidate, target.key)
    return False


def _configured(config: "PasswordsConfig | None") -> tuple[str, int]:
    """``(scheme, pbkdf2 iterations)`` of a passwords section, checked."""
    if config is None:
        return "scrypt", 0
    scheme = config.scheme
    if scheme not in SCHEMES:
        raise ValueError(f"passwords.scheme: {scheme!r} is not one of {', '.join(SCHEMES)}")
    iterations = config.pbkdf2_iterations
    if scheme == "pbkdf2-sha256" and (
            isinstance(iterations, bool) or not isinstance(iterations, int)
            or not 1 <= iterations <= _MAX_PBKDF2_ITERATIONS):
        raise ValueError("passwords.pbkdf2_iterations: must be a whole number from 1 to "
                         f"{_MAX_PBKDF2_ITERATIONS:,}")
    return scheme, iterations


def _dummy(config: "PasswordsConfig | None") -> "_Scrypt | _Pbkdf2":
    scheme, iterations = _configured(config)
    parsed = _parse(_DUMMY_HASH)
    assert isinstance(parsed, _Scrypt)
    if scheme == "pbkdf2-sha256":
        return _Pbkdf2(iterations, parsed.salt, parsed.key)
    return parsed


# --- parsing ------------------------------------------------------------------


def _parse(encoded: object) -> _Scrypt | _Pbkdf2 | None:
    """The parts of a hash string, or None when it is not one we can verify."""
    if not isinstance(encoded, str):
        return None
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] != "":
        return None
    scheme, params, salt_text, key_text = parts[1:]
    salt, key = _b64decode(salt_text), _b64decode(key_text)
    if salt is None or key is None or not salt:
        return None
    if not _MIN_KEY_BYTES <= len(key) <= _MAX_KEY_BYTES:
        return None
    if scheme == "scrypt":
        return _parse_scrypt(params, salt, key)
    if scheme == "pbkdf2-sha256":
        return _parse_pbkdf2(params, salt, key)
    return None


def _parse_scrypt(params: str, salt: bytes, key: bytes) -> _Scrypt | None:
    values: dict[str, int] = {}
    for item in params.split(","):
        name, sep, number = item.partition("=")
        if not sep or name in values or not number.isdigit() or len(number) > 3:
            return None
        values[name] = int(number)
    if set(values) != {"ln", "r", "p"}:
        return None
    log2_n, r, p = values["ln"], values["r"], values["p"]
    if not (1 <= log2_n <= 30 and r >= 1 and p >= 1):
        return None
    if _scrypt_memory(log2_n, r, p) > _MAX_SCRYPT_MEMORY:
        return None
    return _Scrypt(log2_n, r, p, salt, key)


def _parse_pbkdf2(params: str, salt: bytes, key: bytes) -> _Pbkdf2 | None:
    if not params.isdigit() or len(params) > 9:
        return None
    iterations = int(params)
    if not 1 <= iterations <= _MAX_PBKDF2_ITERATIONS:
        return None
    return _Pbkdf2(iterations, salt, key)


# --- derivation ---------------------------------------------------------------


def _derive(password: bytes, parsed: _Scrypt | _Pbkdf2) -> bytes:
    if isinstance(parsed, _Scrypt):
        return _scrypt(password, parsed.salt, parsed.log2_n, parsed.r, parsed.p, len(parsed.key))
    return hashlib.pbkdf2_hmac("sha256", password, parsed.salt, parsed.iterations, len(parsed.key))


def _scrypt(password: bytes, salt: bytes, log2_n: int, r: int, p: int, length: int) -> bytes:
    # maxmem must cover what the parameters need, or OpenSSL refuses.
    maxmem = _scrypt_memory(log2_n, r, p) + (1 << 20)
    return hashlib.scrypt(password, salt=salt, n=1 << log2_n, r=r, p=p, maxmem=maxmem, dklen=length)


def _scrypt_memory(log2_n: int, r: int, p: int) -> int:
    """Bytes scrypt needs for these parameters (V array plus B blocks)."""
    return 128 * r * ((1 << log2_n) + p + 2)


def _as_bytes(password: str | bytes) -> bytes:
    return password.encode("utf-8") if isinstance(password, str) else password


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes | None:
    """Standard or passlib-adapted base64, padded or not; None when invalid."""
    text = text.replace(".", "+")
    if not text.isascii():
        return None
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
