"""End to end: radclient → radius-mfa → a real FreeRADIUS upstream (PAP, MS-CHAPv2, challenges, failover)."""

from __future__ import annotations

import json
import socket
import time

import pyotp
import pytest

from e2e import SECRET, Server, needs_radclient, radclient
from peers import freeradius
from peers.freeradius import ALICE_REPLY, CAROL_PIN, FreeRadius
from peers.mschapv2 import MsChapV2, asymmetric_start_key, master_key
from radius_mfa.radius import codec

pytestmark = [needs_radclient,
              pytest.mark.skipif(not freeradius.available(),
                                 reason="FreeRADIUS (Debian freeradius) is not installed")]
LAB_SECRET = b"lab-nas-secret"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    peer = FreeRadius(tmp_path_factory.mktemp("freeradius")).start()
    yield peer
    peer.stop()


def primary_section(*ports: int, timeout: float = 1.0, retries: int = 1) -> str:
    servers = "".join(f'\n      - {{address: "127.0.0.1:{port}", secret: "testing123"}}'
                      for port in ports)
    return f"""  backend: radius
  radius:
    servers:{servers}
    timeout: {timeout}
    retries: {retries}"""


CLIENTS = f"""
  - name: vpn
    address: 127.0.0.1
    secret: "{SECRET}"
    timeout: 10
  - name: lab
    address: 127.0.0.3
    secret: "{LAB_SECRET.decode()}"
    exempt: true
"""


@pytest.fixture(scope="module")
def server(upstream, tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("upstream-e2e"), clients=CLIENTS,
                 primary=primary_section(upstream.port))
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.log()


def auth(server, name, password, *extra, timeout=4):
    server.mark(name)
    return radclient(server.port, [("User-Name", name), ("User-Password", password), *extra,
                                   ("Message-Authenticator", "0x00")], timeout=timeout)


def last_audit(server, name):
    return server.record_since_mark(name)


def assert_alice_attributes(reply):
    assert reply.first("Class") == "0x" + ALICE_REPLY["Class"].hex()
    assert reply.first("Filter-Id") == ALICE_REPLY["Filter-Id"]
    assert reply.first("Framed-IP-Address") == ALICE_REPLY["Framed-IP-Address"]
    assert reply.first("Session-Timeout") == str(ALICE_REPLY["Session-Timeout"])
    assert reply.first("Cisco-AVPair") == ALICE_REPLY["Cisco-AVPair"]
    assert "Port-Limit" not in reply.attributes              # not on the allow list


def test_pap_and_a_code_pass_the_upstream_reply_attributes_through(server):
    totp = server.enrol("alice").totp
    reply = auth(server, "alice", f"alice-pw,{totp.now()}")
    assert reply.code == "Access-Accept", reply.output
    assert_alice_attributes(reply)
    assert (last_audit(server, "alice")["primary"], last_audit(server, "alice")["factor"]) == (
        "radius", "totp")


def test_the_attributes_survive_our_challenge_round(server):
    totp = pyotp.TOTP(json.loads(server.cli("token", "add", "alice", "--type", "totp",
                                            "--json").stdout)["secret"])
    challenge = auth(server, "alice", "alice-pw")
    assert challenge.code == "Access-Challenge", challenge.output
    assert "Filter-Id" not in challenge.attributes
    reply = auth(server, "alice", totp.now(), ("State", challenge.first("State")))
    assert reply.code == "Access-Accept", reply.output
    assert_alice_attributes(reply)


def test_a_wrong_upstream_password_is_rejected(server):
    reply = auth(server, "alice", "wrong,123456")
    assert reply.code == "Access-Reject" and "Filter-Id" not in reply.attributes
    assert last_audit(server, "alice")["reason"] == "bad_password"


def test_an_upstream_challenge_is_relayed_then_ours_follows(server):
    totp = server.enrol("carol").totp
    pin_prompt = auth(server, "carol", "carol-pw")
    assert pin_prompt.code == "Access-Challenge", pin_prompt.output
    assert pin_prompt.first("Reply-Message") == "Enter your new PIN"
    code_prompt = auth(server, "carol", CAROL_PIN, ("State", pin_prompt.first("State")))
    assert code_prompt.code == "Access-Challenge", code_prompt.output
    assert "code" in code_prompt.first("Reply-Message")
    done = auth(server, "carol", totp.now(), ("State", code_prompt.first("State")))
    assert done.code == "Access-Accept", done.output


def send_from(source: str, port: int, data: bytes, timeout: float = 5.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(timeout)
        sock.sendto(data, ("127.0.0.1", port))
        try:
            return sock.recv(4096)
        except socket.timeout:
            return None


def test_mschapv2_is_forwarded_and_the_mppe_keys_re_encrypted_for_the_nas(server):
    attempt = MsChapV2("bob", "bob-pw")
    request = codec.build_access_request(LAB_SECRET, "bob", None, id=21,
                                         attributes=list(attempt.forward()))
    server.mark("bob")
    reply = send_from("127.0.0.3", server.port, request)
    response = codec.decode_response(reply, LAB_SECRET, request[4:20])
    assert response.code == codec.ACCESS_ACCEPT
    assert response.get("MS-CHAP2-Success") == attempt.expected_success()
    master = master_key("bob-pw", attempt.nt_response)
    # the server's send key is the client's receive key (RFC 3079 section 3.3)
    assert response.get("MS-MPPE-Send-Key") == asymmetric_start_key(master, True, True)
    assert response.get("MS-MPPE-Recv-Key") == asymmetric_start_key(master, False, True)
    assert last_audit(server, "bob")["factor"] == "none"


def test_mschapv2_for_a_user_needing_a_code_follows_the_unenrolled_policy(server):
    server.enrol("bob")
    attempt = MsChapV2("bob", "bob-pw")
    request = codec.build_access_request(SECRET.encode(), "bob", None, id=22,
                                         attributes=list(attempt.forward()))
    server.mark("bob")
    response = codec.decode_response(send_from("127.0.0.1", server.port, request),
                                     SECRET.encode(), request[4:20])
    assert response.code == codec.ACCESS_REJECT
    assert response.get("MS-CHAP2-Success") is None
    assert last_audit(server, "bob")["reason"] == "no_factor"


def test_failover_to_the_second_upstream_and_upstream_down(upstream, tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dead:
        dead.bind(("127.0.0.1", 0))                      # bound, never answers
        dead_port = dead.getsockname()[1]
        srv = Server(tmp_path, clients=CLIENTS,
                     primary=primary_section(dead_port, upstream.port, timeout=0.4, retries=1))
        srv.start()
        try:
            totp = srv.enrol("alice").totp
            started = time.monotonic()
            reply = auth(srv, "alice", f"alice-pw,{totp.now()}")
            assert reply.code == "Access-Accept", reply.output
            assert 0.7 < time.monotonic() - started < 4       # two tries at the dead one first
            assert_alice_attributes(reply)
            started = time.monotonic()
            assert auth(srv, "alice", "alice-pw").code == "Access-Challenge"
            assert time.monotonic() - started < 0.7           # the dead one is skipped now
        finally:
            assert srv.stop() == 0
    down = Server(tmp_path / "down" if (tmp_path / "down").mkdir() is None else tmp_path,
                  clients=CLIENTS, primary=primary_section(dead_port, timeout=0.3, retries=1))
    down.start()
    try:
        started = time.monotonic()
        assert auth(down, "alice", "alice-pw,123456").code == "Access-Reject"
        assert time.monotonic() - started < 4
        assert last_audit(down, "alice")["reason"] == "upstream_down"
    finally:
        assert down.stop() == 0
