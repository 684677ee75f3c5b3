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
import json
import os
import random
import selectors
import socket
import time
from collections import Counter
from pathlib import Path

import pyotp
import pytest

from e2e import SECRET, Enrolment, Server, needs_radclient, radclient
from pg import fresh_schema
from radius_mfa.radius import codec
from radius_mfa.sessions import MAX_OPEN_CHALLENGES

pytestmark = needs_radclient

PASSWORD = "correct horse"
FAILURES = 5                    # policy.lockout.failures of every server here
OPENED_AT_ONCE = FAILURES - 1


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
        for batch in range(0, 50, OPENED_AT_ONCE):
            # a few at a time, racing each other to the cap on open challenges
            # (as many as FAILURES would lock alice while their passwords are checked)
            requests = [codec.build_access_request(SECRET.encode(), "alice", PASSWORD, id=ident)
                        for ident in range(batch, min(batch + OPENED_AT_ONCE, 50))]
            for request, reply in zip(requests, burst(server.port, requests, sockets=len(requests))):
                assert code_of(reply) == codec.ACCESS_CHALLENGE, request[1]
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
        # the cap on open challenges held while they were opened at once
        assert answered["bad_state"] >= 50 - MAX_OPEN_CHALLENGES, answered
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


# --- 4: a forged State joins no push ----------------------------------------------------
def test_a_forged_state_cannot_join_a_pending_push_and_one_approval_is_one_accept(tmp_path):
    """A real login waits for the device; meanwhile an attacker sends a wrong
    password with a made-up State, and the login's own State under another
    user's name. Before: they joined the push and the approval accepted them."""
    from test_e2e_push import CHALLENGE_TIMEOUT, new_user, shown_number, start_server

    (tmp_path / "server").mkdir()
    server = start_server(tmp_path / "server", "challenge", CHALLENGE_TIMEOUT)
    try:
        name, phone = new_user(server, tmp_path)
        other, _ = new_user(server, tmp_path)                      # the attacker's own account
        challenge = radclient(server.port, [("User-Name", name), ("User-Password", PASSWORD),
                                            ("Message-Authenticator", "0x00")])
        assert challenge.code == "Access-Challenge", challenge.output
        number = shown_number(challenge)
        state = bytes.fromhex(challenge.first("State")[2:])
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            real = pool.submit(server.send, codec.build_access_request(
                SECRET.encode(), name, "", id=1, state=state), CHALLENGE_TIMEOUT)
            pending = phone.wait()
            forged = pool.submit(server.send, codec.build_access_request(
                SECRET.encode(), name, "wrong", id=2, state=os.urandom(16)), CHALLENGE_TIMEOUT)
            foreign = pool.submit(server.send, codec.build_access_request(
                SECRET.encode(), other, PASSWORD, id=3, state=state), CHALLENGE_TIMEOUT)
            # both are answered at once, before any approval
            assert code_of(forged.result()) == codec.ACCESS_REJECT
            assert code_of(foreign.result()) == codec.ACCESS_REJECT
            assert not real.done()
            approved = phone.run("approve", pending["id"], "--number", str(number))
            assert approved.returncode == 0, approved.stderr
            assert code_of(real.result()) == codec.ACCESS_ACCEPT
        # and an approved push is joined by no made-up State either
        late = server.send(codec.build_access_request(
            SECRET.encode(), name, "wrong", id=4, state=os.urandom(16)), timeout=CHALLENGE_TIMEOUT)
        assert code_of(late) == codec.ACCESS_REJECT
        records = records_of(server, name, 4, timeout=5)
        assert [r["result"] for r in records].count("accept") == 1, records
        assert [r["reason"] for r in records if r["result"] == "reject"] == ["bad_state", "bad_state"]
        assert [r["reason"] for r in records_of(server, other, 1, timeout=5)] == ["bad_state"]
    finally:
        assert server.stop() == 0, server.log()


# --- 5, 8, 9: one plain server ----------------------------------------------------------
@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    server = attack_server(tmp_path_factory.mktemp("plain"), workers=1).start()
    yield server
    assert server.stop() == 0, server.log()


