"""The ``ldap`` primary backend against real OpenLDAP servers (tests/peers/slapd.py).

Most tests drive the backend with ``immediate_runner`` (ldap3 blocks anyway,
so no reactor is needed); one trial TestCase runs concurrent checks through a
real Twisted thread pool, as the server does. slapd logs every BIND at
``-d 256``: the tests count binds and connections there instead of trusting
the code under test.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import structlog
from twisted.internet import defer, reactor
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest as trial

from helpers import run
from peers import slapd as peer
from peers.process import wait_for
from peers.slapd import (HELPDESK_GROUP, MFA_GROUP, PEOPLE, PEOPLE_DN, POSIX_GROUP,
                         SERVICE_DN, SERVICE_GROUP, SERVICE_PASSWORD, SUFFIX, UNIQUE_GROUP,
                         Slapd, free_tcp_port, make_tls)
from radius_mfa.config import LdapAttributes, LdapPrimaryConfig
from radius_mfa.primary.base import PrimaryRequest, PrimaryResult
from radius_mfa.primary.ldap import (LdapBackend, reason_for_refused_bind, user_dn,
                                     user_filter)
from radius_mfa.store.asyncstore import immediate_runner, thread_runner
from radius_mfa.verdicts import Reason

pytestmark = pytest.mark.skipif(
    not peer.available() and not os.environ.get("CI"),
    reason="slapd (Debian slapd) is not installed; .ci/run installs it")

TEMPLATE = f"uid={{user}},{PEOPLE_DN}"
ALICE, BOB, CAROL, DAVE = (PEOPLE[n] for n in ("alice", "bob", "carol", "dave"))


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def directory(tmp_path_factory) -> Slapd:
    server = Slapd(tmp_path_factory.mktemp("slapd")).start()
    yield server
    server.stop()


@pytest.fixture
def backends():
    """Makes backends and closes them after the test."""
    made: list[LdapBackend] = []

    def make(config: LdapPrimaryConfig, **kwargs) -> LdapBackend:
        backend = LdapBackend(config, run=immediate_runner, **kwargs)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def search_config(server: Slapd, **overrides) -> LdapPrimaryConfig:
    """Search-then-bind with the service account, plain ldap:// (TLS has its own tests)."""
    settings = dict(servers=(server.ldap_url,), bind_dn=SERVICE_DN,
                    bind_password=SERVICE_PASSWORD, base_dn=SUFFIX, timeout=2.0)
    settings.update(overrides)
    return LdapPrimaryConfig(**settings)


def direct_config(server: Slapd, **overrides) -> LdapPrimaryConfig:
    """Direct bind with the DN template, no service account."""
    settings = dict(servers=(server.ldap_url,), user_dn_template=TEMPLATE, timeout=2.0)
    settings.update(overrides)
    return LdapPrimaryConfig(**settings)


def check(backend: LdapBackend, user: str, password: str | bytes | None,
          deadline: float | None = None) -> PrimaryResult:
    if isinstance(password, str):
        password = password.encode("utf-8")
    return run(backend.authenticate(PrimaryRequest(user, None, password, client="vpn",
                                                   deadline=deadline)))


