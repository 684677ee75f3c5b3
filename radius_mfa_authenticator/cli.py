"""The commands of `radius-mfa-authenticator`, their parsing, and the
console script (see the package's docstring for what each does)."""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Sequence, TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from radius_mfa.push import crypto
from radius_mfa_authenticator import PROG
from radius_mfa_authenticator.client import DeviceClient
from radius_mfa_authenticator.errors import ApiError, BadUsage, Refused, printable
from radius_mfa_authenticator.state import DeviceState, StateDir

STATE_ENV = "RADIUS_MFA_AUTHENTICATOR_STATE"

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

MAX_WAIT = 55                 # the server's long-poll limit (device API contract)
MIN_POLL_INTERVAL = 1.0       # seconds between polls when a server answers a long-poll at once

NEEDS_NUMBER = ("this sign-in needs the number shown on the sign-in screen: "
                "approve {id} --number N")


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
