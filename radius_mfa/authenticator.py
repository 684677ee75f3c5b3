"""`radius-mfa-authenticator`: the reference push authenticator.

It plays a paired phone from a shell, so push approval can be tried, scripted
and tested without an app: ``pair URL`` registers a new Ed25519 key with the
device API (docs/device-api.yaml, the contract of radius_mfa.push.api);
``pending`` lists the sign-ins waiting for this device's user; ``approve``,
``deny`` and ``fraud`` answer one; ``wait`` blocks until one is pending.

State lives in one directory (``--state DIR``, made mode 0700): the private
key (``device.key``, PEM, mode 0600) and ``device.json`` (the device API's
base URL, the certificate fingerprint it was paired with, the device id and
the user). Pairing again in the same directory replaces both: a new key, a
new device on the server (the old one stays listed until `radius-mfa device
remove`).

Trust: the pairing URL carries the SHA-256 fingerprint of the device API's
certificate. Every connection pins it: the server's leaf certificate is
accepted only when the SHA-256 of its DER form equals the pinned value, and
then no CA or host name check is needed (a self-signed certificate is the
normal case). Any other certificate ends the call with "the server's
certificate does not match the one this device was paired with".

Exit codes: 0 done; 1 refused (the server's ``error`` text, or what went
wrong on the way, as one line on stderr); 2 bad usage. Network trouble
(connection refused, time-outs, a TLS failure) is one clear line, never a
traceback. Nothing secret is printed: not the key, not the pairing token.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import time
import unicodedata
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Sequence, TextIO
from urllib.parse import urlencode, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from radius_mfa.push import crypto

PROG = "radius-mfa-authenticator"
STATE_ENV = "RADIUS_MFA_AUTHENTICATOR_STATE"
KEY_FILE = "device.key"
STATE_FILE = "device.json"

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

CONNECT_TIMEOUT = 10.0        # seconds to open a connection
REQUEST_TIMEOUT = 30.0        # seconds for an answer, beyond a long-poll's own wait
MAX_WAIT = 55                 # the server's long-poll limit (device API contract)
MIN_POLL_INTERVAL = 1.0       # seconds between polls when a server answers a long-poll at once

MISMATCH = "the server's certificate does not match the one this device was paired with"
NOT_PAIRED = "not paired: run pair URL first"
NEEDS_NUMBER = ("this sign-in needs the number shown on the sign-in screen: "
                "approve {id} --number N")
_MAX_BODY = 1024 * 1024


class Refused(Exception):
    """One clear line for stderr; exit 1."""


class ApiError(Refused):
    """The device API answered with an error status; the message is its ``error`` text."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class BadUsage(Exception):
    """One clear line for stderr; exit 2."""


# --------------------------------------------------------------------------
# State: the key and what pairing returned
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceState:
    base_url: str             # the device API, e.g. https://mfa.example.org:8443
    fingerprint: str          # sha256 (hex) of the device API's certificate, DER
    device_id: str
    user: str
    server: str = ""          # the server's name (server.name), for messages
    name: str = ""            # what this device called itself


