"""The audit trail's copy in the store, written in batches.

Every answered request leaves one audit record: a line in the audit file at
once, and a row in the store for `report auth` and `report usage`. One
INSERT per request was the largest single cost of a sign-in under load (a
profile with 1,000 requests in flight put more store time into it than into
the TOTP replay guard, because on SQLite every write takes the one write
lock). So rows gather here for at most ``delay`` seconds, or until
``max_batch`` have, and go in one transaction.

What this gives up: a row reaches the store up to ``delay`` later than the
line reaches the file (the file is the trail of record; the store's copy
feeds reports). On SIGTERM everything gathered is written before the process
exits. A store that fails keeps the rows for the next try, up to
``max_backlog``; beyond that the oldest are dropped from the store's copy
(never from the file), with an error in the log.
"""

from __future__ import annotations

from typing import Callable

import structlog
from twisted.internet import defer

from radius_mfa.model import AuthRecord

log = structlog.get_logger("radius_mfa.audit")


class AuditBatcher:
    def __init__(self, store, reactor, clock: Callable[[], float], *, delay: float = 0.1,
                 max_batch: int = 500, max_backlog: int = 100_000):
        self.store = store                 # AsyncStore
        self.reactor = reactor
        self.clock = clock
        self.delay = delay
        self.max_batch = max_batch
        self.max_backlog = max_backlog
        self._pending: list[AuthRecord] = []
        self._timer = None
        self._writing: defer.Deferred | None = None
        self._waiters: list[defer.Deferred] = []
        self._failures = 0

    def keep(self, fields: dict) -> None:
        """Queue one record (the audit log's ``keep`` hook)."""
        self._pending.append(AuthRecord(time=self.clock(), fields=fields))
        if len(self._pending) >= self.max_batch:
            self._write_now()
        elif self._timer is None:
            self._timer = self.reactor.callLater(self.delay, self._write_now)

    def flush(self) -> defer.Deferred:
        """Write everything queued, batch after batch; fires when the store
        has it all, or after the first batch that fails (kept for later)."""
        return defer.Deferred.fromCoroutine(self._flush())

    async def _flush(self) -> None:
        while True:
            if self._writing is None:
                self._write_now()
                if self._writing is None:
                    return                 # nothing left
            failures = self._failures
            await self._batch_done()
            if self._failures != failures:
                return

    def _batch_done(self) -> defer.Deferred:
        waiter: defer.Deferred = defer.Deferred()
        self._waiters.append(waiter)
        return waiter

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _write_now(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if self._writing is not None or not self._pending:
            return                         # one batch at a time; the rest follows it
        batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
        d = defer.maybeDeferred(self.store.add_auth_records, batch)
        self._writing = d
        d.addCallbacks(self._written, self._failed, errbackArgs=(batch,))

    def _written(self, _) -> None:
        self._writing = None
        self._wake()
        if len(self._pending) >= self.max_batch:
            self._write_now()
        elif self._pending and self._timer is None:
            self._timer = self.reactor.callLater(self.delay, self._write_now)

    def _failed(self, failure, batch: list[AuthRecord]) -> None:
        self._writing = None
        self._failures += 1
        self._pending[:0] = batch          # kept, in order, for the next try
        dropped = len(self._pending) - self.max_backlog
        if dropped > 0:
            del self._pending[:dropped]
        log.error("audit.store_failed", error=failure.getErrorMessage(), queued=len(self._pending),
                  dropped=max(dropped, 0))
        if self._timer is None:
            self._timer = self.reactor.callLater(max(self.delay, 1.0), self._write_now)
        self._wake()
