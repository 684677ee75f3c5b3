"""The push factor's rounds: a prompt with the number (challenge mode), or a
request that waits for the device (inline, MS-CHAPv2, second-factor-only);
the answer to a push prompt; a NAS retry of that answer joining its push."""

from __future__ import annotations

from typing import Callable

import structlog

from radius_mfa.challenges import Stage, challenge_data, unpack_attributes
from radius_mfa.config import Mode
from radius_mfa.lockout import Lockout
from radius_mfa.model import Device, Push, User
from radius_mfa.prompts import PUSH_RATE_LIMITED_MESSAGE, push_prompt
from radius_mfa.requests import AuthRequest, Decision, Decisions
from radius_mfa.sessions import Sessions
from radius_mfa.verdicts import Reason
from radius_mfa.verifiers.push import PushFactor

log = structlog.get_logger("radius_mfa.engine")


class PushFlow:
    stage = Stage.PUSH
    words = PushFactor.words

    def __init__(self, factor: PushFactor | None, sessions: Sessions, decisions: Decisions,
                 lockout: Lockout, clock: Callable[[], float]):
        self.factor = factor            # None: factors.push is not configured
        self.sessions = sessions
        self.decisions = decisions
        self.lockout = lockout
        self.clock = clock

    async def devices(self, user: User) -> list[Device]:
        return await self.factor.devices(user) if self.factor is not None else []

    async def offers(self, req: AuthRequest, user: User, word: str) -> bool:
        return bool(await self.devices(user))

    async def begin(self, req: AuthRequest, user: User, word: str, attributes, info: dict) -> Decision:
        """The user answered ``push``."""
        return await self.start(req, user, attributes, info)

    async def start(self, req: AuthRequest, user: User, attributes, info: dict) -> Decision:
        """The device is asked now: a prompt with its number where the client
        can show one (challenge mode), else this request waits for it."""
        if req.client.mode is Mode.CHALLENGE:
            return await self.prompt(req, user, attributes, info)
        return await self.wait(req, user, attributes, info)

    async def prompt(self, req: AuthRequest, user: User, attributes, info: dict) -> Decision:
        """Challenge mode: the push goes out now; the prompt shows its number
        (number matching) and the answer to it waits for the approval."""
        started = await self._start(req, user, self.factor.number_matching)
        if started is None:
            return self.decisions.reject(req, Reason.RATE_LIMITED, user=user, factor="push",
                                         info=info, reply_message=PUSH_RATE_LIMITED_MESSAGE)
        data = challenge_data(attributes, info)
        data.update({"stage": Stage.PUSH.value, "push_id": started.push.id})
        state = await self.sessions.open(user.name, req.client.name, ("push",), data)
        return self.decisions.challenge(req, user, state, push_prompt(started.push.number),
                                        factor="push", info=info)

    async def wait(self, req: AuthRequest, user: User, attributes, info: dict) -> Decision:
        """No prompt possible (second-factor-only, MS-CHAPv2, inline): the
        device shows approve/deny with the context, and this request waits."""
        # the push lives as long as this request waits: a late answer changes nothing
        started = await self._start(req, user, False, lifetime=self.decisions.remaining(req))
        if started is None:
            # the instruction only where a password was checked first
            message = None if req.client.mode is Mode.SECOND_FACTOR_ONLY else PUSH_RATE_LIMITED_MESSAGE
            return self.decisions.reject(req, Reason.RATE_LIMITED, user=user, factor="push",
                                         info=info, reply_message=message)
        return await self._outcome(req, user, started.push, attributes, info)

    async def answer(self, req: AuthRequest, user: User, data: dict, answer: str,
                     attributes, info: dict) -> Decision:
        """The answer to a push prompt (any text, an empty OK too): wait for
        the device's approval."""
        push = await self.factor.find(user, data.get("push_id", "")) if self.factor else None
        if push is None:
            return self.decisions.reject(req, Reason.EXPIRED, user=user, factor="push", info=info)
        return await self._outcome(req, user, push, attributes, info)

    async def join_used_state(self, req: AuthRequest, user: User) -> Decision | None:
        """A NAS retry (new identifier) of the answer to a push prompt, whose
        State the first copy used: it joins that push, and only that one.
        The State must be one we issued to this user and client, answered
        within the client's timeout; an unknown or made-up State joins
        nothing, and the push's compare-and-set still allows one Accept."""
        if self.factor is None:
            return None
        used = await self.sessions.used(req.state)
        if used is None or used.user != user.name or used.client != req.client.name \
                or Stage.of(used.data) is not Stage.PUSH \
                or used.used is None or used.used < self.clock() - req.client.timeout:
            return None
        push = await self.factor.find(user, used.data.get("push_id", ""))
        if push is None:
            return None
        log.info("push.joined", user=user.name, client=req.client.name, push=push.id)
        return await self._outcome(req, user, push, unpack_attributes(used.data.get("attributes", [])),
                                   used.data.get("info", {}))

    async def _start(self, req: AuthRequest, user: User, number_matching: bool,
                     lifetime: float | None = None):
        return await self.factor.start(user, client=req.client.name, client_timeout=req.client.timeout,
                                       calling_station_id=req.calling_station_id,
                                       number_matching=number_matching, lifetime=lifetime)

    async def _outcome(self, req: AuthRequest, user: User, push: Push, attributes,
                       info: dict) -> Decision:
        """Wait for the device's answer, within the client's timeout (less
        what this request has used already) and the push's own."""
        wait = min(self.decisions.remaining(req), push.expires - self.clock())
        result = await self.factor.outcome(user, push, wait)
        if result.ok:
            await self.lockout.clear(user)
        return self.decisions.of(req, user, result, attributes, info)
