"""The ``local`` backend: passwords kept in the store as slow salted hashes.

Hashing runs in a thread pool (``run``): it is the slow part of a request and
must never hold the reactor.

Timing floor. Every check costs at least one verification of the configured
hash (``passwords`` section): an unknown user, a user without a password, a
locked or disabled one (the engine calls :meth:`LocalBackend.equalize`) runs a
dummy check of the configured scheme; a carried-over hash weaker than the
configured one (another scheme, fewer iterations, a malformed value) is
verified and then padded with that dummy check. Nothing distinguishes a known
user, nor a migrated one, by the time of the answer.

Rehash. A right password checked against a weaker hash is hashed again with
the configured scheme and written back (in the hash pool, off the reactor),
unless the stored hash changed meanwhile (``user update`` set a new
password). A failure is logged, not fatal: the next sign-in tries again.

Deadline. A check that waited longer than the request's ``deadline`` before it
could start is not run: the NAS has given up, so hashing would only delay the
requests behind it. The result is ``Reason.OVERLOADED`` (the engine answers
nothing). With ``concurrency`` the backend keeps its own queue and hands the
pool at most that many checks at a time, oldest first while the queue is
fresh and newest first once its oldest check has waited ``lifo_after``
seconds: under a flood the requests a NAS still waits for are served, and the
stale ones expire unhashed (adaptive LIFO).
"""

from __future__ import annotations

import functools
import inspect
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import structlog
from twisted.internet import defer
from twisted.python.failure import Failure

from radius_mfa import passwords
from radius_mfa.config import PasswordsConfig
from radius_mfa.primary.base import PrimaryRequest, PrimaryResult
from radius_mfa.verdicts import Reason

log = structlog.get_logger("radius_mfa.primary.local")

LIFO_AFTER_SECONDS = 1.0       # the oldest queued check waited this long: newest first
MAX_QUEUED = 10_000            # checks waiting at most; beyond, the oldest is dropped
REHASH_WAIT_SECONDS = 60.0     # a rehash that cannot start within this is left for next time


class _Expired:
    """What a check returns when it was due to start after its deadline."""

    def __repr__(self) -> str:
        return "EXPIRED"


EXPIRED = _Expired()


def verify_padded(password: bytes, encoded: str, config: PasswordsConfig) -> bool:
    """Verify ``password`` against a hash weaker than the configured one,
    then spend one dummy check of the configured hash: never faster than a
    user with a current hash."""
    ok = passwords.verify_password(password, encoded)
    passwords.verify_dummy(password, config)
    return ok


class LocalBackend:
    name = "local"
    supports_mschap = False

    def __init__(self, run, config: PasswordsConfig | None = None, *, store=None,
                 clock: Callable[[], float] | None = None, concurrency: int | None = None,
                 lifo_after: float = LIFO_AFTER_SECONDS):
        """``run(fn, *args)``: an awaitable of ``fn(*args)`` run off the
        reactor (a Deferred). ``config``: the ``passwords`` section.
        ``store``: the synchronous store rehashed hashes are written to (None:
        no rehash). ``clock``: the engine's clock; when given, a request's
        ``received`` (same clock) starts its deadline, else the moment the
        backend is asked. ``concurrency``: checks handed to ``run`` at once
        (the hash pool's threads); None hands every check over at once."""
        self._run = run
        self._config = config if config is not None else PasswordsConfig()
        passwords.needs_rehash("", self._config)   # ValueError now for a bad section
        self._store = store
        self._clock = clock if clock is not None else time.monotonic
        self._received_clock = clock is not None
        self._queue = _CheckQueue(run, self._clock, concurrency, lifo_after)
        self.rehashes: set[defer.Deferred] = set()    # in flight, for tests and shutdown

    async def authenticate(self, request: PrimaryRequest) -> PrimaryResult:
        user, password = request.user, request.password
        if password is None:
            return PrimaryResult(False, Reason.BAD_REQUEST)
        start_by = self._start_by(request.deadline, request.received)
        if user is None or not user.password_hash:
            if await self._dummy(password, start_by) is EXPIRED:
                return PrimaryResult(False, Reason.OVERLOADED)
            return PrimaryResult(False, Reason.UNKNOWN_USER if user is None else Reason.BAD_PASSWORD)
        encoded = user.password_hash
        weaker = passwords.needs_rehash(encoded, self._config)
        if weaker:
            ok = await self._queue.submit(start_by, verify_padded, password, encoded, self._config)
        else:
            ok = await self._queue.submit(start_by, passwords.verify_password, password, encoded)
        if ok is EXPIRED:
            return PrimaryResult(False, Reason.OVERLOADED)
        if not ok:
            return PrimaryResult(False, Reason.BAD_PASSWORD)
        if weaker and self._store is not None:
            self._rehash(user.name, password, encoded)
        return PrimaryResult(True)

    async def equalize(self, password: bytes, *, deadline: float | None = None,
                       received: float | None = None) -> bool:
        """One dummy check of the configured hash (locked, disabled, bad
        name): the same cost as any other answer. ``deadline`` and
        ``received`` as in :class:`PrimaryRequest`; False when the check
        waited past the deadline and was not run (no answer is due then)."""
        return await self._dummy(password, self._start_by(deadline, received)) is not EXPIRED

    @property
    def expired(self) -> int:
        """Checks dropped unrun because they waited past their deadline."""
        return self._queue.expired

    async def _dummy(self, password: bytes, start_by: float | None):
        return await self._queue.submit(start_by, passwords.verify_dummy, password, self._config)

    def _start_by(self, deadline: float | None, received: float | None) -> float | None:
        """The latest time, on the backend's clock, a check may start."""
        if deadline is None:
            return None
        if not self._received_clock or received is None:
            received = self._clock()
        return received + deadline

    # --- rehash ---------------------------------------------------------------------
    def _rehash(self, name: str, password: bytes, old: str) -> None:
        """Replace ``old`` by a hash of the configured scheme, in the hash
        pool; not awaited: the answer does not wait for it."""
        start_by = self._clock() + REHASH_WAIT_SECONDS
        d = defer.ensureDeferred(self._queue.submit(
            start_by, _replace_hash, self._store, name, password, old, self._config))
        self.rehashes.add(d)

        def done(outcome):
            self.rehashes.discard(d)
            if isinstance(outcome, Failure):
                log.warning("password.rehash_failed", user=name,
                            error=outcome.type.__name__, detail=_detail(outcome.value))
            elif outcome is EXPIRED:
                log.info("password.rehash_deferred", user=name,
                         detail="the hash pool was busy; the next sign-in tries again")
            elif outcome:
                log.info("password.rehashed", user=name, scheme=self._config.scheme)
            return None

        d.addBoth(done)


