"""RADIUS/1.1 packets in and out (RFC 9765): bytes in, typed values out.

Pure, like :mod:`radius_mfa.radius.codec`, whose interface this mirrors so
that the server's pipeline runs unchanged on either: ``decode_request``
gives an object with the fields the pipeline reads (``codec.method_of``,
``is_mschapv2``, ``forwardable`` and ``eap_failure`` work on it as they are),
``encode_fitting`` answers within 4,096 octets by the same trimming rules.

What RFC 9765 changes, when both ends chose ALPN ``radius/1.1`` (section 3):

* The header (section 4.1): Code, Reserved-1 (the old Identifier: zero
  when sending, ignored when receiving), Length, a 4-octet Token, then
  Reserved-2 (12 octets: zero when sending, ignored when receiving) where
  the Authenticator was. A reply carries the Token of its request.
* No MD5 and no shared secret anywhere (section 5): no Request or Response
  Authenticator to check or compute; the connection's TLS proves who sent
  what.
* Attributes that RADIUS hides with the secret are sent as their data type
  (section 5.1): User-Password as 1 to 128 octets, no padding
  (5.1.1); Tunnel-Password as a tagged string, no salt and no length
  octet (5.1.3); MS-MPPE-Send-Key and MS-MPPE-Recv-Key as the key octets
  (5.1.4); likewise MS-CHAP-MPPE-Keys.
* Message-Authenticator is never sent; one received is an "invalid
  attribute" (RFC 6929 section 2.8): left out of ``attributes``, the packet
  is processed (section 5.2). Original-Packet-Code likewise (section 5.5).
* CHAP-Password must come with a CHAP-Challenge: the Request Authenticator
  it could fall back on is gone (section 5.1.2).
* MS-CHAP and MS-CHAPv2 attributes are unchanged (section 5.4).
* A server that cannot answer a request sends a Protocol-Error with an
  Error-Cause (section 6.1): :func:`encode_protocol_error`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from pyrad import packet as pyrad_packet
from pyrad import tools as pyrad_tools
from pyrad.dictionary import Dictionary

from radius_mfa.errors import LocalProtocolError, RemoteProtocolError
from radius_mfa.radius import codec
from radius_mfa.radius.codec import (
    ACCESS_ACCEPT, ACCESS_CHALLENGE, ACCESS_REJECT, ACCESS_REQUEST, AttributeKey,
    FittedReply, HEADER_LENGTH, MAX_PACKET_LENGTH, MAX_PASSWORD_LENGTH, ReplyTooLarge,
    STATUS_SERVER, UnsupportedCode,
)
from radius_mfa.radius.dictionary import load_dictionary

#: The ALPN names (RFC 9765 section 3.1 and 3.3): RADIUS/1.1, and historic
#: RADIUS/TLS (RFC 6614) named explicitly.
ALPN_V11 = b"radius/1.1"
ALPN_V10 = b"radius/1.0"
#: The protocol name the audit and the logs give a RADIUS/1.1 connection.
PROTOCOL = "radius/1.1"

PROTOCOL_ERROR = 52                     # RFC 7930 section 4
ERROR_CAUSE = 101                       # RFC 5176 section 3.6
#: Error-Cause values RFC 9765 section 6.1 names for a Protocol-Error.
RESOURCES_UNAVAILABLE = 506             # a home server that cannot answer
UNSUPPORTED_EXTENSION = 406             # no ALPN where it is required (section 3.3.1)

TOKEN_LENGTH = 4
_RESERVED_2 = bytes(12)
CHAP_CHALLENGE = 60
EXTENDED_TYPE_1 = 241                   # RFC 6929 section 2.1
ORIGINAL_PACKET_CODE = 4                # RFC 7930 section 4: Extended-Type 241.4

REQUEST_CODES = codec.REQUEST_CODES
#: Codes a reply to a request in REQUEST_CODES may carry over RADIUS/1.1.
RESPONSE_CODES = frozenset({ACCESS_ACCEPT, ACCESS_REJECT, ACCESS_CHALLENGE, PROTOCOL_ERROR})

# RFC 2865 section 5.44, less Message-Authenticator (an invalid attribute
# here, whatever its number of copies).
_AT_MOST_ONCE = {
    codec.USER_NAME: "User-Name",
    codec.USER_PASSWORD: "User-Password",
    codec.CHAP_PASSWORD: "CHAP-Password",
    codec.STATE: "State",
}


@dataclass(frozen=True)
class Header:
    """The fixed 20-octet RADIUS/1.1 header (Reserved fields are ignored)."""
    code: int
    token: bytes
    length: int

    @property
    def id(self) -> int:  # noqa: A003 - the name RADIUS/1.0 headers use
        """The Token as a number, for logs and traces: it has no other meaning."""
        return int.from_bytes(self.token, "big")


def peek(data: bytes) -> Header:
    """Read and sanity-check the header without touching the attributes.

    The Length field has its RFC 2865 meaning (RFC 9765 section 4.1); on a
    stream it also says where the next packet starts. Reserved-1 and
    Reserved-2 are ignored, as the RFC requires.
    """
    if len(data) < HEADER_LENGTH:
        raise RemoteProtocolError(f"packet shorter than {HEADER_LENGTH} octets")
    code, _reserved, length = struct.unpack_from("!BBH", data)
    if length < HEADER_LENGTH:
        raise RemoteProtocolError(f"length field {length} below {HEADER_LENGTH}")
    if length > MAX_PACKET_LENGTH:
        raise RemoteProtocolError(f"length field {length} above {MAX_PACKET_LENGTH}")
    if length > len(data):
        raise RemoteProtocolError(f"length field {length} exceeds the data ({len(data)})")
    return Header(code, bytes(data[4:4 + TOKEN_LENGTH]), length)


class _ClearView(pyrad_packet.AuthPacket):
    """pyrad's attribute view with no salt decryption: over RADIUS/1.1 the
    values of MS-MPPE keys and Tunnel-Password are sent as they are."""

    def _DecodeValue(self, attr, value):  # noqa: N802 - pyrad's name
        if attr.values.HasBackward(value):
            return attr.values.GetBackward(value)
        return pyrad_tools.DecodeAttr(attr.type, value)

    @staticmethod
    def _SplitTag(attr, value):  # noqa: N802 - pyrad's name
        """RFC 2868 section 3 for every tagged attribute, Tunnel-Password
        included (no salt here): the tag replaces an integer's first
        octet; a string's first octet is a tag when at most 0x1F."""
        if not attr.has_tag or not value:
            return 0, value
        if attr.type == "integer":
            return value[0], b"\x00" + value[1:]
        if value[0] <= 0x1F:
            return value[0], value[1:]
        return 0, value


