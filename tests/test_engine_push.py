"""Push approval in the engine: number matching at a challenge, the waiting
modes (second-factor-only, MS-CHAPv2-style no-prompt, inline), joining, the
rate limit, fraud, timeouts. A real store (SQLite and PostgreSQL) run in
place, a real PushHub, and a fake reactor clock: nothing sleeps."""

from __future__ import annotations

import ipaddress

import pytest
from twisted.internet import defer, task
from twisted.python.failure import Failure

from radius_mfa.config import ClientConfig, Mode, PolicyConfig, PushConfig, RateLimit
from radius_mfa.engine import AuthRequest, Engine
from radius_mfa.model import Device, Token, User
from radius_mfa.passwords import hash_password
from radius_mfa.primary.local import LocalBackend
from radius_mfa.push.hub import PushHub, PushRefused
from radius_mfa.sessions import Sessions
from radius_mfa.store.asyncstore import AsyncStore, immediate_runner
from radius_mfa.verdicts import Reason, Verdict
from radius_mfa.verifiers.totp import TotpVerifier

PASSWORD = "correct horse"
SECRET = "JBSWY3DPEHPK3PXP"
KEY = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="     # any 32 bytes, base64


def client(mode=Mode.CHALLENGE, timeout=30.0, name="vpn"):
    return ClientConfig(name=name, network=ipaddress.ip_network("127.0.0.1/32"),
                        secret=b"s3cret", mode=mode, timeout=timeout)


class Harness:
    def __init__(self, sync, *, number_matching=True, push_timeout=50.0, sends=5):
        self.reactor = task.Clock()
        self.reactor.advance(1_700_000_000.0)
        self.sync = sync
        self.store = AsyncStore(sync, immediate_runner)
        self.frauds = []
        self.hub = PushHub(self.store, config=PushConfig(timeout=push_timeout,
                                                         rate_limit=RateLimit(sends, 5.0)),
                           clock=self.reactor.seconds, reactor=self.reactor,
                           on_fraud=lambda push, device: self.frauds.append((push.id, device.id)))
        self.engine = Engine(store=self.store, primary=LocalBackend(immediate_runner),
                             verifiers=[TotpVerifier(self.store, window=1)], policy=PolicyConfig(),
                             sessions=Sessions(self.store, self.reactor.seconds, ttl=300.0),
                             clock=self.reactor.seconds, push=self.hub,
                             number_matching=number_matching)
        sync.add_user(User(name="alice", password_hash=hash_password(PASSWORD)))
        self.device = Device(id="d0123456789abcdef", user="alice", name="phone", public_key=KEY,
                             created=self.reactor.seconds())
        self._pair(self.device)

    def _pair(self, device: Device) -> None:
        from radius_mfa.model import Pairing
        self.sync.add_pairing(Pairing(token_digest=device.id, user=device.user,
                                      created=self.reactor.seconds(),
                                      expires=self.reactor.seconds() + 60))
        assert self.sync.complete_pairing(device.id, device, self.reactor.seconds()) is not None

    def handle(self, password=None, state=None, mode=Mode.CHALLENGE, station="192.0.2.7",
               timeout=30.0, user="alice") -> defer.Deferred:
        raw = password.encode() if isinstance(password, str) else password
        return defer.ensureDeferred(self.engine.handle(AuthRequest(
            client=client(mode, timeout), user_name=user, password=raw, state=state,
            calling_station_id=station)))

    def pending(self):
        return self.sync.pending_pushes("alice", self.reactor.seconds())

    def answer(self, push_id, decision="approve", number=None):
        return defer.ensureDeferred(self.hub.answer(push_id, self.device, decision, number))


def decided(d: defer.Deferred):
    results = []

    def keep(result):
        results.append(result)
        return None if isinstance(result, Failure) else result   # kept here, not "unhandled"

    d.addBoth(keep)
    assert results, "still waiting"
    return results[0]


@pytest.fixture
def h(make_store):
    harness = Harness(make_store())
    yield harness
    harness.hub.stop()


def test_challenge_shows_a_number_and_the_matching_approval_signs_in(h):
    first = decided(h.handle(PASSWORD))
    assert first.verdict is Verdict.CHALLENGE and first.factor == "push"
    (push,) = h.pending()
    assert f"number {push.number} " in first.reply_message and 10 <= push.number <= 99
    assert push.public()["needs_number"] is True and "number" not in push.public()
    assert decided(h.answer(push.id, number=push.number)).status == "approved"
    final = decided(h.handle("", state=first.state))      # an empty OK
    assert (final.verdict, final.factor, final.device) == (Verdict.ACCEPT, "push", h.device.id)
    assert h.sync.get_push(push.id).status == "used"


