"""End to end: `radius-mfa serve` driven by FreeRADIUS's radclient and by raw datagrams.

One server per module on a loopback port; each test enrols its own user so
that codes used (and failures counted) in one test never touch another.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import struct
import time

import pytest

from e2e import SECRET, Server, needs_radclient, radclient
from radius_mfa.radius import codec

pytestmark = needs_radclient
PASSWORD = "correct horse"
_names = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("e2e"), clients=f"""
  - name: local
    address: 127.0.0.1
    secret: "{SECRET}"
    mode: challenge
  - name: legacy
    address: 127.0.0.2
    secret: "legacy-secret"
    require_message_authenticator: false
    mode: inline
  - name: lab
    address: 127.0.0.3
    secret: "lab-secret"
    exempt: true
""")
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.log()


def Enrolled(server: Server, **fields):
    """A fresh user with the local password and a TOTP token."""
    return server.enrol(f"user{next(_names)}", PASSWORD, **fields)


@pytest.fixture
def user(server):
    return Enrolled(server)


def audit_for(server: Server, name: str, count: int = 1) -> list[dict]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        records = [r for r in server.audit() if r["user"] == name]
        if len(records) >= count:
            return records
        time.sleep(0.02)
    return [r for r in server.audit() if r["user"] == name]


def auth(server, name, password, *extra, ma=True):
    attributes = [("User-Name", name), ("User-Password", password), *extra]
    if ma:
        attributes.append(("Message-Authenticator", "0x00"))
    return radclient(server.port, attributes)


# --- the flows of the issue -----------------------------------------------------

def test_inline_password_and_code_is_accepted(server, user):
    reply = auth(server, user.name, f"{PASSWORD},{user.code()}")
    assert reply.code == "Access-Accept", reply.output
    record = audit_for(server, user.name)[-1]
    assert (record["result"], record["factor"], record["device"]) == ("accept", "totp", user.serial)


def test_password_alone_is_challenged_and_the_code_with_the_state_accepted(server, user):
    challenge = auth(server, user.name, PASSWORD)
    assert challenge.code == "Access-Challenge", challenge.output
    assert "code" in challenge.first("Reply-Message")
    state = challenge.first("State")
    assert state.startswith("0x") and len(state) == 2 + 32
    answer = auth(server, user.name, user.code(), ("State", state))
    assert answer.code == "Access-Accept", answer.output
    again = auth(server, user.name, user.code(1), ("State", state))
    assert again.code == "Access-Reject"              # a State is single-use
    results = [(r["result"], r["reason"]) for r in audit_for(server, user.name, 3)]
    assert results == [("challenge", None), ("accept", None), ("reject", "bad_state")]


def test_a_replayed_code_is_rejected(server, user):
    code = user.code()
    assert auth(server, user.name, f"{PASSWORD},{code}").code == "Access-Accept"
    assert auth(server, user.name, f"{PASSWORD},{code}").code == "Access-Reject"
    assert audit_for(server, user.name, 2)[-1]["reason"] == "replay"


def test_a_wrong_password_is_rejected(server, user):
    reply = auth(server, user.name, f"wrong,{user.code()}")
    assert reply.code == "Access-Reject"
    assert "Reply-Message" not in reply.attributes
    assert audit_for(server, user.name)[-1]["reason"] == "bad_password"


def test_a_request_without_message_authenticator_is_dropped(server, user):
    reply = auth(server, user.name, f"{PASSWORD},{user.code()}", ma=False)
    assert reply.code is None, reply.output
    assert audit_for(server, user.name) == []
    drops = [e for e in server.log_events() if e.get("event") == "radius.drop"]
    assert any(e["reason"] == "missing_message_authenticator" for e in drops)


def test_a_client_may_be_allowed_to_omit_message_authenticator(server, user):
    request = codec.build_access_request(b"legacy-secret", user.name,
                                         f"{PASSWORD},{user.code()}".encode(),
                                         id=7, message_authenticator=False)
    reply = send_from(server, "127.0.0.2", request)
    response = codec.decode_response(reply, b"legacy-secret", request[4:20])
    assert response.code == codec.ACCESS_ACCEPT
    assert response.message_authenticator_first


# --- retransmissions --------------------------------------------------------------

def send_from(server: Server, source: str, data: bytes, timeout: float = 3.0, port: int = 0,
              count: int = 1) -> bytes | list[bytes | None] | None:
    import socket
    replies = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, port))
        sock.settimeout(timeout)
        for _ in range(count):
            sock.sendto(data, ("127.0.0.1", server.port))
            try:
                replies.append(sock.recv(4096))
            except socket.timeout:
                replies.append(None)
    return replies[0] if count == 1 else replies


def test_a_retransmission_gets_the_identical_reply_without_consuming_the_code_again(server, user):
    request = codec.build_access_request(SECRET.encode(), user.name,
                                         f"{PASSWORD},{user.code()}".encode(), id=42)
    first, second = send_from(server, "127.0.0.1", request, count=2)
    assert first is not None and first == second
    assert codec.decode_response(first, SECRET.encode(), request[4:20]).code == codec.ACCESS_ACCEPT
    time.sleep(0.3)
    assert len(audit_for(server, user.name)) == 1     # decided once


def test_a_retransmission_during_the_decision_is_not_worked_twice(server, user):
    """Three copies sent at once: one decision, one audit record, replies identical."""
    request = codec.build_access_request(SECRET.encode(), user.name,
                                         f"{PASSWORD},{user.code()}".encode(), id=43)
    # copies that arrived while the first was decided got nothing; the late one gets the cache
    first, cached = server.send_copies(request, 3)
    assert first == cached
    time.sleep(0.3)
    assert len(audit_for(server, user.name)) == 1


# --- protocol hygiene ---------------------------------------------------------------

def test_every_response_starts_with_message_authenticator_and_keeps_proxy_state(server, user):
    request = codec.build_access_request(SECRET.encode(), user.name, PASSWORD.encode(), id=9,
                                         attributes=[("Proxy-State", b"hop-1"),
                                                     ("Proxy-State", b"hop-2")])
    reply = send_from(server, "127.0.0.1", request)
    response = codec.decode_response(reply, SECRET.encode(), request[4:20])
    assert response.code == codec.ACCESS_CHALLENGE
    assert response.message_authenticator_first
    assert list(response.proxy_states) == [b"hop-1", b"hop-2"]


def test_rejects_look_the_same_whatever_the_reason(server, user):
    """Unknown user, wrong password, wrong code: the same packet but for the authenticator."""
    bodies = set()
    authenticator = os.urandom(16)
    for name, password in [("nobody-here", f"{PASSWORD},123456"),
                           (user.name, f"wrong,{user.code()}"),
                           (user.name, f"{PASSWORD},{'000000' if user.code() != '000000' else '111111'}")]:
        request = codec.build_access_request(SECRET.encode(), name, password.encode(), id=77,
                                             authenticator=authenticator)
        reply = send_from(server, "127.0.0.1", request)
        response = codec.decode_response(reply, SECRET.encode(), authenticator)
        assert response.code == codec.ACCESS_REJECT
        # everything but the Response Authenticator and the Message-Authenticator value
        bodies.add((reply[:4], [t for t, _ in response.attributes].__repr__()))
        time.sleep(0.05)     # not a retransmission: a new packet with a new password each time
    assert len(bodies) == 1
    reasons = [r["reason"] for r in server.audit() if r["user"] in ("nobody-here", user.name)]
    assert {"unknown_user", "bad_password", "bad_code"} <= set(reasons)


def test_status_server_is_answered(server):
    reply = radclient(server.port, [("Message-Authenticator", "0x00")], kind="status")
    assert reply.code == "Access-Accept", reply.output


def test_a_wrong_secret_is_dropped(server, user):
    reply = radclient(server.port, [("User-Name", user.name), ("User-Password", PASSWORD),
                                    ("Message-Authenticator", "0x00")], secret="not-the-secret")
    assert reply.code is None
    drops = [e for e in server.log_events() if e.get("event") == "radius.drop"]
    assert any(e["reason"] == "bad_message_authenticator" for e in drops)


def test_unknown_sources_are_dropped(server, user):
    request = codec.build_access_request(SECRET.encode(), user.name, PASSWORD.encode())
    assert send_from(server, "127.0.0.9", request, timeout=1.0) is None
    drops = [e for e in server.log_events() if e.get("event") == "radius.drop"]
    assert any(e["reason"] == "unknown_client" and e["source_ip"] == "127.0.0.9" for e in drops)


def test_garbage_never_stalls_the_server(server, user):
    import socket
    rng = random.Random(2865)
    valid = codec.build_access_request(SECRET.encode(), user.name, PASSWORD.encode(), id=1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(300):
            kind = i % 3
            if kind == 0:
                data = rng.randbytes(rng.randrange(0, 200))
            elif kind == 1:
                data = valid[:rng.randrange(0, len(valid))]
            else:
                flipped = bytearray(valid)
                flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
                data = bytes(flipped)
            sock.sendto(data, ("127.0.0.1", server.port))
        sock.sendto(struct.pack("!BBH", 1, 1, 5000) + b"\0" * 16, ("127.0.0.1", server.port))
    assert server.proc.poll() is None
    assert auth(server, user.name, f"{PASSWORD},{user.code()}").code == "Access-Accept"
    assert "Traceback" not in server.log()


def test_an_exempt_client_needs_the_password_only(server, user):
    request = codec.build_access_request(b"lab-secret", user.name, PASSWORD.encode(), id=3)
    response = codec.decode_response(send_from(server, "127.0.0.3", request), b"lab-secret",
                                     request[4:20])
    assert response.code == codec.ACCESS_ACCEPT
    assert audit_for(server, user.name)[-1]["factor"] == "none"


# --- the audit record -------------------------------------------------------------------

def test_the_audit_record_has_the_fields_of_the_contract(server):
    someone = Enrolled(server, display_name="Alice Example", email="alice@example.org",
                       phone="+4915112345678")
    code = someone.code()
    reply = auth(server, someone.name, f"{PASSWORD},{code}",
                 ("Calling-Station-Id", "198.51.100.7"))
    assert reply.code == "Access-Accept"
    record = audit_for(server, someone.name)[-1]
    expected = {"time", "server", "server_ip", "client", "client_ip", "user_ip", "user",
                "display_name", "email", "phone", "device", "primary", "factor", "result",
                "reason", "duration_ms", "request_id"}
    assert expected <= set(record)
    assert record["server"] == "mfa-test" and record["client"] == "local"
    assert record["client_ip"] == "127.0.0.1" and record["server_ip"] == "127.0.0.1"
    assert record["user_ip"] == "198.51.100.7"
    assert record["display_name"] == "Alice Example"
    assert record["email"] == "a***@example.org" and record["phone"] == "***5678"
    assert record["primary"] == "local" and record["duration_ms"] > 0
    everything = server.log() + server.audit_path.read_text()
    assert PASSWORD not in everything and code not in everything
    assert "+4915112345678" not in everything and "alice@example.org" not in everything
    assert SECRET not in everything


def test_lockout_rejects_the_right_code_and_unlock_lifts_it(server, user):
    for _ in range(3):                                     # policy.lockout.failures: 3 here
        assert auth(server, user.name, f"wrong,{user.code()}").code == "Access-Reject"
    assert auth(server, user.name, f"{PASSWORD},{user.code()}").code == "Access-Reject"
    assert audit_for(server, user.name, 4)[-1]["reason"] == "locked"
    server.cli("user", "unlock", user.name)
    assert auth(server, user.name, f"{PASSWORD},{user.code()}").code == "Access-Accept"


def test_report_clients_shows_who_sends_message_authenticator(server, user):
    auth(server, user.name, PASSWORD)
    deadline = time.monotonic() + 12                        # counts are written every 5 s
    while time.monotonic() < deadline:
        rows = {r["name"]: r for r in json.loads(
            server.cli("report", "clients", "--json").stdout)}
        if rows["local"]["requests"]:
            break
        time.sleep(0.5)
    assert rows["local"]["requests"] >= 1
    assert rows["local"]["sends_message_authenticator"] in ("yes", "mixed")
