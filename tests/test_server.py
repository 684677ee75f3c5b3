"""The UDP protocol without sockets: datagrams in, written datagrams out.

In the style of Twisted's own UDP tests: a ``FakeDatagramTransport`` records
what the protocol writes, ``task.Clock`` is the reactor, and a real Engine on
a real SQLite store decides (its store calls run in place, so a decision is
complete when ``datagramReceived`` returns). Replies are checked the way a
NAS checks them: ``codec.decode_response`` verifies the Response
Authenticator and the Message-Authenticator with the client's secret.
"""

from __future__ import annotations

import contextlib
import ipaddress
import struct

import pytest
import structlog
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import FakeDatagramTransport

from radius_mfa.activity import ClientActivity
from radius_mfa.config import ClientConfig, Mode, PolicyConfig, RequireMA
from radius_mfa.engine import Decision, Engine
from radius_mfa.model import Token, User
from radius_mfa.passwords import hash_password
from radius_mfa.primary.local import LocalBackend
from radius_mfa.radius import codec
from radius_mfa.radius.clients import ClientTable
from radius_mfa.radius.dictionary import load_dictionary
from radius_mfa.radius.droplog import DropLogger
from radius_mfa.radius.dupcache import DuplicateCache
from radius_mfa.server import Finished, RadiusServer, Runtime
from radius_mfa.sessions import Sessions
from radius_mfa.store.asyncstore import AsyncStore, immediate_runner
from helpers import open_sqlite
from radius_mfa.verdicts import Reason, Verdict
from radius_mfa.verifiers.totp import TotpVerifier, otp_at

SECRET = b"s3cret"
TOTP_SECRET = "JBSWY3DPEHPK3PXP"
PASSWORD = "correct horse"
START = 1_700_000_000.0

# One client per Message-Authenticator policy, each on its own loopback address.
STRICT_IP, LENIENT_IP, AUTO_IP, STRANGER_IP = "127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.9"
NAS = (STRICT_IP, 5000)
LENIENT = (LENIENT_IP, 5000)
AUTO = (AUTO_IP, 5000)


def client(name: str, ip: str, require: RequireMA, secret: bytes = SECRET) -> ClientConfig:
    return ClientConfig(name=name, network=ipaddress.ip_network(f"{ip}/32"), secret=secret,
                        require_message_authenticator=require, mode=Mode.CHALLENGE)


CLIENTS = (
    client("vpn", STRICT_IP, RequireMA.TRUE),
    client("legacy", LENIENT_IP, RequireMA.FALSE),
    client("wifi", AUTO_IP, RequireMA.AUTO),
)


class UdpTransport(FakeDatagramTransport):
    """FakeDatagramTransport plus the getHost a listening UDP port has."""

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", "127.0.0.1", 1812)


class CapturingLog:
    """The drop logger's sink: every line, as (event, fields)."""

    def __init__(self):
        self.lines: list[tuple[str, dict]] = []

    def warning(self, event: str, **fields) -> None:
        self.lines.append((event, fields))


