#!/usr/bin/env python3
"""radius-mfa and FreeRADIUS 3.2 side by side, on the same machine, in one command.

    python3 bench/bench_vs_freeradius.py            # every scenario, ~5 min on 2 cores

Both servers get the same users, the same stored password hashes, the same
TOTP secrets and the same requests (mix, count, concurrency), one server at
a time, driven by ``bench/loadgen.py``. For each scenario the script prints
requests/s, p50 and p99 latency, the peak memory (RSS of the server process
and all its children) and the ratio radius-mfa / FreeRADIUS.

Why it is built this way:

* **The same password hash on both sides.** FreeRADIUS's rlm_pap reads
  ``PBKDF2-Password`` in passlib's form, ``$pbkdf2-sha256$<iterations>$<salt>$<key>``,
  which is also a form radius-mfa verifies (``passwords.py``). So each
  user's hash is computed once and the very same string is stored on both
  sides: same algorithm, iterations, salt and key length, same work per
  check (``--iterations``, default 10,000: a hash of ~1.7 ms, small enough
  that the servers' own overhead shows; both link OpenSSL's PBKDF2).
* **Users written directly.** radius-mfa's SQLite store is filled
  in-process with ``Store.add_users`` (one transaction, as ``user import``
  does with carried-over hashes) once, and each radius-mfa run gets a fresh
  copy of that file, so TOTP replay state never leaks between runs.
  FreeRADIUS reads a ``users`` file (rlm_files) with ``PBKDF2-Password`` and
  ``TOTP-Secret`` per user.
* **TOTP codes each side accepts.** radius-mfa accepts a step once (replay
  guard) within ``window: 1``; :class:`bench_core.CodeBook` hands out fresh
  steps. FreeRADIUS 3.2.1's rlm_totp has no options, accepts only the
  current 30 s step and keeps no record of used codes, so it gets the code
  of the current step at send time (a request that crosses a step boundary
  in flight can be rejected; the ``ok`` column shows it).
* **One server at a time**, each stopped by its pid (SIGTERM, then
  SIGKILL), whatever happens; FreeRADIUS runs with a config directory of its
  own (``bench/freeradius/radiusd.conf``) in the temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(1, str(BENCH_DIR.parent))

import loadgen  # noqa: E402
from bench_core import (LOCAL_PRIMARY, NO_LOCKOUT, BenchError, BenchUser, CodeBook, ServerProcess,  # noqa: E402
                        cpu_model, free_tcp_port, free_udp_port, run_in_temporary_directory, write_config)
from loadgen import LoadClient, LoadReport  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from radius_mfa.model import Token, User  # noqa: E402
from radius_mfa.otp import otp_at  # noqa: E402
from radius_mfa.radius import codec  # noqa: E402
from radius_mfa.store import open_store  # noqa: E402

SCENARIOS = ("inline", "challenge", "upstream")
FREERADIUS = "/usr/sbin/freeradius"
FREERADIUS_TEMPLATE = BENCH_DIR / "freeradius" / "radiusd.conf"
TOTP_PERIOD = 30
SALT_BYTES = 16
KEY_BYTES = 32
READY_TIMEOUT_SECONDS = 30.0
STOP_GRACE_SECONDS = 10.0
RSS_SAMPLE_SECONDS = 0.5
METRICS_REFRESH_SECONDS = 5.0                    # radius_mfa.metrics.STORE_PING_SECONDS
MIN_PBKDF2_ITERATIONS = 10_000                   # radius-mfa's passwords.pbkdf2_iterations floor
PG_TEMPLATE = "radius_mfa_bench_template"
PG_RUN = "radius_mfa_bench_run"


# --------------------------------------------------------------------------
# Users: one hash per user, stored identically on both sides


def pbkdf2_hash(password: str, iterations: int) -> str:
    """passlib's ``$pbkdf2-sha256$`` form, standard base64 without padding:
    what radius-mfa and FreeRADIUS's rlm_pap both read."""
    salt = secrets.token_bytes(SALT_BYTES)
    key = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations, KEY_BYTES)
    b64 = lambda raw: base64.b64encode(raw).decode("ascii").rstrip("=")  # noqa: E731
    return f"$pbkdf2-sha256${iterations}${b64(salt)}${b64(key)}"


