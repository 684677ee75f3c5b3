#!/usr/bin/env python3
"""Inline logins over UDP and over RADIUS over TLS, radius-mfa and FreeRADIUS 3.2, in one command.

    python3 bench/bench_tls.py          # 2 to 3 min on 2 cores

Every row sends the same kind of request: ``password,CODE`` in one
Access-Request (a PBKDF2 check and a TOTP check), for the same users with
the same stored hashes as ``bench_vs_freeradius.py``. The rows:

* ``udp``: ``bench/loadgen.py``, ``--connections`` × ``--in-flight``
  requests in flight over UDP;
* ``tls``: RADIUS over TLS as RFC 6614 has it (no ALPN offered, the
  shared secret ``radsec``, Message-Authenticator on every packet),
  ``bench/tlsload.py``: ``--connections`` long-lived connections opened
  once, as NASes keep them, ``--in-flight`` requests pipelined on each and
  matched by Identifier;
* ``tls 1.1``: the same over RADIUS/1.1 (RFC 9765, ALPN ``radius/1.1``,
  TLS 1.3, replies matched by Token, no MD5), radius-mfa only: FreeRADIUS
  3.2 does not speak it.

For each row: requests, accepted, logins/s, p50 and p99 latency, the
server's CPU time per request, its peak RSS, the ratio radius-mfa /
FreeRADIUS on the same transport, and for TLS rows the time to open the
connections (TCP + handshake, all at once). Then, per server, what TLS
costs next to UDP, and logins per CPU-second of radius-mfa against
FreeRADIUS on each transport.

Why it is built this way:

* **Each row on a fresh server.** radius-mfa starts on a fresh copy of the
  store for every row (TOTP steps are single-use, and the RSS and CPU then
  belong to that row alone), with a ``udp`` and a ``tls`` listener and one
  client on each; FreeRADIUS likewise, from ``bench/freeradius/radsec.conf``
  in a config directory of its own, one ``listen`` on UDP and one on TLS.
* **Same-transport rows back to back** (FreeRADIUS udp, radius-mfa udp,
  FreeRADIUS tls, radius-mfa tls, radius-mfa tls 1.1), so that a ratio
  compares runs made under the same background load; and the CPU time per
  login, which other work on a shared machine disturbs less than req/s,
  compared too.
* **The same hash on both sides** (``bench_vs_freeradius.pbkdf2_hash``),
  and radius-mfa's ``passwords`` set to the very scheme and cost of the
  stored hashes, so nothing is re-hashed on sign-in.
* **Throwaway certificates** (``tests/peers/pki.py``): one CA, a server
  certificate both servers present, a client certificate the load client
  presents. EC P-256 keys.
* **Every server stopped by its pid** (SIGTERM, then SIGKILL), whatever
  happens; loopback only.

Exit 0 when every radius-mfa request was accepted, radius-mfa logged nothing
at warning or above and exited cleanly. FreeRADIUS 3.2.1's rlm_totp takes
the current 30 s step only, so a request that crosses a step boundary in
flight can be rejected there; that is reported, not counted as a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(1, str(BENCH_DIR.parent))
sys.path.insert(2, str(BENCH_DIR.parent / "tests"))      # peers.pki: the throwaway CA

import loadgen  # noqa: E402
import tlsload  # noqa: E402
from bench_core import (LOCAL_PRIMARY, NO_LOCKOUT, BenchError, BenchUser, CodeBook, ServerProcess,  # noqa: E402
                        cpu_model, free_tcp_port, free_udp_port, run_in_temporary_directory)
from bench_vs_freeradius import (FREERADIUS, KEY_BYTES, SALT_BYTES, FreeRadiusProcess, Population,  # noqa: E402
                                 RssSampler, current_code, freeradius_version,
                                 check_iterations, make_population, passwords_section,
                                 write_store)
from loadgen import LoadClient, LoadReport  # noqa: E402
from peers.pki import SERVER_NAME, Pki  # noqa: E402
from tlsload import Opened, TlsConnection, TlsSettings  # noqa: E402

from radius_mfa.radius import codec  # noqa: E402

FREERADIUS_TEMPLATE = BENCH_DIR / "freeradius" / "radsec.conf"
NAS_NAME = "nas.bench.test"
RADSEC_SECRET = b"radsec"
ACCEPT = "Access-Accept"
TRANSPORTS = ("udp", "tls", "tls 1.1")


# --------------------------------------------------------------------------
# Ports and servers


def write_radius_mfa_config(directory: Path, *, udp_port: int, tls_port: int, secret: str,
                            store: Path, key_file: Path, pki: Pki, server_cert, workers: int,
                            iterations: int) -> Path:
    """bench_vs_freeradius's radius-mfa, with a ``tls`` listener beside the
    ``udp`` one and a ``transport: tls`` client (certificate from the
    throwaway CA, carrying ``NAS_NAME``) beside the UDP client. Both clients
    in challenge mode (which takes ``password,CODE`` too), Message-Authenticator
    required; log level warning. Mode 0600: it holds the shared secret."""
    path = directory / "radius-mfa.yaml"
    path.write_text(f"""\