class CountingEngine:
    """Delegates to the real engine and counts the decisions asked for."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.calls = 0

    async def handle(self, req):
        self.calls += 1
        return await self.engine.handle(req)


class HeldEngine(CountingEngine):
    """Each decision waits on a Deferred the test fires (a push, say), then delegates."""

    def __init__(self, engine: Engine):
        super().__init__(engine)
        self.gates: list[Deferred] = []

    async def handle(self, req):
        self.calls += 1
        gate: Deferred = Deferred()
        self.gates.append(gate)
        await gate
        return await self.engine.handle(req)


class BrokenEngine(CountingEngine):
    """Raises for the user "boom" (a bug, a store outage), decides for everyone else."""

    async def handle(self, req):
        self.calls += 1
        if req.user_name == "boom":
            raise RuntimeError("the store went away")
        return await self.engine.handle(req)


class Harness:
    def __init__(self, tmp_path, clients=CLIENTS):
        self.clock = Clock()
        self.clock.advance(START)
        self.sync = open_sqlite(tmp_path / "server.db")
        self.store = AsyncStore(self.sync, immediate_runner)
        self.engine = Engine(store=self.store, primary=LocalBackend(immediate_runner),
                             verifiers=[TotpVerifier(self.store, window=1)],
                             policy=PolicyConfig(),
                             sessions=Sessions(self.store, self.clock.seconds, ttl=300.0),
                             clock=self.clock.seconds)
        self.counting = CountingEngine(self.engine)
        self.log = CapturingLog()
        self.finished: list[Finished] = []
        self.activity = ClientActivity(AsyncStore(self.sync, immediate_runner))
        self.proto = RadiusServer(
            Runtime(clients=ClientTable(clients), engine=self.counting),
            dictionary=load_dictionary(), reactor=self.clock, activity=self.activity,
            on_finished=self.finished.append, droplog=DropLogger(self.log, self.clock),
            duplicates=DuplicateCache(self.clock))
        self.transport = UdpTransport()
        self.proto.transport = self.transport
        self.sync.add_user(User(name="alice", password_hash=hash_password(PASSWORD)))
        self.sync.add_token(Token(serial="TOTP-alice", type="totp", secret=TOTP_SECRET,
                                  user="alice"))

    def use_engine(self, engine) -> None:
        self.proto.runtime = Runtime(clients=self.proto.runtime.clients, engine=engine)

    def code(self) -> str:
        token = Token(serial="x", type="totp", secret=TOTP_SECRET)
        return otp_at(token, int(self.clock.seconds() // 30))

    def send(self, raw: bytes, source=NAS) -> list[tuple[bytes, tuple]]:
        """Deliver one datagram; what the protocol wrote because of it."""
        before = len(self.transport.written)
        self.proto.datagramReceived(raw, source)
        return self.transport.written[before:]

    def drops(self, reason: str | None = None) -> list[dict]:
        return [fields for event, fields in self.log.lines
                if event == "radius.drop" and (reason is None or fields["reason"] == reason)]


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path)
    yield harness
    harness.sync.close()


def request(user: str | None = "alice", password: str | None = PASSWORD, *, secret=SECRET,
            **kw) -> bytes:
    return codec.build_access_request(secret, user, password, **kw)


def answer(raw_request: bytes, written: list[tuple[bytes, tuple]], *, secret=SECRET,
           to=NAS) -> codec.Response:
    """The one reply written for ``raw_request``, verified as its NAS would."""
    assert len(written) == 1, f"expected one reply, got {len(written)}"
    data, addr = written[0]
    assert addr == to
    return codec.decode_response(data, secret, raw_request[4:20])


# --- answering -------------------------------------------------------------------


def test_password_and_code_gets_an_accept_with_message_authenticator_first(h):
    raw = request(password=f"{PASSWORD},{h.code()}", id=7,
                  attributes=[("Calling-Station-Id", "198.51.100.7")])
    reply = answer(raw, h.send(raw))
    assert reply.code == codec.ACCESS_ACCEPT and reply.id == 7
    assert reply.message_authenticator_first
    assert reply.attributes[0][0] == codec.MESSAGE_AUTHENTICATOR

    [finished] = h.finished
    assert finished.decision.verdict is Verdict.ACCEPT
    assert (finished.decision.user_name, finished.decision.factor) == ("alice", "totp")
    assert (finished.client.name, finished.client_ip, finished.server_ip) == \
        ("vpn", STRICT_IP, "127.0.0.1")
    assert finished.calling_station_id == "198.51.100.7"
    assert finished.request_id and finished.duration_ms == 0.0


def test_password_alone_gets_a_challenge_and_the_code_with_state_an_accept(h):
    raw = request()
    reply = answer(raw, h.send(raw))
    assert reply.code == codec.ACCESS_CHALLENGE and reply.message_authenticator_first
    state = reply.get("State")
    assert state and "code" in reply.get("Reply-Message")
    assert h.finished[0].decision.verdict is Verdict.CHALLENGE

    second = request(password=h.code(), state=state, id=1)
    assert answer(second, h.send(second)).code == codec.ACCESS_ACCEPT
    assert [f.decision.verdict for f in h.finished] == [Verdict.CHALLENGE, Verdict.ACCEPT]


def test_every_reject_looks_the_same(h):
    wrong_password = request(password=f"nope,{h.code()}", id=1)
    unknown_user = request(user="mallory", password=f"{PASSWORD},{h.code()}", id=2)
    for raw in (wrong_password, unknown_user):
        reply = answer(raw, h.send(raw))
        assert reply.code == codec.ACCESS_REJECT
        assert [kind for kind, _ in reply.attributes] == [codec.MESSAGE_AUTHENTICATOR]
    assert [f.decision.reason for f in h.finished] == [Reason.BAD_PASSWORD, Reason.UNKNOWN_USER]


def test_proxy_state_is_echoed_after_the_message_authenticator(h):
    raw = request(attributes=[("Proxy-State", b"hop-1"), ("Proxy-State", b"hop-2")])
    reply = answer(raw, h.send(raw))
    assert reply.message_authenticator_first
    assert reply.proxy_states == (b"hop-1", b"hop-2")


# --- drops -------------------------------------------------------------------------


def test_unknown_source_address_is_dropped_and_logged(h):
    assert h.send(request(), source=(STRANGER_IP, 5000)) == []
    [line] = h.drops()
    assert line == {"reason": "unknown_client", "source_ip": STRANGER_IP}
    assert h.counting.calls == 0 and h.finished == []


def test_drops_are_rate_limited_until_the_interval_passes(h):
    raw = request()
    for _ in range(100):
        assert h.send(raw, source=(STRANGER_IP, 5000)) == []
    assert len(h.drops("unknown_client")) == 1
    h.clock.advance(9.9)
    h.send(raw, source=(STRANGER_IP, 5000))
    assert len(h.drops("unknown_client")) == 1
    h.clock.advance(0.2)
    h.send(raw, source=(STRANGER_IP, 5000))
    lines = h.drops("unknown_client")
    assert len(lines) == 2 and lines[1]["suppressed"] == 100


def _overrunning_attribute() -> bytes:
    body = bytes((codec.USER_NAME, 50)) + b"alice"
    return struct.pack("!BBH", codec.ACCESS_REQUEST, 1, 20 + len(body)) + bytes(16) + body


@pytest.mark.parametrize("raw", [
    b"",
    bytes(19),
    struct.pack("!BBH", codec.ACCESS_REQUEST, 1, 60) + bytes(16 + 10),   # Length beyond the data
    _overrunning_attribute(),
], ids=["empty", "19-octets", "length-beyond-data", "attribute-overruns"])
def test_malformed_datagrams_are_dropped_and_logged(h, raw):
    with structlog.testing.capture_logs() as events:
        assert h.send(raw) == []
    [line] = h.drops()
    assert (line["reason"], line["client"]) == ("malformed", "vpn")
    assert "alice" not in str(line)                     # nothing of the payload is logged
    assert not [e for e in events if e["event"] == "radius.receive_failed"]
    assert h.counting.calls == 0 and len(h.proto.duplicates) == 0


def test_a_malformed_packet_does_not_stop_the_next_one(h):
    h.send(_overrunning_attribute())
    raw = request()
    assert answer(raw, h.send(raw)).code == codec.ACCESS_CHALLENGE


@pytest.mark.parametrize("code", [codec.ACCOUNTING_REQUEST, codec.ACCESS_ACCEPT])
def test_codes_we_do_not_serve_are_dropped(h, code):
    assert h.send(request(code=code)) == []
    [line] = h.drops()
    assert (line["reason"], line["detail"]) == ("unsupported_code", str(code))
    assert h.counting.calls == 0


# --- Message-Authenticator policy --------------------------------------------------


def test_wrong_secret_is_dropped_as_bad_message_authenticator(h):
    assert h.send(request(secret=b"not-the-secret")) == []
    assert h.drops("bad_message_authenticator")[0]["client"] == "vpn"
    assert h.counting.calls == 0


def test_wrong_secret_is_dropped_even_where_none_is_required(h):
    assert h.send(request(secret=b"not-the-secret"), source=LENIENT) == []
    assert len(h.drops("bad_message_authenticator")) == 1


def test_missing_message_authenticator_is_dropped_when_required(h):
    assert h.send(request(message_authenticator=False)) == []
    assert h.drops("missing_message_authenticator")[0]["client"] == "vpn"
    assert h.counting.calls == 0


def test_missing_message_authenticator_is_answered_when_not_required(h):
    raw = request(message_authenticator=False)
    reply = answer(raw, h.send(raw, source=LENIENT), to=LENIENT)
    assert reply.code == codec.ACCESS_CHALLENGE and reply.message_authenticator_first
    assert h.drops() == []


def test_auto_requires_message_authenticator_once_the_client_sent_one(h):
    first = request(message_authenticator=False, id=1)
    assert answer(first, h.send(first, source=AUTO), to=AUTO).code == codec.ACCESS_CHALLENGE
    assert not h.activity.has_sent_message_authenticator("wifi")

    with_ma = request(id=2)
    assert answer(with_ma, h.send(with_ma, source=AUTO), to=AUTO).code == codec.ACCESS_CHALLENGE
    assert h.activity.has_sent_message_authenticator("wifi")

    assert h.send(request(message_authenticator=False, id=3), source=AUTO) == []
    assert h.drops("missing_message_authenticator")[0]["client"] == "wifi"
    assert h.counting.calls == 2


def test_a_bad_message_authenticator_does_not_switch_auto_on(h):
    assert h.send(request(secret=b"not-the-secret"), source=AUTO) == []
    assert not h.activity.has_sent_message_authenticator("wifi")
    raw = request(message_authenticator=False, id=2)
    assert answer(raw, h.send(raw, source=AUTO), to=AUTO).code == codec.ACCESS_CHALLENGE


# --- Status-Server (RFC 5997) ---------------------------------------------------------


def test_status_server_is_answered_with_an_accept(h):
    raw = request(user=None, password=None, code=codec.STATUS_SERVER, id=42)
    reply = answer(raw, h.send(raw))
    assert (reply.code, reply.id) == (codec.ACCESS_ACCEPT, 42)
    assert reply.message_authenticator_first
    assert h.counting.calls == 0 and h.finished == []


def test_status_server_without_message_authenticator_is_dropped_even_when_not_required(h):
    raw = request(user=None, password=None, code=codec.STATUS_SERVER, message_authenticator=False)
    assert h.send(raw, source=LENIENT) == []
    assert h.drops("missing_message_authenticator")[0]["client"] == "legacy"


# --- duplicates (RFC 5080) --------------------------------------------------------------


def test_a_retransmission_gets_the_same_bytes_without_deciding_again(h):
    raw = request(password=f"{PASSWORD},{h.code()}", id=9)
    [(first, _)] = h.send(raw)
    assert h.send(raw) == [(first, NAS)]
    assert h.send(raw) == [(first, NAS)]
    assert h.counting.calls == 1 and len(h.finished) == 1
    assert codec.decode_response(first, SECRET, raw[4:20]).code == codec.ACCESS_ACCEPT


def test_a_retransmission_while_deciding_gets_nothing_then_one_reply(h):
    held = HeldEngine(h.engine)
    h.use_engine(held)
    raw = request(id=9)
    assert h.send(raw) == []
    assert h.send(raw) == []
    assert held.calls == 1 and len(held.gates) == 1

    held.gates[0].callback(None)
    reply = answer(raw, h.transport.written)
    assert reply.code == codec.ACCESS_CHALLENGE
    assert len(h.finished) == 1
    assert h.send(raw) == [(h.transport.written[0][0], NAS)]     # now from the cache
    assert held.calls == 1


def test_the_same_id_from_another_source_port_is_another_request(h):
    held = HeldEngine(h.engine)
    h.use_engine(held)
    raw = request(id=9)
    other_port = (STRICT_IP, 5001)
    h.send(raw)
    h.send(raw, source=other_port)
    assert held.calls == 2
    for gate in held.gates:
        gate.callback(None)
    assert sorted(addr for _, addr in h.transport.written) == [NAS, other_port]


def test_the_same_id_with_a_new_authenticator_is_another_request(h):
    first = request(id=9)
    second = request(id=9)                        # a fresh random Request Authenticator
    assert answer(first, h.send(first)).code == codec.ACCESS_CHALLENGE
    assert answer(second, h.send(second)).code == codec.ACCESS_CHALLENGE
    assert h.counting.calls == 2


def test_a_dropped_request_is_checked_afresh_when_retransmitted(h):
    raw = request(id=5)
    h.proto.runtime = Runtime(clients=ClientTable([client("vpn", STRICT_IP, RequireMA.TRUE,
                                                          secret=b"other")]),
                              engine=h.counting)
    assert h.send(raw) == []                      # bad Message-Authenticator: not cached
    h.proto.runtime = Runtime(clients=ClientTable(CLIENTS), engine=h.counting)
    assert answer(raw, h.send(raw)).code == codec.ACCESS_CHALLENGE


class SilentEngine(CountingEngine):
    """Decides FAIL (an upstream timed out, say): the NAS must get no answer."""

    async def handle(self, req):
        self.calls += 1
        return Decision(Verdict.FAIL, req.user_name, primary="radius", reason=Reason.UPSTREAM_DOWN)


def test_a_fail_verdict_sends_nothing_and_a_retransmission_is_decided_again(h):
    silent = SilentEngine(h.engine)
    h.use_engine(silent)
    raw = request(id=4)
    assert h.send(raw) == []
    assert h.send(raw) == []
    assert silent.calls == 2
    assert [f.decision.reason for f in h.finished] == [Reason.UPSTREAM_DOWN] * 2


# --- failing closed -----------------------------------------------------------------------


def test_an_engine_that_raises_gets_a_reject_and_the_server_goes_on(h):
    broken = BrokenEngine(h.engine)
    h.use_engine(broken)
    raw = request(user="boom", id=1)
    with structlog.testing.capture_logs() as events:
        reply = answer(raw, h.send(raw))
    assert reply.code == codec.ACCESS_REJECT
    assert [kind for kind, _ in reply.attributes] == [codec.MESSAGE_AUTHENTICATOR]
    [finished] = h.finished
    assert (finished.decision.verdict, finished.decision.reason) == (Verdict.REJECT, Reason.ERROR)
    [error] = [e for e in events if e["event"] == "auth.error"]
    assert "RuntimeError" in error["exception"]
    assert "the store went away" not in str(reply.attributes)

    nxt = request(id=2)
    assert answer(nxt, h.send(nxt)).code == codec.ACCESS_CHALLENGE
    assert broken.calls == 2


# --- drain (SIGTERM) ------------------------------------------------------------------------


def fired(d: Deferred) -> list:
    results: list = []
    d.addBoth(results.append)
    return results


def test_drain_with_nothing_in_flight_fires_at_once(h):
    assert fired(h.proto.drain(5)) == [None]


def test_drain_waits_for_the_request_in_flight(h):
    held = HeldEngine(h.engine)
    h.use_engine(held)
    raw = request()
    h.send(raw)
    done = fired(h.proto.drain(5))
    h.clock.advance(4.9)
    assert done == []
    held.gates[0].callback(None)
    assert done == [None]
    assert answer(raw, h.transport.written).code == codec.ACCESS_CHALLENGE
    assert h.proto.in_flight == set()
    h.clock.advance(1)                             # the timeout is gone with it
    assert h.clock.getDelayedCalls() == []


def test_drain_gives_up_after_the_timeout(h):
    held = HeldEngine(h.engine)
    h.use_engine(held)
    h.send(request())
    done = fired(h.proto.drain(5))
    h.clock.advance(4.9)
    assert done == []
    h.clock.advance(0.1)
    assert done == [None]


def test_a_request_cut_off_by_drain_gets_no_reject(h):
    """Shutting down is our business: the NAS should retry elsewhere, not be refused."""
    held = HeldEngine(h.engine)
    h.use_engine(held)
    h.send(request())
    h.proto.drain(5)
    h.clock.advance(5)
    assert h.transport.written == []
    assert [f.decision.reason for f in h.finished if f.decision.verdict is Verdict.REJECT] == []


# --- reload (SIGHUP) ----------------------------------------------------------------------------


def test_a_new_runtime_checks_the_next_request_with_the_new_secret(h):
    old = request(id=1)
    assert answer(old, h.send(old)).code == codec.ACCESS_CHALLENGE

    rotated = [client("vpn", STRICT_IP, RequireMA.TRUE, secret=b"rotated")]
    h.proto.runtime = Runtime(clients=ClientTable(rotated), engine=h.counting)

    assert h.send(request(id=2)) == []
    assert h.drops("bad_message_authenticator")[0]["client"] == "vpn"
    new = request(id=3, secret=b"rotated")
    reply = answer(new, h.send(new), secret=b"rotated")
    assert reply.code == codec.ACCESS_CHALLENGE


def test_a_reload_keeps_pending_challenges(h):
    first = request(id=1)
    state = answer(first, h.send(first)).get("State")
    reloaded = Engine(store=h.store, primary=LocalBackend(immediate_runner),
                      verifiers=[TotpVerifier(h.store, window=1)], policy=PolicyConfig(),
                      sessions=Sessions(h.store, h.clock.seconds, ttl=300.0),
                      clock=h.clock.seconds)
    h.proto.runtime = Runtime(clients=ClientTable(CLIENTS), engine=reloaded)
    second = request(password=h.code(), state=state, id=2)
    assert answer(second, h.send(second)).code == codec.ACCESS_ACCEPT


def test_a_failing_audit_hook_does_not_undo_the_cached_reply(h):
    """The reply is sent before the audit hook runs; if the hook fails, a
    retransmission must still get that reply, not a second decision (which
    would find the code already used and reject)."""
    def broken_audit(finished):
        raise OSError("disk full")

    h.proto.on_finished = broken_audit
    raw = request(password=f"{PASSWORD},{h.code()}", id=3)
    with structlog.testing.capture_logs() as events:
        [(first, _)] = h.send(raw)
    assert [e["event"] for e in events if e["log_level"] == "error"] == ["radius.finished_failed"]
    assert h.send(raw) == [(first, NAS)]
    assert h.counting.calls == 1
    assert codec.decode_response(first, SECRET, raw[4:20]).code == codec.ACCESS_ACCEPT


# --- attacks on state before authentication ------------------------------------


def forged_copy(raw: bytes) -> bytes:
    """The same source, Identifier and Request Authenticator as ``raw``, a
    Message-Authenticator made without the secret: what an off-path attacker
    who spoofs the NAS's address can send."""
    return codec.build_access_request(b"not the secret", "alice", "guess",
                                      id=raw[1], authenticator=raw[4:20])


