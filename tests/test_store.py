"""Every Store method on both stores: the same behaviour from SQLite and PostgreSQL.

Each test runs once per kind (the ``store_kind`` fixture in conftest.py);
races between threads, store instances (servers sharing a store) and
processes are run for real against the database. What only one kind has (a
file's mode, a schema's search path) is tested in test_store_sqlite.py and
test_store_postgres.py.
"""

from __future__ import annotations

import inspect
import multiprocessing
import os

import pytest

from pg import StoreMaker, race, raw_rows
from radius_mfa.errors import AlreadyExistsError, NotFoundError, RefusedError, StoreError
from radius_mfa.model import (AppPassword, Attempt, SignIn, AuthRecord, Challenge, ClientSeen, Device, Pairing, Push, SentCode,
                              Token, User)
from radius_mfa.secretbox import KEY_BYTES, SecretBox, is_sealed
from radius_mfa.store.asyncstore import AsyncStore, immediate_runner
from radius_mfa.store.base import Store

NOW = 1_700_000_000.0
SECRET = "JBSWY3DPEHPK3PXP"


@pytest.fixture
def store(make_store: StoreMaker) -> Store:
    return make_store()


def totp(serial: str, user: str | None = None, **changes) -> Token:
    return Token(serial=serial, type="totp", secret=SECRET, user=user, created=NOW, **changes)


def hotp(serial: str, user: str | None = None, **changes) -> Token:
    return Token(serial=serial, type="hotp", secret="GEZDGNBVGY3TQOJQ", user=user, created=NOW, **changes)


# --- users -------------------------------------------------------------------


def test_added_user_reads_back(store: Store) -> None:
    user = User("alice", display_name="Alice A", email="alice@example.org", phone="+4915112345678",
                password_hash="$scrypt$x", created=NOW)
    store.add_user(user)
    assert store.get_user("alice") == user


def test_user_without_created_time_gets_one(store: Store) -> None:
    store.add_user(User("bob"))
    assert store.get_user("bob").created > 0


def test_unknown_user_is_none(store: Store) -> None:
    assert store.get_user("nobody") is None


def test_duplicate_user_is_refused(store: Store) -> None:
    store.add_user(User("alice", created=NOW))
    with pytest.raises(AlreadyExistsError, match="alice"):
        store.add_user(User("alice", email="other@example.org", created=NOW))
    assert store.get_user("alice").email is None


def test_empty_user_name_is_refused(store: Store) -> None:
    with pytest.raises(RefusedError):
        store.add_user(User(""))


def test_users_are_listed_by_name(store: Store) -> None:
    for name in ("carol", "alice", "bob"):
        store.add_user(User(name, created=NOW))
    assert [u.name for u in store.list_users()] == ["alice", "bob", "carol"]


def test_names_and_serials_sort_byte_by_byte(store: Store) -> None:
    for name in ("bob", "Zoe", "alice", "Émile", "_svc"):
        store.add_user(User(name, created=NOW))
    store.add_tokens([totp("b1"), totp("B2"), totp("a3")])
    assert [u.name for u in store.list_users()] == ["Zoe", "_svc", "alice", "bob", "Émile"]
    assert [t.serial for t in store.list_tokens()] == ["B2", "a3", "b1"]


def test_update_user_sets_fields_and_returns_the_record(store: Store) -> None:
    store.add_user(User("alice", created=NOW))
    updated = store.update_user("alice", email="a@example.org", disabled=True, password_hash="h")
    assert updated == User("alice", email="a@example.org", disabled=True, password_hash="h", created=NOW)
    assert store.get_user("alice") == updated
    assert store.update_user("alice", phone=None, disabled=False).disabled is False


def test_update_user_without_fields_returns_the_record(store: Store) -> None:
    store.add_user(User("alice", created=NOW))
    assert store.update_user("alice") == User("alice", created=NOW)


def test_update_unknown_user_is_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError, match="nobody"):
        store.update_user("nobody", email="x@example.org")
    with pytest.raises(NotFoundError):
        store.update_user("nobody")


def test_update_user_refuses_other_fields(store: Store) -> None:
    store.add_user(User("alice", created=NOW))
    with pytest.raises(TypeError, match="failures"):
        store.update_user("alice", failures=3)
    with pytest.raises(TypeError, match="name"):
        store.update_user("alice", name="mallory")


def test_remove_user_removes_their_tokens_only(store: Store) -> None:
    store.add_user(User("alice", created=NOW))
    store.add_user(User("bob", created=NOW))
    store.add_tokens([totp("A1", "alice"), hotp("A2", "alice"), totp("B1", "bob"), totp("FREE")])
    store.remove_user("alice")
    assert store.get_user("alice") is None
    assert [t.serial for t in store.list_tokens()] == ["B1", "FREE"]


def test_remove_unknown_user_is_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError):
        store.remove_user("nobody")


def test_reset_user_removes_factors_and_keeps_the_user(store: Store) -> None:
    store.add_user(User("alice", email="a@example.org", created=NOW))
    store.add_tokens([totp("A1", "alice"), hotp("A2", "alice"), totp("FREE")])
    assert store.reset_user("alice") == 2
    assert store.list_tokens("alice") == []
    assert store.get_user("alice").email == "a@example.org"
    assert store.get_token("FREE") is not None
    assert store.reset_user("alice") == 0


def test_reset_unknown_user_is_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError):
        store.reset_user("nobody")


# --- lockout -----------------------------------------------------------------


def test_failures_count_up_then_lock_and_start_again(store: Store) -> None:
    store.add_user(User("alice", created=NOW))
    assert store.record_failure("alice", NOW, limit=3, lock_seconds=900).failures == 1
    assert store.record_failure("alice", NOW, limit=3, lock_seconds=900).failures == 2
    locked = store.record_failure("alice", NOW + 5, limit=3, lock_seconds=900)
    assert locked.failures == 0
    assert locked.locked_until == NOW + 5 + 900
    assert store.get_user("alice") == locked


def test_limit_of_one_locks_at_the_first_failure(store: Store) -> None:
    store.add_user(User("alice", created=NOW))
    assert store.record_failure("alice", NOW, limit=1, lock_seconds=60).locked_until == NOW + 60


def test_failure_of_unknown_user_is_none(store: Store) -> None:
    assert store.record_failure("nobody", NOW, limit=3, lock_seconds=60) is None


def test_concurrent_failures_are_all_counted(make_store: StoreMaker) -> None:
    stores = [make_store() for _ in range(4)]
    stores[0].add_user(User("alice", created=NOW))
    race([lambda s=s: s.record_failure("alice", NOW, limit=100, lock_seconds=60) for s in stores for _ in range(3)])
    assert stores[0].get_user("alice").failures == 12


def test_attempts_are_counted_when_taken_and_the_last_one_locks(store: Store) -> None:
    store.add_user(User("alice", created=NOW))
    assert store.take_attempt("alice", NOW, limit=3, lock_seconds=900) == Attempt(1, None)
    assert store.take_attempt("alice", NOW, limit=3, lock_seconds=900) == Attempt(2, None)
    assert store.take_attempt("alice", NOW, limit=3, lock_seconds=900) == Attempt(3, NOW + 900)
    assert store.take_attempt("alice", NOW + 1, limit=3, lock_seconds=900) is None
    assert store.get_user("alice").locked_until == NOW + 900


def test_a_lock_that_ran_out_starts_a_new_count(store: Store) -> None:
    store.add_user(User("alice", created=NOW))
    for _ in range(2):
        store.take_attempt("alice", NOW, limit=2, lock_seconds=60)
    assert store.take_attempt("alice", NOW + 61, limit=2, lock_seconds=60) == Attempt(1, None)


