"""HOTP (RFC 4226): a look-ahead window of counters, each code once.

A hardware HOTP token counts every button press, and not every press ends in
a sign-in, so the token runs ahead of the counter we expect: codes up to
``look_ahead`` counts ahead are accepted and move the counter past them
(RFC 4226 §7.4). The counter lives in the store and moves by compare-and-set
(``advance_hotp``), so of two requests or two servers racing for one code
exactly one wins, also across restarts; the loser re-reads the counter and
decides again.
"""

from __future__ import annotations

import hmac
from typing import ClassVar, Sequence

from radius_mfa.model import Attempt, Token, User
from radius_mfa.otp import oath
from radius_mfa.verdicts import Reason
from radius_mfa.verifiers.base import FactorResult, TokenFactor

# How many times a request re-reads a counter that others keep moving before
# it gives up (fails closed). Counters only move forward, so a code within
# the look-ahead settles in a round or two; this only bounds a pathology.
MAX_RACES = 8


def matching_counter(token: Token, code: str, first: int, last: int) -> int | None:
    """The first counter in ``first … last`` (inclusive) whose code is
    ``code``, compared in constant time; None when none is."""
    generate = oath(token).generate_otp
    typed = code.encode()
    for counter in range(max(first, 0), last + 1):
        if hmac.compare_digest(generate(counter).encode(), typed):
            return counter
    return None


class HotpVerifier(TokenFactor):
    name: ClassVar[str] = "hotp"

    def __init__(self, store, look_ahead: int = 10):
        self.store = store          # AsyncStore
        self.look_ahead = look_ahead

    async def verify(self, user: User, tokens: Sequence[Token], code: str, now: float,
                     attempt: Attempt | None = None) -> FactorResult | None:
        # the attempt is settled by the engine: a counter that moved under a
        # concurrent request is read again before the answer is known
        """Accept the first token the code is fresh for; a replay on one
        token does not hide a fresh code on another the user holds."""
        refusal: FactorResult | None = None
        for token in tokens:
            if len(code) != token.digits:
                continue
            result = await self._check(token, code)
            if result is not None and result.ok:
                return result
            if refusal is None:
                refusal = result
        return refusal

    async def _check(self, token: Token, code: str) -> FactorResult | None:
        """Decide one token: accept and advance, replay, or no match (None)."""
        for _ in range(MAX_RACES):
            matched = matching_counter(token, code, token.counter, token.counter + self.look_ahead)
            if matched is None:
                # a code just behind the counter was used already: say so in the audit
                if matching_counter(token, code, token.counter - self.look_ahead,
                                    token.counter - 1) is not None:
                    return FactorResult(False, self.name, token.serial, Reason.REPLAY)
                return None
            if await self.store.advance_hotp(token.serial, token.counter, matched + 1):
                return FactorResult(True, self.name, token.serial)
            # someone else moved the counter (a concurrent request, another server)
            fresh = await self.store.get_token(token.serial)
            if fresh is None or fresh.type != "hotp":
                return None                                 # removed meanwhile
            if fresh.counter > matched:
                return FactorResult(False, self.name, token.serial, Reason.REPLAY)
            token = fresh
        return FactorResult(False, self.name, token.serial, Reason.ERROR)
