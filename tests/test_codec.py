"""The RADIUS codec and dictionaries, checked against RFC vectors and against
hashes computed independently here (hashlib/hmac, straight from RFC 2865
section 3 and RFC 3579 section 3.2)."""

from __future__ import annotations

import hashlib
import hmac
import importlib.resources
import random
import struct

import pytest
from pyrad.dictionary import Dictionary

from radius_mfa.errors import LocalProtocolError, RemoteProtocolError
from radius_mfa.radius import codec
from radius_mfa.radius.codec import (
    ACCESS_ACCEPT, ACCESS_CHALLENGE, ACCESS_REJECT, ACCESS_REQUEST, STATUS_SERVER,
    UnsupportedCode, build_access_request, decode_request, decode_response,
    encode_response, peek,
)
from radius_mfa.radius.dictionary import load_dictionary

SECRET = b"xyzzy5461"

# RFC 2865 section 7.1: Access-Request for "nemo"/"arctangent" from NAS
# 192.168.1.16 port 3, and the Access-Accept that answers it.
RFC2865_REQUEST = bytes.fromhex(
    "010000380f403f9473978057bd83d5cb98f4227a"
    "01066e656d6f"
    "02120dbe708d93d413ce3196e43f782a0aee"
    "0406c0a80110"
    "050600000003")
RFC2865_AUTHENTICATOR = bytes.fromhex("0f403f9473978057bd83d5cb98f4227a")
RFC2865_HIDDEN_PASSWORD = bytes.fromhex("0dbe708d93d413ce3196e43f782a0aee")
RFC2865_ACCEPT = bytes.fromhex(
    "0200002686fe220e7624ba2a1005f6bf9b55e0b2"
    "060600000001"
    "0f0600000000"
    "0e06c0a80103")


# ---------------------------------------------------------------- helpers

def split_attributes(packet: bytes) -> list[tuple[int, bytes]]:
    """An independent attribute walk, for checking encoder output."""
    out, offset = [], 20
    while offset < len(packet):
        kind, length = packet[offset], packet[offset + 1]
        out.append((kind, packet[offset + 2:offset + length]))
        offset += length
    assert offset == len(packet)
    return out


def expected_message_authenticator(packet: bytes, secret: bytes, vector: bytes) -> bytes:
    """RFC 3579 3.2: HMAC-MD5(secret, Type+Id+Length+vector+attrs with MA zeroed)."""
    attrs, offset = bytearray(packet[20:]), 0
    while offset < len(attrs):
        if attrs[offset] == 80:
            attrs[offset + 2:offset + 18] = bytes(16)
        offset += attrs[offset + 1]
    return hmac.new(secret, packet[:4] + vector + bytes(attrs), hashlib.md5).digest()


def expected_response_authenticator(packet: bytes, request_authenticator: bytes,
                                    secret: bytes) -> bytes:
    """RFC 2865 3: MD5(Code+ID+Length+RequestAuth+Attributes+Secret)."""
    return hashlib.md5(packet[:4] + request_authenticator + packet[20:] + secret).digest()


def salt_decrypt(value: bytes, secret: bytes, request_authenticator: bytes) -> bytes:
    """RFC 2548 2.4.2 decryption, written independently of the codec."""
    salt, cipher = value[:2], value[2:]
    plain, previous = b"", request_authenticator + salt
    for i in range(0, len(cipher), 16):
        pad = hashlib.md5(secret + previous).digest()
        plain += bytes(a ^ b for a, b in zip(pad, cipher[i:i + 16]))
        previous = cipher[i:i + 16]
    return plain[1:1 + plain[0]]


def packet(code: int, ident: int, authenticator: bytes, attrs: bytes, padding: bytes = b"") -> bytes:
    return struct.pack("!BBH", code, ident, 20 + len(attrs)) + authenticator + attrs + padding


def request(**kw) -> codec.Request:
    kw.setdefault("authenticator", RFC2865_AUTHENTICATOR)
    raw = build_access_request(SECRET, kw.pop("user", "nemo"), kw.pop("password", "arctangent"), **kw)
    return decode_request(raw, SECRET)


# ---------------------------------------------------------------- dictionaries

