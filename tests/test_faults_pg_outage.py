"""A private PostgreSQL holding the store stopped and started under a load of
valid logins (fuzz/faults.py outage): clean Access-Rejects in time during the
outage, no traceback per request, logins accepted again after PostgreSQL is
back without restarting radius-mfa. The shared PostgreSQL is not touched."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fuzz"))

import faults  # noqa: E402


def _have_postgres_binaries() -> bool:
    try:
        faults.postgres_bin("initdb")
    except RuntimeError:
        return False
    return shutil.which("runuser") is not None


@pytest.mark.skipif(not _have_postgres_binaries(), reason="the PostgreSQL server binaries are not installed")
def test_a_postgresql_outage_gets_clean_rejects_and_recovers_without_a_restart(tmp_path):
    report = faults.outage(tmp_path, outage_seconds=5, rate=10, users=200)
    assert report.before and all(o.code == faults.ACCEPT for o in report.before), report
    assert report.during, report
    assert all(o.code == faults.REJECT for o in report.during), report
    assert max(o.latency for o in report.during) <= report.timeout, report
    assert report.recovered_after is not None and report.recovered_after < 10, report
    assert all(o.code == faults.ACCEPT for o in report.after), report
    # The outage is logged, not a traceback per request.
    assert report.tracebacks <= 3, report
