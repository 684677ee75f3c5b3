"""How phone numbers and mail addresses appear in messages and logs."""

from __future__ import annotations


def mask_phone(phone: str | None) -> str | None:
    """``+4915112345678`` → ``***5678``: the last 4 digits (2 for very short numbers)."""
    if not phone:
        return None
    digits = [c for c in phone if c.isdigit()]
    keep = 4 if len(digits) >= 8 else 2
    return "***" + "".join(digits[-keep:])


def mask_email(email: str | None) -> str | None:
    """``alice@example.org`` → ``a***@example.org``."""
    if not email:
        return None
    local, at, domain = email.partition("@")
    if not at:
        return "***"
    return (local[:1] or "") + "***@" + domain