DICTIONARY_FILES = [
    "dictionary", "dictionary.rfc2865", "dictionary.rfc2866", "dictionary.rfc2868",
    "dictionary.rfc2869", "dictionary.rfc3162", "dictionary.rfc3579",
    "dictionary.rfc5176", "dictionary.rfc5997", "dictionary.microsoft",
]


@pytest.mark.parametrize("name", DICTIONARY_FILES)
def test_every_dictionary_file_parses_on_its_own(name):
    resource = importlib.resources.files("radius_mfa.dictionaries").joinpath(name)
    with importlib.resources.as_file(resource) as path:
        parsed = Dictionary(str(path))
    assert not parsed.skipped_attributes
    if name not in ("dictionary.rfc5997", "dictionary.rfc5176"):
        assert len(parsed) > 0


@pytest.mark.parametrize("name, code, datatype", [
    ("User-Name", 1, "string"), ("User-Password", 2, "string"), ("CHAP-Password", 3, "octets"),
    ("NAS-IP-Address", 4, "ipaddr"), ("Service-Type", 6, "integer"),
    ("Framed-IP-Address", 8, "ipaddr"), ("Filter-Id", 11, "string"),
    ("Reply-Message", 18, "string"), ("State", 24, "octets"), ("Class", 25, "octets"),
    ("Session-Timeout", 27, "integer"), ("Idle-Timeout", 28, "integer"),
    ("Called-Station-Id", 30, "string"), ("Calling-Station-Id", 31, "string"),
    ("NAS-Identifier", 32, "string"), ("Proxy-State", 33, "octets"),
    ("Acct-Status-Type", 40, "integer"), ("Acct-Session-Id", 44, "string"),
    ("Event-Timestamp", 55, "date"), ("CHAP-Challenge", 60, "octets"),
    ("Tunnel-Type", 64, "integer"), ("Tunnel-Password", 69, "string"),
    ("EAP-Message", 79, "octets"), ("Message-Authenticator", 80, "octets"),
    ("Tunnel-Private-Group-Id", 81, "string"), ("Acct-Interim-Interval", 85, "integer"),
    ("NAS-Port-Id", 87, "string"), ("NAS-IPv6-Address", 95, "ipv6addr"),
    ("Framed-IPv6-Prefix", 97, "ipv6prefix"), ("Error-Cause", 101, "integer"),
])
def test_standard_attributes_have_their_rfc_codes(name, code, datatype):
    attr = load_dictionary()[name]
    assert (attr.code, attr.type, attr.vendor) == (code, datatype, "")


@pytest.mark.parametrize("name, code", [
    ("MS-CHAP-Response", 1), ("MS-CHAP-Error", 2), ("MS-MPPE-Encryption-Policy", 7),
    ("MS-MPPE-Encryption-Types", 8), ("MS-CHAP-Challenge", 11), ("MS-MPPE-Send-Key", 16),
    ("MS-MPPE-Recv-Key", 17), ("MS-CHAP2-Response", 25), ("MS-CHAP2-Success", 26),
])
def test_microsoft_attributes_are_vendor_311(name, code):
    dictionary = load_dictionary()
    assert dictionary.attrindex.GetForward(name) == (311, code)


def test_encryption_flags_and_tags():
    d = load_dictionary()
    assert d["User-Password"].encrypt == 1
    assert (d["Tunnel-Password"].encrypt, d["Tunnel-Password"].has_tag) == (2, True)
    assert d["MS-MPPE-Send-Key"].encrypt == 2 and d["MS-MPPE-Recv-Key"].encrypt == 2
    assert d["Tunnel-Type"].has_tag


def test_named_values():
    d = load_dictionary()
    assert d["Service-Type"].values.GetForward("Framed-User") == struct.pack("!I", 2)
    assert d["Service-Type"].values.GetForward("Authorize-Only") == struct.pack("!I", 17)
    assert d["Error-Cause"].values.GetForward("Invalid-Request") == struct.pack("!I", 404)
    assert d["Acct-Status-Type"].values.GetForward("Interim-Update") == struct.pack("!I", 3)


def test_dictionary_is_loaded_once():
    assert load_dictionary() is load_dictionary()


# ---------------------------------------------------------------- peek

