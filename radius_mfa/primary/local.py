"""The ``local`` backend: passwords kept in the store as slow salted hashes.

Hashing runs in a thread pool (``run``): it is the slow part of a request and
must never hold the reactor. An unknown user costs the same as a known one.
"""

from __future__ import annotations

from radius_mfa import passwords
from radius_mfa.primary.base import PrimaryRequest, PrimaryResult
from radius_mfa.verdicts import Reason


class LocalBackend:
    name = "local"
    supports_mschap = False

    def __init__(self, run):
        self._run = run            # runner: run(fn, *args) -> awaitable, off the reactor

    async def authenticate(self, request: PrimaryRequest) -> PrimaryResult:
        user, password = request.user, request.password
        if password is None:
            return PrimaryResult(False, Reason.BAD_REQUEST)
        if user is None or not user.password_hash:
            await self.equalize(password)
            return PrimaryResult(False, Reason.UNKNOWN_USER if user is None else Reason.BAD_PASSWORD)
        ok = await self._run(passwords.verify_password, password, user.password_hash)
        return PrimaryResult(True) if ok else PrimaryResult(False, Reason.BAD_PASSWORD)

    async def equalize(self, password: bytes) -> None:
        await self._run(passwords.verify_dummy, password)


class NoPrimary:
    """``backend: none``: no password is checked anywhere (the NAS did it)."""

    name = "none"
    supports_mschap = False

    async def authenticate(self, request: PrimaryRequest) -> PrimaryResult:
        if request.user is None:
            return PrimaryResult(False, Reason.UNKNOWN_USER)
        return PrimaryResult(True)

    async def equalize(self, password: bytes) -> None:
        return None
