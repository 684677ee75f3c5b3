"""The engine's side of push approval: start (or join) a push, wait for the
device's answer, and take answers from the device API.

Everything a push is lives in the store, so any server sharing it can start
a push, take the device's answer, or finish the sign-in. Waiting is local: a
request that waits registers here, and is woken at once when the answer
comes through this process's device API, or by one poll of the store every
``poll_interval`` seconds for all waiting pushes together (one query however
many wait) when it came through another process or server.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Callable

import structlog
from twisted.internet import defer, task

from radius_mfa.config import PushConfig
from radius_mfa.model import Device, Push, PushStatus, User

log = structlog.get_logger("radius_mfa.push")

#: Seconds between polls of the store for answers given through another process.
POLL_INTERVAL = 0.5
#: Longest long-poll a device may ask for (below common proxy idle timeouts).
MAX_LONG_POLL = 55.0
#: Seconds between store checks while a device long-polls (answers through
#: this process wake it at once).
LONG_POLL_CHECK = 1.0
#: Final statuses: an answer arrived.
ANSWERED = frozenset(PushStatus) - {PushStatus.PENDING}
DECISION_STATUS = {"approve": PushStatus.APPROVED, "deny": PushStatus.DENIED, "fraud": PushStatus.FRAUD}


class PushRefused(Exception):
    """An answer the device API refuses: the HTTP status and one clear sentence."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


NOT_FOUND = "no such sign-in for this device"
ANSWERED_ALREADY = "this sign-in was answered already"
TOO_LATE = "too late: this sign-in has timed out"
NEEDS_NUMBER = "this sign-in needs the number shown on the sign-in screen"
WRONG_NUMBER = "the number does not match the one on the sign-in screen; the sign-in was denied"


@dataclass(frozen=True)
class Started:
    push: Push
    joined: bool                      # True: a push of the same login attempt was pending