def test_peek_reads_the_header():
    header = peek(RFC2865_REQUEST)
    assert (header.code, header.id, header.length) == (ACCESS_REQUEST, 0, 56)
    assert header.authenticator == RFC2865_AUTHENTICATOR


@pytest.mark.parametrize("data, reason", [
    (b"", "shorter"),
    (RFC2865_REQUEST[:19], "shorter"),
    (b"\x01\x00\x00\x13" + bytes(16), "below"),
    (b"\x01\x00\x10\x01" + bytes(4097), "above"),
    (RFC2865_REQUEST[:55], "exceeds"),
])
def test_peek_refuses_bad_lengths(data, reason):
    with pytest.raises(RemoteProtocolError, match=reason):
        peek(data)


# ---------------------------------------------------------------- decode_request

def test_rfc2865_example_decrypts():
    req = decode_request(RFC2865_REQUEST, SECRET)
    assert req.code == ACCESS_REQUEST and req.id == 0
    assert req.user_name == "nemo"
    assert req.password == b"arctangent"
    assert req.nas_ip == "192.168.1.16"
    assert req.get("NAS-Port") == 3
    assert not req.has_message_authenticator and req.message_authenticator_ok is None
    assert not req.chap and req.state is None


def test_wrong_secret_gives_garbage_bytes_not_an_error():
    req = decode_request(RFC2865_REQUEST, b"not the secret")
    assert isinstance(req.password, bytes) and req.password != b"arctangent"


def test_padding_after_the_length_field_is_ignored():
    req = decode_request(RFC2865_REQUEST + b"\xff" * 30, SECRET)
    assert req.raw == RFC2865_REQUEST and req.password == b"arctangent"


def test_build_access_request_hides_the_password_as_the_rfc_example():
    raw = build_access_request(SECRET, "nemo", "arctangent", authenticator=RFC2865_AUTHENTICATOR,
                               message_authenticator=False,
                               attributes=[("NAS-IP-Address", "192.168.1.16"), ("NAS-Port", 3)])
    assert raw == RFC2865_REQUEST


def test_message_authenticator_of_a_request_is_verified():
    raw = build_access_request(SECRET, "nemo", "arctangent", id=9)
    attrs = split_attributes(raw)
    assert attrs[0][0] == 80
    assert attrs[0][1] == expected_message_authenticator(raw, SECRET, raw[4:20])
    req = decode_request(raw, SECRET)
    assert req.has_message_authenticator and req.message_authenticator_ok is True
    assert decode_request(raw, b"wrong").message_authenticator_ok is False


def test_tampered_request_fails_message_authenticator():
    raw = bytearray(build_access_request(SECRET, "nemo", "x", attributes=[("NAS-Port", 1)]))
    raw[-1] ^= 1
    assert decode_request(bytes(raw), SECRET).message_authenticator_ok is False


def test_message_authenticator_anywhere_in_the_request_is_checked():
    auth = bytes(range(16))
    attrs = b"\x01\x06nemo" + b"\x50\x12" + bytes(16)
    raw = packet(ACCESS_REQUEST, 3, auth, attrs)
    mac = expected_message_authenticator(raw, SECRET, auth)
    raw = raw[:-16] + mac
    assert decode_request(raw, SECRET).message_authenticator_ok is True


def test_fields_are_extracted():
    raw = build_access_request(
        SECRET, "alice", "pw", state=b"\x00state\xff",
        attributes=[("Calling-Station-Id", "198.51.100.7"), ("Called-Station-Id", "vpn"),
                    ("NAS-Identifier", "fw1"), ("NAS-IPv6-Address", "2001:db8::1"),
                    ("Proxy-State", b"first"), ("Proxy-State", b"second")])
    req = decode_request(raw, SECRET)
    assert req.user_name == "alice" and req.password == b"pw"
    assert req.state == b"\x00state\xff"
    assert req.calling_station_id == "198.51.100.7"
    assert req.called_station_id == "vpn"
    assert req.nas_identifier == "fw1"
    assert req.nas_ip == "2001:db8::1"
    assert req.proxy_states == (b"first", b"second")
    assert req.get("NAS-Identifier") == "fw1"
    assert req.get("Filter-Id") is None


def test_password_is_not_in_the_repr():
    req = request(password="sup3r-secret")
    assert "sup3r-secret" not in repr(req)


