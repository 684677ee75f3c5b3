"""Two radius-mfa servers on one PostgreSQL store, as a VPN concentrator with
two RADIUS servers in its list sees them: whatever one server started, the
other finishes, and whatever one used up, the other refuses."""

from __future__ import annotations

import json

import pytest

from e2e import SECRET, Server, needs_radclient, radclient
from peers.recording_gateway import Gateway

PASSWORD = "correct horse"
PHONE = "+4915112345678"


@pytest.fixture
def gateway():
    made = Gateway(200)
    yield made
    made.stop()


@pytest.fixture
def pair(tmp_path, pg_url, gateway):
    """Servers A and B: one store, one store key, each its own directory and port."""
    sms = f"""
  sms:
    providers:
      - name: gateway
        type: http
        url: "{gateway.url}"
        body: '{{"to": "{{phone}}", "code": "{{code}}"}}'
        timeout: 2
"""
    servers = []
    for name in ("a", "b"):
        directory = tmp_path / name
        directory.mkdir()
        server = Server(directory, store=pg_url, name=f"mfa-{name}",
                        extra=f"store_key_file: {tmp_path / 'store.key'}")
        text = server.config.read_text().replace("factors:\n  totp: {window: 1}\n",
                                                 f"factors:\n  totp: {{window: 1}}{sms}\n")
        server.config.write_text(text)
        servers.append(server)
    a, b = servers
    a.cli("user", "add", "alice", "--phone", PHONE, "--password-stdin", input=PASSWORD + "\n")
    token = json.loads(a.cli("token", "add", "alice", "--type", "totp", "--json").stdout)
    # B's commands see what A's wrote: one store
    assert json.loads(b.cli("token", "list", "alice", "--json").stdout)[0]["serial"] == token["serial"]
    import pyotp

    for server in servers:
        server.start()
    yield a, b, pyotp.TOTP(token["secret"])
    for server in servers:
        server.stop()


def ask(server: Server, password: str, state: str | None = None):
    attributes = [("User-Name", "alice"), ("User-Password", password),
                  ("Calling-Station-Id", "192.0.2.10"), ("Message-Authenticator", "0x00")]
    if state:
        attributes.append(("State", state))
    return radclient(server.port, attributes, secret=SECRET, timeout=8, retries=1)


@needs_radclient
def test_a_challenge_started_on_a_is_answered_on_b(pair):
    a, b, totp = pair
    challenge = ask(a, PASSWORD)
    assert challenge.code == "Access-Challenge"
    state = challenge.first("State")
    b.mark("alice")
    assert ask(b, totp.now(), state=state).code == "Access-Accept"
    record = b.record_since_mark("alice")
    assert record["server"] == "mfa-b" and record["result"] == "accept"
    # the State was used up on B: A cannot take it again
    a.mark("alice")
    assert ask(a, totp.now(), state=state).code == "Access-Reject"
    assert a.record_since_mark("alice")["reason"] == "bad_state"


@needs_radclient
def test_a_totp_code_used_on_a_is_a_replay_on_b(pair):
    a, b, totp = pair
    code = totp.now()
    assert ask(a, f"{PASSWORD},{code}").code == "Access-Accept"
    b.mark("alice")
    assert ask(b, f"{PASSWORD},{code}").code == "Access-Reject"
    assert b.record_since_mark("alice")["reason"] == "replay"


@needs_radclient
def test_an_sms_code_sent_by_a_is_accepted_by_b_once(pair, gateway):
    a, b, _ = pair
    a.mark("alice")
    sent = ask(a, f"{PASSWORD},sms")
    assert sent.code == "Access-Reject"                     # the instruction: sign in again with the code
    assert a.record_since_mark("alice")["reason"] == "code_sent"
    (code,) = [json.loads(body)["code"] for _, body in gateway.received]
    assert ask(b, f"{PASSWORD},{code}").code == "Access-Accept"
    a.mark("alice")
    assert ask(a, f"{PASSWORD},{code}").code == "Access-Reject"
    assert a.record_since_mark("alice")["reason"] == "bad_code"


@needs_radclient
def test_a_lockout_on_a_holds_on_b_and_unlock_on_either_lifts_it(pair):
    a, b, totp = pair
    for _ in range(3):                                        # the harness locks after 3
        assert ask(a, f"{PASSWORD},000000").code == "Access-Reject"
    b.mark("alice")
    assert ask(b, f"{PASSWORD},{totp.now()}").code == "Access-Reject"
    assert b.record_since_mark("alice")["reason"] == "locked"
    b.cli("user", "unlock", "alice")
    # the locked attempt checked no code, so the current one is still unused
    assert ask(a, f"{PASSWORD},{totp.now()}").code == "Access-Accept"