def test_begin_sign_in_reads_the_user_and_tokens_and_takes_one_attempt(store: Store) -> None:
    store.add_user(User("alice", created=NOW))
    store.add_token(totp("T1", user="alice"))
    begun = store.begin_sign_in("alice", NOW, limit=3, lock_seconds=900)
    assert begun.user.name == "alice"
    assert [t.serial for t in begun.tokens] == ["T1"]
    assert begun.attempt == Attempt(1, None)
    assert store.get_user("alice").failures == 1
    assert store.begin_sign_in("nobody", NOW, limit=3, lock_seconds=900) == SignIn(None)


def test_begin_sign_in_takes_no_attempt_for_a_disabled_or_locked_user(store: Store) -> None:
    store.add_user(User("alice", created=NOW, disabled=True))
    assert store.begin_sign_in("alice", NOW, limit=3, lock_seconds=900).attempt is None
    store.add_user(User("bob", created=NOW))
    for _ in range(3):
        store.take_attempt("bob", NOW, limit=3, lock_seconds=900)
    begun = store.begin_sign_in("bob", NOW + 1, limit=3, lock_seconds=900)
    assert (begun.user.locked_until, begun.attempt) == (NOW + 900, None)
    assert store.get_user("bob").failures == 3          # nothing more counted


def test_attempt_of_unknown_user_is_none(store: Store) -> None:
    assert store.take_attempt("nobody", NOW, limit=3, lock_seconds=60) is None


def test_a_right_last_answer_lifts_the_lock_it_set(store: Store) -> None:
    store.add_user(User("alice", created=NOW))
    store.take_attempt("alice", NOW, limit=2, lock_seconds=60)
    last = store.take_attempt("alice", NOW, limit=2, lock_seconds=60)
    store.finish_attempt("alice", last, success=True)
    user = store.get_user("alice")
    assert (user.failures, user.locked_until) == (0, None)


def test_a_given_back_attempt_counts_one_less(store: Store) -> None:
    store.add_user(User("alice", created=NOW))
    store.take_attempt("alice", NOW, limit=5, lock_seconds=60)
    second = store.take_attempt("alice", NOW, limit=5, lock_seconds=60)
    store.finish_attempt("alice", second, success=False)
    assert store.get_user("alice").failures == 1


def test_finishing_an_attempt_keeps_a_lock_it_did_not_set(store: Store) -> None:
    store.add_user(User("alice", created=NOW))
    first = store.take_attempt("alice", NOW, limit=2, lock_seconds=60)
    store.take_attempt("alice", NOW, limit=2, lock_seconds=60)      # wrong, and locks
    store.finish_attempt("alice", first, success=False)
    assert store.get_user("alice").locked_until == NOW + 60


def test_burst_of_attempts_from_many_servers_lets_through_only_the_limit(make_store: StoreMaker) -> None:
    stores = [make_store() for _ in range(4)]
    stores[0].add_user(User("alice", created=NOW))
    results = race([lambda s=s: s.take_attempt("alice", NOW, limit=5, lock_seconds=60)
                    for s in stores for _ in range(10)])
    taken = [r for r in results if r is not None]
    assert sorted(a.failures for a in taken) == [1, 2, 3, 4, 5]
    assert [a.locked_until for a in taken if a.locked_until is not None] == [NOW + 60]


def test_clear_failures_keeps_the_lock(store: Store) -> None:
    store.add_user(User("alice", created=NOW))
    store.record_failure("alice", NOW, limit=2, lock_seconds=60)
    store.record_failure("alice", NOW, limit=2, lock_seconds=60)
    store.record_failure("alice", NOW, limit=2, lock_seconds=60)
    store.clear_failures("alice")
    user = store.get_user("alice")
    assert (user.failures, user.locked_until) == (0, NOW + 60)
    store.clear_failures("nobody")   # no error: nothing to clear


def test_unlock_lifts_the_lock(store: Store) -> None:
    store.add_user(User("alice", created=NOW))
    store.record_failure("alice", NOW, limit=1, lock_seconds=60)
    store.record_failure("alice", NOW, limit=5, lock_seconds=60)
    store.unlock("alice")
    user = store.get_user("alice")
    assert (user.failures, user.locked_until) == (0, None)
    with pytest.raises(NotFoundError):
        store.unlock("nobody")


# --- tokens ------------------------------------------------------------------


def test_added_token_reads_back(store: Store) -> None:
    store.add_user(User("alice", created=NOW))
    token = Token("T1", "totp", "JBSWY3DPEHPK3PXP", user="alice", digits=8, period=60,
                  algorithm="sha256", last_step=5, created=NOW)
    store.add_token(token)
    assert store.get_token("T1") == token
    assert store.get_token("nope") is None


def test_duplicate_serial_is_refused(store: Store) -> None:
    store.add_token(totp("T1"))
    with pytest.raises(AlreadyExistsError, match="T1"):
        store.add_token(hotp("T1"))
    assert store.get_token("T1").type == "totp"


def test_token_for_unknown_user_is_refused(store: Store) -> None:
    with pytest.raises(NotFoundError, match="ghost"):
        store.add_token(totp("T1", "ghost"))
    assert store.list_tokens() == []


@pytest.mark.parametrize(
    "token",
    [
        Token("", "totp", "JBSWY3DPEHPK3PXP"),
        Token("T1", "sms", "JBSWY3DPEHPK3PXP"),
        Token("T1", "totp", "JBSWY3DPEHPK3PXP", algorithm="md5"),
        Token("T1", "totp", "JBSWY3DPEHPK3PXP", digits=4),
        Token("T1", "totp", "JBSWY3DPEHPK3PXP", period=0),
        Token("T1", "hotp", "JBSWY3DPEHPK3PXP", counter=-1),
        Token("T1", "totp", ""),
    ],
)
def test_unusable_token_is_refused(store: Store, token: Token) -> None:
    with pytest.raises(RefusedError):
        store.add_token(token)
    assert store.list_tokens() == []


def test_add_tokens_adds_all(store: Store) -> None:
    assert store.add_tokens(hotp(f"H{i:05d}") for i in range(500)) == 500
    assert len(store.list_tokens()) == 500


def test_add_tokens_with_one_existing_serial_adds_nothing(store: Store) -> None:
    store.add_token(hotp("H00002"))
    batch = [hotp("H00001"), hotp("H00002"), hotp("H00003")]
    with pytest.raises(AlreadyExistsError, match="H00002"):
        store.add_tokens(batch)
    assert [t.serial for t in store.list_tokens()] == ["H00002"]


def test_add_tokens_with_a_serial_twice_adds_nothing(store: Store) -> None:
    with pytest.raises(AlreadyExistsError, match="H2"):
        store.add_tokens([hotp("H1"), hotp("H2"), hotp("H2")])
    assert store.list_tokens() == []


def test_add_tokens_with_one_bad_token_adds_nothing(store: Store) -> None:
    with pytest.raises(RefusedError, match="H2"):
        store.add_tokens([hotp("H1"), hotp("H2", algorithm="md5")])
    assert store.list_tokens() == []


def test_add_tokens_reads_its_input_as_it_writes_and_rolls_back_on_its_error(store: Store) -> None:
    written: list[bool] = []

    def tokens():
        for i in range(2500):
            if i in (0, 2400):      # this thread's transaction sees its own writes
                written.append(bool(store.existing_token_serials(["H00000"])))
            yield hotp(f"H{i:05d}")
        raise RefusedError("line 2501: bad row")

    with pytest.raises(RefusedError, match="line 2501"):
        store.add_tokens(tokens())
    assert written == [False, True]     # written as read, not gathered first
    assert store.list_tokens() == []


