"""HOTP against RFC 4226 Appendix D, the look-ahead and the counter in the store."""

import base64
import dataclasses
import threading

import pytest

from helpers import run
from radius_mfa.model import Token, User
from radius_mfa.otp import otp_at
from radius_mfa.store.asyncstore import AsyncStore, immediate_runner
from radius_mfa.verdicts import Reason
from radius_mfa.verifiers.base import FactorResult
from radius_mfa.verifiers.hotp import MAX_RACES, HotpVerifier

SEED = b"12345678901234567890"
# RFC 4226 Appendix D: counter → HOTP value (6 digits) and its 8-digit form
# (the last 8 digits of the truncated decimal value in the same table)
RFC4226 = ["755224", "287082", "359152", "969429", "338314",
           "254676", "287922", "162583", "399871", "520489"]
RFC4226_8 = ["84755224", "94287082", "37359152", "26969429", "40338314",
             "68254676", "18287922", "82162583", "73399871", "45520489"]
ALICE = User("alice")


def rfc_token(serial: str = "H1", counter: int = 0, digits: int = 6) -> Token:
    secret = base64.b32encode(SEED).decode().rstrip("=")
    return Token(serial=serial, type="hotp", secret=secret, user="alice", digits=digits,
                 counter=counter)


@pytest.fixture
def store(alice_store):
    return alice_store


def verify(store, token: Token, code: str, look_ahead: int = 10):
    """One sign-in as the engine makes it: the token freshly read from the store."""
    fresh = store.sync.get_token(token.serial)
    return run(HotpVerifier(store, look_ahead).verify(ALICE, [fresh], code, 0.0))


@pytest.mark.parametrize("counter", range(10))
def test_rfc4226_vectors(counter):
    assert otp_at(rfc_token(), counter) == RFC4226[counter]
    assert otp_at(rfc_token(digits=8), counter) == RFC4226_8[counter]


def test_rfc4226_codes_in_order_are_each_accepted_once(store):
    token = rfc_token()
    store.sync.add_token(token)
    for counter, code in enumerate(RFC4226):
        result = verify(store, token, code)
        assert result == FactorResult(True, "hotp", "H1")
        assert store.sync.get_token("H1").counter == counter + 1
        assert verify(store, token, code).reason is Reason.REPLAY


def test_eight_digit_token(store):
    token = rfc_token(digits=8)
    store.sync.add_token(token)
    assert verify(store, token, RFC4226_8[0]).ok
    assert verify(store, token, RFC4226_8[0]).reason is Reason.REPLAY


def test_a_code_of_another_length_is_not_tried(store):
    token = rfc_token(digits=8)
    store.sync.add_token(token)
    assert verify(store, token, RFC4226[0]) is None      # the 6-digit form of counter 0
    assert store.sync.get_token("H1").counter == 0


def test_look_ahead_edge_is_accepted_and_one_beyond_is_not(store):
    token = rfc_token()
    store.sync.add_token(token)
    assert verify(store, token, RFC4226[4], look_ahead=3) is None     # counter + 4
    assert store.sync.get_token("H1").counter == 0
    assert verify(store, token, RFC4226[3], look_ahead=3).ok          # counter + 3
    assert store.sync.get_token("H1").counter == 4


def test_an_accepted_code_moves_the_counter_past_it_and_every_earlier_code(store):
    token = rfc_token()
    store.sync.add_token(token)
    assert verify(store, token, RFC4226[5]).ok
    assert store.sync.get_token("H1").counter == 6
    for counter in range(6):
        assert verify(store, token, RFC4226[counter]).reason is Reason.REPLAY
    assert verify(store, token, RFC4226[6]).ok


def test_a_code_far_behind_the_counter_is_just_wrong(store):
    token = rfc_token(counter=20)
    store.sync.add_token(token)
    assert verify(store, token, otp_at(token, 10)).reason is Reason.REPLAY   # 10 behind: 10…19 are replays
    assert verify(store, token, otp_at(token, 9)) is None                     # 11 behind


def test_a_wrong_code_is_no_match(store):
    token = rfc_token()
    store.sync.add_token(token)
    assert verify(store, token, "000000") is None
    assert store.sync.get_token("H1").counter == 0


