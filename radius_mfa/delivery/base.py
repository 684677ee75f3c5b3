"""The delivery seam: what the engine hands over, what a provider does with it.

A provider sends one message through one gateway (a generic HTTP API, Twilio,
an SMTP server) and either returns or raises :class:`DeliveryError`. A
:class:`Sender` holds a channel's providers in configured order and fails over:
the next provider on an error, a non-2xx answer or a timeout, all within the
time the client leaves us. Everything is non-blocking (Twisted), so a slow
gateway holds up only the sign-in that waits for it.

Nothing here logs a code, a message text, a password or an unmasked
destination: errors carry the provider's name and what went wrong, no more.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from radius_mfa.errors import RadiusMfaError

class Channel(enum.StrEnum):
    """Where a code goes, and the word that asks for it."""
    SMS = "sms"
    VOICE = "voice"
    EMAIL = "email"


#: In menu order: phone channels first.
CHANNELS = tuple(channel.value for channel in Channel)
PHONE_CHANNELS = frozenset({Channel.SMS.value, Channel.VOICE.value})


@dataclass(frozen=True)
class Outgoing:
    """One code on its way to a user."""
    channel: str                          # "sms" | "voice" | "email"
    to: str = field(repr=False)           # E.164 phone number or mail address
    user: str
    code: str = field(repr=False)
    text: str = field(repr=False)         # the configured message with {code} filled in
    subject: str | None = None            # email only


class DeliveryError(RadiusMfaError):
    """One provider could not deliver; the message is safe to log."""


class DeliveryFailed(RadiusMfaError):
    """No provider delivered. ``attempts``: (provider name, what went wrong)."""

    def __init__(self, attempts: tuple[tuple[str, str], ...]):
        self.attempts = attempts
        super().__init__("; ".join(f"{name}: {why}" for name, why in attempts) or "no provider configured")


class Provider(Protocol):
    name: str
    timeout: float                        # seconds one attempt may take

    async def send(self, message: Outgoing) -> None:
        """Deliver or raise DeliveryError (the Sender enforces ``timeout``)."""