server:
  name: bench
  listen:
    - udp: "127.0.0.1:{udp_port}"
    - tls: "127.0.0.1:{tls_port}"
  tls:
    cert_file: "{server_cert.chain}"
    key_file: "{server_cert.key}"
    ca_file: "{pki.ca_file}"
    idle_timeout: 600
  workers: {workers}
store: "sqlite:///{store}"
store_key_file: "{key_file}"
clients:
  - name: bench-udp
    address: 127.0.0.1
    secret: "{secret}"
    require_message_authenticator: true
    mode: challenge
  - name: bench-tls
    address: 127.0.0.1
    transport: tls
    cert_name: {NAS_NAME}
    require_message_authenticator: true
    mode: challenge
    radius11: allow
{LOCAL_PRIMARY}factors:
  totp: {{window: 1}}
{NO_LOCKOUT}{passwords_section(iterations)}audit:
  file: "{directory / 'audit.jsonl'}"
log:
  level: warning
  format: json
""")
    path.chmod(0o600)
    return path


def freeradius_tls(directory: Path, *, udp_port: int, tls_port: int, secret: str,
                   pki: Pki, server_cert, population: Population) -> FreeRadiusProcess:
    """FreeRADIUS 3.2 with ``radsec.conf``: the inline scenario on a UDP port
    and on a TLS port."""
    return FreeRadiusProcess(directory, FREERADIUS_TEMPLATE, {
        "PORT": udp_port, "TLS_PORT": tls_port, "SECRET": secret, "CA_FILE": pki.ca_file,
        "CERT_FILE": server_cert.chain, "KEY_FILE": server_cert.key}, population)


# --------------------------------------------------------------------------
# Rows


@dataclass
class Settings:
    requests: int
    connections: int
    in_flight: int
    duration: float
    timeout: float


@dataclass
class Row:
    server: str                   # "FreeRADIUS 3.2.1" or "radius-mfa"
    transport: str                # "udp", "tls" or "tls 1.1"
    report: LoadReport
    peak_rss: int
    cpu_seconds: float
    opened: Opened | None = None  # TLS rows: how the connections were opened

    @property
    def stats(self) -> loadgen.StepStats:
        return self.report.step(loadgen.DEFAULT_STEP)

    def ok(self) -> int:
        return self.stats.outcomes[ACCEPT]

    def ok_rate(self) -> float:
        return self.ok() / self.report.elapsed if self.report.elapsed else 0.0

    def misses(self) -> int:
        return self.stats.sent - self.ok()

    def cpu_ms_per_request(self) -> float:
        sent = self.stats.sent
        return self.cpu_seconds * 1000.0 / sent if sent else 0.0


def inline_password(user: BenchUser, code_for) -> str:
    return f"{user.password},{code_for(user)}"


async def udp_load(port: int, secret: bytes, users: list[BenchUser], code_for,
                   settings: Settings) -> LoadReport:
    async def one(index: int, client: LoadClient) -> None:
        user = users[index % len(users)]

        def build(ident: int) -> bytes:              # the code is picked at send time
            return codec.build_access_request(secret, user.name, inline_password(user, code_for),
                                              id=ident)

        await client.request(build)

    return await loadgen.run_load(loadgen.Target("127.0.0.1", port), secret, transaction=one,
                                  concurrency=settings.connections * settings.in_flight,
                                  count=settings.requests, duration=settings.duration,
                                  timeout=settings.timeout)


async def tls_load(port: int, tls: TlsSettings, users: list[BenchUser], code_for,
                   settings: Settings) -> tuple[LoadReport, Opened]:
    async def one(index: int, connection: TlsConnection) -> None:
        user = users[index % len(users)]
        await connection.request(user.name, inline_password(user, code_for))

    return await tlsload.run_tls_load(loadgen.Target("127.0.0.1", port), tls, transaction=one,
                                      connections=settings.connections,
                                      in_flight=settings.in_flight, count=settings.requests,
                                      duration=settings.duration, timeout=settings.timeout)


def radius_mfa_failures(row: Row, settings: Settings, codes: CodeBook,
                        server: ServerProcess) -> list[str]:
    """What makes the run fail: a radius-mfa request not accepted, an error,
    a line at warning or above, an unclean exit, or no RADIUS/1.1 where asked."""
    failures, transport = [], row.transport
    if transport == "tls 1.1" and row.opened is not None and row.opened.protocols != {tlsload.ALPN_V11}:
        failures.append(f"the tls 1.1 row negotiated {sorted(row.opened.protocols)}, not radius/1.1")
    if row.misses() or row.stats.sent < settings.requests:
        failures.append(f"radius-mfa over {transport}: {row.ok()} of {settings.requests} "
                        f"requests accepted")
    if row.report.failed or row.report.invalid_replies:
        failures.append(f"radius-mfa over {transport}: errors {row.report.failed or '-'}, "
                        f"invalid replies {row.report.invalid_replies}")
    if codes.replays:
        failures.append(f"radius-mfa over {transport}: {codes.replays} requests reused a TOTP step "
                        f"(--requests above --users); the server rejects those as replays")
    noise = [line for line in server.log().splitlines() if line.strip()]
    if noise:
        failures.append(f"radius-mfa over {transport} logged {len(noise)} lines at warning or "
                        f"above; first: {noise[0][:300]}")
    if server.exit_code != 0:
        failures.append(f"radius-mfa over {transport} exited with {server.exit_code} after SIGTERM")
    return failures


def measure(server: str, transport: str, pid: int, load) -> Row:
    """Run ``load()`` (a coroutine factory) while sampling the server's RSS and CPU."""
    print(f"  {server} over {transport} …", file=sys.stderr, flush=True)
    with RssSampler(pid) as sampler:
        result = asyncio.run(load())
    report, opened = result if isinstance(result, tuple) else (result, None)
    return Row(server, transport, report, sampler.peak, sampler.cpu_seconds, opened)


