"""The RADIUS/1.1 codec (RFC 9765): vectors written out by hand from the
RFC's packet format (section 4.1) and attribute rules (section 5), round
trips, malformed input, and the reply fitting rules shared with RFC 2865."""

from __future__ import annotations

import struct

import pytest

from peers.mschapv2 import MsChapV2, asymmetric_start_key, master_key
from radius_mfa.errors import LocalProtocolError, RemoteProtocolError
from radius_mfa.radius import codec, v11
from radius_mfa.radius.codec import (ACCESS_ACCEPT, ACCESS_CHALLENGE, ACCESS_REJECT,
                                     MAX_PACKET_LENGTH, STATUS_SERVER)

TOKEN = bytes.fromhex("12345678")
ZEROS = "00" * 12                              # Reserved-2: where the Authenticator was


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# Code 1, Reserved-1 0, Length 32, Token, Reserved-2, User-Name "bob",
# User-Password "hello" as it is: no padding to 16, no MD5 (section 5.1.1).
BOB_REQUEST = h("01 00 0020 12345678" + ZEROS + "01 05 626f62" + "02 07 68656c6c6f")


def request(*attributes, user="alice", password="pw", state=None, token=TOKEN,
            code=codec.ACCESS_REQUEST) -> v11.Request:
    return v11.decode_request(v11.build_access_request(
        token, user, password, state=state, attributes=list(attributes), code=code))


# --- the header and the hand-made vectors -------------------------------------

def test_an_access_request_is_built_as_the_rfc_draws_it():
    assert v11.build_access_request(TOKEN, "bob", "hello") == BOB_REQUEST


def test_the_hand_made_access_request_decodes():
    req = v11.decode_request(BOB_REQUEST)
    assert (req.code, req.token, req.user_name, req.password) == (1, TOKEN, "bob", b"hello")
    assert req.id == 0x12345678                     # the Token as a number, for traces
    assert codec.method_of(req) == "pap"
    assert req.has_message_authenticator is False and req.message_authenticator_ok is None


def test_a_reply_carries_the_request_token_and_zero_reserved_fields():
    reply = v11.encode_response(v11.decode_request(BOB_REQUEST), ACCESS_ACCEPT,
                                [("Reply-Message", "ok")])
    # Code 2, Reserved-1 0, Length 24, the same Token, Reserved-2, Reply-Message
    assert reply == h("02 00 0018 12345678" + ZEROS + "12 04 6f6b")


def test_a_reply_never_carries_a_message_authenticator():
    req = request(("Proxy-State", b"p"))
    for code in (ACCESS_ACCEPT, ACCESS_REJECT, ACCESS_CHALLENGE):
        fitted = v11.encode_fitting(req, code, [("State", b"s")] if code == ACCESS_CHALLENGE else [])
        response = v11.decode_response(fitted.packet, TOKEN)
        assert not response.has_message_authenticator
        assert codec.MESSAGE_AUTHENTICATOR not in [kind for kind, _ in response.attributes]


def test_reserved_fields_are_ignored_when_received():
    odd = bytearray(BOB_REQUEST)
    odd[1] = 0x7F                                   # Reserved-1, once the Identifier
    odd[8:20] = b"\xaa" * 12                        # Reserved-2, once the Authenticator
    req = v11.decode_request(bytes(odd))
    assert (req.token, req.user_name, req.password) == (TOKEN, "bob", b"hello")
    reply = v11.encode_response(req, ACCESS_REJECT)
    assert reply == h("03 00 0014 12345678" + ZEROS)
    assert v11.decode_response(reply, TOKEN).reserved_zero


