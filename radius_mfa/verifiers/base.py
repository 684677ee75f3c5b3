"""The seam for second factors.

A verifier is small, typed and knows nothing of RADIUS. Code verifiers (TOTP,
HOTP) check a typed code against the user's tokens; out-of-band factors (SMS,
voice, email, push) plug in beside them as they come.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from radius_mfa.model import Token, User
from radius_mfa.verdicts import Reason


@dataclass(frozen=True)
class FactorResult:
    ok: bool
    factor: str
    device: str | None = None        # the token serial or device id that answered
    reason: Reason | None = None     # set when not ok


class CodeVerifier(Protocol):
    """Checks a code typed by the user against the tokens it understands."""

    name: str                        # "totp", "hotp": the audit's `factor`

    def handles(self, token: Token) -> bool:
        """True for the tokens this verifier checks."""

    async def verify(self, user: User, tokens: Sequence[Token], code: str, now: float) -> FactorResult | None:
        """The result for the first of ``tokens`` that the code matches, or
        None when it matches none of them. Only tokens for which
        ``handles`` is true are passed."""