def test_chap_request():
    raw = build_access_request(SECRET, "flopsy", attributes=[("CHAP-Password", bytes(17))])
    req = decode_request(raw, SECRET)
    assert req.chap and req.password is None


def test_status_server_decodes():
    raw = build_access_request(SECRET, None, code=STATUS_SERVER, id=200)
    req = decode_request(raw, SECRET)
    assert req.code == STATUS_SERVER and req.message_authenticator_ok is True
    assert req.user_name is None and req.password is None


def test_password_of_128_octets_is_accepted():
    assert request(password=b"p" * 128).password == b"p" * 128


def test_get_of_an_unknown_attribute_name_is_our_error():
    with pytest.raises(LocalProtocolError):
        request().get("No-Such-Attribute")


def test_get_of_a_badly_sized_value_is_the_peers_error():
    raw = build_access_request(SECRET, "nemo", "pw", attributes=[(5, b"\x01\x02")])
    with pytest.raises(RemoteProtocolError):
        decode_request(raw, SECRET).get("NAS-Port")


def _with_attrs(attrs: bytes, code: int = ACCESS_REQUEST) -> bytes:
    return packet(code, 1, RFC2865_AUTHENTICATOR, attrs)


@pytest.mark.parametrize("attrs, reason", [
    (b"\x01", "truncated"),
    (b"\x01\x01", "length 1"),
    (b"\x01\x00", "length 0"),
    (b"\x01\x08nemo", "overruns"),
    (b"\x02\x02", "User-Password of 0"),
    (b"\x02\x11" + bytes(15), "User-Password of 15"),
    (b"\x02\x92" + bytes(144), "User-Password of 144"),
    (b"\x02\x12" + bytes(16) + b"\x02\x12" + bytes(16), "more than one User-Password"),
    (b"\x01\x03a\x01\x03b", "more than one User-Name"),
    (b"\x50\x12" + bytes(16) + b"\x50\x12" + bytes(16), "more than one Message-Authenticator"),
    (b"\x50\x11" + bytes(15), "not 18"),
    (b"\x03\x10" + bytes(14), "CHAP-Password"),
    (b"\x02\x12" + bytes(16) + b"\x03\x13" + bytes(17), "both"),
    (b"\x04\x05abc", "NAS-IP-Address"),
    (b"\x5f\x06abcd", "NAS-IPv6-Address"),
])
def test_malformed_requests_are_refused(attrs, reason):
    with pytest.raises(RemoteProtocolError, match=reason):
        decode_request(_with_attrs(attrs), SECRET)


@pytest.mark.parametrize("code", [ACCESS_ACCEPT, 4, 40, 255])
def test_other_codes_are_unsupported(code):
    with pytest.raises(UnsupportedCode) as caught:
        decode_request(_with_attrs(b"", code=code), SECRET)
    assert caught.value.code == code
    assert isinstance(caught.value, RemoteProtocolError)


def _fuzz_inputs(rng: random.Random):
    seeds = [
        RFC2865_REQUEST,
        build_access_request(SECRET, "alice", "pw", state=b"s" * 16, attributes=[
            ("Proxy-State", b"p"), ("NAS-IP-Address", "10.0.0.1"), ("Service-Type", "Framed-User"),
            ("MS-CHAP2-Response", bytes(50)), ("Tunnel-Type:1", "VLAN"), ("Framed-IPv6-Prefix", "2001:db8::/32"),
        ]),
        build_access_request(SECRET, None, code=STATUS_SERVER),
    ]
    for _ in range(1500):        # random bytes, sometimes with a plausible header
        body = rng.randbytes(rng.randrange(0, 300))
        if rng.random() < 0.5 and len(body) >= 4:
            body = bytes((rng.choice((1, 12)), rng.randrange(256))) + struct.pack("!H", len(body)) + body[4:]
        yield body
    for _ in range(1500):        # truncated and bit-flipped real packets
        raw = bytearray(rng.choice(seeds))
        if rng.random() < 0.3:
            raw = raw[:rng.randrange(len(raw) + 1)]
        for _ in range(rng.randrange(1, 4)):
            if raw:
                raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        yield bytes(raw)
    for _ in range(1500):        # well-framed packets of random attributes
        attrs = b""
        for _ in range(rng.randrange(8)):
            value = rng.randbytes(rng.choice((0, 1, 4, 6, 16, 17, 18, 32, rng.randrange(250))))
            kind = rng.choice((1, 2, 3, 4, 5, 6, 24, 26, 33, 64, 69, 79, 80, 95, 97, rng.randrange(256)))
            if kind == 26 and rng.random() < 0.7:
                inner = rng.randbytes(rng.randrange(20))
                value = struct.pack("!L", 311) + bytes((rng.randrange(40), len(inner) + 2)) + inner
            attrs += bytes((kind, min(len(value) + 2, 255))) + value[:253]
        yield packet(rng.choice((1, 12)), rng.randrange(256), rng.randbytes(16), attrs)