@dataclass(frozen=True, eq=False)
class Request(codec._AttributeAccess):
    """A decoded RADIUS/1.1 Access-Request or Status-Server.

    The fields the server's pipeline reads are those of
    :class:`codec.Request`; what RFC 9765 removed is absent (no
    ``authenticator``, no ``secret``: the RFC 2865 encoder cannot be handed
    one of these by mistake). Its integrity is the TLS connection's:
    ``has_message_authenticator`` is always false and
    ``message_authenticator_ok`` None; ``message_authenticator_ignored``
    says that the client sent one anyway (an invalid attribute, dropped).
    """
    protocol: ClassVar[str] = PROTOCOL
    code: int
    token: bytes
    raw: bytes = field(repr=False)                 # trimmed to the Length field
    packet: pyrad_packet.AuthPacket = field(repr=False)
    attributes: tuple[tuple[int, bytes], ...] = field(repr=False)   # wire order, invalid ones left out
    user_name: str | None
    password: bytes | None = field(repr=False)     # User-Password as sent (1 to 128 octets)
    chap: bool
    state: bytes | None = field(repr=False)
    calling_station_id: str | None
    called_station_id: str | None
    nas_identifier: str | None
    nas_ip: str | None
    proxy_states: tuple[bytes, ...] = field(repr=False)
    user_name_raw: bytes | None = field(default=None, repr=False)
    user_name_invalid: bool = False
    message_authenticator_ignored: bool = False
    has_message_authenticator: ClassVar[bool] = False
    message_authenticator_ok: ClassVar[None] = None

    @property
    def id(self) -> int:  # noqa: A003 - the name RADIUS/1.0 requests use
        """The Token as a number, for logs and traces."""
        return int.from_bytes(self.token, "big")


