#!/usr/bin/env python3
"""Time `report usage` on a large authentication log, SQLite and PostgreSQL.

For each store kind: a temporary store (a SQLite file in a temporary
directory; a temporary database on the PostgreSQL at 127.0.0.1:5432, user
postgres) is filled with ``--rows`` audit records (1,000,000 by default)
through the store's own ``add_auth_records`` (one ``executemany`` per 10,000
records), all of them in the month reported: the worst case, where every
row is aggregated. Then the real command, ``radius-mfa report usage --month
2026-03 --json``, runs ``--runs`` times as a subprocess; the script checks
its figures against those counted while filling, and prints the seconds
(best and median, Python's start included) and the store's own time for the
query. Exit 0 when every figure was right.

    python3 bench/bench_usage.py                      # both stores, 1,000,000 rows
    python3 bench/bench_usage.py --rows 20000 --store sqlite

Everything it makes is removed at the end (``--keep`` keeps the SQLite
directory).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from radius_mfa.model import AuthRecord  # noqa: E402

MONTH = "2026-03"
START = datetime(2026, 3, 1, tzinfo=timezone.utc).timestamp()
END = datetime(2026, 4, 1, tzinfo=timezone.utc).timestamp()
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BATCH = 10_000

# The mix of a busy month: mostly TOTP and push accepts, some rejects and
# challenges, exempt accepts (factor none) and wrong passwords (no factor).
MIX = (
    ("totp", "accept", None), ("totp", "accept", None), ("totp", "challenge", None),
    ("push", "accept", None), ("push", "reject", "denied"), ("sms", "accept", None),
    ("hotp", "accept", None), ("app_password", "accept", None), ("none", "accept", None),
    (None, "reject", "bad_password"), ("totp", "reject", "bad_code"), ("email", "accept", None),
)


def records(rows: int, users: int, start: float = START, end: float = END) -> Iterator[AuthRecord]:
    """``rows`` audit records spread evenly over [start, end), as the server
    writes them (a realistic record of about 500 bytes)."""
    step = (end - start) / rows
    for i in range(rows):
        factor, result, reason = MIX[i % len(MIX)]
        user = f"user{(i * 7919) % users:06d}"
        yield AuthRecord(time=start + i * step, fields={
            "time": datetime.fromtimestamp(start + i * step, timezone.utc).isoformat(timespec="milliseconds"),
            "server": "mfa1", "server_ip": "192.0.2.10", "client": "vpn", "client_ip": "192.0.2.1",
            "user_ip": "198.51.100.7", "calling_station_id": "198.51.100.7", "user": user,
            "display_name": f"User {user}", "email": "u***@example.org", "phone": "***42",
            "device": "TOTP0001" if factor == "totp" else None, "primary": "ldap", "method": "pap",
            "factor": factor, "provider": "gateway-a" if factor == "sms" else None, "result": result,
            "reason": reason, "mode": "challenge", "duration_ms": 12.5, "request_id": f"{i:032x}",
        })


def expected(rows: int, users: int) -> dict:
    """The figures `report usage` must print for ``records(rows, users)``
    in a store without enrolment history."""
    total: dict[str, int] = {}
    by_factor: dict[str, dict[str, int]] = {}
    completed: set[str] = set()
    for i in range(rows):
        factor, result, _ = MIX[i % len(MIX)]
        key = factor or "none"
        total[result] = total.get(result, 0) + 1
        per = by_factor.setdefault(key, {})
        per[result] = per.get(result, 0) + 1
        if result == "accept" and key != "none":
            completed.add(f"user{(i * 7919) % users:06d}")
    return {
        "month": MONTH, "users_configured": len(completed), "users_completed_mfa": len(completed),
        "authentications": {
            "total": rows, "by_result": dict(sorted(total.items())),
            "by_factor": {f: dict(sorted(r.items())) for f, r in sorted(by_factor.items())},
        },
    }


def fill(store, rows: int, users: int) -> float:
    """Write the records, ``BATCH`` per transaction; the seconds it took."""
    began = time.perf_counter()
    batch: list[AuthRecord] = []
    for record in records(rows, users):
        batch.append(record)
        if len(batch) == BATCH:
            store.add_auth_records(batch)
            batch = []
    if batch:
        store.add_auth_records(batch)
    return time.perf_counter() - began


def write_config(directory: Path, store_url: str) -> Path:
    path = directory / "radius-mfa.yaml"
    path.write_text(
        "server:\n  name: bench\n"
        f'store: "{store_url}"\n'
        f'store_key_file: "{directory / "store.key"}"\n'
        "clients:\n  - name: vpn\n    address: 127.0.0.1\n    secret: \"bench-secret-0123456789\"\n"
    )
    return path


def command() -> list[str]:
    beside = Path(sys.executable).with_name("radius-mfa")
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "radius_mfa"]


def time_report(config: Path, runs: int) -> tuple[list[float], dict]:
    """Run `report usage` ``runs`` times; the wall-clock seconds of each and
    the last JSON it printed."""
    seconds, report = [], {}
    for _ in range(runs):
        began = time.perf_counter()
        done = subprocess.run([*command(), "-c", str(config), "report", "usage", "--month", MONTH, "--json"],
                              capture_output=True, text=True, timeout=600)
        seconds.append(time.perf_counter() - began)
        if done.returncode != 0:
            raise SystemExit(f"report usage failed ({done.returncode}): {done.stderr.strip()}")
        report = json.loads(done.stdout)
    return seconds, report


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A temporary database on the local PostgreSQL, dropped afterwards."""
    import psycopg

    name = f"radius_mfa_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def bench(kind: str, rows: int, users: int, runs: int, keep: bool) -> bool:
    from radius_mfa.store import open_store
    from radius_mfa.usage import UsageCounts  # noqa: F401  (the store's answer type)

    directory = Path(tempfile.mkdtemp(prefix="bench-usage-"))
    try:
        with contextlib.ExitStack() as stack:
            if kind == "sqlite":
                url = f"sqlite:///{directory / 'store.db'}"
            else:
                url = stack.enter_context(postgres_database())
            config = write_config(directory, url)
            store = open_store(url, str(directory / "store.key"))
            try:
                filled = fill(store, rows, users)
                began = time.perf_counter()
                store.usage_counts(START, END, ("token", "app_password"))
                query = time.perf_counter() - began
            finally:
                store.close()
            seconds, report = time_report(config, runs)
        right = report == expected(rows, users)
        print(f"{kind:10}  rows {rows:>9,}  filled in {filled:6.1f} s  store query {query:6.2f} s  "
              f"report usage best {min(seconds):6.2f} s  median {statistics.median(seconds):6.2f} s  "
              f"figures {'right' if right else 'WRONG'}")
        if not right:
            print(json.dumps(report, indent=2), file=sys.stderr)
        return right
    finally:
        if keep and kind == "sqlite":
            print(f"kept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=5_000, help="distinct users in the records")
    parser.add_argument("--runs", type=int, default=3, help="runs of report usage per store")
    parser.add_argument("--store", choices=("both", "sqlite", "postgresql"), default="both")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    kinds = ("sqlite", "postgresql") if args.store == "both" else (args.store,)
    ok = all([bench(kind, args.rows, args.users, args.runs, args.keep) for kind in kinds])
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
