"""`radius-mfa serve --debug` end to end: a real server, radclient as the NAS,
and the readable blocks it prints on stderr (a file here, not a terminal).

Each block says which client the source address matched, the
Message-Authenticator check, the method, the primary's answer, the factor,
the verdict and the reason; a drop says why and hints at the cause. No block
and no log line ever holds the password, the code or the shared secret.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time

import pytest

from e2e import SECRET, Server, command, needs_radclient, radclient
from peers.process import wait_for
from radius_mfa.radius import codec

pytestmark = needs_radclient
PASSWORD = "correct horse battery"
WRONG_PASSWORD = "incorrect donkey"
WRONG_SECRET = "not-the-secret-42"


class DebugServer(Server):
    """`serve --debug`, its stderr (log lines and debug blocks) in a file."""

    def start(self, env: dict | None = None) -> "DebugServer":
        self._log = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(command() + ["-c", str(self.config), "serve", "--debug"],
                                     stdout=subprocess.DEVNULL, stderr=self._log,
                                     stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
        if not wait_for(lambda: "server.listening" in self.log() or self.proc.poll() is not None, 20):
            self.stop()
            raise AssertionError(f"server did not start:\n{self.log()}")
        assert self.proc.poll() is None, self.log()
        return self


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = DebugServer(tmp_path_factory.mktemp("debug"), clients=f"""
  - name: vpn-gateway
    address: 127.0.0.0/30
    secret: "{SECRET}"
    require_message_authenticator: true
    mode: inline
""")
    srv.user = srv.enrol("alice", PASSWORD)
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.log()


BLOCK_START = re.compile(r"^\((\d+)\) Received ", re.M)


def blocks(server: Server) -> dict[int, str]:
    """The debug blocks printed so far, by request number."""
    found: dict[int, list[str]] = {}
    for line in server.log().splitlines():
        match = re.match(r"^\((\d+)\) (.*)$", line)
        if match:
            found.setdefault(int(match.group(1)), []).append(match.group(2))
    return {n: "\n".join(lines) for n, lines in found.items()}


def next_block(server: Server, before: set[int]) -> str:
    """The first complete block that was not there ``before``."""
    def done():
        new = {n: b for n, b in blocks(server).items() if n not in before}
        return [b for b in new.values() if "done in" in b]
    assert wait_for(lambda: bool(done()), 5), server.log()
    return done()[0]


def send_as(server: Server, user: str, password: str, *extra, secret: str = SECRET) -> tuple[object, str]:
    """One request by radclient; its reply and the debug block it caused."""
    before = set(blocks(server))
    reply = radclient(server.port, [("User-Name", user), ("User-Password", password), *extra,
                                    ("Message-Authenticator", "0x00")],
                      secret=secret, timeout=1.0, retries=1)
    return reply, next_block(server, before)


def send(server: Server, password: str, *, secret: str = SECRET) -> tuple[object, str]:
    return send_as(server, "alice", password, secret=secret)


def test_a_good_inline_sign_in_is_shown_step_by_step(server):
    code = server.user.code()
    reply, block = send(server, f"{PASSWORD},{code}")
    assert reply.code == "Access-Accept", reply.output
    assert "Received Access-Request Id" in block
    assert "client: vpn-gateway (127.0.0.0/30) matched source 127.0.0.1" in block
    assert "Message-Authenticator: present, valid (required)" in block
    assert 'user: "alice"  method: pap  State: none' in block
    assert "primary: local: accepted the password" in block
    assert "factor: totp" in block and "factors held: totp" in block
    assert "verdict: accept  reason: (none)" in block
    assert "sent Access-Accept" in block
    assert re.search(r"done in \d+\.\d ms", block)
    assert code not in server.log()


def test_a_wrong_password_shows_the_primary_refusing_it(server):
    reply, block = send(server, f"{WRONG_PASSWORD},123456")
    assert reply.code == "Access-Reject", reply.output
    assert "primary: local: rejected the password" in block
    assert "verdict: reject  reason: bad_password" in block
    assert "sent Access-Reject" in block


def test_a_wrong_shared_secret_is_a_drop_that_hints_at_the_secret(server):
    reply, block = send(server, f"{PASSWORD},{server.user.code()}", secret=WRONG_SECRET)
    assert reply.code is None                        # dropped: radclient gets no reply
    assert "Message-Authenticator: present, wrong (required)" in block
    assert "DROPPED: bad_message_authenticator: no reply sent" in block
    assert "shared secret mismatch?" in block
    # the normal log line says it too
    drops = [e for e in server.log_events() if e.get("event") == "radius.drop"
             and e.get("reason") == "bad_message_authenticator"]
    assert drops and drops[0]["hint"] == "shared secret mismatch?"
    assert drops[0]["client"] == "vpn-gateway"


def test_an_unknown_source_address_says_no_client_matched(server):
    before = set(blocks(server))
    packet = bytes([codec.ACCESS_REQUEST, 7]) + (20).to_bytes(2, "big") + os.urandom(16)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.9", 0))                  # outside 127.0.0.0/30
        sock.sendto(packet, ("127.0.0.1", server.port))
    block = next_block(server, before)
    assert "Received Access-Request Id 7 from 127.0.0.9:" in block
    assert "client: no client for 127.0.0.9" in block
    assert "DROPPED: unknown_client" in block


def test_no_secret_appears_anywhere_in_the_output(server):
    # run after the others (pytest keeps file order): every request above is in the log
    time.sleep(0.2)
    output = server.log()
    assert len(blocks(server)) >= 4, output
    for secret in (PASSWORD, WRONG_PASSWORD, SECRET, WRONG_SECRET, server.user.totp.secret):
        assert secret not in output, secret
    for record in server.audit():
        assert PASSWORD not in json.dumps(record)


def test_a_challenge_round_is_followed_by_the_states_hash_never_the_state(tmp_path):
    srv = DebugServer(tmp_path, clients=f"""
  - name: wifi
    address: 127.0.0.1
    secret: "{SECRET}"
    mode: challenge