@dataclass(frozen=True, eq=False)
class Response(codec._AttributeAccess):
    """A RADIUS/1.1 reply, as a client (tests, benchmarks) sees it: values
    read by name come back as sent (nothing to decrypt)."""
    code: int
    token: bytes
    raw: bytes = field(repr=False)
    packet: pyrad_packet.AuthPacket = field(repr=False)
    attributes: tuple[tuple[int, bytes], ...] = field(repr=False)   # wire order, all of them
    has_message_authenticator: bool                # a server must never send one
    proxy_states: tuple[bytes, ...] = field(repr=False)
    reserved_zero: bool                            # Reserved-1 and Reserved-2 all zero, as sent must be

    @property
    def error_cause(self) -> int | None:
        """The Error-Cause of a Protocol-Error (or any reply), or None."""
        for kind, value in self.attributes:
            if kind == ERROR_CAUSE and len(value) == 4:
                return struct.unpack("!L", value)[0]
        return None


# --------------------------------------------------------------------------
# Decoding


def decode_request(data: bytes, dictionary: Dictionary | None = None) -> Request:
    """Decode and check a RADIUS/1.1 Access-Request or Status-Server.

    Raises :class:`RemoteProtocolError` (:class:`codec.UnsupportedCode` for
    other codes) for anything malformed, and nothing else.
    """
    dictionary = load_dictionary() if dictionary is None else dictionary
    header, raw, split = _framed(data, REQUEST_CODES)
    kept, ignored_ma = _valid_attributes(split)
    _check_multiplicity(kept)
    by_type = codec._first_values([(kind, value, 0) for kind, value in kept])

    password = by_type.get(codec.USER_PASSWORD)
    if password is not None and not 1 <= len(password) <= MAX_PASSWORD_LENGTH:
        raise RemoteProtocolError(
            f"User-Password of {len(password)} octets (1 to {MAX_PASSWORD_LENGTH})")
    chap = codec.CHAP_PASSWORD in by_type
    if chap and len(by_type[codec.CHAP_PASSWORD]) != 17:
        raise RemoteProtocolError("CHAP-Password is not 17 octets")
    if chap and password is not None:
        raise RemoteProtocolError("both User-Password and CHAP-Password")
    if chap and CHAP_CHALLENGE not in by_type:
        raise RemoteProtocolError("CHAP-Password without CHAP-Challenge "
                                  "(RADIUS/1.1 has no Request Authenticator to use instead)")

    name_raw = by_type.get(codec.USER_NAME)
    name = codec._user_name(name_raw)
    return Request(
        code=header.code,
        token=header.token,
        raw=raw,
        packet=_view(raw, dictionary),
        attributes=tuple(kept),
        user_name=name,
        user_name_raw=name_raw,
        user_name_invalid=name_raw is not None and name is None,
        password=password,
        chap=chap,
        state=by_type.get(codec.STATE),
        calling_station_id=codec._text(by_type.get(codec.CALLING_STATION_ID)),
        called_station_id=codec._text(by_type.get(codec.CALLED_STATION_ID)),
        nas_identifier=codec._text(by_type.get(codec.NAS_IDENTIFIER)),
        nas_ip=codec._nas_ip(by_type),
        proxy_states=tuple(value for kind, value in kept if kind == codec.PROXY_STATE),
        message_authenticator_ignored=ignored_ma,
    )


def decode_response(data: bytes, token: bytes, *,
                    dictionary: Dictionary | None = None) -> Response:
    """Decode a reply to the request we sent with ``token``.

    Refuses (:class:`RemoteProtocolError`) a reply whose Token is not
    ``token`` and a code that does not answer an Access-Request; nothing
    else is checked: TLS vouches for the rest.
    """
    dictionary = load_dictionary() if dictionary is None else dictionary
    header, raw, split = _framed(data, RESPONSE_CODES)
    if header.token != bytes(token):
        raise RemoteProtocolError(f"reply Token {header.token.hex()} is not the request's "
                                  f"{bytes(token).hex()}")
    return Response(
        code=header.code,
        token=header.token,
        raw=raw,
        packet=_view(raw, dictionary),
        attributes=tuple((kind, value) for kind, value, _ in split),
        has_message_authenticator=any(kind == codec.MESSAGE_AUTHENTICATOR for kind, _, _ in split),
        proxy_states=tuple(value for kind, value, _ in split if kind == codec.PROXY_STATE),
        reserved_zero=raw[1] == 0 and raw[8:HEADER_LENGTH] == _RESERVED_2,
    )