# --------------------------------------------------------------------------
# Output


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def results_table(rows: list[Row]) -> str:
    header = (f"  {'server':<17} {'transport':<9} {'requests':>8} {'ok':>6} {'req/s':>8} "
              f"{'p50 ms':>7} {'p99 ms':>7} {'CPU ms':>7} {'RSS MB':>7} {'ratio':>6} {'open ms':>8}")
    lines = [header, "  " + "-" * (len(header) - 2)]
    references = {row.transport: row for row in rows if row.server.startswith("FreeRADIUS")}
    for row in rows:
        reference = references.get("tls" if row.transport == "tls 1.1" else row.transport)
        ratio = ("-" if reference is None or row is reference or not reference.ok_rate()
                 else f"{row.ok_rate() / reference.ok_rate():.2f}")
        opened = f"{row.opened.seconds * 1000.0:.1f}" if row.opened is not None else "-"
        stats = row.stats
        lines.append(f"  {row.server:<17} {row.transport:<9} {stats.sent:>8} {row.ok():>6} "
                     f"{row.ok_rate():>8.1f} {_ms(stats.percentile_ms(0.5)):>7} "
                     f"{_ms(stats.percentile_ms(0.99)):>7} {row.cpu_ms_per_request():>7.2f} "
                     f"{row.peak_rss / 2**20:>7.0f} {ratio:>6} {opened:>8}")
        other = {name: n for name, n in stats.outcomes.items() if name != ACCEPT}
        notes = []
        if other:
            notes.append(f"other outcomes {other}")
        if row.report.invalid_replies:
            notes.append(f"invalid replies {row.report.invalid_replies}")
        if row.report.failed:
            notes.append(f"errors {row.report.failed}")
        if notes:
            lines.append(f"  {'':<17} note: {'; '.join(notes)}")
    lines.append("  (req/s: accepted logins per second; CPU ms: the server's CPU time per request "
                 "sent; RSS MB: the server's peak; ratio: radius-mfa / FreeRADIUS logins per second "
                 "on the same transport (tls 1.1 against FreeRADIUS's tls); open ms: the wall time "
                 "to open all the connections at once, TCP connect + TLS handshake)")
    return "\n".join(lines)


def handshake_lines(rows: list[Row]) -> list[str]:
    return [f"  {row.server:<17} {row.transport:<9} {row.opened.describe()}"
            for row in rows if row.opened is not None]


def tls_cost_lines(rows: list[Row]) -> list[str]:
    lines = []
    for server in dict.fromkeys(row.server for row in rows):
        mine = {row.transport: row for row in rows if row.server == server}
        udp = mine.get("udp")
        for transport in ("tls", "tls 1.1"):
            row = mine.get(transport)
            if udp is None or row is None or not udp.ok_rate():
                continue
            lines.append(f"  {server:<17} {transport:<9} {row.ok_rate() / udp.ok_rate():.2f} × the "
                         f"logins/s of udp; CPU per request {row.cpu_ms_per_request() - udp.cpu_ms_per_request():+.2f} ms; "
                         f"p50 {_ms(row.stats.percentile_ms(0.5))} against {_ms(udp.stats.percentile_ms(0.5))} ms")
    return lines