def test_fuzzed_input_raises_only_remote_protocol_error():
    rng = random.Random(20240709)
    decoded = 0
    for data in _fuzz_inputs(rng):
        try:
            req = decode_request(data, SECRET)
            decoded += 1
            for name in ("User-Name", "NAS-Port", "Service-Type", "NAS-IP-Address", "Tunnel-Type",
                         "Framed-IPv6-Prefix", "NAS-IPv6-Address", "MS-CHAP2-Response", "Tunnel-Password"):
                try:
                    req.get(name)
                except RemoteProtocolError:
                    pass
            encode_response(req, ACCESS_REJECT)
        except RemoteProtocolError:
            pass
    assert decoded > 500        # the fuzzer reaches past the header checks


# ---------------------------------------------------------------- encode_response

@pytest.mark.parametrize("code", [ACCESS_ACCEPT, ACCESS_REJECT, ACCESS_CHALLENGE])
def test_response_authenticators_match_an_independent_computation(code):
    req = request(attributes=[("Proxy-State", b"one"), ("Proxy-State", b"two")], id=42)
    raw = encode_response(req, code, [("Reply-Message", "hello"), ("State", b"st")])
    assert raw[0] == code and raw[1] == 42
    assert struct.unpack("!H", raw[2:4])[0] == len(raw)
    attrs = split_attributes(raw)
    assert attrs[0][0] == 80, "Message-Authenticator must be the first attribute"
    assert attrs[0][1] == expected_message_authenticator(raw, SECRET, req.authenticator)
    assert raw[4:20] == expected_response_authenticator(raw, req.authenticator, SECRET)
    assert attrs[1:] == [(33, b"one"), (33, b"two"), (18, b"hello"), (24, b"st")]


def test_reply_to_rfc2865_example_request():
    req = decode_request(RFC2865_REQUEST, SECRET)
    raw = encode_response(req, ACCESS_ACCEPT, [("Service-Type", "Login-User"),
                                               ("Login-Service", "Telnet"),
                                               ("Login-IP-Host", "192.168.1.3")])
    # the RFC's reply plus our leading Message-Authenticator
    assert raw[20:] == raw[20:38] + RFC2865_ACCEPT[20:]
    assert raw[4:20] == expected_response_authenticator(raw, RFC2865_AUTHENTICATOR, SECRET)


def test_decode_response_checks_the_rfc_example_reply():
    reply = decode_response(RFC2865_ACCEPT, SECRET, RFC2865_AUTHENTICATOR,
                            require_message_authenticator=False)
    assert reply.code == ACCESS_ACCEPT
    assert reply.get("Service-Type") == "Login-User"
    assert reply.get("Login-IP-Host") == "192.168.1.3"
    with pytest.raises(RemoteProtocolError, match="without Message-Authenticator"):
        decode_response(RFC2865_ACCEPT, SECRET, RFC2865_AUTHENTICATOR)
    with pytest.raises(RemoteProtocolError, match="Response Authenticator"):
        decode_response(RFC2865_ACCEPT, b"wrong", RFC2865_AUTHENTICATOR,
                        require_message_authenticator=False)


def test_reply_to_status_server_is_a_signed_access_accept():
    req = decode_request(build_access_request(SECRET, None, code=STATUS_SERVER), SECRET)
    raw = encode_response(req, ACCESS_ACCEPT, [("Reply-Message", "ok")])
    reply = decode_response(raw, SECRET, req.authenticator)
    assert reply.message_authenticator_first and reply.get("Reply-Message") == "ok"


