"""Codes sent by SMS, voice call and mail: the engine with a fake clock, a real
store run in place (SQLite, and PostgreSQL where the store decides) and fake
senders that record what they were asked."""

import ipaddress

import pytest

from helpers import FakeClock, open_sqlite, run
from pg import raw_rows
from radius_mfa.config import ClientConfig, DeliveryFactorConfig, LockoutConfig, Mode, PolicyConfig, RateLimit
from radius_mfa.delivery.base import DeliveryFailed
from radius_mfa.engine import AuthRequest, Engine
from radius_mfa.model import Token, User
from radius_mfa.passwords import hash_password
from radius_mfa.primary.local import LocalBackend
from radius_mfa.sessions import Sessions
from radius_mfa.store.asyncstore import AsyncStore, immediate_runner
from radius_mfa.verdicts import Reason, Verdict
from radius_mfa.verifiers.totp import TotpVerifier, otp_at

SECRET = "JBSWY3DPEHPK3PXP"
PASSWORD = "correct horse"
PHONE = "+4915112345678"
EMAIL = "alice@example.org"


class FakeSender:
    """Records each message; ``fail`` makes it raise like a Sender whose
    providers all failed."""

    def __init__(self, provider: str, fail: bool = False):
        self.provider = provider
        self.fail = fail
        self.sent = []
        self.deadlines = []

    async def send(self, message, deadline):
        if self.fail:
            raise DeliveryFailed(((self.provider, "HTTP 500"),))
        self.sent.append(message)
        self.deadlines.append(deadline)
        return self.provider


def client(mode=Mode.CHALLENGE, name="vpn", timeout=30.0):
    return ClientConfig(name=name, network=ipaddress.ip_network("127.0.0.1/32"),
                        secret=b"s3cret", mode=mode, timeout=timeout)


class Harness:
    def __init__(self, tmp_path, channels=("sms", "voice", "email"), fail=(), store=None, **policy):
        self.clock = FakeClock()
        self.sync = store if store is not None else open_sqlite(tmp_path / "codes.db")
        self.store = AsyncStore(self.sync, immediate_runner)
        self.senders = {c: FakeSender(f"{c}-gateway", fail=c in fail) for c in channels}
        config = DeliveryFactorConfig(code_ttl=300.0, rate_limit=RateLimit(sends=5, minutes=5.0),
                                      subject="Your sign-in code")
        self.engine = Engine(store=self.store, primary=LocalBackend(immediate_runner),
                             verifiers=[TotpVerifier(self.store, window=1)],
                             policy=PolicyConfig(**policy),
                             sessions=Sessions(self.store, self.clock, ttl=300.0), clock=self.clock,
                             senders=self.senders, delivery={c: config for c in channels})

    def add_user(self, name="alice", token=False, phone=PHONE, email=None):
        self.sync.add_user(User(name=name, password_hash=hash_password(PASSWORD), phone=phone,
                                email=email))
        if token:
            self.sync.add_token(Token(serial=f"TOTP-{name}", type="totp", secret=SECRET, user=name))

    def handle(self, password, user="alice", state=None, mode=Mode.CHALLENGE, station="10.0.0.7",
               cl=None):
        return run(self.engine.handle(AuthRequest(
            client=cl or client(mode), user_name=user, password=password.encode(), state=state,
            calling_station_id=station)))

    def last_code(self, channel="sms"):
        return self.senders[channel].sent[-1].code

    def all_sent(self):
        return sum(len(s.sent) for s in self.senders.values())


@pytest.fixture
def h(tmp_path, make_store):
    """The engine on each kind of store (SQLite, PostgreSQL)."""
    harness = Harness(tmp_path, store=make_store())
    yield harness
    harness.sync.close()


def test_challenge_menu_then_sms_then_the_code_is_accepted(h):
    h.add_user(token=True, email=EMAIL)
    menu = h.handle(PASSWORD)
    assert menu.verdict is Verdict.CHALLENGE
    assert menu.reply_message == ("Enter the 6-digit code from your authenticator app, "
                                  "or type sms or voice (***5678) or email (a***@example.org)")
    assert h.all_sent() == 0
    named = h.handle("sms", state=menu.state)
    assert named.verdict is Verdict.CHALLENGE and named.state not in (None, menu.state)
    assert named.reply_message == "A code was sent to ***5678. Enter it:"
    assert (named.factor, named.provider) == ("sms", "sms-gateway")
    message = h.senders["sms"].sent[0]
    assert (message.channel, message.to, message.user) == ("sms", PHONE, "alice")
    assert message.text == f"Your sign-in code is {message.code}" and len(message.code) == 6
    assert h.senders["sms"].deadlines == [29.0]          # the client's timeout less the margin
    done = h.handle(message.code, state=named.state)
    assert (done.verdict, done.factor, done.provider) == (Verdict.ACCEPT, "sms", "sms-gateway")


