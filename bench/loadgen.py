#!/usr/bin/env python3
"""A small RADIUS load generator for loopback targets: asyncio, no threads.

Why it looks the way it does:

* RADIUS matches a reply to its request by the 8-bit identifier *per source
  socket*, so one socket carries at most 256 requests in flight. The
  generator spreads requests over several connected UDP sockets, each with
  its own pool of free identifiers, so any concurrency can be driven.
* A late reply (after its request timed out) may arrive once the identifier
  has been reused. Every reply is verified with the Request Authenticator of
  the request it claims to answer (``codec.decode_response``: Response
  Authenticator and Message-Authenticator); one that does not verify is
  counted as ``invalid`` and ignored, as a real NAS would. Identifiers are
  reused first-in first-out, so a reused one is as old as possible.
* No retransmission: a request without a verified reply within the timeout
  counts as a timeout. Retransmissions would hit the server's duplicate
  cache and flatter the figures.
* Bounded twice: by a count of transactions and by a wall-clock duration
  after which no new transaction starts; every request has its own timeout,
  so a run always stops by itself.
* Two ways to pace: closed loop (``concurrency`` workers, each starting its
  next transaction when the last one ends: the server's capacity) or open
  loop (``rate``: transactions start on a fixed schedule whatever the
  server does, at most ``concurrency`` in flight: latency at a given load).
  In the open loop a start that is due while ``concurrency`` transactions
  are in flight waits and is counted as late, so an overloaded server shows
  as late starts instead of silently lowering the offered rate.
* Loopback only: the generator refuses any target outside 127.0.0.0/8 and
  ``::1``. Pointing a load generator at somebody's production RADIUS server
  by mistake must not be one typo away.

A *transaction* is what one worker does per index: one request for most
scenarios, or a request/answer pair (Access-Challenge, then the code with the
State). Each request is recorded under a step label, so a pair reports both
latencies.

Used as a module (``bench/bench_core.py``) or as a command::

    python3 bench/loadgen.py --target 127.0.0.1:1812 --secret S \\
        --user alice --password 'pw,123456' --count 100 --concurrency 8
    python3 bench/loadgen.py --target 127.0.0.1:1812 --secret S --status-server
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import math
import os
import statistics
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable, Sequence

if __package__ in (None, ""):
    # run as a script from a checkout: make the package importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from radius_mfa.errors import LocalProtocolError, RemoteProtocolError  # noqa: E402
from radius_mfa.radius import codec  # noqa: E402
from radius_mfa.radius.dictionary import load_dictionary  # noqa: E402

#: Builds one request packet for the identifier it is given.
Build = Callable[[int], bytes]
#: What a worker runs for one index: sends one or more requests through the client.
Transaction = Callable[[int, "LoadClient"], Awaitable[None]]

CODE_NAMES = {
    codec.ACCESS_ACCEPT: "Access-Accept",
    codec.ACCESS_REJECT: "Access-Reject",
    codec.ACCESS_CHALLENGE: "Access-Challenge",
}
TIMEOUT = "timeout"
IDS_PER_SOCKET = 256
DEFAULT_STEP = "request"
LATE_START_SECONDS = 0.010          # open loop: a start this far behind schedule is late


class LoadError(Exception):
    """Bad input to the generator: one clear line, never a traceback."""


# --------------------------------------------------------------------------
# Target


@dataclass(frozen=True)
class Target:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_target(text: str) -> Target:
    """``127.0.0.1:1812``, ``[::1]:1812`` or ``localhost:1812``; loopback only."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise LoadError(f"target {text!r}: expected HOST:PORT, e.g. 127.0.0.1:1812")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        host = "127.0.0.1"
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise LoadError(f"target {text!r}: port must be 1-65535")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise LoadError(f"target {text!r}: HOST must be an IP address (127.0.0.1 or ::1)") from None
    if not is_loopback(address):
        raise LoadError(f"target {text!r}: refused, the load generator only sends to loopback "
                        "addresses (127.0.0.0/8 or ::1)")
    return Target(str(address), int(port_text))


