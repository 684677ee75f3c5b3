"""The upstream RADIUS primary backend, against real FreeRADIUS 3.2 processes.

The async tests are trial TestCases: pytest runs them, trial spins the real
reactor until the returned Deferred fires. FreeRADIUS instances are started
once per module (tests/peers/freeradius.py) and stopped by pid. The MS-CHAPv2
client side (RFC 2759, RFC 3079) is written out below, checked against the
RFCs' own test vectors, so that FreeRADIUS's answer can be checked too.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
import socket
import struct
import time

import pytest
import structlog
from twisted.internet import defer, reactor, task
from twisted.internet.protocol import DatagramProtocol
from twisted.trial import unittest

from peers import freeradius
from peers.freeradius import ALICE_REPLY, CAROL_PIN, CAROL_STATE, FreeRadius
from peers.mschapv2 import (MsChapV2, asymmetric_start_key, authenticator_response,
                            challenge_hash, generate_nt_response, master_key, md4,
                            nt_password_hash)
from radius_mfa.config import DEFAULT_REPLY_ATTRIBUTES, RadiusPrimaryConfig, RadiusServerConfig
from radius_mfa.primary.base import PrimaryRequest
from radius_mfa.primary.radius import RadiusBackend, ReplyAttributes
from radius_mfa.radius import codec
from radius_mfa.radius.dictionary import load_dictionary
from radius_mfa.verdicts import Reason

SECRET = "testing123"
NAS_SECRET = b"nas-secret-for-the-round-trip"
TIMEOUT = 0.3

needs_freeradius = pytest.mark.skipif(
    not freeradius.available() and not os.environ.get("CI"),
    reason="FreeRADIUS (Debian freeradius) is not installed; .ci/run installs it")


# RFC 2759 section 9.2
RFC2759 = {
    "user": "User", "password": "clientPass",
    "authenticator_challenge": bytes.fromhex("5B5D7C7D7B3F2F3E3C2C602132262628"),
    "peer_challenge": bytes.fromhex("21402324255E262A28295F2B3A337C7E"),
    "challenge": bytes.fromhex("D02E4386BCE91226"),
    "nt_response": bytes.fromhex("82309ECD8D708B5EA08FAA3981CD83544233114A3D85D6DF"),
    "password_hash": bytes.fromhex("44EBBA8D5312B8D611474411F56989AE"),
    "password_hash_hash": bytes.fromhex("41C00C584BD2D91C4017A2A12FA59F3F"),
    "authenticator_response": "S=407A5589115FD0D6209F510FE9C04566932CDA56",
}


def test_md4_rfc1320_vectors():
    assert md4(b"").hex() == "31d6cfe0d16ae931b73c59d7e0c089c0"
    assert md4(b"abc").hex() == "a448017aaf21d8525fc10ae87aa6729d"
    assert md4(b"message digest").hex() == "d9130a8164549fe818874806e1c7014b"
    assert md4(b"1234567890" * 8).hex() == "e33b4ddc9c38f2199c3e7b164fcc0536"


def test_mschapv2_rfc2759_vectors():
    v = RFC2759
    assert challenge_hash(v["peer_challenge"], v["authenticator_challenge"], v["user"]) == v["challenge"]
    assert nt_password_hash(v["password"]) == v["password_hash"]
    assert md4(v["password_hash"]) == v["password_hash_hash"]
    assert generate_nt_response(v["authenticator_challenge"], v["peer_challenge"],
                                v["user"], v["password"]) == v["nt_response"]
    assert authenticator_response(v["password"], v["nt_response"], v["peer_challenge"],
                                  v["authenticator_challenge"], v["user"]) == v["authenticator_response"]


def test_mppe_keys_rfc3079_vectors():
    # RFC 3079 section 3.5.3, 128-bit keys from the RFC 2759 sample data; its
    # SendStartKey128 is the server's send key (Magic3), the client's receive key
    master = master_key(RFC2759["password"], RFC2759["nt_response"])
    assert master == bytes.fromhex("FDECE3717A8C838CB388E527AE3CDD31")
    send_start_key = bytes.fromhex("8B7CDC149B993A1BA118CB153F56DCCB")
    assert asymmetric_start_key(master, is_send=True, is_server=True) == send_start_key
    assert asymmetric_start_key(master, is_send=False, is_server=False) == send_start_key
    assert asymmetric_start_key(master, is_send=False, is_server=True) != send_start_key


# ==========================================================================
# Pure parts: salt decryption, reply attribute conversion


def test_salt_decrypt_reverses_the_codec():
    authenticator = os.urandom(16)
    for value in (b"", b"k" * 16, os.urandom(32), os.urandom(47)):
        cipher = codec.salt_encrypt(value, b"s3cret", authenticator, b"\x81\x02")
        assert codec.salt_decrypt(cipher, b"s3cret", authenticator) == value
    assert codec.salt_decrypt(b"\x80\x01" + b"x" * 15, b"s3cret", authenticator) is None


def _upstream_reply(attributes, secret=b"upstream", code=codec.ACCESS_ACCEPT):
    """An upstream reply (as FreeRADIUS would send it) and our Request Authenticator."""
    packet = codec.build_access_request(secret, "u", b"p")
    request = codec.decode_request(packet, secret)
    raw = codec.encode_response(request, code, attributes, secret=secret)
    return codec.decode_response(raw, secret, request.authenticator), request.authenticator


def test_reply_attributes_survive_exactly_and_keys_are_reencrypted():
    send_key, recv_key = os.urandom(16), os.urandom(16)
    upstream = [
        ("Class", b"\xff\x00not utf-8"),
        ("Filter-Id", "acl-1"),
        ("Framed-IP-Address", "192.0.2.7"),
        ("Session-Timeout", 600),
        ("Tunnel-Type:1", 13), ("Tunnel-Medium-Type:1", 6), ("Tunnel-Private-Group-Id:1", "100"),
        ("Tunnel-Private-Group-Id", "vlan-x"),
        ("Tunnel-Private-Group-Id:0", "\x05odd"),
        ("Framed-IPv6-Prefix", "2001:db8::/48"),
        ((9, 1), b"shell:priv-lvl=15"),
        ("MS-MPPE-Send-Key", send_key), ("MS-MPPE-Recv-Key", recv_key),
        ("MS-MPPE-Encryption-Policy", 2),
    ]
    names = ["Class", "Filter-Id", "Framed-IP-Address", "Session-Timeout", "Tunnel-Type",
             "Tunnel-Medium-Type", "Tunnel-Private-Group-Id", "Framed-IPv6-Prefix", "Vendor-Specific"]
    response, authenticator = _upstream_reply(upstream)
    converted = ReplyAttributes(load_dictionary(), names).convert(response, b"upstream", authenticator)

    as_dict = dict(converted)
    assert as_dict["Class"] == b"\xff\x00not utf-8"
    assert as_dict["Filter-Id"] == "acl-1"
    assert as_dict["Framed-IP-Address"] == ipaddress.IPv4Address("192.0.2.7")
    assert as_dict["Session-Timeout"] == 600
    assert as_dict["Tunnel-Type:1"] == 13
    assert as_dict[(9, 1)] == b"shell:priv-lvl=15"
    assert as_dict["MS-MPPE-Send-Key"] == send_key and as_dict["MS-MPPE-Recv-Key"] == recv_key

    nas_request = codec.decode_request(codec.build_access_request(NAS_SECRET, "u", b"p"), NAS_SECRET)
    nas_raw = codec.encode_response(nas_request, codec.ACCESS_ACCEPT, converted)
    to_nas = codec.decode_response(nas_raw, NAS_SECRET, nas_request.authenticator)
    plain = lambda reply: [a for a in reply.attributes if a[0] not in (80, 33)]   # noqa: E731
    upstream_plain, nas_plain = plain(response), plain(to_nas)
    key_vsas = lambda attrs: [a for a in attrs if a[1][:4] == struct.pack("!L", 311) and a[1][4] in (16, 17)]  # noqa: E731
    assert [a for a in nas_plain if a not in key_vsas(nas_plain)] == \
        [a for a in upstream_plain if a not in key_vsas(upstream_plain)]
    # the keys travel re-encrypted for the NAS, and decrypt to the same plain text
    assert key_vsas(nas_plain) != key_vsas(upstream_plain)
    assert to_nas.get("MS-MPPE-Send-Key") == send_key
    assert to_nas.get("MS-MPPE-Recv-Key") == recv_key


TUNNEL_MEDIUM_TYPE = 65
TUNNEL_PASSWORD = 69


def test_upstream_tag_above_31_is_dropped_not_the_reply():
    # the defect: _untag read tag 0x20, the encoder takes 0..31, and the
    # whole reply to the NAS was lost while the audit said accept
    response, authenticator = _upstream_reply([
        ("Class", b"c"), ("Tunnel-Type:1", 13),
        (TUNNEL_MEDIUM_TYPE, b"\x20\x00\x00\x06"),                   # tag 32
        (TUNNEL_PASSWORD, b"\x40\x81\x02" + bytes(16)),               # tag 64, encrypted
        ("Tunnel-Private-Group-Id:1", "100")])
    names = ["Class", "Tunnel-Type", "Tunnel-Medium-Type", "Tunnel-Password", "Tunnel-Private-Group-Id"]
    dropped: dict[str, str] = {}
    converted = ReplyAttributes(load_dictionary(), names).convert(
        response, b"upstream", authenticator, dropped=dropped)
    assert converted == (("Class", b"c"), ("Tunnel-Type:1", 13), ("Tunnel-Private-Group-Id:1", "100"))
    assert dropped == {"Tunnel-Medium-Type": "tag 32 above 31 (RFC 2868)",
                       "Tunnel-Password": "tag 64 above 31 (RFC 2868)"}
    # what is left goes to the NAS
    nas_request = codec.decode_request(codec.build_access_request(NAS_SECRET, "u", b"p"), NAS_SECRET)
    to_nas = codec.decode_response(codec.encode_response(nas_request, codec.ACCESS_ACCEPT, converted),
                                   NAS_SECRET, nas_request.authenticator)
    assert to_nas.get("Class") == b"c"


def test_tags_up_to_31_still_pass():
    response, authenticator = _upstream_reply([(TUNNEL_MEDIUM_TYPE, b"\x1f\x00\x00\x06")])
    dropped: dict[str, str] = {}
    converted = ReplyAttributes(load_dictionary(), ["Tunnel-Medium-Type"]).convert(
        response, b"upstream", authenticator, dropped=dropped)
    assert converted == (("Tunnel-Medium-Type:31", 6),) and dropped == {}


def test_every_converted_attribute_is_checked_by_the_encoder(monkeypatch):
    # the safety net behind the tag check: whatever the codec would refuse is
    # dropped by name, whatever the reason
    response, authenticator = _upstream_reply([("Class", b"c"), ("Filter-Id", "acl")])
    monkeypatch.setattr(codec, "can_encode", lambda dictionary, key, value: key != "Filter-Id")
    dropped: dict[str, str] = {}
    converted = ReplyAttributes(load_dictionary(), ["Class", "Filter-Id"]).convert(
        response, b"upstream", authenticator, dropped=dropped)
    assert converted == (("Class", b"c"),)
    assert dropped == {"Filter-Id": "cannot be encoded again"}


def test_can_encode():
    dictionary = load_dictionary()
    assert codec.can_encode(dictionary, "Tunnel-Medium-Type:31", 6)
    assert not codec.can_encode(dictionary, "Tunnel-Medium-Type:32", 6)
    assert not codec.can_encode(dictionary, "Class", b"x" * 254)
    assert not codec.can_encode(dictionary, "Session-Timeout", "soon")
    assert not codec.can_encode(dictionary, "Proxy-State", b"x")
    assert codec.can_encode(dictionary, (9, 1), b"shell:priv-lvl=15")


def test_reply_attributes_filter():
    response, authenticator = _upstream_reply([
        ("Class", b"c"), ("Port-Limit", 2), ((9, 1), b"x"), ("MS-CHAP2-Success", b"\x01S=00"),
        ("MS-MPPE-Encryption-Types", 4)])
    converted = ReplyAttributes(load_dictionary(), ["Class"]).convert(response, b"upstream", authenticator)
    assert converted == (("Class", b"c"), ("MS-CHAP2-Success", b"\x01S=00"),
                         ("MS-MPPE-Encryption-Types", 4))


# ==========================================================================
# Against FreeRADIUS


PEERS: dict[str, FreeRadius] = {}


@pytest.fixture(scope="module", autouse=True)
def freeradius_peers(tmp_path_factory):
    """Three instances: ``one`` and ``two`` (signing their replies) and
    ``unsigned`` (FreeRADIUS 3.2.1 as shipped: no Message-Authenticator)."""
    if not freeradius.available():
        yield PEERS
        return
    started = []
    try:
        for name, options in (("one", {}), ("two", {}), ("unsigned", {"sign_replies": False})):
            peer = FreeRadius(tmp_path_factory.mktemp(f"freeradius-{name}"), secret=SECRET, **options)
            started.append(peer)
            PEERS[name] = peer.start()
        yield PEERS
    finally:
        for peer in started:
            peer.stop()
        PEERS.clear()


def closed_port() -> int:
    """A loopback port nobody listens on: a server that is down."""
    return freeradius.free_udp_port()


def server(port: int, secret: str = SECRET, require_ma: bool = True) -> RadiusServerConfig:
    return RadiusServerConfig("127.0.0.1", port, secret.encode(), require_ma)


def async_test(method):
    """Let trial wait for a coroutine test method."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        return defer.Deferred.fromCoroutine(method(self, *args, **kwargs))
    return run


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


