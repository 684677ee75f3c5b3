"""RFC 5080 duplicate detection, driven by a fake clock."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from radius_mfa.radius.dupcache import DuplicateCache, Lookup, duplicate_key

AUTH_A = bytes(range(16))
AUTH_B = bytes(range(1, 17))
KEY = ("192.0.2.1", 40000, 7, AUTH_A)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(clock) -> DuplicateCache:
    return DuplicateCache(clock, ttl=30.0, max_entries=100, in_progress_ttl=120.0)


def test_first_sight_is_new_then_in_progress(cache):
    assert cache.check(KEY).kind is Lookup.NEW
    assert cache.check(KEY).kind is Lookup.IN_PROGRESS


def test_retransmission_gets_the_cached_response(cache):
    cache.check(KEY)
    cache.finish(KEY, b"reply")
    result = cache.check(KEY)
    assert result.kind is Lookup.CACHED and result.response == b"reply"


def test_cached_response_expires_after_ttl(cache, clock):
    cache.check(KEY)
    clock.advance(100)                        # a long push; still in progress
    assert cache.check(KEY).kind is Lookup.IN_PROGRESS
    cache.finish(KEY, b"reply")
    clock.advance(29.9)
    assert cache.check(KEY).kind is Lookup.CACHED
    clock.advance(0.2)
    assert cache.check(KEY).kind is Lookup.NEW


def test_in_progress_entry_expires_after_its_bound(cache, clock):
    cache.check(KEY)
    clock.advance(120)
    assert cache.check(KEY).kind is Lookup.NEW


def test_same_id_with_another_authenticator_is_a_new_request(cache):
    cache.check(KEY)
    cache.finish(KEY, b"old reply")
    newer = KEY[:3] + (AUTH_B,)
    assert cache.check(newer).kind is Lookup.NEW
    assert cache.check(newer).kind is Lookup.IN_PROGRESS
    assert cache.check(KEY).kind is Lookup.NEW             # the old one was replaced


def test_late_finish_of_a_replaced_request_is_ignored(cache):
    cache.check(KEY)
    newer = KEY[:3] + (AUTH_B,)
    cache.check(newer)
    cache.finish(KEY, b"stale")
    assert cache.check(newer).kind is Lookup.IN_PROGRESS
    cache.finish(newer, b"fresh")
    assert cache.check(newer).response == b"fresh"


@pytest.mark.parametrize("other", [
    ("192.0.2.2", 40000, 7, AUTH_A),
    ("192.0.2.1", 40001, 7, AUTH_A),
    ("192.0.2.1", 40000, 8, AUTH_A),
])
def test_source_and_id_are_part_of_the_key(cache, other):
    cache.check(KEY)
    assert cache.check(other).kind is Lookup.NEW


def test_abandoned_request_is_processed_afresh(cache):
    cache.check(KEY)
    cache.abandon(KEY)
    assert cache.check(KEY).kind is Lookup.NEW


def test_abandon_does_not_forget_a_newer_request(cache):
    cache.check(KEY)
    newer = KEY[:3] + (AUTH_B,)
    cache.check(newer)
    cache.abandon(KEY)
    assert cache.check(newer).kind is Lookup.IN_PROGRESS


def test_size_is_bounded_evicting_answered_entries_first(clock):
    cache = DuplicateCache(clock, max_entries=3)
    keys = [("192.0.2.1", 1000 + i, 1, AUTH_A) for i in range(4)]
    cache.check(keys[0])                      # stays in progress
    for key in keys[1:3]:
        cache.check(key)
        cache.finish(key, b"r")
    cache.check(keys[3])                      # the fourth entry evicts the oldest answered one
    assert len(cache) == 3
    assert cache.check(keys[0]).kind is Lookup.IN_PROGRESS
    assert cache.check(keys[2]).kind is Lookup.CACHED
    assert cache.check(keys[1]).kind is Lookup.NEW


def test_expired_entries_are_purged(cache, clock):
    for port in range(50):
        key = ("192.0.2.1", port, 1, AUTH_A)
        cache.check(key)
        cache.finish(key, b"r")
    clock.advance(31)
    cache.check(KEY)
    assert len(cache) == 1


def test_finish_after_expiry_caches_again(cache, clock):
    cache.check(KEY)
    clock.advance(121)
    cache.finish(KEY, b"late")
    assert cache.check(KEY).response == b"late"


def test_duplicate_key_from_a_twisted_address():
    assert duplicate_key(("192.0.2.1", 40000), 7, AUTH_A) == KEY


def test_max_entries_must_be_positive(clock):
    with pytest.raises(ValueError):
        DuplicateCache(clock, max_entries=0)