def cpu_ratio_lines(rows: list[Row]) -> list[str]:
    references = {row.transport: row for row in rows if row.server != "radius-mfa"}
    lines = []
    for row in rows:
        reference = references.get("tls" if row.transport == "tls 1.1" else row.transport)
        if row.server != "radius-mfa" or reference is None or not row.cpu_ms_per_request():
            continue
        lines.append(f"  {row.transport:<9} {reference.cpu_ms_per_request() / row.cpu_ms_per_request():.2f}"
                     f"  ({reference.cpu_ms_per_request():.2f} against {row.cpu_ms_per_request():.2f} ms)")
    return lines


# --------------------------------------------------------------------------
# Main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench_tls.py",
        description="Inline password,CODE logins against radius-mfa (and FreeRADIUS 3.2) over UDP "
                    "and over RADIUS over TLS with long-lived connections, in one run; print "
                    "requests/s, p50/p99, CPU per request, memory, the handshake time and the ratio.")
    parser.add_argument("--users", type=int, default=10_000, help="users on both sides (default 10000)")
    parser.add_argument("--requests", type=int, default=None,
                        help="requests per row (default: --users, so every TOTP code is fresh)")
    parser.add_argument("--connections", type=int, default=4,
                        help="TLS connections, opened once and kept (default 4)")
    parser.add_argument("--in-flight", type=int, default=8,
                        help="requests in flight on each connection (default 8); UDP rows keep "
                             "connections × in-flight in flight")
    parser.add_argument("--iterations", type=int, default=10_000,
                        help="PBKDF2-SHA256 iterations of every stored hash (default 10000)")
    parser.add_argument("--workers", type=int, default=1, help="radius-mfa server.workers (default 1)")
    parser.add_argument("--no-freeradius", action="store_true", help="run radius-mfa only")
    parser.add_argument("--no-radius11", action="store_true", help="leave out the RADIUS/1.1 row")
    parser.add_argument("--duration", type=float, default=120.0,
                        help="a row starts no new request after this many seconds (default 120)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for each reply, and for the handshakes; no "
                             "retransmission (default 10)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (configs, certificates, stores, logs)")
    return parser


def _validate(args: argparse.Namespace) -> None:
    if args.requests is None:
        args.requests = args.users
    for name in ("users", "requests", "connections", "in_flight", "iterations", "workers"):
        if getattr(args, name) < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be at least 1")
    check_iterations(args.iterations)
    if args.in_flight > tlsload.IDS_PER_CONNECTION:
        raise BenchError(f"--in-flight: at most {tlsload.IDS_PER_CONNECTION} (one RADIUS Identifier each)")
    if not args.duration > 0 or not args.timeout > 0:
        raise BenchError("--duration and --timeout must be positive")
    if not args.no_freeradius and not os.path.exists(FREERADIUS):
        raise BenchError(f"{FREERADIUS} not found: install the freeradius package or pass --no-freeradius")