class StateDir:
    """``device.key`` and ``device.json`` in one private directory."""

    def __init__(self, path: str):
        self.path = os.path.abspath(os.path.expanduser(path))

    @property
    def key_path(self) -> str:
        return os.path.join(self.path, KEY_FILE)

    @property
    def state_path(self) -> str:
        return os.path.join(self.path, STATE_FILE)

    def load(self) -> tuple[DeviceState, Ed25519PrivateKey]:
        """The paired device; Refused when there is none or it is damaged."""
        try:
            with open(self.state_path, encoding="utf-8") as f:
                raw = json.load(f)
            with open(self.key_path, "rb") as f:
                key = serialization.load_pem_private_key(f.read(), password=None)
        except FileNotFoundError:
            raise Refused(NOT_PAIRED) from None
        except OSError as exc:
            raise Refused(f"cannot read {exc.filename or self.path}: {exc.strerror or exc}") from None
        except (ValueError, TypeError):
            raise Refused(f"the state in {self.path} is damaged; pair again") from None
        if not isinstance(key, Ed25519PrivateKey) or not isinstance(raw, dict):
            raise Refused(f"the state in {self.path} is damaged; pair again")
        try:
            state = DeviceState(**{k: raw[k] for k in DeviceState.__dataclass_fields__ if k in raw})
        except TypeError:
            raise Refused(f"the state in {self.path} is damaged; pair again") from None
        if not all(isinstance(v, str) and (v or k in ("server", "name")) for k, v in asdict(state).items()):
            raise Refused(f"the state in {self.path} is damaged; pair again")
        return state, key

    def check_writable(self) -> None:
        """Refused when the state could not be saved: checked before a
        pairing link (good once) is spent."""
        where = self.path
        while not os.path.exists(where):
            parent = os.path.dirname(where)
            if parent == where:
                break
            where = parent
        if not os.path.isdir(where) or not os.access(where, os.W_OK | os.X_OK):
            raise Refused(f"cannot write the state to {self.path}: {where} is not a writable directory")

    def save(self, state: DeviceState, key: Ed25519PrivateKey) -> None:
        """Both files, each written aside and renamed into place; the
        directory is made mode 0700 when absent, the files are mode 0600."""
        try:
            if not os.path.isdir(self.path):
                os.makedirs(self.path, mode=0o700)
                os.chmod(self.path, 0o700)
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            self._replace(self.key_path, pem)
            self._replace(self.state_path, (json.dumps(asdict(state), indent=2) + "\n").encode())
        except OSError as exc:
            raise Refused(f"cannot write {exc.filename or self.path}: {exc.strerror or exc}") from None

    @staticmethod
    def _replace(path: str, data: bytes) -> None:
        aside = f"{path}.{os.getpid()}.new"
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(aside, 0o600)
            os.replace(aside, path)
        except BaseException:
            if os.path.exists(aside):
                os.unlink(aside)
            raise


# --------------------------------------------------------------------------
# TLS: pin the certificate the device was paired with
# --------------------------------------------------------------------------
#
# Twisted is imported inside these builders and the client, so that
# `--help` and argument errors stay quick and importing this module never
# installs a reactor.


def pinned_policy(fingerprint: str):
    """An IPolicyForHTTPS whose connections accept only the certificate whose
    DER has SHA-256 ``fingerprint``. ``policy.mismatch`` is set to the
    fingerprint the server showed when it was refused (None otherwise)."""
    from OpenSSL import SSL
    from twisted.internet.abstract import isIPAddress, isIPv6Address
    from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
    from twisted.web.iweb import IPolicyForHTTPS
    from zope.interface import implementer

    @implementer(IOpenSSLClientConnectionCreator)
    class PinnedCreator:
        def __init__(self, policy: "PinnedPolicy", hostname: str):
            self._policy = policy
            self._hostname = hostname

        def _verify(self, connection, x509, errno: int, depth: int, preverify_ok: int) -> bool:
            if depth > 0:
                return True          # chain certificates do not matter: the leaf is pinned
            from cryptography.hazmat.primitives.serialization import Encoding

            seen = crypto.fingerprint_of_der(x509.to_cryptography().public_bytes(Encoding.DER))
            if seen != self._policy.fingerprint:
                self._policy.mismatch = seen
                return False
            return True

        def clientConnectionForTLS(self, tls_protocol):
            context = SSL.Context(SSL.TLS_CLIENT_METHOD)
            context.set_min_proto_version(SSL.TLS1_2_VERSION)
            context.set_verify(SSL.VERIFY_PEER, self._verify)
            connection = SSL.Connection(context, None)
            connection.set_app_data(tls_protocol)
            host = self._hostname
            if host and not (isIPAddress(host) or isIPv6Address(host)):
                try:
                    connection.set_tlsext_host_name(host.encode("idna"))
                except UnicodeError:
                    pass
            return connection

    @implementer(IPolicyForHTTPS)
    class PinnedPolicy:
        def __init__(self, fingerprint: str):
            self.fingerprint = fingerprint.lower()
            self.mismatch: str | None = None

        def creatorForNetloc(self, hostname: bytes, port: int):
            return PinnedCreator(self, hostname.decode("ascii", "replace"))

    return PinnedPolicy(fingerprint)


