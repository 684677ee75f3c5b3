"""Attacks on the engine by someone who holds a user's password, each named for
what it tried; a fake clock and real stores (SQLite and PostgreSQL)."""

import pytest

from helpers import run
from radius_mfa.config import LockoutConfig, Mode, UsernameConfig
from radius_mfa.engine import AuthRequest
from radius_mfa.model import User
from radius_mfa.primary.base import PrimaryResult
from radius_mfa.sessions import MAX_OPEN_CHALLENGES
from radius_mfa.verdicts import Reason, Verdict
from test_engine import PASSWORD, Harness, ScriptedBackend, client, proxied


@pytest.fixture
def h(tmp_path, make_store):
    harness = Harness(tmp_path, store=make_store(), lockout=LockoutConfig(failures=5, minutes=15))
    harness.add_user()
    yield harness
    harness.sync.close()


def wrong(h):
    return f"{(int(h.code()) + 1) % 1_000_000:06d}"


def test_guessing_through_many_open_challenges_stops_at_the_lockout(h):
    states = []
    for _ in range(50):
        states.append(h.handle(password=PASSWORD).state)
        h.clock.advance(0.01)
    reasons = [h.handle(password=wrong(h), state=s).reason for s in states[1:]]
    # only the newest challenges stay open; of those, the lockout's limit is checked
    assert reasons.count(Reason.BAD_CODE) == 5
    assert set(reasons) == {Reason.BAD_STATE, Reason.BAD_CODE}
    assert h.handle(password=h.code(), state=states[0]).verdict is Verdict.REJECT
    assert h.handle(password=f"{PASSWORD},{h.code()}").reason is Reason.LOCKED
    assert h.sync.get_user("alice").locked_until is not None


def test_open_challenges_are_capped_per_user(h):
    states = []
    for _ in range(MAX_OPEN_CHALLENGES + 3):
        states.append(h.handle(password=PASSWORD).state)
        h.clock.advance(1)
    stale = h.handle(password=h.code(), state=states[0])
    assert stale.reason is Reason.BAD_STATE
    fresh = h.handle(password=h.code(), state=states[-1])
    assert fresh.verdict is Verdict.ACCEPT


def test_inline_guesses_after_the_lockout_are_not_checked(h):
    reasons = [h.handle(password=f"{PASSWORD},{wrong(h)}").reason for _ in range(5)]
    assert reasons == [Reason.BAD_CODE] * 5
    right = h.handle(password=f"{PASSWORD},{h.code()}")
    assert (right.verdict, right.reason) == (Verdict.REJECT, Reason.LOCKED)


def test_a_right_code_as_the_last_allowed_attempt_is_accepted_and_leaves_no_lock(h):
    for _ in range(4):
        h.handle(password=f"{PASSWORD},{wrong(h)}")
    assert h.handle(password=f"{PASSWORD},{h.code()}").verdict is Verdict.ACCEPT
    user = h.sync.get_user("alice")
    assert (user.failures, user.locked_until) == (0, None)


def test_a_right_password_gives_its_attempt_back(h):
    for _ in range(10):
        assert h.handle(password=PASSWORD).verdict is Verdict.CHALLENGE
    assert h.sync.get_user("alice").failures == 0


class AttemptSpy:
    """Records the lockout's store steps (take, finish, and the TOTP step
    that settles an attempt) on the harness's store."""

    def __init__(self, h, monkeypatch):
        self.steps = []
        for name in ("take_attempt", "finish_attempt", "advance_totp"):
            real = getattr(h.sync, name)
            monkeypatch.setattr(h.sync, name, self._counting(name, real))

    def _counting(self, name, real):
        def step(*args, **kwargs):
            self.steps.append(name)
            return real(*args, **kwargs)
        return step


def test_inline_the_password_and_the_code_share_one_attempt(h, monkeypatch):
    """Inline, the attempt the password took stays taken for the code: one
    attempt taken and one settled, and never a moment when a right password
    has given its attempt back before the code is checked (a burst of
    guesses cannot slip into that gap)."""
    spy = AttemptSpy(h, monkeypatch)
    assert h.handle(password=f"{PASSWORD},{wrong(h)}").reason is Reason.BAD_CODE
    assert spy.steps == ["take_attempt"]                  # the wrong code stays counted
    assert h.sync.get_user("alice").failures == 1
    spy.steps.clear()
    assert h.handle(password=f"{PASSWORD},{h.code()}").verdict is Verdict.ACCEPT
    # the code's step and the attempt settled together, in one store step
    assert spy.steps == ["take_attempt", "advance_totp"]
    assert h.sync.get_user("alice").failures == 0


def test_inline_right_password_and_a_factor_word_gives_the_attempt_back(h):
    """``password,sms`` where no code can be sent: no guess was made."""
    for _ in range(10):
        assert h.handle(password=f"{PASSWORD},sms").reason is Reason.NO_FACTOR
    assert h.sync.get_user("alice").failures == 0


def test_inline_wrong_password_with_a_right_code_counts_once(h):
    assert h.handle(password=f"guess,{h.code()}").reason is Reason.BAD_PASSWORD
    assert h.sync.get_user("alice").failures == 1