def is_loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv4Address):
        return address in ipaddress.IPv4Network("127.0.0.0/8")
    return address == ipaddress.IPv6Address("::1")


# --------------------------------------------------------------------------
# Prepared packets


def restamp(packet: bytes, ident: int, secret: bytes) -> bytes:
    """A prepared request re-issued with identifier ``ident`` and a fresh
    Request Authenticator.

    A reused authenticator would make the server's duplicate cache (RFC 5080)
    answer from memory; a fresh one means re-hiding User-Password (it is
    keyed on the authenticator) and re-signing the Message-Authenticator.
    """
    header = codec.peek(packet)
    raw = bytearray(packet[:header.length])
    fresh = os.urandom(codec.AUTHENTICATOR_LENGTH)
    raw[1] = ident
    raw[4:codec.HEADER_LENGTH] = fresh
    ma_offset = None
    offset = codec.HEADER_LENGTH
    while offset + 2 <= len(raw):
        kind, length = raw[offset], raw[offset + 1]
        if length < 2 or offset + length > len(raw):
            raise LoadError("prepared packet has a malformed attribute")
        if kind == codec.USER_PASSWORD:
            hidden = bytes(packet[offset + 2:offset + length])
            plain = codec.unhide_password(hidden, secret, header.authenticator)
            rehidden = codec.hide_password(plain, secret, fresh)
            if len(rehidden) != length - 2:
                raise LoadError("prepared packet: User-Password changed length")
            raw[offset + 2:offset + length] = rehidden
        elif kind == codec.MESSAGE_AUTHENTICATOR:
            ma_offset = offset
            raw[offset + 2:offset + 18] = bytes(16)
        offset += length
    if ma_offset is not None:
        mac = codec.message_authenticator(bytes(raw), secret, fresh)
        raw[ma_offset + 2:ma_offset + 18] = mac
    return bytes(raw)


def from_prepared(packets: Sequence[bytes], secret: bytes) -> Callable[[int], Build]:
    """A per-index builder that cycles through prepared packets, restamped."""
    if not packets:
        raise LoadError("no prepared requests")

    def for_index(index: int) -> Build:
        template = packets[index % len(packets)]
        return lambda ident: restamp(template, ident, secret)

    return for_index


# --------------------------------------------------------------------------
# Results


