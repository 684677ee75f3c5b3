"""The local backend's password checks: a timing floor at the cost of the
configured hash, weak carried-over hashes replaced after a right password, and
checks that waited past their deadline dropped unrun (a flood costs no more
than the NAS waits)."""

from __future__ import annotations

import base64
import hashlib
import time

import pytest
import structlog
from twisted.internet import defer, reactor, task
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest

from helpers import FakeClock, open_sqlite, run
from test_passwords import count_derivations
from radius_mfa import passwords
from radius_mfa.config import PasswordsConfig
from radius_mfa.errors import StoreError
from radius_mfa.model import User
from radius_mfa.primary import local
from radius_mfa.primary.base import PrimaryRequest
from radius_mfa.primary.local import LocalBackend
from radius_mfa.store.asyncstore import immediate_runner, thread_runner
from radius_mfa.verdicts import Reason

SCRYPT = PasswordsConfig()
PBKDF2 = PasswordsConfig(scheme="pbkdf2-sha256", pbkdf2_iterations=20_000)
PASSWORD = b"correct horse"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def pbkdf2_hash(password: bytes, iterations: int) -> str:
    """Made independently of passwords.py, as another system would."""
    salt = b"carried-over-salt"
    key = hashlib.pbkdf2_hmac("sha256", password, salt, iterations, 32)
    return f"$pbkdf2-sha256${iterations}${b64(salt)}${b64(key)}"


def scrypt_hash(password: bytes, log2_n: int) -> str:
    salt = b"carried-over-salt"
    key = hashlib.scrypt(password, salt=salt, n=2**log2_n, r=8, p=1, dklen=32)
    return f"$scrypt$ln={log2_n},r=8,p=1${b64(salt)}${b64(key)}"


def request(user: User | None, password: bytes = PASSWORD, **fields) -> PrimaryRequest:
    return PrimaryRequest(user_name=user.name if user else "mallory", user=user,
                          password=password, **fields)


def configured_cost(config: PasswordsConfig) -> tuple[str, int]:
    if config.scheme == "scrypt":
        return ("scrypt", passwords.SCRYPT_LOG2_N)
    return ("pbkdf2-sha256", config.pbkdf2_iterations)


@pytest.fixture
def derivations(monkeypatch) -> list[tuple[str, int]]:
    """Every key derivation run, as (scheme, cost): hash operations counted."""
    return count_derivations(monkeypatch)


# Every way a password check can go: what the user's record holds.
CASES = {
    "unknown user": None,
    "no password": User(name="alice"),
    "current hash": "current",
    "weak pbkdf2 carried over": pbkdf2_hash(PASSWORD, 1_000),
    "weak scrypt carried over": scrypt_hash(PASSWORD, 10),
    "pbkdf2 of high cost carried over": pbkdf2_hash(PASSWORD, 30_000),
    "malformed hash": "$pbkdf2-sha256$1000$not*base64$AAAA",
}


def case_user(case: str, config: PasswordsConfig) -> User | None:
    value = CASES[case]
    if value is None or isinstance(value, User):
        return value
    if value == "current":
        value = passwords.hash_password(PASSWORD, config)
    return User(name="alice", password_hash=value)


def check_once(backend: LocalBackend, case: str, config: PasswordsConfig, wrong: bool) -> None:
    if case == "locked or disabled (equalize)":
        run(backend.equalize(PASSWORD))
        return
    run(backend.authenticate(request(case_user(case, config), b"wrong" if wrong else PASSWORD)))


ALL_CASES = [*CASES, "locked or disabled (equalize)"]


# --- the timing floor: counted hash operations -------------------------------------


@pytest.mark.parametrize("config", [SCRYPT, PBKDF2], ids=["scrypt", "pbkdf2"])
@pytest.mark.parametrize("case", ALL_CASES)
@pytest.mark.parametrize("wrong", [False, True], ids=["right", "wrong"])
def test_every_password_check_runs_the_configured_hash(derivations, config, case, wrong) -> None:
    backend = LocalBackend(immediate_runner, config)
    check_once(backend, case, config, wrong)
    scheme, cost = configured_cost(config)
    assert any(s == scheme and c >= cost for s, c in derivations), derivations