def test_a_spoofed_copy_of_a_request_cannot_empty_its_duplicate_slot(plain):
    """From the NAS's address and port, the real request's Identifier, a new
    authenticator and no secret: sent while the request is decided and after.
    Before: the slot was emptied, the retransmission decided again (`replay`,
    a failure counted)."""
    bob = plain.enrol("spoofed-bob", PASSWORD)
    request = codec.build_access_request(SECRET.encode(), bob.name, f"{PASSWORD},{bob.code()}", id=77)
    forged = codec.build_access_request(b"not-the-secret", bob.name, "x", id=77)
    assert forged[4:20] != request[4:20]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        sock.sendto(request, ("127.0.0.1", plain.port))
        sock.sendto(forged, ("127.0.0.1", plain.port))        # while the password is checked
        first = sock.recv(4096)
        sock.sendto(forged, ("127.0.0.1", plain.port))        # after the answer
        time.sleep(0.2)
        sock.sendto(request, ("127.0.0.1", plain.port))       # the NAS retransmits
        again = sock.recv(4096)
    assert code_of(first) == codec.ACCESS_ACCEPT
    assert again == first                                     # the cached reply, byte for byte
    time.sleep(0.3)
    records = [r for r in plain.audit() if r["user"] == bob.name]
    assert [(r["result"], r["reason"]) for r in records] == [("accept", None)]
    assert shown(plain, bob.name)["failures"] == 0
    drops = [e for e in plain.log_events() if e.get("event") == "radius.drop"]
    assert any(e["reason"] == "bad_message_authenticator" for e in drops)


def test_a_user_name_that_is_not_utf8_is_rejected_not_dropped(plain):
    """A proxy in front marks a server that stays silent dead for everyone."""
    before = len(plain.audit())
    request = codec.build_access_request(SECRET.encode(), b"\xffbad\xfe-user", PASSWORD, id=5)
    reply = plain.send(request, timeout=5)
    assert code_of(reply) == codec.ACCESS_REJECT
    assert codec.decode_response(reply, SECRET.encode(), request[4:20]).code == codec.ACCESS_REJECT
    records = plain.wait_audit(before + 1)[before:]
    assert len(records) == 1, records
    (record,) = records
    assert record["reason"] == "unknown_user" and record["result"] == "reject"
    assert record["method"] == "pap"
    assert record["user"] == "\\xffbad\\xfe-user"              # each invalid octet as \xNN
    assert "Traceback" not in plain.log()


@pytest.mark.parametrize("method, attributes", [
    ("chap", [("CHAP-Password", bytes([1]) + os.urandom(16)), ("CHAP-Challenge", os.urandom(16))]),
    ("mschap", [("MS-CHAP-Challenge", os.urandom(8)),
                ("MS-CHAP-Response", bytes([0, 1]) + os.urandom(48))]),
])
def test_a_chap_or_mschap_v1_request_is_rejected_as_an_unsupported_method(plain, method, attributes):
    carol = plain.enrol(f"{method}-carol", PASSWORD)
    request = codec.build_access_request(SECRET.encode(), carol.name, None, id=6, attributes=attributes)
    plain.mark(carol.name)
    reply = plain.send(request, timeout=5)
    assert code_of(reply) == codec.ACCESS_REJECT
    record = plain.record_since_mark(carol.name)
    assert (record["reason"], record["method"]) == ("unsupported_method", method)


def test_an_eap_request_is_rejected_as_an_unsupported_method_with_an_eap_failure(plain):
    dave = plain.enrol("eap-dave", PASSWORD)
    identity = dave.name.encode()
    eap_response = bytes([2, 0x2A]) + (5 + len(identity)).to_bytes(2, "big") + b"\x01" + identity
    request = codec.build_access_request(SECRET.encode(), dave.name, None, id=8,
                                         attributes=[("EAP-Message", eap_response)])
    plain.mark(dave.name)
    reply = plain.send(request, timeout=5)
    response = codec.decode_response(reply, SECRET.encode(), request[4:20])
    assert response.code == codec.ACCESS_REJECT
    record = plain.record_since_mark(dave.name)
    assert (record["reason"], record["method"]) == ("unsupported_method", "eap")
    # RFC 3579 2.6.3 / RFC 3748 4.2: EAP-Failure, the Identifier of the response it answers
    eap = b"".join(value for kind, value in response.attributes if kind == 79)
    assert eap == bytes([4, 0x2A, 0, 4]), eap.hex()