class BackendTest(unittest.TestCase):
    timeout = 30

    def backend(self, *servers: RadiusServerConfig, **options) -> RadiusBackend:
        probe_interval = options.pop("probe_interval", None)
        log_interval = options.pop("log_interval", 60.0)
        config = RadiusPrimaryConfig(servers=servers, timeout=options.pop("timeout", TIMEOUT),
                                     retries=options.pop("retries", 1), **options)
        backend = RadiusBackend(config, reactor=reactor, dictionary=load_dictionary(),
                                probe_interval=probe_interval, log_interval=log_interval)
        backend.start()
        self.addCleanup(backend.stop)
        return backend

    def peer(self, name: str) -> FreeRadius:
        return PEERS[name]

    @staticmethod
    def pap(user: str, password: str, **fields) -> PrimaryRequest:
        return PrimaryRequest(user_name=user, user=None, password=password.encode(), **fields)


@needs_freeradius
class PapTest(BackendTest):

    @async_test
    async def test_accept_passes_allowed_reply_attributes(self):
        backend = self.backend(server(self.peer("one").port))
        result = await backend.authenticate(self.pap("alice", "alice-pw"))
        assert result.ok and result.reason is None and result.challenge is None
        attributes = dict(result.attributes)
        assert attributes["Class"] == ALICE_REPLY["Class"]
        assert attributes["Filter-Id"] == ALICE_REPLY["Filter-Id"]
        assert attributes["Framed-IP-Address"] == ipaddress.IPv4Address(ALICE_REPLY["Framed-IP-Address"])
        assert attributes["Session-Timeout"] == ALICE_REPLY["Session-Timeout"]
        # Cisco-AVPair: a vendor radius-mfa has no dictionary for, passed as it came
        assert attributes[(freeradius.CISCO_VENDOR_ID, freeradius.CISCO_AVPAIR)] == \
            ALICE_REPLY["Cisco-AVPair"].encode()
        assert "Port-Limit" not in attributes          # not in the default pass list
        assert "Port-Limit" not in DEFAULT_REPLY_ATTRIBUTES

    @async_test
    async def test_pass_list_is_configurable(self):
        backend = self.backend(server(self.peer("one").port), reply_attributes=("Class", "Port-Limit"))
        result = await backend.authenticate(self.pap("alice", "alice-pw"))
        assert result.ok
        assert dict(result.attributes) == {"Class": ALICE_REPLY["Class"], "Port-Limit": 2}

    @async_test
    async def test_wrong_password_and_unknown_user_are_rejected(self):
        backend = self.backend(server(self.peer("one").port))
        wrong = await backend.authenticate(self.pap("alice", "not-her-password"))
        unknown = await backend.authenticate(self.pap("mallory", "whatever"))
        assert (wrong.ok, wrong.reason, wrong.attributes) == (False, Reason.BAD_PASSWORD, ())
        assert (unknown.ok, unknown.reason) == (False, Reason.BAD_PASSWORD)

    @async_test
    async def test_unsendable_requests_are_bad_requests(self):
        backend = self.backend(server(self.peer("one").port))
        no_credential = PrimaryRequest(user_name="alice", user=None, password=None)
        too_long = self.pap("alice", "x" * 129)
        assert (await backend.authenticate(no_credential)).reason is Reason.BAD_REQUEST
        assert (await backend.authenticate(too_long)).reason is Reason.BAD_REQUEST

    @async_test
    async def test_challenge_is_relayed_and_answered_with_the_state(self):
        backend = self.backend(server(self.peer("one").port))
        first = await backend.authenticate(self.pap("carol", "carol-pw"))
        assert first.ok is False and first.reason is None
        assert first.challenge is not None
        assert first.challenge.state == CAROL_STATE
        assert first.challenge.reply_message == "Enter your new PIN"
        assert first.challenge.attributes == ()
        second = await backend.authenticate(self.pap("carol", CAROL_PIN, upstream_state=first.challenge.state))
        assert second.ok
        wrong_pin = await backend.authenticate(self.pap("carol", "0000", upstream_state=first.challenge.state))
        assert (wrong_pin.ok, wrong_pin.reason, wrong_pin.challenge) == (False, Reason.BAD_PASSWORD, None)

    @async_test
    async def test_three_hundred_requests_in_flight(self):
        backend = self.backend(server(self.peer("one").port), timeout=3.0, retries=2)
        users = [("alice", "alice-pw") if i % 3 else ("alice", "wrong") for i in range(300)]
        calls = [defer.Deferred.fromCoroutine(backend.authenticate(self.pap(u, p))) for u, p in users]
        results = await defer.gatherResults(calls)
        assert [r.ok for r in results] == [p == "alice-pw" for _, p in users]
        assert all(r.reason is Reason.BAD_PASSWORD for r in results if not r.ok)


