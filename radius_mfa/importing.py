"""What the bulk importers (`token import`, `user import`) share.

Both read a file twice: pass 1 checks every entry and reports every problem
with its place (nothing is written when there is one), pass 2 writes in one
transaction. :class:`Tap` digests the bytes each pass reads, so a file that
changed between the passes is noticed and the transaction rolled back.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from dataclasses import dataclass
from typing import Any, Iterator, TextIO

from radius_mfa.errors import RefusedError

MAX_PROBLEMS = 100              # problems kept for the report; the rest are counted


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the file: where (``users.csv:12``, ``tokens.xml:
    key 3 (serial ABC)`` or the file alone) and what; never a secret."""
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class ImportFailed(RefusedError):
    """Nothing was imported. ``problems``: the first :data:`MAX_PROBLEMS` in
    file order; ``total``: how many there were in all."""

    def __init__(self, problems: list[Problem], total: int | None = None):
        self.problems = list(problems[:MAX_PROBLEMS])
        self.total = len(problems) if total is None else total
        lines = [str(problem) for problem in self.problems]
        if self.total > len(self.problems):
            lines.append(f"… and {self.total - len(self.problems)} more problems")
        super().__init__("\n".join(lines))


class Problems:
    """The first :data:`MAX_PROBLEMS` problems in file order (position 0:
    the file itself, first), and a count of all: a file with 100,000 bad rows
    costs a bounded list, not 100,000 messages."""

    def __init__(self) -> None:
        self._kept: list[tuple[int, int, Problem]] = []     # position, arrival, problem
        self.total = 0

    def add(self, position: int, problem: Problem) -> None:
        self.total += 1
        self._kept.append((position, self.total, problem))
        if len(self._kept) > 2 * MAX_PROBLEMS:
            self._trim()

    def _trim(self) -> None:
        self._kept.sort(key=lambda kept: kept[:2])
        del self._kept[MAX_PROBLEMS:]

    def kept(self) -> list[tuple[int, Problem]]:
        self._trim()
        return [(position, problem) for position, _, problem in self._kept]

    def raise_if_any(self) -> None:
        """ImportFailed with what was found, if anything was."""
        if self.total:
            raise ImportFailed([problem for _, problem in self.kept()], self.total)


class Tap(io.RawIOBase):
    """A binary file that digests and counts the bytes read through it: the
    digest tells whether pass 2 read the file pass 1 checked; the count
    drives the progress bar."""

    def __init__(self, raw: io.RawIOBase):
        self._raw = raw
        self.digest = hashlib.sha256()
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self._raw.readinto(buffer) or 0
        self.digest.update(memoryview(buffer)[:count])
        self.bytes_read += count
        return count

    def finish(self) -> tuple[int, bytes]:
        """Read what the parser left unread; the size and digest of the file."""
        while self.read(1 << 16):
            pass
        return self.bytes_read, self.digest.digest()

    def close(self) -> None:
        self._raw.close()
        super().close()


def open_tap(path: str) -> Tap:
    """``path`` opened for reading through a :class:`Tap`; ImportFailed when
    it cannot be read."""
    try:
        return Tap(open(path, "rb", buffering=0))
    except OSError as exc:
        raise ImportFailed([Problem(path, f"cannot read the file: {exc.strerror or exc}")]) from None


def shows_progress(progress: TextIO | None) -> bool:
    """Whether a progress bar goes to ``progress``: only a terminal."""
    try:
        return progress is not None and progress.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def progress_bar(progress: TextIO | None, what: str, total: int | None, unit: str) -> Iterator[Any]:
    """A tqdm bar on ``progress`` when that is a terminal; a silent stand-in
    otherwise (pipes and log files get no carriage-return noise)."""
    from tqdm import tqdm

    with tqdm(total=total, desc=what, unit=unit, unit_scale=unit == "B", file=progress,
              disable=not shows_progress(progress), leave=False, mininterval=0.2) as bar:
        yield bar
