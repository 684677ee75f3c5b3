"""TOTP against RFC 6238 Appendix B, and the replay guard in the store."""

import base64

import pytest

from helpers import run
from radius_mfa.model import Token, User
from radius_mfa.store.asyncstore import AsyncStore, immediate_runner
from radius_mfa.verdicts import Reason
from radius_mfa.verifiers.totp import TotpVerifier, otp_at, steps_to_try

SEEDS = {
    "sha1": b"12345678901234567890",
    "sha256": b"12345678901234567890123456789012",
    "sha512": b"1234567890123456789012345678901234567890123456789012345678901234",
}
# RFC 6238 Appendix B: (time, algorithm, 8-digit TOTP)
VECTORS = [
    (59, "sha1", "94287082"), (59, "sha256", "46119246"), (59, "sha512", "90693936"),
    (1111111109, "sha1", "07081804"), (1111111109, "sha256", "68084774"),
    (1111111109, "sha512", "25091201"),
    (1111111111, "sha1", "14050471"), (1111111111, "sha256", "67062674"),
    (1111111111, "sha512", "99943326"),
    (1234567890, "sha1", "89005924"), (1234567890, "sha256", "91819424"),
    (1234567890, "sha512", "93441116"),
    (2000000000, "sha1", "69279037"), (2000000000, "sha256", "90698825"),
    (2000000000, "sha512", "38618901"),
    (20000000000, "sha1", "65353130"), (20000000000, "sha256", "77737706"),
    (20000000000, "sha512", "47863826"),
]


def rfc_token(algorithm: str, serial: str = "T1") -> Token:
    secret = base64.b32encode(SEEDS[algorithm]).decode().rstrip("=")
    return Token(serial=serial, type="totp", secret=secret, user="alice", digits=8,
                 algorithm=algorithm)


@pytest.fixture
def store(alice_store):
    return alice_store


@pytest.mark.parametrize("now,algorithm,code", VECTORS)
def test_rfc6238_vectors(now, algorithm, code):
    token = rfc_token(algorithm)
    assert otp_at(token, now // 30) == code


@pytest.mark.parametrize("now,algorithm,code", VECTORS)
def test_verifier_accepts_rfc6238_codes_once(store, now, algorithm, code):
    token = rfc_token(algorithm)
    store.sync.add_token(token)
    verifier = TotpVerifier(store, window=1)
    first = run(verifier.verify(User("alice"), [token], code, float(now)))
    assert first.ok and first.device == "T1" and first.factor == "totp"
    again = run(verifier.verify(User("alice"), [token], code, float(now)))
    assert not again.ok and again.reason is Reason.REPLAY


def test_window_accepts_a_neighbour_step_and_not_beyond(store):
    token = rfc_token("sha1")
    store.sync.add_token(token)
    verifier = TotpVerifier(store, window=1)
    code = "07081804"                       # step of t=1111111109
    assert run(verifier.verify(User("alice"), [token], code, 1111111109.0 + 60)) is None
    assert run(verifier.verify(User("alice"), [token], code, 1111111109.0 + 30)).ok


def test_an_older_code_after_a_newer_one_is_a_replay(store):
    token = rfc_token("sha1")
    store.sync.add_token(token)
    verifier = TotpVerifier(store, window=1)
    now = 1111111109.0
    newer = otp_at(token, int(now // 30) + 1)
    older = otp_at(token, int(now // 30) - 1)
    assert run(verifier.verify(User("alice"), [token], newer, now)).ok
    assert run(verifier.verify(User("alice"), [token], older, now)).reason is Reason.REPLAY


def test_replay_survives_a_new_store_instance(make_store):
    first = make_store()
    first.add_user(User(name="alice"))
    token = rfc_token("sha1")
    first.add_token(token)
    code = otp_at(token, 59 // 30)
    assert run(TotpVerifier(AsyncStore(first, immediate_runner)).verify(
        User("alice"), [token], code, 59.0)).ok
    first.close()
    second = make_store()   # a restart, or another server on the same store
    result = run(TotpVerifier(AsyncStore(second, immediate_runner)).verify(
        User("alice"), [token], code, 59.0))
    assert result.reason is Reason.REPLAY
    second.close()


def test_steps_nearest_first():
    assert steps_to_try(95.0, 30, 2) == [3, 2, 4, 1, 5]
    assert steps_to_try(5.0, 30, 1) == [0, 1]


def test_steps_follow_the_token_drift():
    assert steps_to_try(95.0, 30, 1, drift=5) == [8, 7, 9]
    assert steps_to_try(95.0, 30, 1, drift=-3) == [0, 1]


def test_a_drifting_token_is_checked_around_its_own_clock(store):
    token = rfc_token("sha1")
    store.sync.add_token(token)
    now = 1111111109.0
    fast = otp_at(token, int(now // 30) + 5)            # a token five steps fast
    verifier = TotpVerifier(store, window=1)
    assert run(verifier.verify(User("alice"), [token], fast, now)) is None
    assert store.sync.set_totp_drift("T1", 5, int(now // 30) + 4)
    drifted = store.sync.get_token("T1")
    assert drifted.drift == 5
    assert run(verifier.verify(User("alice"), [drifted], fast, now)).ok
    assert run(verifier.verify(User("alice"), [drifted], fast, now)).reason is Reason.REPLAY
    # the real clock's code is now outside the token's window
    assert run(verifier.verify(User("alice"), [drifted], otp_at(token, int(now // 30)), now)) is None