@needs_freeradius
class MsChapTest(BackendTest):

    @async_test
    async def test_mschapv2_accept_with_success_and_mppe_keys(self):
        backend = self.backend(server(self.peer("one").port))
        attempt = MsChapV2("bob", "bob-pw")
        forward = (*attempt.forward(), (codec.CALLING_STATION_ID, b"198.51.100.9"),
                   (codec.NAS_IDENTIFIER, b"vpn-1"))
        result = await backend.authenticate(
            PrimaryRequest(user_name="bob", user=None, password=None, forward=forward))
        assert result.ok, result
        attributes = dict(result.attributes)
        assert attributes["MS-CHAP2-Success"] == attempt.expected_success()

        master = master_key("bob-pw", attempt.nt_response)
        send_key = asymmetric_start_key(master, is_send=True, is_server=True)
        recv_key = asymmetric_start_key(master, is_send=False, is_server=True)
        assert attributes["MS-MPPE-Send-Key"] == send_key
        assert attributes["MS-MPPE-Recv-Key"] == recv_key
        assert attributes["MS-MPPE-Encryption-Policy"] == 2       # require_encryption
        assert attributes["MS-MPPE-Encryption-Types"] == 4        # require_strong: 128 bit

        # what the NAS gets: the keys encrypted for its secret and its request
        nas_request = codec.decode_request(
            codec.build_access_request(NAS_SECRET, "bob", attributes=forward), NAS_SECRET)
        to_nas = codec.decode_response(
            codec.encode_response(nas_request, codec.ACCESS_ACCEPT, result.attributes),
            NAS_SECRET, nas_request.authenticator)
        assert to_nas.get("MS-MPPE-Send-Key") == send_key
        assert to_nas.get("MS-MPPE-Recv-Key") == recv_key
        assert to_nas.get("MS-CHAP2-Success") == attempt.expected_success()

    @async_test
    async def test_mschapv2_wrong_password_is_rejected(self):
        backend = self.backend(server(self.peer("one").port))
        attempt = MsChapV2("bob", "not-bobs")
        result = await backend.authenticate(
            PrimaryRequest(user_name="bob", user=None, password=None, forward=attempt.forward()))
        assert (result.ok, result.reason) == (False, Reason.BAD_PASSWORD)


