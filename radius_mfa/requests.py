"""What the engine is given and what it decides: an Access-Request as the
engine sees it, its decision, and the reading of what the user typed
(``password<delimiter>answer``, a code, a word that picks a factor)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from radius_mfa.config import ClientConfig, Mode
from radius_mfa.model import User
from radius_mfa.verdicts import Reason, Verdict
from radius_mfa.verifiers.push import PushFactor
from radius_mfa.verifiers.sent_codes import SentCodeFactor

CODE = re.compile(r"\d{6,8}")
# Seconds kept back from the client's timeout for our own answer to reach it.
DEADLINE_MARGIN = 1.0
# Words a user may answer with at a prompt or after the delimiter: those the
# factors declare (radius_mfa.verifiers).
FACTOR_WORDS = PushFactor.words | SentCodeFactor.words


@dataclass(frozen=True)
class AuthRequest:
    """An Access-Request as the engine sees it."""
    client: ClientConfig
    user_name: str | None
    password: bytes | None           # User-Password, decrypted; None when absent
    state: bytes | None = None
    calling_station_id: str | None = None
    request_id: str = ""
    mschap: bool = False             # an MS-CHAPv2 request: no password, nothing can carry a code
    method: str = "pap"              # pap | chap | mschap | mschapv2 | eap | none (the audit's `method`)
    name_invalid: bool = False       # User-Name was not UTF-8: user_name holds it escaped, for the audit
    forward: tuple[tuple[int, bytes], ...] = ()   # NAS attributes a proxying backend forwards
    received: float | None = None    # engine clock when it arrived (set by Engine.handle)
    sent_name: str | None = None     # User-Name as the NAS sent it (user_name is canonical once handled)

    def __post_init__(self):
        if self.mschap and self.method == "pap":
            object.__setattr__(self, "method", "mschapv2")


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    user_name: str | None
    primary: str
    reason: Reason | None = None
    factor: str | None = None        # "totp", "none" (exempt or unenrolled-allowed), …
    device: str | None = None
    user: User | None = None
    reply_message: str | None = None
    state: bytes | None = None       # Access-Challenge only
    attributes: tuple[tuple[str, object], ...] = ()   # extra reply attributes on Accept
    user_info: dict = field(default_factory=dict)
    provider: str | None = None      # the delivery provider that sent the code (audit)
    considered: tuple[str, ...] = () # the factors the user held when the engine chose (serve --debug)


class Decisions:
    """Builds the engine's decisions for one primary backend: every stage
    and factor flow answers through these, so each Reject has one shape."""

    def __init__(self, primary: str, clock: Callable[[], float]):
        self.primary = primary
        self.clock = clock

    def accept(self, req: AuthRequest, user: User | None, *, factor: str,
               device: str | None = None, attributes=(), info: dict | None = None,
               provider: str | None = None) -> Decision:
        return Decision(Verdict.ACCEPT, req.user_name, self.primary, factor=factor,
                        device=device, user=user, attributes=tuple(attributes),
                        user_info=dict(info or {}), provider=provider)

    def reject(self, req: AuthRequest, reason: Reason, *, user: User | None = None,
               factor: str | None = None, device: str | None = None,
               info: dict | None = None, provider: str | None = None,
               reply_message: str | None = None) -> Decision:
        """``reply_message`` only for the instructions that follow a correct
        password (code sent, rate limited); every other Reject looks the same."""
        return Decision(Verdict.REJECT, req.user_name, self.primary, reason=reason,
                        factor=factor, device=device, user=user, user_info=dict(info or {}),
                        provider=provider, reply_message=reply_message)

    def challenge(self, req: AuthRequest, user: User | None, state: bytes, prompt: str, *,
                  factor: str | None = None, info: dict | None = None,
                  provider: str | None = None) -> Decision:
        return Decision(Verdict.CHALLENGE, req.user_name, self.primary, user=user,
                        factor=factor, state=state, reply_message=prompt,
                        user_info=dict(info or {}), provider=provider)

    def of(self, req: AuthRequest, user: User, result, attributes, info: dict) -> Decision:
        """A factor's result (radius_mfa.verifiers.base.FactorResult) as a decision."""
        if result.ok:
            return self.accept(req, user, factor=result.factor, device=result.device,
                               attributes=attributes, info=info, provider=result.provider)
        return self.reject(req, result.reason, user=user, factor=result.factor,
                           device=result.device, info=info, provider=result.provider)

    def remaining(self, req: AuthRequest) -> float:
        """Seconds this request may still wait: the client's timeout, less
        what it has used and the margin for our answer to reach it."""
        now = self.clock()
        received = req.received if req.received is not None else now
        return req.client.timeout - DEADLINE_MARGIN - (now - received)


def classify(answer: str) -> str | None:
    """'code' for 6–8 digits, the word itself for a factor word, else None."""
    word = answer.strip().lower()
    if CODE.fullmatch(word):
        return "code"
    if word in FACTOR_WORDS:
        return word
    return None


def split_inline(password: str, delimiter: str, mode: Mode) -> tuple[str, str | None]:
    """Split ``password<delimiter>answer`` at the last delimiter.

    ``inline`` clients always carry the answer, so any text after the last
    delimiter is the answer. ``challenge`` clients accept the inline form
    too, but only when what follows the delimiter looks like an answer (a
    6–8 digit code or a factor word); otherwise the whole text is the
    password and a challenge follows.
    """
    head, sep, tail = password.rpartition(delimiter)
    if not sep:
        return password, None
    if mode is Mode.INLINE or classify(tail) is not None:
        return head, tail
    return password, None


def decode_password(raw: bytes) -> str:
    """User-Password bytes → text; bytes that are not UTF-8 survive unchanged
    (surrogateescape), so a hash check sees exactly what was sent."""
    return raw.decode("utf-8", "surrogateescape")


def is_digits(answer: str) -> bool:
    """ASCII digits only (``str.isdigit`` also takes superscripts and other scripts)."""
    text = answer.strip()
    return text.isascii() and text.isdigit()
