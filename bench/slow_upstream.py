#!/usr/bin/env python3
"""A slow upstream RADIUS server for benchmarks: accepts every PAP request
after a fixed delay.

It stands for the organisation's own RADIUS server (NPS, an appliance) that
a primary in front of it proxies the password to. What matters for a
benchmark is that it answers late, like a server that checks against a
directory across a WAN, and that it answers *correctly*, so the proxy in
front pays its full verification cost:

* every Access-Request that decodes with the shared secret (Message-
  Authenticator checked when present) and carries a User-Password gets an
  Access-Accept after ``--delay`` seconds; a request without a User-Password
  (CHAP and the like) gets an Access-Reject; Status-Server is answered at
  once;
* every reply is signed: Response Authenticator, Message-Authenticator
  first, and the request's Proxy-State attributes echoed in order
  (``codec.encode_response``), so proxies that require a
  Message-Authenticator from their upstream accept it;
* one asyncio loop and ``call_later`` per request: thousands of requests
  can wait at once without a thread each;
* loopback only, like the load generator.

The password itself is not checked: the benchmark measures the proxy, and
the upstream's own cost is the delay.

    python3 bench/slow_upstream.py --listen 127.0.0.1:18120 --secret S --delay 0.2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import LoadError, parse_target  # noqa: E402
from radius_mfa.errors import RemoteProtocolError  # noqa: E402
from radius_mfa.radius import codec  # noqa: E402
from radius_mfa.radius.dictionary import load_dictionary  # noqa: E402

RECEIVE_BUFFER = 4 << 20


class SlowUpstream(asyncio.DatagramProtocol):
    """Answers Access-Requests after ``delay`` seconds; counts what it saw."""

    def __init__(self, secret: bytes, delay: float):
        self.secret = secret
        self.delay = delay
        self.dictionary = load_dictionary()
        self.transport: asyncio.DatagramTransport | None = None
        self.accepted = 0
        self.rejected = 0
        self.dropped = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            request = codec.decode_request(data, self.secret, dictionary=self.dictionary)
        except RemoteProtocolError:
            self.dropped += 1
            return
        if request.has_message_authenticator and not request.message_authenticator_ok:
            self.dropped += 1
            return
        if request.code == codec.STATUS_SERVER:
            self._send(request, codec.ACCESS_ACCEPT, addr)
            return
        code = codec.ACCESS_ACCEPT if request.password is not None else codec.ACCESS_REJECT
        asyncio.get_running_loop().call_later(self.delay, self._send, request, code, addr)

    def _send(self, request: codec.Request, code: int, addr) -> None:
        if code == codec.ACCESS_ACCEPT:
            self.accepted += 1
        else:
            self.rejected += 1
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(codec.encode_response(request, code), addr)

    def error_received(self, exc: Exception) -> None:
        pass


async def serve(host: str, port: int, secret: bytes, delay: float,
                ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> SlowUpstream:
    """Serve until ``stop`` is set (or forever); returns the protocol with its counts."""
    loop = asyncio.get_running_loop()
    protocol = SlowUpstream(secret, delay)
    transport, _ = await loop.create_datagram_endpoint(lambda: protocol, local_addr=(host, port))
    sock = transport.get_extra_info("socket")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    except OSError:
        pass
    if ready is not None:
        ready.set()
    try:
        await (stop.wait() if stop is not None else asyncio.Event().wait())
    finally:
        transport.close()
    return protocol


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slow_upstream.py",
        description="A RADIUS server on loopback that accepts every PAP request after a delay.")
    parser.add_argument("--listen", required=True, help="HOST:PORT on loopback, e.g. 127.0.0.1:18120")
    parser.add_argument("--secret-env", metavar="VAR", default=None,
                        help="read the shared secret from this variable")
    parser.add_argument("--secret", default=None, help="shared secret (or --secret-env)")
    parser.add_argument("--delay", type=float, default=0.2, help="seconds before each answer (default 0.2)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        target = parse_target(args.listen)
        if args.secret_env:
            value = os.environ.get(args.secret_env)
            if value is None:
                raise LoadError(f"environment variable {args.secret_env} is not set")
            secret = value.encode()
        elif args.secret is not None:
            secret = args.secret.encode()
        else:
            raise LoadError("give --secret or --secret-env")
        if not args.delay >= 0:
            raise LoadError("--delay must be 0 or more")

        async def run() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            ready = asyncio.Event()
            task = asyncio.create_task(serve(target.host, target.port, secret, args.delay, ready, stop))
            await ready.wait()
            print(f"slow upstream on {target}, delay {args.delay:g} s", file=sys.stderr, flush=True)
            protocol = await task
            print(f"accepted {protocol.accepted}, rejected {protocol.rejected}, "
                  f"dropped {protocol.dropped}", file=sys.stderr)

        asyncio.run(run())
    except (LoadError, OSError) as exc:
        print(f"slow_upstream: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
