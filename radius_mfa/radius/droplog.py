"""One log line per dropped packet, rate-limited per reason and source.

RADIUS answers a bad packet with silence, so the log is the only place an
administrator learns that a NAS has the wrong secret or a scanner is
knocking. A flood (a misconfigured NAS retrying, spoofed garbage) must not
flood the log too: the first drop per (reason, source ip) is logged at
once, later ones within ``interval`` seconds are counted, and the count
rides on the next line logged for that pair (``suppressed=N``).

Nothing from the packet's payload is logged: no user name, no password, no
secret; only the reason, where it came from and, when known, which client.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Protocol

EVENT = "radius.drop"


class DropReason(str, enum.Enum):
    """The closed set of reasons a packet is dropped; stable log values."""
    UNKNOWN_CLIENT = "unknown_client"
    BAD_AUTHENTICATOR = "bad_authenticator"
    BAD_MESSAGE_AUTHENTICATOR = "bad_message_authenticator"
    MISSING_MESSAGE_AUTHENTICATOR = "missing_message_authenticator"
    MALFORMED = "malformed"
    UNSUPPORTED_CODE = "unsupported_code"


class WarningLogger(Protocol):
    def warning(self, event: str, **kw: Any) -> Any: ...


class SecondsClock(Protocol):
    def seconds(self) -> float: ...


@dataclass
class _Window:
    logged_at: float
    suppressed: int = 0


class DropLogger:
    """Log dropped packets, at most one line per (reason, source ip) per ``interval``.

    ``max_sources`` bounds the memory a flood of spoofed source addresses
    can take: past it the oldest pairs are forgotten (their next drop is
    logged at once, and a pending count is lost).

    ``observer``, when given, is called with the reason of every drop,
    logged or not (the metrics count them all).
    """

    def __init__(self, log: WarningLogger, clock: SecondsClock, interval: float = 10.0,
                 max_sources: int = 10_000,
                 observer: Callable[[DropReason], None] | None = None):
        self._log = log
        self.observer = observer
        self._clock = clock
        self._interval = interval
        self._max_sources = max_sources
        self._windows: OrderedDict[tuple[DropReason, str], _Window] = OrderedDict()

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
        key = (reason, source_ip)
        window = self._windows.get(key)
        if window is not None and now - window.logged_at < self._interval:
            window.suppressed += 1
            return False
        suppressed = window.suppressed if window is not None else 0
        self._windows.pop(key, None)
        self._windows[key] = _Window(logged_at=now)
        self._forget_old(now)
        self._emit(reason, source_ip, client, detail, suppressed)
        return True

    def flush(self) -> int:
        """Log the pending counts whose interval has passed; return how many
        lines were logged. For a periodic timer or shutdown, so that the
        tail of a burst is not lost when no further drop comes."""
        now = self._clock.seconds()
        lines = 0
        for (reason, source_ip), window in list(self._windows.items()):
            if window.suppressed and now - window.logged_at >= self._interval:
                self._emit(reason, source_ip, None, None, window.suppressed)
                del self._windows[(reason, source_ip)]
                lines += 1
        return lines

    def _emit(self, reason: DropReason, source_ip: str, client: str | None,
              detail: str | None, suppressed: int) -> None:
        fields: dict[str, Any] = {"reason": reason.value, "source_ip": source_ip}
        if client is not None:
            fields["client"] = client
        if detail is not None:
            fields["detail"] = detail
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
