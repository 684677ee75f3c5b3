"""Fault injection against a running `radius-mfa serve`.

    python3 fuzz/faults.py kill  [--store sqlite|postgresql] [--cycles 5] [--seconds 2]
    python3 fuzz/faults.py outage [--outage 20] [--rate 20]

``kill``: valid logins (password and a fresh TOTP code, inline) from two
threads; at a random moment the server gets SIGKILL, mid-login. After each
restart every code accepted before the kill is sent again and must be
rejected, and audited as ``replay`` while it is still inside the TOTP window.
At the end: a SQLite store passes ``PRAGMA integrity_check``, every user and
token enrolled is still there, and fresh logins are accepted. PostgreSQL is
the shared server at 127.0.0.1:5432 (user postgres), in a schema of this
run's own, dropped at the end.

``outage``: a private PostgreSQL (initdb into a temporary directory, a free
loopback port, run as the user postgres when started as root) holds the
store. Under a steady load of valid logins it is stopped (``pg_ctl stop -m
fast``) for ``--outage`` seconds and started again. During the outage every
request must get an Access-Reject within the client's timeout, the server's
stderr must not fill with tracebacks; after it, logins must succeed again
without restarting radius-mfa. The machine's shared PostgreSQL is never
touched.

Exit status 0 when the targets are met. Every process started is stopped by pid.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from harness import Outcome, User, percentile  # noqa: E402

from peers.process import free_tcp_port, stop_process  # noqa: E402
from radius_mfa.radius import codec  # noqa: E402

ACCEPT, REJECT = codec.ACCESS_ACCEPT, codec.ACCESS_REJECT


class OneShotPool:
    """Each user signs in once: a replayed code then costs one failure at
    most, far from the lockout, and a fresh login is never refused for it."""

    def __init__(self, users: list[User]):
        self._users = list(users)
        self._lock = threading.Lock()

    def take(self) -> User | None:
        with self._lock:
            return self._users.pop() if self._users else None

    def left(self) -> int:
        return len(self._users)


@dataclass
class Accepted:
    user: User
    code: str
    step: int


@dataclass
class KillReport:
    cycles: int = 0
    logins: int = 0
    accepted: list[Accepted] = field(default_factory=list)
    in_flight_at_kill: int = 0
    replays_rejected: int = 0
    replays_audited_replay: int = 0
    replays_outside_window: int = 0
    replays_accepted: list[str] = field(default_factory=list)
    integrity: str = "n/a"
    users_missing: int = 0
    tokens_missing: int = 0
    after_ok: int = 0
    after_total: int = 0
    tracebacks: int = 0
    other_reasons: list[str] = field(default_factory=list)
    after_failures: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        return (not self.replays_accepted and self.integrity in ("ok", "n/a") and not self.users_missing
                and not self.tokens_missing and self.after_ok == self.after_total and self.accepted
                and self.replays_audited_replay > 0)

    def __str__(self) -> str:
        return "\n".join([
            f"kill -9 cycles: {self.cycles}; logins sent: {self.logins}; accepted before a kill: "
            f"{len(self.accepted)}; unanswered when killed: {self.in_flight_at_kill}",
            f"accepted codes sent again after the restart: {self.replays_rejected + len(self.replays_accepted)}; "
            f"rejected {self.replays_rejected} (audited replay: {self.replays_audited_replay}, outside the "
            f"TOTP window by then: {self.replays_outside_window}); ACCEPTED AGAIN: {len(self.replays_accepted)}",
            f"integrity_check: {self.integrity}; users missing: {self.users_missing}; tokens missing: "
            f"{self.tokens_missing}; fresh logins after the last restart: {self.after_ok}/{self.after_total}",
            f"Traceback in the server's stderr: {self.tracebacks}",
            *(f"  replay audited otherwise: {reason}" for reason in self.other_reasons[:10]),
            *(f"  fresh login refused: {failure}" for failure in self.after_failures[:10]),
        ])


def _logins_until(server, pool: OneShotPool, stop: threading.Event, accepted: list[Accepted],
                  counter: list[int], lock: threading.Lock) -> None:
    while not stop.is_set():
        user = pool.take()
        if user is None:
            return
        now = time.time()
        step = int(now // 30)
        code = user.totp.at(now)
        with lock:
            counter[0] += 1
        outcome = harness.login(server.port, user, code, timeout=3.0)
        if outcome.code == ACCEPT:
            with lock:
                accepted.append(Accepted(user, code, step))


def _replay_reason(server, user: User) -> str | None:
    try:
        return server.record_since_mark(user.name, timeout=3.0).get("reason")
    except AssertionError:
        return None


def kill_cycles(directory: Path, *, store: str, cycles: int, seconds: float, users: int,
                seed: int = 1, log=sys.stderr) -> KillReport:
    rng = random.Random(seed)
    server = harness.make_server(directory, store=store)
    everyone = harness.enrol(server, users)
    pool = OneShotPool(everyone[: users - 10])
    spare = everyone[users - 10:]            # for the fresh logins at the end
    report = KillReport()
    for cycle in range(1, cycles + 1):
        harness.start(server)
        stop, lock = threading.Event(), threading.Lock()
        accepted: list[Accepted] = []
        counter = [0]
        threads = [threading.Thread(target=_logins_until, args=(server, pool, stop, accepted, counter, lock))
                   for _ in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(rng.uniform(seconds / 2, seconds))
        os.kill(server.proc.pid, signal.SIGKILL)               # mid-login
        server.proc.wait()
        server._log.close()
        stop.set()
        for thread in threads:
            thread.join()
        with lock:
            report.logins += counter[0]
            report.in_flight_at_kill += counter[0] - len(accepted)   # rejected ones are none: all valid
            report.accepted.extend(accepted)
        harness.start(server)
        for item in accepted:
            server.mark(item.user.name)
            outcome = harness.login(server.port, item.user, item.code, timeout=3.0)
            if outcome.code == ACCEPT:
                report.replays_accepted.append(f"{item.user.name} step {item.step}")
                continue
            report.replays_rejected += 1
            if int(time.time() // 30) - item.step <= 1:
                reason = _replay_reason(server, item.user)
                if reason == "replay":
                    report.replays_audited_replay += 1
                else:
                    report.other_reasons.append(f"{item.user.name}: {reason}")
            else:
                report.replays_outside_window += 1
        report.cycles = cycle
        print(f"cycle {cycle}: {len(accepted)} accepted before the kill, "
              f"replays accepted so far: {len(report.replays_accepted)}", file=log, flush=True)
        if cycle < cycles:
            server.stop()
    # The last restart stays up: fresh logins must work, everything enrolled must be there.
    for user in spare:
        now = time.time()
        report.after_total += 1
        outcome = harness.login(server.port, user, user.totp.at(now))
        report.after_ok += outcome.code == ACCEPT
        if outcome.code != ACCEPT:
            report.after_failures.append(f"{user.name}: code {outcome.code} {outcome.reply_message or ''}")
    server.stop()
    report.tracebacks = harness.all_logs(server).count("Traceback")
    _check_store(server, everyone, report)
    return report


def _check_store(server, everyone: list[User], report: KillReport) -> None:
    from radius_mfa.config import load_config
    from radius_mfa.store import open_store

    config = load_config(server.config)
    if config.store.startswith("sqlite"):
        path = config.store.partition("://")[2].lstrip("/")
        path = path if os.path.isabs(path) else str(Path(server.config).parent / path)
        if not os.path.exists(path):
            path = "/" + config.store.partition("://")[2].lstrip("/")
        with contextlib.closing(sqlite3.connect(path)) as conn:
            report.integrity = "; ".join(row[0] for row in conn.execute("PRAGMA integrity_check"))
    store = open_store(config.store, config.store_key_file)
    try:
        names = {user.name for user in store.list_users()}
        report.users_missing = sum(1 for user in everyone if user.name not in names)
        owners = {token.user for token in store.list_tokens()}
        report.tokens_missing = sum(1 for user in everyone if user.name not in owners)
    finally:
        store.close()


# --- a private PostgreSQL ------------------------------------------------------------------------


def postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"no {name} under /usr/lib/postgresql/*/bin (Debian package postgresql)")
    return found[-1]


class PrivatePostgres:
    """A PostgreSQL cluster of our own in a temporary directory, on a free
    loopback port, trust auth for local connections; run as the user
    postgres when we are root (initdb refuses root)."""

    def __init__(self) -> None:
        # Its own directory under the system's temporary one: the user
        # postgres must reach it, which a private 0700 parent would forbid.
        self.directory = Path(tempfile.mkdtemp(prefix="radius-mfa-pg-"))
        self.data = self.directory / "pgdata"
        self.port = free_tcp_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def init(self) -> "PrivatePostgres":
        if self.as_user:
            shutil.chown(self.directory, "postgres", "postgres")
        self._run(postgres_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")
        return self

    def start(self) -> None:
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.directory}"
                   " -c fsync=off -c max_connections=50")
        self._run(postgres_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l",
                  str(self.directory / "postgres.log"), "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run(postgres_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


@dataclass
class OutageReport:
    before: list[Outcome] = field(default_factory=list)
    during: list[Outcome] = field(default_factory=list)
    after: list[Outcome] = field(default_factory=list)
    outage_seconds: float = 0.0
    recovered_after: float | None = None
    tracebacks: int = 0
    error_lines: int = 0
    timeout: float = 3.0

    def ok(self) -> bool:
        during_clean = all(o.code == REJECT and o.latency <= self.timeout for o in self.during)
        return (bool(self.before) and all(o.code == ACCEPT for o in self.before) and bool(self.during)
                and during_clean and bool(self.after) and self.after[-1].code == ACCEPT
                and self.recovered_after is not None and self.tracebacks <= max(3, self.outage_seconds / 10))

    def __str__(self) -> str:
        def line(name: str, items: list[Outcome]) -> str:
            codes: dict[str, int] = {}
            for o in items:
                key = {ACCEPT: "accept", REJECT: "reject", None: "no answer"}.get(o.code, f"code {o.code}")
                codes[key] = codes.get(key, 0) + 1
            answered = [o.latency for o in items if o.code is not None]
            return (f"{name}: {len(items)} logins, " + ", ".join(f"{k} {v}" for k, v in sorted(codes.items()))
                    + f"; latency p50 {1000 * percentile(answered, 0.5):.0f} ms, "
                      f"max {1000 * max(answered, default=float('nan')):.0f} ms")
        return "\n".join([
            line("before the outage", self.before),
            line(f"during the outage ({self.outage_seconds:.0f} s)", self.during),
            line("after PostgreSQL is back", self.after),
            f"first accept after the restart of PostgreSQL: "
            + (f"{self.recovered_after:.1f} s" if self.recovered_after is not None else "NEVER"),
            f"Traceback in the server's stderr: {self.tracebacks}; error lines: {self.error_lines}",
        ])


def outage(directory: Path, *, outage_seconds: float, rate: float, users: int, log=sys.stderr) -> OutageReport:
    pg = PrivatePostgres().init()
    pg.start()
    server = None
    report = OutageReport(outage_seconds=outage_seconds)
    try:
        server = harness.make_server(directory, store=pg.url)
        pool = OneShotPool(harness.enrol(server, users))
        harness.start(server)

        def load(seconds: float, into: list[Outcome], until_accept: bool = False) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                started = time.monotonic()
                user = pool.take()
                if user is None:
                    raise RuntimeError("ran out of users: raise --users")
                outcome = harness.login(server.port, user, user.totp.at(time.time()), timeout=report.timeout + 2)
                into.append(outcome)
                if until_accept and outcome.code == ACCEPT:
                    return
                time.sleep(max(0.0, 1 / rate - (time.monotonic() - started)))

        load(3, report.before)
        print("stopping PostgreSQL", file=log, flush=True)
        pg.stop()
        stopped = time.monotonic()
        load(outage_seconds, report.during)
        print("starting PostgreSQL", file=log, flush=True)
        pg.start()
        back = time.monotonic()
        load(60, report.after, until_accept=True)
        if report.after and report.after[-1].code == ACCEPT:
            report.recovered_after = time.monotonic() - back
        report.outage_seconds = back - stopped
        load(3, report.after)
    finally:
        if server is not None:
            server.stop()
            text = harness.all_logs(server)
            report.tracebacks = text.count("Traceback")
            report.error_lines = sum(1 for line in text.splitlines() if '"level": "error"' in line)
        with contextlib.suppress(Exception):
            if pg.running():
                pg.stop()
        pg.remove()
    return report


# --- the command -----------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_schema():
    """A schema of this run's own on the shared PostgreSQL (tests/pg.py)."""
    import pg as shared

    with shared.fresh_schema() as url:
        yield url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    kill = sub.add_parser("kill", help="kill -9 during logins, then replays")
    kill.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    kill.add_argument("--cycles", type=int, default=5)
    kill.add_argument("--seconds", type=float, default=3.0, help="longest run of logins before a kill")
    kill.add_argument("--users", type=int, default=600)
    kill.add_argument("--seed", type=int, default=1)
    out = sub.add_parser("outage", help="a private PostgreSQL stopped and started under load")
    out.add_argument("--outage", type=float, default=20.0, help="seconds PostgreSQL stays down")
    out.add_argument("--rate", type=float, default=10.0, help="logins a second")
    out.add_argument("--users", type=int, default=800)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="radius-mfa-faults-") as temporary:
        directory = Path(temporary)
        if args.what == "kill":
            with contextlib.ExitStack() as stack:
                store = ("sqlite:///radius-mfa.db" if args.store == "sqlite"
                         else stack.enter_context(postgres_schema()))
                report = kill_cycles(directory, store=store, cycles=args.cycles, seconds=args.seconds,
                                     users=args.users, seed=args.seed)
        else:
            report = outage(directory, outage_seconds=args.outage, rate=args.rate, users=args.users)
        print(report)
        print("targets met" if report.ok() else "TARGETS NOT MET")
        return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
