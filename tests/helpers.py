"""Small helpers shared by the tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from radius_mfa.store.sqlite import SqliteStore


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


def open_sqlite(path) -> "SqliteStore":
    """A SQLite store at ``path`` with its key file beside it (``store.key``
    in the same directory): every store opened on one path shares the key."""
    import os

    from radius_mfa.secretbox import SecretBox
    from radius_mfa.store.sqlite import SqliteStore

    path = str(path)
    return SqliteStore(path, SecretBox.from_file(os.path.join(os.path.dirname(os.path.abspath(path)), "store.key")))