def test_email_and_voice_go_to_their_own_senders(h):
    h.add_user(email=EMAIL)
    menu = h.handle(PASSWORD)
    assert menu.reply_message == "Type sms or voice (***5678) or email (a***@example.org) to get a code"
    named = h.handle("email", state=menu.state)
    assert named.reply_message == "A code was sent to a***@example.org. Enter it:"
    mail = h.senders["email"].sent[0]
    assert (mail.to, mail.subject) == (EMAIL, "Your sign-in code")
    assert h.handle(mail.code, state=named.state).factor == "email"
    voice = h.handle(f"{PASSWORD},voice", station="10.0.0.8")
    assert voice.reason is Reason.CODE_SENT and h.senders["voice"].sent[0].to == PHONE


def test_a_user_whose_only_factor_is_sms_gets_the_code_straight_away(tmp_path):
    h = Harness(tmp_path, channels=("sms",))
    h.add_user()
    first = h.handle(PASSWORD)
    assert first.verdict is Verdict.CHALLENGE
    assert first.reply_message == "A code was sent to ***5678. Enter it:"
    assert len(h.senders["sms"].sent) == 1
    assert h.handle(h.last_code(), state=first.state).verdict is Verdict.ACCEPT
    h.sync.close()


def test_a_user_without_phone_or_token_is_not_enrolled(h):
    h.add_user(phone=None)
    assert h.handle(PASSWORD).reason is Reason.NO_FACTOR
    assert h.all_sent() == 0


