"""kill -9 of the server during logins (fuzz/faults.py kill): every code
accepted before the kill is a replay after the restart, the SQLite store
passes its integrity check, nothing enrolled is lost. Two cycles per store
here; the long run (5 cycles and more) is in fuzz/README.md."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fuzz"))

import faults  # noqa: E402


@pytest.mark.parametrize("store_kind", ["sqlite", "postgresql"])
def test_a_code_accepted_before_kill_9_is_rejected_as_a_replay_after_the_restart(store_kind, tmp_path, request):
    if store_kind == "sqlite":
        store = "sqlite:///radius-mfa.db"
    else:
        store = request.getfixturevalue("pg_url")
    report = faults.kill_cycles(tmp_path, store=store, cycles=2, seconds=1.5, users=120, seed=3)
    assert report.cycles == 2 and report.accepted, report
    assert not report.replays_accepted, report
    assert report.replays_rejected == len(report.accepted), report
    assert report.replays_audited_replay + report.replays_outside_window == report.replays_rejected, report
    assert report.integrity == ("ok" if store_kind == "sqlite" else "n/a"), report
    assert report.users_missing == 0 and report.tokens_missing == 0, report
    assert report.after_ok == report.after_total == 10, report
    assert report.tracebacks == 0, report