@dataclass
class Population:
    users: list[BenchUser]
    hashes: list[str] = field(repr=False)
    seconds: float = 0.0

    def reset_codes(self) -> None:
        """Forget the TOTP steps handed out: the next server starts from a fresh store."""
        for user in self.users:
            user.last_step = None


def make_population(count: int, iterations: int, threads: int) -> Population:
    started = time.perf_counter()
    plain = [secrets.token_urlsafe(12) for _ in range(count)]
    with ThreadPoolExecutor(max_workers=threads) as pool:     # pbkdf2_hmac releases the GIL
        hashes = list(pool.map(lambda p: pbkdf2_hash(p, iterations), plain))
    users = []
    for index, password in enumerate(plain):
        name = f"bench{index:05d}"
        secret = base64.b32encode(secrets.token_bytes(20)).decode("ascii")
        users.append(BenchUser(name, password, Token(serial=f"BENCH{index:05d}", type="totp",
                                                     secret=secret, user=name, period=TOTP_PERIOD)))
    return Population(users, hashes, time.perf_counter() - started)


def write_store(path: Path | str, key_file: Path, population: Population) -> None:
    """The users into a SQLite file (a path) or the store a URL names."""
    store = open_store(path if isinstance(path, str) else f"sqlite:///{path}", str(key_file))
    try:
        now = time.time()
        store.add_users((User(name=u.name, password_hash=h, created=now), [u.token])
                        for u, h in zip(population.users, population.hashes))
    finally:
        store.close()


class PostgresCopies:
    """The users in a PostgreSQL template database, written once; each
    radius-mfa run gets a fresh copy (``CREATE DATABASE … TEMPLATE``), so no
    run inherits used TOTP steps, as the SQLite rows copy their file."""

    def __init__(self, url: str):
        import psycopg                           # the store's own driver

        self._psycopg = psycopg
        self.url = url
        self.base = url.rsplit("/", 1)[0]
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=5):
                pass
        except psycopg.Error as exc:
            raise BenchError(f"PostgreSQL at {url}: {exc}".strip()
                             + " (or pass --no-postgresql)") from None

    def _admin(self, *statements: str) -> None:
        with self._psycopg.connect(self.url, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)

    def make_template(self, key_file: Path, population: "Population") -> None:
        self._admin(f"DROP DATABASE IF EXISTS {PG_RUN}", f"DROP DATABASE IF EXISTS {PG_TEMPLATE}",
                    f"CREATE DATABASE {PG_TEMPLATE}")
        write_store(f"{self.base}/{PG_TEMPLATE}", key_file, population)

    def fresh_copy(self) -> str:
        self._admin(f"DROP DATABASE IF EXISTS {PG_RUN}",
                    f"CREATE DATABASE {PG_RUN} TEMPLATE {PG_TEMPLATE}")
        return f"{self.base}/{PG_RUN}"

    def drop(self) -> None:
        try:
            self._admin(f"DROP DATABASE IF EXISTS {PG_RUN}", f"DROP DATABASE IF EXISTS {PG_TEMPLATE}")
        except self._psycopg.Error as exc:
            print(f"could not drop the benchmark databases: {exc}", file=sys.stderr)


def write_freeradius_users(path: Path, population: Population) -> None:
    with open(path, "w") as out:
        for user, hashed in zip(population.users, population.hashes):
            out.write(f'{user.name}\tPBKDF2-Password := "{hashed}", '
                      f'TOTP-Secret := "{user.token.secret}"\n')
    path.chmod(0o600)


# --------------------------------------------------------------------------
# Memory: RSS of a process and all its descendants


def tree_pids(pid: int) -> list[int]:
    pids, queue = [], [pid]
    while queue:
        current = queue.pop()
        pids.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    queue.extend(int(child) for child in handle.read().split())
        except OSError:
            continue
    return pids