def test_inline_password_sms_sends_then_password_code_accepts(h):
    h.add_user(token=True)
    sent = h.handle(f"{PASSWORD},sms", mode=Mode.INLINE)
    assert (sent.verdict, sent.reason, sent.factor) == (Verdict.REJECT, Reason.CODE_SENT, "sms")
    assert sent.reply_message == "A code was sent to ***5678. Sign in again with password,CODE"
    assert sent.provider == "sms-gateway"
    done = h.handle(f"{PASSWORD},{h.last_code()}", mode=Mode.INLINE)
    assert (done.verdict, done.factor, done.provider) == (Verdict.ACCEPT, "sms", "sms-gateway")
    # the token still works alongside
    totp = otp_at(Token(serial="x", type="totp", secret=SECRET), int(h.clock() // 30))
    assert h.handle(f"{PASSWORD},{totp}", mode=Mode.INLINE).factor == "totp"


def test_the_inline_form_on_a_challenge_client_is_answered_inline(h):
    h.add_user()
    sent = h.handle(f"{PASSWORD},sms")
    assert (sent.verdict, sent.reason) == (Verdict.REJECT, Reason.CODE_SENT)
    assert h.handle(f"{PASSWORD},{h.last_code()}").verdict is Verdict.ACCEPT


def test_a_wrong_password_sends_nothing(h):
    h.add_user()
    assert h.handle("wrong,sms", mode=Mode.INLINE).reason is Reason.BAD_PASSWORD
    assert h.all_sent() == 0


def test_an_expired_code_is_rejected(h):
    h.add_user()
    h.handle(f"{PASSWORD},sms", mode=Mode.INLINE)
    h.clock.advance(301)
    late = h.handle(f"{PASSWORD},{h.last_code()}", mode=Mode.INLINE)
    assert (late.verdict, late.reason, late.factor) == (Verdict.REJECT, Reason.EXPIRED, "sms")


def test_a_code_is_single_use(h):
    h.add_user()
    h.handle(f"{PASSWORD},sms", mode=Mode.INLINE)
    code = h.last_code()
    assert h.handle(f"{PASSWORD},{code}", mode=Mode.INLINE).verdict is Verdict.ACCEPT
    again = h.handle(f"{PASSWORD},{code}", mode=Mode.INLINE)
    assert (again.verdict, again.reason) == (Verdict.REJECT, Reason.BAD_CODE)


def test_a_code_taken_by_another_server_first_is_a_replay(h):
    h.add_user()
    h.handle(f"{PASSWORD},sms", mode=Mode.INLINE)
    (pending,) = h.sync.sent_codes_for("alice")
    real_take = h.sync.take_sent_code
    h.sync.take_sent_code = lambda code_id: real_take(code_id) and False   # the race lost
    lost = h.handle(f"{PASSWORD},{h.last_code()}", mode=Mode.INLINE)
    assert lost.reason is Reason.REPLAY and h.sync.sent_codes_for("alice") == []


def test_wrong_codes_count_toward_the_lockout(tmp_path, make_store):
    h = Harness(tmp_path, store=make_store(), lockout=LockoutConfig(failures=3, minutes=15))
    h.add_user()
    first = h.handle(PASSWORD)          # sms and voice: a menu
    named = h.handle("sms", state=first.state)
    code = h.last_code()
    wrong = "000000" if code != "000000" else "111111"
    assert h.handle(wrong, state=named.state).reason is Reason.BAD_CODE
    assert h.sync.get_user("alice").failures == 1
    assert h.handle(f"{PASSWORD},{wrong}").reason is Reason.BAD_CODE
    assert h.handle(f"{PASSWORD},{wrong}").reason is Reason.BAD_CODE
    assert h.sync.get_user("alice").locked_until is not None
    assert h.handle(f"{PASSWORD},{code}").reason is Reason.LOCKED
    h.sync.close()


def test_the_rate_limit_allows_five_sends_in_five_minutes(h):
    h.add_user()
    for n in range(5):
        answer = h.handle(f"{PASSWORD},sms", station=f"10.0.0.{n}")
        assert answer.reason is Reason.CODE_SENT
    limited = h.handle(f"{PASSWORD},sms", station="10.0.0.99")
    assert (limited.verdict, limited.reason) == (Verdict.REJECT, Reason.RATE_LIMITED)
    assert limited.reply_message == "Too many codes were sent. Try again in a few minutes."
    assert h.all_sent() == 5
    h.clock.advance(301)
    assert h.handle(f"{PASSWORD},sms", station="10.0.0.99").reason is Reason.CODE_SENT
    assert h.all_sent() == 6


def test_a_retried_login_attempt_joins_the_pending_code(h):
    h.add_user()
    first = h.handle(f"{PASSWORD},sms", mode=Mode.INLINE)
    h.clock.advance(5)
    retry = h.handle(f"{PASSWORD},sms", mode=Mode.INLINE)
    assert h.all_sent() == 1
    assert (retry.reason, retry.reply_message) == (first.reason, first.reply_message)


def test_a_retried_challenge_gets_a_fresh_state_bound_to_the_same_code(tmp_path, make_store):
    h = Harness(tmp_path, channels=("sms",), store=make_store())
    h.add_user()
    first = h.handle(PASSWORD)
    retry = h.handle(PASSWORD)
    assert h.all_sent() == 1
    assert retry.reply_message == first.reply_message and retry.state != first.state
    assert h.handle(h.last_code(), state=retry.state).verdict is Verdict.ACCEPT
    h.sync.close()


def test_another_station_or_a_retry_after_the_client_timeout_sends_anew(h):
    h.add_user()
    h.handle(f"{PASSWORD},sms", station="10.0.0.7")
    h.handle(f"{PASSWORD},sms", station="10.0.0.8")
    assert h.all_sent() == 2
    h.clock.advance(31)
    h.handle(f"{PASSWORD},sms", station="10.0.0.7")
    assert h.all_sent() == 3


def test_a_delivery_failure_rejects_and_leaves_nothing_pending(tmp_path, make_store):
    h = Harness(tmp_path, fail=("sms",), store=make_store())
    h.add_user()
    failed = h.handle(f"{PASSWORD},sms", mode=Mode.INLINE)
    assert (failed.verdict, failed.reason, failed.reply_message) == (
        Verdict.REJECT, Reason.DELIVERY_FAILED, None)
    assert h.sync.sent_codes_for("alice") == []
    h.sync.close()


def test_the_store_keeps_no_code_in_clear(h):
    h.add_user()
    h.handle(f"{PASSWORD},sms", mode=Mode.INLINE)
    code = h.last_code()
    rows = raw_rows(h.sync, "SELECT * FROM sent_codes")
    assert len(rows) == 1
    assert not any(code in str(value) for value in rows[0])
    assert "code_mac" not in repr(h.sync.sent_codes_for("alice")[0])


def test_a_channel_without_a_sender_is_not_offered(tmp_path):
    h = Harness(tmp_path, channels=())
    h.add_user(token=True)
    menu = h.handle(PASSWORD)
    assert menu.reply_message == "Enter the 6-digit code from your authenticator app"
    assert h.handle(f"{PASSWORD},sms").reason is Reason.NO_FACTOR
    h.sync.close()


def test_a_short_code_length_is_accepted_too(tmp_path):
    h = Harness(tmp_path, channels=("sms",))
    h.engine.codes.delivery["sms"] = DeliveryFactorConfig(code_digits=4)
    h.add_user()
    sent = h.handle(PASSWORD, mode=Mode.INLINE)
    assert sent.reason is Reason.CODE_SENT and len(h.last_code()) == 4
    assert h.handle(f"{PASSWORD},{h.last_code()}", mode=Mode.INLINE).verdict is Verdict.ACCEPT
    h.sync.close()
