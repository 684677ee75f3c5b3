"""What the datagram fuzzer and the fault runs share: a real `radius-mfa
serve` on a loopback port (tests/e2e.py's Server), users enrolled in bulk, and
valid logins (password and a fresh TOTP code in one request, inline mode).

Every process started here is stopped by pid (tests/peers/process.py).
"""

from __future__ import annotations

import base64
import os
import secrets
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import pyotp  # noqa: E402

from e2e import SECRET, Server  # noqa: E402
from radius_mfa.radius import codec  # noqa: E402

PASSWORD = "fuzz-correct-horse"
#: The client the fuzzer and the valid logins send as (inline: `password,CODE`).
INLINE_CLIENT = f"""
  - name: local
    address: 127.0.0.1
    secret: "{SECRET}"
    require_message_authenticator: true
    mode: inline
  - name: legacy
    address: 127.0.0.3
    secret: "{SECRET}"
    require_message_authenticator: false
    mode: challenge
"""
LEGACY_SOURCE = "127.0.0.3"


def make_server(directory: Path, *, store: str = "sqlite:///radius-mfa.db", workers: int = 1,
                extra: str = "") -> Server:
    """A server (not started) whose log is JSON at info: the drop lines of a
    million datagrams at debug would be the bottleneck, not the server."""
    server = Server(directory, clients=INLINE_CLIENT, store=store, workers=workers, extra=extra)
    text = server.config.read_text().replace("level: debug", "level: info")
    server.config.write_text(text)
    return server


def start(server: Server) -> Server:
    """Start (again): each start logs to a file of its own, so that the wait
    for ``server.listening`` sees this start's line, not an earlier one's."""
    starts = getattr(server, "starts", 0) + 1
    server.starts = starts
    server.stderr_path = server.directory / f"server-{starts}.log"
    return server.start()


def all_logs(server: Server) -> str:
    """The stderr of every start of ``server``."""
    return "".join(path.read_text(errors="replace")
                   for path in sorted(server.directory.glob("server-*.log")))


@dataclass
class User:
    """A user with a password and a TOTP token, and the last time step a code
    of it was accepted at (a code is single-use: the next must be later)."""
    name: str
    totp: pyotp.TOTP
    last_step: int = -1

    def fresh(self, now: float) -> tuple[str, int] | None:
        """A code the server has not seen yet, and its step; None when this
        user's code of the current step was used already."""
        step = int(now // 30)
        if step <= self.last_step:
            return None
        return self.totp.at(now), step


def enrol(server: Server, count: int, prefix: str = "v") -> list[User]:
    """``count`` users with PASSWORD and a TOTP token each, in one `user import`
    (the password hashed once here and carried over, as a migration does)."""
    from radius_mfa.passwords import hash_password

    hashed = hash_password(PASSWORD)
    users, lines = [], ["name,password,totp_secret"]
    for index in range(count):
        secret = base64.b32encode(os.urandom(20)).decode()
        name = f"{prefix}{index:04d}"
        users.append(User(name, pyotp.TOTP(secret)))
        lines.append(f'{name},"{hashed}",{secret}')
    path = server.directory / f"users-{prefix}.csv"
    path.write_text("\n".join(lines) + "\n")
    server.cli("user", "import", str(path))
    return users


class UserPool:
    """Hands out a user whose code of the current step is still unused."""

    def __init__(self, users: list[User]):
        self.users = users
        self._next = 0

    def take(self, clock=time.time) -> tuple[User, str, int]:
        while True:
            now = clock()
            for _ in range(len(self.users)):
                user = self.users[self._next]
                self._next = (self._next + 1) % len(self.users)
                fresh = user.fresh(now)
                if fresh is not None:
                    return user, *fresh
            time.sleep(30 - now % 30 + 0.05)        # every user signed in this step: wait for the next


@dataclass
class Outcome:
    code: int | None               # the reply's code, None: no answer in time
    latency: float                 # seconds from send to the reply (or the timeout)
    reply_message: str | None = None


def login(port: int, user: User, answer: str, *, timeout: float = 5.0,
          sock: socket.socket | None = None) -> Outcome:
    """One valid inline login (`password,CODE`, with a Message-Authenticator);
    the verified reply's code and the time it took."""
    ident = secrets.randbelow(256)
    request = codec.build_access_request(SECRET.encode(), user.name, f"{PASSWORD},{answer}", id=ident)
    own = sock is None
    if own:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
    try:
        started = time.perf_counter()
        sock.sendto(request, ("127.0.0.1", port))
        deadline = started + timeout
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                return Outcome(None, timeout)
            sock.settimeout(left)
            try:
                data = sock.recv(4096)
            except (socket.timeout, BlockingIOError):
                continue
            if len(data) < 20 or data[1] != ident:
                continue                           # a late answer to an earlier request
            latency = time.perf_counter() - started
            try:
                reply = codec.decode_response(data, SECRET.encode(), request[4:20])
            except Exception:  # noqa: BLE001 - an unverifiable reply is a wrong answer
                return Outcome(-1, latency)
            message = reply.get("Reply-Message")
            return Outcome(reply.code, latency, message if isinstance(message, str) else None)
    finally:
        if own:
            sock.close()


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass
class Tally:
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n
