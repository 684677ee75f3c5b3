"""Push approval: the factor picked by the word ``push``, answered out of
band by a paired device (radius_mfa.push: the hub, the device API).

It works over every method (a device can approve an MS-CHAPv2 sign-in or an
RD Gateway request that carries no password), starts or joins the push of a
login attempt, and waits for the device's answer; the result says whether
this request may be accepted. One approval is one Accept: the compare-and-set
``approved → used`` picks the single request that gets it when NAS retries
wait for the same push. Nothing here builds a RADIUS reply.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import structlog

from radius_mfa.audit import user_ip_from
from radius_mfa.model import Device, Push, PushStatus, User
from radius_mfa.verdicts import Reason
from radius_mfa.verifiers.base import MSCHAPV2, NO_PASSWORD, PAP, FactorKind, FactorResult

log = structlog.get_logger("radius_mfa.engine")

# What a push's outcome means for the sign-in waiting for it.
PUSH_REJECTS = {PushStatus.DENIED: Reason.DENIED, PushStatus.FRAUD: Reason.FRAUD,
                PushStatus.WRONG_NUMBER: Reason.WRONG_NUMBER, PushStatus.PENDING: Reason.TIMEOUT}


class PushFactor:
    name: ClassVar[str] = "push"
    words: ClassVar[frozenset[str]] = frozenset({"push"})
    methods: ClassVar[frozenset[str]] = frozenset({PAP, MSCHAPV2, NO_PASSWORD})
    kind: ClassVar[FactorKind] = FactorKind.OUT_OF_BAND

    def __init__(self, hub, store, clock: Callable[[], float], number_matching: bool = True):
        self.hub = hub                  # radius_mfa.push.hub.PushHub
        self.store = store              # AsyncStore
        self.clock = clock
        self.number_matching = number_matching

    async def devices(self, user: User) -> list[Device]:
        return await self.store.list_devices(user.name)

    async def find(self, user: User, push_id: str) -> Push | None:
        """The push ``push_id`` when it was started for ``user``."""
        push = await self.store.get_push(push_id)
        return push if push is not None and push.user == user.name else None

    async def start(self, user: User, *, client: str, client_timeout: float,
                    calling_station_id: str | None, number_matching: bool,
                    lifetime: float | None = None):
        """Join the push of this login attempt or start one (a ``Started``);
        None when the user's push rate limit is reached."""
        return await self.hub.start(user, client, client_timeout, calling_station_id,
                                    user_ip_from(calling_station_id), number_matching, lifetime)

    async def outcome(self, user: User, push: Push, wait: float) -> FactorResult:
        """Wait up to ``wait`` seconds for the device's answer to ``push``."""
        answered = await self.hub.wait(push.id, wait)
        if answered is None:
            return FactorResult(False, self.name, reason=Reason.EXPIRED)
        if answered.status in (PushStatus.APPROVED, PushStatus.USED):
            # one approval, one Accept: the compare-and-set decides which of
            # the requests waiting for this push (NAS retries) gets it
            if not await self.hub.use(answered):
                return FactorResult(False, self.name, answered.device, Reason.REPLAY)
            return FactorResult(True, self.name, answered.device)
        reason = PUSH_REJECTS.get(answered.status, Reason.TIMEOUT)
        log.info("push.rejected", user=user.name, push=push.id, reason=str(reason))
        return FactorResult(False, self.name, answered.device, reason)