# --- 6: name variants through a real directory -----------------------------------------
def test_a_name_variant_the_directory_accepts_does_not_skip_the_enrolled_user_s_code(tmp_path):
    """`policy.unenrolled: allow`, LDAP primary: the directory matches `ALICE`
    and `alice ` to alice. Before: the store did not, so they signed in as an
    unenrolled user with the password alone."""
    from peers.slapd import SERVICE_DN, SERVICE_PASSWORD, SUFFIX, Slapd, available

    if not available():
        pytest.skip("slapd (Debian slapd) is not installed")
    with Slapd(tmp_path / "slapd") as directory:
        home = tmp_path / "server"
        home.mkdir()
        (home / "ldap.secret").write_text(SERVICE_PASSWORD + "\n")
        server = attack_server(home, workers=1, policy="  unenrolled: allow", primary=f"""  backend: ldap
  ldap:
    servers: ["{directory.ldaps_url}"]
    ca_file: "{directory.ca_file}"
    bind_dn: "{SERVICE_DN}"
    bind_password_file: ldap.secret
    base_dn: "{SUFFIX}"
    user_filter: "(uid={{user}})"
    timeout: 2""").start()
        try:
            tokens = [server.enrol("alice").totp]
            for _ in range(2):         # a token per variant: each code is used once
                secret = json.loads(server.cli("token", "add", "alice", "--type", "totp", "--json").stdout)
                tokens.append(pyotp.TOTP(secret["secret"]))
            for ident, (variant, totp) in enumerate(zip(["ALICE", "alice ", "Alice"], tokens)):
                alone = codec.build_access_request(SECRET.encode(), variant, "alice-pw", id=2 * ident)
                assert code_of(server.send(alone, timeout=5)) in (
                    codec.ACCESS_CHALLENGE, codec.ACCESS_REJECT), repr(variant)
                with_code = codec.build_access_request(SECRET.encode(), variant,
                                                       f"alice-pw,{totp.now()}", id=2 * ident + 1)
                assert code_of(server.send(with_code, timeout=5)) == codec.ACCESS_ACCEPT, repr(variant)
            records = server.wait_audit(6)
            assert [r["user"] for r in records] == ["alice"] * 6
            assert [r["result"] for r in records][1::2] == ["accept"] * 3
            assert [r["factor"] for r in records][1::2] == ["totp"] * 3
        finally:
            assert server.stop() == 0, server.log()


# --- 7: MS-CHAPv2 skips no token -------------------------------------------------------
def test_mschapv2_cannot_skip_a_token_when_unenrolled_users_are_allowed(tmp_path):
    """`unenrolled: allow` and an upstream that checks MS-CHAPv2: a user with
    a TOTP token and no device cannot sign in with MS-CHAPv2, which has no
    room for the code. Before: accepted with the password alone."""
    from peers import freeradius
    from peers.freeradius import FreeRadius
    from peers.mschapv2 import MsChapV2

    if not freeradius.available():
        pytest.skip("FreeRADIUS (Debian freeradius) is not installed")
    upstream = FreeRadius(tmp_path / "freeradius").start()
    try:
        home = tmp_path / "server"
        home.mkdir()
        server = attack_server(home, workers=1, policy="  unenrolled: allow", primary=f"""  backend: radius
  radius:
    servers:
      - {{address: "127.0.0.1:{upstream.port}", secret: "testing123"}}
    timeout: 2
    retries: 1""").start()
        try:
            def mschapv2(ident: int) -> codec.Response:
                attempt = MsChapV2("bob", "bob-pw")
                request = codec.build_access_request(SECRET.encode(), "bob", None, id=ident,
                                                     attributes=list(attempt.forward()))
                server.mark("bob")
                reply = server.send(request, timeout=5)
                assert reply is not None
                return codec.decode_response(reply, SECRET.encode(), request[4:20])

            # the policy is in force: bob, not enrolled, is let in with MS-CHAPv2
            assert mschapv2(1).code == codec.ACCESS_ACCEPT
            assert server.record_since_mark("bob")["factor"] == "none"
            server.enrol("bob")
            response = mschapv2(2)
            assert response.code == codec.ACCESS_REJECT
            assert response.get("MS-CHAP2-Success") is None
            record = server.record_since_mark("bob")
            assert (record["reason"], record["method"]) == ("no_factor", "mschapv2")
        finally:
            assert server.stop() == 0, server.log()
    finally:
        upstream.stop()