def test_the_token_is_opaque_all_values_allowed():
    for token in (b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x00\x00\x01\x00"):
        req = request(token=token)
        assert req.token == token
        assert v11.encode_response(req, ACCESS_REJECT)[4:8] == token
    assert v11.build_access_request(0xDEADBEEF, "a")[4:8] == h("deadbeef")


def test_a_status_server_is_answered_with_its_token():
    req = v11.decode_request(h("0c 00 0014 0000002a" + ZEROS))    # no Message-Authenticator needed
    assert req.code == STATUS_SERVER and req.token == h("0000002a")
    assert v11.encode_response(req, ACCESS_ACCEPT) == h("02 00 0014 0000002a" + ZEROS)


def test_a_protocol_error_says_resources_unavailable():
    # Code 52, Length 26, the Token, Error-Cause (101) = 506 (RFC 9765 section 6.1)
    assert v11.encode_protocol_error(TOKEN) == h("34 00 001a 12345678" + ZEROS + "65 06 000001fa")
    with_state = v11.encode_protocol_error(TOKEN, proxy_states=[b"ps"])
    response = v11.decode_response(with_state, TOKEN)
    assert (response.code, response.error_cause, response.proxy_states) == (
        v11.PROTOCOL_ERROR, v11.RESOURCES_UNAVAILABLE, (b"ps",))


def test_the_alpn_names():
    assert v11.ALPN_V11 == bytes((0x72, 0x61, 0x64, 0x69, 0x75, 0x73, 0x2F, 0x31, 0x2E, 0x31))
    assert v11.ALPN_V10 == b"radius/1.0"


# --- attributes that RADIUS hides go as they are (section 5.1) ----------------

def test_user_password_is_sent_in_clear_without_padding():
    raw = v11.build_access_request(TOKEN, None, "x" * 17)
    assert raw[20:] == b"\x02\x13" + b"x" * 17
    assert v11.decode_request(raw).password == b"x" * 17


def test_user_password_keeps_every_octet_as_sent():
    raw = v11.build_access_request(TOKEN, "a", b"pw\x00\x00")
    assert v11.decode_request(raw).password == b"pw\x00\x00"      # no RFC 2865 padding to strip


def test_mppe_keys_are_sent_as_the_key_octets():
    send, recv = bytes(range(16)), bytes(range(16, 32))
    reply = v11.encode_response(request(), ACCESS_ACCEPT,
                                [("MS-MPPE-Send-Key", send), ("MS-MPPE-Recv-Key", recv)])
    # Vendor-Specific, 24 octets: Microsoft (311), type 16 / 17, 18 octets: the key
    assert reply[20:] == (h("1a 18 00000137 10 12") + send + h("1a 18 00000137 11 12") + recv)
    response = v11.decode_response(reply, TOKEN)
    assert (response.get("MS-MPPE-Send-Key"), response.get("MS-MPPE-Recv-Key")) == (send, recv)


def test_tunnel_password_is_a_tagged_string_without_salt():
    reply = v11.encode_response(request(), ACCESS_ACCEPT,
                                [("Tunnel-Password", b"pw"), ("Tunnel-Password:3", b"\x05x")])
    assert reply[20:] == h("45 05 00 7077") + h("45 05 03 0578")
    response = v11.decode_response(reply, TOKEN)
    assert response.get("Tunnel-Password") == "pw"
    assert response.get("Tunnel-Password:3") == "\x05x"


def test_tagged_attributes_that_rfc_2865_does_not_hide_are_unchanged():
    attributes = [("Tunnel-Type:1", "VLAN"), ("Tunnel-Medium-Type:1", "IEEE-802"),
                  ("Tunnel-Private-Group-Id:1", "42"), ("Class", b"0xnot-hex")]
    ours = v11.encode_response(request(), ACCESS_ACCEPT, attributes)
    rfc2865 = codec.encode_response(codec.decode_request(
        codec.build_access_request(b"s", "alice", "pw"), b"s"), ACCESS_ACCEPT, attributes)
    assert ours[20:] == rfc2865[20 + 18:]            # the same, less the Message-Authenticator


def test_ms_chapv2_accept_attributes_round_trip_in_clear():
    attempt = MsChapV2("bob", "bob-pw")
    req = request(*attempt.forward(), user="bob", password=None)
    assert codec.is_mschapv2(req) and codec.method_of(req) == "mschapv2"
    assert codec.forwardable(req) == attempt.forward()       # MS-CHAP attributes unchanged (5.4)
    master = master_key("bob-pw", attempt.nt_response)
    send, recv = asymmetric_start_key(master, True, True), asymmetric_start_key(master, False, True)
    attributes = [("MS-CHAP2-Success", attempt.expected_success()),
                  ("MS-MPPE-Send-Key", send), ("MS-MPPE-Recv-Key", recv),
                  ("MS-MPPE-Encryption-Policy", "Encryption-Required"),
                  ("MS-MPPE-Encryption-Types", 6)]
    fitted = v11.encode_fitting(req, ACCESS_ACCEPT, attributes)
    assert (fitted.code, fitted.dropped) == (ACCESS_ACCEPT, ())
    response = v11.decode_response(fitted.packet, TOKEN)
    assert response.get("MS-CHAP2-Success") == attempt.expected_success()
    assert response.get("MS-MPPE-Send-Key") == send and response.get("MS-MPPE-Recv-Key") == recv
    assert send in fitted.packet and recv in fitted.packet  # the keys themselves, on the wire


# --- Message-Authenticator and other invalid attributes (5.2, 5.5) ------------

def test_a_received_message_authenticator_is_ignored_and_the_packet_processed():
    raw = v11.build_access_request(TOKEN, "alice", "pw", attributes=[
        (codec.MESSAGE_AUTHENTICATOR, b"\x99" * 16), (codec.MESSAGE_AUTHENTICATOR, b"\x01" * 3)])
    req = v11.decode_request(raw)
    assert req.message_authenticator_ignored
    assert req.has_message_authenticator is False
    assert codec.MESSAGE_AUTHENTICATOR not in [kind for kind, _ in req.attributes]
    assert (req.user_name, req.password) == ("alice", b"pw")


def test_original_packet_code_is_ignored():
    raw = v11.build_access_request(TOKEN, "alice", "pw",
                                   attributes=[(241, h("04 00000001")), (241, h("03 00000010"))])
    assert v11.decode_request(raw).attributes[-1] == (241, h("03 00000010"))
    assert (241, h("04 00000001")) not in v11.decode_request(raw).attributes


# --- what the pipeline reads is what codec.decode_request gives ---------------

def test_the_request_fields_match_the_rfc2865_decoders():
    attributes = [("Calling-Station-Id", "192.0.2.7"), ("Called-Station-Id", "vpn"),
                  ("NAS-Identifier", "nas1"), ("NAS-IP-Address", "192.0.2.1"),
                  ("Proxy-State", b"one"), ("Proxy-State", b"two")]
    ours = request(*attributes, state=b"st")
    theirs = codec.decode_request(codec.build_access_request(
        b"s", "alice", "pw", state=b"st", attributes=attributes), b"s")
    for name in ("code", "user_name", "user_name_raw", "user_name_invalid", "password", "chap",
                 "state", "calling_station_id", "called_station_id", "nas_identifier", "nas_ip",
                 "proxy_states"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert codec.forwardable(ours) == codec.forwardable(theirs)
    assert ours.get("NAS-Identifier") == "nas1"


def test_a_user_name_that_is_not_utf8_is_kept_as_octets():
    req = request(user=b"caf\xe9")
    assert (req.user_name, req.user_name_raw, req.user_name_invalid) == (None, b"caf\xe9", True)
    assert codec.escape_user_name(req.user_name_raw) == "caf\\xe9"


def test_an_eap_request_gets_its_eap_failure():
    req = request(("EAP-Message", bytes((2, 9, 0, 10)) + b"\x01alice"), password=None)
    assert codec.method_of(req) == "eap"
    fitted = v11.encode_fitting(req, ACCESS_REJECT, [("EAP-Message", codec.eap_failure(req))])
    assert fitted.packet[20:] == h("4f 06 04 09 0004")


def test_chap_with_its_challenge_is_a_chap_request():
    req = request(("CHAP-Password", b"\x01" + b"c" * 16), ("CHAP-Challenge", b"k" * 16),
                  password=None)
    assert req.chap and codec.method_of(req) == "chap"


# --- malformed input: one RemoteProtocolError, a precise message --------------

@pytest.mark.parametrize("data, message", [
    (BOB_REQUEST[:19], "packet shorter than 20 octets"),
    (h("01 00 0013 12345678") + bytes(12), "length field 19 below 20"),
    (h("01 00 1001 12345678") + bytes(4093), "length field 4097 above 4096"),
    (h("01 00 0030 12345678") + bytes(12), "length field 48 exceeds the data (20)"),
    (h("01 00 0015 12345678") + bytes(12) + h("01"), "truncated attribute header"),
    (h("01 00 0016 12345678") + bytes(12) + h("01 01"), "attribute 1 has length 1"),
    (h("01 00 0017 12345678") + bytes(12) + h("01 05 61"), "attribute 1 overruns the packet"),
    (h("01 00 001a 12345678") + bytes(12) + h("01 03 61 01 03 62"), "more than one User-Name"),
    (h("01 00 0016 12345678") + bytes(12) + h("02 02"), "User-Password of 0 octets (1 to 128)"),
    (h("01 00 0097 12345678") + bytes(12) + h("02 83") + b"p" * 129,
     "User-Password of 129 octets (1 to 128)"),
    (h("01 00 0027 12345678") + bytes(12) + h("03 13") + b"c" * 17,
     "CHAP-Password without CHAP-Challenge"),
    (h("01 00 0026 12345678") + bytes(12) + h("03 12") + b"c" * 16, "CHAP-Password is not 17 octets"),
    (h("01 00 002b 12345678") + bytes(12) + h("02 04 7077 03 13") + b"c" * 17,
     "both User-Password and CHAP-Password"),
    (h("01 00 0019 12345678") + bytes(12) + h("04 05 c00002"), "NAS-IP-Address is not 4 octets"),
])
def test_malformed_requests_raise_one_error_with_a_precise_message(data, message):
    with pytest.raises(RemoteProtocolError) as caught:
        v11.decode_request(data)
    assert str(caught.value).startswith(message)


def test_other_codes_are_unsupported():
    with pytest.raises(codec.UnsupportedCode) as caught:
        v11.decode_request(h("04 00 0014 12345678" + ZEROS))       # Accounting-Request
    assert caught.value.code == 4


def test_octets_past_the_length_field_are_not_the_packet():
    req = v11.decode_request(BOB_REQUEST + b"next packet")
    assert req.raw == BOB_REQUEST


def test_a_reply_with_another_token_is_refused():
    reply = v11.encode_response(request(), ACCESS_ACCEPT)
    with pytest.raises(RemoteProtocolError, match="reply Token 12345678 is not the request's 12345679"):
        v11.decode_response(reply, h("12345679"))


def test_what_cannot_be_encoded_is_our_fault():
    with pytest.raises(LocalProtocolError):
        v11.encode_response(request(), ACCESS_ACCEPT, [("Message-Authenticator", b"x" * 16)])
    with pytest.raises(LocalProtocolError):
        v11.encode_response(request(), codec.ACCESS_REQUEST)
    with pytest.raises(LocalProtocolError):
        v11.build_access_request(b"abc", "a")
    with pytest.raises(LocalProtocolError):
        v11.build_access_request(2**32, "a")
    with pytest.raises(LocalProtocolError):
        v11.build_access_request(TOKEN, "a", "")


# --- the 4,096-octet limit, by codec.encode_fitting's rules -------------------

def padded(total: int, *attributes, password="pw") -> v11.Request:
    """A request of exactly ``total`` octets, the rest Proxy-State."""
    bare = v11.build_access_request(TOKEN, "alice", password, attributes=list(attributes))
    room, states = total - len(bare), []
    while room > 0:
        size = min(255, room)
        if room - size == 1:
            size -= 1
        states.append(bytes([len(states) % 256]) * (size - 2))
        room -= size
    raw = v11.build_access_request(TOKEN, "alice", password, attributes=[
        *attributes, *(("Proxy-State", s) for s in states)])
    assert len(raw) == total
    return v11.decode_request(raw)


def test_a_reply_of_exactly_4096_octets_is_sent_whole():
    req = padded(4000)
    reply_room = MAX_PACKET_LENGTH - (20 + sum(2 + len(p) for p in req.proxy_states))
    fitted = v11.encode_fitting(req, ACCESS_ACCEPT, [("Class", b"c" * (reply_room - 2))])
    assert (len(fitted.packet), fitted.code, fitted.dropped) == (MAX_PACKET_LENGTH, ACCESS_ACCEPT, ())
    with pytest.raises(codec.ReplyTooLarge):
        v11.encode_response(req, ACCESS_ACCEPT, [("Class", b"c" * (reply_room - 1))])


def test_a_long_reply_message_is_cut_at_a_character_boundary():
    req = padded(3900)
    fitted = v11.encode_fitting(req, ACCESS_CHALLENGE,
                                [("Reply-Message", "é" * 300), ("State", b"s" * 16)])
    assert fitted.code == ACCESS_CHALLENGE and fitted.truncated == ("Reply-Message",)
    response = v11.decode_response(fitted.packet, TOKEN)
    text = response.get("Reply-Message")
    assert text == "é" * len(text) and response.get("State") == b"s" * 16
    assert len(fitted.packet) >= MAX_PACKET_LENGTH - 1           # one octet short at most: "é" is 2


def test_optional_challenge_attributes_are_dropped_last_first():
    req = padded(4000)
    fitted = v11.encode_fitting(req, ACCESS_CHALLENGE,
                                [("State", b"s" * 16), ("Class", b"a" * 60), ("Class", b"b" * 60)])
    assert fitted.code == ACCESS_CHALLENGE and fitted.dropped == ("Class",)
    assert b"a" * 60 in fitted.packet and b"b" * 60 not in fitted.packet


def test_an_accept_that_cannot_fit_becomes_a_reject():
    req = padded(4000)
    fitted = v11.encode_fitting(req, ACCESS_ACCEPT, [("Class", b"c" * 200)])
    assert (fitted.code, fitted.reason, fitted.dropped) == (ACCESS_REJECT, "too_large", ("Class",))
    response = v11.decode_response(fitted.packet, TOKEN)
    assert response.code == ACCESS_REJECT and response.proxy_states == req.proxy_states


def test_an_unencodable_accept_attribute_becomes_a_reject():
    fitted = v11.encode_fitting(request(), ACCESS_ACCEPT, [("Session-Timeout", "soon")])
    assert (fitted.code, fitted.reason) == (ACCESS_REJECT, "unencodable")


def test_proxy_states_are_echoed_first_in_order():
    req = request(("Proxy-State", b"far"), ("Proxy-State", b"near"))
    reply = v11.encode_response(req, ACCESS_ACCEPT, [("Class", b"c")])
    assert reply[20:] == h("21 05") + b"far" + h("21 06") + b"near" + h("19 03") + b"c"


# --- round trips ----------------------------------------------------------------

@pytest.mark.parametrize("code, attributes", [
    (ACCESS_ACCEPT, [("Reply-Message", "Welcome"), ("Class", b"\x00\x01"),
                     ("Framed-IP-Address", "10.1.2.3"), ("Session-Timeout", 3600),
                     ((9, 1), b"shell:priv-lvl=15")]),
    (ACCESS_CHALLENGE, [("Reply-Message", "Enter the code: " + "x" * 400), ("State", b"\x00" * 32)]),
    (ACCESS_REJECT, []),
])
def test_replies_round_trip(code, attributes):
    req = request(("Proxy-State", b"hop"), token=h("00000001"))
    fitted = v11.encode_fitting(req, code, attributes)
    assert fitted.packet == v11.encode_response(req, code, attributes)
    response = v11.decode_response(fitted.packet, h("00000001"))
    assert (response.code, response.proxy_states, response.reserved_zero) == (code, (b"hop",), True)
    for name, value in attributes:
        if isinstance(name, tuple):                     # a raw vendor attribute: as it was
            assert codec._vsa(*name, value)[2:] in [v for k, v in response.attributes if k == 26]
            continue
        got = response.get_all(name)
        if name == "Reply-Message":
            assert "".join(got) == value
        elif name == "Framed-IP-Address":
            assert got == [value]
        else:
            assert got == [value], name


def test_requests_round_trip():
    raw = v11.build_access_request(h("fffffffe"), "ALICE@corp", "pässword,123456", state=b"st",
                                   attributes=[("Calling-Station-Id", "2001:db8::1"),
                                               ("NAS-Port", 7)])
    req = v11.decode_request(raw)
    assert (req.user_name, req.password, req.state, req.calling_station_id) == (
        "ALICE@corp", "pässword,123456".encode(), b"st", "2001:db8::1")
    assert req.get("NAS-Port") == 7 and req.raw == raw
    assert struct.unpack("!H", raw[2:4])[0] == len(raw)


# --- the dialect a RADIUS/1.1 connection speaks ---------------------------------

def test_the_dialect_skips_the_message_authenticator_policy_and_keys_by_token():
    dialect = v11.RADIUS_11
    assert (dialect.name, dialect.alpn, dialect.message_authenticator) == (
        "radius/1.1", b"radius/1.1", False)
    header = dialect.peek(BOB_REQUEST)
    assert (header.code, header.token, header.id) == (1, TOKEN, 0x12345678)
    # Reserved-1 (the old Identifier) is not part of what identifies a request
    other = bytes([1, 0x55]) + BOB_REQUEST[2:]
    assert dialect.request_key(dialect.peek(other)) == dialect.request_key(header)
    req = dialect.decode_request(BOB_REQUEST, b"ignored", None)
    assert dialect.encode_reply(req, ACCESS_ACCEPT, [], b"ignored").packet == \
        v11.encode_response(req, ACCESS_ACCEPT)


def test_a_client_entry_may_forbid_the_dialect():
    class Entry:
        def __init__(self, radius11):
            self.radius11 = radius11
    assert v11.RADIUS_11.permitted(Entry("allow")) and v11.RADIUS_11.permitted(Entry("require"))
    assert not v11.RADIUS_11.permitted(Entry("forbid"))


def test_a_request_that_cannot_be_decided_gets_a_protocol_error():
    req = request(("Proxy-State", b"hop"))
    response = v11.decode_response(v11.RADIUS_11.unanswerable(req), TOKEN)
    assert (response.code, response.error_cause, response.proxy_states) == (52, 506, (b"hop",))


# --- the client key radius11 (configuration) --------------------------------------

def _config(tmp_path, client_lines: str):
    from peers.pki import Pki

    pki = Pki(tmp_path / "pki")
    server = pki.server()
    path = tmp_path / "radius-mfa.yaml"
    path.write_text(f"""server:
  listen:
    - tls: "127.0.0.1:2083"
  tls:
    cert_file: {server.cert}
    key_file: {server.key}
    ca_file: {pki.ca_file}
clients:
{client_lines}""")
    path.chmod(0o600)
    return path


def test_radius11_defaults_to_allow_and_takes_require_and_forbid(tmp_path):
    from radius_mfa.config import load_config

    config = load_config(_config(tmp_path, """  - {name: a, address: 127.0.0.1, transport: tls}
  - {name: b, address: 127.0.0.2, transport: tls, radius11: require}
  - {name: c, address: 127.0.0.3, transport: tls, radius11: forbid}
"""))
    assert [c.radius11 for c in config.clients] == ["allow", "require", "forbid"]


def test_radius11_is_for_tls_clients_with_one_of_three_values(tmp_path):
    from radius_mfa.config import load_config
    from radius_mfa.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_config(_config(tmp_path, """  - {name: a, address: 127.0.0.1, transport: tls, radius11: maybe}
  - {name: b, address: 127.0.0.2, secret: a-long-enough-secret-1, radius11: forbid}
"""))
    problems = "\n".join(caught.value.problems)
    assert "clients[0].radius11" in problems and "allow" in problems
    assert "clients[1].radius11: applies to transport: tls only" in problems


# --- the dialect in the packet path: a request that cannot be decided ---------------

def test_the_packet_path_answers_an_undecidable_request_per_dialect():
    import ipaddress

    from twisted.internet.task import Clock

    from radius_mfa.config import ClientConfig
    from radius_mfa.radius.dialect import RADIUS_10
    from radius_mfa.requests import Decision
    from radius_mfa.server import RadiusServer
    from radius_mfa.verdicts import Reason, Verdict

    server = RadiusServer(None, dictionary=None, reactor=Clock(), activity=None,
                          on_finished=lambda finished: None, droplog=None, duplicates=None)
    nas = ClientConfig(name="nas", network=ipaddress.ip_network("127.0.0.1/32"), secret=b"radsec")
    overloaded = Decision(Verdict.FAIL, "alice", "local", reason=Reason.OVERLOADED)
    packet, _ = server._encode(overloaded, request(("Proxy-State", b"hop")), nas, "pap", "r1",
                               v11.RADIUS_11)
    response = v11.decode_response(packet, TOKEN)
    assert (response.code, response.error_cause, response.proxy_states) == (52, 506, (b"hop",))
    legacy = codec.decode_request(codec.build_access_request(b"radsec", "alice", "pw"), b"radsec")
    assert server._encode(overloaded, legacy, nas, "pap", "r2", RADIUS_10)[0] is None   # silence
