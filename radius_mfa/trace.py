"""`serve --debug`: one readable block per request, for a person at a terminal.

Like ``freeradius -X``: which client the source address matched, the
Message-Authenticator check, the user and method, what the primary backend
answered, the factor, the verdict, why, and how long it took. A dropped
packet gets a block too, with a hint at the usual cause.

A :class:`RequestTrace` is made only when ``--debug`` is on: the server fills
it from what it already knows (the client table's answer, the decoded
request, the engine's Decision) and hands it to a :class:`TraceWriter`,
which writes the whole block to stderr in one write.

Never a secret: no password, code, shared secret or reply attribute; the
State appears only as a short hash, and every value a client sent is
escaped so that it cannot drive the terminal.
"""

from __future__ import annotations

import hashlib
import itertools
import sys
from dataclasses import dataclass, field
from typing import TextIO

from radius_mfa.verdicts import Reason, Verdict

# What the person at the terminal should check first, per drop reason.
DROP_HINTS = {
    "unknown_client": "no client for this address: add it under `clients` (address or CIDR)",
    "bad_message_authenticator": "shared secret mismatch? the NAS and this client entry must hold the same secret",
    "missing_message_authenticator": "the client must send Message-Authenticator "
                                     "(require_message_authenticator), or the NAS be set to send it",
    "malformed": "not a valid RADIUS packet",
    "unsupported_code": "only Access-Request and Status-Server are served here",
}

# Reasons decided after the primary backend accepted the password.
_AFTER_PRIMARY = frozenset({
    Reason.BAD_CODE, Reason.REPLAY, Reason.NO_FACTOR, Reason.NO_ANSWER, Reason.CODE_SENT,
    Reason.DELIVERY_FAILED, Reason.RATE_LIMITED, Reason.ENROL, Reason.DENIED, Reason.FRAUD,
    Reason.WRONG_NUMBER, Reason.EXPIRED,
})
# Reasons decided before the primary backend is asked.
_BEFORE_PRIMARY = frozenset({
    Reason.LOCKED, Reason.DISABLED, Reason.BAD_REQUEST, Reason.UNSUPPORTED_METHOD,
    Reason.BAD_STATE, Reason.EXPIRED_STATE,
})


def printable(text: str | None) -> str:
    """A value a client sent, quoted, with control characters escaped."""
    if text is None:
        return "(none)"
    escaped = "".join(c if c.isprintable() and c != '"' else
                      ('\\"' if c == '"' else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}")
                      for c in text)
    return f'"{escaped}"'


def looks_like_a_wrong_secret(password: bytes | None) -> bool:
    """True when a User-Password unhid to bytes no one types: not UTF-8, or
    holding control characters. Unhidden with another secret than the
    NAS's, a password is 16 or more random octets, and this is what they
    look like (about one in 700,000 sets of 16 random octets passes).
    Only the verdict is shown, never the bytes."""
    if not password:
        return False
    try:
        text = password.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 for c in text)


WRONG_SECRET_NOTE = ("hint: the password unhides to bytes no one types (not UTF-8, or control "
                     "characters): shared secret mismatch? without Message-Authenticator nothing "
                     "else shows it")


def state_digest(state: bytes | None) -> str:
    """A State as a short hash: enough to follow one challenge, useless to replay it."""
    if state is None:
        return "none"
    return "sha256:" + hashlib.sha256(state).hexdigest()[:8]


def primary_answer(decision, answering_challenge: bool, second_factor_only: bool = False) -> str:
    """What the primary backend answered, as far as the decision tells it.

    The engine's Decision names the backend and the outcome; the backend's
    own answer is read back from the verdict and reason."""
    reason = decision.reason
    if second_factor_only:
        return "not asked (a second-factor-only client checks the password itself)"
    if decision.factor == "app_password":
        return "not asked (an app password stands for password and factor)"
    if answering_challenge:
        return "not asked (an answer to a challenge: the password was checked in the first round)"
    if reason is Reason.BAD_PASSWORD:
        return "rejected the password"
    if reason in (Reason.UPSTREAM_DOWN, Reason.TIMEOUT):
        return "did not answer in time"
    if reason is Reason.OVERLOADED:
        return "not reached in time (queued too long)"
    if reason is Reason.UNKNOWN_USER:
        return "unknown user"
    if reason in _BEFORE_PRIMARY:
        return "not asked"
    if reason is Reason.ERROR:
        return "unknown (an error while deciding)"
    if decision.verdict in (Verdict.ACCEPT, Verdict.CHALLENGE) or reason in _AFTER_PRIMARY:
        return "accepted the password"
    return "unknown"


