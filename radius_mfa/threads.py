"""Work handed off the reactor: a few threads per kind of work (the store,
password hashes, LDAP), each call's result back on the reactor as a Deferred.

Twisted's ThreadPool does the same, but each call goes through its team
coordination (statistics, growth, a lock worker, a context tracker): a
profile of a loaded server put about a quarter of the reactor thread's CPU
there, for store calls that are themselves a few tens of microseconds of
SQL. Here a call is one put on a queue; results come back on a deque, and
the reactor is woken once for every result that arrived since it last
looked, not once per result.

A call runs in a copy of the caller's contextvars context, so what the
thread logs carries the request's bound ``request_id``.
"""

from __future__ import annotations

import collections
import contextvars
import queue
import threading
import time
from typing import Any, Callable

import structlog
from twisted.internet import defer
from twisted.python.failure import Failure

log = structlog.get_logger("radius_mfa.threads")

# how long stop() waits for a thread busy with a call (an LDAP server that
# hangs must not hold the process up at shutdown; the threads are daemons)
JOIN_SECONDS = 5.0

_STOP = object()


class Executor:
    """Up to ``threads`` threads named ``name-N``, started as calls need them;
    ``run(fn, *args, **kwargs)`` is a runner (``radius_mfa.store.asyncstore``)."""

    def __init__(self, reactor, threads: int, name: str):
        if threads < 1:
            raise ValueError("an executor needs at least one thread")
        self.reactor = reactor
        self.max_threads = threads
        self.name = name
        self.calls = 0                   # handed off since start (read by the metrics)
        self.started = False
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0                   # threads waiting for work (written under _lock)
        self._results: collections.deque = collections.deque()
        self._wake_pending = False       # a _deliver is scheduled (guarded by _lock)
        self._lock = threading.Lock()

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        """Let the threads finish the call they are in, then end them. Calls
        still queued are not run; their Deferreds never fire (the process
        is stopping)."""
        if not self.started:
            return
        self.started = False
        for _ in self._threads:
            self._queue.put(_STOP)
        deadline = time.monotonic() + JOIN_SECONDS          # for all of them together
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred:
        """``fn(*args, **kwargs)`` in one of the threads; its result (or its
        failure) as a Deferred that fires on the reactor."""
        if not self.started:
            return defer.fail(RuntimeError(f"the {self.name} threads are stopped"))
        d: defer.Deferred = defer.Deferred()
        self.calls += 1
        self._queue.put((d, contextvars.copy_context(), fn, args, kwargs))
        if self._queue.qsize() > self._idle and len(self._threads) < self.max_threads:
            self._spawn()                # more waiting than threads free to take it
        return d

    def _spawn(self) -> None:
        thread = threading.Thread(target=self._work, name=f"{self.name}-{len(self._threads)}",
                                  daemon=True)
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        get, finished, lock = self._queue.get, self._finished, self._lock
        while True:
            with lock:
                self._idle += 1
            item = get()
            with lock:
                self._idle -= 1
            if item is _STOP:
                return
            d, context, fn, args, kwargs = item
            try:
                result, ok = context.run(fn, *args, **kwargs), True
            except BaseException:
                result, ok = Failure(), False
            finished(d, ok, result)

    def _finished(self, d: defer.Deferred, ok: bool, result: Any) -> None:
        self._results.append((d, ok, result))
        with self._lock:
            if self._wake_pending:
                return                   # the scheduled _deliver takes this one too
            self._wake_pending = True
        self.reactor.callFromThread(self._deliver)

    def _deliver(self) -> None:
        """On the reactor: fire every Deferred whose call has finished."""
        with self._lock:
            self._wake_pending = False   # before draining: a result added later schedules anew
        results = self._results
        while results:
            d, ok, result = results.popleft()
            try:
                if ok:
                    d.callback(result)
                else:
                    d.errback(result)
            except Exception:            # a callback of ours that raised: keep delivering the rest
                log.exception("threads.deliver_failed", pool=self.name)