def test_proxy_state_is_copied_byte_for_byte_in_order():
    states = [b"\x00\x01", b"zz" * 100, b"\xff"]
    req = request(attributes=[("Proxy-State", s) for s in states])
    reply = decode_response(encode_response(req, ACCESS_REJECT), SECRET, req.authenticator)
    assert list(reply.proxy_states) == states


def test_repeated_attributes_keep_their_order():
    req = request()
    raw = encode_response(req, ACCESS_ACCEPT, [("Class", b"a"), ("Filter-Id", "f"), ("Class", b"b")])
    assert split_attributes(raw)[1:] == [(25, b"a"), (11, b"f"), (25, b"b")]


def test_octets_values_are_not_reinterpreted():
    # pyrad would hex-decode these; a State or Class is opaque
    req = request()
    raw = encode_response(req, ACCESS_CHALLENGE, [("State", b"0x1234"), ("Class", "65")])
    assert split_attributes(raw)[1:] == [(24, b"0x1234"), (25, b"65")]


def test_long_reply_message_is_split_at_character_boundaries():
    text = "é" * 200                              # 400 octets of UTF-8
    req = request()
    reply = decode_response(encode_response(req, ACCESS_CHALLENGE, [("Reply-Message", text)]),
                            SECRET, req.authenticator)
    pieces = [value for kind, value in reply.attributes if kind == 18]
    assert len(pieces) == 2 and all(len(p) <= 253 for p in pieces)
    assert [p.decode("utf-8") for p in pieces] and b"".join(pieces).decode() == text


def test_mppe_keys_are_salt_encrypted_for_the_clients_secret():
    send, recv = bytes(range(32)), bytes(range(32, 64))
    req = request()
    raw = encode_response(req, ACCESS_ACCEPT, [("MS-MPPE-Send-Key", send), ("MS-MPPE-Recv-Key", recv)])
    vsas = [value for kind, value in split_attributes(raw) if kind == 26]
    assert [struct.unpack("!LBB", v[:6])[:2] for v in vsas] == [(311, 16), (311, 17)]
    salts = [v[6:8] for v in vsas]
    assert salts[0] != salts[1] and all(s[0] & 0x80 for s in salts)
    assert salt_decrypt(vsas[0][6:], SECRET, req.authenticator) == send
    assert salt_decrypt(vsas[1][6:], SECRET, req.authenticator) == recv
    reply = decode_response(raw, SECRET, req.authenticator)
    assert reply.get("MS-MPPE-Send-Key") == send       # pyrad agrees


def test_tagged_attributes():
    req = request()
    raw = encode_response(req, ACCESS_ACCEPT, [("Tunnel-Type:1", "VLAN"), ("Tunnel-Medium-Type:1", "IEEE-802"),
                                               ("Tunnel-Private-Group-Id:1", "42"), ("Tunnel-Password:2", "pw")])
    attrs = split_attributes(raw)[1:]
    assert attrs[0] == (64, b"\x01\x00\x00\x0d")
    assert attrs[1] == (65, b"\x01\x00\x00\x06")
    assert attrs[2] == (81, b"\x0142")
    assert attrs[3][0] == 69 and attrs[3][1][0] == 2
    assert salt_decrypt(attrs[3][1][1:], SECRET, req.authenticator) == b"pw"


def test_raw_attributes_pass_through():
    req = request()
    raw = encode_response(req, ACCESS_ACCEPT, [(200, b"raw"), ((9, 1), b"cisco-avpair")])
    attrs = split_attributes(raw)[1:]
    assert attrs[0] == (200, b"raw")
    assert attrs[1] == (26, struct.pack("!LBB", 9, 1, 14) + b"cisco-avpair")