def _framed(data: bytes, codes) -> tuple[Header, bytes, list[tuple[int, bytes, int]]]:
    header = peek(data)
    if header.code not in codes:
        raise UnsupportedCode(header.code)
    raw = bytes(data[:header.length])
    return header, raw, codec._split_attributes(raw)


def _valid_attributes(split: list[tuple[int, bytes, int]]) -> tuple[list[tuple[int, bytes]], bool]:
    """The attributes less the invalid ones of RFC 9765 (Message-Authenticator,
    section 5.2; Original-Packet-Code, section 5.5), and whether a
    Message-Authenticator was among them."""
    kept: list[tuple[int, bytes]] = []
    ignored_ma = False
    for kind, value, _ in split:
        if kind == codec.MESSAGE_AUTHENTICATOR:
            ignored_ma = True
        elif not (kind == EXTENDED_TYPE_1 and value[:1] == bytes((ORIGINAL_PACKET_CODE,))):
            kept.append((kind, value))
    return kept, ignored_ma


def _check_multiplicity(attributes: list[tuple[int, bytes]]) -> None:
    seen: set[int] = set()
    for kind, _ in attributes:
        if kind in _AT_MOST_ONCE:
            if kind in seen:
                raise RemoteProtocolError(f"more than one {_AT_MOST_ONCE[kind]}")
            seen.add(kind)


def _view(raw: bytes, dictionary: Dictionary) -> pyrad_packet.AuthPacket:
    try:
        return _ClearView(secret=b"", dict=dictionary, packet=raw)
    except codec._PYRAD_DECODE_ERRORS as exc:
        raise RemoteProtocolError("attributes cannot be decoded") from exc


# --------------------------------------------------------------------------
# Encoding


class _ClearEncoder(codec._AttributeEncoder):
    """The RFC 2865 attribute encoder less the hiding (RFC 9765 section
    5.1): a value flagged ``encrypt`` goes as its data type. A tagged string
    carries the tag octet when a tag is given or the value could be read as
    one (RFC 2868 section 3.3); Tunnel-Password always does (tag 0 when
    none), which reads the same whether the peer takes its tag as optional,
    as for Tunnel-Client-Endpoint (RFC 9765 section 5.1.3), or as always
    present, as RFC 2868 section 3.5 had it."""

    def __init__(self, dictionary: Dictionary):
        super().__init__(dictionary, b"", bytes(16))

    def _protect(self, attr, payload: bytes, tag: int | None) -> bytes:
        if not attr.has_tag:
            return payload
        if attr.type == "integer":
            if payload[0]:
                raise LocalProtocolError(f"{attr.name}: tagged integers hold 24 bits")
            return bytes((tag or 0,)) + payload[1:]
        if attr.encrypt or tag is not None or (payload and payload[0] <= 0x1F):
            return bytes((tag or 0,)) + payload
        return payload


def _header(code: int, token: bytes, body_length: int) -> bytes:
    length = HEADER_LENGTH + body_length
    if length > MAX_PACKET_LENGTH:
        raise ReplyTooLarge(length)
    return struct.pack("!BBH", code, 0, length) + token + _RESERVED_2


def _token(token: bytes | int) -> bytes:
    if isinstance(token, int) and not isinstance(token, bool):
        if not 0 <= token < 2**32:
            raise LocalProtocolError(f"Token {token} out of range 0..2^32-1")
        return struct.pack("!L", token)
    if not isinstance(token, (bytes, bytearray)) or len(token) != TOKEN_LENGTH:
        raise LocalProtocolError("a Token is 4 octets")
    return bytes(token)


