"""`token resync`: two consecutive codes far ahead (HOTP) or off the clock (TOTP)."""

import base64

import pytest

from helpers import run
from radius_mfa.errors import NotFoundError, RefusedError
from radius_mfa.model import Token, User
from radius_mfa.otp import otp_at
from radius_mfa.resync import Resynced, resync
from radius_mfa.store.asyncstore import AsyncStore, immediate_runner
from radius_mfa.verdicts import Reason
from radius_mfa.verifiers.hotp import HotpVerifier
from radius_mfa.verifiers.totp import TotpVerifier

SEED = b"12345678901234567890"
SECRET = base64.b32encode(SEED).decode().rstrip("=")
RFC4226 = ["755224", "287082", "359152", "969429", "338314",
           "254676", "287922", "162583", "399871", "520489"]
NOW = 1111111109.0                   # RFC 6238 Appendix B: step 37037036
NOW_STEP = int(NOW // 30)
ALICE = User("alice")


@pytest.fixture
def store(make_store):
    """A store (SQLite, then PostgreSQL) with alice's HOTP and TOTP tokens."""
    sync = make_store()
    sync.add_user(User(name="alice"))
    sync.add_token(Token(serial="H1", type="hotp", secret=SECRET, user="alice"))
    sync.add_token(Token(serial="T1", type="totp", secret=SECRET, user="alice", digits=8))
    yield sync
    sync.close()


def hotp(store, counter: int) -> str:
    return otp_at(store.get_token("H1"), counter)


def totp(store, step: int) -> str:
    return otp_at(store.get_token("T1"), step)


def refused(store, serial, code1, code2, now=NOW, window=1000) -> str:
    """The refusal's message, checked to be one line that names neither code."""
    with pytest.raises(RefusedError) as caught:
        resync(store, serial, code1, code2, now, window)
    message = str(caught.value)
    assert "\n" not in message
    assert all(code not in message for code in (code1, code2) if code)
    return message


# --- HOTP -------------------------------------------------------------------

def test_hotp_rfc4226_codes_move_the_counter_past_them(store):
    assert resync(store, "H1", RFC4226[3], RFC4226[4], NOW) == Resynced("H1", "hotp", 5, None)
    assert store.get_token("H1").counter == 5


def test_hotp_far_ahead_then_the_next_code_signs_in_and_the_resync_codes_are_replays(store):
    result = resync(store, "H1", hotp(store, 500), hotp(store, 501), NOW)
    assert result.counter == 502 and store.get_token("H1").counter == 502
    verifier = HotpVerifier(AsyncStore(store, immediate_runner), look_ahead=10)
    token = store.get_token("H1")
    assert run(verifier.verify(ALICE, [token], hotp(store, 501), NOW)).reason is Reason.REPLAY
    assert run(verifier.verify(ALICE, [token], hotp(store, 502), NOW)).ok


def test_hotp_window_edge(store):
    # codes at counter + window - 1 and + window: the last pair inside
    assert resync(store, "H1", hotp(store, 99), hotp(store, 100), NOW, window=100).counter == 101


def test_hotp_beyond_the_window_is_refused(store):
    message = refused(store, "H1", hotp(store, 100), hotp(store, 101), window=100)
    assert "within 100 counts" in message
    assert store.get_token("H1").counter == 0


def test_hotp_swapped_codes_are_refused(store):
    refused(store, "H1", hotp(store, 501), hotp(store, 500))
    assert store.get_token("H1").counter == 0


def test_hotp_codes_that_are_not_consecutive_are_refused(store):
    refused(store, "H1", hotp(store, 500), hotp(store, 502))


def test_hotp_codes_behind_the_counter_are_refused(store):
    resync(store, "H1", hotp(store, 500), hotp(store, 501), NOW)
    refused(store, "H1", hotp(store, 300), hotp(store, 301))
    assert store.get_token("H1").counter == 502


class _SignInMeanwhile:
    """The store, with a sign-in that moves the counter between the resync's
    read and its compare-and-set (another server, or the user signing in)."""

    def __init__(self, store):
        self.store = store

    def get_token(self, serial):
        token = self.store.get_token(serial)
        assert self.store.advance_hotp(serial, token.counter, token.counter + 1)
        return token

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_hotp_used_while_resynchronising_is_refused(store):
    message = refused(_SignInMeanwhile(store), "H1", hotp(store, 500), hotp(store, 501))
    assert "try again" in message
    assert store.get_token("H1").counter == 1


# --- TOTP -------------------------------------------------------------------

def test_totp_token_five_steps_fast_is_resynced_and_then_accepted(store):
    verifier = TotpVerifier(AsyncStore(store, immediate_runner), window=1)
    later = NOW + 30                               # the next step: the token shows NOW_STEP + 6
    own_code = totp(store, NOW_STEP + 6)
    assert run(verifier.verify(ALICE, [store.get_token("T1")], own_code, later)) is None

    # read off the token 30 s apart: it shows NOW_STEP + 4, then (at NOW) NOW_STEP + 5
    result = resync(store, "T1", totp(store, NOW_STEP + 4), totp(store, NOW_STEP + 5), NOW)
    assert result == Resynced("T1", "totp", None, 5)
    assert store.get_token("T1").drift == 5

    assert run(verifier.verify(ALICE, [store.get_token("T1")], own_code, later)).ok


def test_totp_resync_codes_are_replays_afterwards(store):
    code1, code2 = totp(store, NOW_STEP + 4), totp(store, NOW_STEP + 5)
    resync(store, "T1", code1, code2, NOW)
    verifier = TotpVerifier(AsyncStore(store, immediate_runner), window=1)
    token = store.get_token("T1")
    assert run(verifier.verify(ALICE, [token], code2, NOW)).reason is Reason.REPLAY
    assert run(verifier.verify(ALICE, [token], code1, NOW)).reason is Reason.REPLAY
    assert "used already" in refused(store, "T1", code1, code2)


def test_totp_token_slow_by_seven_steps(store):
    result = resync(store, "T1", totp(store, NOW_STEP - 8), totp(store, NOW_STEP - 7), NOW)
    assert result.drift == -7
    verifier = TotpVerifier(AsyncStore(store, immediate_runner), window=1)
    assert run(verifier.verify(ALICE, [store.get_token("T1")], totp(store, NOW_STEP - 6),
                               NOW + 30)).ok


def test_totp_beyond_the_window_is_refused(store):
    message = refused(store, "T1", totp(store, NOW_STEP + 11), totp(store, NOW_STEP + 12), window=10)
    assert "within 10 time steps" in message
    assert store.get_token("T1").drift == 0


def test_totp_swapped_codes_are_refused(store):
    refused(store, "T1", totp(store, NOW_STEP + 5), totp(store, NOW_STEP + 4))
    assert store.get_token("T1").drift == 0


def test_totp_near_the_epoch_never_tries_a_negative_step(store):
    assert resync(store, "T1", totp(store, 0), totp(store, 1), 59.0).drift == 0


# --- the codes themselves ----------------------------------------------------

def test_an_unknown_serial_is_not_found(store):
    with pytest.raises(NotFoundError, match="NOPE"):
        resync(store, "NOPE", "123456", "234567", NOW)


@pytest.mark.parametrize("code1,code2", [
    ("12345", "123456"),          # too short
    ("1234567", "123456"),        # too long
    ("12a456", "123456"),         # not digits
    ("123456", "١٢٣٤٥٦"),         # digits, but not ASCII ones
    ("", "123456"),
])
def test_codes_that_are_not_codes_of_the_token_are_refused(store, code1, code2):
    assert "6 digits" in refused(store, "H1", code1, code2)


def test_a_six_digit_code_for_an_eight_digit_token_is_refused(store):
    assert "8 digits" in refused(store, "T1", "123456", "234567")
