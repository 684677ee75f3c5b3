"""The lockout, seen from the engine: an attempt is taken and counted in one
store statement *before* an answer is checked (so a burst of guesses gets no
further than ``policy.lockout.failures`` however many arrive at once), and
settled once the answer is known."""

from __future__ import annotations

from typing import Callable

import structlog

from radius_mfa.config import LockoutConfig
from radius_mfa.model import Attempt, SignIn, User
from radius_mfa.verdicts import COUNTS_AS_FAILURE, Reason

log = structlog.get_logger("radius_mfa.engine")


class Lockout:
    def __init__(self, store, config: LockoutConfig, clock: Callable[[], float]):
        self.store = store          # AsyncStore
        self.config = config
        self.clock = clock

    async def take(self, user: User) -> Attempt | None:
        """One attempt at an answer, taken and counted in one store step
        before the answer is checked; None: the user is locked."""
        return await self.store.take_attempt(user.name, self.clock(), self.config.failures,
                                             self.config.minutes * 60.0)

    async def begin(self, name: str) -> SignIn:
        """The first round's store step: the user, their tokens, and the
        attempt for the password taken as :meth:`take` takes it."""
        return await self.store.begin_sign_in(name, self.clock(), self.config.failures,
                                              self.config.minutes * 60.0)

    async def settle(self, user: User | None, attempt: Attempt | None, reason: Reason | None,
                     accepted: bool = False) -> None:
        """What the answer of ``attempt`` turned out to be. A wrong one
        (``reason`` counts as a failure) was counted when it was taken; an
        accepted one ends the run of failures; anything else (a right
        password, a code sent, an upstream down) gives the attempt back. A
        lock the attempt set stays only for a wrong answer."""
        if user is None or attempt is None:
            return
        if not accepted and reason in COUNTS_AS_FAILURE:
            if attempt.locked_until is not None:
                log.warning("auth.locked", user=user.name, minutes=self.config.minutes)
            return
        await self.store.finish_attempt(user.name, attempt, success=accepted)

    async def clear(self, user: User) -> None:
        """A success ends the user's run of bad answers. Most users have none
        on record: then there is nothing to write, and no write lock to take
        (on SQLite every UPDATE takes it, even one that changes no row)."""
        if user.failures:
            await self.store.clear_failures(user.name)
