"""Duplicate detection for received requests (RFC 5080 section 2.2.2).

A NAS retransmits a request it got no answer to with the same source
address and port, Identifier and Request Authenticator. Such a
retransmission must not run the authentication again (no second SMS, no
second push, no code consumed twice): while the first copy is being worked
on it gets nothing, afterwards it gets the cached reply, byte for byte.

A request from the same source and Identifier with a *different* Request
Authenticator is a new request (the NAS has wrapped its Identifiers or
given up on the old one): it replaces the old entry.

Nothing changes before a packet is authenticated: the server calls
:meth:`DuplicateCache.lookup` first (read only) and :meth:`DuplicateCache.claim`
only once the packet has passed its checks, so a forged copy of a real
request (spoofed source, no secret) can neither replace nor empty its slot.

Dropped requests: :meth:`DuplicateCache.abandon` forgets the entry, so a
retransmission is processed afresh. A drop happens before any factor runs
(bad Message-Authenticator, malformed) or because something failed on our
side (an upstream timed out, which we answer with silence so that the NAS
fails over); in both cases the retransmission deserves another try, and
re-checking a bad packet costs no more than remembering it.

Time comes from ``clock.seconds()`` (``IReactorTime``), so tests drive it
with ``twisted.internet.task.Clock``.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

#: (source ip, source port, packet Identifier, Request Authenticator)
DuplicateKey = tuple[str, int, int, bytes]
_Slot = tuple[str, int, int]


class SecondsClock(Protocol):
    def seconds(self) -> float: ...


class Lookup(enum.Enum):
    """What :meth:`DuplicateCache.check` found."""
    NEW = "new"                  # process it; the key is now in progress
    IN_PROGRESS = "in_progress"  # a retransmission of a request being worked on: send nothing
    CACHED = "cached"            # a retransmission of an answered request: resend ``response``


@dataclass(frozen=True)
class Seen:
    """The answer of :meth:`DuplicateCache.check`: ``kind`` and, for CACHED, the reply."""
    kind: Lookup
    response: bytes | None = None


_NEW = Seen(Lookup.NEW)
_IN_PROGRESS = Seen(Lookup.IN_PROGRESS)


def duplicate_key(source: tuple[str, int], packet_id: int, authenticator: bytes) -> DuplicateKey:
    """The cache key of a datagram from ``source`` = (ip, port), as Twisted gives it."""
    return (source[0], source[1], packet_id, authenticator)


@dataclass
class _Entry:
    authenticator: bytes
    expires: float
    response: bytes | None      # None: in progress


class DuplicateCache:
    """Bounded, expiring map from request key to "in progress" or a reply.

    ``ttl``: how long a reply stays cached after :meth:`finish` (RFC 5080
    suggests the NAS's retransmission window; 30 s covers the usual 3 x 5 s).
    ``in_progress_ttl``: how long an unfinished entry blocks
    retransmissions; generous, because a push or voice call may keep a
    request open for a minute, and a lost :meth:`finish` must not block a
    key forever. ``max_entries``: when exceeded the oldest answered entries
    go first, then the oldest unfinished ones.
    """

    def __init__(self, clock: SecondsClock, ttl: float = 30.0, max_entries: int = 100_000,
                 in_progress_ttl: float = 300.0):
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._clock = clock
        self._ttl = ttl
        self._in_progress_ttl = in_progress_ttl
        self._max_entries = max_entries
        # Two queues, each in expiry order because each has a single ttl.
        self._pending: OrderedDict[_Slot, _Entry] = OrderedDict()
        self._done: OrderedDict[_Slot, _Entry] = OrderedDict()

    def lookup(self, key: DuplicateKey) -> Seen:
        """Classify a received request without changing anything: a packet
        that has not been authenticated yet must not touch the cache (a
        spoofed copy could otherwise empty the slot of a real request)."""
        self._expire()
        slot, authenticator = key[:3], key[3]
        entry = self._find(slot)
        if entry is not None and entry.authenticator == authenticator:
            if entry.response is None:
                return _IN_PROGRESS
            return Seen(Lookup.CACHED, entry.response)
        return _NEW

    def claim(self, key: DuplicateKey) -> None:
        """Mark an authenticated NEW request in progress; it replaces what
        the slot held (the NAS has moved on from that request)."""
        now = self._expire()
        slot, authenticator = key[:3], key[3]
        self._remove(slot)
        self._pending[slot] = _Entry(authenticator, now + self._in_progress_ttl, None)
        self._evict()

    def check(self, key: DuplicateKey) -> Seen:
        """``lookup``, and a NEW request claimed at once (for callers that
        have authenticated the packet already)."""
        seen = self.lookup(key)
        if seen.kind is Lookup.NEW:
            self.claim(key)
        return seen

    def finish(self, key: DuplicateKey, response: bytes) -> None:
        """Cache the reply sent for ``key``.

        Ignored when a newer request (same source and Identifier, another
        authenticator) has taken the slot: its retransmissions must not get
        this reply.
        """
        now = self._expire()
        slot, authenticator = key[:3], key[3]
        entry = self._find(slot)
        if entry is not None and entry.authenticator != authenticator:
            return
        self._remove(slot)
        self._done[slot] = _Entry(authenticator, now + self._ttl, response)
        self._evict()

    def abandon(self, key: DuplicateKey) -> None:
        """Forget a request that was dropped, so a retransmission is processed afresh."""
        self._expire()
        slot, authenticator = key[:3], key[3]
        entry = self._find(slot)
        if entry is not None and entry.authenticator == authenticator:
            self._remove(slot)

    def __len__(self) -> int:
        return len(self._pending) + len(self._done)

    def _find(self, slot: _Slot) -> _Entry | None:
        return self._pending.get(slot) or self._done.get(slot)

    def _remove(self, slot: _Slot) -> None:
        self._pending.pop(slot, None)
        self._done.pop(slot, None)

    def _expire(self) -> float:
        now = self._clock.seconds()
        for queue in (self._pending, self._done):
            while queue:
                oldest = next(iter(queue.values()))
                if oldest.expires > now:
                    break
                queue.popitem(last=False)
        return now

    def _evict(self) -> None:
        while len(self) > self._max_entries:
            (self._done or self._pending).popitem(last=False)