def test_the_answer_to_the_prompt_waits_for_the_approval(h):
    first = decided(h.handle(PASSWORD))
    (push,) = h.pending()
    waiting = h.handle("ok", state=first.state)
    h.reactor.advance(5)
    assert not waiting.called
    decided(h.answer(push.id, number=push.number))
    assert decided(waiting).verdict is Verdict.ACCEPT


def test_without_the_number_an_approval_is_refused_and_a_wrong_one_denies(h):
    first = decided(h.handle(PASSWORD))
    (push,) = h.pending()
    refused = decided(h.answer(push.id))
    assert isinstance(refused.value, PushRefused) and refused.value.status == 422
    assert h.sync.get_push(push.id).status == "pending"       # may still be approved
    wrong = push.number % 90 + 10                             # another two-digit number
    refused = decided(h.answer(push.id, number=wrong))
    assert refused.value.status == 422 and "does not match" in refused.value.message
    final = decided(h.handle("", state=first.state))
    assert (final.verdict, final.reason) == (Verdict.REJECT, Reason.WRONG_NUMBER)


def test_a_denial_rejects_and_a_second_answer_is_refused(h):
    first = decided(h.handle(PASSWORD))
    (push,) = h.pending()
    decided(h.answer(push.id, "deny"))
    again = decided(h.answer(push.id, number=push.number))
    assert again.value.status == 409
    final = decided(h.handle("", state=first.state))
    assert (final.verdict, final.reason, final.factor) == (Verdict.REJECT, Reason.DENIED, "push")


def test_no_answer_within_the_client_timeout_is_a_timeout_and_a_late_answer_changes_nothing(h):
    d = h.handle(mode=Mode.SECOND_FACTOR_ONLY, timeout=20.0)
    (push,) = h.pending()
    h.reactor.advance(18.9)
    assert not d.called
    h.reactor.advance(0.2)                       # the client's timeout less the margin
    assert (decided(d).verdict, decided(d).reason) == (Verdict.REJECT, Reason.TIMEOUT)
    late = decided(h.answer(push.id))            # the push lived as long as the request waited
    assert late.value.status == 410
    assert h.sync.get_push(push.id).status == "pending"


def test_second_factor_only_waits_for_an_approval_without_a_number(h):
    d = h.handle(mode=Mode.SECOND_FACTOR_ONLY)
    (push,) = h.pending()
    assert push.number is None and push.user_ip == "192.0.2.7" and push.client == "vpn"
    decided(h.answer(push.id))
    assert (decided(d).verdict, decided(d).device) == (Verdict.ACCEPT, h.device.id)


def test_a_retry_of_the_same_login_attempt_joins_the_pending_push(h):
    first = h.handle(mode=Mode.SECOND_FACTOR_ONLY)
    h.reactor.advance(3)
    retry = h.handle(mode=Mode.SECOND_FACTOR_ONLY)             # NAS retry, new identifier
    other = h.handle(mode=Mode.SECOND_FACTOR_ONLY, station="198.51.100.9")   # another attempt
    pushes = h.pending()
    assert len(pushes) == 2
    mine = next(p for p in pushes if p.calling_station_id == "192.0.2.7")
    decided(h.answer(mine.id))
    # one approval, one Accept: the request that uses the push first
    verdicts = sorted(decided(d).verdict.value for d in (first, retry))
    assert verdicts == ["accept", "reject"]
    assert {decided(d).reason for d in (first, retry)} == {None, Reason.REPLAY}
    assert not other.called


def test_a_retried_password_in_challenge_mode_shows_the_same_number(h):
    one = decided(h.handle(PASSWORD))
    two = decided(h.handle(PASSWORD))
    (push,) = h.pending()
    assert one.reply_message == two.reply_message and one.state != two.state


def test_inline_push_word_waits_without_a_number(h):
    d = h.handle(f"{PASSWORD},push", mode=Mode.INLINE)
    (push,) = h.pending()
    assert push.number is None
    decided(h.answer(push.id))
    assert decided(d).verdict is Verdict.ACCEPT


def test_a_wrong_password_starts_no_push(h):
    d = decided(h.handle("wrong"))
    assert (d.verdict, d.reason) == (Verdict.REJECT, Reason.BAD_PASSWORD)
    assert h.pending() == []