def test_a_weak_carried_over_hash_is_verified_then_padded(derivations) -> None:
    backend = LocalBackend(immediate_runner, SCRYPT)
    user = User(name="alice", password_hash=pbkdf2_hash(PASSWORD, 1_000))
    assert run(backend.authenticate(request(user))).ok
    assert not run(backend.authenticate(request(user, b"wrong"))).ok
    assert derivations == [("pbkdf2-sha256", 1_000), ("scrypt", 14)] * 2


def test_a_current_hash_costs_one_check_only(derivations) -> None:
    backend = LocalBackend(immediate_runner, PBKDF2)
    user = User(name="alice", password_hash=passwords.hash_password(PASSWORD, PBKDF2))
    derivations.clear()
    assert run(backend.authenticate(request(user))).ok
    assert derivations == [("pbkdf2-sha256", 20_000)]


# --- the timing floor: wall time, against a measured configured check ----------------


def test_known_users_with_weak_imported_hashes_cannot_be_told_apart_by_timing() -> None:
    # The floor is one configured check: measured here (the fastest of three,
    # so that a busy machine does not inflate it), and every path must take at
    # least half of it. Without the floor a 1,000-iteration PBKDF2 hash or an
    # unknown user with a cheap dummy answers in well under a tenth.
    floor = min(_seconds(lambda: passwords.verify_dummy(PASSWORD, SCRYPT)) for _ in range(3))
    backend = LocalBackend(immediate_runner, SCRYPT)
    for case in ALL_CASES:
        for wrong in (False, True):
            spent = _seconds(lambda: check_once(backend, case, SCRYPT, wrong))
            assert spent >= 0.5 * floor, (case, wrong, spent, floor)


def _seconds(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def test_an_unusable_passwords_section_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="passwords.scheme"):
        LocalBackend(immediate_runner, PasswordsConfig(scheme="md5"))


# --- rehash after a right password -------------------------------------------------


@pytest.fixture
def store(tmp_path):
    store = open_sqlite(tmp_path / "rehash.db")
    yield store
    store.close()


def counting_runner(names: list[str]):
    def runner(fn, *args):
        names.append(fn.__name__)
        return immediate_runner(fn, *args)
    return runner


def test_a_weak_hash_is_replaced_after_a_successful_sign_in(store) -> None:
    weak = pbkdf2_hash(PASSWORD, 1_000)
    store.add_user(User(name="alice", password_hash=weak))
    names: list[str] = []
    backend = LocalBackend(counting_runner(names), SCRYPT, store=store)

    assert run(backend.authenticate(request(store.get_user("alice")))).ok

    new = store.get_user("alice").password_hash
    assert new.startswith("$scrypt$ln=14,r=8,p=1$")
    assert passwords.verify_password(PASSWORD, new)
    assert not passwords.needs_rehash(new, SCRYPT)
    assert names == ["verify_padded", "_replace_hash"]     # both in the hash pool
    # the next sign-in checks the new hash, with nothing to pad or replace
    names.clear()
    assert run(backend.authenticate(request(store.get_user("alice")))).ok
    assert names == ["verify_password"]


def test_fewer_iterations_than_configured_are_rehashed_to_the_configured_iterations(store) -> None:
    config = PasswordsConfig(scheme="pbkdf2-sha256", pbkdf2_iterations=5_000)
    store.add_user(User(name="alice", password_hash=pbkdf2_hash(PASSWORD, 4_999)))
    backend = LocalBackend(immediate_runner, config, store=store)
    assert run(backend.authenticate(request(store.get_user("alice")))).ok
    assert store.get_user("alice").password_hash.startswith("$pbkdf2-sha256$5000$")


def test_a_scrypt_hash_is_rehashed_when_pbkdf2_is_configured(store) -> None:
    store.add_user(User(name="alice", password_hash=passwords.hash_password(PASSWORD)))
    backend = LocalBackend(immediate_runner, PBKDF2, store=store)
    assert run(backend.authenticate(request(store.get_user("alice")))).ok
    assert store.get_user("alice").password_hash.startswith("$pbkdf2-sha256$20000$")


