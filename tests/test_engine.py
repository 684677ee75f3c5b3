"""The engine's decisions, with a fake clock and a real store (SQLite, and PostgreSQL
where the store decides) run in place."""

import ipaddress

import pytest

from helpers import FakeClock, open_sqlite, run
from radius_mfa.config import ClientConfig, Mode, PolicyConfig
from radius_mfa.engine import AuthRequest, Engine, classify, split_inline
from radius_mfa.model import Token, User
from radius_mfa.passwords import hash_password
from radius_mfa.primary.local import LocalBackend
from radius_mfa.sessions import Sessions
from radius_mfa.store.asyncstore import AsyncStore, immediate_runner
from radius_mfa.verdicts import Reason, Verdict
from radius_mfa.verifiers.totp import TotpVerifier, otp_at

SECRET = "JBSWY3DPEHPK3PXP"
PASSWORD = "correct horse"


def client(mode=Mode.CHALLENGE, name="vpn", exempt=False):
    return ClientConfig(name=name, network=ipaddress.ip_network("127.0.0.1/32"),
                        secret=b"s3cret", mode=mode, exempt=exempt)


class Harness:
    def __init__(self, tmp_path, store=None, **policy):
        self.clock = FakeClock()
        self.sync = store if store is not None else open_sqlite(tmp_path / "engine.db")
        self.store = AsyncStore(self.sync, immediate_runner)
        self.hash_calls = []

        def counting_runner(fn, *args):
            self.hash_calls.append(fn.__name__)
            return immediate_runner(fn, *args)

        self.policy = PolicyConfig(**policy)
        self.engine = Engine(store=self.store, primary=LocalBackend(counting_runner),
                             verifiers=[TotpVerifier(self.store, window=1)], policy=self.policy,
                             sessions=Sessions(self.store, self.clock, ttl=300.0),
                             clock=self.clock)

    def add_user(self, name="alice", token=True, **fields):
        self.sync.add_user(User(name=name, password_hash=hash_password(PASSWORD), **fields))
        if token:
            self.sync.add_token(Token(serial=f"TOTP-{name}", type="totp", secret=SECRET, user=name))

    def code(self, offset_steps=0):
        token = Token(serial="x", type="totp", secret=SECRET)
        return otp_at(token, int(self.clock() // 30) + offset_steps)

    def handle(self, user="alice", password=None, state=None, mode=Mode.CHALLENGE, cl=None):
        raw = password.encode() if isinstance(password, str) else password
        return run(self.engine.handle(AuthRequest(client=cl or client(mode), user_name=user,
                                                  password=raw, state=state)))


@pytest.fixture
def h(tmp_path, make_store):
    """The engine on each kind of store (SQLite, PostgreSQL)."""
    harness = Harness(tmp_path, store=make_store())
    harness.add_user()
    yield harness
    harness.sync.close()


def test_inline_password_and_code_is_accepted(h):
    d = h.handle(password=f"{PASSWORD},{h.code()}")
    assert d.verdict is Verdict.ACCEPT
    assert (d.factor, d.device, d.primary) == ("totp", "TOTP-alice", "local")


def test_password_alone_is_challenged_and_the_code_with_state_accepted(h):
    first = h.handle(password=PASSWORD)
    assert first.verdict is Verdict.CHALLENGE
    assert len(first.state) == 16 and "code" in first.reply_message
    second = h.handle(password=h.code(), state=first.state)
    assert second.verdict is Verdict.ACCEPT and second.factor == "totp"


def test_a_state_is_single_use(h):
    first = h.handle(password=PASSWORD)
    assert h.handle(password=h.code(), state=first.state).verdict is Verdict.ACCEPT
    again = h.handle(password=h.code(1), state=first.state)
    assert (again.verdict, again.reason) == (Verdict.REJECT, Reason.BAD_STATE)


def test_a_state_expires(h):
    first = h.handle(password=PASSWORD)
    h.clock.advance(301)
    late = h.handle(password=h.code(), state=first.state)
    assert (late.verdict, late.reason) == (Verdict.REJECT, Reason.EXPIRED_STATE)


def test_a_state_is_bound_to_user_and_client(h):
    h.add_user("bob")
    first = h.handle(password=PASSWORD)
    other_user = h.handle(user="bob", password=h.code(), state=first.state)
    assert other_user.reason is Reason.BAD_STATE
    second = h.handle(password=PASSWORD)
    other_client = h.handle(password=h.code(), state=second.state, cl=client(name="wifi"))
    assert other_client.reason is Reason.BAD_STATE


def test_a_replayed_code_is_rejected(h):
    code = h.code()
    assert h.handle(password=f"{PASSWORD},{code}").verdict is Verdict.ACCEPT
    again = h.handle(password=f"{PASSWORD},{code}")
    assert (again.verdict, again.reason) == (Verdict.REJECT, Reason.REPLAY)


def test_wrong_password_and_unknown_user_cost_one_hash_each(h):
    wrong = h.handle(password=f"nope,{h.code()}")
    assert wrong.reason is Reason.BAD_PASSWORD
    assert h.hash_calls == ["verify_password"]
    unknown = h.handle(user="mallory", password=f"{PASSWORD},{h.code()}")
    assert unknown.reason is Reason.UNKNOWN_USER
    assert h.hash_calls == ["verify_password", "verify_dummy"]


def test_a_wrong_code_is_rejected(h):
    d = h.handle(password=f"{PASSWORD},000000" if h.code() != "000000" else f"{PASSWORD},111111")
    assert (d.verdict, d.reason) == (Verdict.REJECT, Reason.BAD_CODE)


def test_lockout_after_repeated_bad_answers_and_unlock(h):
    for _ in range(5):
        assert h.handle(password=f"{PASSWORD},{h.code(5)}").reason is Reason.BAD_CODE
    locked = h.handle(password=f"{PASSWORD},{h.code()}")
    assert locked.reason is Reason.LOCKED
    assert h.hash_calls[-1] == "verify_dummy"          # a locked user costs what a check costs
    h.clock.advance(14 * 60)
    assert h.handle(password=f"{PASSWORD},{h.code()}").reason is Reason.LOCKED
    h.sync.unlock("alice")
    assert h.handle(password=f"{PASSWORD},{h.code()}").verdict is Verdict.ACCEPT


def test_lock_lifts_by_itself_after_the_minutes(h):
    for _ in range(5):
        h.handle(password=f"nope,{h.code()}")
    assert h.handle(password=f"{PASSWORD},{h.code()}").reason is Reason.LOCKED
    h.clock.advance(15 * 60 + 1)
    assert h.handle(password=f"{PASSWORD},{h.code()}").verdict is Verdict.ACCEPT


def test_a_success_ends_the_run_of_failures(h):
    for _ in range(4):
        h.handle(password=f"nope,{h.code()}")
    assert h.handle(password=f"{PASSWORD},{h.code()}").verdict is Verdict.ACCEPT
    for _ in range(4):
        h.handle(password=f"nope,{h.code()}")
    h.clock.advance(30)
    assert h.handle(password=f"{PASSWORD},{h.code()}").verdict is Verdict.ACCEPT


def test_a_disabled_user_is_rejected(h):
    h.sync.update_user("alice", disabled=True)
    assert h.handle(password=f"{PASSWORD},{h.code()}").reason is Reason.DISABLED


def test_exempt_users_and_clients_need_no_second_factor(tmp_path):
    h = Harness(tmp_path, exempt_users=("svc",))
    h.add_user("svc", token=False)
    h.add_user("alice")
    assert h.handle(user="svc", password=PASSWORD).factor == "none"
    assert h.handle(user="svc", password=PASSWORD).verdict is Verdict.ACCEPT
    lab = h.handle(password=PASSWORD, cl=client(exempt=True))
    assert (lab.verdict, lab.factor) == (Verdict.ACCEPT, "none")
    assert h.handle(user="svc", password="wrong").reason is Reason.BAD_PASSWORD


def test_unenrolled_users_follow_the_policy(tmp_path):
    strict = Harness(tmp_path / "a" if (tmp_path / "a").mkdir() is None else tmp_path)
    strict.add_user("new", token=False)
    assert strict.handle(user="new", password=PASSWORD).reason is Reason.NO_FACTOR
    lenient = Harness(tmp_path / "b" if (tmp_path / "b").mkdir() is None else tmp_path,
                      unenrolled="allow")
    lenient.add_user("new", token=False)
    d = lenient.handle(user="new", password=PASSWORD)
    assert (d.verdict, d.factor) == (Verdict.ACCEPT, "none")


def test_inline_mode_without_answer_is_rejected(h):
    d = h.handle(password=PASSWORD, mode=Mode.INLINE)
    assert (d.verdict, d.reason) == (Verdict.REJECT, Reason.NO_ANSWER)


def test_inline_mode_splits_at_the_last_delimiter(h):
    h.sync.update_user("alice", password_hash=hash_password("a,b"))
    assert h.handle(password=f"a,b,{h.code()}", mode=Mode.INLINE).verdict is Verdict.ACCEPT


def test_challenge_mode_keeps_a_password_whose_tail_is_no_answer(h):
    h.sync.update_user("alice", password_hash=hash_password("pass,word"))
    assert h.handle(password="pass,word").verdict is Verdict.CHALLENGE


def test_factor_words_for_missing_factors_are_rejected(h):
    assert h.handle(password=f"{PASSWORD},sms").reason is Reason.NO_FACTOR


def test_missing_user_name_or_password(h):
    assert h.handle(user=None, password=PASSWORD).reason is Reason.BAD_REQUEST
    assert h.handle(password=None).reason is Reason.BAD_REQUEST


def test_second_factor_only_accepts_a_code_without_primary(h):
    d = h.handle(password=h.code(), mode=Mode.SECOND_FACTOR_ONLY)
    assert d.verdict is Verdict.ACCEPT
    assert h.hash_calls == []
    assert h.handle(password=None, mode=Mode.SECOND_FACTOR_ONLY).reason is Reason.NO_FACTOR


@pytest.mark.parametrize("text,expected", [
    ("123456", "code"), ("12345678", "code"), ("12345", None), ("push", "push"),
    (" SMS ", "sms"), ("abc", None),
])
def test_classify(text, expected):
    assert classify(text) == expected


@pytest.mark.parametrize("text,mode,expected", [
    ("pw,123456", Mode.CHALLENGE, ("pw", "123456")),
    ("pw,word", Mode.CHALLENGE, ("pw,word", None)),
    ("pw,word", Mode.INLINE, ("pw", "word")),
    ("pw", Mode.INLINE, ("pw", None)),
    ("a,b,push", Mode.CHALLENGE, ("a,b", "push")),
])
def test_split_inline(text, mode, expected):
    assert split_inline(text, ",", mode) == expected


# --- proxying backends: a scripted backend stands in for RADIUS/LDAP here ------------------

from radius_mfa.primary.base import PrimaryResult, UpstreamChallenge  # noqa: E402


class ScriptedBackend:
    """Answers from a list, and records every request it got."""
    name = "radius"
    supports_mschap = True

    def __init__(self, *results):
        self.results = list(results)
        self.requests = []

    async def authenticate(self, request):
        self.requests.append(request)
        return self.results.pop(0)

    async def equalize(self, password):
        return None


def proxied(tmp_path, backend, **policy):
    h = Harness(tmp_path, **policy)
    h.engine.primary = backend
    h.engine.decisions.primary = backend.name
    return h


def mschap_request(h, user="alice", cl=None):
    return run(h.engine.handle(AuthRequest(client=cl or client(), user_name=user, password=None,
                                           mschap=True, forward=((26, b"\x00\x00\x01\x37\x19\x03x"),))))


def test_upstream_attributes_reach_the_accept_after_our_challenge(tmp_path):
    attributes = (("Class", b"\x01cls"), ("Filter-Id", "vpn-users"), ((9, 1), b"shell:priv-lvl=15"))
    backend = ScriptedBackend(PrimaryResult(True, attributes=attributes))
    h = proxied(tmp_path, backend)
    h.add_user()
    first = h.handle(password="upstream-pw")
    assert first.verdict is Verdict.CHALLENGE and first.attributes == ()
    done = h.handle(password=h.code(), state=first.state)
    assert done.verdict is Verdict.ACCEPT and done.attributes == attributes
    assert backend.requests[0].password == b"upstream-pw"
    assert backend.requests[0].deadline == 29.0           # client timeout 30 s less the margin


def test_an_upstream_challenge_is_relayed_and_its_answer_sent_back(tmp_path):
    backend = ScriptedBackend(
        PrimaryResult(False, challenge=UpstreamChallenge(b"up-state", "Enter your new PIN")),
        PrimaryResult(True, attributes=(("Filter-Id", "ok"),)))
    h = proxied(tmp_path, backend)
    h.add_user()
    relay = h.handle(password="upstream-pw")
    assert (relay.verdict, relay.reply_message) == (Verdict.CHALLENGE, "Enter your new PIN")
    assert relay.state != b"up-state"                     # our own State stands for theirs
    ours = h.handle(password="4321", state=relay.state)
    assert backend.requests[1].upstream_state == b"up-state"
    assert backend.requests[1].password == b"4321"
    assert ours.verdict is Verdict.CHALLENGE and "code" in ours.reply_message
    done = h.handle(password=h.code(), state=ours.state)
    assert done.verdict is Verdict.ACCEPT and done.attributes == (("Filter-Id", "ok"),)


def test_upstream_down_is_a_reject_with_its_reason(tmp_path):
    h = proxied(tmp_path, ScriptedBackend(PrimaryResult(False, Reason.UPSTREAM_DOWN)))
    h.add_user()
    d = h.handle(password=f"pw,{h.code()}")
    assert (d.verdict, d.reason) == (Verdict.REJECT, Reason.UPSTREAM_DOWN)


def test_mschap_follows_the_policy_only_for_users_without_any_factor(tmp_path):
    success = (("MS-CHAP2-Success", b"\x01S=ABC"), ("MS-MPPE-Send-Key", b"k" * 16))
    strict = proxied(tmp_path / "s" if (tmp_path / "s").mkdir() is None else tmp_path,
                     ScriptedBackend(PrimaryResult(True, attributes=success)))
    strict.add_user(token=False)
    d = mschap_request(strict)
    assert (d.verdict, d.reason) == (Verdict.REJECT, Reason.NO_FACTOR)
    assert strict.engine.primary.requests[0].password is None
    assert strict.engine.primary.requests[0].forward == ((26, b"\x00\x00\x01\x37\x19\x03x"),)
    lenient = proxied(tmp_path / "l" if (tmp_path / "l").mkdir() is None else tmp_path,
                      ScriptedBackend(PrimaryResult(True, attributes=success)), unenrolled="allow")
    lenient.add_user(token=False)
    d = mschap_request(lenient)
    assert (d.verdict, d.factor, d.attributes) == (Verdict.ACCEPT, "none", success)


def test_mschap_downgrade_does_not_skip_a_totp_token_even_when_unenrolled_may_pass(tmp_path):
    success = (("MS-CHAP2-Success", b"\x01S=ABC"),)
    lenient = proxied(tmp_path, ScriptedBackend(PrimaryResult(True, attributes=success)),
                      unenrolled="allow")
    lenient.add_user()                                    # holds a TOTP token, no device
    d = mschap_request(lenient)
    assert (d.verdict, d.reason) == (Verdict.REJECT, Reason.NO_FACTOR)


def test_mschap_with_a_backend_that_cannot_check_it_is_an_unsupported_method(h):
    assert mschap_request(h).reason is Reason.UNSUPPORTED_METHOD


def test_directory_groups_decide_who_needs_a_second_factor(tmp_path):
    outside = PrimaryResult(True, user_info={"mfa_required": False, "groups": frozenset()})
    exempt = PrimaryResult(True, user_info={"mfa_required": True,
                                            "groups": frozenset({"cn=svc,dc=example,dc=org"})})
    member = PrimaryResult(True, user_info={"mfa_required": True, "groups": frozenset()})
    h = proxied(tmp_path, ScriptedBackend(outside, exempt, member),
                exempt_groups=("CN=svc,DC=example,DC=org",))
    h.add_user()
    assert h.handle(password="pw").factor == "none"
    assert h.handle(password="pw").factor == "none"
    assert h.handle(password="pw").verdict is Verdict.CHALLENGE


def test_directory_users_unknown_to_the_store_follow_the_unenrolled_policy(tmp_path):
    info = {"display_name": "Dana Dir", "email": "dana@example.org"}
    h = proxied(tmp_path, ScriptedBackend(PrimaryResult(True, user_info=info)))
    d = h.handle(user="dana", password="pw")
    assert (d.verdict, d.reason, d.user_info["display_name"]) == (Verdict.REJECT, Reason.NO_FACTOR, "Dana Dir")


def test_what_the_directory_says_of_a_user_is_kept_in_the_store(tmp_path):
    info = {"display_name": "Alice Dir", "email": "alice@corp.example", "phone": "+15550100001",
            "mfa_required": True, "groups": frozenset()}
    backend = ScriptedBackend(PrimaryResult(True, user_info=info), PrimaryResult(True, user_info=info))
    h = proxied(tmp_path, backend)
    h.add_user(display_name="Old Name")
    d = h.handle(password=f"pw,{h.code()}")
    assert d.verdict is Verdict.ACCEPT
    stored = h.sync.get_user("alice")
    assert (stored.display_name, stored.email, stored.phone) == (
        "Alice Dir", "alice@corp.example", "+15550100001")
    assert d.user.display_name == "Alice Dir"


def test_a_phone_number_is_no_factor_where_no_code_channel_is_configured(h):
    h.add_user("phoebe", token=False, phone="+4915112345678")
    d = h.handle(user="phoebe", password=f"{PASSWORD},sms")
    assert (d.verdict, d.reason, d.provider) == (Verdict.REJECT, Reason.NO_FACTOR, None)


def test_the_audit_record_names_the_delivery_provider(h):
    import dataclasses

    from radius_mfa.audit import audit_record
    from radius_mfa.server import Finished

    d = h.handle(password=f"{PASSWORD},{h.code()}")
    assert d.provider is None
    finished = Finished(decision=d, client=client(), client_ip="127.0.0.1",
                        server_ip="127.0.0.1", calling_station_id=None, request_id="r1",
                        duration_ms=1.0, method="pap")
    assert audit_record(finished, "mfa1", h.clock())["provider"] is None
    sent = dataclasses.replace(finished, decision=dataclasses.replace(d, factor="sms", provider="gateway-a"))
    assert audit_record(sent, "mfa1", h.clock())["provider"] == "gateway-a"


# --- policy.unenrolled: enrol ----------------------------------------------------

def enrolling(tmp_path, backend=None):
    from radius_mfa.enrolment import EnrolLinks

    h = proxied(tmp_path, backend, unenrolled="enrol") if backend is not None else Harness(tmp_path, unenrolled="enrol")
    h.engine.enrol_links = EnrolLinks(h.store, h.clock, "https://mfa.example.org:8444")
    return h


def link_in(message):
    import re

    return re.search(r"https://mfa\.example\.org:8444/enrol/([A-Za-z0-9_-]{43})", message).group(1)


def test_a_right_password_without_a_factor_gets_a_one_time_enrolment_link(tmp_path):
    h = enrolling(tmp_path)
    h.add_user("new", token=False)
    d = h.handle(user="new", password=PASSWORD)
    assert (d.verdict, d.reason) == (Verdict.REJECT, Reason.ENROL)
    token = link_in(d.reply_message)
    assert run(h.engine.enrol_links.redeem(token)) == "new"
    assert run(h.engine.enrol_links.redeem(token)) is None          # once
    # the link is the store's digest only: the token itself is nowhere in the store
    assert token not in repr(h.sync.get_user("new"))


def test_a_wrong_password_gets_no_enrolment_link_so_links_do_not_reveal_users(tmp_path):
    h = enrolling(tmp_path)
    h.add_user("new", token=False)
    wrong = h.handle(user="new", password="not it")
    unknown = h.handle(user="nobody", password=PASSWORD)
    for d in (wrong, unknown):
        assert d.verdict is Verdict.REJECT and d.reply_message is None
        assert d.reason in (Reason.BAD_PASSWORD, Reason.UNKNOWN_USER)


def test_an_enrolled_user_is_never_sent_a_link(tmp_path):
    h = enrolling(tmp_path)
    h.add_user()
    d = h.handle(password=PASSWORD)
    assert d.verdict is Verdict.CHALLENGE and "/enrol/" not in d.reply_message


def test_a_directory_user_unknown_to_the_store_gets_a_record_and_a_link(tmp_path):
    info = {"display_name": "Dana Dir", "phone": "+15550100001"}
    h = enrolling(tmp_path, ScriptedBackend(PrimaryResult(True, user_info=info)))
    d = h.handle(user="dana", password="pw")
    assert d.reason is Reason.ENROL and run(h.engine.enrol_links.redeem(link_in(d.reply_message))) == "dana"
    stored = h.sync.get_user("dana")
    # a factor is enrolled on the page, never taken from the directory here
    assert (stored.display_name, stored.phone) == ("Dana Dir", None)


def test_second_factor_only_clients_get_no_link_since_no_password_was_checked_here(tmp_path):
    h = enrolling(tmp_path)
    h.add_user("new", token=False)
    d = h.handle(user="new", password=None, mode=Mode.SECOND_FACTOR_ONLY)
    assert (d.reason, d.reply_message) == (Reason.NO_FACTOR, None)
