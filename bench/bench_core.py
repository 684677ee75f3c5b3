#!/usr/bin/env python3
"""Measure the core of radius-mfa on this machine, in one command.

    python3 bench/bench_core.py [--users 200] [--requests 200] [--concurrency 8]
                                [--scenario all|inline|challenge|reject|status]

What it does, and why that way:

1. A temporary directory with a config: one client (127.0.0.1, challenge
   mode, Message-Authenticator required), the ``local`` password backend, a
   SQLite store and the audit file in the directory, log level ``warning``
   (the log is then quiet, so only problems show).
2. ``--users`` users, each with its own password and a TOTP token whose
   secret the benchmark picks, written straight into the store in-process
   (``open_store`` + ``hash_password`` in a thread pool: scrypt releases the
   GIL). One ``radius-mfa user add`` process per user would take minutes.
3. ``radius-mfa -c CONFIG serve`` as a child process; ready when it says
   ``READY=1`` on ``$NOTIFY_SOCKET`` (the systemd protocol, which the server
   speaks) or logs ``server.listening`` (hidden at level ``warning``).
4. The scenarios, each driven by ``bench/loadgen.py``, then the server is
   stopped by pid (SIGTERM, SIGKILL after 10 s) whatever happened, Ctrl-C
   included.

TOTP codes are single-use: the server accepts a code only for a time step
later than the last one used on that token. With ``factors.totp.window: 1``
each user has up to three usable steps at any moment (now-1, now, now+1),
so the benchmark hands out, per user, the oldest step that is still fresh
and still valid a few seconds from now (:class:`CodeBook`). With
``--requests`` ≤ ``--users`` every code is fresh; beyond that, codes run out
and the extra requests are replays, which the server rejects (reported).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(1, str(BENCH_DIR.parent))

import loadgen  # noqa: E402
from loadgen import LoadClient, LoadReport  # noqa: E402

from radius_mfa import passwords  # noqa: E402
from radius_mfa.model import Token, User  # noqa: E402
from radius_mfa.otp import otp_at  # noqa: E402
from radius_mfa.radius import codec  # noqa: E402
from radius_mfa.store import open_store  # noqa: E402

SCENARIOS = ("inline", "challenge", "reject", "status")
TOTP_WINDOW = 1
TOTP_PERIOD = 30
# A code handed out must stay valid this long after it was computed: the
# request may queue behind others before the server checks it.
CODE_MARGIN_SECONDS = 3.0
READY_TIMEOUT_SECONDS = 30.0
STOP_GRACE_SECONDS = 10.0


# --------------------------------------------------------------------------
# Users and their codes


@dataclass
class BenchUser:
    name: str
    password: str = field(repr=False)
    token: Token = field(repr=False)
    last_step: int | None = None     # the newest TOTP step handed out


class CodeBook:
    """Hands out TOTP codes the server will take: each step once per user."""

    def __init__(self, window: int = TOTP_WINDOW, margin: float = CODE_MARGIN_SECONDS,
                 clock: Callable[[], float] = time.time):
        self.window = window
        self.margin = margin
        self.clock = clock
        self.replays = 0             # codes handed out again because none was fresh

    def code_for(self, user: BenchUser) -> str:
        now, period = self.clock(), user.token.period
        lowest = int((now + self.margin) // period) - self.window   # still valid after the margin
        highest = int(now // period) + self.window                   # already valid now
        step = lowest if user.last_step is None else max(user.last_step + 1, lowest)
        if step > highest:
            self.replays += 1
            step = highest
        user.last_step = step if user.last_step is None else max(user.last_step, step)
        return otp_at(user.token, step)


def make_users(store_url: str, key_file: str, count: int, workers: int) -> list[BenchUser]:
    """``count`` users with a password and a TOTP token each, written to the store."""
    plain = [secrets.token_urlsafe(12) for _ in range(count)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        hashes = list(pool.map(passwords.hash_password, plain))
    users = []
    for index, (password, hashed) in enumerate(zip(plain, hashes)):
        name = f"bench{index:05d}"
        secret = base64.b32encode(secrets.token_bytes(20)).decode("ascii")
        token = Token(serial=f"BENCH{index:05d}", type="totp", secret=secret, user=name,
                      period=TOTP_PERIOD)
        users.append(BenchUser(name, password, token))
    store = open_store(store_url, key_file)
    try:
        now = time.time()
        for user, hashed in zip(users, hashes):
            store.add_user(User(name=user.name, password_hash=hashed, created=now))
        store.add_tokens(user.token for user in users)
    finally:
        store.close()
    return users


# --------------------------------------------------------------------------
# The server


def free_udp_port() -> int:
    return _free_port(socket.SOCK_DGRAM)


def free_tcp_port() -> int:
    return _free_port(socket.SOCK_STREAM)


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


LOCAL_PRIMARY = "primary:\n  backend: local\n"
TOTP_FACTORS = f"  totp: {{window: {TOTP_WINDOW}}}\n"
# the reject scenario sends many wrong passwords; it measures the
# bad-password path, not the lockout path
NO_LOCKOUT = "policy:\n  lockout: {failures: 1000000, minutes: 15}\n"


def write_config(directory: Path, port: int, secret: str, *, workers: int = 1,
                 store: str | None = None, key_file: Path | None = None,
                 client: str = "bench", mode: str = "challenge", client_extra: str = "",
                 primary: str = LOCAL_PRIMARY, factors: str = TOTP_FACTORS,
                 policy: str = NO_LOCKOUT) -> Path:
    """The radius-mfa config every benchmark starts from: one client on
    127.0.0.1 with Message-Authenticator required, the audit file in
    ``directory``, log level warning. ``primary`` and ``policy`` are whole
    sections, ``factors`` the lines below ``factors:``, ``client_extra``
    more lines of the client (indented four spaces). Mode 0600: it holds
    the shared secret."""
    key_line = f'store_key_file: "{key_file}"\n' if key_file is not None else ""
    path = directory / "radius-mfa.yaml"
    path.write_text(f"""\
