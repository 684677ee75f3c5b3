#!/usr/bin/env python3
"""Measure push approval under a burst: N sign-ins waiting for N devices at once.

    python3 bench/bench_push.py [--count 1000] [--timeout 50] [--workers 1] [--keep]

What it does, and why that way:

1. A temporary directory with a config: one client (127.0.0.1,
   ``second-factor-only`` like RD Gateway behind NPS, Message-Authenticator
   required, ``timeout`` 50 s), ``factors.push`` on a loopback port with the
   certificate and key in the directory (the server makes them, self-signed,
   on its first start), a SQLite store and the audit file in the directory,
   log level ``warning``.
2. ``--count`` users (no password: NPS checked it) and one pairing link per
   user, written straight into the store in-process (what ``radius-mfa user
   add`` and ``radius-mfa device pair`` write). One ``device pair`` process
   per user would take minutes; one is run for the first user, through the
   real command, and timed.
3. ``radius-mfa -c CONFIG serve`` as a child (bench_core.ServerProcess:
   ready on ``READY=1``, stopped by pid with SIGTERM, SIGKILL after 10 s,
   whatever happened, Ctrl-C included).
4. Every device: an Ed25519 key, one kept-alive TLS connection to the device
   API whose certificate is pinned by the SHA-256 fingerprint of the pairing
   URL, and ``POST /v1/pair`` with its token (a bounded number at a time:
   this is setup, not the measurement).
5. The burst: every device long-polls ``GET /v1/pending?wait=55`` (signed);
   after a pause that measures what the idle long-polls cost the server, the
   N Access-Requests go out at once (raw UDP, no User-Password, a distinct
   Calling-Station-Id per user, ``ceil(N / 256)`` sockets so identifiers
   stay distinct); each device, woken by its push, answers ``approve``
   (signed, ``POST /v1/approvals/{id}``), and each request should come back
   as an Access-Accept within the client's timeout. Nothing is retransmitted.
6. The figures: pushes decided within their timeout, time from request to
   Access-Accept, time until every device had its push, approvals per second,
   the server's RSS and CPU. Then the audit file is read back: one ``accept``
   record with ``factor: push`` per user is expected.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(1, str(BENCH_DIR.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from bench_core import (BenchError, ServerProcess, cpu_model, free_tcp_port, free_udp_port,  # noqa: E402
                        radius_mfa_command, run_in_temporary_directory, store_url,
                        write_config)
from bench_vs_freeradius import RssSampler, tree_cpu_seconds, tree_rss_bytes  # noqa: E402

from radius_mfa.model import Pairing, User  # noqa: E402
from radius_mfa.push import crypto  # noqa: E402
from radius_mfa.radius import codec  # noqa: E402
from radius_mfa.store import open_store  # noqa: E402

CLIENT_TIMEOUT = 50.0          # RD Gateway-like: NPS gives up at 60 s
LONG_POLL_SECONDS = 55         # the device API's longest long-poll
IDLE_SECONDS = 3.0             # the pause with every long-poll waiting, before the burst
SETUP_CONCURRENCY = 32         # TLS connections + POST /v1/pair in flight during setup
HTTP_TIMEOUT = LONG_POLL_SECONDS + 15.0
IDS_PER_SOCKET = 256


# --------------------------------------------------------------------------
# Setup: users, pairing links, the config


def user_name(index: int) -> str:
    return f"push{index:05d}"


def make_users_and_pairings(directory: Path, count: int, pairing_ttl: float) -> list[str | None]:
    """``count`` users without a password and a pairing token for each but
    the first (that one is paired through ``radius-mfa device pair``);
    returns the tokens by user index (None for the first)."""
    now = time.time()
    tokens: list[str | None] = [None] + [crypto.new_pairing_token() for _ in range(1, count)]
    store = open_store(store_url(directory), str(directory / "store.key"))
    try:
        store.add_users((User(name=user_name(i), created=now), []) for i in range(count))
        for index, token in enumerate(tokens):
            if token is not None:
                store.add_pairing(Pairing(token_digest=crypto.token_digest(token),
                                          user=user_name(index), created=now,
                                          expires=now + pairing_ttl))
    finally:
        store.close()
    return tokens


def write_push_config(directory: Path, *, port: int, push_port: int, secret: str, timeout: float,
                      workers: int) -> Path:
    return write_config(directory, port, secret, workers=workers, client="rdgw",
                        mode="second-factor-only", client_extra=f"    timeout: {timeout:g}\n",
                        policy="", factors=f"""\
  push:
    listen: "127.0.0.1:{push_port}"
    tls_cert: "{directory / 'push.crt'}"
    tls_key: "{directory / 'push.key'}"
    public_url: "https://127.0.0.1:{push_port}"
    timeout: {timeout:g}
    number_matching: true