""")
    user = srv.enrol("bob", PASSWORD)
    srv.start()
    try:
        reply, first = send_as(srv, "bob", PASSWORD)
        assert reply.code == "Access-Challenge", reply.output
        state = reply.first("State")
        digest = re.search(r"sent Access-Challenge \(State (sha256:[0-9a-f]{8})\)", first).group(1)
        assert "primary: local: accepted the password" in first
        code = user.code()
        reply, second = send_as(srv, "bob", code, ("State", state))
        assert reply.code == "Access-Accept", reply.output
        assert f"State: {digest}" in second
        assert "primary: local: not asked (an answer to a challenge" in second
        assert "verdict: accept" in second
        output = srv.log().lower()
        assert state[2:].lower() not in output and code not in output and PASSWORD.lower() not in output
    finally:
        assert srv.stop() == 0, srv.log()


def test_without_debug_no_block_is_printed_but_the_drop_line_still_hints(tmp_path):
    srv = Server(tmp_path, clients=f"""
  - name: vpn
    address: 127.0.0.1
    secret: "{SECRET}"
""")
    srv.start()
    try:
        reply = radclient(srv.port, [("User-Name", "x"), ("User-Password", "y"),
                                     ("Message-Authenticator", "0x00")],
                          secret=WRONG_SECRET, timeout=1.0, retries=1)
        assert reply.code is None
        assert wait_for(lambda: any(e.get("event") == "radius.drop" for e in srv.log_events()))
        [drop] = [e for e in srv.log_events() if e.get("event") == "radius.drop"]
        assert drop["hint"] == "shared secret mismatch?"
        assert not BLOCK_START.search(srv.log())
    finally:
        assert srv.stop() == 0, srv.log()