def test_existing_token_serials_in_chunks(store: Store) -> None:
    store.add_tokens(hotp(f"H{i}") for i in range(0, 1200, 2))
    asked = (f"H{i}" for i in range(1200))
    assert store.existing_token_serials(asked) == {f"H{i}" for i in range(0, 1200, 2)}
    assert store.existing_token_serials([]) == set()


def test_add_users_with_their_tokens(store: Store) -> None:
    rows = [(User(f"u{i}", email=f"u{i}@example.org"), [totp(f"T{i}", f"u{i}")] if i % 2 else [])
            for i in range(10)]
    assert store.add_users(iter(rows)) == 10
    assert len(store.list_users()) == 10
    assert [t.user for t in store.list_tokens()] == ["u1", "u3", "u5", "u7", "u9"]
    assert store.existing_user_names(["u0", "u9", "nobody"]) == {"u0", "u9"}


def test_add_users_with_one_existing_name_adds_nothing(store: Store) -> None:
    store.add_user(User("u2"))
    with pytest.raises(AlreadyExistsError, match="u2"):
        store.add_users((User(f"u{i}"), [totp(f"T{i}", f"u{i}")]) for i in range(4))
    assert [u.name for u in store.list_users()] == ["u2"]
    assert store.list_tokens() == []


def test_add_users_with_an_existing_serial_adds_nothing(store: Store) -> None:
    store.add_token(totp("T3"))
    with pytest.raises(AlreadyExistsError, match="T3"):
        store.add_users((User(f"u{i}"), [totp(f"T{i}", f"u{i}")]) for i in range(5))
    assert store.list_users() == []
    assert [t.serial for t in store.list_tokens()] == ["T3"]


def test_hardware_tokens_go_back_to_the_pool_with_their_counter(store: Store) -> None:
    for name in ("alice", "bob"):
        store.add_user(User(name))
    store.add_tokens([hotp("FOB1", "alice", hardware=True, counter=42), totp("APP1", "alice"),
                      totp("FOB2", "bob", hardware=True, last_step=99)])
    assert store.reset_user("alice") == 2
    assert store.get_token("APP1") is None
    fob = store.get_token("FOB1")
    assert (fob.user, fob.counter, fob.hardware) == (None, 42, True)
    store.remove_user("bob")
    fob = store.get_token("FOB2")
    assert (fob.user, fob.last_step) == (None, 99)
    store.assign_token("FOB1", "alice")          # handed out again


def test_totp_drift_is_set_with_the_step_it_used(store: Store) -> None:
    store.add_token(totp("T1"))
    assert store.set_totp_drift("T1", 5, 1000)
    token = store.get_token("T1")
    assert (token.drift, token.last_step) == (5, 1000)
    assert not store.set_totp_drift("T1", 4, 1000)     # that step is used already
    assert not store.advance_totp("T1", 999)
    assert store.get_token("T1").drift == 5


def test_tokens_are_listed_by_serial_and_by_user(store: Store) -> None:
    store.add_user(User("alice", created=NOW))
    store.add_tokens([totp("C", "alice"), totp("A"), totp("B", "alice")])
    assert [t.serial for t in store.list_tokens()] == ["A", "B", "C"]
    assert [t.serial for t in store.list_tokens("alice")] == ["B", "C"]
    assert store.list_tokens("nobody") == []


def test_assign_token(store: Store) -> None:
    store.add_user(User("alice", created=NOW))
    store.add_user(User("bob", created=NOW))
    store.add_token(hotp("H1"))
    store.assign_token("H1", "alice")
    assert store.get_token("H1").user == "alice"
    store.assign_token("H1", "alice")   # again: nothing changes
    with pytest.raises(RefusedError, match="alice"):
        store.assign_token("H1", "bob")
    with pytest.raises(NotFoundError, match="H9"):
        store.assign_token("H9", "alice")
    store.add_token(hotp("H2"))
    with pytest.raises(NotFoundError, match="carol"):
        store.assign_token("H2", "carol")
    assert store.get_token("H2").user is None


def test_remove_token(store: Store) -> None:
    store.add_token(totp("T1"))
    store.remove_token("T1")
    assert store.get_token("T1") is None
    with pytest.raises(NotFoundError, match="T1"):
        store.remove_token("T1")


def test_totp_step_is_accepted_once_and_only_forward(store: Store) -> None:
    store.add_token(totp("T1"))
    assert store.advance_totp("T1", 100)
    assert not store.advance_totp("T1", 100)     # replay
    assert not store.advance_totp("T1", 99)      # older code
    assert store.advance_totp("T1", 101)
    assert store.get_token("T1").last_step == 101
    assert not store.advance_totp("nope", 1)


def test_an_accepted_totp_step_settles_its_attempt_in_the_same_step(store: Store) -> None:
    """One store step takes the code's step and ends the user's run of
    failures (and a lock the attempt set); a replay settles nothing, so the
    attempt stays counted as the wrong answer it was."""
    store.add_user(User("alice", created=NOW))
    store.add_token(totp("T1", user="alice"))
    store.take_attempt("alice", NOW, limit=3, lock_seconds=900)
    store.take_attempt("alice", NOW, limit=3, lock_seconds=900)
    last = store.take_attempt("alice", NOW, limit=3, lock_seconds=900)
    assert last == Attempt(3, NOW + 900)
    assert store.advance_totp("T1", 100, settle=("alice", last))
    user = store.get_user("alice")
    assert (user.failures, user.locked_until) == (0, None)
    again = store.take_attempt("alice", NOW, limit=3, lock_seconds=900)
    assert not store.advance_totp("T1", 100, settle=("alice", again))     # replay
    assert store.get_user("alice").failures == 1


def test_totp_replay_is_refused_across_reopen(make_store: StoreMaker) -> None:
    first = make_store()
    first.add_token(totp("T1"))
    assert first.advance_totp("T1", 7)
    first.close()
    second = make_store()
    assert not second.advance_totp("T1", 7)
    second.close()


def test_hotp_counter_moves_only_from_the_expected_value(store: Store) -> None:
    store.add_token(hotp("H1", counter=5))
    assert not store.advance_hotp("H1", expected=4, new_counter=6)
    assert store.advance_hotp("H1", expected=5, new_counter=8)
    assert not store.advance_hotp("H1", expected=5, new_counter=8)
    assert store.get_token("H1").counter == 8
    assert not store.advance_hotp("nope", 0, 1)


def test_compare_and_set_respects_the_token_type(store: Store) -> None:
    store.add_tokens([totp("T1"), hotp("H1")])
    assert not store.advance_totp("H1", 1)
    assert not store.advance_hotp("T1", 0, 1)


def test_racing_totp_use_from_two_instances_has_one_winner(make_store: StoreMaker) -> None:
    one, two = make_store(), make_store()
    one.add_token(totp("T1"))
    for step in range(1, 51):
        results = race([lambda: one.advance_totp("T1", step), lambda: two.advance_totp("T1", step)])
        assert sorted(results) == [False, True]
    one.close()
    two.close()


def test_racing_hotp_use_from_threads_has_one_winner(store: Store) -> None:
    store.add_token(hotp("H1"))
    for counter in range(30):
        results = race([lambda: store.advance_hotp("H1", counter, counter + 1)] * 4)
        assert sorted(results) == [False, False, False, True]


def _advance_in_child(make_store: StoreMaker, step: int, barrier, results) -> None:
    store = make_store()
    barrier.wait()
    results.put(store.advance_totp("T1", step))
    store.close()


