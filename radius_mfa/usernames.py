"""User names as radius-mfa compares them (``policy.username``).

RADIUS carries User-Name as octets and directories match names
case-insensitively, so ``ALICE``, `` alice`` and ``alice`` must be one user
everywhere: store, lockout, replay guard and audit. A name is put into its
canonical form once, where it enters (the engine, every command), and the
store holds only canonical names.
"""

from __future__ import annotations

import unicodedata

from radius_mfa.config import UsernameConfig


def canonical(name: str, policy: UsernameConfig = UsernameConfig()) -> str:
    """NFC, trimmed, lower-cased unless ``case: sensitive``; with
    ``strip_realm``, ``CORP\\alice`` and ``alice@corp`` become ``alice``."""
    text = unicodedata.normalize("NFC", name).strip()
    if policy.strip_realm:
        text = strip_realm(text)
    if policy.case == "insensitive":
        text = text.lower()
    return text


def strip_realm(name: str) -> str:
    """``CORP\\alice`` → ``alice``; ``alice@corp.example`` → ``alice``. A
    name that would be empty without its realm keeps it."""
    _, sep, tail = name.rpartition("\\")
    if sep and tail.strip():
        name = tail.strip()
    head, sep, _ = name.partition("@")
    if sep and head.strip():
        name = head.strip()
    return name