def test_a_spoofed_copy_cannot_empty_the_slot_of_a_request_in_progress(h):
    held = HeldEngine(h.engine)
    h.use_engine(held)
    raw = request(password=f"{PASSWORD},{h.code()}", id=9)
    assert h.send(raw) == []
    assert h.send(forged_copy(raw)) == []                 # dropped: bad Message-Authenticator
    assert h.send(raw) == []                              # still in progress: not decided again
    assert held.calls == 1
    held.gates[0].callback(None)
    assert answer(raw, h.transport.written).code == codec.ACCESS_ACCEPT


def test_a_spoofed_copy_cannot_empty_the_cached_reply_so_the_factor_runs_again(h):
    raw = request(password=f"{PASSWORD},{h.code()}", id=9)
    [(first, _)] = h.send(raw)
    h.send(forged_copy(raw))
    h.send(codec.build_access_request(b"not the secret", "alice", "guess", id=9))   # new authenticator
    assert h.send(raw) == [(first, NAS)]                  # the cached Accept, not a replay reject
    assert h.counting.calls == 1 and len(h.finished) == 1
    assert h.sync.get_user("alice").failures == 0


def test_a_spoofed_request_with_a_new_authenticator_does_not_replace_the_slot(h):
    held = HeldEngine(h.engine)
    h.use_engine(held)
    raw = request(password=f"{PASSWORD},{h.code()}", id=9)
    h.send(raw)
    h.send(codec.build_access_request(b"not the secret", "alice", "guess", id=9))
    assert h.send(raw) == [] and held.calls == 1