@pytest.mark.parametrize("attributes, reason", [
    ([("Message-Authenticator", bytes(16))], "added by the codec"),
    ([("Proxy-State", b"x")], "added by the codec"),
    ([("No-Such-Thing", "x")], "not in the dictionary"),
    ([("Session-Timeout", "soon")], "Session-Timeout"),
    ([("Session-Timeout", True)], "bool"),
    ([("Filter-Id", "x" * 254)], "exceeds 253"),
    ([("Class", b"x" * 250)] * 20, "exceeds 4096"),
    ([("Filter-Id:1", "x")], "takes no tag"),
    ([(26 * 1000, b"x")], "neither a name nor a code"),
    ([(18, "not bytes")], "bytes value"),
])
def test_bad_reply_attributes_are_our_error(attributes, reason):
    with pytest.raises(LocalProtocolError, match=reason):
        encode_response(request(), ACCESS_ACCEPT, attributes)


def test_only_reply_codes_are_encoded():
    with pytest.raises(LocalProtocolError):
        encode_response(request(), ACCESS_REQUEST)


def test_response_can_be_signed_with_another_secret():
    req = request()
    raw = encode_response(req, ACCESS_REJECT, secret=b"other")
    assert raw[4:20] == expected_response_authenticator(raw, req.authenticator, b"other")


def test_decode_response_refuses_tampering():
    req = request()
    raw = bytearray(encode_response(req, ACCESS_ACCEPT, [("Reply-Message", "hi")]))
    raw[-1] ^= 1
    with pytest.raises(RemoteProtocolError):
        decode_response(bytes(raw), SECRET, req.authenticator)


def test_decode_response_refuses_a_bad_message_authenticator_with_a_good_authenticator():
    req = request()
    raw = bytearray(encode_response(req, ACCESS_ACCEPT))
    raw[22] ^= 1                                   # inside the MA value
    raw[4:20] = expected_response_authenticator(bytes(raw), req.authenticator, SECRET)
    with pytest.raises(RemoteProtocolError, match="bad Message-Authenticator"):
        decode_response(bytes(raw), SECRET, req.authenticator)


def test_hide_and_unhide_password_round_trip():
    auth = bytes(range(16))
    for length in (0, 1, 15, 16, 17, 64, 128):
        secret_text = bytes(range(1, length + 1))
        hidden = codec.hide_password(secret_text, SECRET, auth)
        assert len(hidden) == max(16, -(-length // 16) * 16)
        assert codec.unhide_password(hidden, SECRET, auth) == secret_text
    with pytest.raises(LocalProtocolError):
        codec.hide_password(b"x" * 129, SECRET, auth)


def test_forwardable_keeps_nas_attributes_and_leaves_out_what_a_proxy_sets():
    from radius_mfa.radius.codec import (build_access_request, decode_request, forwardable,
                                         is_mschapv2)
    ms_chap2_response = (26, (311).to_bytes(4, "big") + bytes([25, 52]) + b"\x01" * 50)
    raw = build_access_request(b"s", "bob", None, id=1, state=b"st",
                               attributes=[("Calling-Station-Id", "198.51.100.7"),
                                           ("Proxy-State", b"p"), ms_chap2_response])
    request = decode_request(raw, b"s")
    forwarded = forwardable(request)
    assert [t for t, _ in forwarded] == [31, 26]
    assert forwarded[1] == ms_chap2_response
    assert is_mschapv2(request)
    plain = decode_request(build_access_request(b"s", "bob", b"pw", id=2), b"s")
    assert not is_mschapv2(plain) and forwardable(plain) == ()


def test_mschapv2_is_found_in_any_sub_attribute_of_a_vendor_attribute():
    from radius_mfa.radius.codec import (build_access_request, decode_request, is_mschapv2,
                                         split_vendor_specific)
    challenge = bytes([11, 18]) + b"c" * 16                     # MS-CHAP-Challenge first …
    response = bytes([25, 52]) + b"\x01" * 50                   # … then MS-CHAP2-Response
    packed = (26, (311).to_bytes(4, "big") + challenge + response)
    request = decode_request(build_access_request(b"s", "bob", None, id=3, attributes=[packed]), b"s")
    assert split_vendor_specific(packed[1]) == (311, [(11, b"c" * 16), (25, b"\x01" * 50)])
    assert is_mschapv2(request)
    other_vendor = (26, (9).to_bytes(4, "big") + response)
    assert not is_mschapv2(decode_request(
        build_access_request(b"s", "bob", b"pw", id=4, attributes=[other_vendor]), b"s"))
    assert split_vendor_specific(b"\x00\x00\x01\x37\x19") is None          # truncated
