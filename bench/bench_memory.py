#!/usr/bin/env python3
"""Memory of radius-mfa: pending challenges, and RSS over a long run.

    python3 bench/bench_memory.py                       # 10,000 pending challenges, ~40 s
    python3 bench/bench_memory.py --minutes 10          # plus RSS every 10 s over 10 minutes

What is measured is the RSS of the server process and all its children
(``server.workers`` > 1 forks), read from ``/proc``.

* **Pending challenges.** ``--challenges`` users each send their password
  to a challenge-mode client and get an Access-Challenge; nobody answers, so
  every challenge stays pending (they expire after 300 s, longer than the
  run). RSS is read before the first and after the last.
* **Over time** (``--minutes``): the inline mix (``password,CODE``, local
  hash + TOTP) offered at a fixed rate (``--rate``, default 200/s: with
  10,000 users and single-use 30 s codes, about 330/s is the most that
  stays replay-free) for the given minutes, RSS sampled every 10 s; start,
  end and maximum are printed with every sample.

Users, hashes and config are those of ``bench_vs_freeradius.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import loadgen  # noqa: E402
from bench_core import BenchError, CodeBook, ServerProcess, free_udp_port, run_in_temporary_directory  # noqa: E402
from bench_vs_freeradius import (RssSampler, check_iterations, make_population, tree_rss_bytes,  # noqa: E402
                                 write_radius_mfa_config, write_store)
from loadgen import LoadClient  # noqa: E402

from radius_mfa.radius import codec  # noqa: E402

SAMPLE_SECONDS = 10.0


def _mb(value: int) -> str:
    return f"{value / 2**20:.1f} MB"


async def pending_challenges(port: int, secret: bytes, population, count: int) -> loadgen.LoadReport:
    async def one(index: int, client: LoadClient) -> None:
        user = population.users[index % len(population.users)]
        await client.request(lambda ident: codec.build_access_request(
            secret, user.name, user.password, id=ident))

    return await loadgen.run_load(loadgen.Target("127.0.0.1", port), secret, transaction=one,
                                  concurrency=32, count=count, duration=600, timeout=10)


async def steady_inline(port: int, secret: bytes, population, codes: CodeBook, rate: float,
                        seconds: float) -> loadgen.LoadReport:
    async def one(index: int, client: LoadClient) -> None:
        user = population.users[index % len(population.users)]
        await client.request(lambda ident: codec.build_access_request(
            secret, user.name, f"{user.password},{codes.code_for(user)}", id=ident))

    return await loadgen.run_load(loadgen.Target("127.0.0.1", port), secret, transaction=one,
                                  concurrency=256, count=int(rate * seconds) + 1,
                                  duration=seconds, timeout=10, rate=rate)


def run(args: argparse.Namespace, directory: Path) -> int:
    secret = secrets.token_hex(16)
    users = max(args.challenges, 1)
    print(f"making {users} users …", file=sys.stderr, flush=True)
    population = make_population(users, args.iterations, len(os.sched_getaffinity(0)))
    store, key_file = directory / "bench.db", directory / "store.key"
    write_store(store, key_file, population)
    port = free_udp_port()
    config = write_radius_mfa_config(directory, port=port, secret=secret, store=store,
                                     key_file=key_file, workers=args.workers, upstream=None,
                                     iterations=args.iterations)
    server = ServerProcess(config, directory)
    status = 0
    try:
        server.start()
        pid = server.proc.pid
        time.sleep(1.0)
        print(f"radius-mfa, server.workers {args.workers}, {users} users, "
              f"PBKDF2-SHA256 {args.iterations} iterations")
        before = tree_rss_bytes(pid)
        report = asyncio.run(pending_challenges(port, secret.encode(), population, args.challenges))
        after = tree_rss_bytes(pid)
        got = report.step("request").outcomes["Access-Challenge"]
        print(f"pending challenges: {got} of {args.challenges} Access-Challenge in "
              f"{report.elapsed:.1f} s; RSS before {_mb(before)}, after {_mb(after)}, "
              f"growth {_mb(after - before)}")
        if got != args.challenges:
            status = 1
        if args.minutes:
            codes = CodeBook()
            seconds = args.minutes * 60.0
            print(f"\nover time: inline mix at {args.rate:g}/s for {args.minutes:g} min, "
                  f"RSS every {SAMPLE_SECONDS:g} s", flush=True)
            with RssSampler(pid, SAMPLE_SECONDS) as sampler:
                report = asyncio.run(steady_inline(port, secret.encode(), population, codes,
                                                   args.rate, seconds))
            start = sampler.samples[0][1]
            for moment, rss in sampler.samples:
                print(f"  t={moment - sampler.samples[0][0]:6.0f} s  {_mb(rss)}")
            print(f"  start {_mb(start)}, end {_mb(sampler.samples[-1][1])}, max {_mb(sampler.peak)}")
            print(loadgen.format_report(report, "  load"))
    finally:
        server.stop()
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_memory.py",
                                     description="RSS of radius-mfa with pending challenges and over time.")
    parser.add_argument("--challenges", type=int, default=10_000,
                        help="pending challenges to open, one per user (default 10000)")
    parser.add_argument("--minutes", type=float, default=0.0,
                        help="also run the inline mix this many minutes, sampling RSS (default: off)")
    parser.add_argument("--rate", type=float, default=200.0,
                        help="requests per second in the --minutes run (default 200)")
    parser.add_argument("--workers", type=int, default=1, help="server.workers (default 1)")
    parser.add_argument("--iterations", type=int, default=10_000,
                        help="PBKDF2-SHA256 iterations of the stored hashes (default 10000)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)

    def validate(args: argparse.Namespace) -> None:
        if args.challenges < 1 or args.workers < 1 or args.iterations < 1 or args.minutes < 0 \
                or not args.rate > 0:
            raise BenchError("--challenges, --workers, --iterations and --rate must be positive")
        check_iterations(args.iterations)

    return run_in_temporary_directory("bench_memory", "radius-mfa-memory-", args, run, validate)


if __name__ == "__main__":
    sys.exit(main())