def test_a_replay_on_one_token_does_not_hide_a_fresh_code_on_another(store):
    # two tokens with one seed: the code of counter 2 is used on A, fresh on B
    store.sync.add_token(rfc_token("A", counter=5))
    store.sync.add_token(rfc_token("B", counter=0))
    tokens = [store.sync.get_token("A"), store.sync.get_token("B")]
    result = run(HotpVerifier(store).verify(ALICE, tokens, RFC4226[2], 0.0))
    assert result.ok and result.device == "B"
    assert store.sync.get_token("A").counter == 5
    assert store.sync.get_token("B").counter == 3


def test_the_replay_survives_a_new_store_instance(make_store):
    first = make_store()
    first.add_user(User(name="alice"))
    first.add_token(rfc_token())
    assert verify(AsyncStore(first, immediate_runner), rfc_token(), RFC4226[1]).ok
    first.close()
    second = make_store()     # a restart, or another server on the same store
    assert verify(AsyncStore(second, immediate_runner), rfc_token(), RFC4226[1]).reason is Reason.REPLAY
    second.close()


def test_a_stale_counter_is_reread_and_decided_again(make_store):
    """Server B reads the token, server A signs in first: B's compare-and-set
    fails, B re-reads the counter and decides against it."""
    a, b = make_store(), make_store()
    a.add_user(User(name="alice"))
    a.add_token(rfc_token())
    stale = b.get_token("H1")                                  # counter 0
    assert verify(AsyncStore(a, immediate_runner), stale, RFC4226[2]).ok   # counter 3
    on_b = HotpVerifier(AsyncStore(b, immediate_runner))
    # the same code: the counter is past it now
    assert run(on_b.verify(ALICE, [stale], RFC4226[2], 0.0)).reason is Reason.REPLAY
    # a code ahead of the new counter: accepted after the re-read
    assert run(on_b.verify(ALICE, [stale], RFC4226[4], 0.0)).ok
    assert a.get_token("H1").counter == 5
    a.close()
    b.close()


def test_two_servers_racing_for_one_code_accept_it_once(make_store):
    setup = make_store()
    setup.add_user(User(name="alice"))
    setup.add_token(rfc_token())
    servers = [make_store(), make_store()]
    for _ in range(15):
        token = setup.get_token("H1")                            # both read the same counter
        code = otp_at(token, token.counter + 1)
        barrier = threading.Barrier(len(servers))
        results = [None] * len(servers)

        def sign_in(i: int) -> None:
            verifier = HotpVerifier(AsyncStore(servers[i], immediate_runner))
            barrier.wait()
            results[i] = run(verifier.verify(ALICE, [token], code, 0.0))

        threads = [threading.Thread(target=sign_in, args=(i,)) for i in range(len(servers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(r.ok for r in results) == [False, True]
        assert [r.reason for r in results if not r.ok] == [Reason.REPLAY]
        assert setup.get_token("H1").counter == token.counter + 2
    for s in servers + [setup]:
        s.close()


class _Contended:
    """A store whose counter someone else keeps moving: every compare-and-set
    fails, and each re-read returns the next of ``reads``."""

    def __init__(self, reads):
        self.reads = list(reads)
        self.cas_calls = 0

    def advance_hotp(self, serial, expected, new_counter):
        self.cas_calls += 1
        return False

    def get_token(self, serial):
        return self.reads.pop(0) if len(self.reads) > 1 else self.reads[0]


def test_endless_contention_fails_closed_after_bounded_retries():
    token = rfc_token()
    fake = _Contended([token])           # the counter never seems to move: a pathology
    result = run(HotpVerifier(AsyncStore(fake, immediate_runner)).verify(ALICE, [token], RFC4226[1], 0.0))
    assert not result.ok and result.reason is Reason.ERROR
    assert fake.cas_calls == MAX_RACES


def test_a_token_removed_during_the_race_is_no_match():
    token = rfc_token()
    fake = _Contended([None])
    assert run(HotpVerifier(AsyncStore(fake, immediate_runner)).verify(ALICE, [token], RFC4226[1], 0.0)) is None


def test_a_counter_moved_but_not_past_the_code_is_retried_against_the_new_counter():
    token = rfc_token()
    moved = dataclasses.replace(token, counter=2)

    class _OnceMoved(_Contended):
        def advance_hotp(self, serial, expected, new_counter):
            self.cas_calls += 1
            self.last = (expected, new_counter)
            return expected == 2

    fake = _OnceMoved([moved])
    result = run(HotpVerifier(AsyncStore(fake, immediate_runner)).verify(ALICE, [token], RFC4226[4], 0.0))
    assert result.ok
    assert fake.last == (2, 5) and fake.cas_calls == 2
