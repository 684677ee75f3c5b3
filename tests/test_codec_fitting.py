"""Replies that would exceed 4,096 octets (RFC 2865 section 3): a request
padded with Proxy-State, which every reply must echo (section 5.33), leaves
little room. ``encode_fitting`` trims what may be trimmed, else answers an
Access-Reject that fits; a reply is never lost to its size."""

from __future__ import annotations

import random

import pytest

from radius_mfa.errors import LocalProtocolError
from radius_mfa.radius import codec
from radius_mfa.radius.codec import (ACCESS_ACCEPT, ACCESS_CHALLENGE, ACCESS_REJECT,
                                     MAX_PACKET_LENGTH, ReplyTooLarge, build_access_request,
                                     decode_request, decode_response, encode_fitting,
                                     encode_response)

SECRET = b"fitting-secret"
PROMPT = "Enter the code shown by your authenticator app"
EAP_IDENTITY = bytes((2, 9, 0, 10)) + b"\x01alice"


def padded_request(total: int = MAX_PACKET_LENGTH, *, user="alice", password="pw",
                   message_authenticator: bool = True, attributes=()) -> codec.Request:
    """An Access-Request of exactly ``total`` octets, the rest Proxy-State."""
    bare = build_access_request(SECRET, user, password, attributes=list(attributes),
                                message_authenticator=message_authenticator)
    room, states = total - len(bare), []
    while room > 0:
        size = min(255, room)
        if room - size == 1:                   # an attribute takes at least 2 octets
            size -= 1
        states.append(bytes([len(states) % 256]) * (size - 2))
        room -= size
    raw = build_access_request(SECRET, user, password, message_authenticator=message_authenticator,
                               attributes=[*attributes, *(("Proxy-State", s) for s in states)])
    assert len(raw) == total
    return decode_request(raw, SECRET)


def decoded_reply(request: codec.Request, fitted: codec.FittedReply) -> codec.Response:
    assert len(fitted.packet) <= MAX_PACKET_LENGTH
    reply = decode_response(fitted.packet, SECRET, request.authenticator)   # both authenticators
    assert reply.code == fitted.code
    assert reply.message_authenticator_first
    return reply


def test_a_reply_that_fits_is_sent_as_asked():
    request = padded_request(1000)
    attributes = [("State", b"s" * 16), ("Reply-Message", PROMPT), ("Class", b"c" * 40)]
    fitted = encode_fitting(request, ACCESS_CHALLENGE, attributes)
    assert fitted == codec.FittedReply(fitted.packet, ACCESS_CHALLENGE)
    assert fitted.packet == encode_response(request, ACCESS_CHALLENGE, attributes)


def test_encode_response_refuses_what_does_not_fit():
    request = padded_request()
    with pytest.raises(ReplyTooLarge) as caught:
        encode_response(request, ACCESS_CHALLENGE, [("State", b"s" * 16), ("Reply-Message", PROMPT)])
    assert isinstance(caught.value, LocalProtocolError)
    assert caught.value.length > MAX_PACKET_LENGTH


def test_oversized_challenge_padded_with_proxy_state_is_trimmed_not_lost():
    request = padded_request()               # 25 octets of room for a reply's own attributes
    fitted = encode_fitting(request, ACCESS_CHALLENGE, [
        ("Class", b"c" * 100), ("State", b"s" * 16), ("Reply-Message", PROMPT),
        ("Session-Timeout", 60)])
    reply = decoded_reply(request, fitted)
    assert fitted.code == ACCESS_CHALLENGE and fitted.reason is None
    assert reply.proxy_states == request.proxy_states          # every one, in order
    assert reply.get("State") == b"s" * 16
    assert fitted.dropped == ("Session-Timeout", "Class")      # optional ones, the last first
    assert fitted.truncated == ("Reply-Message",)
    message = reply.get("Reply-Message")
    assert message and PROMPT.startswith(message) and message != PROMPT
    assert len(fitted.packet) == MAX_PACKET_LENGTH             # as much of the prompt as fits