server:
  name: bench
  listen:
    - udp: "127.0.0.1:{port}"
  workers: {workers}
store: "{store or store_url(directory)}"
{key_line}clients:
  - name: {client}
    address: 127.0.0.1
    secret: "{secret}"
    require_message_authenticator: true
    mode: {mode}
{client_extra}{primary}factors:
{factors}{policy}audit:
  file: "{directory / 'audit.jsonl'}"
log:
  level: warning
  format: json
""")
    path.chmod(0o600)
    return path


def store_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'bench.db'}"


def radius_mfa_command(config: Path, *words: str) -> list[str]:
    """``radius-mfa -c CONFIG WORDS…``: the installed script, or the module."""
    script = shutil.which("radius-mfa")
    base = [script] if script else [sys.executable, "-m", "radius_mfa"]
    return base + ["-c", str(config), *words]


class ServerProcess:
    """``radius-mfa serve`` as a child; stopped by pid, never by name."""

    def __init__(self, config: Path, directory: Path):
        self.config = config
        self.log_path = directory / "server.log"
        self.notify_path = directory / "notify.sock"
        self.proc: subprocess.Popen | None = None
        self.exit_code: int | None = None

    def start(self) -> None:
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            notify.bind(str(self.notify_path))
            notify.setblocking(False)
            env = dict(os.environ, NOTIFY_SOCKET=str(self.notify_path))
            with open(self.log_path, "wb") as log:
                # a session of its own: Ctrl-C reaches the benchmark, which
                # then stops the server itself
                self.proc = subprocess.Popen(radius_mfa_command(self.config, "serve"), stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL, stderr=log, env=env,
                                             start_new_session=True)
            self._wait_ready(notify)
        finally:
            notify.close()

    def _wait_ready(self, notify: socket.socket) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                if b"READY=1" in notify.recv(4096):
                    return
            except BlockingIOError:
                pass
            if "server.listening" in self.log():
                return
            if self.proc.poll() is not None:
                raise BenchError(f"the server exited with {self.proc.returncode}:\n{self.log_tail()}")
            time.sleep(0.05)
        raise BenchError(f"the server was not ready after {READY_TIMEOUT_SECONDS:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after the grace period; always reaps the child."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.exit_code = self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


class BenchError(Exception):
    """Setup or server failure: one clear message, no traceback."""


# --------------------------------------------------------------------------
# Scenarios


@dataclass(frozen=True)
class Expect:
    """The outcome a step should have; anything else is reported as a miss."""
    step: str
    outcome: str


@dataclass
class ScenarioResult:
    name: str
    what: str
    report: LoadReport
    expects: tuple[Expect, ...]

    def hits(self, expect: Expect) -> int:
        return self.report.step(expect.step).outcomes[expect.outcome]

    def ok_rate(self) -> float:
        """Finished logins (the last step's expected outcome) per second."""
        last = self.expects[-1]
        return self.hits(last) / self.report.elapsed if self.report.elapsed else 0.0

    def misses(self) -> int:
        return sum(self.report.step(e.step).sent - self.hits(e) for e in self.expects)


@dataclass
class Bench:
    target: loadgen.Target
    secret: bytes
    users: list[BenchUser]
    codes: CodeBook
    requests: int
    status_requests: int
    concurrency: int
    duration: float
    timeout: float

    def user(self, index: int) -> BenchUser:
        return self.users[index % len(self.users)]

    async def load(self, transaction: loadgen.Transaction, count: int | None = None) -> LoadReport:
        return await loadgen.run_load(self.target, self.secret, transaction=transaction,
                                      concurrency=self.concurrency, count=count or self.requests,
                                      duration=self.duration, timeout=self.timeout)

    def access_request(self, user_name: str, password: str, *,
                       state: bytes | None = None) -> loadgen.Build:
        return lambda ident: codec.build_access_request(self.secret, user_name, password,
                                                        id=ident, state=state)

    # --- the scenarios ----------------------------------------------------
    async def inline(self) -> ScenarioResult:
        """``password,CODE`` in one Access-Request: one hash, one TOTP check."""
        async def one(index: int, client: LoadClient) -> None:
            user = self.user(index)

            def build(ident: int) -> bytes:       # the code is picked at send time
                password = f"{user.password},{self.codes.code_for(user)}"
                return codec.build_access_request(self.secret, user.name, password, id=ident)

            await client.request(build)

        report = await self.load(one)
        return ScenarioResult("inline", "password,TOTP in one request", report,
                              (Expect("request", "Access-Accept"),))

    async def challenge(self) -> ScenarioResult:
        """Password → Access-Challenge with State; code + State → Access-Accept."""
        async def pair(index: int, client: LoadClient) -> None:
            user = self.user(index)
            first = await client.request(self.access_request(user.name, user.password), "password")
            if first.response is None or first.response.code != codec.ACCESS_CHALLENGE:
                return
            state = next((value for kind, value in first.response.attributes
                          if kind == codec.STATE), None)
            if state is None:
                raise BenchError("Access-Challenge without State")

            def build(ident: int) -> bytes:
                return codec.build_access_request(self.secret, user.name, self.codes.code_for(user),
                                                  id=ident, state=state)

            await client.request(build, "code")

        report = await self.load(pair)
        return ScenarioResult("challenge", "password, then code+State (a pair)", report,
                              (Expect("password", "Access-Challenge"), Expect("code", "Access-Accept")))

    async def reject(self) -> ScenarioResult:
        """A wrong password: the hash is paid, the answer is Access-Reject."""
        async def one(index: int, client: LoadClient) -> None:
            user = self.user(index)
            await client.request(self.access_request(user.name, user.password + "-wrong"))

        report = await self.load(one)
        return ScenarioResult("reject", "wrong password", report,
                              (Expect("request", "Access-Reject"),))

    async def status(self) -> ScenarioResult:
        """Status-Server: the packet path alone (no store, no hash): the ceiling."""
        async def one(index: int, client: LoadClient) -> None:
            await client.request(lambda ident: codec.build_access_request(
                self.secret, None, id=ident, code=codec.STATUS_SERVER))

        report = await self.load(one, self.status_requests)
        return ScenarioResult("status", "Status-Server (no hash, no store)", report,
                              (Expect("request", "Access-Accept"),))


async def run_scenarios(bench: Bench, names: list[str]) -> list[ScenarioResult]:
    results = []
    for name in names:
        print(f"running {name} …", file=sys.stderr, flush=True)
        results.append(await getattr(bench, name)())
    return results


# --------------------------------------------------------------------------
# Output


def machine_facts() -> list[tuple[str, str]]:
    facts = [
        ("cpus (nproc)", str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                             else os.cpu_count())),
        ("cpu", cpu_model()),
        ("python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("os", platform.platform()),
        ("password hash", f"scrypt ln={passwords.SCRYPT_LOG2_N} r={passwords.SCRYPT_R} "
                          f"p={passwords.SCRYPT_P} ({128 * passwords.SCRYPT_R * (1 << passwords.SCRYPT_LOG2_N) >> 20} MiB)"),
        ("one verification", f"{hash_milliseconds():.1f} ms (in this process, one thread)"),
    ]
    return facts


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def hash_milliseconds(rounds: int = 5) -> float:
    """Median wall time of one scrypt verification, after a warm-up."""
    encoded = passwords.hash_password("benchmark")
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        passwords.verify_password("benchmark", encoded)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2] * 1000.0


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def results_table(results: list[ScenarioResult]) -> str:
    header = (f"{'scenario':<10} {'step':<9} {'sent':>5} {'expected':>22} {'req/s':>7} "
              f"{'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}  other outcomes")
    lines = [header, "-" * len(header)]
    for result in results:
        for expect in result.expects:
            stats = result.report.step(expect.step)
            other = ", ".join(f"{name} {n}" for name, n in sorted(stats.outcomes.items())
                              if name != expect.outcome) or "-"
            lines.append(
                f"{result.name:<10} {expect.step:<9} {stats.sent:>5} "
                f"{f'{expect.outcome} {result.hits(expect)}':>22} "
                f"{result.report.rate(expect.step):>7.1f} "
                f"{_ms(stats.percentile_ms(0.5)):>8} {_ms(stats.percentile_ms(0.9)):>8} "
                f"{_ms(stats.percentile_ms(0.99)):>8} {_ms(stats.max_ms()):>8}  {other}")
    lines.append("")
    for result in results:
        unit = "pairs" if result.name == "challenge" else "requests"
        lines.append(f"{result.name:<10} {result.what}: {result.ok_rate():.1f} successful {unit}/s "
                     f"over {result.report.elapsed:.2f} s"
                     + (f", invalid replies {result.report.invalid_replies}"
                        if result.report.invalid_replies else "")
                     + (f", errors: {'; '.join(result.report.failed)}" if result.report.failed else ""))
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench_core.py",
        description="Start radius-mfa on a loopback port with generated users and measure "
                    "requests per second and latency per scenario.")
    parser.add_argument("--users", type=int, default=200, help="users to create (default 200)")
    parser.add_argument("--requests", type=int, default=None,
                        help="requests (pairs for challenge) per scenario (default: --users, "
                             "so every TOTP code is fresh)")
    parser.add_argument("--status-requests", type=int, default=5000,
                        help="Status-Server requests in the status scenario (default 5000)")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="requests in flight (default 8)")
    parser.add_argument("--scenario", choices=("all",) + SCENARIOS, default="all",
                        help="which scenario to run (default all)")
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds after which a scenario starts no new request (default 60)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for each reply; no retransmission (default 10)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (config, store, audit, server log)")
    return parser


