"""One log line per dropped packet, rate-limited per reason and source, and
capped globally.

RADIUS answers a bad packet with silence, so the log is the only place an
administrator learns that a NAS has the wrong secret or a scanner is
knocking. A flood (a misconfigured NAS retrying, spoofed garbage) must not
flood the log too:

* per (reason, source ip): the first drop is logged at once, later ones
  within ``interval`` seconds are counted, and the count rides on the next
  line logged for that pair (``suppressed=N``);
* globally: at most ``max_lines`` such lines per ``interval``, whatever the
  number of sources (spoofed addresses are free). Drops past the cap are
  counted per reason and reported in one summary line once the interval is
  over (``radius.drop.suppressed``, ``suppressed=N``, ``reasons={...}``).

So a flood writes at most ``max_lines + 1`` lines per ``interval``, and
every drop is accounted for in some line (logged, a pair's ``suppressed``
or the summary's) once :meth:`DropLogger.flush` has run after the burst.

Nothing from the packet's payload is logged: no user name, no password, no
secret; only the reason, where it came from, when known which client, and a
hint at the usual cause (a wrong Message-Authenticator: "shared secret
mismatch?").
"""

from __future__ import annotations

import enum
from collections import Counter, OrderedDict
from typing import Any, Callable, Protocol

from radius_mfa.ratelog import SecondsClock, Window

EVENT = "radius.drop"
SUMMARY_EVENT = "radius.drop.suppressed"


class DropReason(str, enum.Enum):
    """The closed set of reasons a packet is dropped; stable log values."""
    UNKNOWN_CLIENT = "unknown_client"
    BAD_AUTHENTICATOR = "bad_authenticator"
    BAD_MESSAGE_AUTHENTICATOR = "bad_message_authenticator"
    MISSING_MESSAGE_AUTHENTICATOR = "missing_message_authenticator"
    MALFORMED = "malformed"
    UNSUPPORTED_CODE = "unsupported_code"


# The usual cause, on the drop's log line, where one reason nearly always has one.
HINTS = {
    DropReason.BAD_MESSAGE_AUTHENTICATOR: "shared secret mismatch?",
}


class WarningLogger(Protocol):
    def warning(self, event: str, **kw: Any) -> Any: ...


class DropLogger:
    """Log dropped packets, at most one line per (reason, source ip) per
    ``interval`` and at most ``max_lines`` lines per ``interval`` in all
    (plus one summary line of what the cap held back).

    ``max_sources`` bounds the memory a flood of spoofed source addresses
    can take: past it the oldest pairs are forgotten (their next drop is
    logged at once if the global cap allows, and a pending count is lost).

    ``observer``, when given, is called with the reason of every drop,
    logged or not (the metrics count them all).
    """

    def __init__(self, log: WarningLogger, clock: SecondsClock, interval: float = 10.0,
                 max_sources: int = 10_000,
                 observer: Callable[[DropReason], None] | None = None,
                 max_lines: int = 50):
        self._log = log
        self.observer = observer
        self._clock = clock
        self._interval = interval
        self._max_sources = max_sources
        self._max_lines = max_lines
        self._windows: OrderedDict[tuple[DropReason, str], Window] = OrderedDict()
        self._period_start: float | None = None      # the global cap's current interval
        self._lines = 0                              # lines logged in it
        self._held: Counter[DropReason] = Counter()  # drops the cap kept out of the log

    def drop(self, reason: DropReason | str, source_ip: str, *,
             client: str | None = None, detail: str | None = None) -> bool:
        """Record one dropped packet; return whether a line was logged.

        ``detail`` is a short, payload-free explanation (the message of a
        RemoteProtocolError, say "attribute 2 overruns the packet").
        Raises ValueError for a reason outside :class:`DropReason`.
        """
        reason = DropReason(reason)
        if self.observer is not None:
            self.observer(reason)
        now = self._clock.seconds()
        self._roll(now)
        key = (reason, source_ip)
        window = self._windows.get(key)
        if window is not None and now - window.logged_at < self._interval:
            window.suppressed += 1
            return False
        if self._lines >= self._max_lines:
            self._held[reason] += 1
            return False
        suppressed = window.suppressed if window is not None else 0
        self._windows.pop(key, None)
        self._windows[key] = Window(logged_at=now)
        self._forget_old(now)
        self._emit(reason, source_ip, client, detail, suppressed)
        return True

    def flush(self) -> int:
        """Log the pending counts whose interval has passed, and the summary
        of what the global cap held back; return how many lines were
        logged. For a periodic timer or shutdown, so that the tail of a
        burst is not lost when no further drop comes."""
        now = self._clock.seconds()
        lines = self._roll(now)
        for (reason, source_ip), window in list(self._windows.items()):
            if window.suppressed and now - window.logged_at >= self._interval:
                del self._windows[(reason, source_ip)]
                if self._lines >= self._max_lines:
                    self._held[reason] += window.suppressed   # reported by the next summary
                    continue
                self._emit(reason, source_ip, None, None, window.suppressed)
                lines += 1
        return lines

    @property
    def held(self) -> int:
        """Drops the global cap has kept out of the log and not yet summarised."""
        return sum(self._held.values())

    def _roll(self, now: float) -> int:
        """Start a new global interval when the current one is over, after
        logging the summary of the old one; return the lines logged (0 or 1)."""
        if self._period_start is not None and now - self._period_start < self._interval:
            return 0
        logged = 0
        if self._held:
            self._log.warning(SUMMARY_EVENT, suppressed=sum(self._held.values()),
                              reasons={r.value: n for r, n in sorted(self._held.items())},
                              interval=self._interval)
            logged = 1
        self._period_start = now
        self._lines = 0
        self._held.clear()
        return logged

    def _emit(self, reason: DropReason, source_ip: str, client: str | None,
              detail: str | None, suppressed: int) -> None:
        self._lines += 1
        fields: dict[str, Any] = {"reason": reason.value, "source_ip": source_ip}
        if client is not None:
            fields["client"] = client
        if detail is not None:
            fields["detail"] = detail
        if reason in HINTS:
            fields["hint"] = HINTS[reason]
        if suppressed:
            fields["suppressed"] = suppressed
        self._log.warning(EVENT, **fields)

    def _forget_old(self, now: float) -> None:
        """Drop windows that have nothing to report, oldest first, and cap the size."""
        while self._windows:
            window = next(iter(self._windows.values()))
            if window.suppressed or now - window.logged_at < self._interval:
                break
            self._windows.popitem(last=False)
        while len(self._windows) > self._max_sources:
            self._windows.popitem(last=False)