@dataclass
class StepStats:
    """Latencies and outcomes of every request sent under one step label."""
    latencies: list[float] = field(default_factory=list)     # seconds, replies only
    outcomes: Counter = field(default_factory=Counter)       # reply code name or "timeout"

    @property
    def sent(self) -> int:
        return sum(self.outcomes.values())

    @property
    def replies(self) -> int:
        return self.sent - self.outcomes[TIMEOUT]

    def percentile_ms(self, fraction: float) -> float | None:
        """Nearest-rank percentile in milliseconds; None without replies."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        rank = max(1, math.ceil(fraction * len(ordered)))
        return ordered[rank - 1] * 1000.0

    def max_ms(self) -> float | None:
        return max(self.latencies) * 1000.0 if self.latencies else None

    def mean_ms(self) -> float | None:
        return statistics.fmean(self.latencies) * 1000.0 if self.latencies else None


@dataclass
class LoadReport:
    target: Target
    concurrency: int
    sockets: int
    elapsed: float = 0.0
    transactions: int = 0              # started
    completed: int = 0                 # finished without an exception
    failed: list[str] = field(default_factory=list)    # first few transaction errors
    invalid_replies: int = 0           # did not verify against a request in flight: ignored
    offered_rate: float | None = None  # open loop: transactions started per second
    late_starts: int = 0               # open loop: started >10 ms behind schedule
    steps: dict[str, StepStats] = field(default_factory=dict)

    def step(self, label: str) -> StepStats:
        return self.steps.setdefault(label, StepStats())

    def rate(self, label: str) -> float:
        """Replies per second for a step over the whole run."""
        return self.step(label).replies / self.elapsed if self.elapsed > 0 else 0.0

    def transaction_rate(self) -> float:
        return self.completed / self.elapsed if self.elapsed > 0 else 0.0


@dataclass(frozen=True)
class Reply:
    """What one request got: a verified response, or None on timeout."""
    response: codec.Response | None
    latency: float                     # seconds; the timeout when there is no response

    @property
    def code_name(self) -> str:
        if self.response is None:
            return TIMEOUT
        return CODE_NAMES.get(self.response.code, str(self.response.code))


# --------------------------------------------------------------------------
# Sockets


@dataclass
class _Pending:
    future: asyncio.Future
    authenticator: bytes
    sent_at: float


class _Socket(asyncio.DatagramProtocol):
    """One connected UDP socket and its 256 identifiers."""

    def __init__(self, secret: bytes, report: LoadReport):
        self.secret = secret
        self.report = report
        self.free: deque[int] = deque(range(IDS_PER_SOCKET))
        self.pending: dict[int, _Pending] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.dictionary = load_dictionary()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        received_at = time.perf_counter()
        if len(data) < codec.HEADER_LENGTH:
            self.report.invalid_replies += 1
            return
        pending = self.pending.get(data[1])
        if pending is None or pending.future.done():
            self.report.invalid_replies += 1
            return
        try:
            response = codec.decode_response(data, self.secret, pending.authenticator,
                                             dictionary=self.dictionary)
        except RemoteProtocolError:
            self.report.invalid_replies += 1     # a stale reply to a reused id, or forged
            return
        pending.future.set_result(Reply(response, received_at - pending.sent_at))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the requests will time out
        pass


class LoadClient:
    """The socket pool: sends a request, waits for its verified reply."""

    def __init__(self, target: Target, secret: bytes, *, timeout: float, report: LoadReport):
        self.target = target
        self.secret = secret
        self.timeout = timeout
        self.report = report
        self.sockets: list[_Socket] = []
        self._next = 0

    async def open(self, count: int) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(count):
            sock = _Socket(self.secret, self.report)
            await loop.create_datagram_endpoint(lambda s=sock: s,
                                                remote_addr=(self.target.host, self.target.port))
            self.sockets.append(sock)

    def close(self) -> None:
        for sock in self.sockets:
            if sock.transport is not None:
                sock.transport.close()

    async def request(self, build: Build, step: str = DEFAULT_STEP) -> Reply:
        """Send ``build(id)`` once; the verified reply or a timeout, recorded under ``step``."""
        sock = self._socket_with_free_id()
        ident = sock.free.popleft()
        try:
            packet = build(ident)
            if packet[1] != ident:
                raise LoadError("the request builder ignored the identifier it was given")
            future = asyncio.get_running_loop().create_future()
            pending = _Pending(future, bytes(packet[4:codec.HEADER_LENGTH]), time.perf_counter())
            sock.pending[ident] = pending
            sock.transport.sendto(packet)
            try:
                reply = await asyncio.wait_for(future, self.timeout)
            except asyncio.TimeoutError:
                reply = Reply(None, self.timeout)
        finally:
            sock.pending.pop(ident, None)
            sock.free.append(ident)            # FIFO: a reused id is as old as possible
        stats = self.report.step(step)
        stats.outcomes[reply.code_name] += 1
        if reply.response is not None:
            stats.latencies.append(reply.latency)
        return reply

    def _socket_with_free_id(self) -> _Socket:
        for _ in range(len(self.sockets)):
            sock = self.sockets[self._next]
            self._next = (self._next + 1) % len(self.sockets)
            if sock.free:
                return sock
        raise LoadError("no free RADIUS identifier: more requests in flight than sockets × 256")


def single_request(builder: Callable[[int], Build], step: str = DEFAULT_STEP) -> Transaction:
    """A transaction of one request: ``builder(index)`` gives the packet builder."""

    async def transaction(index: int, client: LoadClient) -> None:
        await client.request(builder(index), step)

    return transaction


# --------------------------------------------------------------------------
# The run


def sockets_for(concurrency: int) -> int:
    """Enough sockets for the identifiers in flight, never fewer than two."""
    return max(2, math.ceil(concurrency / IDS_PER_SOCKET))


async def run_load(target: Target | str, secret: bytes | str, *,
                   transaction: Transaction | None = None,
                   requests: Sequence[bytes] | Callable[[int], Build] | None = None,
                   concurrency: int = 8, count: int = 100, duration: float = 60.0,
                   timeout: float = 5.0, sockets: int | None = None,
                   rate: float | None = None) -> LoadReport:
    """Run ``count`` transactions, at most ``concurrency`` at a time, for at
    most ``duration`` seconds (no transaction starts later; those in flight
    finish within their timeouts). With ``rate``, transactions start on a
    fixed schedule of ``rate`` per second (open loop) instead of as fast as
    the replies come back.

    Give either ``transaction`` (multi-step flows) or ``requests``: prepared
    packets (restamped with an id and a fresh authenticator each time) or a
    function ``index -> (id -> packet)``.
    """
    target = parse_target(target) if isinstance(target, str) else target
    if not is_loopback(ipaddress.ip_address(target.host)):
        raise LoadError(f"target {target}: refused, loopback addresses only")
    secret = secret.encode("utf-8") if isinstance(secret, str) else secret
    _check_bounds(concurrency, count, duration, timeout)
    if rate is not None and not rate > 0:
        raise LoadError("rate must be positive")
    transaction = _transaction_from(transaction, requests, secret)
    sockets = sockets or sockets_for(concurrency)
    if sockets * IDS_PER_SOCKET < concurrency:
        raise LoadError(f"{sockets} sockets carry at most {sockets * IDS_PER_SOCKET} requests in flight")

    report = LoadReport(target=target, concurrency=concurrency, sockets=sockets, offered_rate=rate)
    client = LoadClient(target, secret, timeout=timeout, report=report)
    await client.open(sockets)
    indices = iter(range(count))
    started = time.perf_counter()
    deadline = started + duration

    async def one(index: int) -> None:
        report.transactions += 1
        try:
            await transaction(index, client)
        except LoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - a flow's surprise is a result, not a crash
            if len(report.failed) < 5:
                report.failed.append(f"{type(exc).__name__}: {exc}")
            return
        report.completed += 1

    async def worker() -> None:
        for index in indices:                    # shared iterator: each index runs once
            if time.perf_counter() >= deadline:
                return
            await one(index)

    async def scheduler() -> None:
        slots = asyncio.Semaphore(concurrency)
        tasks: set[asyncio.Task] = set()
        try:
            for index in indices:
                due = started + index / rate
                if due >= deadline:
                    break
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                await slots.acquire()
                if time.perf_counter() - due > LATE_START_SECONDS:
                    report.late_starts += 1
                task = asyncio.create_task(one(index))
                tasks.add(task)
                task.add_done_callback(lambda t: (tasks.discard(t), slots.release()))
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    try:
        if rate is not None:
            await scheduler()
        else:
            await asyncio.gather(*(worker() for _ in range(min(concurrency, count) or 1)))
    finally:
        report.elapsed = time.perf_counter() - started
        client.close()
    return report


def _check_bounds(concurrency: int, count: int, duration: float, timeout: float) -> None:
    if concurrency < 1:
        raise LoadError("concurrency must be at least 1")
    if count < 1:
        raise LoadError("count must be at least 1")
    if not duration > 0:
        raise LoadError("duration must be positive")
    if not timeout > 0:
        raise LoadError("timeout must be positive")


def _transaction_from(transaction: Transaction | None,
                      requests: Sequence[bytes] | Callable[[int], Build] | None,
                      secret: bytes) -> Transaction:
    if (transaction is None) == (requests is None):
        raise LoadError("give either a transaction or requests")
    if transaction is not None:
        return transaction
    if callable(requests):
        return single_request(requests)
    return single_request(from_prepared(list(requests), secret))


# --------------------------------------------------------------------------
# Output


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_report(report: LoadReport, title: str = "") -> str:
    """Rates, latency percentiles (ms) and outcome counts, one line per step."""
    lines = []
    if title:
        lines.append(title)
    if report.offered_rate is not None:
        lines.append(f"open loop: {report.offered_rate:g} transactions/s offered, "
                     f"{report.late_starts} started late (>10 ms behind schedule)")
    lines.append(f"target {report.target}  concurrency {report.concurrency}  "
                 f"sockets {report.sockets}  elapsed {report.elapsed:.2f} s  "
                 f"transactions {report.completed}/{report.transactions} "
                 f"({report.transaction_rate():.1f}/s)")
    header = f"{'step':<12} {'sent':>6} {'req/s':>7} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}  outcomes"
    lines.append(header)
    for label, stats in report.steps.items():
        outcomes = ", ".join(f"{name} {n}" for name, n in sorted(stats.outcomes.items()))
        lines.append(f"{label:<12} {stats.sent:>6} {report.rate(label):>7.1f} "
                     f"{_ms(stats.percentile_ms(0.50)):>8} {_ms(stats.percentile_ms(0.90)):>8} "
                     f"{_ms(stats.percentile_ms(0.99)):>8} {_ms(stats.max_ms()):>8}  {outcomes}")
    lines.append("(latencies in ms; timeouts count as lost, never retransmitted)")
    if report.invalid_replies:
        lines.append(f"invalid or stale replies ignored: {report.invalid_replies}")
    for problem in report.failed:
        lines.append(f"transaction error: {problem}")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loadgen.py",
        description="Send RADIUS Access-Requests (or Status-Server) to a loopback server "
                    "and report throughput and latency.")
    parser.add_argument("--target", required=True, help="HOST:PORT on loopback, e.g. 127.0.0.1:1812")
    parser.add_argument("--secret", help="shared secret (or --secret-env)")
    parser.add_argument("--secret-env", metavar="VAR", help="read the shared secret from this variable")
    parser.add_argument("--user", action="append", default=[],
                        help="User-Name; repeat to cycle through several users")
    parser.add_argument("--password", default="",
                        help="User-Password sent for every user (e.g. 'secret,123456' inline)")
    parser.add_argument("--status-server", action="store_true",
                        help="send Status-Server instead of Access-Request")
    parser.add_argument("--count", type=int, default=100, help="requests to send (default 100)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    parser.add_argument("--duration", type=float, default=60.0,
                        help="start no request after this many seconds (default 60)")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds to wait for each reply; no retransmission (default 5)")
    parser.add_argument("--rate", type=float, default=None,
                        help="open loop: start this many requests per second, at most "
                             "--concurrency in flight (default: closed loop, as fast as replies come)")
    parser.add_argument("--sockets", type=int, default=None,
                        help="UDP sockets to spread the requests over (default: enough for the concurrency)")
    return parser


def _prepared_from_args(args: argparse.Namespace, secret: bytes) -> list[bytes]:
    if args.status_server:
        return [codec.build_access_request(secret, None, code=codec.STATUS_SERVER)]
    if not args.user:
        raise LoadError("give --user (one or more) or --status-server")
    return [codec.build_access_request(secret, user, args.password) for user in args.user]


def _secret_from_args(args: argparse.Namespace) -> bytes:
    if args.secret_env:
        value = os.environ.get(args.secret_env)
        if value is None:
            raise LoadError(f"environment variable {args.secret_env} is not set")
        return value.encode("utf-8")
    if args.secret is None:
        raise LoadError("give --secret or --secret-env")
    return args.secret.encode("utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        target = parse_target(args.target)
        secret = _secret_from_args(args)
        prepared = _prepared_from_args(args, secret)
        report = asyncio.run(run_load(target, secret, requests=prepared,
                                      concurrency=args.concurrency, count=args.count,
                                      duration=args.duration, timeout=args.timeout,
                                      sockets=args.sockets, rate=args.rate))
    except (LoadError, LocalProtocolError, OSError) as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("loadgen: interrupted", file=sys.stderr)
        return 130
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
