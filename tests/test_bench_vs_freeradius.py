"""A short run of bench/bench_vs_freeradius.py, so the benchmark the README
quotes keeps working: every scenario on FreeRADIUS and radius-mfa (SQLite
and PostgreSQL), each request answered as expected, and radius-mfa's own
count of thread hops and store writes per sign-in where the profile put it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_vs_freeradius.py"

pytestmark = pytest.mark.skipif(not Path("/usr/sbin/freeradius").exists() or not shutil.which("radius-mfa"),
                                reason="needs FreeRADIUS and the radius-mfa command")


def row(output: str, scenario: str, server: str) -> list[str]:
    section = output.split(f"scenario {scenario}:")[1].split("scenario ")[0]
    for line in section.splitlines():
        if re.match(rf"\s+{re.escape(server)}\s+[-\d]+\s", line):
            return line.split()
    raise AssertionError(f"no {server} row in {scenario}:\n{section}")


def test_a_short_run_answers_everything_and_counts_the_work(tmp_path):
    run = subprocess.run(
        [sys.executable, str(BENCH), "--users", "40", "--requests", "40", "--concurrency", "8",
         "--upstream-requests", "40", "--upstream-concurrency", "20", "--upstream-delay", "0.05",
         "--workers", "1"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    for scenario in ("inline", "challenge", "upstream"):
        row(out, scenario, "FreeRADIUS 3.2.1")     # its TOTP may reject at a step boundary
        for server in ("radius-mfa", "radius-mfa PG"):
            fields = row(out, scenario, server)
            at = len(server.split())                  # then workers, step, requests, ok
            assert fields[at + 2] == fields[at + 3] == "40", fields
    # inline: the first round and the accepted code in the store, the hash;
    # then the audit rows' batches
    fields = row(out, "inline", "radius-mfa")
    hops, reads, writes = (float(v) for v in fields[-3:])
    assert 3.0 <= hops < 3.5 and 2.0 <= reads < 2.5 and 2.0 <= writes < 2.5, fields
    # upstream: the same two store steps, the password checked elsewhere
    fields = row(out, "upstream", "radius-mfa")
    assert 2.0 <= float(fields[-3]) < 2.5, fields