def test_racing_totp_use_from_processes_has_one_winner(make_store: StoreMaker) -> None:
    make_store().add_token(totp("T1"))
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(4), context.Queue()
    children = [context.Process(target=_advance_in_child, args=(make_store, 42, barrier, results)) for _ in range(4)]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=30) for _ in children]
    for child in children:
        child.join(timeout=30)
        assert child.exitcode == 0
    assert sorted(outcomes) == [False, False, False, True]


# --- challenges --------------------------------------------------------------


def challenge(digest: str = "ab" * 32, expires: float = NOW + 300) -> Challenge:
    return Challenge(state_digest=digest, user="alice", client="vpn", created=NOW, expires=expires,
                     factors=("totp", "sms"), data={"sent": {"sms": NOW}, "attempts": 1})


def test_challenge_is_taken_once(store: Store) -> None:
    store.put_challenge(challenge())
    taken = store.take_challenge("ab" * 32, NOW + 1)
    assert taken == Challenge(**{**challenge().__dict__, "used": NOW + 1})
    assert store.take_challenge("ab" * 32, NOW + 2) is None


def test_a_challenge_is_taken_with_its_users_record_in_one_step(store: Store) -> None:
    store.add_user(User("alice", created=NOW))
    store.add_token(totp("T1", user="alice"))
    store.put_challenge(challenge())
    taken, read = store.take_challenge_with_user("ab" * 32, NOW + 1, "alice")
    assert taken.user == "alice" and taken.used == NOW + 1
    assert read.user.name == "alice" and [t.serial for t in read.tokens] == ["T1"]
    assert read.attempt is None                          # nothing counted by reading
    again, read = store.take_challenge_with_user("ab" * 32, NOW + 2, "alice")
    assert again is None and read.user.name == "alice"   # single use all the same
    assert store.take_challenge_with_user("cd" * 32, NOW, "nobody") == (None, SignIn(None))


def test_used_challenge_is_kept_until_it_expires(store: Store) -> None:
    store.put_challenge(challenge())
    assert store.used_challenge("ab" * 32) is None
    store.take_challenge("ab" * 32, NOW + 1)
    assert store.used_challenge("ab" * 32).used == NOW + 1
    assert store.count_challenges(NOW) == 0
    store.purge_challenges(NOW + 301)
    assert store.used_challenge("ab" * 32) is None


def test_open_challenges_per_user_are_capped_oldest_first(store: Store) -> None:
    for i in range(5):
        store.put_challenge(Challenge(state_digest=f"{i:02x}" * 32, user="alice", client="vpn",
                                      created=NOW + i, expires=NOW + 300), max_open=3)
    store.put_challenge(Challenge(state_digest="ff" * 32, user="bob", client="vpn",
                                  created=NOW, expires=NOW + 300), max_open=3)
    assert [store.take_challenge(f"{i:02x}" * 32) is not None for i in range(5)] == \
        [False, False, True, True, True]
    assert store.take_challenge("ff" * 32) is not None


def test_unknown_challenge_is_none(store: Store) -> None:
    assert store.take_challenge("cd" * 32) is None


def test_expired_challenge_is_still_returned(store: Store) -> None:
    store.put_challenge(challenge(expires=NOW - 1))
    assert store.take_challenge("ab" * 32).expires == NOW - 1


def test_duplicate_challenge_is_refused(store: Store) -> None:
    store.put_challenge(challenge())
    with pytest.raises(AlreadyExistsError):
        store.put_challenge(challenge())


def test_challenge_data_must_be_json(store: Store) -> None:
    bad = Challenge("ef" * 32, "alice", "vpn", NOW, NOW + 300, data={"x": object()})
    with pytest.raises(StoreError):
        store.put_challenge(bad)


def test_purge_removes_only_expired_challenges(store: Store) -> None:
    store.put_challenge(challenge("01" * 32, expires=NOW - 10))
    store.put_challenge(challenge("02" * 32, expires=NOW - 1))
    store.put_challenge(challenge("03" * 32, expires=NOW + 1))
    assert store.purge_challenges(NOW) == 2
    assert store.take_challenge("03" * 32) is not None


def test_pending_challenges_are_counted(store: Store) -> None:
    store.put_challenge(challenge("01" * 32, expires=NOW - 1))
    store.put_challenge(challenge("02" * 32, expires=NOW))
    store.put_challenge(challenge("03" * 32, expires=NOW + 300))
    assert store.count_challenges(NOW) == 2
    assert store.count_challenges(NOW + 301) == 0


def test_racing_threads_take_a_challenge_once(store: Store) -> None:
    for i in range(50):
        digest = f"{i:064x}"
        store.put_challenge(challenge(digest))
        results = race([lambda: store.take_challenge(digest)] * 4)
        assert sum(r is not None for r in results) == 1


def test_racing_instances_take_a_challenge_once(make_store: StoreMaker) -> None:
    stores = [make_store() for _ in range(3)]
    for i in range(50):
        digest = f"{i:064x}"
        stores[0].put_challenge(challenge(digest))
        results = race([lambda s=s: s.take_challenge(digest) for s in stores])
        assert sum(r is not None for r in results) == 1


# --- sent codes ----------------------------------------------------------------


def sent(code_id: str, user: str = "alice", created: float = NOW, station: str | None = "10.0.0.7",
         **changes) -> SentCode:
    fields = dict(id=code_id, user=user, channel="sms", code_mac="ab" * 32, client="vpn",
                  calling_station_id=station, created=created, expires=created + 300)
    fields.update(changes)
    return SentCode(**fields)


def test_sent_code_reads_back_and_is_taken_once(store: Store) -> None:
    store.put_sent_code(sent("c1"))
    store.set_sent_code_provider("c1", "gateway-a")
    assert store.sent_codes_for("alice") == [sent("c1", provider="gateway-a")]
    assert store.take_sent_code("c1") is True
    assert store.take_sent_code("c1") is False
    assert store.sent_codes_for("alice") == []


def test_sent_codes_come_newest_first_expired_ones_too(store: Store) -> None:
    store.put_sent_code(sent("old", created=NOW - 1000))
    store.put_sent_code(sent("new"))
    store.put_sent_code(sent("bobs", user="bob"))
    assert [c.id for c in store.sent_codes_for("alice")] == ["new", "old"]


def test_duplicate_sent_code_id_is_refused(store: Store) -> None:
    store.put_sent_code(sent("c1"))
    with pytest.raises(AlreadyExistsError):
        store.put_sent_code(sent("c1"))


def test_pending_sent_code_matches_one_login_attempt(store: Store) -> None:
    store.put_sent_code(sent("c1"))
    store.put_sent_code(sent("nostation", station=None, created=NOW + 1))
    assert store.pending_sent_code("vpn", "alice", "10.0.0.7", NOW - 30, NOW + 5).id == "c1"
    assert store.pending_sent_code("vpn", "alice", "10.0.0.7", NOW - 30, NOW + 5, channel="sms").id == "c1"
    assert store.pending_sent_code("vpn", "alice", "10.0.0.7", NOW - 30, NOW + 5, channel="email") is None
    assert store.pending_sent_code("vpn", "alice", None, NOW - 30, NOW + 5).id == "nostation"
    assert store.pending_sent_code("wifi", "alice", "10.0.0.7", NOW - 30, NOW + 5) is None
    assert store.pending_sent_code("vpn", "bob", "10.0.0.7", NOW - 30, NOW + 5) is None
    assert store.pending_sent_code("vpn", "alice", "10.0.0.8", NOW - 30, NOW + 5) is None
    assert store.pending_sent_code("vpn", "alice", "10.0.0.7", NOW + 1, NOW + 5) is None   # sent too long ago
    assert store.pending_sent_code("vpn", "alice", "10.0.0.7", NOW - 30, NOW + 300) is None  # expired


