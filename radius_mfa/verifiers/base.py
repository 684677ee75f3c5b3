"""The seam for second factors.

A factor is small, typed and knows nothing of RADIUS: it declares as class
data what picks it and where it works (:class:`Factor`), checks what it is
given, and returns a :class:`FactorResult`; the engine turns results into
decisions and the protocol layer into packets. Code verifiers (TOTP, HOTP)
check a typed code against the user's tokens; app passwords stand in for the
password and the factor together; sent codes (SMS, voice, email) and push
approval are picked by a word.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar, Protocol, Sequence

from radius_mfa.model import Attempt, Token, User
from radius_mfa.verdicts import Reason


@dataclass(frozen=True)
class FactorResult:
    ok: bool
    factor: str
    device: str | None = None        # the token serial or device id that answered
    reason: Reason | None = None     # set when not ok
    provider: str | None = None      # a sent code: the delivery provider that sent it (audit)
    settled: bool = False            # the lockout attempt was finished with the code (one store step)


class FactorKind(str, enum.Enum):
    TYPED = "typed"                  # the user types it (a code, an app password)
    OUT_OF_BAND = "out_of_band"      # answered elsewhere (a device approves)


# The request methods a factor can work over (the audit's `method`): PAP carries
# typed text, MS-CHAPv2 carries none, `none` is a request without a password
# (second-factor-only).
PAP, MSCHAPV2, NO_PASSWORD = "pap", "mschapv2", "none"


class Factor(Protocol):
    """What every factor declares, as class data."""

    name: ClassVar[str]                  # the audit's `factor`
    words: ClassVar[frozenset[str]]      # answer words that pick it ("push", "sms"); none for codes
    methods: ClassVar[frozenset[str]]    # request methods it works over
    kind: ClassVar[FactorKind]


class TokenFactor:
    """The class data of the code verifiers over a user's tokens (TOTP,
    HOTP): picked by typing a code, over PAP or a request without password
    (MS-CHAPv2 carries no code); each handles the tokens of its own type."""

    name: ClassVar[str]                  # the token type, and the audit's `factor`
    words: ClassVar[frozenset[str]] = frozenset()
    methods: ClassVar[frozenset[str]] = frozenset({PAP, NO_PASSWORD})
    kind: ClassVar[FactorKind] = FactorKind.TYPED

    def handles(self, token: Token) -> bool:
        return token.type == self.name


class CodeVerifier(Protocol):
    """Checks a code typed by the user against the tokens it understands."""

    name: str                        # "totp", "hotp": the audit's `factor`

    def handles(self, token: Token) -> bool:
        """True for the tokens this verifier checks."""

    async def verify(self, user: User, tokens: Sequence[Token], code: str, now: float,
                     attempt: Attempt | None = None) -> FactorResult | None:
        """The result for the first of ``tokens`` that the code matches, or
        None when it matches none of them. Only tokens for which
        ``handles`` is true are passed. ``attempt``: the lockout attempt
        taken for this code, which a verifier may finish as a success in the
        store step that accepts the code (then ``settled`` is true)."""