def test_wrong_passwords_count_towards_the_lockout(h):
    for _ in range(5):
        assert h.handle(password="guess").reason is Reason.BAD_PASSWORD
    assert h.handle(password=PASSWORD).reason is Reason.LOCKED


@pytest.mark.parametrize("typed", ["ALICE", " alice", "alice ", "Alice", "ALICE\t"])
def test_name_variants_are_the_same_user(h, typed):
    d = h.handle(user=typed, password=f"{PASSWORD},{h.code()}")
    assert (d.verdict, d.user_name) == (Verdict.ACCEPT, "alice")


def test_name_variants_share_one_lockout(h):
    for typed in ("ALICE", "alice ", " Alice", "aLiCe", "alice"):
        h.handle(user=typed, password=f"{PASSWORD},{wrong(h)}")
    assert h.handle(user="alice", password=f"{PASSWORD},{h.code()}").reason is Reason.LOCKED


def test_name_variants_share_one_replay_guard(h):
    code = h.code()
    assert h.handle(user="alice", password=f"{PASSWORD},{code}").verdict is Verdict.ACCEPT
    assert h.handle(user="ALICE", password=f"{PASSWORD},{code}").reason is Reason.REPLAY


@pytest.mark.parametrize("typed", ["ALICE", "alice ", "Alice"])
def test_a_directory_primary_with_unenrolled_allow_does_not_skip_the_factor_for_name_variants(tmp_path, typed):
    # the directory (or upstream) matches names case-insensitively: it says yes to ALICE
    h = proxied(tmp_path, ScriptedBackend(PrimaryResult(True)), unenrolled="allow")
    h.add_user()
    d = h.handle(user=typed, password="directory password")
    assert d.verdict is Verdict.CHALLENGE                      # alice's token is asked for
    assert d.user_name == "alice"


def test_realm_is_stripped_when_configured(tmp_path):
    h = Harness(tmp_path, username=UsernameConfig(strip_realm=True))
    h.add_user()
    for typed in ("CORP\\alice", "alice@corp.example.org", "CORP\\ALICE"):
        assert h.handle(user=typed, password=f"{PASSWORD},{h.code()}").user_name == "alice"
        h.clock.advance(30)


def test_case_sensitive_names_stay_apart(tmp_path):
    h = Harness(tmp_path, username=UsernameConfig(case="sensitive"))
    h.add_user()
    assert h.handle(user="ALICE", password=f"{PASSWORD},{h.code()}").reason is not None


def test_upstream_radius_gets_the_name_as_the_nas_sent_it(tmp_path):
    backend = ScriptedBackend(PrimaryResult(False, Reason.BAD_PASSWORD))
    h = proxied(tmp_path, backend)
    h.handle(user="CORP\\Alice", password="pw")
    assert backend.requests[0].user_name == "CORP\\Alice"


def test_a_directory_cannot_move_an_enrolled_phone(tmp_path):
    backend = ScriptedBackend(PrimaryResult(True, user_info={"phone": "+15550000999",
                                                             "display_name": "Alice New"}))
    h = proxied(tmp_path, backend)
    h.add_user(phone="+4915112345678")
    h.handle(password="directory password")
    user = h.sync.get_user("alice")
    assert user.phone == "+4915112345678"                      # pinned
    assert user.display_name == "Alice New"                    # not a destination: kept in step


def test_a_directory_phone_is_taken_when_none_is_enrolled(tmp_path):
    backend = ScriptedBackend(PrimaryResult(True, user_info={"phone": "+15550000999"}))
    h = proxied(tmp_path, backend)
    h.add_user()
    h.handle(password="directory password")
    assert h.sync.get_user("alice").phone == "+15550000999"


def test_a_user_name_that_is_not_utf8_is_rejected_as_unknown(h):
    d = run(h.engine.handle(AuthRequest(client=client(), user_name="ali\\xff", name_invalid=True,
                                        password=PASSWORD.encode())))
    assert (d.verdict, d.reason) == (Verdict.REJECT, Reason.UNKNOWN_USER)


@pytest.mark.parametrize("method", ["chap", "mschap", "eap"])
def test_methods_nothing_here_can_verify_are_unsupported(h, method):
    d = run(h.engine.handle(AuthRequest(client=client(), user_name="alice", password=None,
                                        method=method)))
    assert (d.verdict, d.reason) == (Verdict.REJECT, Reason.UNSUPPORTED_METHOD)


def test_second_factor_only_code_guesses_stop_at_the_lockout(h):
    for _ in range(5):
        h.handle(password=wrong(h), mode=Mode.SECOND_FACTOR_ONLY)
    assert h.handle(password=h.code(), mode=Mode.SECOND_FACTOR_ONLY).reason is Reason.LOCKED


def test_exempt_users_are_matched_by_their_canonical_name(tmp_path):
    h = Harness(tmp_path, exempt_users=("SvcBackup",))
    h.add_user("svcbackup", token=False)
    d = h.handle(user="SVCBACKUP", password=PASSWORD)
    assert (d.verdict, d.factor) == (Verdict.ACCEPT, "none")