def _assemble(request: Request, code: int, proxy_states: Sequence[bytes],
              wire: Sequence[bytes]) -> bytes:
    """Header, the request's Proxy-States (as codec places them, first, in
    order), then the attributes. No Message-Authenticator."""
    body = b"".join(codec._tlv(codec.PROXY_STATE, state) for state in proxy_states)
    body += b"".join(wire)
    return _header(code, request.token, len(body)) + body


def _check_reply_code(code: int) -> None:
    if code not in codec.RESPONSE_CODES:
        raise LocalProtocolError(f"code {code} is not an Access-Request reply")


def encode_response(request: Request, code: int,
                    attributes: Sequence[tuple[AttributeKey, object]] = ()) -> bytes:
    """Encode the reply to ``request``, exactly as asked: its Token, the
    request's Proxy-States, then ``attributes`` in order, nothing hidden.

    Raises :class:`LocalProtocolError` as :func:`codec.encode_response`
    does (Message-Authenticator and Proxy-State are not the caller's), and
    :class:`ReplyTooLarge` beyond 4,096 octets.
    """
    _check_reply_code(code)
    encoder = _ClearEncoder(request.packet.dict)
    wire = [codec._encode_reply_attribute(encoder, key, value) for key, value in attributes]
    return _assemble(request, code, request.proxy_states, wire)


def encode_fitting(request: Request, code: int,
                   attributes: Sequence[tuple[AttributeKey, object]] = ()) -> FittedReply:
    """Encode the reply to ``request`` so that it can always be sent: at
    most 4,096 octets, trimmed by the rules of :func:`codec.encode_fitting`
    (optional attributes of a challenge or reject dropped last first, the
    Reply-Message cut at a character boundary, an Accept or Challenge that
    still does not fit replaced by an Access-Reject, a Reject's farthest
    Proxy-States dropped last of all), with no Message-Authenticator to make
    room for.

    Raises :class:`LocalProtocolError` only for a code that is not a reply.
    """
    _check_reply_code(code)
    dictionary = request.packet.dict
    encoder = _ClearEncoder(dictionary)
    items: list[codec._Item] = []
    dropped: list[str] = []
    for key, value in attributes:
        name = codec.attribute_name(dictionary, key)
        try:
            items.append(codec._Item(name, codec._encode_reply_attribute(encoder, key, value), value))
        except codec._ENCODE_ERRORS:
            if codec._essential(code, name):
                return _fallback_reject(request, encoder, "unencodable",
                                        [*dropped, *(codec.attribute_name(dictionary, k)
                                                     for k, _ in attributes)])
            dropped.append(name)
    proxy_states = list(request.proxy_states)
    truncated: list[str] = []
    if codec._fit(code, items, proxy_states, encoder, dropped, truncated, overhead=0):
        return FittedReply(_assemble(request, code, proxy_states, [i.wire for i in items]),
                           code, tuple(dropped), tuple(truncated))
    return _fallback_reject(request, encoder, "too_large",
                            [*dropped, *(codec.attribute_name(dictionary, k) for k, _ in attributes)])


def _fallback_reject(request: Request, encoder: _ClearEncoder, reason: str,
                     dropped: list[str]) -> FittedReply:
    failure = codec.eap_failure(request)
    items = [] if failure is None else [
        codec._Item("EAP-Message", encoder.encode("EAP-Message", failure), failure)]
    proxy_states = list(request.proxy_states)
    seen = list(dict.fromkeys(dropped))
    truncated: list[str] = []
    codec._fit(ACCESS_REJECT, items, proxy_states, encoder, seen, truncated, overhead=0)
    return FittedReply(_assemble(request, ACCESS_REJECT, proxy_states, [i.wire for i in items]),
                       ACCESS_REJECT, tuple(seen), tuple(truncated), reason)


def encode_protocol_error(token: bytes | int = bytes(TOKEN_LENGTH), *,
                          error_cause: int = RESOURCES_UNAVAILABLE,
                          reply_message: str | None = None,
                          proxy_states: Sequence[bytes] = ()) -> bytes:
    """A Protocol-Error (RFC 7930, RFC 9765 section 6.1): the answer of a
    server that received a request and cannot process it (Error-Cause 506,
    Resources Unavailable: the client tries another server), or, with an
    all-zero Token, the signal that ALPN was required (section 3.3.1,
    Error-Cause 406). Proxy-States of the request are echoed."""
    body = b"".join(codec._tlv(codec.PROXY_STATE, state) for state in proxy_states)
    body += codec._tlv(ERROR_CAUSE, struct.pack("!L", error_cause))
    if reply_message:
        encoder = _ClearEncoder(load_dictionary())
        body += encoder.encode("Reply-Message", reply_message)
    return _header(PROTOCOL_ERROR, _token(token), len(body)) + body