def test_remove_and_purge_sent_codes(store: Store) -> None:
    store.put_sent_code(sent("c1"))
    store.put_sent_code(sent("c2", created=NOW - 400))
    store.remove_sent_code("c1")
    store.remove_sent_code("absent")
    assert store.purge_sent_codes(NOW) == 1
    assert store.sent_codes_for("alice") == []


def test_allow_send_counts_within_the_window(store: Store) -> None:
    assert [store.allow_send("alice", NOW + i, 5, 300) for i in range(6)] == [True] * 5 + [False]
    assert store.allow_send("bob", NOW, 5, 300) is True
    assert store.allow_send("alice", NOW + 299, 5, 300) is False
    assert store.allow_send("alice", NOW + 300, 5, 300) is True     # the first send left the window


def test_racing_instances_never_exceed_the_rate_limit(make_store: StoreMaker) -> None:
    stores = [make_store() for _ in range(4)]
    for user in ("alice", "bob", "carol", "dave", "erin"):
        results = race([lambda s=s: s.allow_send(user, NOW, 3, 300) for s in stores for _ in range(2)])
        assert sum(results) == 3


def test_racing_instances_take_a_sent_code_once(make_store: StoreMaker) -> None:
    stores = [make_store() for _ in range(3)]
    for i in range(30):
        stores[0].put_sent_code(sent(f"c{i}"))
        results = race([lambda s=s, i=i: s.take_sent_code(f"c{i}") for s in stores])
        assert sum(results) == 1


def test_reset_and_remove_user_drop_their_sent_codes(store: Store) -> None:
    for name in ("alice", "bob"):
        store.add_user(User(name, created=NOW))
        store.put_sent_code(sent(f"{name}-code", user=name))
        assert store.allow_send(name, NOW, 1, 300)
    store.reset_user("alice")
    store.remove_user("bob")
    assert store.sent_codes_for("alice") == store.sent_codes_for("bob") == []
    assert store.allow_send("alice", NOW, 1, 300) and store.allow_send("bob", NOW, 1, 300)


def test_the_sent_code_key_is_derived_and_shared_by_the_store_key(make_store: StoreMaker) -> None:
    first, second = make_store(), make_store()
    key = first.sent_code_key()
    assert len(key) == 32 and key == second.sent_code_key()
    box = SecretBox(bytes(32))
    assert box.derive(b"sent codes") != box.derive(b"other") and bytes(32) not in box.derive(b"sent codes")


# --- push devices and approvals ---------------------------------------------------


def pairing(digest: str = "ab" * 32, user: str = "alice", expires: float = NOW + 600) -> Pairing:
    return Pairing(token_digest=digest, user=user, created=NOW, expires=expires)


def device(device_id: str = "d0123456789abcdef", name: str = "phone", created: float = NOW) -> Device:
    return Device(id=device_id, user="", name=name, public_key="MCowBQYDK2VwAyEA" + "A" * 28, created=created)


def push(push_id: str, user: str = "alice", created: float = NOW, station: str | None = "10.0.0.7",
         **changes) -> Push:
    fields = dict(id=push_id, user=user, client="vpn", calling_station_id=station, user_ip=station,
                  created=created, expires=created + 60, number=42)
    fields.update(changes)
    return Push(**fields)


@pytest.fixture
def users(store: Store) -> Store:
    """The store with alice and bob in it."""
    for name in ("alice", "bob"):
        store.add_user(User(name, created=NOW))
    return store


def test_a_pairing_pairs_one_device_for_its_user_once(users: Store) -> None:
    users.add_pairing(pairing())
    paired = users.complete_pairing("ab" * 32, device(), NOW + 10)
    assert paired == Device("d0123456789abcdef", "alice", "phone", device().public_key, created=NOW)
    assert users.get_device("d0123456789abcdef") == paired
    assert users.complete_pairing("ab" * 32, device("d1111111111111111"), NOW + 11) is None
    assert users.list_devices() == [paired]


def test_a_device_without_a_created_time_is_paired_now(users: Store) -> None:
    users.add_pairing(pairing())
    assert users.complete_pairing("ab" * 32, device(created=0.0), NOW + 10).created == NOW + 10


def test_an_unknown_pairing_token_pairs_nothing(users: Store) -> None:
    assert users.complete_pairing("cd" * 32, device(), NOW) is None
    assert users.list_devices() == []


def test_an_expired_pairing_pairs_nothing_and_is_used_up(users: Store) -> None:
    users.add_pairing(pairing(expires=NOW + 600))
    assert users.complete_pairing("ab" * 32, device(), NOW + 600) is None
    assert users.complete_pairing("ab" * 32, device(), NOW) is None      # deleted: not even in time now
    assert users.list_devices() == []


def test_a_pairing_for_an_unknown_user_is_refused(users: Store) -> None:
    with pytest.raises(NotFoundError, match="nobody"):
        users.add_pairing(pairing(user="nobody"))


def test_a_pairing_token_is_kept_once(users: Store) -> None:
    users.add_pairing(pairing())
    with pytest.raises(AlreadyExistsError):
        users.add_pairing(pairing(user="bob"))


def test_a_taken_device_id_is_refused_and_the_pairing_is_used_up(users: Store) -> None:
    users.add_pairing(pairing("01" * 32))
    users.add_pairing(pairing("02" * 32, user="bob"))
    users.complete_pairing("01" * 32, device(), NOW)
    with pytest.raises(AlreadyExistsError):
        users.complete_pairing("02" * 32, device(), NOW)
    assert users.complete_pairing("02" * 32, device("d2222222222222222"), NOW) is None
    assert [d.user for d in users.list_devices()] == ["alice"]


def test_racing_threads_pair_one_device_per_token(users: Store) -> None:
    for i in range(20):
        digest = f"{i:064x}"
        users.add_pairing(pairing(digest))
        results = race([lambda n=n: users.complete_pairing(digest, device(f"d{i:02d}{n:014x}"), NOW)
                        for n in range(4)])
        assert sum(r is not None for r in results) == 1
    assert len(users.list_devices("alice")) == 20


def test_racing_instances_pair_one_device_per_token(make_store: StoreMaker) -> None:
    stores = [make_store() for _ in range(3)]
    stores[0].add_user(User("alice", created=NOW))
    for i in range(20):
        digest = f"{i:064x}"
        stores[0].add_pairing(pairing(digest))
        results = race([lambda s=s, n=n: s.complete_pairing(digest, device(f"d{i:02d}{n:014x}"), NOW)
                        for n, s in enumerate(stores)])
        assert sum(r is not None for r in results) == 1
    assert len(stores[1].list_devices("alice")) == 20


def test_a_user_removed_while_pairing_keeps_no_device(make_store: StoreMaker) -> None:
    one, two = make_store(), make_store()
    for i in range(20):
        name = f"user{i}"
        one.add_user(User(name, created=NOW))
        one.add_pairing(pairing(f"{i:064x}", user=name))
        race([lambda: one.remove_user(name),
              lambda: two.complete_pairing(f"{i:064x}", device(f"d{i:016x}"), NOW)])
    assert one.list_devices() == [] and one.list_users() == []


def test_devices_are_listed_per_user_oldest_first(users: Store) -> None:
    for digest, user, device_id, created in (("01", "alice", "d3", NOW + 3), ("02", "bob", "d2", NOW + 2),
                                             ("03", "alice", "d1", NOW + 1)):
        users.add_pairing(pairing(digest * 32, user=user))
        users.complete_pairing(digest * 32, device(device_id, created=created), NOW)
    assert [d.id for d in users.list_devices("alice")] == ["d1", "d3"]
    assert [d.id for d in users.list_devices("bob")] == ["d2"]
    assert [d.id for d in users.list_devices()] == ["d1", "d2", "d3"]
    assert users.list_devices("carol") == []
    assert users.get_device("d9") is None