class PushHub:
    def __init__(self, store, *, config: PushConfig, clock: Callable[[], float], reactor,
                 notifier=None, on_fraud: Callable[[Push, Device], None] | None = None,
                 poll_interval: float = POLL_INTERVAL):
        """``store``: the AsyncStore. ``notifier``: wakes the user's devices
        (radius_mfa.push.notify), or None (long-poll alone). ``on_fraud``:
        writes the audit record of a reported fraud."""
        self.store = store
        self.config = config
        self.clock = clock
        self.reactor = reactor
        self.notifier = notifier
        self.on_fraud = on_fraud
        self.poll_interval = poll_interval
        self._waiters: dict[str, list[defer.Deferred]] = {}      # push id → waiting requests
        self._devices: dict[str, list[defer.Deferred]] = {}      # user → waiting long-polls
        self._poller: task.LoopingCall | None = None

    # --- the engine's side ------------------------------------------------------
    async def start(self, user: User, client: str, client_timeout: float,
                    calling_station_id: str | None, user_ip: str | None,
                    number_matching: bool, lifetime: float | None = None) -> Started | None:
        """Join the push of this login attempt (same client, user and
        Calling-Station-Id, within the client's timeout) or start one; None
        when the user's push rate limit is reached. A new push takes answers
        for ``factors.push.timeout`` seconds, or ``lifetime`` when shorter
        (a request that waits: once it has given up, a late answer must
        change nothing)."""
        now = self.clock()
        pending = await self.store.joinable_push(client, user.name, calling_station_id,
                                                 now - client_timeout, now)
        if pending is not None:
            log.info("push.joined", user=user.name, client=client, push=pending.id)
            return Started(pending, joined=True)
        limit = self.config.rate_limit
        if not await self.store.allow_send(user.name, now, limit.sends, limit.minutes * 60.0,
                                           kind="push"):
            log.warning("push.rate_limited", user=user.name, client=client)
            return None
        push = Push(id=secrets.token_hex(16), user=user.name, client=client,
                    calling_station_id=calling_station_id, user_ip=user_ip, created=now,
                    expires=now + min(self.config.timeout,
                                      self.config.timeout if lifetime is None else lifetime),
                    number=10 + secrets.randbelow(90) if number_matching else None)
        await self.store.put_push(push)
        log.info("push.started", user=user.name, client=client, push=push.id,
                 number_matching=push.number is not None)
        self._wake_devices(user.name)
        if self.notifier is not None:
            # fire and forget: a notifier that fails or hangs must not hold the sign-in
            defer.ensureDeferred(self.notifier.notify(push)).addErrback(
                lambda failure: log.error("push.notify_failed", push=push.id,
                                          error=failure.getErrorMessage()))
        return Started(push, joined=False)

    async def wait(self, push_id: str, timeout: float) -> Push | None:
        """The push once answered, or as it stands after ``timeout`` seconds
        (still pending: the caller says ``timeout``). None when it is gone
        (the user was reset meanwhile)."""
        push = await self.store.get_push(push_id)
        if push is None or push.status in ANSWERED or timeout <= 0:
            return push
        self._ensure_polling()
        answered = await self._wait_in(self._waiters, push_id, timeout)
        if answered is not None:
            return answered
        return await self.store.get_push(push_id)       # the timeout: as it stands now

    async def use(self, push: Push) -> bool:
        """An Access-Accept may go out for this approved push: True for the
        first caller only (compare-and-set approved → used), so one approval
        yields one Accept however many requests waited for it."""
        if push.status != PushStatus.APPROVED:
            return False
        return await self.store.use_push(push.id)

    # --- the device's side ------------------------------------------------------
    async def pending_for(self, device: Device, wait: float) -> list[Push]:
        """The device's user's pending pushes, oldest first; when there are
        none, wait up to ``wait`` seconds (at most MAX_LONG_POLL) for one."""
        deadline = self.clock() + min(max(wait, 0.0), MAX_LONG_POLL)
        while True:
            pending = await self.store.pending_pushes(device.user, self.clock())
            remaining = deadline - self.clock()
            if pending or remaining <= 0:
                return pending
            await self._wait_in(self._devices, device.user, min(LONG_POLL_CHECK, remaining))

    async def answer(self, push_id: str, device: Device, decision: str,
                     number: int | None) -> Push:
        """A device's answer, its signature checked already: the push as
        answered, or PushRefused. A wrong number ends the push
        (``wrong_number``) and is refused; a missing one is refused and the
        push stays pending."""
        if decision not in DECISION_STATUS:
            raise PushRefused(400, "decision must be approve, deny or fraud")
        push = await self.store.get_push(push_id)
        if push is None or push.user != device.user:
            raise PushRefused(404, NOT_FOUND)
        now = self.clock()
        if push.status != PushStatus.PENDING:
            raise PushRefused(409, ANSWERED_ALREADY)
        if push.expires <= now:
            raise PushRefused(410, TOO_LATE)
        status = DECISION_STATUS[decision]
        if decision == "approve" and push.number is not None:
            if number is None:
                raise PushRefused(422, NEEDS_NUMBER)
            if not hmac.compare_digest(str(int(number)).encode(), str(push.number).encode()):
                status = PushStatus.WRONG_NUMBER
        answered = await self.store.answer_push(push_id, status, device.id, now)
        if answered is None:
            again = await self.store.get_push(push_id)
            if again is not None and again.status == PushStatus.PENDING:
                raise PushRefused(410, TOO_LATE)
            raise PushRefused(409, ANSWERED_ALREADY)      # another answer won the race
        log.info("push.answered", user=push.user, push=push.id, device=device.id, status=status)
        if status == PushStatus.FRAUD:
            await self._fraud(answered, device)
        self.answered(answered)
        if status == PushStatus.WRONG_NUMBER:
            raise PushRefused(422, WRONG_NUMBER)
        return answered

    def answered(self, push: Push) -> None:
        """Wake the requests of this process that wait for ``push``."""
        _wake(self._waiters, push.id, push)

    async def _fraud(self, push: Push, device: Device) -> None:
        """The user says they did not start this sign-in: deny it (done),
        disable the user, write the ``fraud`` audit record."""
        log.warning("push.fraud_reported", user=push.user, client=push.client, device=device.id,
                    user_ip=push.user_ip)
        try:
            await self.store.update_user(push.user, disabled=True)
        except Exception as exc:          # the user may be gone; the denial stands
            log.error("push.disable_failed", user=push.user, error=str(exc))
        if self.on_fraud is not None:
            try:
                self.on_fraud(push, device)
            except Exception:
                log.exception("push.fraud_audit_failed", push=push.id)

    # --- waking -------------------------------------------------------------------
    def _wake_devices(self, user: str) -> None:
        _wake(self._devices, user, None)

    async def _wait_in(self, registry: dict[str, list[defer.Deferred]], key: str,
                       timeout: float):
        """Wait under ``registry[key]`` until woken (the value it was woken
        with) or ``timeout`` seconds (None); a cancelled wait (a device
        that hung up) leaves no trace in the registry."""
        waiter: defer.Deferred = defer.Deferred()
        registry.setdefault(key, []).append(waiter)
        timer = self.reactor.callLater(timeout, lambda: waiter.called or waiter.callback(None))
        try:
            return await waiter
        finally:
            if timer.active():
                timer.cancel()
            waiting = registry.get(key)
            if waiting is not None:
                if waiter in waiting:
                    waiting.remove(waiter)
                if not waiting:
                    del registry[key]

    def _ensure_polling(self) -> None:
        if self._poller is None or not self._poller.running:
            self._poller = task.LoopingCall(self._poll)
            self._poller.clock = self.reactor
            self._poller.start(self.poll_interval, now=False).addErrback(
                lambda failure: log.error("push.poll_failed", error=failure.getErrorMessage()))

    async def _poll_once(self) -> None:
        ids = list(self._waiters)
        if not ids:
            return
        for push in await self.store.pushes_by_ids(ids):
            if push.status in ANSWERED:
                self.answered(push)

    def _poll(self) -> defer.Deferred | None:
        if not self._waiters:
            if self._poller is not None and self._poller.running:
                self._poller.stop()
            return None
        d = defer.ensureDeferred(self._poll_once())
        # a failed poll is logged and the next one tries again
        return d.addErrback(lambda failure: log.error("push.poll_failed",
                                                      error=failure.getErrorMessage()))

    def stop(self) -> None:
        if self._poller is not None and self._poller.running:
            self._poller.stop()


def _wake(registry: dict[str, list[defer.Deferred]], key: str, value) -> None:
    """Fire every wait registered under ``key`` with ``value``."""
    for waiter in registry.pop(key, []):
        if not waiter.called:
            waiter.callback(value)
