"""The store, seen from the reactor: every call runs in a thread pool.

``AsyncStore(store, run)`` exposes the methods of a synchronous
:class:`~radius_mfa.store.base.Store` as awaitables. ``run(fn, *args)``
decides where the call runs: :func:`thread_runner` hands it to a Twisted
thread pool (the server); :func:`immediate_runner` runs it in place (the
engine's unit tests, and the commands, which have no reactor).

``on_error(operation)``, when given, is told of every call that fails with
:class:`~radius_mfa.errors.StoreError` (the metrics count store errors by
method name); the failure still reaches the caller unchanged.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import structlog
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool

from radius_mfa.errors import StoreError

log = structlog.get_logger("radius_mfa.store")

Runner = Callable[..., Awaitable[Any]]


def immediate_runner(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred:
    """Run ``fn`` now, in this thread; the result as an already-fired Deferred."""
    return defer.maybeDeferred(fn, *args, **kwargs)


def thread_runner(reactor, pool) -> Runner:
    """A runner that executes each call in ``pool`` (a started ThreadPool)."""

    def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred:
        return deferToThreadPool(reactor, pool, fn, *args, **kwargs)

    return run


class AsyncStore:
    """Awaitable facade over a synchronous store."""

    def __init__(self, store, run: Runner, *, on_error: Callable[[str], None] | None = None):
        self.sync = store
        self._run = run
        self.on_error = on_error

    def __getattr__(self, name: str):
        method = getattr(self.sync, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any):
            result = self._run(method, *args, **kwargs)
            if self.on_error is not None and isinstance(result, defer.Deferred):
                result.addErrback(self._report, name)
            return result

        call.__name__ = name
        setattr(self, name, call)   # cache: __getattr__ runs once per name
        return call

    def _report(self, failure, operation: str):
        if failure.check(StoreError) and self.on_error is not None:
            try:
                self.on_error(operation)
            except Exception:           # counting must never change what the caller sees
                log.exception("store.on_error_failed", operation=operation)
        return failure