def test_a_wrong_password_leaves_a_weak_hash_alone(store) -> None:
    weak = pbkdf2_hash(PASSWORD, 1_000)
    store.add_user(User(name="alice", password_hash=weak))
    backend = LocalBackend(immediate_runner, SCRYPT, store=store)
    result = run(backend.authenticate(request(store.get_user("alice"), b"wrong")))
    assert (result.ok, result.reason) == (False, Reason.BAD_PASSWORD)
    assert store.get_user("alice").password_hash == weak


def test_a_current_hash_is_not_rewritten(store) -> None:
    current = passwords.hash_password(PASSWORD)
    store.add_user(User(name="alice", password_hash=current))
    names: list[str] = []
    backend = LocalBackend(counting_runner(names), SCRYPT, store=store)
    assert run(backend.authenticate(request(store.get_user("alice")))).ok
    assert names == ["verify_password"]
    assert store.get_user("alice").password_hash == current


class BrokenWrites:
    """A store that reads but cannot write (a full disk, a read-only replica)."""

    def __init__(self, store):
        self.store = store

    def get_user(self, name):
        return self.store.get_user(name)

    def update_user(self, name, **fields):
        raise StoreError("update user: database or disk is full")


def test_a_failed_rehash_write_is_logged_not_fatal(store) -> None:
    weak = pbkdf2_hash(PASSWORD, 1_000)
    store.add_user(User(name="alice", password_hash=weak))
    backend = LocalBackend(immediate_runner, SCRYPT, store=BrokenWrites(store))
    with structlog.testing.capture_logs() as events:
        result = run(backend.authenticate(request(store.get_user("alice"))))
    assert result.ok
    assert store.get_user("alice").password_hash == weak
    [event] = [e for e in events if e["event"] == "password.rehash_failed"]
    assert (event["user"], event["error"]) == ("alice", "StoreError")
    assert "correct horse" not in repr(events) and "$pbkdf2" not in repr(events)
    assert not backend.rehashes


class ManualRunner:
    """Hands calls out only when the test says: a hash pool it drives."""

    def __init__(self):
        self.calls: list[tuple] = []

    def __call__(self, fn, *args):
        d = defer.Deferred()
        self.calls.append((fn, args, d))
        return d

    @property
    def names(self) -> list[str]:
        return [fn.__name__ for fn, _, _ in self.calls]

    def finish(self, index: int = 0, taking=None):
        """Run the ``index``-th call; ``taking()`` runs after it (a clock
        advanced: the time the hash took), before its result is handed back."""
        fn, args, d = self.calls.pop(index)
        outcome = fn(*args)
        if taking is not None:
            taking()
        d.callback(outcome)


def test_a_password_changed_meanwhile_is_not_overwritten_by_the_rehash(store) -> None:
    store.add_user(User(name="alice", password_hash=pbkdf2_hash(PASSWORD, 1_000)))
    pool = ManualRunner()
    backend = LocalBackend(pool, SCRYPT, store=store)
    results = []
    defer.Deferred.fromCoroutine(backend.authenticate(request(store.get_user("alice")))).addBoth(
        results.append)
    pool.finish()                                 # the check: right password
    assert results[0].ok and pool.names == ["_replace_hash"]
    changed = passwords.hash_password("set by the admin meanwhile")
    store.update_user("alice", password_hash=changed)
    with structlog.testing.capture_logs() as events:
        pool.finish()                             # the rehash
    assert store.get_user("alice").password_hash == changed
    assert not [e for e in events if e["event"] == "password.rehashed"]


# --- the deadline: checks that waited too long are dropped unrun ----------------------


@pytest.fixture
def cheap(monkeypatch) -> list[str]:
    """Stand-ins for the slow hashes that record what ran."""
    ran: list[str] = []

    def verify_password(password, encoded):
        ran.append("verify_password")
        return password == PASSWORD

    def verify_dummy(password, config=None):
        ran.append("verify_dummy")
        return False

    monkeypatch.setattr(passwords, "verify_password", verify_password)
    monkeypatch.setattr(passwords, "verify_dummy", verify_dummy)
    return ran


