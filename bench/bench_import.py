#!/usr/bin/env python3
"""Measure `token import` on this machine: 100,000 hardware tokens from CSV and from PSKC.

    python3 bench/bench_import.py [--rows 100000 10000] [--keep]

What it does, and why that way:

1. For each size, a temporary directory with a minimal config, a CSV file
   (``serial,secret_base32,period``; every tenth token HOTP) and a PSKC file
   in RFC 6030 Figure 6 form (AES-128-CBC with a pre-shared key, an
   encrypted MAC key, a ValueMAC per secret), written as a stream by
   ``tests/pskc_docs.py`` (its own XML and crypto, not python-pskc's).
2. Each measurement runs the real command, ``radius-mfa -c CONFIG token
   import FILE [--key HEX]``, on a fresh store, as the only child of a
   ``bench_import.py --one`` process: that process's
   ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` is then the peak resident memory
   of that one import and nothing else. A ``token list`` on an empty store
   is measured the same way, as the baseline (interpreter and imports).
3. After each import the rows in the store are counted with ``sqlite3``.

Memory is flat when the peak at 100,000 rows is close to the peak at
10,000: what grows with the file is the ``serial → line`` map of pass 1
(tens of bytes a row), not the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(1, str(ROOT))

import pskc_docs  # noqa: E402
from radius_mfa.validate import encode_base32  # noqa: E402

COMMAND = [sys.executable, "-m", "radius_mfa"]
PSK = bytes.fromhex("000102030405060708090a0b0c0d0e0f")

CONFIG = """\
server:
  name: bench-import
  listen:
    - udp: "127.0.0.1:18120"
store: "sqlite:///radius-mfa.db"
store_key_file: store.key
clients: []
primary:
  backend: local
log:
  level: warning
"""


def seeds(rows: int):
    """``rows`` tokens: serial, 20-byte secret, HOTP for every tenth."""
    for n in range(rows):
        yield f"HW{n:07d}", os.urandom(20), n % 10 == 9


def write_csv(path: Path, rows: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("# serial,secret_base32,period\n")
        for serial, secret, hotp in seeds(rows):
            f.write(f"{serial},{encode_base32(secret)},{'hotp' if hotp else 30}\n")


def write_pskc(path: Path, rows: int) -> None:
    keys = (pskc_docs.KeySpec(serial=serial, secret=secret, digits=6,
                              **({"counter": 0} if hotp else {"algorithm": "totp", "time_interval": 30}))
            for serial, secret, hotp in seeds(rows))
    pskc_docs.write_document(path, keys, pskc_docs.PresharedKey(PSK))


def one(argv: list[str]) -> int:
    """``--one CWD ARG…``: run the command once, as this process's only
    child; print its wall time, peak RSS and exit code as JSON."""
    cwd, args = argv[0], argv[1:]
    started = time.perf_counter()
    done = subprocess.run(COMMAND + args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss      # KiB on Linux
    print(json.dumps({"wall": wall, "peak_kib": peak_kib, "code": done.returncode,
                      "stdout": done.stdout.strip(), "stderr": done.stderr.strip()[-2000:]}))
    return 0


def measure(directory: Path, *args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", str(directory), *args],
                         stdout=subprocess.PIPE, check=True, text=True).stdout
    return json.loads(out)


def fresh_store(directory: Path) -> None:
    for name in ("radius-mfa.db", "radius-mfa.db-wal", "radius-mfa.db-shm"):
        (directory / name).unlink(missing_ok=True)


def count_tokens(directory: Path) -> int:
    with sqlite3.connect(directory / "radius-mfa.db") as db:
        return db.execute("SELECT count(*) FROM tokens").fetchone()[0]


def main() -> int:
    if sys.argv[1:2] == ["--one"]:
        return one(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 10_000])
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories")
    options = parser.parse_args()

    print(f"python {platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} cpus, {platform.platform()}")
    results = []
    failed = False
    for rows in options.rows:
        directory = Path(tempfile.mkdtemp(prefix=f"bench-import-{rows}-"))
        try:
            (directory / "radius-mfa.yaml").write_text(CONFIG)
            started = time.perf_counter()
            write_csv(directory / "tokens.csv", rows)
            write_pskc(directory / "tokens.pskc", rows)
            print(f"{rows} rows: files written in {time.perf_counter() - started:.1f} s "
                  f"(csv {(directory / 'tokens.csv').stat().st_size / 2**20:.1f} MiB, "
                  f"pskc {(directory / 'tokens.pskc').stat().st_size / 2**20:.1f} MiB)", file=sys.stderr)
            fresh_store(directory)
            baseline = measure(directory, "-c", "radius-mfa.yaml", "token", "list")
            results.append(("baseline (token list)", 0, baseline, 0))
            for label, args in (("csv", ["tokens.csv"]), ("pskc aes128-cbc", ["tokens.pskc", "--key", PSK.hex()])):
                fresh_store(directory)
                result = measure(directory, "-c", "radius-mfa.yaml", "token", "import", *args)
                stored = count_tokens(directory) if result["code"] == 0 else 0
                results.append((label, rows, result, stored))
                if result["code"] != 0 or stored != rows:
                    failed = True
                    print(f"{label} {rows}: exit {result['code']}, {stored} stored\n{result['stderr']}",
                          file=sys.stderr)
        finally:
            if options.keep:
                print(f"kept {directory}", file=sys.stderr)
            else:
                shutil.rmtree(directory, ignore_errors=True)

    print()
    print(f"{'import':<22} {'rows':>8} {'wall s':>8} {'rows/s':>9} {'peak RSS MiB':>13} {'stored':>8}")
    print("-" * 73)
    for label, rows, result, stored in results:
        rate = f"{rows / result['wall']:.0f}" if rows else "-"
        print(f"{label:<22} {rows:>8} {result['wall']:>8.2f} {rate:>9} {result['peak_kib'] / 1024:>13.1f} "
              f"{stored if rows else '-':>8}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
