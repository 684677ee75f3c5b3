"""Small helpers shared by the tests."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


def run(coro):
    """Drive a coroutine whose awaits all fire at once (immediate runner)."""
    results = []
    Deferred.fromCoroutine(coro).addBoth(results.append)
    assert results, "the coroutine waited on something that never fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


class FakeClock:
    """Epoch seconds that only move when a test moves them."""

    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
