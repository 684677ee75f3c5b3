"""`serve --debug` on a wrong shared secret that nothing proves: a client
that does not require Message-Authenticator, a NAS that sends none.

The packet is not dropped (nothing in it proves the secret); the password
unhides to random octets and the primary rejects it, as for a mistyped
password. The debug block tells the two apart, and says so without showing
the bytes.
"""

from __future__ import annotations

import pytest

from e2e import SECRET, needs_radclient, radclient
from test_e2e_debug import DebugServer, blocks, next_block
from radius_mfa.trace import looks_like_a_wrong_secret

pytestmark = needs_radclient
PASSWORD = "correct horse battery"
WRONG_SECRET = "not-the-secret-42"
HINT = "shared secret mismatch?"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = DebugServer(tmp_path_factory.mktemp("debug-secret"), clients=f"""
  - name: old-switch
    address: 127.0.0.1
    secret: "{SECRET}"
    require_message_authenticator: false
    mode: inline
""")
    srv.user = srv.enrol("alice", PASSWORD)
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.log()


def send(server, password: str, secret: str) -> str:
    before = set(blocks(server))
    radclient(server.port, [("User-Name", "alice"), ("User-Password", password)],
              secret=secret, timeout=1.0, retries=1)
    return next_block(server, before)


def test_a_wrong_secret_without_message_authenticator_is_a_reject_that_hints_at_the_secret(server):
    block = send(server, f"{PASSWORD},{server.user.code()}", WRONG_SECRET)
    assert "Message-Authenticator: missing (not required)" in block
    assert "verdict: reject  reason: bad_password" in block
    assert HINT in block
    assert "DROPPED" not in block


def test_a_mistyped_password_with_the_right_secret_gets_no_such_hint(server):
    block = send(server, "incorrect donkey,123456", SECRET)
    assert "verdict: reject  reason: bad_password" in block
    assert HINT not in block


def test_the_hint_never_shows_the_octets_or_the_secrets(server):
    output = server.log()
    for secret in (PASSWORD, SECRET, WRONG_SECRET, server.user.totp.secret):
        assert secret not in output, secret
    assert "\\x" not in "".join(line for line in output.splitlines() if "hint:" in line)


def test_what_counts_as_bytes_no_one_types():
    assert not looks_like_a_wrong_secret("correct horse,123456".encode())
    assert not looks_like_a_wrong_secret("pässwörd €".encode())        # UTF-8 beyond ASCII is typed
    assert not looks_like_a_wrong_secret(None) and not looks_like_a_wrong_secret(b"")
    assert looks_like_a_wrong_secret(b"\xff\xfepassword")              # not UTF-8
    assert looks_like_a_wrong_secret(b"pass\x01word")                  # a control character