@contextmanager
def silent_server():
    """A TCP port that accepts connections (the kernel does) and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"ldap://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def closed_url() -> str:
    return f"ldap://127.0.0.1:{free_tcp_port()}"


def events_named(events: list[dict], name: str) -> list[dict]:
    return [e for e in events if e.get("event") == name]


# --------------------------------------------------------------------------- escaping (pure)

def test_user_name_is_escaped_for_a_dn():
    assert user_dn(TEMPLATE, "doe, john") == f"uid=doe\\, john,{PEOPLE_DN}"
    assert user_dn(TEMPLATE, "a+b=c") == f"uid=a\\+b\\=c,{PEOPLE_DN}"


def test_user_name_is_escaped_for_a_filter():
    assert user_filter("(uid={user})", "*") == "(uid=\\2a)"
    assert user_filter("(uid={user})", ")(uid=*") == "(uid=\\29\\28uid=\\2a)"
    assert user_filter("(uid={user})", "a\\b") == "(uid=a\\5cb)"


@pytest.mark.parametrize("message, reason", [
    ("80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, data 52e, v4563",
     Reason.BAD_PASSWORD),
    ("80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, data 775, v4563",
     Reason.LOCKED),
    ("80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, data 533, v4563",
     Reason.DISABLED),
    ("80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, data 525, v4563",
     Reason.UNKNOWN_USER),
    ("", Reason.BAD_PASSWORD),                      # OpenLDAP says nothing more
])
def test_active_directory_bind_subcodes_say_why(message, reason):
    assert reason_for_refused_bind(49, message) is reason


# --------------------------------------------------------------------------- direct bind

def test_direct_bind_accepts_the_right_password(directory, backends):
    result = check(backends(direct_config(directory)), "alice", ALICE.password)
    assert result.ok and result.reason is None
    assert result.user_info["email"] == "alice@example.org"   # read as the user herself


def test_direct_bind_rejects_a_wrong_password(directory, backends):
    result = check(backends(direct_config(directory)), "alice", "not-her-password")
    assert (result.ok, result.reason) == (False, Reason.BAD_PASSWORD)


def test_direct_bind_cannot_tell_an_unknown_user_from_a_wrong_password(directory, backends):
    # the directory answers invalidCredentials for both: no enumeration through the template
    result = check(backends(direct_config(directory)), "nobody", "whatever")
    assert (result.ok, result.reason) == (False, Reason.BAD_PASSWORD)


def test_dn_special_user_name_works_with_the_template(directory, backends):
    def does_binds() -> list[str]:     # slapd logs the DN as it normalised it: uid=doe\2C john
        return [dn for dn in directory.binds() if dn.lower().startswith("uid=doe\\2c john,")]
    before = len(does_binds())
    result = check(backends(direct_config(directory)), "doe, john", "doe-pw")
    assert result.ok
    assert result.user_info["display_name"] == "John Doe"
    assert len(does_binds()) == before + 1


def test_template_with_service_account_reads_as_the_service(directory, backends):
    config = direct_config(directory, bind_dn=SERVICE_DN, bind_password=SERVICE_PASSWORD,
                           mfa_group=MFA_GROUP)
    result = check(backends(config), "alice", ALICE.password)
    assert result.ok
    assert result.user_info["groups"] == frozenset({MFA_GROUP.lower()})


# --------------------------------------------------------------------------- search then bind

def test_search_then_bind_accepts_the_right_password(directory, backends):
    result = check(backends(search_config(directory)), "alice", ALICE.password)
    assert result.ok
    assert result.user_info == {
        "display_name": "Alice Example", "email": "alice@example.org",
        "phone": "+15550100001", "groups": frozenset(), "mfa_required": True}


def test_search_then_bind_rejects_a_wrong_password(directory, backends):
    result = check(backends(search_config(directory)), "alice", "wrong")
    assert (result.ok, result.reason) == (False, Reason.BAD_PASSWORD)


def test_search_then_bind_unknown_user(directory, backends):
    before = directory.binds()
    result = check(backends(search_config(directory)), "nobody", "whatever")
    assert (result.ok, result.reason) == (False, Reason.UNKNOWN_USER)
    assert directory.binds()[len(before):] == [SERVICE_DN]        # no user bind was tried


def test_a_refused_service_account_is_upstream_down_and_says_so(directory, backends):
    config = search_config(directory, bind_password="not-the-service-password")
    with structlog.testing.capture_logs() as events:
        result = check(backends(config), "alice", ALICE.password)
    assert (result.ok, result.reason) == (False, Reason.UPSTREAM_DOWN)
    refused = events_named(events, "ldap.service_bind_refused")
    assert refused and refused[0]["log_level"] == "error"
    assert "not-the-service-password" not in repr(events)


def test_a_user_added_while_running_can_sign_in(tmp_path, backends):
    with Slapd(tmp_path / "growing") as server:
        erin = peer.Person("erin", "erin-pw", "Erin Example", mail="erin@example.org")
        server.add(peer.person_entry(erin))
        result = check(backends(search_config(server)), "erin", "erin-pw")
    assert result.ok and result.user_info["email"] == "erin@example.org"


def test_a_filter_matching_two_entries_rejects_with_a_warning(directory, backends):
    config = search_config(directory, user_filter="(cn={user})")
    with structlog.testing.capture_logs() as events:
        result = check(backends(config), "Dup User", "dup-pw")
    assert (result.ok, result.reason) == (False, Reason.UNKNOWN_USER)
    assert events_named(events, "ldap.ambiguous_user")


def test_filter_special_user_name_is_found(directory, backends):
    result = check(backends(search_config(directory)), "o*brien", "obrien-pw")
    assert result.ok and result.user_info["email"] == "obrien@example.org"


def test_non_ascii_password_is_sent_as_utf8(directory, backends):
    result = check(backends(search_config(directory)), "carol", CAROL.password)
    assert result.ok and result.user_info["display_name"] == "Carol Exämple"


@pytest.mark.parametrize("injected", ["*", ")(uid=*", "alice)(uid=*", "*)(|(uid=*", "al*"])
def test_filter_injection_finds_nobody(directory, backends, injected):
    # "al*" with Alice's password would bind as Alice if the * were a wildcard
    result = check(backends(search_config(directory)), injected, ALICE.password)
    assert (result.ok, result.reason) == (False, Reason.UNKNOWN_USER)


# --------------------------------------------------------------------------- never an empty bind

def test_empty_password_is_never_sent_as_a_bind(directory, backends):
    import subprocess
    # this server accepts an unauthenticated bind (a DN, no password) as anonymous …
    whoami = subprocess.run(["ldapwhoami", "-x", "-H", directory.ldap_url, "-D", ALICE.dn,
                             "-w", ""], capture_output=True, text=True, timeout=10)
    assert whoami.returncode == 0 and whoami.stdout.strip() == "anonymous"
    binds_before, connections_before = len(directory.binds(ALICE.dn)), directory.connections()
    # … so the backend must refuse before it reaches the server, in both modes
    for config in (direct_config(directory), search_config(directory)):
        result = check(backends(config), "alice", "")
        assert (result.ok, result.reason) == (False, Reason.BAD_PASSWORD)
    assert len(directory.binds(ALICE.dn)) == binds_before
    assert directory.connections() == connections_before


def test_password_with_nul_is_refused_without_a_bind(directory, backends):
    binds_before = len(directory.binds(ALICE.dn))
    result = check(backends(direct_config(directory)), "alice", b"alice-pw\x00tail")
    assert (result.ok, result.reason) == (False, Reason.BAD_PASSWORD)
    assert len(directory.binds(ALICE.dn)) == binds_before


def test_no_password_at_all_is_a_bad_request(directory, backends):
    result = check(backends(direct_config(directory)), "alice", None)
    assert (result.ok, result.reason) == (False, Reason.BAD_REQUEST)


def test_equalize_contacts_nobody(directory, backends):
    backend = backends(search_config(directory))
    connections_before = directory.connections()
    assert run(backend.equalize(b"alice-pw")) is None
    assert directory.connections() == connections_before


# --------------------------------------------------------------------------- TLS

def test_ldaps_with_the_ca_file(directory, backends):
    config = search_config(directory, servers=(directory.ldaps_url,), ca_file=directory.ca_file)
    assert check(backends(config), "alice", ALICE.password).ok


def test_ldaps_by_host_name(directory, backends):
    url = f"ldaps://localhost:{directory.ldaps_port}"     # the certificate's DNS SAN
    config = direct_config(directory, servers=(url,), ca_file=directory.ca_file)
    assert check(backends(config), "alice", ALICE.password).ok


def test_starttls_with_the_ca_file(directory, backends):
    config = search_config(directory, starttls=True, ca_file=directory.ca_file)
    before = directory.log().count("STARTTLS")
    assert check(backends(config), "alice", ALICE.password).ok
    assert directory.log().count("STARTTLS") >= before + 2   # the service's and Alice's


@pytest.mark.parametrize("mode", ["ldaps", "starttls"])
def test_a_certificate_from_another_ca_is_upstream_down(directory, backends, tmp_path, mode):
    other_ca = make_tls(tmp_path / "other", name="someone else's CA").ca_cert
    if mode == "ldaps":
        config = direct_config(directory, servers=(directory.ldaps_url,), ca_file=str(other_ca))
    else:
        config = direct_config(directory, starttls=True, ca_file=str(other_ca))
    binds_before = len(directory.binds(ALICE.dn))
    with structlog.testing.capture_logs() as events:
        result = check(backends(config), "alice", ALICE.password)
    assert (result.ok, result.reason) == (False, Reason.UPSTREAM_DOWN)
    unusable = events_named(events, "ldap.server_unusable")
    assert unusable and "CERTIFICATE_VERIFY_FAILED" in unusable[0]["error"]
    assert len(directory.binds(ALICE.dn)) == binds_before     # the password never left


def test_a_certificate_for_another_host_is_refused(tmp_path, backends):
    tls = make_tls(tmp_path / "tls", hosts=("ldap.example.org",))
    with Slapd(tmp_path / "misnamed", tls=tls) as server:
        config = direct_config(server, servers=(server.ldaps_url,), ca_file=server.ca_file)
        with structlog.testing.capture_logs() as events:
            result = check(backends(config), "alice", ALICE.password)
    assert (result.ok, result.reason) == (False, Reason.UPSTREAM_DOWN)
    assert "127.0.0.1" in events_named(events, "ldap.server_unusable")[0]["error"]


# --------------------------------------------------------------------------- failover and timeouts

def test_failover_from_a_closed_port_to_the_next_server(directory, backends):
    dead = closed_url()
    backend = backends(search_config(directory, servers=(dead, directory.ldap_url)))
    with structlog.testing.capture_logs() as events:
        assert check(backend, "alice", ALICE.password).ok
    # tried once; then it rests, and Alice's own bind goes straight to the second
    assert [e["server"] for e in events_named(events, "ldap.server_unusable")] == [dead]
    with structlog.testing.capture_logs() as events:
        assert check(backend, "bob", BOB.password).ok
    assert not events_named(events, "ldap.server_unusable")


def test_failover_when_the_first_directory_stops(tmp_path, backends):
    tls = make_tls(tmp_path / "tls")
    first = Slapd(tmp_path / "first", tls=tls).start()
    second = Slapd(tmp_path / "second", tls=tls).start()
    try:
        config = search_config(first, servers=(first.ldaps_url, second.ldaps_url),
                               ca_file=str(tls.ca_cert))
        backend = backends(config)
        assert check(backend, "alice", ALICE.password).ok
        assert first.binds(ALICE.dn) and not second.binds(ALICE.dn)
        first.stop()
        # the pooled service connection to the first one is dead: replaced, on the second
        assert check(backend, "alice", ALICE.password).ok
        assert second.binds(SERVICE_DN) and second.binds(ALICE.dn)
    finally:
        first.stop()
        second.stop()


def test_all_servers_refusing_is_upstream_down_at_once(backends):
    config = LdapPrimaryConfig(servers=(closed_url(), closed_url()), user_dn_template=TEMPLATE,
                               timeout=5.0)
    started = time.monotonic()
    result = check(backends(config), "alice", ALICE.password)
    assert (result.ok, result.reason) == (False, Reason.UPSTREAM_DOWN)
    assert time.monotonic() - started < 1.0


def test_servers_that_never_answer_are_upstream_down_within_the_timeout(backends):
    with silent_server() as first, silent_server() as second:
        config = LdapPrimaryConfig(servers=(first, second), bind_dn=SERVICE_DN,
                                   bind_password=SERVICE_PASSWORD, base_dn=SUFFIX, timeout=0.3)
        started = time.monotonic()
        result = check(backends(config), "alice", ALICE.password)
        elapsed = time.monotonic() - started
    assert (result.ok, result.reason) == (False, Reason.UPSTREAM_DOWN)
    assert 0.5 <= elapsed < 1.5              # one timeout per server, then the verdict


def test_the_requests_deadline_bounds_the_wait(backends):
    with silent_server() as first, silent_server() as second:
        config = LdapPrimaryConfig(servers=(first, second), user_dn_template=TEMPLATE,
                                   timeout=5.0)
        started = time.monotonic()
        result = check(backends(config), "alice", ALICE.password, deadline=0.4)
        elapsed = time.monotonic() - started
    assert (result.ok, result.reason) == (False, Reason.UPSTREAM_DOWN)
    assert elapsed < 1.5


def test_a_silent_first_server_fails_over_to_the_next(directory, backends):
    with silent_server() as hung:
        config = search_config(directory, servers=(hung, directory.ldap_url), timeout=0.3)
        assert check(backends(config), "alice", ALICE.password).ok


# --------------------------------------------------------------------------- user_info

def test_phone_falls_back_to_telephone_number(directory, backends):
    result = check(backends(search_config(directory)), "bob", BOB.password)
    assert result.user_info["phone"] == "+15550100022"       # no mobile: telephoneNumber


def test_absent_attributes_are_left_out(directory, backends):
    result = check(backends(search_config(directory)), "dave", DAVE.password)
    assert "phone" not in result.user_info
    assert result.user_info["email"] == "dave@example.org"


def test_attribute_names_come_from_the_config(directory, backends):
    attributes = LdapAttributes(display_name="cn", email="uid", phone=("telephoneNumber",))
    result = check(backends(search_config(directory, attributes=attributes)),
                   "alice", ALICE.password)
    assert result.user_info["display_name"] == "Alice Example"
    assert result.user_info["email"] == "alice"
    assert result.user_info["phone"] == "+15550100011"


# --------------------------------------------------------------------------- groups

@pytest.mark.parametrize("config_for", [search_config, direct_config])
def test_mfa_group_members_need_a_second_factor(directory, backends, config_for):
    backend = backends(config_for(directory, mfa_group=MFA_GROUP))
    alice = check(backend, "alice", ALICE.password).user_info
    bob = check(backend, "bob", BOB.password).user_info
    assert (alice["mfa_required"], alice["groups"]) == (True, frozenset({MFA_GROUP.lower()}))
    assert (bob["mfa_required"], bob["groups"]) == (False, frozenset())


def test_nested_membership_is_not_resolved_by_a_plain_member_check(directory, backends):
    # carol is in helpdesk, helpdesk is in vpn-mfa; OpenLDAP compares member
    # values only (Active Directory resolves nesting with nested_groups: true)
    result = check(backends(search_config(directory, mfa_group=MFA_GROUP)),
                   "carol", CAROL.password)
    assert result.user_info["mfa_required"] is False
    with_helpdesk = backends(search_config(directory, mfa_group=HELPDESK_GROUP))
    assert check(with_helpdesk, "carol", CAROL.password).user_info["mfa_required"] is True


def test_nested_groups_on_a_server_other_than_ad_fails_closed(directory, backends):
    config = search_config(directory, mfa_group=MFA_GROUP, nested_groups=True)
    with structlog.testing.capture_logs() as events:
        result = check(backends(config, exempt_groups=(SERVICE_GROUP,)), "dave", DAVE.password)
    assert result.ok
    assert result.user_info["mfa_required"] is True            # not excused …
    assert result.user_info["groups"] == frozenset()           # … and not exempt
    assert events_named(events, "ldap.nested_groups_unsupported")


def test_an_mfa_group_that_does_not_exist_fails_closed(directory, backends):
    missing = f"cn=no-such-group,{SUFFIX}"
    with structlog.testing.capture_logs() as events:
        result = check(backends(search_config(directory, mfa_group=missing)),
                       "bob", BOB.password)
    assert result.user_info["mfa_required"] is True
    assert events_named(events, "ldap.group_check_failed")


def test_without_mfa_group_everyone_needs_a_second_factor(directory, backends):
    result = check(backends(search_config(directory)), "bob", BOB.password)
    assert result.user_info["mfa_required"] is True


def test_exempt_groups_are_reported_lower_cased(directory, backends):
    shouting = SERVICE_GROUP.upper()
    backend = backends(search_config(directory, mfa_group=MFA_GROUP),
                       exempt_groups=(shouting,))
    dave = check(backend, "dave", DAVE.password).user_info
    alice = check(backend, "alice", ALICE.password).user_info
    assert dave["groups"] == frozenset({SERVICE_GROUP.lower()})
    assert alice["groups"] == frozenset({MFA_GROUP.lower()})


@pytest.mark.parametrize("attribute, group", [("uniqueMember", UNIQUE_GROUP),
                                              ("memberUid", POSIX_GROUP)])
def test_other_membership_attributes(directory, backends, attribute, group):
    backend = backends(search_config(directory, mfa_group=group,
                                     group_member_attribute=attribute))
    assert check(backend, "alice", ALICE.password).user_info["mfa_required"] is True
    assert check(backend, "bob", BOB.password).user_info["mfa_required"] is False


def test_dn_special_member_is_found_in_the_group(directory, backends):
    backend = backends(search_config(directory, mfa_group=MFA_GROUP))
    assert check(backend, "doe, john", "doe-pw").user_info["mfa_required"] is True


# --------------------------------------------------------------------------- connections

def conn_ids_bound_as(server: Slapd, dn: str) -> set[str]:
    return {m.group(1) for m in peer.BIND_LINE.finditer(server.log())
            if m.group(2).lower() == dn.lower()}


def closed_conn_ids(server: Slapd) -> set[str]:
    return set(re.findall(r"conn=(\d+) fd=\d+ closed", server.log()))


def test_the_service_account_binds_once_across_authentications(directory, backends):
    backend = backends(search_config(directory, mfa_group=MFA_GROUP))
    service_before = len(directory.binds(SERVICE_DN))
    alice_before = len(directory.binds(ALICE.dn))
    for _ in range(5):
        assert check(backend, "alice", ALICE.password).ok
    assert check(backend, "alice", "wrong").reason is Reason.BAD_PASSWORD
    assert len(directory.binds(SERVICE_DN)) == service_before + 1
    assert len(directory.binds(ALICE.dn)) == alice_before + 6
    # every connection Alice bound on was closed: none stayed behind in the pool
    alice_conns = conn_ids_bound_as(directory, ALICE.dn)
    assert wait_for(lambda: alice_conns <= closed_conn_ids(directory), timeout=3.0)


def test_close_unbinds_the_pooled_service_connection(directory, backends):
    backend = backends(search_config(directory))
    before = conn_ids_bound_as(directory, SERVICE_DN)
    assert check(backend, "alice", ALICE.password).ok
    service_conns = conn_ids_bound_as(directory, SERVICE_DN) - before
    assert len(service_conns) == 1 and not service_conns <= closed_conn_ids(directory)
    backend.close()
    assert wait_for(lambda: service_conns <= closed_conn_ids(directory), timeout=3.0)


def test_the_service_connection_survives_a_directory_restart(tmp_path, backends):
    with Slapd(tmp_path / "restarting") as server:
        backend = backends(search_config(server))
        assert check(backend, "alice", ALICE.password).ok
        server.stop()
        server.start()                       # same ports, same data
        assert check(backend, "alice", ALICE.password).ok
        assert len(server.binds(SERVICE_DN)) == 2


# --------------------------------------------------------------------------- a real thread pool

class ThroughAThreadPool(trial.TestCase):
    """As in the server: checks run in a Twisted thread pool, several at once."""

    def setUp(self):
        if not peer.available():
            raise trial.SkipTest("slapd is not installed")
        scratch = tempfile.TemporaryDirectory(prefix="ldap-pool-")   # not trial's mktemp: cwd
        self.addCleanup(scratch.cleanup)
        self.server = Slapd(Path(scratch.name)).start()
        self.addCleanup(self.server.stop)
        self.pool = ThreadPool(minthreads=1, maxthreads=4, name="ldap-test")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        config = search_config(self.server, mfa_group=MFA_GROUP)
        self.backend = LdapBackend(config, run=thread_runner(reactor, self.pool),
                                   exempt_groups=(SERVICE_GROUP,))
        self.addCleanup(self.backend.close)

    def test_concurrent_checks_share_a_few_service_connections(self):
        cases = [("alice", ALICE.password, True), ("bob", BOB.password, True),
                 ("dave", DAVE.password, True), ("alice", "wrong", False)] * 3

        async def all_checks():
            results = await defer.gatherResults([
                defer.Deferred.fromCoroutine(self.backend.authenticate(
                    PrimaryRequest(user, None, password.encode(), deadline=10.0)))
                for user, password, _ in cases])
            return results

        def verify(results):
            self.assertEqual([r.ok for r in results], [ok for _, _, ok in cases])
            self.assertEqual(results[2].user_info["groups"], frozenset({SERVICE_GROUP.lower()}))
            # at most one service connection per worker thread, never one per check
            self.assertLessEqual(len(self.server.binds(SERVICE_DN)), 4)

        return defer.Deferred.fromCoroutine(all_checks()).addCallback(verify)


# --------------------------------------------------------------------------- configuration

@pytest.mark.parametrize("overrides, key", [
    (dict(user_filter="(uid={user}"), "user_filter"),
    (dict(servers=()), "servers"),
    (dict(ca_file="/nonexistent/ca.pem", servers=("ldaps://127.0.0.1:1",)), "ca_file"),
])
def test_a_bad_setting_is_refused_at_start_with_its_key(overrides, key):
    settings = dict(servers=("ldap://127.0.0.1:1",), base_dn=SUFFIX)
    settings.update(overrides)
    with pytest.raises(ValueError, match=f"primary.ldap.{key}"):
        LdapBackend(LdapPrimaryConfig(**settings), run=immediate_runner)


def test_cleartext_servers_are_warned_about(directory):
    with structlog.testing.capture_logs() as events:
        LdapBackend(direct_config(directory), run=immediate_runner).close()
        LdapBackend(direct_config(directory, starttls=True, ca_file=directory.ca_file),
                    run=immediate_runner).close()
    assert [e["servers"] for e in events_named(events, "ldap.cleartext")] == [
        [directory.ldap_url]]