def run(args: argparse.Namespace, directory: Path) -> int:
    cpus = len(os.sched_getaffinity(0))
    load_before = os.getloadavg()[0]
    settings = Settings(args.requests, args.connections, args.in_flight, args.duration, args.timeout)
    secret = secrets.token_hex(16)

    pki = Pki(directory / "pki", name="bench-ca")
    server_cert = pki.server()
    nas_cert = pki.client("nas", NAS_NAME)
    tls_v10 = TlsSettings(ca_file=str(pki.ca_file), cert_file=str(nas_cert.cert),
                          key_file=str(nas_cert.key), server_name=SERVER_NAME, alpn=None,
                          secret=RADSEC_SECRET)
    tls_v11 = TlsSettings(ca_file=str(pki.ca_file), cert_file=str(nas_cert.cert),
                          key_file=str(nas_cert.key), server_name=SERVER_NAME,
                          alpn=(tlsload.ALPN_V11,))

    print(f"making {args.users} users (PBKDF2-SHA256, {args.iterations} iterations) …",
          file=sys.stderr, flush=True)
    population = make_population(args.users, args.iterations, cpus)
    users = population.users
    template = directory / "template.db"
    key_file = directory / "store.key"
    write_store(template, key_file, population)

    rows: list[Row] = []
    failures: list[str] = []
    fr_label = f"FreeRADIUS {freeradius_version()}" if not args.no_freeradius else ""

    def freeradius_row(transport: str) -> Row:
        udp_port, tls_port = free_udp_port(), free_tcp_port()
        fr = freeradius_tls(directory / f"freeradius-{transport}", udp_port=udp_port,
                            tls_port=tls_port, secret=secret, pki=pki, server_cert=server_cert,
                            population=population)
        try:
            fr.start()
            if transport == "udp":
                load = lambda: udp_load(udp_port, secret.encode(), users, current_code, settings)  # noqa: E731
            else:
                load = lambda: tls_load(tls_port, tls_v10, users, current_code, settings)  # noqa: E731
            return measure(fr_label, transport, fr.pid, load)
        finally:
            fr.stop()

    def radius_mfa_row(transport: str) -> Row:
        run_dir = directory / f"radius-mfa-{transport.replace(' ', '-')}"
        run_dir.mkdir()
        store = run_dir / "bench.db"
        shutil.copyfile(template, store)
        population.reset_codes()
        codes = CodeBook()
        udp_port, tls_port = free_udp_port(), free_tcp_port()
        config = write_radius_mfa_config(run_dir, udp_port=udp_port, tls_port=tls_port,
                                         secret=secret, store=store, key_file=key_file, pki=pki,
                                         server_cert=server_cert, workers=args.workers,
                                         iterations=args.iterations)
        server = ServerProcess(config, run_dir)
        try:
            server.start()
            if transport == "udp":
                load = lambda: udp_load(udp_port, secret.encode(), users, codes.code_for, settings)  # noqa: E731
            else:
                tls = tls_v11 if transport == "tls 1.1" else tls_v10
                load = lambda: tls_load(tls_port, tls, users, codes.code_for, settings)  # noqa: E731
            row = measure("radius-mfa", transport, server.proc.pid, load)
        finally:
            server.stop()
        failures.extend(radius_mfa_failures(row, settings, codes, server))
        return row

    # The two servers' rows of one transport run back to back, so that the
    # ratio compares runs made under the same background load.
    for transport in ("udp", "tls"):
        if not args.no_freeradius:
            rows.append(freeradius_row(transport))
        rows.append(radius_mfa_row(transport))
    if not args.no_radius11:
        rows.append(radius_mfa_row("tls 1.1"))
    rows.sort(key=lambda row: (row.server == "radius-mfa", TRANSPORTS.index(row.transport)))

    print("machine")
    print(f"  cpus (nproc)       {cpus}")
    print(f"  cpu                {cpu_model()}")
    print(f"  python             {platform.python_implementation()} {platform.python_version()}")
    if fr_label:
        print(f"  FreeRADIUS         {fr_label.split(' ', 1)[1]}")
    print(f"  users              {args.users}, each with a TOTP token, made in {population.seconds:.1f} s")
    print(f"  password hash      PBKDF2-SHA256, {args.iterations} iterations, {SALT_BYTES}-byte salt, "
          f"{KEY_BYTES}-byte key: the same string on both sides")
    print(f"  radius-mfa         server.workers {args.workers}")
    print(f"  load average       {load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end "
          f"(1 min; other work on the machine shows here)")
    print()
    print("scenario inline: password,TOTP in one Access-Request, local password hash + TOTP")
    print(f"  {settings.requests} requests per row; TLS: {settings.connections} connections kept "
          f"open, {settings.in_flight} requests in flight on each; UDP: "
          f"{settings.connections * settings.in_flight} in flight")
    print(results_table(rows))
    print()
    print("opening the TLS connections (all at once, before the first request)")
    print("\n".join(handshake_lines(rows)))
    costs = tls_cost_lines(rows)
    if costs:
        print()
        print("TLS against UDP, per server")
        print("\n".join(costs))
    per_cpu = cpu_ratio_lines(rows)
    if per_cpu:
        print()
        print("logins per CPU-second of the server, radius-mfa / FreeRADIUS (FreeRADIUS's CPU ms over "
              "radius-mfa's: less sensitive to other work on the machine than req/s)")
        print("\n".join(per_cpu))
    fr_misses = sum(row.misses() for row in rows if row.server == fr_label and fr_label)
    if fr_misses:
        print(f"\nnote: FreeRADIUS did not accept {fr_misses} requests (rlm_totp takes the current "
              f"30 s step only: a request that crosses a step boundary in flight is rejected)")
    if failures:
        print()
        for failure in failures:
            print(f"warning: {failure}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_in_temporary_directory("bench_tls", "radius-mfa-bench-tls-", _parser().parse_args(argv),
                                      run, _validate)


if __name__ == "__main__":
    sys.exit(main())