@needs_freeradius
class FailoverTest(BackendTest):

    @async_test
    async def test_dead_first_server_fails_over_then_is_skipped(self):
        backend = self.backend(server(closed_port()), server(self.peer("two").port),
                               timeout=TIMEOUT, retries=1)
        started = time.monotonic()
        result = await backend.authenticate(self.pap("alice", "alice-pw"))
        elapsed = time.monotonic() - started
        assert result.ok
        assert TIMEOUT * 2 <= elapsed < TIMEOUT * 2 + 0.4       # timeout × (retries + 1), then two
        assert len(backend.dead_servers()) == 1

        started = time.monotonic()
        again = await backend.authenticate(self.pap("alice", "alice-pw"))
        assert again.ok
        assert time.monotonic() - started < TIMEOUT              # the dead one is skipped, no wait

    @async_test
    async def test_a_paused_server_comes_back_when_a_probe_is_answered(self):
        one, two = self.peer("one"), self.peer("two")
        backend = self.backend(server(one.port), server(two.port), timeout=TIMEOUT, retries=0,
                               dead_time=60.0, probe_interval=0.1)
        one.pause()
        try:
            assert (await backend.authenticate(self.pap("alice", "alice-pw"))).ok
            assert backend.dead_servers() == (f"127.0.0.1:{one.port}",)
        finally:
            one.resume()
        for _ in range(50):                      # probes every 0.1 s; dead_time is far away
            if not backend.dead_servers():
                break
            await sleep(0.1)
        assert backend.dead_servers() == ()
        two.pause()                              # now only `one` can answer, and at once
        try:
            started = time.monotonic()
            assert (await backend.authenticate(self.pap("alice", "alice-pw"))).ok
            assert time.monotonic() - started < TIMEOUT
        finally:
            two.resume()

    @async_test
    async def test_all_dead_servers_are_still_tried(self):
        port = closed_port()
        backend = self.backend(server(port), server(self.peer("two").port), timeout=TIMEOUT,
                               retries=0, dead_time=60.0)
        two = self.peer("two")
        two.pause()
        try:
            down = await backend.authenticate(self.pap("alice", "alice-pw"))
        finally:
            two.resume()
        assert down.reason is Reason.UPSTREAM_DOWN
        assert len(backend.dead_servers()) == 2
        # both dead: tried anyway, and `two` answers
        assert (await backend.authenticate(self.pap("alice", "alice-pw"))).ok

    @async_test
    async def test_all_down_returns_upstream_down_within_the_deadline(self):
        backend = self.backend(server(closed_port()), server(closed_port()), timeout=TIMEOUT, retries=2)
        started = time.monotonic()
        result = await backend.authenticate(self.pap("alice", "alice-pw", deadline=0.5))
        elapsed = time.monotonic() - started
        assert (result.ok, result.reason) == (False, Reason.UPSTREAM_DOWN)
        assert 0.45 <= elapsed < 0.8

    @async_test
    async def test_all_down_without_deadline_gives_every_server_every_try(self):
        backend = self.backend(server(closed_port()), server(closed_port()), timeout=0.1, retries=2)
        started = time.monotonic()
        result = await backend.authenticate(self.pap("alice", "alice-pw"))
        assert result.reason is Reason.UPSTREAM_DOWN
        assert 0.6 <= time.monotonic() - started < 1.0            # 2 servers × 3 tries × 0.1 s

    @async_test
    async def test_wrong_secret_fails_over(self):
        # FreeRADIUS drops a request whose Message-Authenticator is keyed on
        # the wrong secret: to us that is a server that does not answer
        backend = self.backend(server(self.peer("one").port, secret="not-the-secret"),
                               server(self.peer("two").port))
        with structlog.testing.capture_logs() as events:
            result = await backend.authenticate(self.pap("alice", "alice-pw"))
        assert result.ok
        assert [e["server"] for e in events if e["event"] == "radius.upstream.dead"] == \
            [f"127.0.0.1:{self.peer('one').port}"]

    @async_test
    async def test_wrong_secret_alone_is_upstream_down(self):
        backend = self.backend(server(self.peer("one").port, secret="not-the-secret"))
        result = await backend.authenticate(self.pap("alice", "alice-pw"))
        assert result.reason is Reason.UPSTREAM_DOWN

    @async_test
    async def test_stop_ends_pending_calls(self):
        backend = self.backend(server(closed_port()), timeout=5.0)
        pending = defer.Deferred.fromCoroutine(backend.authenticate(self.pap("alice", "alice-pw")))
        await sleep(0.05)
        started = time.monotonic()
        await backend.stop()
        result = await pending
        assert result.reason is Reason.UPSTREAM_DOWN
        assert time.monotonic() - started < 0.5


