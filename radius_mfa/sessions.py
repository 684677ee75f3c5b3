"""Challenge States: random, single-use, bound to user and client, expiring.

A State is 16 random bytes from the OS. The store keeps only its SHA-256
digest, so a copy of the database does not let anyone answer a pending
challenge, and ``take`` deletes the row as it reads it: of two requests
racing with one State, exactly one gets it. A used State is kept until it
expires, so that a NAS retry of an answer is told from a made-up State.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Callable

from radius_mfa.model import Challenge, SignIn
from radius_mfa.verdicts import Reason

STATE_BYTES = 16
# Open challenges kept per user: opening another drops the oldest, so a
# stolen password cannot hold dozens of challenges to guess through at once.
MAX_OPEN_CHALLENGES = 5


def state_digest(state: bytes) -> str:
    return hashlib.sha256(state).hexdigest()


class Sessions:
    def __init__(self, store, clock: Callable[[], float], ttl: float = 300.0):
        self.store = store            # AsyncStore
        self.clock = clock
        self.ttl = ttl

    async def open(self, user: str, client: str, factors: tuple[str, ...], data: dict | None = None) -> bytes:
        """Start a challenge; returns the State to send to the client."""
        state = secrets.token_bytes(STATE_BYTES)
        now = self.clock()
        await self.store.put_challenge(Challenge(
            state_digest=state_digest(state), user=user, client=client,
            created=now, expires=now + self.ttl, factors=factors, data=data or {}),
            max_open=MAX_OPEN_CHALLENGES)
        return state

    async def take(self, state: bytes, user: str, client: str) -> tuple[Challenge | None, Reason | None]:
        """Consume the challenge of ``state``: (challenge, None) when it is
        valid for this user and client, else (None, why not)."""
        if len(state) != STATE_BYTES:
            return None, Reason.BAD_STATE
        challenge = await self.store.take_challenge(state_digest(state), self.clock())
        return self._valid(challenge, user, client)

    async def take_with_user(self, state: bytes, user: str,
                             client: str) -> tuple[Challenge | None, Reason | None, SignIn]:
        """:meth:`take`, and the user and their tokens read in the same store step."""
        if len(state) != STATE_BYTES:
            return None, Reason.BAD_STATE, SignIn(await self.store.get_user(user))
        challenge, read = await self.store.take_challenge_with_user(state_digest(state), self.clock(), user)
        return (*self._valid(challenge, user, client), read)

    def _valid(self, challenge: Challenge | None, user: str,
               client: str) -> tuple[Challenge | None, Reason | None]:
        if challenge is None:
            return None, Reason.BAD_STATE
        if challenge.expires <= self.clock():
            return None, Reason.EXPIRED_STATE
        if challenge.user != user or challenge.client != client:
            return None, Reason.BAD_STATE
        return challenge, None

    async def used(self, state: bytes) -> Challenge | None:
        """The challenge of ``state`` if it was answered already (the caller
        checks user, client and time)."""
        if len(state) != STATE_BYTES:
            return None
        return await self.store.used_challenge(state_digest(state))