def build_access_request(token: bytes | int, user_name: str | bytes | None,
                         password: bytes | str | None = None, *,
                         state: bytes | None = None,
                         attributes: Sequence[tuple[AttributeKey, object]] = (),
                         code: int = ACCESS_REQUEST,
                         dictionary: Dictionary | None = None) -> bytes:
    """Build a RADIUS/1.1 Access-Request (or Status-Server): the client
    side, for tests, benchmarks and tools.

    Attribute order: User-Name, User-Password (as it is: 1 to 128 octets),
    State, then ``attributes`` as given (encoded without hiding).
    """
    token = _token(token)
    dictionary = load_dictionary() if dictionary is None else dictionary
    encoder = _ClearEncoder(dictionary)
    body = bytearray()
    if user_name is not None:
        body += encoder.encode("User-Name", user_name)
    if password is not None:
        if isinstance(password, str):
            password = password.encode("utf-8")
        if not 1 <= len(password) <= MAX_PASSWORD_LENGTH:
            raise LocalProtocolError(f"User-Password of {len(password)} octets "
                                     f"(1 to {MAX_PASSWORD_LENGTH})")
        body += codec._tlv(codec.USER_PASSWORD, password)
    if state is not None:
        body += encoder.encode("State", state)
    for key, value in attributes:
        body += encoder.encode(key, value)
    try:
        return _header(code, token, len(body)) + bytes(body)
    except ReplyTooLarge as exc:               # a request, not a reply: say so
        raise LocalProtocolError(str(exc)) from None


# --------------------------------------------------------------------------
# The dialect a RADIUS over TLS connection speaks once ALPN chose radius/1.1
# (the Dialect protocol of radius_mfa/radius/dialect.py)


class Radius11Dialect:
    """RADIUS/1.1 for the packet path: no Message-Authenticator policy (TLS
    alone protects packets, RFC 9765 section 5.2), retransmissions known by
    their Token within the connection (section 4.2.2), the shared secret
    unused. A client entry with ``radius11: forbid`` may not speak it."""

    name = PROTOCOL
    alpn = ALPN_V11
    message_authenticator = False
    #: RFC 9765 section 3.4: RADIUS/1.1 only over TLS 1.3 or later.
    tls_versions = frozenset({"TLSv1.3"})

    def permitted(self, client) -> bool:
        return getattr(client, "radius11", "allow") != "forbid"

    def peek(self, data: bytes) -> Header:
        return peek(data)

    def request_key(self, header: Header) -> tuple:
        return ("token", header.token)

    def decode_request(self, data: bytes, secret: bytes, dictionary) -> Request:
        return decode_request(data, dictionary)

    def encode_reply(self, request: Request, code: int,
                     attributes: Sequence[tuple[AttributeKey, object]],
                     secret: bytes) -> FittedReply:
        return encode_fitting(request, code, attributes)

    def unanswerable(self, request: Request) -> bytes:
        """What a request the server cannot decide gets (an upstream down):
        a Protocol-Error, Error-Cause 506, so the client tries another
        server at once (RFC 9765 section 6.1) instead of timing out."""
        return encode_protocol_error(request.token, proxy_states=request.proxy_states)


RADIUS_11 = Radius11Dialect()


__all__ = [
    "ALPN_V10", "ALPN_V11", "PROTOCOL", "PROTOCOL_ERROR", "ERROR_CAUSE", "RESOURCES_UNAVAILABLE",
    "UNSUPPORTED_EXTENSION", "TOKEN_LENGTH", "Header", "Request", "Response", "peek",
    "decode_request", "decode_response", "encode_response", "encode_fitting",
    "encode_protocol_error", "build_access_request", "STATUS_SERVER", "RADIUS_11",
    "Radius11Dialect",
]
