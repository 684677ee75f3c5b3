"""End to end: RADIUS/1.1 (RFC 9765) over a `tls` listener, driven by the
test client written from the RFC (tests/peers/radius11.py), radius-mfa in
front of a real FreeRADIUS upstream (for the password, and MS-CHAPv2).

No real peer here speaks RADIUS/1.1: FreeRADIUS 3.2.1 and radsecproxy 1.9.2
(Debian 12) carry no ``radius/1.1`` ALPN name nor any ALPN support in their
binaries or configuration, so the client is ours.
"""

from __future__ import annotations

import json
import ssl

import pytest

from e2e import Server
from peers import freeradius
from peers.freeradius import ALICE_REPLY, FreeRadius
from peers.mschapv2 import MsChapV2, asymmetric_start_key, master_key
from peers.pki import SERVER_NAME, Pki
from peers.process import free_tcp_port, wait_for
from peers.radius11 import ALPN_V10, ALPN_V11, ConnectionClosed, Radius11Client
from radius_mfa.radius import codec, v11

pytestmark = [
              pytest.mark.skipif(not freeradius.available(),
                                 reason="FreeRADIUS (Debian freeradius) is not installed")]

# one NAS per loopback address: clients are matched by address and certificate
NAS = {"nas11": "127.0.0.1", "legacy": "127.0.0.2", "lab": "127.0.0.3", "modern": "127.0.0.4"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    authority = Pki(tmp_path_factory.mktemp("pki"))
    authority.server_files = authority.server()
    authority.clients = {name: authority.client(name, f"{name}.test") for name in NAS}
    return authority


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    peer = FreeRadius(tmp_path_factory.mktemp("freeradius")).start()
    yield peer
    peer.stop()


def clients_section() -> str:
    return f"""
  - name: nas11
    address: {NAS["nas11"]}
    transport: tls
    cert_name: nas11.test
    require_message_authenticator: true
    timeout: 10
  - name: legacy
    address: {NAS["legacy"]}
    transport: tls
    cert_name: legacy.test
    radius11: forbid
  - name: lab
    address: {NAS["lab"]}
    transport: tls
    cert_name: lab.test
    exempt: true
  - name: modern
    address: {NAS["modern"]}
    transport: tls
    cert_name: modern.test
    radius11: require
"""


@pytest.fixture(scope="module")
def server(pki, upstream, tmp_path_factory):
    tls_port = free_tcp_port()
    files = pki.server_files
    srv = Server(tmp_path_factory.mktemp("radius11-e2e"), clients=clients_section(),
                 primary=f"""  backend: radius
  radius:
    servers:
      - {{address: "127.0.0.1:{upstream.port}", secret: "testing123"}}
    timeout: 1
    retries: 1""",
                 listen=f'    - tls: "127.0.0.1:{tls_port}"',
                 server=f"""  tls:
    cert_file: "{files.cert}"
    key_file: "{files.key}"
    ca_file: "{pki.ca_file}"
""")
    srv.tls_port = tls_port
    srv.enrol("alice")                  # the upstream checks the passwords
    srv.enrol("carol")
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.log()


def connect(server, pki, nas: str, alpn=(ALPN_V11,), **kwargs) -> Radius11Client:
    issued = pki.clients[nas]
    return Radius11Client("127.0.0.1", server.tls_port, ca_file=str(pki.ca_file),
                          cert_file=str(issued.chain), key_file=str(issued.key), alpn=alpn,
                          server_hostname=SERVER_NAME, source=NAS[nas], **kwargs).connect()


def new_totp(server, user: str):
    import pyotp
    token = json.loads(server.cli("token", "add", user, "--type", "totp", "--json").stdout)
    return pyotp.TOTP(token["secret"])


def refusals(server, reason: str) -> list[dict]:
    return [e for e in server.log_events()
            if e.get("event") == "radsec.refused" and e.get("reason") == reason]


# --- authentication over RADIUS/1.1 ----------------------------------------------

def test_inline_password_and_code_is_accepted(server, pki):
    totp = new_totp(server, "alice")
    server.mark("alice")
    with connect(server, pki, "nas11") as nas:
        assert nas.protocol == ALPN_V11 and nas.tls_version == "TLSv1.3"
        token = nas.send("alice", f"alice-pw,{totp.now()}")
        reply = nas.receive(token)
    assert reply.code == codec.ACCESS_ACCEPT and reply.token == token
    assert not reply.has_message_authenticator and reply.reserved_zero
    assert reply.get("Filter-Id") == ALICE_REPLY["Filter-Id"]         # the upstream's reply attributes
    record = server.record_since_mark("alice")
    assert (record["result"], record["factor"], record["client"]) == ("accept", "totp", "nas11")
    assert record["transport"] == "tls"
    assert record["protocol"] == "radius/1.1"


def test_a_challenge_round_trip_carries_the_state(server, pki):
    totp = new_totp(server, "alice")
    with connect(server, pki, "nas11") as nas:
        challenge = nas.request("alice", "alice-pw")
        assert challenge.code == codec.ACCESS_CHALLENGE
        state = challenge.get("State")
        assert state and "code" in challenge.get("Reply-Message")
        answer = nas.request("alice", totp.now(), state=state)
    assert answer.code == codec.ACCESS_ACCEPT
    assert answer.get("Class") == ALICE_REPLY["Class"]


def test_a_wrong_password_is_rejected(server, pki):
    server.mark("alice")
    with connect(server, pki, "nas11") as nas:
        reply = nas.request("alice", "wrong-pw,123456")
    assert reply.code == codec.ACCESS_REJECT and reply.attributes == ()
    assert server.record_since_mark("alice")["reason"] == "bad_password"


def test_replies_are_matched_by_token_with_requests_in_flight(server, pki):
    with connect(server, pki, "nas11") as nas:
        first = nas.send("alice", "wrong-1")
        second = nas.send("carol", "carol-pw")            # the upstream's PIN challenge
        third = nas.send(None, code=codec.STATUS_SERVER)
        assert nas.receive(third).code == codec.ACCESS_ACCEPT     # alive; no Message-Authenticator
        assert nas.receive(second).code == codec.ACCESS_CHALLENGE
        assert nas.receive(first).code == codec.ACCESS_REJECT
        assert len({first, second, third}) == 3


def test_a_message_authenticator_sent_anyway_is_ignored(server, pki):
    # RFC 9765 section 5.2: an invalid attribute; the request is still answered
    with connect(server, pki, "nas11") as nas:
        reply = nas.request("alice", "wrong-2",
                            attributes=[(codec.MESSAGE_AUTHENTICATOR, b"\x42" * 16)])
    assert reply.code == codec.ACCESS_REJECT


def test_mschapv2_accept_carries_the_mppe_keys_in_clear(server, pki):
    attempt = MsChapV2("bob", "bob-pw")
    server.mark("bob")
    with connect(server, pki, "lab") as nas:
        reply = nas.request("bob", None, attributes=list(attempt.forward()))
    assert reply.code == codec.ACCESS_ACCEPT
    assert reply.get("MS-CHAP2-Success") == attempt.expected_success()
    master = master_key("bob-pw", attempt.nt_response)
    send, recv = asymmetric_start_key(master, True, True), asymmetric_start_key(master, False, True)
    # the keys themselves, as 16-octet values: no salt, no MD5 (RFC 9765 section 5.1.4)
    vendor = {(v[4], v[6:]) for k, v in reply.attributes if k == codec.VENDOR_SPECIFIC
              and v[:4] == b"\x00\x00\x01\x37"}
    assert (16, send) in vendor and (17, recv) in vendor
    record = server.record_since_mark("bob")
    assert (record["method"], record["factor"], record["transport"]) == ("mschapv2", "none", "tls")


def test_garbage_on_a_radius11_connection_closes_it(server, pki):
    with connect(server, pki, "nas11") as nas:
        nas.send_raw(b"\x01\x00\x00\x18" + b"\x00" * 16 + b"\x02\x00\x00\x00")   # attribute length 0
        assert nas.closed_by_server()


# --- negotiation: allow (default), forbid, require ---------------------------------

def test_a_client_offering_both_gets_radius11(server, pki):
    with connect(server, pki, "nas11", alpn=(ALPN_V10, ALPN_V11)) as nas:
        assert nas.protocol == ALPN_V11


def test_a_client_offering_radius10_speaks_rfc6614(server, pki):
    with connect(server, pki, "nas11", alpn=(ALPN_V10,)) as nas:
        assert nas.protocol == ALPN_V10
        reply = nas.request(None, code=codec.STATUS_SERVER)     # RFC 2865 packets, secret "radsec"
        assert reply.code == codec.ACCESS_ACCEPT and reply.message_authenticator_first


def test_a_forbidden_client_offering_both_falls_back_to_radius10(server, pki):
    with connect(server, pki, "legacy", alpn=(ALPN_V11, ALPN_V10)) as nas:
        assert nas.protocol == ALPN_V10
        assert nas.request(None, code=codec.STATUS_SERVER).code == codec.ACCESS_ACCEPT


def test_a_forbidden_client_offering_only_radius11_is_refused(server, pki):
    # refused in the handshake (the server fails ALPN: RFC 7301 section 3.2)
    with pytest.raises(ssl.SSLError):
        connect(server, pki, "legacy", alpn=(ALPN_V11,))
    assert wait_for(lambda: refusals(server, "alpn"))
    assert refusals(server, "alpn")[-1]["client"] == "legacy"


def test_a_client_that_requires_radius11_cannot_speak_radius10(server, pki):
    with connect(server, pki, "modern", alpn=(ALPN_V10, ALPN_V11)) as nas:
        assert nas.protocol == ALPN_V11
    for alpn in ((ALPN_V10,), None):
        with pytest.raises((ssl.SSLError, ConnectionClosed, ConnectionError)):
            with connect(server, pki, "modern", alpn=alpn) as nas:
                nas.request(None, code=codec.STATUS_SERVER)
    assert wait_for(lambda: any(e["client"] == "modern" for e in refusals(server, "alpn")))


def test_radius11_is_not_chosen_over_tls12(server, pki):
    # RFC 9765 section 3.4: RADIUS/1.1 requires TLS 1.3
    with connect(server, pki, "nas11", alpn=(ALPN_V11, ALPN_V10),
                 tls_version=ssl.TLSVersion.TLSv1_2) as nas:
        assert (nas.tls_version, nas.protocol) == ("TLSv1.2", ALPN_V10)
