"""A log event that repeats (a dead upstream, a store outage) logged at most
once per interval, with a count of the lines it held back.

The first occurrence is logged at once. Later ones within ``interval``
seconds of the last line are counted; the next line logged carries the count
as ``suppressed=N``. :meth:`RateLimitedLog.flush` reports a count whose
interval has passed when nothing else came to carry it (call it from a
timer, and at shutdown).

An optional ``key`` keeps separate windows (one per upstream server, per
exception type); at most ``max_keys`` of them are kept, and occurrences
beyond that share one window, so that no input can grow the memory.

Pure: the clock is passed in (anything with ``seconds()``, e.g. the reactor
or ``twisted.internet.task.Clock``); nothing is scheduled here.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Protocol

LEVELS = frozenset({"debug", "info", "warning", "error", "exception", "critical"})
_OVERFLOW = object()                  # the window shared by keys beyond max_keys


class SecondsClock(Protocol):
    def seconds(self) -> float: ...


@dataclass
class Window:
    logged_at: float
    suppressed: int = 0


class RateLimitedLog:
    """``event`` logged on ``logger`` at ``level`` at most once per
    ``interval`` seconds (per ``key``).

    ``context``: fields added to every line (a backend's name, say).
    A summary line from :meth:`flush` carries ``context``, ``suppressed``
    and ``interval`` only: the fields of the occurrences it counts are gone.
    """

    def __init__(self, logger: Any, event: str, *, clock: SecondsClock, interval: float = 60.0,
                 level: str = "warning", context: dict[str, Any] | None = None,
                 max_keys: int = 64):
        if level not in LEVELS:
            raise ValueError(f"level {level!r} is not one of {sorted(LEVELS)}")
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.event = event
        self.interval = interval
        self._logger = logger
        self._level = level
        self._clock = clock
        self._context = dict(context or {})
        self._max_keys = max_keys
        self._windows: dict[Hashable, Window] = {}

    def due(self, key: Hashable = None) -> bool:
        """Whether :meth:`emit` would log a line now: lets a caller skip
        building a costly field (a traceback) for an occurrence only counted."""
        window = self._windows.get(self._slot(key))
        return window is None or self._clock.seconds() - window.logged_at >= self.interval

    def emit(self, key: Hashable = None, **fields: Any) -> bool:
        """One occurrence: log it (with ``suppressed=N`` when lines were held
        back since the last one) or count it. True when a line was logged."""
        slot = self._slot(key)
        now = self._clock.seconds()
        window = self._windows.get(slot)
        if window is not None and now - window.logged_at < self.interval:
            window.suppressed += 1
            return False
        suppressed = window.suppressed if window is not None else 0
        self._windows[slot] = Window(logged_at=now)
        line = {**self._context, **fields}
        if suppressed:
            line["suppressed"] = suppressed
        self._emit_line(self.event, **line)
        return True

    def flush(self) -> int:
        """Log the counts whose interval has passed (one summary line per
        window) and forget idle windows; return the number of lines."""
        now = self._clock.seconds()
        lines = 0
        for slot, window in list(self._windows.items()):
            if now - window.logged_at < self.interval:
                continue
            if window.suppressed:
                self._emit_line(self.event, **self._context, suppressed=window.suppressed,
                                interval=self.interval)
                lines += 1
            del self._windows[slot]
        return lines

    @property
    def suppressed(self) -> int:
        """Occurrences counted and not yet reported, over every key."""
        return sum(window.suppressed for window in self._windows.values())

    def _emit_line(self, event: str, **fields: Any) -> None:
        getattr(self._logger, self._level)(event, **fields)   # looked up each time: loggers get reconfigured

    def _slot(self, key: Hashable) -> Hashable:
        if key in self._windows or len(self._windows) < self._max_keys:
            return key
        return _OVERFLOW
