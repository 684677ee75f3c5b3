"""A reply is never sent before the store write it depends on is committed.

The store calls of a real Engine on a real SQLite store are held in a queue
and released one at a time; the transport, at the moment a reply is written,
reads the database through a connection of its own, which sees committed
rows only. So each test proves two things: nothing is written while a store
step the decision needs is still pending, and what the reply stands for (the
code's step used up, the attempt counted, the challenge stored) is durable
when the NAS gets it.
"""

from __future__ import annotations

import sqlite3

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from helpers import open_sqlite
from radius_mfa.activity import ClientActivity
from radius_mfa.config import PolicyConfig
from radius_mfa.engine import Engine
from radius_mfa.model import Token, User
from radius_mfa.passwords import hash_password
from radius_mfa.primary.local import LocalBackend
from radius_mfa.radius import codec
from radius_mfa.radius.clients import ClientTable
from radius_mfa.radius.dictionary import load_dictionary
from radius_mfa.radius.droplog import DropLogger
from radius_mfa.radius.dupcache import DuplicateCache
from radius_mfa.server import RadiusServer, Runtime
from radius_mfa.sessions import Sessions
from radius_mfa.store.asyncstore import AsyncStore, immediate_runner
from radius_mfa.verifiers.totp import TotpVerifier, otp_at
from test_server import CLIENTS, NAS, PASSWORD, START, TOTP_SECRET, CapturingLog, UdpTransport, request


class GatedRunner:
    """Holds every store call until the test releases it; a released call
    runs to completion (its transaction committed) before its caller resumes."""

    def __init__(self):
        self.pending: list[tuple[object, tuple, dict, Deferred]] = []

    def __call__(self, fn, *args, **kwargs) -> Deferred:
        d: Deferred = Deferred()
        self.pending.append((fn, args, kwargs, d))
        return d

    def release_one(self) -> str:
        fn, args, kwargs, d = self.pending.pop(0)
        d.callback(fn(*args, **kwargs))
        return fn.__name__


class CommitWitness(UdpTransport):
    """At each write, what another connection to the store file sees."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.seen: list[dict] = []

    def write(self, packet, addr=None):
        with sqlite3.connect(self.path) as other:
            self.seen.append({
                "last_step": other.execute("SELECT last_step FROM tokens WHERE serial = 'T-alice'").fetchone()[0],
                "failures": other.execute("SELECT failures FROM users WHERE name = 'alice'").fetchone()[0],
                "challenges": other.execute("SELECT COUNT(*) FROM challenges").fetchone()[0],
            })
        super().write(packet, addr)


class Harness:
    def __init__(self, tmp_path):
        self.path = tmp_path / "store.db"
        self.clock = Clock()
        self.clock.advance(START)
        self.sync = open_sqlite(self.path)
        self.sync.add_user(User(name="alice", password_hash=hash_password(PASSWORD)))
        self.sync.add_token(Token(serial="T-alice", type="totp", secret=TOTP_SECRET, user="alice"))
        self.gate = GatedRunner()
        store = AsyncStore(self.sync, self.gate)
        engine = Engine(store=store, primary=LocalBackend(immediate_runner),
                        verifiers=[TotpVerifier(store, window=1)], policy=PolicyConfig(),
                        sessions=Sessions(store, self.clock.seconds, ttl=300.0), clock=self.clock.seconds)
        self.audited = []
        self.proto = RadiusServer(
            Runtime(clients=ClientTable(CLIENTS), engine=engine), dictionary=load_dictionary(),
            reactor=self.clock, activity=ClientActivity(AsyncStore(self.sync, immediate_runner)),
            on_finished=self.on_finished, droplog=DropLogger(CapturingLog(), self.clock),
            duplicates=DuplicateCache(self.clock))
        self.transport = CommitWitness(self.path)
        self.proto.transport = self.transport

    def on_finished(self, finished) -> None:
        self.audited.append((finished.decision.verdict.value, len(self.transport.written)))

    def code(self, offset: int = 0) -> str:
        return otp_at(Token(serial="x", type="totp", secret=TOTP_SECRET), int(self.clock.seconds() // 30) + offset)

    def decide(self, raw: bytes) -> list[str]:
        """Deliver ``raw``; release the store steps one by one, checking
        that no reply goes out while one is pending. The steps released."""
        self.proto.datagramReceived(raw, NAS)
        released = []
        while self.gate.pending:
            assert self.transport.written == [], f"a reply went out before {self.gate.pending[0][0].__name__}"
            released.append(self.gate.release_one())
        return released

    def reply(self, raw: bytes) -> codec.Response:
        [(data, _addr)] = self.transport.written
        return codec.decode_response(data, CLIENTS[0].secret, raw[4:20])


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path)
    yield harness
    harness.sync.close()


def test_an_accept_goes_out_only_after_the_codes_step_is_committed(h):
    """Replay protection: were the Accept sent first, a crash between the
    two would let the same code in again."""
    raw = request(password=f"{PASSWORD},{h.code()}", id=1)
    steps = h.decide(raw)
    assert steps == ["begin_sign_in", "advance_totp"]
    assert h.reply(raw).code == codec.ACCESS_ACCEPT
    [seen] = h.transport.seen
    assert seen["last_step"] == int(START // 30)          # the step is used up, for everyone
    assert seen["failures"] == 0                          # and the attempt settled with it
    assert h.audited == [("accept", 0)]                   # the audit record came before the reply


def test_a_reject_for_a_wrong_code_goes_out_only_after_the_failure_is_committed(h):
    """The lockout: a guess is counted durably before its answer is known to the guesser."""
    wrong = f"{(int(h.code()) + 1) % 1_000_000:06d}"
    raw = request(password=f"{PASSWORD},{wrong}", id=2)
    h.decide(raw)
    assert h.reply(raw).code == codec.ACCESS_REJECT
    [seen] = h.transport.seen
    assert seen["failures"] == 1 and seen["last_step"] is None


def test_a_challenge_goes_out_only_after_its_state_is_committed(h):
    """A State the NAS holds is one any server sharing the store can take."""
    raw = request(password=PASSWORD, id=3)
    steps = h.decide(raw)
    assert steps[-1] == "put_challenge"
    assert h.reply(raw).code == codec.ACCESS_CHALLENGE
    [seen] = h.transport.seen
    assert seen["challenges"] == 1 and seen["failures"] == 0
