"""End to end: radclient → radius-mfa → a real OpenLDAP slapd (LDAPS, search-then-bind)."""

from __future__ import annotations

import json
import time

import pytest

from e2e import Server, needs_radclient, radclient
from peers.slapd import MFA_GROUP, PEOPLE, SERVICE_DN, SERVICE_GROUP, SERVICE_PASSWORD, SUFFIX, Slapd, available

pytestmark = [needs_radclient,
              pytest.mark.skipif(not available(), reason="slapd (Debian slapd) is not installed")]


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    slapd = Slapd(tmp_path_factory.mktemp("slapd")).start()
    yield slapd
    slapd.stop()


@pytest.fixture(scope="module")
def server(directory, tmp_path_factory):
    home = tmp_path_factory.mktemp("ldap-e2e")
    (home / "ldap.secret").write_text(SERVICE_PASSWORD + "\n")
    srv = Server(home, primary=f"""  backend: ldap
  ldap:
    servers: ["{directory.ldaps_url}"]
    ca_file: "{directory.ca_file}"
    bind_dn: "{SERVICE_DN}"
    bind_password_file: ldap.secret
    base_dn: "{SUFFIX}"
    user_filter: "(uid={{user}})"
    attributes: {{display_name: displayName, email: mail, phone: [mobile, telephoneNumber]}}
    mfa_group: "{MFA_GROUP}"
    timeout: 2""", policy=f'  exempt_groups: ["{SERVICE_GROUP}"]')
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.log()


def auth(server, name, password):
    server.mark(name)
    return radclient(server.port, [("User-Name", name), ("User-Password", password),
                                   ("Message-Authenticator", "0x00")], timeout=4)


def last_audit(server, name):
    return server.record_since_mark(name)


def test_a_directory_password_and_a_code_sign_in(server):
    totp = server.enrol("alice").totp   # no local password: the directory has it
    reply = auth(server, "alice", f"alice-pw,{totp.now()}")
    assert reply.code == "Access-Accept", reply.output
    record = last_audit(server, "alice")
    assert (record["primary"], record["factor"]) == ("ldap", "totp")
    assert record["display_name"] == "Alice Example"
    assert record["email"] == "a***@example.org" and record["phone"] == "***0001"
    shown = json.loads(server.cli("user", "show", "alice", "--json").stdout)
    assert (shown["display_name"], shown["email"], shown["phone"]) == (
        "Alice Example", "alice@example.org", "+15550100001")   # kept in the user record


def test_the_challenge_round_works_with_a_directory_password(server):
    totp = server.enrol("doe, john").totp
    challenge = auth(server, "doe, john", "doe-pw")
    assert challenge.code == "Access-Challenge", challenge.output
    answer = radclient(server.port, [("User-Name", "doe, john"), ("User-Password", totp.now()),
                                     ("State", challenge.first("State")),
                                     ("Message-Authenticator", "0x00")])
    assert answer.code == "Access-Accept", answer.output


def test_a_wrong_or_empty_directory_password_is_rejected(server, directory):
    carol = PEOPLE["carol"].dn
    assert auth(server, "carol", "wrong,123456").code == "Access-Reject"
    assert last_audit(server, "carol")["reason"] == "bad_password"
    binds = len(directory.binds(dn=carol))
    assert binds >= 1
    assert auth(server, "carol", ",123456").code == "Access-Reject"
    assert last_audit(server, "carol")["reason"] == "bad_password"
    assert len(directory.binds(dn=carol)) == binds        # never sent as an (anonymous) bind


def test_users_outside_the_mfa_group_need_the_password_only(server):
    reply = auth(server, "bob", "bob-pw")                  # bob is in no group
    assert reply.code == "Access-Accept", reply.output
    assert last_audit(server, "bob")["factor"] == "none"


def test_members_of_an_exempt_group_need_the_password_only(server, directory):
    reply = auth(server, "dave", "dave-pw")                # dave: service-accounts
    assert reply.code == "Access-Accept", reply.output
    assert last_audit(server, "dave")["factor"] == "none"


def test_a_filter_injection_finds_nobody(server):
    assert auth(server, "*", "alice-pw,123456").code == "Access-Reject"
    assert auth(server, "al*", "alice-pw,123456").code == "Access-Reject"


def test_a_dead_directory_gives_upstream_down_within_the_client_timeout(directory, tmp_path):
    srv = Server(tmp_path, primary="""  backend: ldap
  ldap:
    servers: ["ldap://127.0.0.1:9", "ldap://127.0.0.1:7"]
    user_dn_template: "uid={user},ou=people,dc=example,dc=org"
    timeout: 1""")
    srv.start()
    try:
        started = time.monotonic()
        reply = auth(srv, "alice", "alice-pw,123456")
        assert reply.code == "Access-Reject"
        assert time.monotonic() - started < 4
        assert last_audit(srv, "alice")["reason"] == "upstream_down"
    finally:
        assert srv.stop() == 0
