"""End-to-end harness: a real `radius-mfa serve` process, driven by FreeRADIUS's radclient.

Everything binds to 127.0.0.1 on ports the kernel hands out; every process
started here is stopped by pid.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyotp
import pytest

from peers.process import free_udp_port, stop_process

SECRET = "testing123"
RADCLIENT = shutil.which("radclient")
needs_radclient = pytest.mark.skipif(
    RADCLIENT is None and not os.environ.get("CI"),
    reason="radclient (Debian freeradius-utils) is not installed; .ci/run installs it")


def command() -> list[str]:
    """The installed console script, or the module when only the tree is on the path."""
    script = shutil.which("radius-mfa")
    return [script] if script else [sys.executable, "-m", "radius_mfa"]


def write_config(directory: Path, port: int, *, clients: str | None = None, policy: str = "",
                 extra: str = "", primary: str = "  backend: local",
                 store: str = "sqlite:///radius-mfa.db", workers: int = 1,
                 name: str = "mfa-test", factors: str = "", listen: str = "",
                 server: str = "") -> Path:
    """``factors``: more of the factors section (indented two spaces);
    ``listen``: more listen entries (``    - tls: "127.0.0.1:PORT"``);
    ``server``: more of the server section (``  tls: …``)."""
    clients = clients or f"""
  - name: local
    address: 127.0.0.1
    secret: "{SECRET}"
    require_message_authenticator: true
    mode: challenge
"""
    path = directory / "radius-mfa.yaml"
    path.write_text(f"""
server:
  name: {name}
  listen:
    - udp: "127.0.0.1:{port}"
{listen}
  workers: {workers}
{server}
store: "{store}"
clients:{clients}
primary:
{primary}
factors:
  totp: {{window: 1}}
{factors}
policy:
  lockout: {{failures: 3, minutes: 15}}
{policy}
audit:
  file: audit.jsonl
log:
  format: json
  level: debug
{extra}
""")
    return path


@dataclass
class Reply:
    code: str | None                       # "Access-Accept", … or None: no reply
    attributes: dict[str, list[str]] = field(default_factory=dict)
    output: str = ""

    def first(self, name: str) -> str | None:
        values = self.attributes.get(name)
        return values[0] if values else None


RECEIVED = re.compile(r"Received (Access-\w+) Id (\d+) from")
ATTRIBUTE = re.compile(r"^\s+([A-Za-z0-9-]+) = (.*)$")


def radclient(port: int, attributes: list[tuple[str, str]], *, kind: str = "auth",
              secret: str = SECRET, timeout: float = 2.0, retries: int = 1) -> Reply:
    """Send one request with radclient and parse what it printed."""
    lines = []
    for name, value in attributes:
        if value.startswith("0x") or name in ("Message-Authenticator",):
            lines.append(f"{name} = {value}")
        else:
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{name} = "{escaped}"')
    proc = subprocess.run(
        [RADCLIENT or "radclient", "-x", "-r", str(retries), "-t", str(timeout),
         f"127.0.0.1:{port}", kind, secret],
        input=",".join(lines) + "\n", capture_output=True, text=True, timeout=30)
    output = proc.stdout + proc.stderr
    match = RECEIVED.search(output)
    if not match:
        return Reply(None, {}, output)
    reply = Reply(match.group(1), {}, output)
    after = output[match.end():].splitlines()[1:]
    for line in after:
        attr = ATTRIBUTE.match(line)
        if not attr:
            if line.strip() and not line.startswith((" ", "\t")):
                break
            continue
        value = attr.group(2).strip()
        if value.startswith('"') and value.endswith('"'):
            value = value[1:-1]
        reply.attributes.setdefault(attr.group(1), []).append(value)
    return reply


@dataclass
class Enrolment:
    """A user enrolled through the commands, with the TOTP token it got."""
    name: str
    serial: str
    totp: "pyotp.TOTP"

    def code(self, offset_steps: int = 0) -> str:
        return self.totp.at(time.time(), counter_offset=offset_steps)


class Server:
    """A `radius-mfa serve` child process on a loopback port."""

    def __init__(self, directory: Path, **config):
        self.directory = directory
        self.port = free_udp_port()
        self.config = write_config(directory, self.port, **config)
        self.stderr_path = directory / "server.log"
        self.audit_path = directory / "audit.jsonl"
        self.proc: subprocess.Popen | None = None
        self._marks: dict[str, int] = {}

    def cli(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(command() + ["-c", str(self.config), *args], input=input,
                              capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"{args} exited {proc.returncode}: {proc.stderr}")
        return proc

    def enrol(self, name: str, password: str | None = None, **fields: str) -> Enrolment:
        """`user add` (with a local password when given; none where a directory
        or upstream checks it) and `token add --type totp`, as an admin would."""
        args = ["user", "add", name]
        for key, value in fields.items():
            args += [f"--{key.replace('_', '-')}", value]
        if password is not None:
            args.append("--password-stdin")
        self.cli(*args, input=None if password is None else password + "\n")
        token = json.loads(self.cli("token", "add", name, "--type", "totp", "--json").stdout)
        return Enrolment(name, token["serial"], pyotp.TOTP(token["secret"]))

    def start(self, env: dict | None = None) -> "Server":
        self._log = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(command() + ["-c", str(self.config), "serve"],
                                     stdout=subprocess.DEVNULL, stderr=self._log,
                                     stdin=subprocess.DEVNULL,
                                     env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if "server.listening" in self.log():
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"server did not start:\n{self.log()}")

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def log_events(self) -> list[dict]:
        events = []
        for line in self.log().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
        return events

    def audit(self) -> list[dict]:
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line]

    def mark(self, user: str) -> None:
        """Remember how many audit records the user has, before a request."""
        self._marks[user] = len([r for r in self.audit() if r["user"] == user])

    def record_since_mark(self, user: str, timeout: float = 5.0) -> dict:
        """The user's first audit record written after ``mark``: the reply can
        reach the client a moment before its record reaches the file."""
        seen = self._marks.get(user, 0)
        deadline = time.monotonic() + timeout
        while True:
            records = [r for r in self.audit() if r["user"] == user]
            if len(records) > seen:
                return records[seen]
            if time.monotonic() > deadline:
                raise AssertionError(f"no new audit record for {user!r}")
            time.sleep(0.02)

    def wait_audit(self, count: int, timeout: float = 5.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = self.audit()
            if len(records) >= count:
                return records
            time.sleep(0.02)
        return self.audit()

    def send_signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        code = stop_process(self.proc, timeout)
        self._log.close()
        return code

    def send_copies(self, data: bytes, copies: int, timeout: float = 8.0) -> tuple[bytes, bytes]:
        """``copies`` of one datagram at once from one source port (all but
        the first arrive while it is being decided), then one more after the
        answer: (the answer, the answer to the late copy)."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(timeout)
            for _ in range(copies):
                sock.sendto(data, ("127.0.0.1", self.port))
            first = sock.recv(4096)
            sock.sendto(data, ("127.0.0.1", self.port))
            return first, sock.recv(4096)

    def send(self, data: bytes, timeout: float = 2.0) -> bytes | None:
        """Raw datagram from a fixed source port; the reply or None."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(timeout)
            sock.sendto(data, ("127.0.0.1", self.port))
            try:
                return sock.recv(4096)
            except socket.timeout:
                return None