@needs_freeradius
class MessageAuthenticatorTest(BackendTest):
    """FreeRADIUS 3.2.1 as shipped puts no Message-Authenticator in its
    replies (not even when the request has one); the fixture's
    ``sign_replies`` adds one through unlang."""

    @async_test
    async def test_freeradius_3_2_1_does_not_sign_replies_by_itself(self):
        backend = self.backend(server(self.peer("unsigned").port, require_ma=True), retries=0)
        with structlog.testing.capture_logs() as events:
            result = await backend.authenticate(self.pap("alice", "alice-pw"))
        assert result.reason is Reason.UPSTREAM_DOWN
        assert {e.get("reason") for e in events if e["event"] == "radius.upstream.bad_reply"} == \
            {"reply without Message-Authenticator"}

    @async_test
    async def test_unsigned_replies_accepted_when_not_required(self):
        backend = self.backend(server(self.peer("unsigned").port, require_ma=False))
        assert (await backend.authenticate(self.pap("alice", "alice-pw"))).ok
        assert (await backend.authenticate(self.pap("alice", "wrong"))).reason is Reason.BAD_PASSWORD

    @async_test
    async def test_signed_replies_accepted_when_required(self):
        backend = self.backend(server(self.peer("two").port, require_ma=True))
        assert (await backend.authenticate(self.pap("alice", "alice-pw"))).ok


