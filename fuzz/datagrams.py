"""Datagram fuzzer against a running `radius-mfa serve`.

    python3 fuzz/datagrams.py [--datagrams 1000000] [--rate 3000] [--workers 1] [--keep DIR]

Starts the server on a free loopback port (SQLite store, inline client
127.0.0.1 with a required Message-Authenticator, a legacy client 127.0.0.3
without one), enrols users with a password and a TOTP token, and sends, at
``--rate`` datagrams a second:

* ``random``: random bytes of random length (0 to 4,200 octets);
* ``shaped``: a header whose Length fits, any code, random attributes;
* ``mutated``: a valid Access-Request with bytes flipped, set, cut,
  inserted or repeated, the Message-Authenticator left as it was;
* ``signed``: an attribute-level mutation (values changed, attributes
  dropped, repeated, added: Proxy-State, State, EAP-Message, CHAP, MS-CHAP,
  vendor attributes, a User-Name that is not UTF-8, a User-Password of
  the wrong size…) signed again with a valid Message-Authenticator, so that
  it gets past authentication into the engine; with ``legacy``, at most
  ``--signed-rate`` a second, as each may cost a password hash (scrypt,
  ~40 ms of a core); the rest of the share goes to ``status-server``;
* ``codes``: other RADIUS codes (Accounting, replies, CoA, 0, 255…), signed;
* ``legacy``: mutations from the client that needs no Message-Authenticator
  (within the same budget as ``signed``: without one, they reach the engine);
* ``unknown``: any of the above from loopback addresses no client has
  (127.x.y.z).

Every 1,000 datagrams, a valid login (``password,CODE`` with a fresh code)
must be answered Access-Accept; its latency is measured. At the end the
server must be alive (and answer one more valid login) and its stderr hold
no Traceback. Prints the counts; exit status 0 when the targets are met:
0 crashes, 0 tracebacks, every valid login accepted, p99 under ``--p99-ms``.
The generator is seeded (``--seed``), so a run can be repeated.
"""

from __future__ import annotations

import argparse
import random
import socket
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from harness import LEGACY_SOURCE, SECRET, Tally, percentile  # noqa: E402

from radius_mfa.radius import codec  # noqa: E402

KEY = SECRET.encode()
VALID_EVERY = 1000
OTHER_CODES = (0, 2, 3, 4, 5, 6, 7, 11, 13, 40, 41, 42, 43, 44, 45, 50, 51, 52, 255)
MUTATION_BASE_USER = "mallory"          # enrolled; the mutations lock her out, never a valid user


@dataclass
class Result:
    sent: Tally = field(default_factory=Tally)
    replies: Tally = field(default_factory=Tally)
    logins: list[harness.Outcome] = field(default_factory=list)
    elapsed: float = 0.0
    alive: bool = False
    tracebacks: int = 0
    log_lines: int = 0

    @property
    def accepted(self) -> int:
        return sum(1 for o in self.logins if o.code == codec.ACCESS_ACCEPT)

    @property
    def wrong(self) -> list[harness.Outcome]:
        return [o for o in self.logins if o.code != codec.ACCESS_ACCEPT]

    def p99_ms(self) -> float:
        return 1000 * percentile([o.latency for o in self.logins if o.code is not None], 0.99)

    def report(self) -> str:
        latencies = [o.latency for o in self.logins if o.code is not None]
        total = sum(self.sent.counts.values())
        lines = [
            f"datagrams sent: {total:,} in {self.elapsed:.1f} s ({total / max(self.elapsed, 1e-9):,.0f}/s)",
            "  by kind: " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.sent.counts.items())),
            "replies to fuzzed datagrams: " + (", ".join(f"{k} {v:,}" for k, v in sorted(self.replies.counts.items()))
                                               or "none"),
            f"valid logins: {len(self.logins)}, accepted {self.accepted}, wrong or unanswered {len(self.wrong)}"
            + "".join(f"\n  wrong: code {o.code} {o.reply_message or ''}" for o in self.wrong[:10]),
            f"valid login latency: p50 {1000 * percentile(latencies, 0.5):.1f} ms, "
            f"p99 {self.p99_ms():.1f} ms, max {1000 * max(latencies, default=float('nan')):.1f} ms",
            f"server alive at the end: {self.alive}; Traceback in its stderr: {self.tracebacks}; "
            f"stderr lines: {self.log_lines:,}",
        ]
        return "\n".join(lines)


# --- what to send ------------------------------------------------------------------------------