def _validate(args: argparse.Namespace) -> None:
    if args.requests is None:
        args.requests = args.users
    for name in ("users", "requests", "status_requests", "concurrency"):
        if getattr(args, name) < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be at least 1")
    if not args.duration > 0 or not args.timeout > 0:
        raise BenchError("--duration and --timeout must be positive")


def run(args: argparse.Namespace, directory: Path) -> int:
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    secret = secrets.token_hex(16)
    port = free_udp_port()
    config = write_config(directory, port, secret)
    facts = machine_facts()

    started = time.perf_counter()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # the key file the server finds beside its config (store_key_file's default)
    users = make_users(store_url(directory), str(directory / "store.key"), args.users, workers=cpus)
    setup_seconds = time.perf_counter() - started

    server = ServerProcess(config, directory)
    try:
        server.start()
        print(f"server pid {server.proc.pid} on 127.0.0.1:{port} "
              f"({args.users} users made in {setup_seconds:.1f} s)", file=sys.stderr, flush=True)
        bench = Bench(target=loadgen.Target("127.0.0.1", port), secret=secret.encode(),
                      users=users, codes=CodeBook(), requests=args.requests,
                      status_requests=args.status_requests,
                      concurrency=args.concurrency, duration=args.duration, timeout=args.timeout)
        results = asyncio.run(run_scenarios(bench, names))
    finally:
        server.stop()

    print("machine")
    for key, value in facts:
        print(f"  {key:<18} {value}")
    print(f"  {'setup':<18} {args.users} users (scrypt hash + TOTP token) in {setup_seconds:.1f} s")
    print(f"\nrun: {args.requests} requests per scenario ({args.status_requests} for status), "
          f"concurrency {args.concurrency}, "
          f"timeout {args.timeout:g} s, no retransmission\n")
    print(results_table(results))
    return _verdict(results, bench.codes, server)


