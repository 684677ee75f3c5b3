"""What a user holds: tokens, code channels, paired devices, and the factor
classes they stand for, as the engine picks among them by their declarations
(``methods``, ``kind``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from radius_mfa.model import Device, Token
from radius_mfa.verifiers.base import CodeVerifier, Factor
from radius_mfa.verifiers.push import PushFactor
from radius_mfa.verifiers.sent_codes import SentCodeFactor


@dataclass(frozen=True)
class Held:
    """What a user holds, each kind of factor picked through its declaration."""
    tokens: Sequence[Token]
    channels: tuple[str, ...]
    devices: Sequence[Device]

    def factors(self, verifiers: Sequence[CodeVerifier]) -> list[type[Factor] | Factor]:
        held: list = [v for v in verifiers if any(v.handles(t) for t in self.tokens)]
        return held + [SentCodeFactor] * bool(self.channels) + [PushFactor] * bool(self.devices)

    def names(self, verifiers: Sequence[CodeVerifier]) -> tuple[str, ...]:
        """As the audit names them: token types, channels, ``push``."""
        return (tuple(v.name for v in verifiers if any(v.handles(t) for t in self.tokens))
                + tuple(self.channels) + ("push",) * bool(self.devices))
