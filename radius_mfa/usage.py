"""`report usage`: the month's figures for per-user and per-authentication billing.

The figures come from the store: the authentication log (one row per
answered request, its ``result`` and ``factor`` in columns of their own) and
the enrolment history (table ``enrolments``: one row per factor a user came
to hold, with ``since`` and, once it was taken away, ``until``). The store
counts them with a few ``GROUP BY`` queries
(:meth:`~radius_mfa.store.sqlstore.SqlStore.usage_counts`); this module
reads the month, says which kinds of factor count as enrolment under the
configuration in force, and shapes the answer as docs/reference.md gives it.

Definitions (also in the README, "Usage report"):

- ``users_completed_mfa``: distinct users with at least one ``accept`` whose
  factor is a real second factor, that is anything but ``none`` (exempt
  users and clients, ``policy.unenrolled: allow``) and no factor at all. An
  app password counts: it was issued to an enrolled user and stands in for
  password and factor.
- ``users_configured``: distinct users who held at least one usable factor
  at any moment of the month: a token, an app password, a paired device
  (where ``factors.push`` is configured), a phone number (where ``sms`` or
  ``voice`` is) or an email address (where ``email`` is); plus every user
  counted in ``users_completed_mfa`` (an accept with a second factor proves
  enrolment, whatever the history says).
- ``authentications``: every record of the month, counted by ``result`` and
  by ``factor`` then ``result``; a record without a factor (a wrong
  password, an unknown user) counts under ``none``.

Month boundaries are UTC: ``2026-02`` is ``2026-02-01T00:00:00Z`` inclusive
to ``2026-03-01T00:00:00Z`` exclusive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from radius_mfa.errors import UsageError

# The kinds of the enrolment history.
TOKEN = "token"
DEVICE = "device"
APP_PASSWORD = "app_password"
PHONE = "phone"
EMAIL = "email"
KINDS = (TOKEN, DEVICE, APP_PASSWORD, PHONE, EMAIL)

#: A factor that is no second factor: exempt, or an unenrolled user let through.
NO_FACTOR = "none"

_MONTH = re.compile(r"(\d{4})-(\d{2})")


@dataclass(frozen=True)
class UsageCounts:
    """What the store counts for one period."""

    users_configured: int
    users_completed_mfa: int
    #: (factor, result, count); factor None for a record without one.
    counts: list[tuple[str | None, str | None, int]] = field(default_factory=list)


def month_bounds(text: str) -> tuple[float, float]:
    """``YYYY-MM`` → (start, end) in epoch seconds, UTC, end exclusive;
    UsageError (exit 2, one line) for anything else."""
    match = _MONTH.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 1970:
        raise UsageError(f"--month: not a month in the form YYYY-MM: {text!r}")
    year, month = int(match.group(1)), int(match.group(2))
    start = datetime(year, month, 1, tzinfo=timezone.utc)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=timezone.utc)
    return start.timestamp(), end.timestamp()


def enrolment_kinds(config: Any) -> tuple[str, ...]:
    """The kinds of factor that make a user enrolled under ``config``."""
    factors = config.factors
    kinds = [TOKEN, APP_PASSWORD]
    if factors.push is not None:
        kinds.append(DEVICE)
    if factors.sms is not None or factors.voice is not None:
        kinds.append(PHONE)
    if factors.email is not None:
        kinds.append(EMAIL)
    return tuple(kinds)


def usage_report(month: str, counts: UsageCounts) -> dict:
    """The JSON object of docs/reference.md for one month."""
    by_result: dict[str, int] = {}
    by_factor: dict[str, dict[str, int]] = {}
    total = 0
    for factor, result, n in counts.counts:
        factor_key = factor if factor else NO_FACTOR
        result_key = result if result else "unknown"
        total += n
        by_result[result_key] = by_result.get(result_key, 0) + n
        per = by_factor.setdefault(factor_key, {})
        per[result_key] = per.get(result_key, 0) + n
    return {
        "month": month,
        "users_configured": counts.users_configured,
        "users_completed_mfa": counts.users_completed_mfa,
        "authentications": {
            "total": total,
            "by_result": dict(sorted(by_result.items())),
            "by_factor": {f: dict(sorted(r.items())) for f, r in sorted(by_factor.items())},
        },
    }


def usage_lines(report: dict) -> list[str]:
    """The report for a person: the two user figures, then a table of
    authentications by factor (rows) and result (columns), with totals."""
    auth = report["authentications"]
    results = list(auth["by_result"])
    lines = [
        f"month                {report['month']} (UTC)",
        f"users configured     {report['users_configured']}",
        f"users completed MFA  {report['users_completed_mfa']}",
        f"authentications      {auth['total']}",
        "",
    ]
    headers = ["FACTOR", *(r.upper() for r in results), "TOTAL"]
    rows = [[factor, *(str(per.get(r, 0)) for r in results), str(sum(per.values()))]
            for factor, per in auth["by_factor"].items()]
    rows.append(["total", *(str(auth["by_result"][r]) for r in results), str(auth["total"])])
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        lines.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
    return lines