@dataclass
class RequestTrace:
    """What is known of one datagram, filled in as it goes through the server."""
    number: int
    host: str                                # the source address
    source: str                              # "10.1.2.3:51000"
    started: float                           # reactor seconds
    code: str = "packet"
    packet_id: int | None = None
    size: int = 0
    client: str | None = None                # the client entry's name
    client_network: str | None = None        # its address or CIDR
    message_authenticator: str | None = None # "valid (required)", …
    user: str | None = None
    method: str | None = None
    state: str | None = None
    primary: str | None = None
    primary_answer: str | None = None
    factor: str | None = None
    considered: tuple[str, ...] = ()
    verdict: str | None = None
    reason: str | None = None
    reply: str | None = None
    dropped: str | None = None               # the drop reason
    detail: str | None = None
    request_id: str | None = None
    notes: list[str] = field(default_factory=list)

    def matched(self, client) -> None:
        if client is not None:
            self.client, self.client_network = client.name, str(client.network)

    def checked_message_authenticator(self, request, required: bool) -> None:
        need = "required" if required else "not required"
        if not request.has_message_authenticator:
            self.message_authenticator = f"missing ({need})"
        elif request.message_authenticator_ok:
            self.message_authenticator = f"present, valid ({need})"
        else:
            self.message_authenticator = f"present, wrong ({need})"

    def decoded(self, request, *, code: str, user: str | None, method: str) -> None:
        self.code, self.packet_id, self.size = code, request.id, len(request.raw)
        self.user, self.method = user, method
        self.state = state_digest(request.state)
        # a valid Message-Authenticator proves the secret; a wrong one is a drop
        if not request.has_message_authenticator and looks_like_a_wrong_secret(request.password):
            self.notes.append(WRONG_SECRET_NOTE)

    def decided(self, decision, answering_challenge: bool, second_factor_only: bool = False) -> None:
        self.primary = decision.primary or None
        self.primary_answer = primary_answer(decision, answering_challenge, second_factor_only)
        self.factor = decision.factor
        self.considered = decision.considered
        self.verdict = decision.verdict.value
        self.reason = decision.reason.value if decision.reason is not None else None

    def drop(self, reason: str, detail: str | None = None) -> "RequestTrace":
        self.dropped, self.detail = reason, detail
        return self

    def render(self, now: float) -> str:
        """The block, one line per step, each prefixed with the request's number."""
        ms = (now - self.started) * 1000.0
        what = self.code if self.packet_id is None else f"{self.code} Id {self.packet_id}"
        size = f" ({self.size} octets)" if self.size else ""
        lines = [f"Received {what} from {self.source}{size}"]
        host = self.host
        if self.client is None:
            lines.append(f"  client: no client for {host}")
        else:
            lines.append(f"  client: {self.client} ({self.client_network}) matched source {host}")
        if self.message_authenticator is not None:
            lines.append(f"  Message-Authenticator: {self.message_authenticator}")
        if self.user is not None or self.method is not None:
            lines.append(f"  user: {printable(self.user)}  method: {self.method}  State: {self.state}")
        if self.request_id is not None:
            lines.append(f"  request_id: {self.request_id}")
        if self.dropped is not None:
            detail = f" ({self.detail})" if self.detail else ""
            lines.append(f"  DROPPED: {self.dropped}{detail}: no reply sent")
            hint = DROP_HINTS.get(self.dropped)
            if hint:
                lines.append(f"  hint: {hint}")
        else:
            if self.primary_answer is not None:
                lines.append(f"  primary: {self.primary or '(none)'}: {self.primary_answer}")
            if self.verdict is not None:
                if self.considered:
                    lines.append(f"  factors held: {', '.join(self.considered)}")
                lines.append(f"  factor: {self.factor or '(none)'}")
                lines.append(f"  verdict: {self.verdict}  reason: {self.reason or '(none)'}")
            lines.extend(f"  {note}" for note in self.notes)
            if self.reply is not None:
                lines.append(f"  sent {self.reply}")
        lines.append(f"  done in {ms:.1f} ms")
        prefix = f"({self.number}) "
        return "".join(prefix + line + "\n" for line in lines)


class TraceWriter:
    """Numbers the traces and writes each finished block to ``out`` (stderr)."""

    def __init__(self, clock, out: TextIO | None = None):
        self.clock = clock                    # an IReactorTime: .seconds()
        self.out = out
        self._numbers = itertools.count(1)

    def begin(self, host: str, port: int) -> RequestTrace:
        source = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return RequestTrace(number=next(self._numbers), host=host, source=source,
                            started=self.clock.seconds())

    def finish(self, trace: RequestTrace) -> None:
        out = self.out if self.out is not None else sys.stderr
        try:
            out.write(trace.render(self.clock.seconds()))
            out.flush()
        except (OSError, ValueError):          # a closed stderr must not stop the server
            pass
