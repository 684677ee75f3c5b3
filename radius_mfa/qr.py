"""QR codes for enrolment: drawn in a terminal, or written as an SVG or PNG file.

segno (pure Python) builds the code; we only choose how to draw it.

In a terminal every module is two full-width cells side by side (about
square in a terminal's 1:2 cells), and every cell carries explicit colours,
dark modules black on black and light modules white on white, 256-colour
indices 16 and 231, which terminal themes leave alone (unlike the 16 basic
colours), so the code reads the same on light and dark themes. A quiet zone
of four light modules surrounds it (ISO/IEC 18004). Each line ends with a
colour reset, so nothing bleeds into the rest of the terminal.

A stream that cannot encode the block character (an ASCII-only locale) gets
segno's ANSI drawing instead, which uses ASCII characters only.
"""

from __future__ import annotations

import codecs
import os
from typing import TextIO

import segno

QUIET_ZONE = 4                      # modules of light border, as the standard asks
FULL_BLOCK = "\u2588"
DARK = "\x1b[38;5;16;48;5;16m"      # #000000 on #000000
LIGHT = "\x1b[38;5;231;48;5;231m"   # #ffffff on #ffffff
RESET = "\x1b[0m"
IMAGE_KINDS = ("svg", "png")
IMAGE_SCALE = 8                     # pixels per module in a written image


def make(data: str) -> segno.QRCode:
    """The QR code of ``data`` (an ``otpauth://`` URI, a pairing link).

    Error correction level M: the default of authenticator-app enrolment
    screens, and sturdy enough for a photographed screen."""
    return segno.make(data, error="m", micro=False)


def _can_encode_blocks(out: TextIO) -> bool:
    """True when ``out`` can carry the full-block character."""
    encoding = getattr(out, "encoding", None) or "utf-8"
    try:
        codecs.lookup(encoding)
        FULL_BLOCK.encode(encoding)
    except (LookupError, UnicodeEncodeError):
        return False
    return True


def terminal_lines(data: str) -> list[str]:
    """The code as terminal lines: one line per module row, quiet zone included."""
    lines = []
    for row in make(data).matrix_iter(scale=1, border=QUIET_ZONE):
        cells = []
        previous = None
        for dark in row:
            colour = DARK if dark else LIGHT
            if colour != previous:
                cells.append(colour)
                previous = colour
            cells.append(FULL_BLOCK * 2 if dark else "  ")
        lines.append("".join(cells) + RESET)
    return lines


def write_terminal_qr(data: str, out: TextIO) -> None:
    """Draw ``data`` as a QR code on ``out``; it scans on light and dark themes."""
    if not _can_encode_blocks(out):
        make(data).terminal(out=out, border=QUIET_ZONE)
        return
    out.write("".join(line + "\n" for line in terminal_lines(data)))


class ImageFile:
    """``token add --qr svg|png FILE``: the file is opened first, before the
    token is stored, so a path that cannot be written changes nothing; it
    is readable by its owner only (the image holds the token's secret), and
    removed again if the enrolment fails."""

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