# ==========================================================================
# A scripted upstream, for what FreeRADIUS will not do: forged replies


class ScriptedUpstream(DatagramProtocol):
    """Records each request and answers as ``script(request, count)`` says:
    a list of datagrams to send back (after ``delay`` seconds each)."""

    def __init__(self, secret: bytes, script):
        self.secret = secret
        self.script = script
        self.received: list[bytes] = []
        self.sources: list[tuple[int, int]] = []      # (source port, identifier) of each request
        self.pending: list = []
        self.port = None

    def datagramReceived(self, data: bytes, addr) -> None:
        self.received.append(data)
        self.sources.append((addr[1], data[1]))
        request = codec.decode_request(data, self.secret, load_dictionary())
        for delay, reply in self.script(request, len(self.received)):
            self.pending.append(reactor.callLater(delay, self.transport.write, reply, addr))

    def cancel(self) -> None:
        for call in self.pending:
            if call.active():
                call.cancel()


class ScriptedUpstreamTest(BackendTest):

    def upstream(self, script, secret: bytes = b"scripted", interface: str = "127.0.0.1",
                 host: str | None = None) -> tuple[ScriptedUpstream, RadiusServerConfig]:
        peer = ScriptedUpstream(secret, script)
        peer.port = reactor.listenUDP(0, peer, interface=interface)
        self.addCleanup(peer.port.stopListening)
        self.addCleanup(peer.cancel)
        return peer, RadiusServerConfig(host or interface, peer.port.getHost().port, secret, True)

    @async_test
    async def test_a_thousand_requests_in_flight(self):
        def script(request, count):        # answer each only after all have been sent
            return [(0.3, codec.encode_response(request, codec.ACCESS_ACCEPT, [("Class", request.password)]))]

        peer, config = self.upstream(script)
        backend = self.backend(config, timeout=5.0, retries=0)
        passwords = [f"pw-{i}" for i in range(1000)]
        calls = []
        for start in range(0, 1000, 100):    # 100 per reactor turn: the peer's receive buffer holds ~256
            calls += [defer.Deferred.fromCoroutine(backend.authenticate(self.pap("dave", p)))
                      for p in passwords[start:start + 100]]
            await sleep(0)
        results = await defer.gatherResults(calls)
        # every answer went to the request it belongs to
        assert [dict(r.attributes).get("Class") for r in results] == [p.encode() for p in passwords]
        assert len(peer.received) == 1000 and len(set(peer.sources)) == 1000
        ports = {port for port, _ in peer.sources}
        assert len(ports) == 4                 # 256 identifiers per socket and server

    @async_test
    async def test_a_server_that_answers_others_is_not_dead(self):
        def script(request, count):
            if request.password == b"ignored":
                return []
            return [(0.05, codec.encode_response(request, codec.ACCESS_ACCEPT))]

        peer, config = self.upstream(script)
        backend = self.backend(config, timeout=0.2, retries=1)
        ignored = defer.Deferred.fromCoroutine(backend.authenticate(self.pap("dave", "ignored")))
        answered = [await backend.authenticate(self.pap("dave", "pa55")) for _ in range(3)]
        assert all(r.ok for r in answered)
        assert (await ignored).reason is Reason.UPSTREAM_DOWN
        assert backend.dead_servers() == ()

    @async_test
    async def test_host_name_is_resolved(self):
        peer, config = self.upstream(
            lambda request, n: [(0, codec.encode_response(request, codec.ACCESS_ACCEPT))], host="localhost")
        backend = self.backend(config)
        assert (await backend.authenticate(self.pap("dave", "pa55"))).ok

    @async_test
    async def test_ipv6_server(self):
        if not _ipv6_loopback():
            raise unittest.SkipTest("no IPv6 loopback here")
        peer, config = self.upstream(
            lambda request, n: [(0, codec.encode_response(request, codec.ACCESS_ACCEPT))], interface="::1")
        backend = self.backend(config)
        assert (await backend.authenticate(self.pap("dave", "pa55"))).ok
        assert backend.dead_servers() == ()

    @async_test
    async def test_the_access_request_we_send(self):
        peer, config = self.upstream(lambda request, n: [])
        backend = self.backend(config, retries=1, timeout=0.15)
        forward = ((codec.CALLING_STATION_ID, b"203.0.113.5"), (codec.NAS_IDENTIFIER, b"vpn"),
                   (codec.PROXY_STATE, b"the NAS's own"), (codec.MESSAGE_AUTHENTICATOR, b"x" * 16))
        result = await backend.authenticate(self.pap("dave", "pa55", forward=forward,
                                                     upstream_state=b"their-state"))
        assert result.reason is Reason.UPSTREAM_DOWN
        assert len(peer.received) == 2 and peer.received[0] == peer.received[1]   # a true retransmission
        request = codec.decode_request(peer.received[0], b"scripted", load_dictionary())
        assert request.message_authenticator_ok is True
        assert request.user_name == "dave" and request.password == b"pa55"
        assert request.state == b"their-state"
        assert len(request.proxy_states) == 1 and request.proxy_states[0] != b"the NAS's own"
        assert [a for a in request.attributes if a[0] in (codec.CALLING_STATION_ID, codec.NAS_IDENTIFIER)] == \
            list(forward[:2])

    @async_test
    async def test_forged_replies_do_not_end_the_wait(self):
        def script(request, count):
            forged = codec.encode_response(request, codec.ACCESS_ACCEPT, secret=b"forger")
            unsigned_pieces = codec.encode_response(request, codec.ACCESS_ACCEPT)
            unsigned = _without_message_authenticator(unsigned_pieces, request, b"scripted")
            stray = codec.encode_response(dataclasses.replace(request, proxy_states=()), codec.ACCESS_ACCEPT)
            real = codec.encode_response(request, codec.ACCESS_REJECT)
            return [(0, forged), (0.01, unsigned), (0.02, stray), (0.05, real)]

        peer, config = self.upstream(script)
        backend = self.backend(config, timeout=1.0, retries=0)
        with structlog.testing.capture_logs() as events:
            result = await backend.authenticate(self.pap("dave", "pa55"))
        assert (result.ok, result.reason) == (False, Reason.BAD_PASSWORD)     # the real reply decided
        reasons = [e["reason"] for e in events if e["event"] == "radius.upstream.bad_reply"]
        assert reasons == ["bad Response Authenticator", "reply without Message-Authenticator",
                           "our Proxy-State is missing"]

    @async_test
    async def test_only_forged_replies_is_no_reply(self):
        def script(request, count):
            return [(0, codec.encode_response(request, codec.ACCESS_ACCEPT, secret=b"forger"))]

        peer, config = self.upstream(script)
        backend = self.backend(config, timeout=0.15, retries=1)
        started = time.monotonic()
        result = await backend.authenticate(self.pap("dave", "pa55"))
        assert result.reason is Reason.UPSTREAM_DOWN
        assert time.monotonic() - started >= 0.3
        assert len(peer.received) == 2

    @async_test
    async def test_reply_from_another_port_is_ignored(self):
        elsewhere = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        elsewhere.bind(("127.0.0.1", 0))
        self.addCleanup(elsewhere.close)

        def script(request, count):
            genuine = codec.encode_response(request, codec.ACCESS_ACCEPT)
            reactor.callLater(0, lambda: elsewhere.sendto(genuine, backend_address()))
            return []

        peer, config = self.upstream(script)
        backend = self.backend(config, timeout=0.15, retries=0)

        def backend_address():
            sock = next(iter(backend._sockets["127.0.0.1"]))
            return ("127.0.0.1", sock.transport.getHost().port)

        result = await backend.authenticate(self.pap("dave", "pa55"))
        assert result.reason is Reason.UPSTREAM_DOWN

    @async_test
    async def test_upstream_reply_with_tag_above_31_still_reaches_the_nas(self):
        def script(request, count):
            return [(0, codec.encode_response(request, codec.ACCESS_ACCEPT, [
                ("Class", b"vpn-users"), ("Tunnel-Type:1", 13),
                (TUNNEL_MEDIUM_TYPE, b"\x20\x00\x00\x06")]))]

        peer, config = self.upstream(script)
        backend = self.backend(config, reply_attributes=("Class", "Tunnel-Type", "Tunnel-Medium-Type"))
        with structlog.testing.capture_logs() as events:
            first = await backend.authenticate(self.pap("dave", "pa55"))
            second = await backend.authenticate(self.pap("dave", "pa55"))
        assert first.ok and second.ok
        assert dict(first.attributes) == {"Class": b"vpn-users", "Tunnel-Type:1": 13}
        warnings = [e for e in events if e["event"] == "radius.upstream.attributes_dropped"]
        assert warnings == [{"event": "radius.upstream.attributes_dropped", "log_level": "warning",
                             "server": config_label(config),
                             "dropped": {"Tunnel-Medium-Type": "tag 32 above 31 (RFC 2868)"}}]
        # and the NAS gets its Access-Accept
        nas_request = codec.decode_request(codec.build_access_request(NAS_SECRET, "dave", b"x"), NAS_SECRET)
        fitted = codec.encode_fitting(nas_request, codec.ACCESS_ACCEPT, list(first.attributes))
        assert fitted.code == codec.ACCESS_ACCEPT and fitted.dropped == ()
        to_nas = codec.decode_response(fitted.packet, NAS_SECRET, nas_request.authenticator)
        assert to_nas.get("Class") == b"vpn-users"
        assert (64, b"\x01\x00\x00\x0d") in to_nas.attributes              # Tunnel-Type, tag 1, 13

    @async_test
    async def test_dead_upstream_is_logged_once_per_interval_with_a_count(self):
        backend = self.backend(server(closed_port()), timeout=0.05, retries=0, log_interval=0.6)
        with structlog.testing.capture_logs() as events:
            started = time.monotonic()
            results = [await backend.authenticate(self.pap("alice", "pw")) for _ in range(5)]
            assert time.monotonic() - started < 0.6
            assert backend.flush_logs() == 0          # the interval is not over
            await sleep(0.6)
            assert backend.flush_logs() == 1
            again = await backend.authenticate(self.pap("alice", "pw"))
        assert all(r.reason is Reason.UPSTREAM_DOWN for r in [*results, again])
        down = [e for e in events if e["event"] == "radius.upstream.down"]
        assert len(down) == 3
        assert down[0]["reason"] == "no server answered" and "suppressed" not in down[0]
        assert (down[1]["suppressed"], down[1]["interval"]) == (4, 0.6)   # the summary of the burst
        assert "suppressed" not in down[2]                                 # counted once, not twice
        assert len([e for e in events if e["event"] == "radius.upstream.dead"]) == 1

    @async_test
    async def test_garbage_flood_to_the_upstream_socket_is_logged_once(self):
        peer, config = self.upstream(lambda request, n: [])
        backend = self.backend(config, timeout=0.3, retries=0)
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger.bind(("127.0.0.1", 0))
        self.addCleanup(stranger.close)
        port = next(iter(backend._sockets["127.0.0.1"])).transport.getHost().port
        with structlog.testing.capture_logs() as events:
            for _ in range(200):
                stranger.sendto(b"\x02\x00\x00", ("127.0.0.1", port))
            await sleep(0.2)
        bad = [e for e in events if e["event"] == "radius.upstream.bad_reply"]
        assert len(bad) == 1 and bad[0]["reason"] == "packet shorter than 20 octets"
        assert backend._logs["bad_reply"].suppressed >= 100      # the rest counted, not lost

    @async_test
    async def test_late_first_answer_to_a_retransmission_is_used(self):
        def script(request, count):
            return [(0, codec.encode_response(request, codec.ACCESS_ACCEPT))] if count == 2 else []

        peer, config = self.upstream(script)
        backend = self.backend(config, timeout=0.1, retries=2)
        result = await backend.authenticate(self.pap("dave", "pa55"))
        assert result.ok and len(peer.received) == 2


def config_label(config: RadiusServerConfig) -> str:
    return f"{config.host}:{config.port}"


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


def _without_message_authenticator(raw: bytes, request, secret: bytes) -> bytes:
    """The same reply with its Message-Authenticator cut out and the
    Response Authenticator recomputed: a validly keyed but unsigned reply."""
    import hashlib
    body = raw[20 + 18:]
    header = bytes((raw[0], raw[1])) + struct.pack("!H", 20 + len(body))
    digest = hashlib.md5(header + request.authenticator + body + secret).digest()
    return header + digest + body
