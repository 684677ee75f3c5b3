"""bench/bench_tls.py keeps working: a tiny run (50 users, 50 requests per
row) against a real radius-mfa over UDP, RADIUS over TLS and RADIUS/1.1,
and FreeRADIUS 3.2 over UDP and TLS when it is installed. The benchmark
starts and stops every server itself (by pid), on loopback."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from peers import freeradius

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "bench_tls.py"
TLSLOAD = ROOT / "bench" / "tlsload.py"
ROW = re.compile(r"^  (radius-mfa|FreeRADIUS [\d.]+)\s+(udp|tls 1\.1|tls)\s+(\d+)\s+(\d+)\s+([\d.]+)\s")


def run_bench(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def table(stdout: str) -> dict[tuple[str, str], tuple[int, int, float]]:
    rows = {}
    for line in stdout.splitlines():
        match = ROW.match(line)
        if match:
            server = "FreeRADIUS" if match[1].startswith("FreeRADIUS") else match[1]
            rows[(server, match[2])] = (int(match[3]), int(match[4]), float(match[5]))
    return rows


def test_tiny_run_has_udp_tls_and_radius11_rows_all_accepted():
    with_freeradius = freeradius.available()
    result = run_bench("--users", "50", "--requests", "50", "--connections", "2", "--in-flight", "4",
                       *(() if with_freeradius else ("--no-freeradius",)))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = table(result.stdout)
    for transport in ("udp", "tls", "tls 1.1"):
        sent, ok, rate = rows[("radius-mfa", transport)]
        assert sent == ok == 50, (transport, result.stdout)
        assert rate > 0
    if with_freeradius:
        for transport in ("udp", "tls"):
            sent, ok, _ = rows[("FreeRADIUS", transport)]
            assert sent == 50 and ok > 0, (transport, result.stdout)   # a TOTP step boundary may reject a few
    assert "2 connections in" in result.stdout
    assert "ALPN radius/1.1" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (("--connections", "0"), "--connections must be at least 1"),
    (("--in-flight", "257"), "--in-flight: at most 256"),
])
def test_bad_option_is_one_clear_line(args, message):
    result = run_bench(*args, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_tlsload_refuses_a_target_outside_loopback(tmp_path):
    result = subprocess.run([sys.executable, str(TLSLOAD), "--target", "192.0.2.1:2083",
                             "--ca-file", str(tmp_path / "ca.pem"), "--cert", str(tmp_path / "c.crt"),
                             "--key", str(tmp_path / "c.key"), "--status-server"],
                            capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 2
    assert "only sends to loopback" in result.stderr
    assert "Traceback" not in result.stderr