def test_drops_are_counted_per_client_and_reason(h):
    raw = request(id=5)
    h.send(forged_copy(raw))
    h.send(request(id=6, message_authenticator=False))
    run_flush(h)
    (vpn,) = [c for c in h.sync.list_clients_seen() if c.name == "vpn"]
    assert dict(vpn.drops) == {"bad_message_authenticator": 1, "missing_message_authenticator": 1}


def run_flush(h) -> None:
    from helpers import run
    run(h.activity.flush())


def test_limit_proxy_state_drops_proxy_state_without_message_authenticator(tmp_path):
    strict_proxy = ClientConfig(name="legacy", network=ipaddress.ip_network(f"{LENIENT_IP}/32"),
                                secret=SECRET, require_message_authenticator=RequireMA.FALSE,
                                limit_proxy_state=True)
    h = Harness(tmp_path, clients=(strict_proxy,))
    padded = request(id=3, message_authenticator=False, attributes=[("Proxy-State", b"ps")])
    assert h.send(padded, source=LENIENT) == []
    assert h.drops("missing_message_authenticator")
    plain = request(id=4, message_authenticator=False)
    assert answer(plain, h.send(plain, source=LENIENT), to=LENIENT).code == codec.ACCESS_CHALLENGE
    h.sync.close()


