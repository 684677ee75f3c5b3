"""The failures a command ends with, each one line on stderr, and
printable(), which makes a server's text safe for a terminal."""

from __future__ import annotations

import unicodedata
from typing import Any


class Refused(Exception):
    """One clear line for stderr; exit 1."""


class ApiError(Refused):
    """The device API answered with an error status; the message is its ``error`` text."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class BadUsage(Exception):
    """One clear line for stderr; exit 2."""


def one_line(text: str) -> str:
    return printable(" ".join(text.split()))[:500]


def printable(value: Any) -> str:
    """For a terminal: None as ``-``; control characters escaped, so a
    server's text cannot rewrite the screen."""
    if value is None:
        return "-"
    text = str(value)
    if any(unicodedata.category(ch)[0] == "C" for ch in text):
        text = text.encode("unicode_escape").decode("ascii")
    return text
