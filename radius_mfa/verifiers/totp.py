"""TOTP (RFC 6238): a window of time steps either side of now, each code once.

The replay guard lives in the store (``advance_totp``): a code is accepted
only when its time step is later than every step used before on that token,
so it holds across restarts and across servers sharing the store.

A hardware TOTP token's clock drifts over the years; ``token resync`` records
the offset in ``Token.drift`` (in steps), and the window is centred on the
token's own step, now plus its drift. Steps, and so the replay guard, are
counted on the token's clock.
"""

from __future__ import annotations

import hmac
from typing import ClassVar, Sequence

from radius_mfa.model import Attempt, Token, User
from radius_mfa.otp import otp_at
from radius_mfa.verdicts import Reason
from radius_mfa.verifiers.base import FactorResult, TokenFactor


def steps_to_try(now: float, period: int, window: int, drift: int = 0) -> list[int]:
    """Time steps nearest first: the token's current step (now plus its
    ``drift``), then -1, +1, -2, +2 … up to ``window``."""
    current = int(now // period) + drift
    steps = [current]
    for distance in range(1, window + 1):
        steps += [current - distance, current + distance]
    return [s for s in steps if s >= 0]


class TotpVerifier(TokenFactor):
    name: ClassVar[str] = "totp"

    def __init__(self, store, window: int = 1):
        self.store = store          # AsyncStore
        self.window = window

    async def verify(self, user: User, tokens: Sequence[Token], code: str, now: float,
                     attempt: Attempt | None = None) -> FactorResult | None:
        settle = (user.name, attempt) if attempt is not None else None
        for token in tokens:
            if len(code) != token.digits:
                continue
            for step in steps_to_try(now, token.period, self.window, token.drift):
                if hmac.compare_digest(otp_at(token, step).encode(), code.encode()):
                    # the step and the attempt in one store step
                    fresh = await self.store.advance_totp(token.serial, step, settle)
                    if fresh:
                        return FactorResult(True, self.name, token.serial, settled=settle is not None)
                    return FactorResult(False, self.name, token.serial, Reason.REPLAY)
        return None