def test_a_device_is_removed_by_its_own_user_only(users: Store) -> None:
    users.add_pairing(pairing())
    users.complete_pairing("ab" * 32, device("d1"), NOW)
    with pytest.raises(NotFoundError, match="d1"):
        users.remove_device("bob", "d1")
    with pytest.raises(NotFoundError):
        users.remove_device("alice", "d9")
    assert users.get_device("d1") is not None
    users.remove_device("alice", "d1")
    assert users.get_device("d1") is None


def test_a_touched_device_remembers_its_latest_request(users: Store) -> None:
    users.add_pairing(pairing())
    users.complete_pairing("ab" * 32, device("d1"), NOW)
    assert users.get_device("d1").last_seen is None
    users.touch_device("d1", NOW + 20)
    users.touch_device("d1", NOW + 10)     # a late report
    assert users.get_device("d1").last_seen == NOW + 20
    users.touch_device("d9", NOW)          # unknown: nothing happens


def test_a_push_reads_back(store: Store) -> None:
    stored = push("p1", station=None, number=None)
    store.put_push(stored)
    assert store.get_push("p1") == stored
    assert store.get_push("p9") is None


def test_a_taken_push_id_is_refused(store: Store) -> None:
    store.put_push(push("p1"))
    with pytest.raises(AlreadyExistsError):
        store.put_push(push("p1", user="bob"))
    assert store.get_push("p1").user == "alice"


def test_a_push_with_an_unknown_status_is_refused(store: Store) -> None:
    with pytest.raises(RefusedError, match="status"):
        store.put_push(push("p1", status="maybe"))
    assert store.get_push("p1") is None


def test_pushes_by_ids_returns_those_that_exist(store: Store) -> None:
    for push_id in ("p1", "p2", "p3"):
        store.put_push(push(push_id))
    assert sorted(p.id for p in store.pushes_by_ids(["p3", "p9", "p1", "p1"])) == ["p1", "p3"]
    assert store.pushes_by_ids([]) == []
    many = [f"x{i}" for i in range(1200)] + ["p2"]
    assert [p.id for p in store.pushes_by_ids(many)] == ["p2"]


def test_pending_pushes_are_the_users_unanswered_unexpired_ones_oldest_first(store: Store) -> None:
    store.put_push(push("later", created=NOW + 5))
    store.put_push(push("first", created=NOW))
    store.put_push(push("answered", created=NOW + 1))
    store.put_push(push("expired", created=NOW - 100))
    store.put_push(push("bobs", user="bob"))
    store.answer_push("answered", "denied", "d1", NOW + 2)
    assert [p.id for p in store.pending_pushes("alice", NOW + 10)] == ["first", "later"]
    assert [p.id for p in store.pending_pushes("alice", NOW + 60)] == ["later"]     # "first" expired at NOW + 60
    assert store.pending_pushes("carol", NOW) == []


def test_answer_push_sets_the_answer_once(store: Store) -> None:
    store.put_push(push("p1"))
    answered = store.answer_push("p1", "approved", "d1", NOW + 5)
    assert answered == push("p1", status="approved", device="d1", answered=NOW + 5)
    assert store.get_push("p1") == answered
    assert store.answer_push("p1", "denied", "d2", NOW + 6) is None
    assert store.get_push("p1") == answered


@pytest.mark.parametrize("status", ["approved", "denied", "fraud", "wrong_number"])
def test_each_answer_is_recorded(store: Store, status: str) -> None:
    store.put_push(push("p1"))
    assert store.answer_push("p1", status, "d1", NOW).status == status


def test_an_expired_or_unknown_push_takes_no_answer(store: Store) -> None:
    store.put_push(push("p1"))
    assert store.answer_push("p1", "approved", "d1", NOW + 60) is None     # expires at NOW + 60
    assert store.get_push("p1").status == "pending"
    assert store.answer_push("p9", "approved", "d1", NOW) is None


@pytest.mark.parametrize("status", ["pending", "used", "yes"])
def test_an_answer_a_device_cannot_give_is_refused(store: Store, status: str) -> None:
    store.put_push(push("p1"))
    with pytest.raises(RefusedError):
        store.answer_push("p1", status, "d1", NOW)
    assert store.get_push("p1").status == "pending"


def test_racing_answers_from_instances_have_one_winner(make_store: StoreMaker) -> None:
    stores = [make_store() for _ in range(4)]
    for i in range(30):
        stores[0].put_push(push(f"p{i}"))
        answers = ["approved", "denied", "fraud", "wrong_number"]
        results = race([lambda s=s, a=a: s.answer_push(f"p{i}", a, "d1", NOW) for s, a in zip(stores, answers)])
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert stores[1].get_push(f"p{i}") == winners[0]


def test_an_approved_push_is_used_once(store: Store) -> None:
    store.put_push(push("p1"))
    assert store.use_push("p1") is False           # pending: not approved yet
    store.answer_push("p1", "approved", "d1", NOW)
    assert store.use_push("p1") is True
    assert store.use_push("p1") is False
    assert store.get_push("p1").status == "used"
    store.put_push(push("p2"))
    store.answer_push("p2", "denied", "d1", NOW)
    assert store.use_push("p2") is False
    assert store.use_push("p9") is False


def test_racing_instances_use_an_approved_push_once(make_store: StoreMaker) -> None:
    stores = [make_store() for _ in range(3)]
    for i in range(30):
        stores[0].put_push(push(f"p{i}"))
        stores[0].answer_push(f"p{i}", "approved", "d1", NOW)
        assert sum(race([lambda s=s: s.use_push(f"p{i}") for s in stores])) == 1


def test_joinable_push_matches_one_login_attempt(store: Store) -> None:
    store.put_push(push("p1"))
    store.put_push(push("nostation", station=None, created=NOW + 1))
    assert store.joinable_push("vpn", "alice", "10.0.0.7", NOW - 30, NOW + 5).id == "p1"
    assert store.joinable_push("vpn", "alice", None, NOW - 30, NOW + 5).id == "nostation"
    assert store.joinable_push("wifi", "alice", "10.0.0.7", NOW - 30, NOW + 5) is None
    assert store.joinable_push("vpn", "bob", "10.0.0.7", NOW - 30, NOW + 5) is None
    assert store.joinable_push("vpn", "alice", "10.0.0.8", NOW - 30, NOW + 5) is None
    assert store.joinable_push("vpn", "alice", "10.0.0.7", NOW + 1, NOW + 5) is None    # started too long ago
    assert store.joinable_push("vpn", "alice", "10.0.0.7", NOW - 30, NOW + 60) is None  # expired


def test_joinable_push_is_the_newest_pending_or_approved_one(store: Store) -> None:
    store.put_push(push("old", created=NOW))
    store.put_push(push("new", created=NOW + 2))
    assert store.joinable_push("vpn", "alice", "10.0.0.7", NOW - 30, NOW + 5).id == "new"
    store.answer_push("new", "approved", "d1", NOW + 3)
    assert store.joinable_push("vpn", "alice", "10.0.0.7", NOW - 30, NOW + 5).id == "new"
    store.use_push("new")
    assert store.joinable_push("vpn", "alice", "10.0.0.7", NOW - 30, NOW + 5).id == "old"
    for status in ("denied", "fraud", "wrong_number"):
        store.put_push(push(status, created=NOW + 4))
        store.answer_push(status, status, "d1", NOW + 4)
        assert store.joinable_push("vpn", "alice", "10.0.0.7", NOW - 30, NOW + 5).id == "old"


