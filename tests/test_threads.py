"""The executor that hands store, hash and LDAP calls off the reactor."""

from __future__ import annotations

import contextvars
import threading
import time

import pytest

from radius_mfa.threads import Executor

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class QueuedReactor:
    """callFromThread only records; the test runs the calls as the reactor would."""

    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()

    def callFromThread(self, fn, *args):
        with self.lock:
            self.calls.append((fn, args))

    def run_pending(self) -> int:
        with self.lock:
            calls, self.calls = self.calls, []
        for fn, args in calls:
            fn(*args)
        return len(calls)


def settle(reactor: QueuedReactor, ds, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(d.called for d in ds):
        assert time.monotonic() < deadline, "the calls never came back"
        reactor.run_pending()
        time.sleep(0.001)


@pytest.fixture
def reactor():
    return QueuedReactor()


@pytest.fixture
def executor(reactor):
    pool = Executor(reactor, 3, "store")
    pool.start()
    yield pool
    pool.stop()


def test_a_call_runs_in_a_thread_and_its_result_fires_on_the_reactor(reactor, executor):
    d = executor.run(lambda a, b=0: (threading.current_thread().name, a + b), 2, b=3)
    assert not d.called                  # nothing fires until the reactor delivers
    settle(reactor, [d])
    name, total = d.result
    assert name.startswith("store-") and total == 5
    assert executor.calls == 1


def test_a_call_sees_the_callers_context(reactor, executor):
    """What a store call logs carries the request it works for."""
    seen = []
    token = request_id.set("r-1")
    try:
        d = executor.run(lambda: seen.append(request_id.get()))
    finally:
        request_id.reset(token)
    settle(reactor, [d])
    assert seen == ["r-1"]


def test_an_exception_reaches_the_caller_as_a_failure(reactor, executor):
    def broken():
        raise KeyError("no such row")

    d = executor.run(broken)
    settle(reactor, [d])
    failures = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(KeyError)


def test_results_that_arrive_together_wake_the_reactor_once(reactor, executor):
    gate = threading.Event()
    ds = [executor.run(gate.wait) for _ in range(3)]
    time.sleep(0.05)                     # the three threads all wait at the gate
    gate.set()
    time.sleep(0.1)                      # all three have finished before the reactor looks
    wakes = reactor.run_pending()
    assert all(d.called for d in ds)
    assert wakes == 1


def test_threads_grow_to_the_limit_and_no_further(reactor):
    pool = Executor(reactor, 2, "hash")
    pool.start()
    try:
        gate = threading.Event()
        names = []

        def hold():
            names.append(threading.current_thread().name)
            gate.wait()

        ds = [pool.run(hold) for _ in range(5)]
        time.sleep(0.1)
        assert sorted(names) == ["hash-0", "hash-1"]     # two run, three wait in line
        gate.set()
        settle(reactor, ds)
        assert len(names) == 5
    finally:
        pool.stop()


def test_after_stop_a_call_fails_at_once(reactor):
    pool = Executor(reactor, 1, "ldap")
    pool.start()
    settle(reactor, [pool.run(int)])
    pool.stop()
    failures = []
    pool.run(int).addErrback(failures.append)
    assert failures and "stopped" in failures[0].getErrorMessage()


def test_at_least_one_thread():
    with pytest.raises(ValueError):
        Executor(QueuedReactor(), 0, "store")


def test_stop_waits_for_stuck_calls_at_most_the_join_time_in_all(reactor, monkeypatch):
    """An LDAP server that hangs must not hold the process up at shutdown:
    the wait is one bound for every thread together, not one each."""
    from radius_mfa import threads

    monkeypatch.setattr(threads, "JOIN_SECONDS", 0.3)
    pool = Executor(reactor, 3, "ldap")
    pool.start()
    stuck = threading.Event()
    for _ in range(3):
        pool.run(stuck.wait)
    time.sleep(0.05)
    started = time.monotonic()
    pool.stop()
    assert time.monotonic() - started < 0.6
    stuck.set()