ALICE = User(name="alice", password_hash=passwords._DUMMY_HASH)   # a current hash


def start(backend: LocalBackend, req: PrimaryRequest) -> list:
    results: list = []
    defer.Deferred.fromCoroutine(backend.authenticate(req)).addBoth(results.append)
    return results


def test_a_check_queued_past_its_deadline_is_dropped_unrun(cheap) -> None:
    clock, pool = FakeClock(), ManualRunner()
    backend = LocalBackend(pool, SCRYPT, clock=clock, concurrency=1)
    first = start(backend, request(ALICE, b"wrong", deadline=5.0, received=clock()))
    queued = [start(backend, request(ALICE, b"wrong", deadline=5.0, received=clock()))
              for _ in range(3)]
    assert len(pool.calls) == 1                  # one at a time: the rest wait in the backend
    pool.finish(taking=lambda: clock.advance(6.0))   # longer than the NAS waits
    assert first[0].reason is Reason.BAD_PASSWORD
    assert [r[0].reason for r in queued] == [Reason.OVERLOADED] * 3
    assert cheap == ["verify_password"] and pool.calls == []
    assert backend.expired == 3


def test_time_spent_before_the_backend_counts_towards_the_deadline(cheap) -> None:
    clock = FakeClock()
    backend = LocalBackend(immediate_runner, SCRYPT, clock=clock, concurrency=2)
    late = run(backend.authenticate(request(ALICE, deadline=5.0, received=clock() - 5.5)))
    assert late.reason is Reason.OVERLOADED and cheap == []
    in_time = run(backend.authenticate(request(ALICE, deadline=5.0, received=clock() - 4.5)))
    assert in_time.ok


def test_without_the_engines_clock_the_deadline_starts_when_the_backend_is_asked(cheap) -> None:
    # received on another clock (a fake one far in the past) cannot drop anything
    backend = LocalBackend(immediate_runner, SCRYPT)
    assert run(backend.authenticate(request(ALICE, deadline=5.0, received=1.0))).ok


def test_an_unknown_user_past_the_deadline_is_dropped_too(cheap) -> None:
    clock = FakeClock()
    backend = LocalBackend(immediate_runner, SCRYPT, clock=clock)
    result = run(backend.authenticate(request(None, deadline=1.0, received=clock() - 2)))
    assert result.reason is Reason.OVERLOADED and cheap == []


def test_a_check_that_starts_late_in_the_pool_is_not_run(cheap) -> None:
    clock = FakeClock()

    def slow_pool(fn, *args):             # the pool's queue held it for 10 s
        clock.advance(10.0)
        return immediate_runner(fn, *args)

    backend = LocalBackend(slow_pool, SCRYPT, clock=clock)
    result = run(backend.authenticate(request(ALICE, deadline=5.0, received=clock())))
    assert result.reason is Reason.OVERLOADED and cheap == []
    assert backend.expired == 1


def test_equalize_waits_no_longer_than_its_deadline(cheap) -> None:
    clock = FakeClock()
    backend = LocalBackend(immediate_runner, SCRYPT, clock=clock)
    assert run(backend.equalize(PASSWORD)) is True
    assert run(backend.equalize(PASSWORD, deadline=1.0, received=clock() - 2)) is False
    assert cheap == ["verify_dummy"]


def test_a_check_without_a_deadline_never_expires(cheap) -> None:
    clock, pool = FakeClock(), ManualRunner()
    backend = LocalBackend(pool, SCRYPT, clock=clock, concurrency=1)
    first, second = start(backend, request(ALICE)), start(backend, request(ALICE))
    clock.advance(3600)
    pool.finish()
    pool.finish()
    assert first[0].ok and second[0].ok