def test_purge_removes_long_expired_pushes_and_expired_pairings(users: Store) -> None:
    users.put_push(push("gone", created=NOW - 1000))          # expired at NOW - 940
    users.put_push(push("kept", created=NOW - 900))           # expired at NOW - 840
    users.put_push(push("live"))
    users.add_pairing(pairing("01" * 32, expires=NOW - 1))
    users.add_pairing(pairing("02" * 32, expires=NOW + 1))
    assert users.purge_pushes(NOW, keep_seconds=900) == 1
    assert sorted(p.id for p in users.pushes_by_ids(["gone", "kept", "live"])) == ["kept", "live"]
    assert users.complete_pairing("01" * 32, device("d1"), NOW - 2) is None     # purged
    assert users.complete_pairing("02" * 32, device("d2"), NOW) is not None
    assert users.purge_pushes(NOW + 86400 + 61) == 2


def test_reset_and_remove_user_drop_their_devices_pairings_and_pushes(users: Store) -> None:
    users.add_user(User("carol", created=NOW))
    for i, name in enumerate(("alice", "bob", "carol")):
        users.add_pairing(pairing(f"{i}1" * 32, user=name))
        users.complete_pairing(f"{i}1" * 32, device(f"d-{name}"), NOW)
        users.add_pairing(pairing(f"{i}2" * 32, user=name))
        users.put_push(push(f"p-{name}", user=name))
    assert users.reset_user("alice") == 0
    users.remove_user("bob")
    assert [d.id for d in users.list_devices()] == ["d-carol"]
    assert [p.id for p in users.pushes_by_ids(["p-alice", "p-bob", "p-carol"])] == ["p-carol"]
    assert users.complete_pairing("02" * 32, device("d-alice-2"), NOW) is None
    assert users.complete_pairing("12" * 32, device("d-bob-2"), NOW) is None
    assert users.complete_pairing("22" * 32, device("d-carol-2"), NOW) is not None
    assert users.get_user("alice") is not None


def test_allow_send_counts_codes_and_pushes_apart(store: Store) -> None:
    assert [store.allow_send("alice", NOW + i, 2, 300) for i in range(3)] == [True, True, False]
    assert [store.allow_send("alice", NOW + i, 2, 300, kind="push") for i in range(3)] == [True, True, False]
    assert store.allow_send("alice", NOW + 300, 2, 300, kind="push") is True   # its first send left the window
    assert store.allow_send("alice", NOW + 299, 2, 300) is False


def test_allow_send_refuses_a_kind_nobody_counts(store: Store) -> None:
    with pytest.raises(RefusedError, match="sms"):
        store.allow_send("alice", NOW, 2, 300, kind="sms")


# --- clients -----------------------------------------------------------------


def test_client_requests_are_counted(store: Store) -> None:
    store.note_client_request("vpn", NOW, with_message_authenticator=True)
    store.note_client_request("vpn", NOW + 10, with_message_authenticator=False, count=3)
    store.note_client_request("wifi", NOW + 20, with_message_authenticator=False)
    assert store.list_clients_seen() == [
        ClientSeen("vpn", requests=4, last_seen=NOW + 10, last_with_message_authenticator=NOW,
                   last_without_message_authenticator=NOW + 10, first_with_message_authenticator=NOW),
        ClientSeen("wifi", requests=1, last_seen=NOW + 20, last_with_message_authenticator=None,
                   last_without_message_authenticator=NOW + 20),
    ]


def test_late_client_report_does_not_move_times_back(store: Store) -> None:
    store.note_client_request("vpn", NOW + 10, with_message_authenticator=True)
    store.note_client_request("vpn", NOW, with_message_authenticator=True)
    seen = store.list_clients_seen()[0]
    assert (seen.requests, seen.last_seen, seen.last_with_message_authenticator) == (2, NOW + 10, NOW + 10)


def test_concurrent_client_counts_add_up(make_store: StoreMaker) -> None:
    stores = [make_store() for _ in range(3)]
    race([lambda s=s: [s.note_client_request("vpn", NOW, True) for _ in range(20)] for s in stores])
    assert stores[0].list_clients_seen()[0].requests == 60


def test_drops_are_counted_per_client_and_reason(store: Store) -> None:
    store.note_client_request("vpn", NOW, with_message_authenticator=True)
    store.note_client_drops([("vpn", "bad_message_authenticator", 2, NOW + 5),
                             ("pam", "missing_message_authenticator", 3, NOW + 7)])
    store.note_client_drops([("pam", "missing_message_authenticator", 1, NOW + 6)])
    seen = {c.name: c for c in store.list_clients_seen()}
    assert seen["vpn"].requests == 1
    assert seen["vpn"].drops == (("bad_message_authenticator", 2),)
    assert seen["pam"].requests == 0                      # never answered, still listed
    assert seen["pam"].drops == (("missing_message_authenticator", 4),)
    assert seen["pam"].last_drop == NOW + 7


# --- authentication log ------------------------------------------------------


def test_auth_records_filter_and_order(store: Store) -> None:
    records = [
        AuthRecord(NOW + 2, {"user": "bob", "result": "reject", "reason": "bad_code"}),
        AuthRecord(NOW, {"user": "alice", "result": "accept", "factor": "totp"}),
        AuthRecord(NOW + 1, {"user": "alice", "result": "challenge"}),
        AuthRecord(NOW + 3, {"result": "reject", "reason": "unknown_user", "user": None}),
    ]
    for record in records:
        store.add_auth_record(record)
    assert [r.time for r in store.auth_records()] == [NOW, NOW + 1, NOW + 2, NOW + 3]
    assert store.auth_records(user="alice") == [records[1], records[2]]
    assert store.auth_records(since=NOW + 1, user="alice") == [records[2]]
    assert [r.time for r in store.auth_records(since=NOW + 2)] == [NOW + 2, NOW + 3]


def test_auth_records_in_one_batch_keep_their_order_and_user(store: Store) -> None:
    batch = [AuthRecord(NOW, {"user": f"u{i}", "result": "accept"}) for i in range(250)]
    store.add_auth_records(batch)
    assert store.auth_records() == batch
    assert store.auth_records(user="u7") == [batch[7]]


def test_a_batch_with_a_record_that_cannot_be_stored_stores_none(store: Store) -> None:
    batch = [AuthRecord(NOW, {"user": "a"}), AuthRecord(NOW, {"user": "b", "bad": object()})]
    with pytest.raises(StoreError, match="cannot be stored"):
        store.add_auth_records(batch)
    assert store.auth_records() == []


# --- secrets at rest, the key ---------------------------------------------------


def test_no_token_secret_is_in_clear_in_the_database(store: Store) -> None:
    store.add_user(User("alice"))
    store.add_token(totp("SOFT1", "alice"))
    store.add_tokens(totp(f"HW{i}") for i in range(50))
    secrets = [row[0] for row in raw_rows(store, "SELECT secret FROM tokens")]
    assert len(secrets) == 51 and all(is_sealed(s) and SECRET not in s for s in secrets)
    assert {t.secret for t in store.list_tokens()} == {SECRET}


def test_a_secret_moved_to_another_row_does_not_open(store: Store) -> None:
    store.add_tokens([totp("T1"), Token(serial="T2", type="totp", secret="JBSWY3DPEHPK3PXPJBSWY3DP")])
    conn = store._conn()
    conn.execute("UPDATE tokens SET secret = (SELECT secret FROM tokens WHERE serial = 'T1') WHERE serial = 'T2'")
    with pytest.raises(StoreError, match="token T2"):
        store.get_token("T2")


