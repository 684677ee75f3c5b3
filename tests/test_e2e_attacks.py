"""The standing adversarial suite: each test is an attack on a real `radius-mfa
serve` process over real UDP, named for what it proves closed.

An attacker here holds what the issue assumes: a user's password (not the
code), or a NAS's address but not its secret. The guesses, forged States and
spoofed packets are raw datagrams built with the codec and sent many at once
from sockets of the test's own; what was checked is read back from the audit
records, and whether the user is locked from `user show --json`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import random
import socket
import time
from collections import Counter
from pathlib import Path

import pytest

from e2e import SECRET, Enrolment, Server, needs_radclient, radclient
from pg import fresh_schema
from radius_mfa.radius import codec

pytestmark = needs_radclient

PASSWORD = "correct horse"
FAILURES = 5                    # policy.lockout.failures of every server here


# --- a server and a burst of datagrams ----------------------------------------------
def attack_server(directory: Path, *, store: str = "sqlite:///radius-mfa.db", workers: int = 2,
                  **config) -> Server:
    """A server (not started) that locks a user after FAILURES wrong answers."""
    server = Server(directory, store=store, workers=workers,
                    extra=f"store_key_file: {directory / 'store.key'}", **config)
    text = server.config.read_text()
    assert "lockout: {failures: 3, minutes: 15}" in text
    server.config.write_text(text.replace("lockout: {failures: 3, minutes: 15}",
                                          f"lockout: {{failures: {FAILURES}, minutes: 15}}"))
    return server


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request):
    """The store of a server: SQLite, then PostgreSQL (a schema of the test's own)."""
    if request.param == "sqlite":
        yield "sqlite:///radius-mfa.db"
    else:
        with fresh_schema() as url:
            yield url


def burst(port: int, datagrams: list[bytes], *, sockets: int = 1,
          timeout: float = 30.0) -> list[bytes | None]:
    """Send every datagram at once, datagram i from socket i % ``sockets``
    (its Identifier must be unique on that socket), none waiting for a
    reply; then collect the replies, matched by socket and Identifier.
    The replies in the datagrams' order (None: no reply by ``timeout``)."""
    socks = []
    try:
        for _ in range(sockets):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        waiting: dict[tuple[int, int], int] = {}
        for index, data in enumerate(datagrams):
            key = (index % sockets, data[1])
            assert key not in waiting, "two datagrams with one Identifier on one socket"
            waiting[key] = index
        for index, data in enumerate(datagrams):
            socks[index % sockets].sendto(data, ("127.0.0.1", port))
        replies: list[bytes | None] = [None] * len(datagrams)
        deadline = time.monotonic() + timeout
        import selectors

        with selectors.DefaultSelector() as selector:
            for number, sock in enumerate(socks):
                selector.register(sock, selectors.EVENT_READ, number)
            while waiting and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=max(0.0, deadline - time.monotonic())):
                    reply = key.fileobj.recv(4096)
                    index = waiting.pop((key.data, reply[1]), None)
                    if index is not None:
                        replies[index] = reply
        return replies
    finally:
        for sock in socks:
            sock.close()


def wrong_codes(user: Enrolment, count: int, seed: int = 12) -> list[str]:
    """``count`` distinct six-digit codes, none of them right now or a step either side."""
    right = {user.code(offset) for offset in range(-2, 3)}
    rng = random.Random(seed)
    codes: list[str] = []
    while len(codes) < count:
        code = f"{rng.randrange(10 ** 6):06d}"
        if code not in right and code not in codes:
            codes.append(code)
    return codes