# --- replies that cannot go out as decided, odd names, methods, error floods ----------


def padded_request(target: int = 4096, **kw) -> bytes:
    """An Access-Request padded with Proxy-State to ``target`` octets: a reply
    must echo every Proxy-State, so a Challenge with its prompt cannot fit."""
    base = request(**kw)
    states, room = [], target - len(base)
    while room >= 3:
        size = min(room, 255)
        if room - size in (1, 2):
            size -= 3
        states.append(("Proxy-State", b"p" * (size - 2)))
        room -= size
    raw = request(attributes=states, **kw)
    assert len(raw) <= 4096
    return raw


def test_a_challenge_that_would_exceed_4096_octets_is_trimmed_to_fit_and_still_works(h):
    raw = padded_request(id=7)
    [(data, _)] = h.send(raw)
    assert len(data) <= 4096
    reply = codec.decode_response(data, SECRET, raw[4:20])
    assert reply.code == codec.ACCESS_CHALLENGE
    state = dict(reply.attributes)[codec.STATE]
    [finished] = h.finished
    assert finished.decision.verdict is Verdict.CHALLENGE
    assert h.send(raw) == [(data, NAS)] and h.counting.calls == 1     # cached: no second hash
    nxt = request(password=h.code(), id=8, state=state)
    assert answer(nxt, h.send(nxt)).code == codec.ACCESS_ACCEPT


