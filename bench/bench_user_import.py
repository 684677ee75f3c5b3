#!/usr/bin/env python3
"""Measure `user import` on this machine: rows per second and wall time.

    python3 bench/bench_user_import.py [--rows 10000] [--scenario all|none|hashed|plain]
                                       [--plain-rows N] [--workers N] [--keep]

Three files of ``--rows`` users, each imported into a fresh SQLite store by
:func:`radius_mfa.userimport.import_users` (in-process: the command-line
wiring adds nothing worth measuring). Every row has a display name, an email,
a phone and a TOTP secret (so every user also gets a token: the sealing of
the secret is part of the cost); what differs is the password column:

* ``none``:   no password column (an LDAP or upstream-RADIUS deployment);
* ``hashed``: passwords carried over as hashes, half ``$scrypt$``, half
  passlib ``$pbkdf2-sha256$`` (random salts and keys: the import parses a
  carried-over hash but never computes one, so the hashes need not match any
  password, and making 10,000 real ones would take minutes);
* ``plain``:  plain passwords, each hashed with scrypt (~40 ms) in the
  process pool; expect about rows × scrypt time / cores.

Also printed: how long ``Store.add_users`` ran, which is how long the store's
write lock was held (a server sharing the store waits that long for a write),
and the peak resident memory of this process and of the hash workers.
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import resource
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from radius_mfa import passwords  # noqa: E402
from radius_mfa.store import open_store  # noqa: E402
from radius_mfa.userimport import import_users  # noqa: E402

SCENARIOS = ("none", "hashed", "plain")


@dataclass(frozen=True)
class Result:
    scenario: str
    rows: int
    seconds: float
    write_seconds: float
    tokens: int
    passwords: int


class TimedStore:
    """The real store, with the time spent inside add_users recorded."""

    def __init__(self, store):
        self._store = store
        self.write_seconds = 0.0

    def add_users(self, users):
        started = time.perf_counter()
        try:
            return self._store.add_users(users)
        finally:
            self.write_seconds += time.perf_counter() - started

    def __getattr__(self, name):
        return getattr(self._store, name)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def carried_hash(index: int) -> str:
    salt, key = secrets.token_bytes(16), secrets.token_bytes(32)
    if index % 2:
        return f"$pbkdf2-sha256$29000${b64(salt).replace('+', '.')}${b64(key).replace('+', '.')}"
    return f'"$scrypt$ln=14,r=8,p=1${b64(salt)}${b64(key)}"'    # commas: quoted


def write_file(path: Path, scenario: str, rows: int) -> None:
    header = "name,display_name,email,phone,totp_secret"
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write(header + ("" if scenario == "none" else ",password") + "\n")
        for i in range(rows):
            secret = base64.b32encode(secrets.token_bytes(20)).decode("ascii")
            cells = [f"user{i:06d}", f"User {i}", f"user{i}@example.org", f"+491510{i:07d}", secret]
            if scenario == "hashed":
                cells.append(carried_hash(i))
            elif scenario == "plain":
                cells.append(secrets.token_urlsafe(12))
            out.write(",".join(cells) + "\n")


def run(directory: Path, scenario: str, rows: int, workers: int | None) -> Result:
    path = directory / f"users-{scenario}.csv"
    write_file(path, scenario, rows)
    store = TimedStore(open_store(f"sqlite:///{directory}/store-{scenario}.db", str(directory / "store.key")))
    try:
        summary = import_users(store, str(path), progress=sys.stderr, hash_workers=workers)
        assert summary.users == rows and len(store.list_users()) == rows
    finally:
        store.close()
    return Result(scenario, rows, summary.seconds, store.write_seconds, summary.tokens, summary.passwords)


def one_hash_ms() -> float:
    started = time.perf_counter()
    passwords.hash_password("benchmark")
    return (time.perf_counter() - started) * 1000


def peak_rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024    # Linux: KiB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000, help="users per file (default 10000)")
    parser.add_argument("--plain-rows", type=int, help="users in the plain-password file (default --rows)")
    parser.add_argument("--scenario", choices=("all",) + SCENARIOS, default="all")
    parser.add_argument("--workers", type=int, help="hash processes (default: one per CPU)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    print("machine")
    print(f"  cpus (os.cpu_count)  {os.cpu_count()}")
    print(f"  python               {platform.python_implementation()} {platform.python_version()}")
    print(f"  os                   {platform.platform()}")
    print(f"  one scrypt hash      {one_hash_ms():.1f} ms (ln={passwords.SCRYPT_LOG2_N}, r={passwords.SCRYPT_R}, "
          f"p={passwords.SCRYPT_P})")
    print(f"  hash workers         {args.workers or os.cpu_count()}")
    print()

    directory = Path(tempfile.mkdtemp(prefix="bench-user-import-"))
    results = []
    try:
        for scenario in SCENARIOS if args.scenario == "all" else (args.scenario,):
            rows = args.plain_rows if scenario == "plain" and args.plain_rows else args.rows
            results.append(run(directory, scenario, rows, args.workers))
    finally:
        if args.keep:
            print(f"kept {directory}", file=sys.stderr)
        else:
            for item in directory.iterdir():
                item.unlink()
            directory.rmdir()

    print(f"{'passwords':<10}{'rows':>8}{'wall s':>10}{'rows/s':>10}{'write s':>10}{'tokens':>8}{'pw':>8}")
    print("-" * 64)
    for r in results:
        print(f"{r.scenario:<10}{r.rows:>8}{r.seconds:>10.2f}{r.rows / r.seconds:>10.0f}"
              f"{r.write_seconds:>10.2f}{r.tokens:>8}{r.passwords:>8}")
    print()
    workers = f", largest hash worker {peak_rss_mib(resource.RUSAGE_CHILDREN):.0f} MiB" if any(
        r.scenario == "plain" for r in results) else ""
    print(f"peak RSS: this process {peak_rss_mib(resource.RUSAGE_SELF):.0f} MiB{workers}")
    print("write s: time inside Store.add_users, i.e. how long the store's write lock was held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
