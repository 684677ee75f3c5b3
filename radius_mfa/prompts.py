"""What the user reads: the Reply-Message texts of challenges and of the
instructions that follow a correct password. Pure text, no RADIUS."""

from __future__ import annotations

from typing import Sequence

from radius_mfa.delivery.base import PHONE_CHANNELS, Channel
from radius_mfa.masking import mask_email, mask_phone
from radius_mfa.model import Token, User

RATE_LIMITED_MESSAGE = "Too many codes were sent. Try again in a few minutes."
PUSH_RATE_LIMITED_MESSAGE = "Too many sign-in requests were sent to your device. Try again in a few minutes."


def push_prompt(number: int | None) -> str:
    """The challenge of a push: the number to enter on the device, when
    number matching applies."""
    if number is not None:
        return f"Approve the sign-in on your device and enter the number {number} there. Then press OK."
    return "Approve the sign-in on your device. Then press OK."


def code_sent_prompt(where: str) -> str:
    return f"A code was sent to {where}. Enter it:"


def code_sent_instruction(where: str, delimiter: str) -> str:
    """Inline mode: the one Reject with a text, after a correct password."""
    return f"A code was sent to {where}. Sign in again with password{delimiter}CODE"


def prompt_for(tokens: Sequence[Token]) -> str:
    """The Reply-Message of an Access-Challenge: what to enter."""
    digits = sorted({t.digits for t in tokens})
    size = "-".join(str(d) for d in digits) if len(digits) > 1 else str(digits[0])
    return f"Enter the {size}-digit code from your authenticator app"


def mask_destination(channel: str, destination: str | None) -> str:
    """Where a code went, as users and logs may see it."""
    masked = mask_email(destination) if channel == Channel.EMAIL else mask_phone(destination)
    return masked or "***"


def menu_for(tokens: Sequence[Token], channels: Sequence[str], user: User,
             push: bool = False) -> str:
    """The Reply-Message of the first challenge: the code prompt, and the
    words that send a code, each with its masked destination, and ``push``
    when the user has a paired device."""
    if not channels:
        if not push:
            return prompt_for(tokens)
        if not tokens:
            return "Type push to approve the sign-in on your device"
        return f"{prompt_for(tokens)}, or type push to approve on your device"
    choices = []
    phone = [c for c in channels if c in PHONE_CHANNELS]
    if phone:
        choices.append(" or ".join(phone) + f" ({mask_phone(user.phone)})")
    if Channel.EMAIL in channels:
        choices.append(f"email ({mask_email(user.email)})")
    words = " or ".join(choices)
    if push:
        head = f"{prompt_for(tokens)}, or type push" if tokens else "Type push"
        return f"{head} to approve on your device, or {words} to get a code"
    if not tokens:
        return f"Type {words} to get a code"
    return f"{prompt_for(tokens)}, or type {words}"


def enrol_instruction(url: str) -> str:
    """``policy.unenrolled: enrol``: after a right password, where to set up a factor."""
    return f"No second factor is set up for you yet. Set one up at {url} (the link works once, for 15 minutes)."