class BigAcceptEngine(CountingEngine):
    """Accepts with more reply attributes than fit beside the request's Proxy-States."""

    async def handle(self, req):
        self.calls += 1
        return Decision(Verdict.ACCEPT, req.user_name, primary="radius", factor="none",
                        attributes=tuple(("Filter-Id", "f" * 200) for _ in range(10)))


def test_an_accept_that_cannot_fit_goes_out_as_a_reject_audited_so(h):
    h.use_engine(BigAcceptEngine(h.engine))
    raw = padded_request(target=3000, id=7)
    [(data, _)] = h.send(raw)
    assert len(data) <= 4096
    assert codec.decode_response(data, SECRET, raw[4:20]).code == codec.ACCESS_REJECT
    [finished] = h.finished
    assert (finished.decision.verdict, finished.decision.reason) == \
        (Verdict.REJECT, Reason.REPLY_TOO_LARGE)
    assert h.send(raw) == [(data, NAS)]                  # the retransmission: the same reject


def test_a_user_name_that_is_not_utf8_gets_a_reject_not_silence(h):
    raw = codec.build_access_request(SECRET, None, PASSWORD, id=3, attributes=[(1, b"ali\xce\xff")])
    reply = answer(raw, h.send(raw))
    assert reply.code == codec.ACCESS_REJECT
    [finished] = h.finished
    assert finished.decision.reason is Reason.UNKNOWN_USER
    assert finished.decision.user_name == "ali\\xce\\xff"
    assert not h.drops()


