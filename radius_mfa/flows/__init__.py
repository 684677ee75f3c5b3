"""Between an out-of-band or sent factor and the engine's decision: the
rounds a factor needs (start, prompt, wait, answer), built from the
factor's results, the pending challenges and the engine's decisions, so the
engine stays the pipeline and each factor's flow lives beside the others."""

from __future__ import annotations

from typing import Protocol

from radius_mfa.challenges import Stage
from radius_mfa.model import User
from radius_mfa.requests import AuthRequest, Decision


class PickedFlow(Protocol):
    """The rounds of a factor picked by a word (``push``, ``sms``): the
    engine looks the word up among the flows' ``words``, and answers a
    pending challenge of the flow's ``stage`` with its ``answer``."""

    stage: Stage
    words: frozenset[str]

    async def offers(self, req: AuthRequest, user: User, word: str) -> bool:
        """Whether this user can use the factor ``word`` picks, here."""

    async def begin(self, req: AuthRequest, user: User, word: str, attributes, info: dict) -> Decision:
        """The first round once picked: a prompt, a code sent, or the wait."""

    async def answer(self, req: AuthRequest, user: User, data: dict, answer: str,
                     attributes, info: dict) -> Decision:
        """The answer to the challenge ``begin`` opened (``data`` is what it kept)."""