def test_a_store_refuses_another_key_file(make_store: StoreMaker) -> None:
    make_store().add_token(totp("T1"))
    with pytest.raises(StoreError, match="not the key of the store"):
        make_store.with_box(SecretBox(os.urandom(KEY_BYTES), source="other.key"))


# --- connections -----------------------------------------------------------------


def test_ping_answers(store: Store) -> None:
    store.ping()


def test_closed_store_refuses_calls(make_store: StoreMaker) -> None:
    store = make_store()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get_user("alice")
    store.close()   # twice is fine


def test_close_from_another_thread_is_safe(make_store: StoreMaker) -> None:
    store = make_store()
    race([lambda: store.get_user("x")] * 3)   # connections in other threads
    store.close()
    with pytest.raises(StoreError):
        store.list_users()


def test_each_thread_has_its_own_connection(store: Store) -> None:
    mine = store._conn()
    theirs = race([store._conn])[0]
    assert mine is not theirs
    assert store._conn() is mine


def test_forked_child_opens_its_own_connection(store: Store) -> None:
    store.add_user(User("alice", created=NOW))
    context = multiprocessing.get_context("fork")
    results = context.Queue()

    def child() -> None:
        store.record_failure("alice", NOW, limit=10, lock_seconds=60)
        results.put(store.get_user("alice").failures)

    process = context.Process(target=child)
    process.start()
    assert results.get(timeout=30) == 1
    process.join(timeout=30)
    assert process.exitcode == 0
    assert store.get_user("alice").failures == 1


# --- renaming (names made canonical) -------------------------------------------


def test_rename_moves_the_user_and_everything_that_refers_to_them(store: Store) -> None:
    store.add_user(User("Alice", phone="+4915112345678", created=NOW))
    store.add_token(totp("T1", "Alice"))
    store.add_pairing(Pairing(token_digest="ab" * 32, user="Alice", created=NOW, expires=NOW + 60))
    store.rename_user("Alice", "alice")
    assert store.get_user("Alice") is None
    assert store.get_user("alice").phone == "+4915112345678"
    assert store.get_token("T1").user == "alice"
    assert store.get_pairing("ab" * 32).user == "alice"


def test_rename_onto_a_taken_name_is_refused_and_changes_nothing(store: Store) -> None:
    store.add_user(User("Alice", created=NOW))
    store.add_user(User("alice", created=NOW))
    store.add_token(totp("T1", "Alice"))
    with pytest.raises(AlreadyExistsError):
        store.rename_user("Alice", "alice")
    assert store.get_token("T1").user == "Alice"


def test_rename_of_an_unknown_user_is_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError):
        store.rename_user("nobody", "somebody")


# --- app passwords -------------------------------------------------------------


def app_password(ident: str, user: str = "alice", created: float = NOW, label: str | None = "mail") -> AppPassword:
    return AppPassword(id=ident, user=user, label=label, password_hash=f"$scrypt${ident}", created=created)


def test_app_passwords_read_back_oldest_first_with_their_hashes(users: Store) -> None:
    users.add_app_password(app_password("a2", created=NOW + 1, label=None))
    users.add_app_password(app_password("a1"))
    users.add_app_password(app_password("b1", user="bob"))
    assert users.list_app_passwords("alice") == [app_password("a1"), app_password("a2", created=NOW + 1, label=None)]
    assert [ap.id for ap in users.list_app_passwords("bob")] == ["b1"]
    assert users.list_app_passwords("carol") == []


def test_app_password_of_an_unknown_user_is_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError, match="nobody"):
        store.add_app_password(app_password("x1", user="nobody"))


def test_app_password_id_is_taken_once(users: Store) -> None:
    users.add_app_password(app_password("a1"))
    with pytest.raises(AlreadyExistsError):
        users.add_app_password(app_password("a1", user="bob"))


def test_app_password_is_deleted_only_by_its_user(users: Store) -> None:
    users.add_app_password(app_password("a1"))
    with pytest.raises(NotFoundError):
        users.delete_app_password("bob", "a1")
    with pytest.raises(NotFoundError):
        users.delete_app_password("alice", "a9")
    users.delete_app_password("alice", "a1")
    assert users.list_app_passwords("alice") == []


def test_delete_all_app_passwords_of_one_user(users: Store) -> None:
    for ident in ("a1", "a2"):
        users.add_app_password(app_password(ident))
    users.add_app_password(app_password("b1", user="bob"))
    assert users.delete_app_passwords("alice") == 2
    assert users.delete_app_passwords("alice") == 0
    assert [ap.id for ap in users.list_app_passwords("bob")] == ["b1"]


def test_app_password_last_use_only_moves_forward(users: Store) -> None:
    users.add_app_password(app_password("a1"))
    users.touch_app_password("a1", NOW + 10)
    users.touch_app_password("a1", NOW + 5)
    assert users.list_app_passwords("alice")[0].last_used == NOW + 10
    users.touch_app_password("unknown", NOW)


def test_reset_and_remove_user_drop_their_app_passwords(users: Store) -> None:
    users.add_user(User("carol", created=NOW))
    for name in ("alice", "bob", "carol"):
        users.add_app_password(app_password(f"ap-{name}", user=name))
    users.reset_user("alice")
    users.remove_user("bob")
    assert users.list_app_passwords("alice") == []
    assert users.list_app_passwords("bob") == []
    assert [ap.id for ap in users.list_app_passwords("carol")] == ["ap-carol"]
    users.add_user(User("bob", created=NOW))
    assert users.list_app_passwords("bob") == []


def test_rename_moves_the_app_passwords(users: Store) -> None:
    users.add_app_password(app_password("a1"))
    users.rename_user("alice", "alicia")
    assert [(ap.id, ap.user) for ap in users.list_app_passwords("alicia")] == [("a1", "alicia")]
    assert users.list_app_passwords("alice") == []


# --- the async facade ----------------------------------------------------------


def _public_methods(cls) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(value) for name, value in vars(cls).items()
            if callable(value) and not name.startswith("_")}


def test_async_store_has_every_store_method_with_its_parameters() -> None:
    theirs = _public_methods(Store)
    ours = _public_methods(AsyncStore)
    assert sorted(ours) == sorted(theirs)
    for name, signature in theirs.items():
        assert list(ours[name].parameters) == list(signature.parameters), name


def test_async_store_passes_each_call_through(users: Store) -> None:
    failed: list[str] = []
    facade = AsyncStore(users, immediate_runner, on_error=failed.append)
    results: list = []
    facade.list_tokens().addCallback(results.append)
    facade.allow_send("alice", NOW, 1, 60, kind="push").addCallback(results.append)
    facade.allow_send("alice", NOW, 1, 60, "push").addCallback(results.append)
    facade.update_user("alice", email=None).addCallback(results.append)
    assert results == [[], True, False, users.get_user("alice")]
    users.close()
    facade.get_user("alice").addErrback(lambda failure: results.append(failure.type))
    assert results[-1] is StoreError and failed == ["get_user"]


def test_the_cap_on_open_challenges_holds_when_servers_open_them_at_once(make_store: StoreMaker) -> None:
    stores = [make_store() for _ in range(4)]
    race([lambda s=s, i=i, j=j: s.put_challenge(
              Challenge(state_digest=f"{i:02x}{j:02x}" * 16, user="alice", client="vpn",
                        created=NOW + i * 10 + j, expires=NOW + 300), max_open=3)
          for i, s in enumerate(stores) for j in range(5)])
    assert stores[0].count_challenges(NOW) == 3