def test_an_eap_request_gets_a_reject_with_eap_failure(h):
    eap_response_identity = b"\x02\x2a\x00\x0a\x01alice"
    raw = request(password=None, id=4, attributes=[("EAP-Message", eap_response_identity)])
    reply = answer(raw, h.send(raw))
    assert reply.code == codec.ACCESS_REJECT
    assert (codec.EAP_MESSAGE, b"\x04\x2a\x00\x04") in reply.attributes
    [finished] = h.finished
    assert (finished.decision.reason, finished.method) == (Reason.UNSUPPORTED_METHOD, "eap")


def test_chap_gets_unsupported_method(h):
    raw = request(password=None, id=5, attributes=[("CHAP-Password", b"\x01" + b"x" * 16)])
    assert answer(raw, h.send(raw)).code == codec.ACCESS_REJECT
    [finished] = h.finished
    assert (finished.decision.reason, finished.method) == (Reason.UNSUPPORTED_METHOD, "chap")


def test_an_outage_logs_one_traceback_per_interval_with_a_count(h):
    h.use_engine(BrokenEngine(h.engine))
    with structlog.testing.capture_logs() as events:
        for i in range(50):
            h.send(request(user="boom", id=i))
        h.clock.advance(11)
        h.send(request(user="boom", id=60))
    errors = [e for e in events if e["event"] == "auth.error"]
    assert len(errors) == 2
    assert "RuntimeError" in errors[0]["exception"]
    assert errors[1]["suppressed"] == 49
    assert len(h.finished) == 51 and all(f.decision.reason is Reason.ERROR for f in h.finished)