def _replace_hash(store, name: str, password: bytes, old: str, config: PasswordsConfig) -> bool:
    """In the hash pool: hash ``password`` with ``config`` and store it in
    place of ``old``; False when the stored hash is no longer ``old`` (changed
    meanwhile) or the user is gone."""
    new = passwords.hash_password(password, config)
    current = store.get_user(name)
    if current is None or current.password_hash != old:
        return False
    store.update_user(name, password_hash=new)
    return True


def _detail(exc: BaseException) -> str:
    # store errors say what failed, never the values: safe to log
    from radius_mfa.errors import StoreError

    return str(exc)[:200] if isinstance(exc, StoreError) else ""


# --- the queue in front of the hash pool ---------------------------------------------


@dataclass
class _Waiting:
    start_by: float | None
    queued: float
    fn: Callable[..., Any]
    args: tuple
    result: defer.Deferred


class _CheckQueue:
    """Hands checks to ``run`` with at most ``concurrency`` in flight; a check
    whose ``start_by`` has passed when its turn comes returns EXPIRED unrun
    (also checked in the pool's thread, as it starts)."""

    def __init__(self, run, clock: Callable[[], float], concurrency: int | None,
                 lifo_after: float):
        if concurrency is not None and concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._run = run
        self._clock = clock
        self._concurrency = concurrency
        self._lifo_after = lifo_after
        self._waiting: deque[_Waiting] = deque()
        self._active = 0
        self.expired = 0               # checks dropped unrun (counted for tests and metrics)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def submit(self, start_by: float | None, fn: Callable[..., Any], *args: Any) -> Any:
        if self._concurrency is None:
            outcome = await self._start(start_by, fn, args)
            if outcome is EXPIRED:
                self.expired += 1
            return outcome
        result: defer.Deferred = defer.Deferred()
        self._waiting.append(_Waiting(start_by, self._clock(), fn, args, result))
        if len(self._waiting) > MAX_QUEUED:
            self._drop(self._waiting.popleft())
        self._pump()
        return await result

    def _start(self, start_by: float | None, fn: Callable[..., Any], args: tuple) -> defer.Deferred:
        if start_by is not None and self._clock() > start_by:
            return defer.succeed(EXPIRED)
        guarded = fn if start_by is None else _guard(fn, start_by, self._clock)
        outcome = self._run(guarded, *args)
        if inspect.iscoroutine(outcome):
            outcome = defer.ensureDeferred(outcome)
        return outcome

    def _pump(self) -> None:
        while self._waiting and self._active < self._concurrency:
            entry = self._next()
            if entry is None:
                return
            self._active += 1
            try:
                started = self._start(entry.start_by, entry.fn, entry.args)
            except BaseException:
                started = defer.fail()
            started.addBoth(self._finished, entry.result)

    def _next(self) -> _Waiting | None:
        """The next check to start: expired ones at the old end dropped first."""
        now = self._clock()
        while self._waiting and _due(self._waiting[0], now):
            self._drop(self._waiting.popleft())
        if not self._waiting:
            return None
        if now - self._waiting[0].queued < self._lifo_after:
            return self._waiting.popleft()
        return self._waiting.pop()

    def _drop(self, entry: _Waiting) -> None:
        self.expired += 1
        entry.result.callback(EXPIRED)

    def _finished(self, outcome, result: defer.Deferred):
        self._active -= 1
        if outcome is EXPIRED:
            self.expired += 1
        self._pump()
        if isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(outcome)
        return None


def _due(entry: _Waiting, now: float) -> bool:
    return entry.start_by is not None and now > entry.start_by


def _guard(fn: Callable[..., Any], start_by: float, clock: Callable[[], float]):
    """``fn`` that returns EXPIRED instead of running when it starts late (a
    pool shared with another backend, say); same name, for the call counts."""

    @functools.wraps(fn)
    def guarded(*args: Any) -> Any:
        if clock() > start_by:
            return EXPIRED
        return fn(*args)

    return guarded


class NoPrimary:
    """``backend: none``: no password is checked anywhere (the NAS did it)."""

    name = "none"
    supports_mschap = False

    async def authenticate(self, request: PrimaryRequest) -> PrimaryResult:
        if request.user is None:
            return PrimaryResult(False, Reason.UNKNOWN_USER)
        return PrimaryResult(True)

    async def equalize(self, password: bytes, **_deadline) -> None:
        return None