""")


def pair_through_cli(config: Path, name: str) -> tuple[crypto.PairingLink, float]:
    """``radius-mfa device pair NAME --json``: the link and the seconds it took."""
    started = time.perf_counter()
    result = subprocess.run(radius_mfa_command(config, "device", "pair", name, "--json"),
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise BenchError(f"radius-mfa device pair {name} exited with {result.returncode}: "
                         f"{result.stderr.strip()}")
    try:
        return crypto.parse_pairing_url(json.loads(result.stdout)["url"]), seconds
    except (ValueError, KeyError) as exc:
        raise BenchError(f"radius-mfa device pair --json printed no pairing URL: {exc}") from None


def raise_open_files_limit(needed: int) -> None:
    """Each device holds a TLS connection: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < needed:
        raise BenchError(f"{needed} open files are needed (ulimit -n is lower)")


class Profiler:
    """``py-spy record`` on the server during the burst only (``--profile
    FILE``): raw collapsed stacks with thread names, stopped by pid with
    SIGINT (py-spy then writes the file), SIGKILL if it lingers."""

    ATTACH_SECONDS = 1.0

    def __init__(self, output: Path | None):
        self.output = output
        self.proc: subprocess.Popen | None = None

    def start(self, pid: int) -> None:
        if self.output is None:
            return
        py_spy = shutil.which("py-spy")
        if py_spy is None:
            raise BenchError("--profile needs py-spy on the PATH (pip install py-spy)")
        self.proc = subprocess.Popen(
            [py_spy, "record", "--pid", str(pid), "--threads", "--format", "raw", "--rate", "200",
             "--nonblocking", "--output", str(self.output)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        errors = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None
        if self.output is not None and not self.output.exists():
            raise BenchError(f"py-spy wrote no profile: {errors.strip()[-300:]}")


# --------------------------------------------------------------------------
# A device: its key and one kept-alive TLS connection to the device API


class HttpError(Exception):
    """The connection failed or the answer was not HTTP/JSON."""


class Device:
    """One paired device speaking the device API (docs/device-api.yaml)."""

    def __init__(self, index: int, host: str, port: int, fingerprint: str,
                 context: ssl.SSLContext):
        self.index = index
        self.host, self.port = host, port
        self.fingerprint = fingerprint
        self.context = context
        self.key = Ed25519PrivateKey.generate()
        self.id = ""
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        # each device from a loopback address of its own, as phones come from
        # their own addresses: the device API limits pairing attempts per source
        source = (f"127.0.{self.index // 250}.{self.index % 250 + 1}", 0)
        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.context,
                                                       server_hostname=self.host, local_addr=source)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        if der is None or crypto.fingerprint_of_der(der) != self.fingerprint:
            writer.close()
            raise BenchError("the device API's certificate does not match the pairing URL's fp=")
        self._reader, self._writer = reader, writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._reader = self._writer = None

    async def pair(self, token: str) -> None:
        status, body = await self.call("POST", "/v1/pair", {
            "token": token, "name": f"bench device {self.index}",
            "public_key": crypto.public_key_b64(self.key)})
        if status != 201:
            raise BenchError(f"POST /v1/pair answered {status}: {body}")
        self.id = body["device_id"]

    async def pending(self, wait: int) -> tuple[int, Any]:
        return await self.call("GET", f"/v1/pending?wait={wait}", signed=True)

    async def approve(self, push_id: str) -> tuple[int, Any]:
        now = int(time.time())
        signature = crypto.sign(self.key, crypto.answer_message(push_id, "approve", None, now))
        return await self.call("POST", f"/v1/approvals/{push_id}",
                               {"decision": "approve", "number": None, "time": now,
                                "signature": signature})

    async def call(self, method: str, path: str, body: dict | None = None, *,
                   signed: bool = False) -> tuple[int, Any]:
        """One request on the kept-alive connection (opened again once if
        the server closed it); the status and the decoded JSON body."""
        for attempt in (1, 2):
            if self._writer is None:
                await self.connect()
            try:
                return await asyncio.wait_for(self._exchange(method, path, body, signed),
                                              HTTP_TIMEOUT)
            except (ConnectionError, asyncio.IncompleteReadError, HttpError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _exchange(self, method: str, path: str, body: dict | None,
                        signed: bool) -> tuple[int, Any]:
        assert self._reader is not None and self._writer is not None
        payload = b"" if body is None else json.dumps(body).encode()
        headers = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                   "Content-Type: application/json", f"Content-Length: {len(payload)}"]
        if self.id:
            headers.append(f"X-Device-Id: {self.id}")
        if signed:
            now = int(time.time())
            message = crypto.request_message(method, path.split("?")[0], now, self.id)
            headers += [f"X-Time: {now}", f"X-Signature: {crypto.sign(self.key, message)}"]
        self._writer.write(("\r\n".join(headers) + "\r\n\r\n").encode("ascii") + payload)
        await self._writer.drain()
        status_line = await self._reader.readline()
        parts = status_line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            raise HttpError(f"not an HTTP answer: {status_line[:80]!r}")
        fields: dict[str, str] = {}
        while True:
            line = await self._reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            fields[name.strip().lower()] = value.strip()
        data = await self._reader.readexactly(int(fields.get("content-length", "0")))
        if fields.get("connection", "").lower() == "close":
            self.close()
        try:
            return int(parts[1]), json.loads(data) if data else None
        except ValueError:
            raise HttpError("the answer's body is not JSON") from None


def pinned_context() -> ssl.SSLContext:
    """TLS without CA or host name checks: each connection is pinned by the
    fingerprint instead (Device.connect), as the authenticator does."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# --------------------------------------------------------------------------
# The RADIUS side: N Access-Requests at once, each answer verified


@dataclass
class Outstanding:
    index: int
    authenticator: bytes
    sent: float
    answered: float | None = None
    code: int | None = None


class RadiusSocket(asyncio.DatagramProtocol):
    """One UDP socket; up to 256 requests in flight, matched by identifier."""

    def __init__(self, secret: bytes):
        self.secret = secret
        self.transport: asyncio.DatagramTransport | None = None
        self.by_id: dict[int, Outstanding] = {}
        self.invalid = 0
        self.done = asyncio.get_running_loop().create_future()
        self.waiting = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def send(self, ident: int, index: int, packet: bytes, authenticator: bytes) -> Outstanding:
        outstanding = Outstanding(index, authenticator, time.monotonic())
        self.by_id[ident] = outstanding
        self.waiting += 1
        assert self.transport is not None
        self.transport.sendto(packet)
        return outstanding

    def datagram_received(self, data: bytes, addr) -> None:
        now = time.monotonic()
        if len(data) < 20:
            self.invalid += 1
            return
        outstanding = self.by_id.get(data[1])
        if outstanding is None or outstanding.code is not None:
            self.invalid += 1
            return
        try:
            reply = codec.decode_response(data, self.secret, outstanding.authenticator)
        except Exception:
            self.invalid += 1
            return
        outstanding.code, outstanding.answered = reply.code, now
        self.waiting -= 1
        if self.waiting == 0 and not self.done.done():
            self.done.set_result(None)

    def error_received(self, exc: Exception) -> None:
        pass


# --------------------------------------------------------------------------
# The run


@dataclass
class DeviceTimes:
    seen: float | None = None           # its push arrived in GET /v1/pending
    approve_sent: float | None = None
    approved: float | None = None       # POST /v1/approvals answered 200
    pending_count: int = 0              # pushes it saw (1 expected)
    needs_number: bool | None = None
    error: str | None = None


@dataclass
class Measured:
    count: int
    timeout: float
    pair_seconds: float
    cli_pair_seconds: float
    rss_before: int
    rss_idle: int
    rss_after: int
    rss_peak: int
    idle_cpu_seconds: float
    idle_seconds: float
    burst_cpu_seconds: float
    client_cpu_seconds: float            # this process (devices + RADIUS side) during the burst
    send_seconds: float
    started: float                       # monotonic time the first request went out
    requests: list[Outstanding]
    devices: list[DeviceTimes]
    invalid_replies: int
    audit: dict[str, int] = field(default_factory=dict)


async def pair_all(devices: list[Device], tokens: list[str | None]) -> float:
    """Connect and pair every device, SETUP_CONCURRENCY at a time; seconds."""
    gate = asyncio.Semaphore(SETUP_CONCURRENCY)

    async def one(device: Device, token: str) -> None:
        async with gate:
            await device.pair(token)

    started = time.perf_counter()
    await asyncio.gather(*(one(d, t) for d, t in zip(devices, tokens) if t is not None))
    return time.perf_counter() - started


async def device_flow(device: Device, times: DeviceTimes, deadline: float) -> None:
    """Long-poll until its push shows, then approve it."""
    try:
        while True:
            status, body = await device.pending(LONG_POLL_SECONDS)
            if status != 200:
                times.error = f"GET /v1/pending answered {status}: {body}"
                return
            pending = body["pending"]
            if pending:
                break
            if time.monotonic() > deadline:
                times.error = "no push arrived"
                return
        times.seen = time.monotonic()
        times.pending_count = len(pending)
        times.needs_number = bool(pending[0].get("needs_number"))
        times.approve_sent = time.monotonic()
        status, body = await device.approve(pending[0]["id"])
        if status != 200:
            times.error = f"POST /v1/approvals answered {status}: {body}"
            return
        times.approved = time.monotonic()
    except (OSError, HttpError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
        times.error = f"{type(exc).__name__}: {exc}"


async def burst(*, pid: int, count: int, secret: bytes, radius_port: int, push_port: int,
                fingerprint: str, first_link: crypto.PairingLink, tokens: list[str | None],
                timeout: float, cli_pair_seconds: float, profiler: Profiler) -> Measured:
    loop = asyncio.get_running_loop()
    context = pinned_context()
    devices = [Device(i, "127.0.0.1", push_port, fingerprint, context) for i in range(count)]
    tokens = [first_link.token] + tokens[1:]
    print(f"pairing {count} devices (POST /v1/pair, {SETUP_CONCURRENCY} at a time) …",
          file=sys.stderr, flush=True)
    pair_seconds = await pair_all(devices, tokens)
    rss_before = tree_rss_bytes(pid)

    sockets: list[RadiusSocket] = []
    for _ in range(math.ceil(count / IDS_PER_SOCKET)):
        _, protocol = await loop.create_datagram_endpoint(
            lambda: RadiusSocket(secret), remote_addr=("127.0.0.1", radius_port))
        sockets.append(protocol)
    packets = []
    for index in range(count):
        ident = index % IDS_PER_SOCKET
        packet = codec.build_access_request(
            secret, user_name(index), None, id=ident,
            attributes=[("Calling-Station-Id", f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}")])
        packets.append((sockets[index // IDS_PER_SOCKET], ident, packet, packet[4:20]))

    times = [DeviceTimes() for _ in range(count)]
    with RssSampler(pid) as sampler:
        # every device waits in a long-poll, as an app with the screen on would
        deadline = time.monotonic() + IDLE_SECONDS + timeout + 5.0
        print(f"{count} devices long-poll; idle {IDLE_SECONDS:g} s, then {count} Access-Requests "
              f"at once …", file=sys.stderr, flush=True)
        flows = [asyncio.ensure_future(device_flow(d, t, deadline)) for d, t in zip(devices, times)]
        await asyncio.sleep(0.5)                       # the long-polls reach the server
        idle_cpu = -tree_cpu_seconds(pid)
        idle_started = time.monotonic()
        await asyncio.sleep(IDLE_SECONDS)
        idle_cpu += tree_cpu_seconds(pid)
        idle_seconds = time.monotonic() - idle_started
        rss_idle = tree_rss_bytes(pid)
        if profiler.output is not None:
            profiler.start(pid)
            await asyncio.sleep(profiler.ATTACH_SECONDS)

        burst_cpu = -tree_cpu_seconds(pid)
        client_cpu = -time.process_time()
        started = time.monotonic()
        requests = [sock.send(ident, index, packet, authenticator)
                    for index, (sock, ident, packet, authenticator) in enumerate(packets)]
        send_seconds = time.monotonic() - started
        replies = asyncio.gather(*(s.done for s in sockets))
        try:
            await asyncio.wait_for(asyncio.shield(replies), timeout + 5.0)
        except asyncio.TimeoutError:
            pass
        burst_cpu += tree_cpu_seconds(pid)
        client_cpu += time.process_time()
        profiler.stop()
        remaining = max(0.0, deadline - time.monotonic())
        done, stragglers = await asyncio.wait(flows, timeout=remaining)
        for flow in stragglers:
            flow.cancel()
        replies.cancel()
    for device in devices:
        device.close()
    for sock in sockets:
        if sock.transport is not None:
            sock.transport.close()
    await asyncio.sleep(0)
    return Measured(count=count, timeout=timeout, pair_seconds=pair_seconds,
                    cli_pair_seconds=cli_pair_seconds, rss_before=rss_before, rss_idle=rss_idle,
                    rss_after=tree_rss_bytes(pid), rss_peak=sampler.peak,
                    idle_cpu_seconds=idle_cpu, idle_seconds=idle_seconds,
                    burst_cpu_seconds=burst_cpu, client_cpu_seconds=client_cpu, send_seconds=send_seconds, started=started,
                    requests=requests, devices=times,
                    invalid_replies=sum(s.invalid for s in sockets))


def read_audit(path: Path) -> dict[str, int]:
    """Audit records by ``result/factor/reason``."""
    counts: dict[str, int] = {}
    if not path.exists():
        return counts
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        key = f"{record.get('result')}/{record.get('factor')}/{record.get('reason')}"
        counts[key] = counts.get(key, 0) + 1
    return counts


# --------------------------------------------------------------------------
# Output


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000.0:.0f} ms"


def _mb(value: int) -> str:
    return f"{value / 2**20:.1f} MB"


def report(m: Measured, workers: int) -> int:
    """Print the figures; 0 when every push was approved and accepted in time."""
    accepted = [r for r in m.requests if r.code == codec.ACCESS_ACCEPT]
    in_time = [r for r in accepted if r.answered - r.sent <= m.timeout]
    rejected = sum(1 for r in m.requests if r.code == codec.ACCESS_REJECT)
    other = sum(1 for r in m.requests if r.code not in (None, codec.ACCESS_ACCEPT, codec.ACCESS_REJECT))
    unanswered = sum(1 for r in m.requests if r.code is None)
    latencies = [r.answered - r.sent for r in accepted]
    seen = [d.seen for d in m.devices if d.seen is not None]
    seen_delay = [d.seen - r.sent for d, r in zip(m.devices, m.requests) if d.seen is not None]
    approved = [d for d in m.devices if d.approved is not None]
    approve_ms = [d.approved - d.approve_sent for d in approved]
    to_accept = [r.answered - d.approved for d, r in zip(m.devices, m.requests)
                 if d.approved is not None and r.code == codec.ACCESS_ACCEPT]
    window = (max(d.approved for d in approved) - min(d.approve_sent for d in approved)) if approved else 0.0
    errors = [d.error for d in m.devices if d.error]
    extra = sum(1 for d in m.devices if d.pending_count > 1)
    numbers = sum(1 for d in m.devices if d.needs_number)

    print("machine")
    print(f"  {'cpus (nproc)':<22} {len(os.sched_getaffinity(0))}")
    print(f"  {'cpu':<22} {cpu_model()}")
    print(f"  {'python':<22} {platform.python_implementation()} {platform.python_version()}")
    print(f"  {'server':<22} server.workers {workers}, SQLite store, log level warning")
    print()
    print(f"setup: {m.count} users and devices")
    print(f"  {'device pair (CLI)':<22} {m.cli_pair_seconds:.2f} s for one `radius-mfa device pair --json`")
    print(f"  {'POST /v1/pair':<22} {m.count - 1} devices in {m.pair_seconds:.2f} s "
          f"({(m.count - 1) / m.pair_seconds if m.pair_seconds else 0:.0f}/s, TLS connect included, "
          f"{SETUP_CONCURRENCY} at a time)")
    print()
    print(f"burst: {m.count} second-factor-only Access-Requests at once (sent in "
          f"{m.send_seconds * 1000:.0f} ms), client timeout {m.timeout:g} s, every device "
          f"long-polling and approving")
    print(f"  {'decided in time':<22} {len(in_time)} of {m.count} Access-Accept within {m.timeout:g} s "
          f"({100.0 * len(in_time) / m.count:.1f} %); Access-Reject {rejected}, other {other}, "
          f"no answer {unanswered}, invalid replies {m.invalid_replies}")
    print(f"  {'request -> Accept':<22} p50 {_ms(percentile(latencies, 0.5))}, "
          f"p99 {_ms(percentile(latencies, 0.99))}, max {_ms(max(latencies) if latencies else None)}")
    print(f"  {'all pushes started':<22} {_ms(max(seen) - m.started if seen else None)} from the first "
          f"request until the last device had its push (request -> device: p50 "
          f"{_ms(percentile(seen_delay, 0.5))}, p99 {_ms(percentile(seen_delay, 0.99))}); "
          f"{len(seen)} devices saw one")
    print(f"  {'approvals':<22} {len(approved)} answered 200 in {window:.2f} s "
          f"({len(approved) / window if window else 0:.0f}/s); POST p50 {_ms(percentile(approve_ms, 0.5))}, "
          f"p99 {_ms(percentile(approve_ms, 0.99))}")
    print(f"  {'approval -> Accept':<22} p50 {_ms(percentile(to_accept, 0.5))}, "
          f"p99 {_ms(percentile(to_accept, 0.99))}, max {_ms(max(to_accept) if to_accept else None)}")
    print(f"  {'server RSS':<22} before {_mb(m.rss_before)} (paired, idle), with {m.count} long-polls "
          f"{_mb(m.rss_idle)}, peak {_mb(m.rss_peak)}, after {_mb(m.rss_after)}")
    print(f"  {'server CPU':<22} {m.idle_cpu_seconds / m.idle_seconds * 100:.0f} % of a core while "
          f"{m.count} long-polls waited ({m.idle_cpu_seconds:.2f} s in {m.idle_seconds:.1f} s); "
          f"{m.burst_cpu_seconds:.2f} s for the burst ({m.burst_cpu_seconds / m.count * 1000:.2f} ms a sign-in); "
          f"the benchmark's own process {m.client_cpu_seconds:.2f} s on the same cores")
    audit = ", ".join(f"{k} {v}" for k, v in sorted(m.audit.items())) or "none"
    print(f"  {'audit records':<22} {audit}")

    status = 0
    if len(in_time) != m.count:
        print(f"\nwarning: {m.count - len(in_time)} sign-ins were not accepted within the timeout")
        status = 1
    if extra:
        print(f"\nwarning: {extra} devices saw more than one pending push")
        status = 1
    if numbers:
        print(f"\nwarning: {numbers} pushes asked for a number (second-factor-only should not)")
        status = 1
    if errors:
        print(f"\nwarning: {len(errors)} devices failed; first: {errors[0]}")
        status = 1
    if m.audit.get("accept/push/None", 0) != m.count:
        print(f"\nwarning: expected {m.count} audit records accept/push, found "
              f"{m.audit.get('accept/push/None', 0)}")
        status = 1
    return status


# --------------------------------------------------------------------------
# Main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench_push.py",
        description="Start radius-mfa with push on loopback, pair one device per user, send one "
                    "second-factor-only Access-Request per user at once and approve every push.")
    parser.add_argument("--count", type=int, default=1000, help="users, devices and sign-ins (default 1000)")
    parser.add_argument("--timeout", type=float, default=CLIENT_TIMEOUT,
                        help=f"the client's and the push's timeout, seconds (default {CLIENT_TIMEOUT:g})")
    parser.add_argument("--workers", type=int, default=1, help="server.workers (default 1)")
    parser.add_argument("--profile", metavar="FILE", type=Path,
                        help="record the server with py-spy during the burst (raw collapsed "
                             "stacks with threads, for flamegraph.pl or a script)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (config, store, audit, server log)")
    return parser


def _validate(args: argparse.Namespace) -> None:
    if args.count < 1:
        raise BenchError("--count must be at least 1")
    if not 2 <= args.timeout <= 300:
        raise BenchError("--timeout must be 2 to 300 seconds")
    if args.workers < 1:
        raise BenchError("--workers must be at least 1")


def run(args: argparse.Namespace, directory: Path) -> int:
    raise_open_files_limit(2 * args.count + 256)
    secret = secrets.token_hex(16)
    port, push_port = free_udp_port(), free_tcp_port()
    config = write_push_config(directory, port=port, push_port=push_port, secret=secret,
                          timeout=args.timeout, workers=args.workers)
    started = time.perf_counter()
    tokens = make_users_and_pairings(directory, args.count, pairing_ttl=600.0)
    print(f"{args.count} users and pairing links written in {time.perf_counter() - started:.1f} s",
          file=sys.stderr, flush=True)

    server = ServerProcess(config, directory)
    profiler = Profiler(args.profile.resolve() if args.profile else None)
    try:
        server.start()
        assert server.proc is not None
        print(f"server pid {server.proc.pid}: RADIUS 127.0.0.1:{port}, device API "
              f"https://127.0.0.1:{push_port}", file=sys.stderr, flush=True)
        fingerprint = crypto.certificate_fingerprint(str(directory / "push.crt"))
        link, cli_seconds = pair_through_cli(config, user_name(0))
        if link.fingerprint != fingerprint:
            raise BenchError("device pair printed another certificate fingerprint than the "
                             "server's certificate file has")
        measured = asyncio.run(burst(pid=server.proc.pid, count=args.count, secret=secret.encode(),
                                     radius_port=port, push_port=push_port, fingerprint=fingerprint,
                                     first_link=link, tokens=tokens, timeout=args.timeout,
                                     cli_pair_seconds=cli_seconds, profiler=profiler))
    finally:
        profiler.stop()
        server.stop()
    measured.audit = read_audit(directory / "audit.jsonl")
    status = report(measured, args.workers)
    noise = [line for line in server.log().splitlines() if line.strip()]
    if noise:
        print(f"\nwarning: the server logged {len(noise)} lines at warning level or above; first:")
        print("\n".join(line if len(line) <= 400 else line[:400] + " …" for line in noise[:3]))
        status = 1
    if server.exit_code != 0:
        print(f"\nwarning: the server exited with {server.exit_code} after SIGTERM (expected 0)")
        status = 1
    return status


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C while asyncio runs: KeyboardInterrupt reaches run()'s finally,
    # which stops the server by pid
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return run_in_temporary_directory("bench_push", "radius-mfa-push-",
                                      _parser().parse_args(argv), run, _validate)


if __name__ == "__main__":
    sys.exit(main())
