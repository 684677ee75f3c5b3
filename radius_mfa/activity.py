"""What each client sends, remembered for `report clients` and for `auto`.

Counting every request with a write to the store would put a database round
trip on every packet; instead the counts gather here and are written every
few seconds (and at shutdown). Whether a client has ever sent a
Message-Authenticator is known at once in memory, which is what
``require_message_authenticator: auto`` needs: required once seen. Each
flush also reads back what the store knows, so that once any worker or any
server sharing the store has seen a client send one, every one of them
requires it within a flush interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import structlog

from radius_mfa.model import ClientSeen

log = structlog.get_logger("radius_mfa.activity")


@dataclass
class _Pending:
    count_with: int = 0
    count_without: int = 0
    last: float = 0.0


class ClientActivity:
    def __init__(self, store, seen: Iterable[ClientSeen] = ()):
        self.store = store                    # AsyncStore
        self._pending: dict[str, _Pending] = {}
        self._drops: dict[tuple[str, str], tuple[int, float]] = {}
        self._sends_ma: set[str] = {s.name for s in seen
                                    if s.last_with_message_authenticator is not None}

    def note(self, client: str, now: float, with_message_authenticator: bool) -> None:
        pending = self._pending.setdefault(client, _Pending())
        if with_message_authenticator:
            pending.count_with += 1
            self._sends_ma.add(client)
        else:
            pending.count_without += 1
        pending.last = now

    def note_drop(self, client: str, reason: str, now: float) -> None:
        """A request from ``client`` dropped unanswered (`report clients`)."""
        count, last = self._drops.get((client, reason), (0, now))
        self._drops[(client, reason)] = (count + 1, max(last, now))

    def has_sent_message_authenticator(self, client: str) -> bool:
        return client in self._sends_ma

    async def flush(self) -> None:
        """Write what gathered since the last flush; a store error keeps it for the next."""
        pending, self._pending = self._pending, {}
        drops, self._drops = self._drops, {}
        if drops:
            try:
                await self.store.note_client_drops(
                    [(client, reason, count, last) for (client, reason), (count, last) in drops.items()])
            except Exception as exc:   # the store is down: keep the counts for the next flush
                log.warning("activity.flush_failed", error=str(exc))
                for key, (count, last) in drops.items():
                    more, later = self._drops.get(key, (0, last))
                    self._drops[key] = (count + more, max(last, later))
        for client, p in pending.items():
            try:
                if p.count_with:
                    await self.store.note_client_request(client, p.last, True, p.count_with)
                if p.count_without:
                    await self.store.note_client_request(client, p.last, False, p.count_without)
            except Exception as exc:   # the store is down: keep the counts, try again later
                log.warning("activity.flush_failed", client=client, error=str(exc))
                again = self._pending.setdefault(client, _Pending())
                again.count_with += p.count_with
                again.count_without += p.count_without
                again.last = max(again.last, p.last)
        try:
            seen = await self.store.list_clients_seen()
        except Exception as exc:
            log.warning("activity.refresh_failed", error=str(exc))
            return
        self._sends_ma.update(s.name for s in seen if s.last_with_message_authenticator is not None)