# --------------------------------------------------------------------------
# The device API client
# --------------------------------------------------------------------------


class DeviceClient:
    """Calls of the device API contract, over a pinned HTTPS connection.
    Every failure is a :class:`Refused` with one clear line."""

    def __init__(self, reactor, base_url: str, fingerprint: str, *,
                 device_id: str | None = None, key: Ed25519PrivateKey | None = None,
                 clock: Callable[[], float] = time.time):
        from twisted.web.client import Agent, HTTPConnectionPool

        parts = urlsplit(base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise BadUsage(f"the device API is reached over https only, not {base_url}")
        self._reactor = reactor
        self._base = base_url.rstrip("/")
        self._base_path = parts.path.rstrip("/")
        self._where = parts.netloc
        self._device_id = device_id
        self._key = key
        self._clock = clock
        self._policy = pinned_policy(fingerprint)
        self._agent = Agent(reactor, contextFactory=self._policy, connectTimeout=CONNECT_TIMEOUT,
                            pool=HTTPConnectionPool(reactor, persistent=False))

    # --- the calls -------------------------------------------------------
    async def pair(self, token: str, public_key: str, name: str) -> dict:
        answer = await self._call("POST", "/v1/pair", body={"token": token, "public_key": public_key, "name": name})
        return _expect(answer, device_id=str, user=str)

    async def device(self) -> dict:
        return _expect(await self._call("GET", "/v1/device", signed=True), device_id=str, user=str)

    async def pending(self, wait: int = 0) -> list[dict]:
        query = {"wait": str(wait)} if wait else None
        answer = await self._call("GET", "/v1/pending", query=query, signed=True,
                                  timeout=REQUEST_TIMEOUT + wait)
        items = answer.get("pending")
        if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("id"), str)
                                                  for i in items):
            raise Refused(f"the server at {self._where} gave an answer this authenticator does not understand")
        return items

    async def answer(self, push_id: str, decision: str, number: int | None) -> str:
        assert self._key is not None and self._device_id is not None
        now = int(self._clock())
        signature = crypto.sign(self._key, crypto.answer_message(push_id, decision, number, now))
        body = {"decision": decision, "number": number, "time": now, "signature": signature}
        path = "/v1/approvals/" + _path_segment(push_id)
        answer = await self._call("POST", path, body=body, headers={"X-Device-Id": self._device_id})
        return str(_expect(answer, status=str)["status"])

    # --- the wire --------------------------------------------------------
    async def _call(self, method: str, path: str, *, query: dict | None = None, body: dict | None = None,
                    signed: bool = False, headers: dict[str, str] | None = None,
                    timeout: float = REQUEST_TIMEOUT) -> dict:
        from twisted.internet.defer import CancelledError, Deferred, TimeoutError as DeferredTimeout
        from twisted.web.http_headers import Headers

        from radius_mfa.delivery.http import BytesProducer

        full_path = self._base_path + path
        sent = Headers({"Accept": ["application/json"], "User-Agent": [PROG]})
        for name, value in (headers or {}).items():
            sent.addRawHeader(name, value)
        if signed:
            assert self._key is not None and self._device_id is not None
            now = int(self._clock())
            signature = crypto.sign(self._key, crypto.request_message(method, full_path, now, self._device_id))
            sent.addRawHeader("X-Device-Id", self._device_id)
            sent.addRawHeader("X-Time", str(now))
            sent.addRawHeader("X-Signature", signature)
        producer = None
        if body is not None:
            sent.addRawHeader("Content-Type", "application/json")
            producer = BytesProducer(json.dumps(body).encode("utf-8"))
        url = urlsplit(self._base)._replace(path=full_path, query=urlencode(query or {})).geturl()
        try:
            url_bytes = url.encode("ascii")
        except UnicodeEncodeError:
            raise BadUsage(f"the device API's URL must be ASCII: {url}") from None

        async def exchange() -> tuple[int, bytes]:
            response = await self._agent.request(method.encode("ascii"), url_bytes, sent, producer)
            body = _body_reader()
            response.deliverBody(body)
            return response.code, await body.done

        self._policy.mismatch = None
        attempt = Deferred.fromCoroutine(exchange())
        attempt.addTimeout(timeout, self._reactor)
        try:
            status, data = await attempt
        except (DeferredTimeout, CancelledError):
            raise Refused(f"no answer from {self._where} within {timeout:g} s") from None
        except Exception as exc:
            raise Refused(self._describe(exc)) from None
        return self._decode(status, data)

    def _decode(self, status: int, data: bytes) -> dict:
        try:
            answer = json.loads(data.decode("utf-8")) if data else {}
        except (UnicodeDecodeError, ValueError):
            answer = None
        if 200 <= status < 300:
            if not isinstance(answer, dict):
                raise Refused(f"the server at {self._where} gave an answer this authenticator does not understand")
            return answer
        error = answer.get("error") if isinstance(answer, dict) else None
        if not isinstance(error, str) or not error.strip():
            error = f"the server at {self._where} answered HTTP {status}"
        raise ApiError(status, _one_line(error))

    def _describe(self, exc: Exception) -> str:
        """What went wrong on the way, in one line."""
        from OpenSSL import SSL
        from twisted.internet import error

        if self._policy.mismatch is not None:
            return MISMATCH
        reasons = [getattr(r, "value", r) for r in getattr(exc, "reasons", None) or []]
        inner = reasons[0] if reasons else exc
        if isinstance(inner, error.ConnectionRefusedError):
            return f"cannot reach {self._where}: connection refused (is the server running?)"
        if isinstance(inner, error.DNSLookupError):
            return f"cannot reach {self._where}: the host name does not resolve"
        if isinstance(inner, (error.TimeoutError, error.TCPTimedOutError)):
            return f"cannot reach {self._where}: timed out"
        if isinstance(inner, error.ConnectError):
            why = inner.osError or inner.__class__.__name__
            return f"cannot reach {self._where}: {why}"
        if isinstance(inner, SSL.Error):
            return f"the TLS handshake with {self._where} failed (is it the device API?)"
        return f"the connection to {self._where} failed ({type(inner).__name__})"