def test_checks_run_oldest_first_while_the_queue_is_fresh(cheap) -> None:
    clock, pool = FakeClock(), ManualRunner()
    backend = LocalBackend(pool, SCRYPT, clock=clock, concurrency=1, lifo_after=1.0)
    results = [start(backend, request(ALICE, PASSWORD if i == 1 else b"wrong", deadline=30.0))
               for i in range(3)]
    pool.finish()
    pool.finish()                                  # the second one submitted, not the last
    assert results[1] and results[1][0].ok and not results[2]


def test_the_newest_check_goes_first_once_the_queue_is_stale(cheap) -> None:
    clock, pool = FakeClock(), ManualRunner()
    backend = LocalBackend(pool, SCRYPT, clock=clock, concurrency=1, lifo_after=1.0)
    burst = [start(backend, request(ALICE, b"wrong", deadline=30.0, received=clock()))
             for _ in range(50)]
    clock.advance(2.0)                             # the burst has waited: a flood
    legit = start(backend, request(ALICE, PASSWORD, deadline=30.0, received=clock()))
    pool.finish()                                  # the one already running
    pool.finish()                                  # next: the newest
    assert legit and legit[0].ok
    assert sum(1 for r in burst if r) == 1


def test_the_queue_has_a_bound_beyond_which_the_oldest_is_dropped(cheap, monkeypatch) -> None:
    monkeypatch.setattr(local, "MAX_QUEUED", 3)
    clock, pool = FakeClock(), ManualRunner()
    backend = LocalBackend(pool, SCRYPT, clock=clock, concurrency=1)
    results = [start(backend, request(ALICE, b"wrong")) for _ in range(6)]
    # one running, three waiting, the two oldest waiting ones dropped
    assert [r[0].reason for r in results if r] == [Reason.OVERLOADED] * 2
    assert results[1] and results[2] and not results[3]


# --- a flood, with real threads ---------------------------------------------------------


class FloodTest(unittest.TestCase):
    """2,000 wrong passwords at once, then one right one 0.5 s later, through
    a real thread pool of two (a two-core machine) with a fake hash that takes
    10 ms. Answered in order with no deadline, the right one would wait 10 s;
    with the deadline alone, until the burst expires (4 s); newest first once
    the queue is stale, about half a second."""

    timeout = 60
    BURST = 2_000
    HASH_SECONDS = 0.01
    DEADLINE = 4.0

    def setUp(self):
        self.pool = ThreadPool(minthreads=2, maxthreads=2, name="test-hash")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.ran = []

        def slow_verify(password, encoded):
            time.sleep(self.HASH_SECONDS)
            self.ran.append(password)
            return password == PASSWORD

        real = passwords.verify_password
        passwords.verify_password = slow_verify
        self.addCleanup(setattr, passwords, "verify_password", real)

    def test_a_legitimate_login_behind_a_burst_is_answered_in_time(self):
        return defer.Deferred.fromCoroutine(self._flood())

    async def _flood(self):
        backend = LocalBackend(thread_runner(reactor, self.pool), SCRYPT, clock=reactor.seconds,
                               concurrency=2)
        began = reactor.seconds()
        burst = [defer.Deferred.fromCoroutine(backend.authenticate(
            request(ALICE, b"wrong", deadline=self.DEADLINE, received=reactor.seconds())))
            for _ in range(self.BURST)]
        await task.deferLater(reactor, 0.5, lambda: None)
        arrived = reactor.seconds()
        legit = await backend.authenticate(
            request(ALICE, PASSWORD, deadline=self.DEADLINE, received=arrived))
        answered = reactor.seconds() - arrived
        assert legit.ok, legit
        assert answered < self.DEADLINE / 2, answered

        results = await defer.gatherResults(burst)
        finished = reactor.seconds() - began
        reasons = {r.reason for r in results}
        overloaded = sum(1 for r in results if r.reason is Reason.OVERLOADED)
        assert reasons <= {Reason.BAD_PASSWORD, Reason.OVERLOADED}
        assert overloaded > self.BURST // 4, overloaded
        # the flood cost no more than the deadline: the rest were dropped unrun
        assert finished < self.DEADLINE + 1.5, finished
        assert len(self.ran) == self.BURST - overloaded + 1
        assert backend.expired == overloaded
