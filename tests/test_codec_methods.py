"""What the codec tells about a request beyond its attributes: the method a
client uses (the audit's ``method``), the EAP-Failure an EAP request's
reject carries (RFC 3579 section 2.6.3, RFC 3748 section 4.2), and a
User-Name that is octets, not text (RFC 2865 section 5.1)."""

from __future__ import annotations

import struct

import pytest

from radius_mfa.radius import codec
from radius_mfa.radius.codec import (ACCESS_REJECT, build_access_request, decode_request,
                                     decode_response, encode_fitting, encode_response)

SECRET = b"methods-secret"
MSCHAP_CHALLENGE = ("MS-CHAP-Challenge", bytes(range(16)))
MSCHAP1_RESPONSE = ("MS-CHAP-Response", bytes(50))
MSCHAP2_RESPONSE = ("MS-CHAP2-Response", bytes(50))
EAP_IDENTITY = bytes((2, 7, 0, 10)) + b"\x01alice"          # EAP-Response/Identity, id 7


def decoded(user="alice", password=None, **kw) -> codec.Request:
    return decode_request(build_access_request(SECRET, user, password, **kw), SECRET)


def chap_request() -> codec.Request:
    return decoded(attributes=[("CHAP-Password", bytes(17)), ("CHAP-Challenge", bytes(16))])


# ---------------------------------------------------------------- method_of

@pytest.mark.parametrize("make, method", [
    (lambda: decoded(password="pw"), "pap"),
    (chap_request, "chap"),
    (lambda: decoded(attributes=[MSCHAP_CHALLENGE, MSCHAP1_RESPONSE]), "mschap"),
    (lambda: decoded(attributes=[MSCHAP_CHALLENGE, MSCHAP2_RESPONSE]), "mschapv2"),
    (lambda: decoded(attributes=[("EAP-Message", EAP_IDENTITY)]), "eap"),
    (lambda: decoded(), "none"),
    (lambda: decoded(state=b"s" * 16), "none"),
])
def test_method_of_names_what_the_client_used(make, method):
    assert codec.method_of(make()) == method
    assert method in codec.METHODS


def test_mschap_v1_and_v2_together_is_mschapv2():
    request = decoded(attributes=[MSCHAP_CHALLENGE, MSCHAP1_RESPONSE, MSCHAP2_RESPONSE])
    assert codec.method_of(request) == "mschapv2"
    assert codec.is_mschapv2(request)


def test_mschap_v1_is_not_taken_for_v2():
    request = decoded(attributes=[MSCHAP_CHALLENGE, MSCHAP1_RESPONSE])
    assert not codec.is_mschapv2(request)


def test_eap_decides_whatever_else_the_request_carries():
    request = decoded(password="pw", attributes=[("EAP-Message", EAP_IDENTITY)])
    assert codec.method_of(request) == "eap"


def test_mschap_response_of_another_vendor_is_not_mschap():
    other_vendor = struct.pack("!L", 9) + bytes((1, 52)) + bytes(50)   # Cisco, type 1
    request = decoded(password="pw", attributes=[(codec.VENDOR_SPECIFIC, other_vendor)])
    assert codec.method_of(request) == "pap"


def test_malformed_vendor_attribute_does_not_break_method_detection():
    request = decoded(password="pw", attributes=[(codec.VENDOR_SPECIFIC, b"\x00\x00\x01")])
    assert codec.method_of(request) == "pap"


# ---------------------------------------------------------------- EAP-Failure

def test_eap_failure_carries_the_identifier_of_the_requests_eap_packet():
    request = decoded(attributes=[("EAP-Message", EAP_IDENTITY)])
    assert codec.eap_failure(request) == bytes((4, 7, 0, 4))