def test_truncated_reply_message_stays_utf8():
    request = padded_request(MAX_PACKET_LENGTH - 2)
    text = "é" * 400 + "🔑" * 100
    fitted = encode_fitting(request, ACCESS_CHALLENGE, [("State", b"s" * 16), ("Reply-Message", text)])
    reply = decoded_reply(request, fitted)
    parts = [value for kind, value in reply.attributes if kind == codec.REPLY_MESSAGE]
    joined = b"".join(parts).decode("utf-8")                   # raises if cut inside a character
    assert text.startswith(joined) and 0 < len(joined) < len(text)


def test_several_reply_messages_are_truncated_as_one_text():
    request = padded_request(3800)
    lines = ["line %d " % i + "x" * 100 for i in range(5)]
    fitted = encode_fitting(request, ACCESS_CHALLENGE,
                            [("Reply-Message", lines[0]), ("State", b"s" * 16),
                             ("Reply-Message", lines[1:])])
    reply = decoded_reply(request, fitted)
    assert fitted.truncated == ("Reply-Message",)
    text = b"".join(v for k, v in reply.attributes if k == codec.REPLY_MESSAGE).decode()
    assert "".join(lines).startswith(text) and len(text) > len(lines[0])
    assert [k for k, _ in reply.attributes if k not in (codec.PROXY_STATE,)][:2] == \
        [codec.MESSAGE_AUTHENTICATOR, codec.REPLY_MESSAGE]     # where the first one was


def test_challenge_whose_state_cannot_fit_becomes_a_reject_that_fits():
    request = padded_request()
    fitted = encode_fitting(request, ACCESS_CHALLENGE, [("State", b"s" * 64), ("Reply-Message", PROMPT)])
    reply = decoded_reply(request, fitted)
    assert (fitted.code, fitted.reason) == (ACCESS_REJECT, "too_large")
    assert set(fitted.dropped) == {"State", "Reply-Message"}
    assert reply.proxy_states == request.proxy_states
    assert [k for k, _ in reply.attributes if k != codec.PROXY_STATE] == [codec.MESSAGE_AUTHENTICATOR]


def test_accept_authorisation_attributes_are_never_dropped():
    request = padded_request()
    fitted = encode_fitting(request, ACCESS_ACCEPT, [("Filter-Id", "restricted-acl"), ("Class", b"c" * 30)])
    decoded_reply(request, fitted)
    assert (fitted.code, fitted.reason) == (ACCESS_REJECT, "too_large")   # never an Accept without its ACL
    assert fitted.dropped == ("Filter-Id", "Class")


def test_accept_reply_message_is_trimmed():
    request = padded_request()
    fitted = encode_fitting(request, ACCESS_ACCEPT, [("Class", b"c" * 10), ("Reply-Message", PROMPT)])
    reply = decoded_reply(request, fitted)
    assert fitted.code == ACCESS_ACCEPT and fitted.truncated == ("Reply-Message",)
    assert reply.get("Class") == b"c" * 10


def test_reply_message_that_cannot_fit_at_all_is_dropped():
    request = padded_request()
    fitted = encode_fitting(request, ACCESS_ACCEPT, [("Class", b"c" * 21), ("Reply-Message", PROMPT)])
    reply = decoded_reply(request, fitted)
    assert fitted.code == ACCESS_ACCEPT and fitted.dropped == ("Reply-Message",)
    assert reply.get("Reply-Message") is None


def test_eap_challenge_that_cannot_fit_becomes_a_reject_with_eap_failure():
    request = padded_request(password=None, attributes=[("EAP-Message", EAP_IDENTITY)])
    fitted = encode_fitting(request, ACCESS_CHALLENGE,
                            [("EAP-Message", bytes((1, 10, 0, 104)) + bytes(100)), ("State", b"s" * 16)])
    reply = decoded_reply(request, fitted)
    assert (fitted.code, fitted.reason) == (ACCESS_REJECT, "too_large")
    assert reply.get("EAP-Message") == bytes((4, 9, 0, 4))    # RFC 3579 2.6.3
    assert reply.proxy_states == request.proxy_states