# --- request_id on every line of a request -----------------------------------------------


@contextlib.contextmanager
def captured_with_context():
    """Like structlog.testing.capture_logs, with the bound contextvars merged
    in first, as audit.configure_logging's chain merges them."""
    capture = structlog.testing.LogCapture()
    processors = structlog.get_config()["processors"]
    saved = processors.copy()
    processors[:] = [structlog.contextvars.merge_contextvars, capture]
    structlog.configure(processors=processors)
    try:
        yield capture.entries
    finally:
        processors[:] = saved
        structlog.configure(processors=processors)


class LoggingEngine(HeldEngine):
    """Logs a line before and after its gate (a push answer, a thread-pool call),
    each with the request id the engine was handed, then decides."""

    async def handle(self, req):
        engine_log = structlog.get_logger("radius_mfa.engine")
        engine_log.info("test.deciding", own=req.request_id)
        self.calls += 1
        gate: Deferred = Deferred()
        self.gates.append(gate)
        await gate
        engine_log.info("test.resumed", own=req.request_id)
        return await self.engine.handle(req)


def test_each_line_logged_while_deciding_carries_its_own_request_id(h):
    held = LoggingEngine(h.engine)
    h.use_engine(held)
    first, second = request(id=1), request(id=2)
    outside = structlog.get_logger("test")
    with captured_with_context() as events:
        h.send(first)
        outside.info("test.between")
        h.send(second)
        held.gates[1].callback(None)             # the second request is answered first
        held.gates[0].callback(None)
        outside.info("test.after")
    assert len(h.transport.written) == 2 and len(h.finished) == 2

    lines = [e for e in events if e["event"] in ("test.deciding", "test.resumed")]
    assert [e["event"] for e in lines] == ["test.deciding", "test.deciding", "test.resumed", "test.resumed"]
    ids = {e["own"] for e in lines}
    assert len(ids) == 2 and ids == {f.request_id for f in h.finished}
    assert all(e["request_id"] == e["own"] for e in lines)       # A's line never carries B's id
    assert [e["request_id"] for e in lines] == [lines[0]["own"], lines[1]["own"],
                                                lines[1]["own"], lines[0]["own"]]
    for e in events:
        if e["event"] in ("test.between", "test.after"):
            assert "request_id" not in e                         # nothing leaks out of a request
    assert structlog.contextvars.get_contextvars() == {}


def test_a_line_logged_by_the_audit_hook_carries_the_request_id(h):
    def audit(finished):
        structlog.get_logger("audit").info("test.audited")         # no request_id passed
        h.finished.append(finished)

    h.proto.on_finished = audit
    h.use_engine(HeldEngine(h.engine))
    raw = request(id=1)
    with captured_with_context() as events:
        h.send(raw)
        h.proto.runtime.engine.gates[0].callback(None)
    [audited] = [e for e in events if e["event"] == "test.audited"]
    [finished] = h.finished
    assert audited["request_id"] == finished.request_id


def test_lines_logged_in_a_thread_pool_carry_the_request_id():
    import threading

    import structlog.contextvars
    from twisted.python.threadpool import ThreadPool

    from radius_mfa.store.asyncstore import thread_runner

    class CallsAtOnce:
        def callFromThread(self, fn, *args, **kwargs):
            fn(*args, **kwargs)

    seen, done = [], threading.Event()

    def in_the_pool():
        seen.append(structlog.contextvars.get_contextvars().get("request_id"))
        done.set()

    pool = ThreadPool(minthreads=1, maxthreads=1)
    pool.start()
    try:
        with structlog.contextvars.bound_contextvars(request_id="r-42"):
            thread_runner(CallsAtOnce(), pool)(in_the_pool)
        assert done.wait(5)
        assert seen == ["r-42"]
    finally:
        pool.stop()
