"""The seam for primary credentials (the user's password).

Backends: ``local`` (the store's slow salted hashes) and ``none`` now;
``radius`` (an upstream RADIUS server) and ``ldap`` plug in beside them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from radius_mfa.model import User
from radius_mfa.verdicts import Reason


@dataclass(frozen=True)
class PrimaryResult:
    ok: bool
    reason: Reason | None = None
    # reply attributes to pass through to the final Access-Accept (upstream RADIUS)
    attributes: tuple[tuple[str, object], ...] = ()
    # what the backend knows of the user (display_name, email, phone, groups)
    user_info: dict = field(default_factory=dict)


class PrimaryBackend(Protocol):
    name: str                  # the audit's `primary`: local | radius | ldap | none
    needs_local_user: bool     # True: a user must exist in the store to sign in

    async def authenticate(self, user_name: str, user: User | None, password: bytes) -> PrimaryResult:
        """Check the password. Never raises for a wrong password or an
        unknown user: those are results."""

    async def equalize(self, password: bytes) -> None:
        """Spend what a check would cost without deciding anything, so that
        a request refused early (locked, disabled) takes as long as one that
        was checked."""