def test_reject_keeps_its_eap_failure_and_drops_the_rest():
    request = padded_request(password=None, attributes=[("EAP-Message", EAP_IDENTITY)])
    fitted = encode_fitting(request, ACCESS_REJECT, [("Reply-Message", PROMPT * 3),
                                                     ("EAP-Message", codec.eap_failure(request)),
                                                     ("Class", b"c" * 50)])
    reply = decoded_reply(request, fitted)
    assert fitted.code == ACCESS_REJECT and fitted.reason is None
    assert fitted.dropped[0] == "Class"
    assert reply.get("EAP-Message") == bytes((4, 9, 0, 4))


def test_bare_reject_that_cannot_echo_every_proxy_state_keeps_the_nearest_hops():
    # no Message-Authenticator and no User-Password in the request: the
    # reply's Message-Authenticator (18 octets) needs more than the request had
    request = padded_request(user="a", password=None, message_authenticator=False)
    fitted = encode_fitting(request, ACCESS_CHALLENGE, [("State", b"s" * 16)])
    reply = decoded_reply(request, fitted)
    assert (fitted.code, fitted.reason) == (ACCESS_REJECT, "too_large")
    assert fitted.dropped == ("State", "Proxy-State")
    assert reply.proxy_states == request.proxy_states[1:]       # the first (farthest) one left out
    assert reply.has_message_authenticator                      # never given up


def test_unencodable_optional_attribute_is_dropped():
    request = padded_request(500)
    fitted = encode_fitting(request, ACCESS_CHALLENGE, [
        ("State", b"s" * 16), ("Tunnel-Medium-Type:32", 6), ("Reply-Message", 5), ("Class", b"c")])
    reply = decoded_reply(request, fitted)
    assert fitted.code == ACCESS_CHALLENGE
    assert fitted.dropped == ("Tunnel-Medium-Type", "Reply-Message")
    assert reply.get("Class") == b"c" and reply.get("State") == b"s" * 16


def test_unencodable_accept_attribute_makes_a_reject_not_silence():
    request = padded_request(500)
    fitted = encode_fitting(request, ACCESS_ACCEPT, [("Class", b"c"), ("Tunnel-Medium-Type:32", 6)])
    decoded_reply(request, fitted)
    assert (fitted.code, fitted.reason) == (ACCESS_REJECT, "unencodable")
    assert fitted.dropped == ("Class", "Tunnel-Medium-Type")


def test_only_reply_codes():
    with pytest.raises(LocalProtocolError):
        encode_fitting(padded_request(100), codec.ACCESS_REQUEST)


def test_random_replies_to_padded_requests_always_fit_and_echo_proxy_state():
    rng = random.Random(12)
    pool = [("State", lambda: rng.randbytes(rng.randint(1, 64))),
            ("Reply-Message", lambda: "ü" * rng.randint(1, 600)),
            ("Class", lambda: rng.randbytes(rng.randint(1, 253))),
            ("Filter-Id", lambda: "f" * rng.randint(1, 100)),
            ("Session-Timeout", lambda: rng.randint(0, 1000)),
            ("MS-MPPE-Send-Key", lambda: rng.randbytes(32)),
            ("EAP-Message", lambda: rng.randbytes(rng.randint(4, 600)))]
    for _ in range(300):
        eap = rng.random() < 0.3
        request = padded_request(rng.randint(200, MAX_PACKET_LENGTH), password=None if eap else "pw",
                                 attributes=[("EAP-Message", EAP_IDENTITY)] if eap else [])
        attributes = [(name, make()) for name, make in rng.sample(pool, rng.randint(0, len(pool)))]
        code = rng.choice([ACCESS_ACCEPT, ACCESS_CHALLENGE, ACCESS_REJECT])
        fitted = encode_fitting(request, code, attributes)
        reply = decoded_reply(request, fitted)
        assert reply.proxy_states == request.proxy_states       # every request here has room for them
        assert fitted.code in (code, ACCESS_REJECT)
        if fitted.code != code:
            assert fitted.reason == "too_large"
            assert (reply.get("EAP-Message") is not None) == eap
        if code == ACCESS_ACCEPT and fitted.code == ACCESS_ACCEPT:
            kept = {name for name, _ in attributes} - {"Reply-Message"}
            assert not kept & set(fitted.dropped)