def test_eap_failure_reads_a_split_eap_message():
    eap = bytes((2, 0xA5)) + struct.pack("!H", 400) + bytes(396)        # 400 octets, in two attributes
    request = decoded(attributes=[("EAP-Message", eap)])
    assert [len(v) for k, v in request.attributes if k == codec.EAP_MESSAGE] == [253, 147]
    assert codec.eap_failure(request) == bytes((4, 0xA5, 0, 4))


def test_eap_start_gets_identifier_zero():
    request = decoded(attributes=[(codec.EAP_MESSAGE, b"")])        # RFC 3579 2.1: EAP-Start
    assert codec.eap_failure(request) == bytes((4, 0, 0, 4))


def test_no_eap_failure_for_a_request_without_eap():
    assert codec.eap_failure(decoded(password="pw")) is None
    assert codec.eap_failure(chap_request()) is None


@pytest.mark.parametrize("encode", [encode_response, lambda *a: encode_fitting(*a).packet])
def test_reject_with_eap_failure_and_message_authenticator_decodes(encode):
    request = decoded(attributes=[("EAP-Message", EAP_IDENTITY)])
    raw = encode(request, ACCESS_REJECT, [("EAP-Message", codec.eap_failure(request))])
    reply = decode_response(raw, SECRET, request.authenticator)     # verifies both authenticators
    assert reply.code == ACCESS_REJECT
    assert reply.message_authenticator_first
    assert reply.get("EAP-Message") == bytes((4, 7, 0, 4))
    assert [kind for kind, _ in reply.attributes] == [codec.MESSAGE_AUTHENTICATOR, codec.EAP_MESSAGE]


# ---------------------------------------------------------------- User-Name as octets

def test_non_utf8_user_name_is_decoded_not_dropped():
    request = decoded(user=b"\xffalice\xfe", password="pw")
    assert request.user_name is None
    assert request.user_name_raw == b"\xffalice\xfe"
    assert request.user_name_invalid is True
    assert request.password == b"pw"                  # the rest of the request is intact
    assert codec.escape_user_name(request.user_name_raw) == "\\xffalice\\xfe"


def test_utf8_user_name_is_text():
    request = decoded(user="ålice", password="pw")
    assert request.user_name == "ålice"
    assert request.user_name_raw == "ålice".encode()
    assert request.user_name_invalid is False


def test_absent_user_name():
    request = decoded(user=None, password="pw")
    assert (request.user_name, request.user_name_raw, request.user_name_invalid) == (None, None, False)


def test_non_utf8_user_name_read_by_name_does_not_raise():
    request = decoded(user=b"\xff", password="pw")
    assert request.get("User-Name") == b"\xff"          # pyrad hands back the octets


def test_non_utf8_user_name_can_be_answered():
    request = decoded(user=b"\xc3\x28", password="pw")
    raw = encode_response(request, ACCESS_REJECT)
    assert decode_response(raw, SECRET, request.authenticator).code == ACCESS_REJECT


@pytest.mark.parametrize("raw, text", [
    (b"alice", "alice"),
    ("ålice".encode(), "ålice"),
    (b"CORP\\alice", "CORP\\\\alice"),                  # a backslash is doubled: unambiguous
    (b"\\xff", "\\\\xff"),                              # the text \xff is not the octet 0xff
    (b"\xff", "\\xff"),
    (b"a\x00b\nc\x1b", "a\\x00b\\x0ac\\x1b"),          # control characters: no log injection
    (b"\xc3\x28", "\\xc3("),                            # an invalid sequence, octet by octet
    (b"\xed\xa0\x80", "\\xed\\xa0\\x80"),              # an encoded surrogate is not UTF-8
    (b"\xc0\xaf", "\\xc0\\xaf"),                        # an overlong "/" is not UTF-8
    ("a\u2028b".encode(), "a\\u2028b"),                 # a line separator
    ("\U000e0001".encode(), "\\U000e0001"),             # a non-printable astral character
])
def test_escape_user_name(raw, text):
    assert codec.escape_user_name(raw) == text
    assert codec.escape_user_name(raw).isprintable()