class Generator:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.bases = self._bases()

    def _bases(self) -> list[list[tuple[int, bytes]]]:
        """Valid Access-Requests as attribute lists (Message-Authenticator left
        out: signing puts it first); the password hidden with the
        authenticator the packet will carry, so the attribute list is kept
        with its authenticator."""
        return [
            [(1, MUTATION_BASE_USER.encode()), ("password", b"wrong-password,123456"),
             (4, bytes([192, 0, 2, 1])), (5, struct.pack("!L", 7)), (31, b"00-11-22-33-44-55")],
            [(1, MUTATION_BASE_USER.encode()), ("password", b"wrong"), (24, b"S" * 16), (32, b"vpn")],
            [(1, b"nobody"), ("password", b"x" * 40), (33, b"proxy-state"), (30, b"called")],
            [(1, MUTATION_BASE_USER.encode()), (3, bytes(17)), (60, bytes(16))],
            [(1, MUTATION_BASE_USER.encode()),
             (26, struct.pack("!L", 311) + bytes((11, 18)) + bytes(16)),      # MS-CHAP-Challenge
             (26, struct.pack("!L", 311) + bytes((25, 52)) + bytes(50))],     # MS-CHAP2-Response
            [(1, MUTATION_BASE_USER.encode()), (79, b"\x02\x01\x00\x0b\x01mallory")],   # EAP-Response/Identity
        ]

    def rbytes(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def random(self) -> bytes:
        return self.rbytes(self.rng.choice((0, 1, 19, 20, 21, self.rng.randrange(0, 4200))))

    def shaped(self) -> bytes:
        body = b"".join(bytes((self.rng.randrange(256), len(v) + 2)) + v
                        for v in (self.rbytes(self.rng.randrange(0, 60)) for _ in range(self.rng.randrange(0, 12))))
        body = body[:4076]
        code = self.rng.choice((1, 1, 1, 12, *OTHER_CODES))
        length = 20 + len(body)
        if self.rng.random() < 0.2:
            length = self.rng.choice((0, 19, length - 1, length + 1, 4097, 65535)) & 0xFFFF
        return struct.pack("!BBH", code, self.rng.randrange(256), length) + self.rbytes(16) + body

    def attributes(self) -> tuple[list[tuple[int, bytes]], bytes]:
        """A base request mutated at the attribute level, and its authenticator."""
        authenticator = self.rbytes(16)
        out: list[tuple[int, bytes]] = []
        for kind, value in self.rng.choice(self.bases):
            if kind == "password":
                value = codec.hide_password(value, KEY, authenticator)
                kind = 2
            out.append((kind, value))
        for _ in range(self.rng.randrange(1, 4)):
            self._mutate_attributes(out)
        return out, authenticator

    def _mutate_attributes(self, attrs: list[tuple[int, bytes]]) -> None:
        r = self.rng
        choice = r.randrange(13)
        if choice == 0 and attrs:
            del attrs[r.randrange(len(attrs))]
        elif choice == 1 and attrs:
            attrs.insert(r.randrange(len(attrs) + 1), attrs[r.randrange(len(attrs))])
        elif choice == 2 and attrs:
            i = r.randrange(len(attrs))
            kind, value = attrs[i]
            if value:
                j = r.randrange(len(value))
                value = value[:j] + bytes((r.randrange(256),)) + value[j + 1:]
            attrs[i] = (kind, value)
        elif choice == 3 and attrs:
            i = r.randrange(len(attrs))
            attrs[i] = (attrs[i][0], self.rbytes(r.choice((0, 1, 15, 16, 17, 128, 129, 253))))
        elif choice == 4:
            attrs.append((r.randrange(1, 256), self.rbytes(r.randrange(0, 40))))
        elif choice == 5:
            attrs.extend((33, self.rbytes(253)) for _ in range(r.randrange(1, 16)))   # Proxy-State padding
        elif choice == 6:
            attrs.append((24, self.rbytes(r.choice((0, 1, 16, 32, 253)))))        # a State no one issued
        elif choice == 7:
            attrs[:] = [(1, r.choice((b"\xff\xfe" + MUTATION_BASE_USER.encode(), b"MALLORY", b" mallory ",
                                      b"CORP\\mallory", b"mallory@corp", b"", b"\x00", "malloré".encode())))
                        if kind == 1 else (kind, value) for kind, value in attrs]
        elif choice == 8:
            attrs.append((79, self.rbytes(r.randrange(0, 60))))                   # EAP-Message
        elif choice == 9:
            vendor = r.choice((311, 9, 14559, r.randrange(2**32)))
            inner = bytes((r.randrange(256), r.randrange(256))) + self.rbytes(r.randrange(0, 30))
            attrs.append((26, struct.pack("!L", vendor) + inner))
        elif choice == 10:
            attrs.append((2, self.rbytes(r.choice((16, 32, 128)))))              # a second User-Password
        elif choice == 11:
            attrs.append((r.choice((4, 95, 8, 6, 7, 61)), self.rbytes(r.choice((0, 3, 4, 5, 16)))))
        else:
            r.shuffle(attrs)

    def signed(self, code: int = codec.ACCESS_REQUEST) -> bytes:
        """Attributes mutated, then a valid Message-Authenticator first."""
        attrs, authenticator = self.attributes()
        body = bytearray(bytes((80, 18)) + bytes(16))
        for kind, value in attrs:
            value = value[:253]
            if len(body) + len(value) + 2 > 4076:
                break
            body += bytes((kind, len(value) + 2)) + value
        packet = struct.pack("!BBH", code, self.rng.randrange(256), 20 + len(body)) + authenticator + bytes(body)
        mac = codec.message_authenticator(packet, KEY, authenticator)
        return packet[:22] + mac + packet[38:]

    def mutated(self) -> bytes:
        """A valid request's bytes damaged; its Message-Authenticator no longer fits."""
        data = bytearray(self.signed())
        r = self.rng
        for _ in range(r.randrange(1, 6)):
            op = r.randrange(6)
            if op == 0 and data:
                data[r.randrange(len(data))] ^= 1 << r.randrange(8)
            elif op == 1 and data:
                data[r.randrange(len(data))] = r.choice((0, 1, 2, 0x7F, 0x80, 0xFF, r.randrange(256)))
            elif op == 2 and data:
                cut = r.randrange(len(data))
                del data[cut:cut + r.randrange(1, 20)]
            elif op == 3:
                at = r.randrange(len(data) + 1)
                data[at:at] = self.rbytes(r.randrange(1, 20))
            elif op == 4 and len(data) > 4:
                start = r.randrange(len(data))
                data += data[start:start + r.randrange(1, 64)]
            elif len(data) >= 4:
                struct.pack_into("!H", data, 2, r.choice((0, 20, len(data), len(data) - 1, len(data) + 1, 4096)))
        return bytes(data[:4200])

    def other_code(self) -> bytes:
        code = self.rng.choice(OTHER_CODES + (codec.STATUS_SERVER,))
        return self.signed(code)

    def status_server(self) -> bytes:
        return codec.build_access_request(KEY, None, None, id=self.rng.randrange(256), code=codec.STATUS_SERVER)


# --- sending -------------------------------------------------------------------------------------


class Sources:
    """Sockets to send from: the client's address, the legacy client's, and
    loopback addresses that belong to no client (renewed as the run goes)."""

    def __init__(self, rng: random.Random, unknown: int = 32):
        self.rng = rng
        self.client = self._socket("127.0.0.1")
        self.legacy = self._socket(LEGACY_SOURCE)
        self.unknown = [self._socket(self._unknown_address()) for _ in range(unknown)]

    def _unknown_address(self) -> str:
        while True:
            address = f"127.{self.rng.randrange(256)}.{self.rng.randrange(256)}.{self.rng.randrange(1, 255)}"
            if address not in ("127.0.0.1", LEGACY_SOURCE):
                return address

    @staticmethod
    def _socket(address: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((address, 0))
        sock.setblocking(False)
        return sock

    def any_unknown(self) -> socket.socket:
        i = self.rng.randrange(len(self.unknown))
        if self.rng.random() < 0.01:                # a new address now and then
            self.unknown[i].close()
            self.unknown[i] = self._socket(self._unknown_address())
        return self.unknown[i]

    def drain(self, replies: Tally) -> None:
        for sock in (self.client, self.legacy, *self.unknown):
            while True:
                try:
                    data = sock.recv(4096)
                except (BlockingIOError, InterruptedError):
                    break
                kind = {2: "Access-Accept", 3: "Access-Reject", 11: "Access-Challenge"}.get(
                    data[0] if data else -1, f"code {data[0] if data else '-'}")
                replies.add(f"{kind} to {'unknown' if sock in self.unknown else 'client'}")

    def close(self) -> None:
        for sock in (self.client, self.legacy, *self.unknown):
            sock.close()


def fuzz(server, users: list[harness.User], datagrams: int, *, rate: float = 3000.0,
         signed_rate: float = 10.0, seed: int = 1, progress=None) -> Result:
    """Send ``datagrams`` fuzzed datagrams to ``server`` (started), a valid
    login every VALID_EVERY; the result, with the server's health at the end."""
    rng = random.Random(seed)
    gen = Generator(rng)
    sources = Sources(rng)
    pool = harness.UserPool(users)
    result = Result()
    target = ("127.0.0.1", server.port)
    login_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    login_sock.bind(("127.0.0.1", 0))
    started = time.perf_counter()
    signed_budget, signed_clock = 0.0, started
    try:
        for n in range(1, datagrams + 1):
            now = time.perf_counter()
            signed_budget = min(signed_budget + (now - signed_clock) * signed_rate, signed_rate)
            signed_clock = now
            roll = rng.random()
            sock = sources.client
            if roll < 0.15:
                kind, data = "random", gen.random()
            elif roll < 0.30:
                kind, data = "shaped", gen.shaped()
            elif roll < 0.60:
                kind, data = "mutated", gen.mutated()
            elif roll < 0.70:
                kind, data = "codes", gen.other_code()
            elif roll < 0.85:
                kind, sock = "unknown", sources.any_unknown()
                data = rng.choice((gen.random, gen.shaped, gen.mutated, gen.signed, gen.status_server))()
            elif signed_budget >= 1:
                # What gets past authentication may cost a password hash: budgeted.
                signed_budget -= 1
                if rng.random() < 0.7:
                    kind, data = "signed", gen.signed()
                else:
                    kind, data, sock = "legacy", rng.choice((gen.mutated, gen.shaped, gen.signed))(), sources.legacy
            else:
                kind, data = "status-server", gen.status_server()
            try:
                sock.sendto(data, target)
                result.sent.add(kind)
            except (BlockingIOError, OSError):
                result.sent.add("not sent (socket buffer full)")
            if n % 64 == 0:
                sources.drain(result.replies)
                behind = n / rate - (time.perf_counter() - started)
                if behind > 0:
                    time.sleep(behind)
            if n % VALID_EVERY == 0:
                user, code, step = pool.take()
                outcome = harness.login(server.port, user, code, sock=login_sock)
                if outcome.code == codec.ACCESS_ACCEPT:
                    user.last_step = step
                result.logins.append(outcome)
                if progress is not None and n % (VALID_EVERY * 50) == 0:
                    print(f"{n:,} datagrams, {result.accepted}/{len(result.logins)} valid logins accepted, "
                          f"p99 so far {result.p99_ms():.1f} ms", file=progress, flush=True)
        result.elapsed = time.perf_counter() - started
        time.sleep(0.5)
        sources.drain(result.replies)
        # Alive: the process runs and one more valid login is accepted.
        result.alive = server.proc.poll() is None
        if result.alive:
            user, code, step = pool.take()
            final = harness.login(server.port, user, code, sock=login_sock)
            result.alive = final.code == codec.ACCESS_ACCEPT
            if result.alive:
                user.last_step = step
    finally:
        sources.close()
        login_sock.close()
    log = server.log()
    result.tracebacks = log.count("Traceback")
    result.log_lines = log.count("\n")
    return result


def prepare(directory: Path, *, users: int, workers: int = 1):
    """A server on a free loopback port with ``users`` valid users and the
    mutation target, started."""
    server = harness.make_server(directory, workers=workers)
    valid = harness.enrol(server, users)
    server.cli("user", "add", MUTATION_BASE_USER, "--password-stdin", input="mallory-password\n")
    server.cli("token", "add", MUTATION_BASE_USER, "--type", "totp")
    server.start()
    return server, valid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datagrams", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=3000.0, help="datagrams a second (default 3000)")
    parser.add_argument("--signed-rate", type=float, default=10.0,
                        help="signed and legacy mutations a second at most (each may cost a password hash)")
    parser.add_argument("--users", type=int, default=100, help="valid users to rotate through")
    parser.add_argument("--workers", type=int, default=1, help="server.workers")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--p99-ms", type=float, default=50.0)
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (config, store, logs)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="radius-mfa-datagrams-") as temporary:
        directory = args.keep or Path(temporary)
        directory.mkdir(parents=True, exist_ok=True)
        server, valid = prepare(directory, users=args.users, workers=args.workers)
        try:
            result = fuzz(server, valid, args.datagrams, rate=args.rate, signed_rate=args.signed_rate,
                          seed=args.seed, progress=sys.stderr)
        finally:
            code = server.stop()
        print(result.report())
        print(f"server exit status after SIGTERM: {code}")
        if result.tracebacks:
            print("first Traceback in the server's stderr:")
            log = server.log()
            at = log.index("Traceback")
            print(log[max(0, at - 2000):at + 4000])
        ok = (result.alive and result.tracebacks == 0 and not result.wrong
              and result.p99_ms() < args.p99_ms)
        print("targets met" if ok else "TARGETS NOT MET")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