def records_of(server: Server, name: str, count: int, timeout: float = 30.0) -> list[dict]:
    """The user's audit records once there are ``count`` of them (fewer after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        records = [r for r in server.audit() if r["user"] == name]
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def shown(server: Server, name: str) -> dict:
    return json.loads(server.cli("user", "show", name, "--json").stdout)


def code_of(reply: bytes | None) -> int | None:
    return None if reply is None else reply[0]


def state_of(reply: bytes, request: bytes) -> bytes:
    response = codec.decode_response(reply, SECRET.encode(), request[4:20])
    assert response.code == codec.ACCESS_CHALLENGE
    return response.get("State")


# --- 1-3: guessing past the lockout ---------------------------------------------------
def test_a_burst_of_answers_over_many_open_challenges_cannot_guess_past_the_lockout(tmp_path, store_url):
    """The issue's attack: 50 challenges opened with the stolen password, then
    49 wrong codes and the right one at once, the right one on the first
    State (the attacker's 50th guess). Before: 49 `bad_code`, then an Accept."""
    server = attack_server(tmp_path, store=store_url).start()
    try:
        alice = server.enrol("alice", PASSWORD)
        states = []
        for ident in range(50):
            request = codec.build_access_request(SECRET.encode(), "alice", PASSWORD, id=ident)
            reply = server.send(request, timeout=10)
            assert code_of(reply) == codec.ACCESS_CHALLENGE, ident
            states.append(state_of(reply, request))
        assert len(set(states)) == 50
        answers = [(state, code) for state, code in zip(states[1:], wrong_codes(alice, 49))]
        answers.append((states[0], alice.code()))                        # sent last
        datagrams = [codec.build_access_request(SECRET.encode(), "alice", code, id=ident, state=state)
                     for ident, (state, code) in enumerate(answers)]
        replies = burst(server.port, datagrams)

        assert codec.ACCESS_ACCEPT not in [code_of(r) for r in replies]
        assert code_of(replies[-1]) == codec.ACCESS_REJECT             # the right code too
        records = records_of(server, "alice", 100)
        assert len(records) == 100, Counter(r["reason"] for r in records)
        answered = Counter(r["reason"] for r in records[50:])
        assert answered["bad_code"] <= FAILURES, answered
        assert set(answered) <= {"bad_code", "locked", "bad_state"}, answered
        assert not [r for r in records if r["result"] == "accept"]
        assert shown(server, "alice")["locked"] is True
    finally:
        assert server.stop() == 0, server.log()


def test_a_burst_of_inline_guesses_cannot_guess_past_the_lockout(tmp_path, store_url):
    """`password,CODE` 49 times wrong and once right, all at once, the right one last."""
    server = attack_server(tmp_path, store=store_url).start()
    try:
        alice = server.enrol("alice", PASSWORD)
        guesses = [*wrong_codes(alice, 49), alice.code()]
        datagrams = [codec.build_access_request(SECRET.encode(), "alice", f"{PASSWORD},{code}", id=ident)
                     for ident, code in enumerate(guesses)]
        replies = burst(server.port, datagrams)

        assert codec.ACCESS_ACCEPT not in [code_of(r) for r in replies]
        records = records_of(server, "alice", 50)
        reasons = Counter(r["reason"] for r in records)
        assert len(records) == 50, reasons
        assert reasons["bad_code"] + reasons["bad_password"] <= FAILURES, reasons
        assert set(reasons) <= {"bad_code", "locked"}, reasons
    finally:
        assert server.stop() == 0, server.log()


def test_two_hundred_concurrent_guesses_over_two_workers_check_at_most_the_lockout_s_failures(
        tmp_path, store_url):
    """200 wrong codes at once from 20 source ports (spread over both
    workers): at most `failures` of them are checked in the lockout period."""
    server = attack_server(tmp_path, store=store_url).start()
    try:
        alice = server.enrol("alice", PASSWORD)
        guesses = wrong_codes(alice, 200)
        sockets = 20
        datagrams = [codec.build_access_request(SECRET.encode(), "alice", f"{PASSWORD},{code}",
                                                id=index // sockets)
                     for index, code in enumerate(guesses)]
        replies = burst(server.port, datagrams, sockets=sockets, timeout=60)

        assert codec.ACCESS_ACCEPT not in [code_of(r) for r in replies]
        records = records_of(server, "alice", 200, timeout=60)
        reasons = Counter(r["reason"] for r in records)
        assert len(records) == 200, reasons
        assert reasons["bad_code"] + reasons["bad_password"] <= FAILURES, reasons
        assert set(reasons) <= {"bad_code", "locked"}, reasons
        workers = {e["worker"] for e in server.log_events() if e.get("event") == "auth.decision"}
        assert workers == {0, 1}
    finally:
        assert server.stop() == 0, server.log()
