"""QR codes drawn in a terminal, so `token add` can enrol a phone on the spot.

segno (pure Python) builds the code; we only choose how to draw it. Unicode
half blocks keep the code small enough to scan from a laptop screen; a stream
that cannot encode them (an ASCII-only locale) gets segno's ANSI-colour
drawing instead, which uses ASCII characters only.
"""

from __future__ import annotations

import codecs
from typing import TextIO

import segno

_HALF_BLOCKS = "\u2580\u2584\u2588"


def _can_encode_blocks(out: TextIO) -> bool:
    """True when ``out`` can carry the half-block characters."""
    encoding = getattr(out, "encoding", None) or "utf-8"
    try:
        codecs.lookup(encoding)
        _HALF_BLOCKS.encode(encoding)
    except (LookupError, UnicodeEncodeError):
        return False
    return True


def write_terminal_qr(data: str, out: TextIO) -> None:
    """Draw ``data`` (an ``otpauth://`` URI) as a QR code on ``out``.

    Error correction level M: the default of authenticator-app enrolment
    screens, and sturdy enough for a photographed screen.
    """
    code = segno.make(data, error="m", micro=False)
    code.terminal(out=out, compact=_can_encode_blocks(out))
