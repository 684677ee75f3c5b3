"""The audit trail's store copy is written in batches, in order, and survives
a store that fails for a while; on shutdown everything queued is written."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from radius_mfa.auditstore import AuditBatcher
from radius_mfa.errors import StoreError
from radius_mfa.store.asyncstore import AsyncStore, immediate_runner


class Flaky:
    """A real store whose batch writes fail while ``down`` is set, and which
    counts the transactions that reached it."""

    def __init__(self, store):
        self.store = store
        self.down = False
        self.batches: list[int] = []

    def add_auth_records(self, records):
        if self.down:
            raise StoreError("store: add auth records failed: the database is away")
        self.batches.append(len(records))
        self.store.add_auth_records(records)

    def __getattr__(self, name):
        return getattr(self.store, name)


@pytest.fixture
def rig(make_store):
    sync = Flaky(make_store())
    clock = Clock()
    batcher = AuditBatcher(AsyncStore(sync, immediate_runner), clock, clock.seconds,
                           delay=0.1, max_batch=3, max_backlog=5)
    return sync, clock, batcher


def users(sync) -> list[str]:
    return [record.fields["user"] for record in sync.store.auth_records()]


def test_records_wait_for_the_delay_then_go_in_one_transaction(rig):
    sync, clock, batcher = rig
    batcher.keep({"user": "a"})
    batcher.keep({"user": "b"})
    assert users(sync) == []
    clock.advance(0.1)
    assert users(sync) == ["a", "b"] and sync.batches == [2]


def test_a_full_batch_is_written_at_once(rig):
    sync, clock, batcher = rig
    for name in "abcd":
        batcher.keep({"user": name})
    assert users(sync) == ["a", "b", "c"]
    clock.advance(0.1)
    assert users(sync) == ["a", "b", "c", "d"] and sync.batches == [3, 1]
    assert not clock.getDelayedCalls()


def test_a_failing_store_keeps_the_records_in_order_up_to_the_backlog(rig):
    sync, clock, batcher = rig
    sync.down = True
    for name in "abc":
        batcher.keep({"user": name})          # a full batch: tried at once, fails
    for name in "defg":
        batcher.keep({"user": name})
    clock.advance(1.0)                         # the retry fails too
    sync.down = False
    clock.advance(1.0)
    clock.advance(0.1)
    # a backlog of 5: the two oldest were dropped from the store's copy
    assert users(sync) == ["c", "d", "e", "f", "g"]


def test_flush_writes_everything_and_stops_at_a_failure(rig):
    sync, clock, batcher = rig
    for name in "abcde":
        batcher.keep({"user": name})
    done = []
    batcher.flush().addCallback(done.append)
    assert done and users(sync) == list("abcde")
    batcher.keep({"user": "f"})
    sync.down = True
    done.clear()
    batcher.flush().addCallback(done.append)
    assert done                                 # it returns: shutdown is not held up
    assert users(sync) == list("abcde")