def _body_reader():
    """A protocol that collects an answer's body (at most _MAX_BODY bytes;
    the rest is dropped, and the JSON then fails to parse); ``.done`` fires
    with the bytes."""
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import Protocol
    from twisted.web.client import ResponseDone
    from twisted.web.http import PotentialDataLoss

    class BodyReader(Protocol):
        def __init__(self) -> None:
            self.done: Deferred = Deferred()
            self._parts: list[bytes] = []
            self._size = 0

        def dataReceived(self, data: bytes) -> None:
            if self._size < _MAX_BODY:
                self._parts.append(data[: _MAX_BODY - self._size])
            self._size += len(data)

        def connectionLost(self, reason) -> None:
            if reason.check(ResponseDone, PotentialDataLoss):
                self.done.callback(b"".join(self._parts))
            else:
                self.done.errback(reason)

    return BodyReader()


def _path_segment(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def _expect(answer: dict, **fields: type) -> dict:
    """The answer when each field has its type; else a Refused."""
    for name, kind in fields.items():
        if not isinstance(answer.get(name), kind):
            raise Refused("the server gave an answer this authenticator does not understand")
    return answer


def _one_line(text: str) -> str:
    return printable(" ".join(text.split()))[:500]


def printable(value: Any) -> str:
    """For a terminal: None as ``-``; control characters escaped, so a
    server's text cannot rewrite the screen."""
    if value is None:
        return "-"
    text = str(value)
    if any(unicodedata.category(ch)[0] == "C" for ch in text):
        text = text.encode("unicode_escape").decode("ascii")
    return text


def iso_time(epoch: Any) -> str | None:
    """Unix seconds → ``2026-01-01T12:00:00Z``; None for anything else."""
    if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or not math.isfinite(epoch):
        return None
    try:
        moment = datetime.fromtimestamp(epoch, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def shown(item: dict) -> dict:
    """A pending sign-in as `pending --json` and `wait` print it."""
    return {
        "id": item.get("id"),
        "user": item.get("user"),
        "client": item.get("client"),
        "user_ip": item.get("user_ip"),
        "time": iso_time(item.get("created")),
        "expires": iso_time(item.get("expires")),
        "needs_number": bool(item.get("needs_number")),
    }


# --------------------------------------------------------------------------
# The commands
# --------------------------------------------------------------------------


@dataclass
class Streams:
    stdin: TextIO
    stdout: TextIO
    stderr: TextIO

    def out(self, line: str = "") -> None:
        print(line, file=self.stdout)
        self.stdout.flush()


def default_device_name() -> str:
    return f"{PROG} on {socket.gethostname()}"


async def cmd_pair(args, reactor, io: Streams, clock) -> int:
    try:
        link = crypto.parse_pairing_url(args.url)
    except ValueError as exc:
        raise BadUsage(str(exc)) from None
    name = args.name if args.name is not None else default_device_name()
    if not name.strip() or len(name) > 200:
        raise BadUsage("--name must be 1 to 200 characters")
    state_dir = StateDir(args.state)
    state_dir.check_writable()
    key = Ed25519PrivateKey.generate()
    client = DeviceClient(reactor, link.base_url, link.fingerprint, clock=clock)
    answer = await client.pair(link.token, crypto.public_key_b64(key), name)
    state = DeviceState(base_url=link.base_url, fingerprint=link.fingerprint,
                        device_id=answer["device_id"], user=answer["user"],
                        server=str(answer.get("server") or ""), name=name)
    state_dir.save(state, key)
    server = f"{printable(state.server)} at {link.base_url}" if state.server else link.base_url
    io.out(f"paired as {printable(state.user)} with {server} (device {printable(state.device_id)})")
    return EXIT_OK


def _client(args, reactor, clock) -> tuple[DeviceState, DeviceClient]:
    state, key = StateDir(args.state).load()
    return state, DeviceClient(reactor, state.base_url, state.fingerprint,
                               device_id=state.device_id, key=key, clock=clock)


async def cmd_status(args, reactor, io: Streams, clock) -> int:
    state, client = _client(args, reactor, clock)
    answer = await client.device()
    server = f"{printable(state.server)} at {state.base_url}" if state.server else state.base_url
    io.out(f"paired as {printable(answer['user'])} with {server} (device {printable(answer['device_id'])})")
    return EXIT_OK


async def cmd_pending(args, reactor, io: Streams, clock) -> int:
    _, client = _client(args, reactor, clock)
    items = [shown(i) for i in await client.pending()]
    if args.json:
        json.dump(items, io.stdout, indent=2, ensure_ascii=False)
        io.out()
        return EXIT_OK
    if not items:
        io.out("no sign-in waits for approval")
        return EXIT_OK
    rows = [(i["id"], i["user"], i["client"], i["user_ip"], i["time"], "needed" if i["needs_number"] else "-")
            for i in items]
    io.out(_table(("ID", "USER", "CLIENT", "FROM", "TIME", "NUMBER"), rows))
    return EXIT_OK


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(headers)] + [[printable(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


_DONE = {
    "approved": "approved",
    "denied": "denied",
    "fraud": "reported as fraud: the sign-in was denied and the account is disabled "
             "until an administrator enables it",
}


async def _answer(args, reactor, io: Streams, clock, decision: str) -> int:
    _, client = _client(args, reactor, clock)
    number = getattr(args, "number", None)
    try:
        status = await client.answer(args.id, decision, number)
    except ApiError as exc:
        if not (exc.status == 422 and decision == "approve" and number is None):
            raise
        number = _ask_number(io, args.id)
        status = await client.answer(args.id, decision, number)
    io.out(_DONE.get(status, printable(status)))
    return EXIT_OK


def _ask_number(io: Streams, push_id: str) -> int:
    """The number from the person at the terminal; Refused when nobody is there."""
    if not io.stdin.isatty():
        raise Refused(NEEDS_NUMBER.format(id=push_id))
    io.stderr.write("Number shown on the sign-in screen: ")
    io.stderr.flush()
    line = io.stdin.readline().strip()
    try:
        return int(line)
    except ValueError:
        raise Refused(f"not a number: {printable(line)!s}") from None


async def cmd_approve(args, reactor, io: Streams, clock) -> int:
    return await _answer(args, reactor, io, clock, "approve")


async def cmd_deny(args, reactor, io: Streams, clock) -> int:
    return await _answer(args, reactor, io, clock, "deny")


async def cmd_fraud(args, reactor, io: Streams, clock) -> int:
    return await _answer(args, reactor, io, clock, "fraud")


async def cmd_wait(args, reactor, io: Streams, clock) -> int:
    from twisted.internet.task import deferLater

    _, client = _client(args, reactor, clock)
    deadline = None if args.timeout is None else reactor.seconds() + args.timeout
    while True:
        left = None if deadline is None else deadline - reactor.seconds()
        wait = MAX_WAIT if left is None else max(0, min(MAX_WAIT, math.ceil(left)))
        started = reactor.seconds()
        items = await client.pending(wait)
        if items:
            io.out(json.dumps(shown(items[0]), ensure_ascii=False))
            return EXIT_OK
        if deadline is not None and reactor.seconds() >= deadline:
            raise Refused(f"no sign-in waited for approval within {args.timeout:g} s")
        pause = MIN_POLL_INTERVAL - (reactor.seconds() - started)
        if pause > 0:           # a server that answers a long-poll at once is not hammered
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - reactor.seconds()))
            await deferLater(reactor, pause, lambda: None)


# --------------------------------------------------------------------------
# Parsing and running
# --------------------------------------------------------------------------


def default_state_dir() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, PROG)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state", metavar="DIR", default=argparse.SUPPRESS,
                        help=f"where the device key and pairing live (default: ${STATE_ENV}, "
                             f"then {default_state_dir()})")
    parser = argparse.ArgumentParser(
        prog=PROG, parents=[common],
        description="The reference push authenticator of radius-mfa: a paired device in a shell.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, handler, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    p = add("pair", cmd_pair, "pair with a server, from the link `radius-mfa device pair NAME` printed")
    p.add_argument("url", metavar="URL")
    p.add_argument("--name", metavar="X", help="what the server lists this device as")
    add("status", cmd_status, "check that this device is still paired")
    p = add("pending", cmd_pending, "list the sign-ins waiting for approval")
    p.add_argument("--json", action="store_true",
                   help="a JSON list of {id, user, client, user_ip, time, expires, needs_number}")
    p = add("approve", cmd_approve, "approve a sign-in")
    p.add_argument("id", metavar="ID")
    p.add_argument("--number", metavar="N", type=int, help="the number shown on the sign-in screen")
    add("deny", cmd_deny, "deny a sign-in").add_argument("id", metavar="ID")
    add("fraud", cmd_fraud,
        "deny a sign-in you did not start: the account is disabled until an administrator enables it"
        ).add_argument("id", metavar="ID")
    p = add("wait", cmd_wait, "wait until a sign-in is pending and print it as one JSON object")
    p.add_argument("--timeout", metavar="S", type=_seconds, help="give up after S seconds (exit 1)")
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """SystemExit(0 or 2) for --help and bad usage, as argparse does."""
    args = build_parser().parse_args(argv)
    if getattr(args, "state", None) is None:
        args.state = os.environ.get(STATE_ENV) or default_state_dir()
    return args


async def run(args: argparse.Namespace, reactor, io: Streams, clock: Callable[[], float] = time.time) -> int:
    """One command; expected failures become an exit code and one line."""
    try:
        return await args.handler(args, reactor, io, clock)
    except BadUsage as exc:
        print(f"{PROG}: {exc}", file=io.stderr)
        return EXIT_USAGE
    except Refused as exc:
        print(f"{PROG}: {exc}", file=io.stderr)
        return EXIT_REFUSED


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: parse, then run the command on Twisted's reactor."""
    try:
        args = parse_args(argv)
    except SystemExit as exc:
        if exc.code is None:
            return EXIT_OK
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    from twisted.internet import defer, task

    io = Streams(sys.stdin, sys.stdout, sys.stderr)
    outcome: list[int] = []

    def start(reactor):
        async def go() -> None:
            outcome.append(await run(args, reactor, io))
        return defer.Deferred.fromCoroutine(go())

    try:
        task.react(start)
    except SystemExit:
        pass
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return outcome[0] if outcome else EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