def test_the_push_rate_limit_stops_a_bombing(make_store):
    h = Harness(make_store(), sends=2)
    for station in ("a", "b"):
        assert decided(h.handle(PASSWORD, station=station)).verdict is Verdict.CHALLENGE
    third = decided(h.handle(PASSWORD, station="c"))
    assert (third.verdict, third.reason) == (Verdict.REJECT, Reason.RATE_LIMITED)
    assert len(h.pending()) == 2
    h.reactor.advance(5 * 60 + 1)
    assert decided(h.handle(PASSWORD, station="d")).verdict is Verdict.CHALLENGE
    h.hub.stop()


def test_fraud_denies_disables_the_user_and_is_reported(h):
    d = h.handle(mode=Mode.SECOND_FACTOR_ONLY)
    (push,) = h.pending()
    assert decided(h.answer(push.id, "fraud")).status == "fraud"
    assert (decided(d).verdict, decided(d).reason) == (Verdict.REJECT, Reason.FRAUD)
    assert h.sync.get_user("alice").disabled is True
    assert h.frauds == [(push.id, h.device.id)]
    after = decided(h.handle(PASSWORD))
    assert (after.verdict, after.reason) == (Verdict.REJECT, Reason.DISABLED)


def test_a_user_with_a_token_and_a_device_gets_a_menu_and_push_on_request(h):
    h.sync.add_token(Token(serial="T1", type="totp", secret=SECRET, user="alice"))
    menu = decided(h.handle(PASSWORD))
    assert "type push" in menu.reply_message and h.pending() == []
    prompt = decided(h.handle("push", state=menu.state))
    (push,) = h.pending()
    assert prompt.verdict is Verdict.CHALLENGE and str(push.number) in prompt.reply_message


def test_without_number_matching_the_prompt_asks_only_for_approval(make_store):
    h = Harness(make_store(), number_matching=False)
    first = decided(h.handle(PASSWORD))
    (push,) = h.pending()
    assert push.number is None and "number" not in first.reply_message
    decided(h.answer(push.id))
    assert decided(h.handle("", state=first.state)).verdict is Verdict.ACCEPT
    h.hub.stop()


def test_an_answer_through_another_process_is_seen_by_polling_the_store(h):
    d = h.handle(mode=Mode.SECOND_FACTOR_ONLY)
    (push,) = h.pending()
    # the device API of another worker or server wrote the answer: no local wake-up
    assert h.sync.answer_push(push.id, "approved", h.device.id, h.reactor.seconds()) is not None
    assert not d.called
    h.reactor.advance(0.5)
    assert decided(d).verdict is Verdict.ACCEPT


def test_a_made_up_state_with_a_wrong_password_does_not_join_an_approved_push(h):
    first = decided(h.handle(PASSWORD))
    (push,) = h.pending()
    waiting = h.handle("", state=first.state)
    forged = h.handle("wrong password", state=b"\x00" * 16)     # an attacker's made-up State
    decided(h.answer(push.id, number=push.number))
    assert decided(waiting).verdict is Verdict.ACCEPT
    assert (decided(forged).verdict, decided(forged).reason) == (Verdict.REJECT, Reason.BAD_STATE)


def test_a_state_of_another_user_does_not_join_their_push(h):
    first = decided(h.handle(PASSWORD))
    (push,) = h.pending()
    waiting = h.handle("", state=first.state)
    h.sync.add_user(User("mallory"))
    other = h.handle("", state=first.state, user="mallory")   # alice's used State, another name
    decided(h.answer(push.id, number=push.number))
    assert decided(waiting).verdict is Verdict.ACCEPT
    assert (decided(other).verdict, decided(other).reason) == (Verdict.REJECT, Reason.BAD_STATE)


def test_a_retry_with_the_used_state_joins_the_push_of_its_prompt(h):
    first = decided(h.handle(PASSWORD))
    (push,) = h.pending()
    waiting = h.handle("", state=first.state)
    retry = h.handle("", state=first.state)           # a NAS retry: the State is used up
    decided(h.answer(push.id, number=push.number))
    # one approval, one Accept (the compare-and-set decides), the other a replay
    assert sorted(decided(d).verdict.value for d in (waiting, retry)) == ["accept", "reject"]
    late = decided(h.handle("", state=first.state))    # after the Accept: nothing to join
    assert late.verdict is Verdict.REJECT
