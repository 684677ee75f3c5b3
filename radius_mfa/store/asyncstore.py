"""The store, seen from the reactor: every call runs in a thread pool.

``AsyncStore(store, run)`` exposes the methods of a synchronous
:class:`~radius_mfa.store.base.Store` as awaitables. ``run(fn, *args)``
decides where the call runs: :func:`thread_runner` hands it to a Twisted
thread pool (the server); :func:`immediate_runner` runs it in place (the
engine's unit tests, and the commands, which have no reactor).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool

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

    def __init__(self, store, run: Runner):
        self.sync = store
        self._run = run

    def __getattr__(self, name: str):
        method = getattr(self.sync, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any):
            return self._run(method, *args, **kwargs)

        call.__name__ = name
        setattr(self, name, call)   # cache: __getattr__ runs once per name
        return call
