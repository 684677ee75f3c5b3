"""QR codes for enrolment: drawn in a terminal, or written as an SVG or PNG file.

segno (pure Python) builds the code; we only choose how to draw it.

In a terminal every cell carries explicit colours, dark modules black and
light modules white as 256-colour indices 16 and 231, which terminal
themes leave alone (unlike the 16 basic colours), so the code reads the
same on light and dark themes. A quiet zone of four light modules
surrounds it (ISO/IEC 18004). Each line ends with a colour reset, so
nothing bleeds into the rest of the terminal.

Two drawings, both with square modules:

- full blocks, a module two cells wide and one line tall, the dark cells
  also drawn as the block character (so a light terminal without colours
  still shows dark on light); the drawing, unless the terminal is too
  narrow for it;
- half blocks, a module one cell wide and half a line tall (the upper half
  block, its foreground the upper module, its background the lower one),
  half the width: a typical ``otpauth://`` URI is a 57-module code with
  its quiet zone, 114 columns in full blocks, 57 in half blocks, and a
  code cut by line wrapping cannot be scanned.

A stream that cannot encode the block characters (an ASCII-only locale)
gets the full-block drawing made of spaces on the explicit background
colours, which is ASCII only.
"""

from __future__ import annotations

import codecs
import os
from typing import TextIO

import segno

QUIET_ZONE = 4                      # modules of light border, as the standard asks
FULL_BLOCK = "\u2588"
UPPER_HALF = "\u2580"
BLACK, WHITE = 16, 231              # 256-colour indices: #000000, #ffffff
RESET = "\x1b[0m"
IMAGE_KINDS = ("svg", "png")
IMAGE_SCALE = 8                     # pixels per module in a written image


def make(data: str) -> segno.QRCode:
    """The QR code of ``data`` (an ``otpauth://`` URI, a pairing link).

    Error correction level M: the default of authenticator-app enrolment
    screens, and sturdy enough for a photographed screen."""
    return segno.make(data, error="m", micro=False)


def _can_encode(out: TextIO, chars: str) -> bool:
    """True when ``out`` can carry ``chars``."""
    encoding = getattr(out, "encoding", None) or "utf-8"
    try:
        codecs.lookup(encoding)
        chars.encode(encoding)
    except (LookupError, UnicodeEncodeError):
        return False
    return True


def _colour(dark: bool) -> int:
    return BLACK if dark else WHITE


def _matrix(data: str) -> list[list[bool]]:
    return [[bool(m) for m in row] for row in make(data).matrix_iter(scale=1, border=QUIET_ZONE)]


def full_block_lines(data: str, *, blocks: bool = True) -> list[str]:
    """One line per module row, two cells per module; ``blocks=False``
    draws the dark cells as spaces too (ASCII only)."""
    dark_cells = FULL_BLOCK * 2 if blocks else "  "
    lines = []
    for row in _matrix(data):
        cells, previous = [], None
        for dark in row:
            if dark != previous:
                colour = _colour(dark)
                cells.append(f"\x1b[38;5;{colour};48;5;{colour}m")
                previous = dark
            cells.append(dark_cells if dark else "  ")
        lines.append("".join(cells) + RESET)
    return lines


def half_block_lines(data: str) -> list[str]:
    """One line per two module rows, one cell per module."""
    matrix = _matrix(data)
    if len(matrix) % 2:
        matrix.append([False] * len(matrix[0]))      # the quiet zone, one row more
    lines = []
    for upper, lower in zip(matrix[0::2], matrix[1::2]):
        cells, previous = [], None
        for pair in zip(upper, lower):
            if pair != previous:
                cells.append(f"\x1b[38;5;{_colour(pair[0])};48;5;{_colour(pair[1])}m")
                previous = pair
            cells.append(UPPER_HALF)
        lines.append("".join(cells) + RESET)
    return lines


def terminal_lines(data: str, *, columns: int | None = None, out: TextIO | None = None) -> list[str]:
    """The code as terminal lines, quiet zone included: full blocks, or half
    blocks when full blocks would be wider than ``columns``; spaces on
    explicit colours when ``out`` cannot carry the block characters."""
    if out is not None and not _can_encode(out, FULL_BLOCK + UPPER_HALF):
        return full_block_lines(data, blocks=False)
    width = make(data).symbol_size(scale=1, border=QUIET_ZONE)[0]
    if columns is not None and 2 * width > columns:
        return half_block_lines(data)
    return full_block_lines(data)


def write_terminal_qr(data: str, out: TextIO) -> None:
    """Draw ``data`` as a QR code on ``out``; it scans on light and dark
    themes, and fits the width of the terminal ``out`` is (a pipe or a file
    gets full blocks)."""
    columns = None
    try:
        if out.isatty():
            columns = os.get_terminal_size(out.fileno()).columns
    except (AttributeError, OSError, ValueError):
        pass
    out.write("".join(line + "\n" for line in terminal_lines(data, columns=columns, out=out)))


class ImageFile:
    """``token add`` / ``device pair --qr svg|png FILE``: the file is opened
    first, before the token or pairing is stored, so a path that cannot be
    written changes nothing; it is readable by its owner only (the image
    holds the token's secret or the one-time pairing link), and removed
    again if the enrolment fails."""

    def __init__(self, kind: str, path: str):
        if kind not in IMAGE_KINDS:
            raise ValueError(f"--qr: the format is svg or png, not {kind!r}")
        self.kind, self.path = kind, path
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags, 0o600)
        try:
            os.fchmod(fd, 0o600)          # an existing file keeps no wider mode
        except OSError:
            os.close(fd)
            raise
        self.stream = os.fdopen(fd, "wb")

    def write(self, data: str) -> None:
        """The code of ``data`` as an SVG or PNG image, black on an opaque
        white ground with the quiet zone, ``IMAGE_SCALE`` pixels per module."""
        with self.stream:
            make(data).save(self.stream, kind=self.kind, scale=IMAGE_SCALE, border=QUIET_ZONE,
                            dark="#000000", light="#ffffff")

    def discard(self) -> None:
        self.stream.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