def _verdict(results: list[ScenarioResult], codes: CodeBook, server: ServerProcess) -> int:
    """0 when every request got the expected answer and the server exited cleanly."""
    status = 0
    if codes.replays:
        print(f"\nnote: {codes.replays} requests reused a TOTP step (more requests than "
              f"users can answer in this time window): the server rejects those as replays")
    misses = sum(result.misses() for result in results)
    if misses:
        print(f"\nwarning: {misses} requests did not get the expected answer")
        status = 1
    noise = [line for line in server.log().splitlines() if line.strip()]
    if noise:
        print(f"\nwarning: the server logged {len(noise)} lines at warning level or above; first:")
        print("\n".join(noise[:5]))
        status = 1
    if server.exit_code != 0:
        print(f"\nwarning: the server exited with {server.exit_code} after SIGTERM (expected 0)")
        status = 1
    return status


def run_in_temporary_directory(tool: str, prefix: str, args: argparse.Namespace,
                               run: Callable[[argparse.Namespace, Path], int],
                               validate: Callable[[argparse.Namespace], None] | None = None) -> int:
    """What every benchmark's ``main`` does around its ``run``: a temporary
    directory (kept with ``--keep``), one clear line and exit 2 for a bad
    argument or a failed run, 130 on Ctrl-C (the servers are stopped by
    their own ``finally``)."""
    try:
        if validate is not None:
            validate(args)
        directory = Path(tempfile.mkdtemp(prefix=prefix))
        try:
            return run(args, directory)
        finally:
            if args.keep:
                print(f"\nkept {directory}", file=sys.stderr)
            else:
                shutil.rmtree(directory, ignore_errors=True)
    except (BenchError, loadgen.LoadError, OSError) as exc:
        print(f"{tool}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{tool}: interrupted; the servers were stopped", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    return run_in_temporary_directory("bench_core", "radius-mfa-bench-", _parser().parse_args(argv),
                                      run, _validate)


if __name__ == "__main__":
    sys.exit(main())