def tree_rss_bytes(pid: int) -> int:
    total = 0
    for one in tree_pids(pid):
        try:
            with open(f"/proc/{one}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process tree so far (children that have
    exited and were reaped count through cutime/cstime)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for one in tree_pids(pid):
        try:
            with open(f"/proc/{one}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            total += sum(int(value) for value in fields[11:15])   # utime stime cutime cstime
        except (OSError, IndexError, ValueError):
            continue
    return total / ticks


class RssSampler:
    """Samples the RSS of a process tree in a thread; keeps the peak, and
    the CPU time the tree spent between enter and exit."""

    def __init__(self, pid: int, interval: float = RSS_SAMPLE_SECONDS):
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.cpu_seconds = 0.0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "RssSampler":
        self.cpu_seconds = -tree_cpu_seconds(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.cpu_seconds += tree_cpu_seconds(self.pid)

    def _sample(self) -> None:
        rss = tree_rss_bytes(self.pid)
        self.samples.append((time.time(), rss))
        self.peak = max(self.peak, rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)


# --------------------------------------------------------------------------
# The servers


@dataclass(frozen=True)
class Ports:
    inline: int
    challenge: int
    upstream: int            # the scenario's entry point
    home: int                # the slow upstream responder


class FreeRadiusProcess:
    """FreeRADIUS 3.2 with a config directory of its own: ``template`` with
    each ``@KEY@`` of ``values`` filled in, as ``radiusd.conf``, and the
    users' file. Ready when it logs "Ready to process requests"; stopped by
    its pid (SIGTERM, then SIGKILL). ``-f``: in the foreground with its
    threads on (a TLS listener needs them; ``-X`` turns them off)."""

    def __init__(self, directory: Path, template: Path, values: dict[str, object],
                 population: Population):
        self.directory = directory
        self.proc: subprocess.Popen | None = None
        for sub in ("log", "run", "mods-config"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        text = template.read_text()
        for key, value in {"CONFDIR": directory, **values}.items():
            text = text.replace(f"@{key}@", str(value))
        (directory / "radiusd.conf").write_text(text)
        (directory / "radiusd.conf").chmod(0o600)
        (directory / "dictionary").write_text("# the installed dictionaries only\n")
        write_freeradius_users(directory / "users", population)
        self.log_path = directory / "log" / "radius.log"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> None:
        with open(self.directory / "log" / "stdout.log", "wb") as out:
            self.proc = subprocess.Popen([FREERADIUS, "-f", "-d", str(self.directory)],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if "Ready to process requests" in self.log():
                return
            if self.proc.poll() is not None:
                raise BenchError(f"freeradius exited with {self.proc.returncode}:\n{self.log()[-2000:]}")
            time.sleep(0.05)
        raise BenchError("freeradius was not ready in time:\n" + self.log()[-2000:])

    def stop(self) -> None:
        _stop(self.proc)

    def log(self) -> str:
        text = ""
        for path in (self.log_path, self.directory / "log" / "stdout.log"):
            if path.exists():
                text += path.read_text(errors="replace")
        return text


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


class UpstreamProcess:
    """``bench/slow_upstream.py`` as a child: the 200 ms RADIUS server."""

    def __init__(self, port: int, secret: str, delay: float, directory: Path):
        self.port, self.secret, self.delay = port, secret, delay
        self.log_path = directory / "slow_upstream.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ, BENCH_UPSTREAM_SECRET=self.secret)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(BENCH_DIR / "slow_upstream.py"), "--listen",
                 f"127.0.0.1:{self.port}", "--secret-env", "BENCH_UPSTREAM_SECRET",
                 "--delay", str(self.delay)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=env,
                start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if "slow upstream on" in self.log_path.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                raise BenchError("slow_upstream.py exited: " + self.log_path.read_text(errors="replace"))
            time.sleep(0.05)
        raise BenchError("slow_upstream.py was not ready in time")

    def stop(self) -> None:
        _stop(self.proc)


def write_radius_mfa_config(directory: Path, *, port: int, secret: str, store: Path | str,
                            key_file: Path, workers: int,
                            upstream: tuple[int, str] | None, iterations: int,
                            metrics_port: int | None = None) -> Path:
    """Challenge-mode client (which takes ``password,CODE`` too), the local
    backend or the slow upstream, log level warning. ``passwords`` is the
    very scheme and cost of the stored hashes (pbkdf2-sha256, ``iterations``):
    nothing is re-hashed on sign-in, and the timing floor of a password check
    is one check of that same hash, as FreeRADIUS does."""
    if upstream is None:
        primary = LOCAL_PRIMARY
    else:
        home_port, home_secret = upstream
        primary = (f"primary:\n  backend: radius\n  radius:\n    servers:\n"
                   f"      - {{address: \"127.0.0.1:{home_port}\", secret: \"{home_secret}\"}}\n"
                   f"    timeout: 5\n    retries: 0\n")
    metrics = f'metrics:\n  listen: "127.0.0.1:{metrics_port}"\n' if metrics_port else ""
    return write_config(directory, port, secret, workers=workers,
                        store=store if isinstance(store, str) else f"sqlite:///{store}",
                        key_file=key_file, primary=primary, factors="  totp: {window: 1}\n",
                        policy=NO_LOCKOUT + passwords_section(iterations) + metrics)


def check_iterations(iterations: int) -> None:
    """radius-mfa's passwords section is set to the stored hashes' own cost,
    and it takes no fewer: a cheaper stored hash would be padded and
    re-hashed, which is not the same work on both sides."""
    if iterations < MIN_PBKDF2_ITERATIONS:
        raise BenchError(f"--iterations: at least {MIN_PBKDF2_ITERATIONS} (the least radius-mfa's "
                         "passwords.pbkdf2_iterations takes; both sides must do the same work)")


def passwords_section(iterations: int) -> str:
    return f"passwords:\n  scheme: pbkdf2-sha256\n  pbkdf2_iterations: {iterations}\n"


# --------------------------------------------------------------------------
# Scenarios


@dataclass
class Settings:
    requests: int
    concurrency: int
    upstream_requests: int
    upstream_concurrency: int
    upstream_delay: float
    duration: float
    timeout: float
    rate: float | None


@dataclass
class Row:
    scenario: str
    server: str
    workers: str
    report: LoadReport
    steps: tuple[tuple[str, str], ...]          # (step, expected outcome)
    peak_rss: int
    cpu_seconds: float
    work: "Work | None" = None                  # radius-mfa: thread hops and transactions

    def sent(self) -> int:
        return sum(self.report.step(step).sent for step, _ in self.steps)

    def cpu_ms_per_request(self) -> float:
        sent = self.sent()
        return self.cpu_seconds * 1000.0 / sent if sent else 0.0

    def per_request(self, count: float) -> str:
        sent = self.sent()
        return f"{count / sent:.2f}" if sent and self.work is not None else "-"

    def ok(self) -> int:
        step, outcome = self.steps[-1]
        return self.report.step(step).outcomes[outcome]

    def ok_rate(self) -> float:
        return self.ok() / self.report.elapsed if self.report.elapsed else 0.0


class Driver:
    """Sends one scenario's requests to one server."""

    def __init__(self, secret: bytes, population: Population, settings: Settings,
                 code_for: Callable[[BenchUser], str]):
        self.secret = secret
        self.population = population
        self.settings = settings
        self.code_for = code_for

    def user(self, index: int, offset: int = 0) -> BenchUser:
        users = self.population.users
        return users[(index + offset) % len(users)]

    async def _load(self, port: int, transaction, count: int, concurrency: int) -> LoadReport:
        return await loadgen.run_load(loadgen.Target("127.0.0.1", port), self.secret,
                                      transaction=transaction, concurrency=concurrency,
                                      count=count, duration=self.settings.duration,
                                      timeout=self.settings.timeout, rate=self.settings.rate)

    def _inline(self, offset: int):
        async def one(index: int, client: LoadClient) -> None:
            user = self.user(index, offset)

            def build(ident: int) -> bytes:          # the code is picked at send time
                return codec.build_access_request(self.secret, user.name,
                                                  f"{user.password},{self.code_for(user)}", id=ident)

            await client.request(build)
        return one

    async def inline(self, port: int) -> LoadReport:
        return await self._load(port, self._inline(0), self.settings.requests, self.settings.concurrency)

    async def upstream(self, port: int) -> LoadReport:
        return await self._load(port, self._inline(2 * self.settings.requests),
                                self.settings.upstream_requests, self.settings.upstream_concurrency)

    async def challenge(self, port: int) -> LoadReport:
        async def pair(index: int, client: LoadClient) -> None:
            user = self.user(index, self.settings.requests)
            first = await client.request(lambda ident: codec.build_access_request(
                self.secret, user.name, user.password, id=ident), "password")
            if first.response is None or first.response.code != codec.ACCESS_CHALLENGE:
                return
            state = next((v for k, v in first.response.attributes if k == codec.STATE), None)
            if state is None:
                raise BenchError("Access-Challenge without State")
            await client.request(lambda ident: codec.build_access_request(
                self.secret, user.name, self.code_for(user), id=ident, state=state), "code")

        return await self._load(port, pair, self.settings.requests, self.settings.concurrency)


STEPS = {
    "inline": (("request", "Access-Accept"),),
    "upstream": (("request", "Access-Accept"),),
    "challenge": (("password", "Access-Challenge"), ("code", "Access-Accept")),
}
WHAT = {
    "inline": "password,TOTP in one Access-Request, local password hash + TOTP",
    "challenge": "password -> Access-Challenge with State; code + State -> Access-Accept (pairs)",
    "upstream": "password,TOTP; the password checked by an upstream RADIUS server "
                "that answers after the delay, the code locally",
}


def current_code(user: BenchUser) -> str:
    """FreeRADIUS 3.2.1's rlm_totp takes the current step only."""
    return otp_at(user.token, int(time.time() // user.token.period))


def run_scenario(name: str, driver: Driver, port: int, pid: int, server: str,
                 workers: str, probe: "WorkProbe | None" = None) -> Row:
    print(f"  {name} on {server} (workers {workers}) …", file=sys.stderr, flush=True)
    before = probe.sample() if probe is not None else None
    with RssSampler(pid) as sampler:
        report = asyncio.run(getattr(driver, name)(port))
    work = probe.sample() - before if probe is not None else None
    return Row(name, server, workers, report, STEPS[name], sampler.peak, sampler.cpu_seconds, work)


@dataclass(frozen=True)
class Work:
    """radius-mfa's own counts (its /metrics): thread hops by pool, store
    transactions by kind."""
    hops: dict[str, float]
    transactions: dict[str, float]

    def __sub__(self, other: "Work") -> "Work":
        return Work({k: v - other.hops.get(k, 0.0) for k, v in self.hops.items()},
                    {k: v - other.transactions.get(k, 0.0) for k, v in self.transactions.items()})


class WorkProbe:
    """Reads radius_mfa_thread_calls_total and radius_mfa_store_transactions_total.
    A single process brings them up to date when scraped; workers every
    few seconds, so with workers the probe waits that long first."""

    def __init__(self, port: int, workers: int):
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.settle = METRICS_REFRESH_SECONDS + 0.5 if workers > 1 else 0.0

    def sample(self) -> Work:
        time.sleep(self.settle)
        with urllib.request.urlopen(self.url, timeout=10) as answer:
            text = answer.read().decode()
        hops: dict[str, float] = {}
        transactions: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "radius_mfa_thread_calls_total":
                    hops[sample.labels["pool"]] = sample.value
                elif sample.name == "radius_mfa_store_transactions_total":
                    transactions[sample.labels["kind"]] = sample.value
        return Work(hops, transactions)


# --------------------------------------------------------------------------
# Output


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def scenario_table(name: str, rows: list[Row], settings: Settings) -> str:
    count = settings.upstream_requests if name == "upstream" else settings.requests
    flight = settings.upstream_concurrency if name == "upstream" else settings.concurrency
    pace = f", {settings.rate:g}/s offered" if settings.rate else ""
    lines = [f"scenario {name}: {WHAT[name]}",
             f"  {count} {'pairs' if name == 'challenge' else 'requests'}, "
             f"{flight} in flight{pace}"]
    header = (f"  {'server':<17} {'workers':>7} {'step':<9} {'requests':>8} {'ok':>6} "
              f"{'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'RSS MB':>7} {'CPU ms':>7} {'ratio':>6} "
              f"{'hops':>5} {'tx r':>5} {'tx w':>5}")
    lines += [header, "  " + "-" * (len(header) - 2)]
    reference = next((r for r in rows if r.server.startswith("FreeRADIUS")), None)
    for row in rows:
        ratio = ("-" if reference is None or row is reference or not reference.ok_rate()
                 else f"{row.ok_rate() / reference.ok_rate():.2f}")
        for position, (step, outcome) in enumerate(row.steps):
            stats = row.report.step(step)
            last = position == len(row.steps) - 1
            lines.append(
                f"  {row.server if position == 0 else '':<17} "
                f"{row.workers if position == 0 else '':>7} {step:<9} {stats.sent:>8} "
                f"{stats.outcomes[outcome]:>6} {row.report.rate(step) if not last else row.ok_rate():>8.1f} "
                f"{_ms(stats.percentile_ms(0.5)):>8} {_ms(stats.percentile_ms(0.99)):>8} "
                f"{f'{row.peak_rss / 2**20:.0f}' if position == 0 else '':>7} "
                f"{f'{row.cpu_ms_per_request():.2f}' if position == 0 else '':>7} "
                f"{ratio if last else '':>6} "
                f"{row.per_request(sum(row.work.hops.values())) if row.work and position == 0 else '':>5} "
                f"{row.per_request(row.work.transactions.get('read', 0)) if row.work and position == 0 else '':>5} "
                f"{row.per_request(row.work.transactions.get('write', 0)) if row.work and position == 0 else '':>5}")
        other = {f"{s}:{k}": n for s, _ in row.steps for k, n in row.report.step(s).outcomes.items()
                 if k != dict(row.steps)[s]}
        if other or row.report.late_starts or row.report.failed:
            lines.append(f"  {'':<17} {'':>7} note: other outcomes {other or '-'}"
                         + (f", {row.report.late_starts} late starts" if row.report.late_starts else "")
                         + (f", errors {row.report.failed}" if row.report.failed else ""))
    lines.append("  (req/s on a server's last line: successful logins per second; RSS MB: peak "
                 "of the server and its children; CPU ms: the server's CPU time per request "
                 "sent; ratio: radius-mfa / FreeRADIUS logins per second; hops: radius-mfa's thread "
                 "hops (store, hash) per request sent; tx r / tx w: its store read and write "
                 "transactions per request sent, the audit rows' batches included)")
    return "\n".join(lines)


def freeradius_version() -> str:
    try:
        out = subprocess.run([FREERADIUS, "-v"], capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[0].split("Version")[1].split(",")[0].strip()
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


# --------------------------------------------------------------------------
# Main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench_vs_freeradius.py",
        description="Run radius-mfa and FreeRADIUS 3.2 side by side on the same users and "
                    "requests; print requests/s, p50/p99 latency, memory and the ratio.")
    parser.add_argument("--users", type=int, default=10_000, help="users on both sides (default 10000)")
    parser.add_argument("--iterations", type=int, default=10_000,
                        help="PBKDF2-SHA256 iterations of every stored hash (default 10000)")
    parser.add_argument("--requests", type=int, default=10_000,
                        help="requests (pairs for challenge) per server in inline and challenge "
                             "(default 10000)")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="requests in flight in inline and challenge (default 32)")
    parser.add_argument("--upstream-requests", type=int, default=10_000,
                        help="requests per server in the upstream scenario (default 10000)")
    parser.add_argument("--upstream-concurrency", type=int, default=1_000,
                        help="requests in flight in the upstream scenario (default 1000)")
    parser.add_argument("--upstream-delay", type=float, default=0.2,
                        help="seconds the upstream server takes to answer (default 0.2)")
    parser.add_argument("--workers", default="1,2",
                        help="radius-mfa server.workers values to run, comma-separated (default 1,2)")
    parser.add_argument("--scenario", choices=("all",) + SCENARIOS, default="all")
    parser.add_argument("--no-freeradius", action="store_true", help="run radius-mfa only")
    parser.add_argument("--rate", type=float, default=None,
                        help="open loop: offer this many requests (pairs) per second instead of "
                             "sending as fast as replies come back")
    parser.add_argument("--duration", type=float, default=120.0,
                        help="a run starts no new request after this many seconds (default 120)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for each reply; no retransmission (default 10)")
    parser.add_argument("--postgresql", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        metavar="URL",
                        help="a PostgreSQL server where the script may create and drop the "
                             f"databases {PG_TEMPLATE} and {PG_RUN} (default: the local one, "
                             "user postgres)")
    parser.add_argument("--no-postgresql", action="store_true",
                        help="no radius-mfa row on the PostgreSQL store")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return parser


def _validate(args: argparse.Namespace) -> list[int]:
    for name in ("users", "iterations", "requests", "concurrency", "upstream_requests",
                 "upstream_concurrency"):
        if getattr(args, name) < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be at least 1")
    check_iterations(args.iterations)
    try:
        workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        raise BenchError("--workers: comma-separated numbers, e.g. 1,2") from None
    if not workers or min(workers) < 1:
        raise BenchError("--workers: at least one value, each at least 1")
    if not os.path.exists(FREERADIUS) and not args.no_freeradius:
        raise BenchError(f"{FREERADIUS} not found: install the freeradius package or pass --no-freeradius")
    return workers


def run(args: argparse.Namespace, directory: Path) -> int:
    workers_list = _validate(args)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    cpus = len(os.sched_getaffinity(0))
    settings = Settings(args.requests, args.concurrency, args.upstream_requests,
                        args.upstream_concurrency, args.upstream_delay, args.duration,
                        args.timeout, args.rate)
    secret, home_secret = secrets.token_hex(16), secrets.token_hex(16)

    print(f"making {args.users} users (PBKDF2-SHA256, {args.iterations} iterations) …",
          file=sys.stderr, flush=True)
    population = make_population(args.users, args.iterations, cpus)
    template = directory / "template.db"
    key_file = directory / "store.key"           # seals the token secrets of every copy
    write_store(template, key_file, population)
    pg = None
    if not args.no_postgresql:
        pg = PostgresCopies(args.postgresql)
        pg.make_template(key_file, population)

    ports = Ports(free_udp_port(), free_udp_port(), free_udp_port(), free_udp_port())
    upstream = UpstreamProcess(ports.home, home_secret, args.upstream_delay, directory) \
        if "upstream" in names else None
    rows: dict[str, list[Row]] = {name: [] for name in names}
    try:
        if upstream is not None:
            upstream.start()
        if not args.no_freeradius:
            fr = FreeRadiusProcess(directory / "freeradius", FREERADIUS_TEMPLATE, {
                "PORT": ports.inline, "CHALLENGE_PORT": ports.challenge,
                "UPSTREAM_SCENARIO_PORT": ports.upstream, "UPSTREAM_PORT": ports.home,
                "SECRET": secret, "UPSTREAM_SECRET": home_secret}, population)
            fr.start()
            label = f"FreeRADIUS {freeradius_version()}"
            try:
                driver = Driver(secret.encode(), population, settings, current_code)
                for name in names:
                    port = {"inline": ports.inline, "challenge": ports.challenge,
                            "upstream": ports.upstream}[name]
                    rows[name].append(run_scenario(name, driver, port, fr.pid, label, "-"))
            finally:
                fr.stop()
        # radius-mfa with each workers value on SQLite, then on PostgreSQL with the most
        runs = [(workers, "sqlite") for workers in workers_list]
        if pg is not None:
            runs.append((max(workers_list), "postgresql"))
        for workers, kind in runs:
            for backend in ("local", "radius"):
                todo = [n for n in names if (n == "upstream") == (backend == "radius")]
                if not todo:
                    continue
                run_dir = directory / f"radius-mfa-w{workers}-{backend}-{kind}"
                run_dir.mkdir()
                if kind == "sqlite":
                    store: Path | str = run_dir / "bench.db"
                    shutil.copyfile(template, store)
                else:
                    store = pg.fresh_copy()
                population.reset_codes()
                codes = CodeBook()
                port = free_udp_port()
                metrics_port = free_tcp_port()
                config = write_radius_mfa_config(
                    run_dir, port=port, secret=secret, store=store, key_file=key_file, workers=workers,
                    upstream=(ports.home, home_secret) if backend == "radius" else None,
                    iterations=args.iterations, metrics_port=metrics_port)
                server = ServerProcess(config, run_dir)
                label = "radius-mfa" if kind == "sqlite" else "radius-mfa PG"
                try:
                    server.start()
                    driver = Driver(secret.encode(), population, settings, codes.code_for)
                    probe = WorkProbe(metrics_port, workers)
                    for name in todo:
                        rows[name].append(run_scenario(name, driver, port, server.proc.pid,
                                                       label, str(workers), probe))
                finally:
                    server.stop()
    finally:
        if upstream is not None:
            upstream.stop()
        if pg is not None:
            pg.drop()

    print("machine")
    print(f"  cpus (nproc)       {cpus}")
    print(f"  cpu                {cpu_model()}")
    print(f"  python             {platform.python_implementation()} {platform.python_version()}")
    print(f"  FreeRADIUS         {freeradius_version()}")
    print(f"  users              {args.users}, each with a TOTP token, made in {population.seconds:.1f} s")
    print(f"  password hash      PBKDF2-SHA256, {args.iterations} iterations, {SALT_BYTES}-byte salt, "
          f"{KEY_BYTES}-byte key: the same string on both sides")
    print()
    for name in names:
        print(scenario_table(name, rows[name], settings))
        print()
    misses = sum(row.report.step(s).sent - row.report.step(s).outcomes[o]
                 for name in names for row in rows[name] for s, o in row.steps)
    if misses:
        print(f"note: {misses} requests did not get the expected answer (see the notes above)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_in_temporary_directory("bench_vs_freeradius", "radius-mfa-vs-fr-",
                                      _parser().parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
