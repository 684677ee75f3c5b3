"""`token resync`: bring a hardware token and the store back in step.

An HOTP token pressed many times without signing in runs further ahead than
the verifier's look-ahead; a TOTP token's clock drifts over the years. The
user reads two consecutive codes off the token and the administrator types
them in: two codes in a row pin the token's position far more surely than
one (one code in a wide window matches by chance; two in a row hardly ever),
so the search window can be wide (RFC 4226 §7.4).

The store is moved by compare-and-set, so a sign-in racing with the resync
either happens before it (and the resync is refused) or after it.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Iterator

from radius_mfa.errors import NotFoundError, RefusedError
from radius_mfa.model import Token
from radius_mfa.otp import oath
from radius_mfa.validate import quoted


@dataclass(frozen=True)
class Resynced:
    """Where the token now stands: the next HOTP counter expected, or the
    TOTP clock offset in steps (the other one None)."""
    serial: str
    type: str
    counter: int | None
    drift: int | None


def resync(store, serial: str, code1: str, code2: str, now: float, window: int = 1000) -> Resynced:
    """Find ``code1`` then ``code2`` as consecutive codes of the token and
    move the store past them: HOTP up to ``window`` counts ahead of the
    counter, TOTP within ``window`` steps either side of ``now``.

    NotFoundError for an unknown serial; RefusedError when the codes are not
    codes of this token, are not consecutive within the window, or were used
    meanwhile. The messages never echo the codes.
    """
    token = store.get_token(serial)
    if token is None:
        raise NotFoundError(f"token {quoted(serial)} not found")
    for code in (code1, code2):
        if not (code.isascii() and code.isdigit() and len(code) == token.digits):
            raise RefusedError(f"token {quoted(serial)}: both codes must be {token.digits} digits,"
                               f" as the token shows them")
    if token.type == "hotp":
        return _resync_hotp(store, token, code1, code2, window)
    if token.type == "totp":
        return _resync_totp(store, token, code1, code2, now, window)
    raise RefusedError(f"token {quoted(serial)} is of type {token.type!r}, which cannot be resynchronised")


def _resync_hotp(store, token: Token, code1: str, code2: str, window: int) -> Resynced:
    found = _consecutive(token, code1, code2, range(token.counter, token.counter + window))
    if found is None:
        raise RefusedError(f"token {quoted(token.serial)}: the two codes are not consecutive codes"
                           f" within {window} counts ahead; check them and their order")
    counter = found + 2
    if not store.advance_hotp(token.serial, token.counter, counter):
        raise RefusedError(f"token {quoted(token.serial)} was used while resynchronising: try again")
    return Resynced(token.serial, token.type, counter=counter, drift=None)


def _resync_totp(store, token: Token, code1: str, code2: str, now: float, window: int) -> Resynced:
    now_step = int(now // token.period)
    found = _consecutive(token, code1, code2, _nearest_first(now_step, window))
    if found is None:
        raise RefusedError(f"token {quoted(token.serial)}: the two codes are not consecutive codes"
                           f" within {window} time steps of now; check them and their order")
    # the second code is the one the token shows now: its step is the token's "now"
    last_step = found + 1
    drift = last_step - now_step
    if not store.set_totp_drift(token.serial, drift, last_step):
        raise RefusedError(f"token {quoted(token.serial)}: those codes were used already;"
                           f" wait for two new codes and try again")
    return Resynced(token.serial, token.type, counter=None, drift=drift)


def _nearest_first(center: int, window: int) -> Iterator[int]:
    """``center``, then -1, +1, -2, +2 … up to ``window`` away (never below 0)."""
    yield center
    for distance in range(1, window + 1):
        if center - distance >= 0:
            yield center - distance
        yield center + distance


def _consecutive(token: Token, code1: str, code2: str, positions) -> int | None:
    """The first position p (in the order given) where the token's code is
    ``code1`` at p and ``code2`` at p + 1, compared in constant time."""
    generate = oath(token).generate_otp
    typed1, typed2 = code1.encode(), code2.encode()
    cache: dict[int, bytes] = {}

    def code_at(position: int) -> bytes:
        if position not in cache:
            cache[position] = generate(position).encode()
        return cache[position]

    for position in positions:
        if position < 0:
            continue
        # both comparisons always run: the time taken says nothing of which failed
        first = hmac.compare_digest(code_at(position), typed1)
        second = hmac.compare_digest(code_at(position + 1), typed2)
        if first and second:
            return position
    return None
