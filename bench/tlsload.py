#!/usr/bin/env python3
"""A RADIUS over TLS load client for loopback targets: asyncio, no threads.

It behaves as a NAS does with RadSec: it opens a few long-lived TLS
connections (with a client certificate) once, then keeps several requests in
flight on each, matched to their replies by the Identifier (RFC 6614,
"RADIUS/1.0") or by the Token (RFC 9765, RADIUS/1.1, when the server chose
ALPN ``radius/1.1``). Replies may come back in any order.

Why it looks the way it does:

* **Handshakes apart from requests.** The connections are opened at once
  before the first request, and the time to open them (TCP + TLS, each and
  all together) is reported on its own: a NAS pays it once per connection,
  not per login.
* **The same bookkeeping as ``loadgen.py``.** Results go into a
  :class:`loadgen.LoadReport` (steps, outcomes, latencies), so the figures
  of a TLS run and a UDP run are computed the same way.
* **Every reply verified.** Over RADIUS/1.0 with the shared secret
  (``codec.decode_response``: Response Authenticator and
  Message-Authenticator); over RADIUS/1.1 its Token (``v11.decode_response``).
  A reply that matches no request in flight, or does not verify, is counted
  as invalid and ignored.
* **No retransmission.** A request without a reply within the timeout is
  counted as a timeout, as is one whose connection ended first (the run's
  ``failed`` list then says how many connections were lost, and why).
  Identifiers are reused first-in first-out, as ``loadgen.py`` does, so a
  reused one is as old as possible (and a late reply to its former request
  does not verify against the new Request Authenticator).
* **Loopback only**, as ``loadgen.py``.

Used as a module (``bench/bench_tls.py``)::

    settings = TlsSettings(ca_file=..., cert_file=..., key_file=..., server_name="...",
                           alpn=("radius/1.1",))
    report, opened = asyncio.run(run_tls_load(target, settings, transaction=one,
                                              connections=4, in_flight=8, count=1000))

or as a command (Status-Server or fixed Access-Requests)::

    python3 bench/tlsload.py --target 127.0.0.1:2083 --ca-file ca.pem --cert nas.crt \\
        --key nas.key --status-server --count 5000 --connections 4 --in-flight 8
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import secrets
import ssl
import statistics
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable, Sequence

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(1, str(BENCH_DIR.parent))

import loadgen  # noqa: E402
from loadgen import LoadError, LoadReport, Reply, Target  # noqa: E402

from radius_mfa.errors import LocalProtocolError, RemoteProtocolError  # noqa: E402
from radius_mfa.radius import codec, v11  # noqa: E402
from radius_mfa.radius.dictionary import load_dictionary  # noqa: E402

ALPN_V11 = v11.ALPN_V11.decode()
ALPN_V10 = v11.ALPN_V10.decode()
DEFAULT_SECRET = b"radsec"          # RFC 6614 section 2.3
IDS_PER_CONNECTION = 256
_LENGTH = struct.Struct("!H")

#: What a worker runs for one index, on the connection it is bound to.
TlsTransaction = Callable[[int, "TlsConnection"], Awaitable[None]]


@dataclass(frozen=True)
class TlsSettings:
    """How to connect: the CA the server's certificate must chain to, the
    client certificate and key, the name the server's certificate must
    carry (None: not checked), the ALPN names offered (None: no ALPN
    extension, as RFC 6614 clients), and the RADIUS/1.0 shared secret."""
    ca_file: str
    cert_file: str
    key_file: str
    server_name: str | None = None
    alpn: tuple[str, ...] | None = None
    secret: bytes = DEFAULT_SECRET
    tls_version: ssl.TLSVersion | None = None     # pin one version (None: 1.2 to 1.3)
    require_message_authenticator: bool = True     # RADIUS/1.0 replies must carry one

    def context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_verify_locations(self.ca_file)
        context.load_cert_chain(self.cert_file, self.key_file)
        context.check_hostname = self.server_name is not None
        if self.alpn is not None:
            context.set_alpn_protocols(list(self.alpn))
        if self.tls_version is not None:
            context.minimum_version = context.maximum_version = self.tls_version
        return context


@dataclass
class Opened:
    """How the connections were opened: wall time for all (they are opened
    at once), each one's time (TCP connect + TLS handshake), and what was
    negotiated."""
    seconds: float = 0.0
    each: list[float] = field(default_factory=list)
    tls_versions: set[str] = field(default_factory=set)
    protocols: set[str] = field(default_factory=set)   # the ALPN chosen, "-" for none
    ciphers: set[str] = field(default_factory=set)

    def median_ms(self) -> float | None:
        return statistics.median(self.each) * 1000.0 if self.each else None

    def max_ms(self) -> float | None:
        return max(self.each) * 1000.0 if self.each else None

    def describe(self) -> str:
        return (f"{len(self.each)} connections in {self.seconds * 1000.0:.1f} ms "
                f"(each: median {loadgen._ms(self.median_ms())} ms, max {loadgen._ms(self.max_ms())} ms); "
                f"{', '.join(sorted(self.tls_versions)) or '-'}, "
                f"{', '.join(sorted(self.ciphers)) or '-'}, ALPN {', '.join(sorted(self.protocols)) or '-'}")


@dataclass
class _Pending:
    future: asyncio.Future
    authenticator: bytes | None          # RADIUS/1.0: the Request Authenticator
    sent_at: float


class TlsConnection(asyncio.Protocol):
    """One TLS connection to the server: sends requests, files replies by key."""

    def __init__(self, settings: TlsSettings, report: LoadReport, timeout: float):
        self.settings = settings
        self.report = report
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.v11 = False
        self.closed: asyncio.Future | None = None
        self.lost_reason: str | None = None
        self._buffer = bytearray()
        self._pending: dict[int | bytes, _Pending] = {}
        self._free: deque[int] = deque(range(IDS_PER_CONNECTION))
        self._counter = secrets.randbits(32)
        self._dictionary = load_dictionary()

    # --- asyncio.Protocol ----------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        received_at = time.perf_counter()
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 4:
            (length,) = _LENGTH.unpack_from(buffer, 2)
            if length < codec.HEADER_LENGTH or length > codec.MAX_PACKET_LENGTH:
                self.lost_reason = f"the server sent a length field of {length}"
                self.transport.abort()
                return
            if len(buffer) < length:
                break
            packet = bytes(buffer[:length])
            del buffer[:length]
            self._file(packet, received_at)

    def connection_lost(self, exc) -> None:
        if self.lost_reason is None:
            self.lost_reason = str(exc) if exc is not None else "the server closed the connection"
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_result(None)
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)

    # --- requests --------------------------------------------------------------
    def _file(self, packet: bytes, received_at: float) -> None:
        key = packet[4:8] if self.v11 else packet[1]
        pending = self._pending.get(key)
        if pending is None or pending.future.done():
            self.report.invalid_replies += 1
            return
        try:
            if self.v11:
                response = v11.decode_response(packet, key, dictionary=self._dictionary)
            else:
                response = codec.decode_response(
                    packet, self.settings.secret, pending.authenticator, dictionary=self._dictionary,
                    require_message_authenticator=self.settings.require_message_authenticator)
        except RemoteProtocolError:
            self.report.invalid_replies += 1
            return
        pending.future.set_result(Reply(response, received_at - pending.sent_at))

    def _next_token(self) -> bytes:
        token = struct.pack("!L", self._counter)
        self._counter = (self._counter + 1) % 2**32
        return token

    async def request(self, user_name: str | None, password: str | None = None, *,
                      step: str = loadgen.DEFAULT_STEP, state: bytes | None = None,
                      code: int = codec.ACCESS_REQUEST) -> Reply:
        """Send one request now (the caller computes a time-based code just
        before); its verified reply, or a timeout, recorded under ``step``."""
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError(f"the connection is closed ({self.lost_reason or 'not open'})")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self.v11:
            key: int | bytes = self._next_token()
            packet = v11.build_access_request(key, user_name, password, state=state, code=code,
                                              dictionary=self._dictionary)
            authenticator = None
        else:
            if not self._free:
                raise LoadError("no free RADIUS identifier on this connection: more than 256 in flight")
            key = self._free.popleft()
            packet = codec.build_access_request(self.settings.secret, user_name, password, id=key,
                                                state=state, code=code, dictionary=self._dictionary)
            authenticator = packet[4:codec.HEADER_LENGTH]
        self._pending[key] = _Pending(future, authenticator, time.perf_counter())
        reply = None
        try:
            self.transport.write(packet)
            try:
                reply = await asyncio.wait_for(future, self.timeout)
            except asyncio.TimeoutError:
                reply = None
        finally:
            self._pending.pop(key, None)
            if not self.v11:
                self._free.append(key)          # FIFO: a reused id is as old as possible
        if reply is None:            # a timeout, or the connection ended first (reported apart)
            reply = Reply(None, self.timeout)
        stats = self.report.step(step)
        stats.outcomes[reply.code_name] += 1
        if reply.response is not None:
            stats.latencies.append(reply.latency)
        return reply

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


async def open_connection(target: Target, settings: TlsSettings, report: LoadReport,
                          timeout: float, context: ssl.SSLContext | None = None
                          ) -> tuple[TlsConnection, float]:
    """One connection, and the seconds its TCP connect and TLS handshake took."""
    loop = asyncio.get_running_loop()
    connection = TlsConnection(settings, report, timeout)
    started = time.perf_counter()
    local = ("::1", 0) if ":" in target.host else ("127.0.0.1", 0)
    await asyncio.wait_for(loop.create_connection(
        lambda: connection, target.host, target.port, ssl=context or settings.context(),
        server_hostname=settings.server_name or target.host, local_addr=local,
        ssl_handshake_timeout=timeout), timeout)
    seconds = time.perf_counter() - started
    ssl_object = connection.transport.get_extra_info("ssl_object")
    protocol = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
    connection.v11 = protocol == ALPN_V11
    return connection, seconds


async def run_tls_load(target: Target | str, settings: TlsSettings, *,
                       transaction: TlsTransaction, connections: int = 4, in_flight: int = 8,
                       count: int = 100, duration: float = 60.0,
                       timeout: float = 5.0) -> tuple[LoadReport, Opened]:
    """Open ``connections`` at once, then run ``count`` transactions with
    ``in_flight`` workers per connection (each bound to its connection),
    for at most ``duration`` seconds; close the connections at the end."""
    target = loadgen.parse_target(target) if isinstance(target, str) else target
    if not loadgen.is_loopback(ipaddress.ip_address(target.host)):
        raise LoadError(f"target {target}: refused, loopback addresses only")
    if connections < 1 or in_flight < 1:
        raise LoadError("connections and in-flight must be at least 1")
    if in_flight > IDS_PER_CONNECTION:
        raise LoadError(f"at most {IDS_PER_CONNECTION} requests in flight per connection")
    loadgen._check_bounds(connections * in_flight, count, duration, timeout)

    report = LoadReport(target=target, concurrency=connections * in_flight, sockets=connections)
    context = settings.context()
    opened = Opened()
    started = time.perf_counter()
    results = await asyncio.gather(*(open_connection(target, settings, report, timeout, context)
                                     for _ in range(connections)), return_exceptions=True)
    opened.seconds = time.perf_counter() - started
    conns = [result[0] for result in results if not isinstance(result, BaseException)]
    try:
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            raise LoadError(f"{len(failures)} of {connections} TLS connections failed: "
                            f"{type(failures[0]).__name__}: {failures[0] or 'timed out'}")
        for connection, seconds in results:
            opened.each.append(seconds)
            ssl_object = connection.transport.get_extra_info("ssl_object")
            opened.tls_versions.add(ssl_object.version() or "?")
            opened.ciphers.add((ssl_object.cipher() or ("?",))[0])
            opened.protocols.add(ssl_object.selected_alpn_protocol() or "-")

        indices = iter(range(count))
        begun = time.perf_counter()
        deadline = begun + duration

        async def worker(connection: TlsConnection) -> None:
            for index in indices:                    # shared iterator: each index runs once
                if time.perf_counter() >= deadline:
                    return
                if connection.transport.is_closing():  # the others carry on with the rest
                    return
                report.transactions += 1
                try:
                    await transaction(index, connection)
                except LoadError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a flow's surprise is a result, not a crash
                    if len(report.failed) < 5:
                        report.failed.append(f"{type(exc).__name__}: {exc}")
                    continue
                report.completed += 1

        try:
            await asyncio.gather(*(worker(connection) for connection in conns
                                   for _ in range(in_flight)))
        finally:
            report.elapsed = time.perf_counter() - begun
        lost = [connection.lost_reason for connection in conns if connection.transport.is_closing()]
        if lost:
            report.failed.append(f"{len(lost)} of {connections} connections lost during the run "
                                 f"(first: {lost[0]}); {report.transactions} of {count} transactions started")
    finally:
        for connection in conns:
            connection.close()
        await asyncio.sleep(0)                   # let the close_notify go out
    return report, opened


# --------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tlsload.py",
        description="Send RADIUS Access-Requests (or Status-Server) over a few long-lived TLS "
                    "connections to a loopback server; report throughput, latency and the "
                    "time to open the connections.")
    parser.add_argument("--target", required=True, help="HOST:PORT on loopback, e.g. 127.0.0.1:2083")
    parser.add_argument("--ca-file", required=True, help="the CA the server's certificate chains to")
    parser.add_argument("--cert", required=True, help="the client certificate (PEM)")
    parser.add_argument("--key", required=True, help="its key (PEM, unencrypted)")
    parser.add_argument("--server-name", default=None,
                        help="the name the server's certificate must carry (default: not checked)")
    parser.add_argument("--alpn", action="append", default=None,
                        help=f"an ALPN name to offer ({ALPN_V11} or {ALPN_V10}); repeat for "
                             "several; default none (RFC 6614)")
    parser.add_argument("--secret", default=DEFAULT_SECRET.decode(),
                        help="the RADIUS/1.0 shared secret (default radsec)")
    parser.add_argument("--user", action="append", default=[],
                        help="User-Name; repeat to cycle through several users")
    parser.add_argument("--password", default="", help="User-Password sent for every user")
    parser.add_argument("--status-server", action="store_true",
                        help="send Status-Server instead of Access-Request")
    parser.add_argument("--count", type=int, default=100, help="requests to send (default 100)")
    parser.add_argument("--connections", type=int, default=4, help="TLS connections (default 4)")
    parser.add_argument("--in-flight", type=int, default=8,
                        help="requests in flight on each connection (default 8)")
    parser.add_argument("--duration", type=float, default=60.0,
                        help="start no request after this many seconds (default 60)")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds to wait for each reply and for a handshake (default 5)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        target = loadgen.parse_target(args.target)
        if not args.status_server and not args.user:
            raise LoadError("give --user (one or more) or --status-server")
        settings = TlsSettings(ca_file=args.ca_file, cert_file=args.cert, key_file=args.key,
                               server_name=args.server_name,
                               alpn=tuple(args.alpn) if args.alpn else None,
                               secret=args.secret.encode("utf-8"),
                               # FreeRADIUS answers Status-Server without one
                               require_message_authenticator=not args.status_server)

        async def one(index: int, connection: TlsConnection) -> None:
            if args.status_server:
                await connection.request(None, code=codec.STATUS_SERVER)
            else:
                await connection.request(args.user[index % len(args.user)], args.password)

        report, opened = asyncio.run(run_tls_load(
            target, settings, transaction=one, connections=args.connections,
            in_flight=args.in_flight, count=args.count, duration=args.duration,
            timeout=args.timeout))
    except (LoadError, LocalProtocolError, OSError, ssl.SSLError) as exc:
        print(f"tlsload: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tlsload: interrupted", file=sys.stderr)
        return 130
    print(f"opened {opened.describe()}")
    print(loadgen.format_report(report).replace("  sockets ", "  connections "))
    return 0


if __name__ == "__main__":
    sys.exit(main())
