"""RADIUS packets in and out: bytes plus a shared secret in, typed values out.

Pure: no sockets, no clock, no reactor. pyrad supplies the dictionary and
the decoded attribute view (``Request.packet``); the wire format that the
security of the protocol rests on is done here, explicitly:

* The attribute walk is strict. pyrad silently truncates an attribute whose
  length overruns the packet; we refuse the packet instead, so that every
  malformed packet surfaces as one :class:`RemoteProtocolError`.
* Replies are encoded here rather than with pyrad's ``ReplyPacket``:
  pyrad groups repeated attributes by type and "hex-decodes" octets values
  that start with ``0x`` (a Class or State could), and we need the
  Message-Authenticator first in every reply (BlastRADIUS, CVE-2024-3596)
  and Proxy-State copied byte for byte, in order, right after it.
* A reply never exceeds 4,096 octets: :func:`encode_fitting` trims what may
  be trimmed, else answers an Access-Reject that fits.
* User-Name is octets (RFC 2865 section 5.1): one that is not UTF-8 is
  decoded, not refused (``Request.user_name_raw``, :func:`escape_user_name`).

RFC 2865 section 3 (packet, authenticators), 5.2 (User-Password hiding),
RFC 2868 section 3.5 (salt encryption, also MS-MPPE keys: RFC 2548),
RFC 3579 section 3.2 (Message-Authenticator), RFC 5997 (Status-Server).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from pyrad import packet as pyrad_packet
from pyrad import tools as pyrad_tools
from pyrad.dictionary import Attribute, Dictionary

from radius_mfa.errors import LocalProtocolError, RemoteProtocolError
from radius_mfa.radius.dictionary import load_dictionary

# Packet codes (RFC 2865 section 3, RFC 2866, RFC 5997).
ACCESS_REQUEST = 1
ACCESS_ACCEPT = 2
ACCESS_REJECT = 3
ACCOUNTING_REQUEST = 4
ACCOUNTING_RESPONSE = 5
ACCESS_CHALLENGE = 11
STATUS_SERVER = 12

#: Requests this server decodes; anything else is dropped as unsupported.
REQUEST_CODES = frozenset({ACCESS_REQUEST, STATUS_SERVER})
#: Codes a reply to a request in REQUEST_CODES may carry.
RESPONSE_CODES = frozenset({ACCESS_ACCEPT, ACCESS_REJECT, ACCESS_CHALLENGE})

HEADER_LENGTH = 20
AUTHENTICATOR_LENGTH = 16
MAX_PACKET_LENGTH = 4096
MAX_ATTRIBUTE_VALUE = 253
MAX_PASSWORD_LENGTH = 128

# Attribute types the codec itself reads or writes.
USER_NAME = 1
USER_PASSWORD = 2
CHAP_PASSWORD = 3
NAS_IP_ADDRESS = 4
REPLY_MESSAGE = 18
STATE = 24
VENDOR_SPECIFIC = 26
CALLED_STATION_ID = 30
CALLING_STATION_ID = 31
NAS_IDENTIFIER = 32
PROXY_STATE = 33
EAP_MESSAGE = 79
MESSAGE_AUTHENTICATOR = 80
NAS_IPV6_ADDRESS = 95

_ZERO_MA = b"\x00" * AUTHENTICATOR_LENGTH
_MA_PLACEHOLDER = bytes((MESSAGE_AUTHENTICATOR, 18)) + _ZERO_MA
# RFC 2865 section 5.44 table: at most one of these in an Access-Request.
_AT_MOST_ONCE = {
    USER_NAME: "User-Name",
    USER_PASSWORD: "User-Password",
    CHAP_PASSWORD: "CHAP-Password",
    STATE: "State",
    MESSAGE_AUTHENTICATOR: "Message-Authenticator",
}
# Attributes whose values the receiver concatenates (RFC 2865 5.18,
# RFC 3579 3.1): a long value is split over several attributes.
_CONCATENATED = frozenset({"Reply-Message", "EAP-Message"})
# What pyrad's value decoders raise on a value of the wrong shape.
_PYRAD_DECODE_ERRORS = (
    pyrad_packet.PacketError, ValueError, TypeError, IndexError, KeyError,
    struct.error, UnicodeError,
)

# What encoding a value the caller got from elsewhere may raise: ours,
# and what a value of an unexpected type makes Python raise.
_ENCODE_ERRORS = (LocalProtocolError, ValueError, TypeError, struct.error, OverflowError,
                  UnicodeError)

#: An attribute to encode: a dictionary name (``"Tunnel-Type:1"`` with a
#: tag), a raw type code, or ``(vendor_id, vendor_type)``; raw keys take
#: bytes values and are copied as they are (pass-through of attributes the
#: dictionary does not know).
AttributeKey = Union[str, int, tuple[int, int]]


class UnsupportedCode(RemoteProtocolError):
    """A well-formed packet with a code this server does not serve."""

    def __init__(self, code: int):
        self.code = code
        super().__init__(f"unsupported packet code {code}")


@dataclass(frozen=True)
class Header:
    """The fixed 20-octet header, read before the client's secret is known."""
    code: int
    id: int
    length: int
    authenticator: bytes


def peek(data: bytes) -> Header:
    """Read and sanity-check the header without touching the attributes.

    Cheap enough to run on every datagram before the client lookup and the
    duplicate cache. Octets beyond the Length field are padding and are
    ignored (RFC 2865 section 3); a Length beyond the datagram is not.
    """
    if len(data) < HEADER_LENGTH:
        raise RemoteProtocolError(f"packet shorter than {HEADER_LENGTH} octets")
    code, ident, length = struct.unpack_from("!BBH", data)
    if length < HEADER_LENGTH:
        raise RemoteProtocolError(f"length field {length} below {HEADER_LENGTH}")
    if length > MAX_PACKET_LENGTH:
        raise RemoteProtocolError(f"length field {length} above {MAX_PACKET_LENGTH}")
    if length > len(data):
        raise RemoteProtocolError(f"length field {length} exceeds the datagram ({len(data)})")
    return Header(code, ident, length, bytes(data[4:HEADER_LENGTH]))


class _AttributeAccess:
    """Named, dictionary-decoded access to the attributes of a decoded packet."""

    packet: pyrad_packet.Packet

    def get_all(self, name: str) -> list[Any]:
        """Every value of the attribute ``name``, decoded per the dictionary.

        Named integer values come back as their names (``"Framed-User"``).
        Not for User-Password: use ``Request.password``.
        """
        if name.partition(":")[0] not in self.packet.dict:
            raise LocalProtocolError(f"attribute {name!r} is not in the dictionary")
        try:
            return list(self.packet.get(name, []))
        except _PYRAD_DECODE_ERRORS as exc:
            raise RemoteProtocolError(f"{name} has an invalid value") from exc

    def get(self, name: str) -> Any | None:
        """The first value of the attribute ``name``, or None when absent."""
        values = self.get_all(name)
        return values[0] if values else None


@dataclass(frozen=True, eq=False)
class Request(_AttributeAccess):
    """A decoded Access-Request or Status-Server.

    Integrity: an Access-Request without a Message-Authenticator carries no
    proof of the secret at all (a wrong secret only turns ``password`` into
    garbage). When ``has_message_authenticator`` is true and
    ``message_authenticator_ok`` is false the packet MUST be dropped whatever
    the client's configuration (RFC 3579 section 3.2). Status-Server
    requires one (RFC 5997 section 3).
    """
    code: int
    id: int
    authenticator: bytes
    raw: bytes = field(repr=False)                 # trimmed to the Length field
    packet: pyrad_packet.AuthPacket = field(repr=False)
    attributes: tuple[tuple[int, bytes], ...] = field(repr=False)   # wire order
    has_message_authenticator: bool
    message_authenticator_ok: bool | None          # None: absent
    user_name: str | None                          # None: absent, or not UTF-8 (see below)
    password: bytes | None = field(repr=False)     # User-Password, unhidden, NULs stripped
    chap: bool
    state: bytes | None = field(repr=False)
    calling_station_id: str | None
    called_station_id: str | None
    nas_identifier: str | None
    nas_ip: str | None
    proxy_states: tuple[bytes, ...] = field(repr=False)
    secret: bytes = field(repr=False)              # the secret it was decoded with
    # User-Name is octets (RFC 2865 section 5.1): one that is not UTF-8 is
    # kept, not refused. ``user_name_raw`` is the value as it came (None:
    # absent); ``user_name_invalid`` is true when it is present and not
    # UTF-8, and then ``user_name`` is None. For logs and the audit use
    # :func:`escape_user_name`.
    user_name_raw: bytes | None = field(default=None, repr=False)
    user_name_invalid: bool = False


# Attributes a proxy never forwards as they are: it sets its own.
_NOT_FORWARDED = frozenset({USER_NAME, USER_PASSWORD, STATE, PROXY_STATE, MESSAGE_AUTHENTICATOR})
MICROSOFT = 311
MS_CHAP_RESPONSE = 1
MS_CHAP2_RESPONSE = 25
EAP_FAILURE = 4                   # EAP packet code (RFC 3748 section 4)


def forwardable(request: "Request") -> tuple[tuple[int, bytes], ...]:
    """The request's attributes that an upstream should see unchanged
    (MS-CHAP, Calling-Station-Id, NAS-*), raw and in wire order."""
    return tuple((t, v) for t, v in request.attributes if t not in _NOT_FORWARDED)


def _microsoft_types(request: "Request") -> set[int]:
    """The vendor types of every Microsoft attribute in the request."""
    found: set[int] = set()
    for attr_type, value in request.attributes:
        split = split_vendor_specific(value) if attr_type == VENDOR_SPECIFIC else None
        if split is not None and split[0] == MICROSOFT:
            found.update(vendor_type for vendor_type, _ in split[1])
    return found


def is_mschapv2(request: "Request") -> bool:
    """True when the request carries an MS-CHAP2-Response (RFC 2548)."""
    return MS_CHAP2_RESPONSE in _microsoft_types(request)


#: The values :func:`method_of` returns (the audit record's ``method``).
METHODS = ("pap", "chap", "mschap", "mschapv2", "eap", "none")


def method_of(request: "Request") -> str:
    """How the client proves the user's password, as the audit names it.

    The first that applies: ``eap`` (an EAP-Message, RFC 3579: whatever
    else the request carries, EAP decides), ``mschapv2`` (MS-CHAP2-Response,
    RFC 2548), ``mschap`` (MS-CHAP v1: MS-CHAP-Response without
    MS-CHAP2-Response), ``chap`` (CHAP-Password), ``pap`` (User-Password),
    ``none`` (none of them: a State alone, or a second-factor-only request).
    """
    if any(kind == EAP_MESSAGE for kind, _ in request.attributes):
        return "eap"
    microsoft = _microsoft_types(request)
    if MS_CHAP2_RESPONSE in microsoft:
        return "mschapv2"
    if MS_CHAP_RESPONSE in microsoft:
        return "mschap"
    if request.chap:
        return "chap"
    if request.password is not None:
        return "pap"
    return "none"


def eap_failure(request: "Request") -> bytes | None:
    """The EAP-Message value of an Access-Reject to an EAP request: an
    EAP-Failure (RFC 3748 section 4.2: code 4, length 4) with the identifier
    of the request's EAP packet (RFC 3579 section 2.6.3); identifier 0 for
    an EAP-Start (an empty EAP-Message). None when the request carries no
    EAP-Message.
    """
    parts = [value for kind, value in request.attributes if kind == EAP_MESSAGE]
    if not parts:
        return None
    eap = b"".join(parts)
    identifier = eap[1] if len(eap) >= 2 else 0
    return bytes((EAP_FAILURE, identifier, 0, 4))


@dataclass(frozen=True, eq=False)
class Response(_AttributeAccess):
    """A verified reply, as a client (tests, benchmarks, upstream) sees it.

    ``packet`` has ``request_authenticator`` set, so salt-encrypted values
    (MS-MPPE keys, Tunnel-Password) read by name come back decrypted.
    """
    code: int
    id: int
    authenticator: bytes
    raw: bytes = field(repr=False)
    packet: pyrad_packet.AuthPacket = field(repr=False)
    attributes: tuple[tuple[int, bytes], ...] = field(repr=False)
    has_message_authenticator: bool
    message_authenticator_first: bool
    proxy_states: tuple[bytes, ...] = field(repr=False)


# --------------------------------------------------------------------------
# Decoding


def decode_request(data: bytes, secret: bytes,
                   dictionary: Dictionary | None = None) -> Request:
    """Decode and check an Access-Request or Status-Server.

    Raises :class:`RemoteProtocolError` (:class:`UnsupportedCode` for other
    codes) for anything malformed, and nothing else.
    """
    dictionary = load_dictionary() if dictionary is None else dictionary
    header, raw, split = _framed(data, REQUEST_CODES)
    _check_multiplicity(split)
    by_type = _first_values(split)

    ma_ok = _check_request_message_authenticator(raw, split, secret)
    password = _request_password(by_type.get(USER_PASSWORD), secret, header.authenticator)
    chap = CHAP_PASSWORD in by_type
    if chap and len(by_type[CHAP_PASSWORD]) != 17:
        raise RemoteProtocolError("CHAP-Password is not 17 octets")
    if chap and password is not None:
        raise RemoteProtocolError("both User-Password and CHAP-Password")

    return Request(
        code=header.code,
        id=header.id,
        authenticator=header.authenticator,
        raw=raw,
        packet=_pyrad_view(raw, secret, dictionary),
        attributes=tuple((kind, value) for kind, value, _ in split),
        has_message_authenticator=ma_ok is not None,
        message_authenticator_ok=ma_ok,
        user_name=_user_name(by_type.get(USER_NAME)),
        user_name_raw=by_type.get(USER_NAME),
        user_name_invalid=by_type.get(USER_NAME) is not None and _user_name(by_type[USER_NAME]) is None,
        password=password,
        chap=chap,
        state=by_type.get(STATE),
        calling_station_id=_text(by_type.get(CALLING_STATION_ID)),
        called_station_id=_text(by_type.get(CALLED_STATION_ID)),
        nas_identifier=_text(by_type.get(NAS_IDENTIFIER)),
        nas_ip=_nas_ip(by_type),
        proxy_states=tuple(value for kind, value, _ in split if kind == PROXY_STATE),
        secret=secret,
    )


def decode_response(data: bytes, secret: bytes, request_authenticator: bytes, *,
                    require_message_authenticator: bool = True,
                    dictionary: Dictionary | None = None) -> Response:
    """Decode a reply to a request we sent and verify it.

    Checks the Response Authenticator (RFC 2865 section 3) and the
    Message-Authenticator (RFC 3579 section 3.2, keyed on the Request
    Authenticator); a reply without one is refused unless
    ``require_message_authenticator`` is false. Raises
    :class:`RemoteProtocolError` on any failure.
    """
    dictionary = load_dictionary() if dictionary is None else dictionary
    header, raw, split = _framed(data, RESPONSE_CODES)
    expected = hashlib.md5(raw[:4] + request_authenticator + raw[HEADER_LENGTH:] + secret).digest()
    if not hmac.compare_digest(expected, header.authenticator):
        raise RemoteProtocolError("bad Response Authenticator")
    offsets = _message_authenticator_offsets(split)
    if offsets:
        if not _message_authenticator_valid(raw, offsets[0], secret, request_authenticator):
            raise RemoteProtocolError("bad Message-Authenticator")
    elif require_message_authenticator:
        raise RemoteProtocolError("reply without Message-Authenticator")

    view = _pyrad_view(raw, secret, dictionary)
    view.request_authenticator = request_authenticator
    return Response(
        code=header.code,
        id=header.id,
        authenticator=header.authenticator,
        raw=raw,
        packet=view,
        attributes=tuple((kind, value) for kind, value, _ in split),
        has_message_authenticator=bool(offsets),
        message_authenticator_first=bool(split) and split[0][0] == MESSAGE_AUTHENTICATOR,
        proxy_states=tuple(value for kind, value, _ in split if kind == PROXY_STATE),
    )


def _framed(data: bytes, codes) -> tuple[Header, bytes, list[tuple[int, bytes, int]]]:
    """The header, the packet's octets (without padding past its Length) and
    its attributes; UnsupportedCode for a code outside ``codes``."""
    header = peek(data)
    if header.code not in codes:
        raise UnsupportedCode(header.code)
    raw = bytes(data[:header.length])
    return header, raw, _split_attributes(raw)


def _split_attributes(raw: bytes) -> list[tuple[int, bytes, int]]:
    """Walk the attributes strictly: ``(type, value, offset)`` in wire order."""
    out: list[tuple[int, bytes, int]] = []
    offset, end = HEADER_LENGTH, len(raw)
    while offset < end:
        if end - offset < 2:
            raise RemoteProtocolError("truncated attribute header")
        kind, length = raw[offset], raw[offset + 1]
        if length < 2:
            raise RemoteProtocolError(f"attribute {kind} has length {length}")
        if offset + length > end:
            raise RemoteProtocolError(f"attribute {kind} overruns the packet")
        out.append((kind, raw[offset + 2:offset + length], offset))
        offset += length
    return out


def _check_multiplicity(split: list[tuple[int, bytes, int]]) -> None:
    seen: set[int] = set()
    for kind, _, _ in split:
        if kind in _AT_MOST_ONCE:
            if kind in seen:
                raise RemoteProtocolError(f"more than one {_AT_MOST_ONCE[kind]}")
            seen.add(kind)


def _first_values(split: list[tuple[int, bytes, int]]) -> dict[int, bytes]:
    values: dict[int, bytes] = {}
    for kind, value, _ in split:
        values.setdefault(kind, value)
    return values


def _message_authenticator_offsets(split: list[tuple[int, bytes, int]]) -> list[int]:
    offsets = [offset for kind, _, offset in split if kind == MESSAGE_AUTHENTICATOR]
    if len(offsets) > 1:
        raise RemoteProtocolError("more than one Message-Authenticator")
    for kind, value, _ in split:
        if kind == MESSAGE_AUTHENTICATOR and len(value) != AUTHENTICATOR_LENGTH:
            raise RemoteProtocolError("Message-Authenticator is not 18 octets")
    return offsets


def _check_request_message_authenticator(raw: bytes, split: list[tuple[int, bytes, int]],
                                         secret: bytes) -> bool | None:
    offsets = _message_authenticator_offsets(split)
    if not offsets:
        return None
    return _message_authenticator_valid(raw, offsets[0], secret, raw[4:HEADER_LENGTH])


def _message_authenticator_valid(raw: bytes, offset: int, secret: bytes,
                                 vector: bytes) -> bool:
    """RFC 3579 section 3.2: HMAC-MD5 over the packet with the value zeroed.

    ``vector`` is the Request Authenticator: the packet's own for a request,
    the one of the request being answered for a reply.
    """
    received = raw[offset + 2:offset + 18]
    expected = message_authenticator(raw[:offset + 2] + _ZERO_MA + raw[offset + 18:],
                                     secret, vector)
    return hmac.compare_digest(received, expected)


def message_authenticator(packet: bytes, secret: bytes, vector: bytes) -> bytes:
    """The Message-Authenticator value of ``packet`` (its own value zeroed).

    The Authenticator field of ``packet`` is replaced by ``vector`` before
    hashing, as RFC 3579 section 3.2 prescribes for replies; for a request
    pass its own authenticator.
    """
    mac = hmac.new(secret, digestmod=hashlib.md5)
    mac.update(packet[:4])
    mac.update(vector)
    mac.update(packet[HEADER_LENGTH:])
    return mac.digest()


def _request_password(hidden: bytes | None, secret: bytes,
                      authenticator: bytes) -> bytes | None:
    if hidden is None:
        return None
    if not hidden or len(hidden) % 16 or len(hidden) > MAX_PASSWORD_LENGTH:
        raise RemoteProtocolError(
            f"User-Password of {len(hidden)} octets (16 to 128, a multiple of 16)")
    return unhide_password(hidden, secret, authenticator)


def _user_name(value: bytes | None) -> str | None:
    """The User-Name as text; None when absent or not UTF-8."""
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def escape_user_name(raw: bytes) -> str:
    """A User-Name's octets as printable text, for logs and the audit.

    Valid UTF-8 printable characters stay as they are; every octet that is
    not part of valid UTF-8 becomes ``\\xNN``; a control or other
    non-printable character becomes ``\\xNN``, ``\\uNNNN`` or
    ``\\UNNNNNNNN``; a backslash is doubled, so that the escaping is
    unambiguous (``CORP\\alice`` reads ``CORP\\\\alice``).
    """
    out = []
    for char in raw.decode("utf-8", errors="surrogateescape"):
        point = ord(char)
        if 0xDC80 <= point <= 0xDCFF:              # an undecodable octet
            out.append(f"\\x{point - 0xDC00:02x}")
        elif char == "\\":
            out.append("\\\\")
        elif char.isprintable():
            out.append(char)
        elif point <= 0xFF:
            out.append(f"\\x{point:02x}")
        elif point <= 0xFFFF:
            out.append(f"\\u{point:04x}")
        else:
            out.append(f"\\U{point:08x}")
    return "".join(out)


def _text(value: bytes | None) -> str | None:
    """Informational text (station ids, NAS-Identifier): never fatal."""
    return None if value is None else value.decode("utf-8", errors="replace")


def _nas_ip(by_type: dict[int, bytes]) -> str | None:
    if NAS_IP_ADDRESS in by_type:
        value = by_type[NAS_IP_ADDRESS]
        if len(value) != 4:
            raise RemoteProtocolError("NAS-IP-Address is not 4 octets")
        return str(ipaddress.IPv4Address(value))
    if NAS_IPV6_ADDRESS in by_type:
        value = by_type[NAS_IPV6_ADDRESS]
        if len(value) != 16:
            raise RemoteProtocolError("NAS-IPv6-Address is not 16 octets")
        return str(ipaddress.IPv6Address(value))
    return None


def _pyrad_view(raw: bytes, secret: bytes, dictionary: Dictionary) -> pyrad_packet.AuthPacket:
    """pyrad's decoded packet, for attribute access by name.

    ``raw`` has passed the strict walk already, so pyrad can only object to
    vendor TLVs; still, none of its exception types may escape.
    """
    try:
        return pyrad_packet.AuthPacket(secret=secret, dict=dictionary, packet=raw)
    except _PYRAD_DECODE_ERRORS as exc:
        raise RemoteProtocolError("attributes cannot be decoded") from exc


# --------------------------------------------------------------------------
# Password hiding (RFC 2865 section 5.2) and salt encryption (RFC 2868 3.5)


def _xor16(left: bytes, right: bytes) -> bytes:
    return (int.from_bytes(left, "big") ^ int.from_bytes(right, "big")).to_bytes(16, "big")


def hide_password(password: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """Hide a User-Password: NUL-pad to 16n octets, chain MD5 over the blocks."""
    if len(password) > MAX_PASSWORD_LENGTH:
        raise LocalProtocolError(f"password longer than {MAX_PASSWORD_LENGTH} octets")
    padded = password.ljust(max(16, -(-len(password) // 16) * 16), b"\x00")
    out = bytearray()
    previous = authenticator
    for start in range(0, len(padded), 16):
        previous = _xor16(hashlib.md5(secret + previous).digest(), padded[start:start + 16])
        out += previous
    return bytes(out)


def unhide_password(hidden: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """Reverse :func:`hide_password`; trailing NUL padding removed.

    Raw bytes, not text: with a wrong secret the result is garbage, and
    deciding how to decode it is the caller's business.
    """
    out = bytearray()
    previous = authenticator
    for start in range(0, len(hidden), 16):
        block = hidden[start:start + 16]
        out += _xor16(hashlib.md5(secret + previous).digest(), block)
        previous = block
    return bytes(out).rstrip(b"\x00")


def salt_encrypt(value: bytes, secret: bytes, request_authenticator: bytes,
                 salt: bytes) -> bytes:
    """RFC 2868 section 3.5 / RFC 2548 section 2.4.2: salt + encrypted
    (length octet + value + NUL padding), chained MD5 keyed on the secret."""
    if len(salt) != 2 or not salt[0] & 0x80:
        raise LocalProtocolError("salt must be 2 octets with the top bit set")
    plain = bytes((len(value),)) + value
    plain = plain.ljust(-(-len(plain) // 16) * 16, b"\x00")
    out = bytearray()
    previous = request_authenticator + salt
    for start in range(0, len(plain), 16):
        previous = _xor16(hashlib.md5(secret + previous).digest(), plain[start:start + 16])
        out += previous
    return salt + bytes(out)


def salt_decrypt(value: bytes, secret: bytes, request_authenticator: bytes) -> bytes | None:
    """Reverse :func:`salt_encrypt` (RFC 2868 section 3.5, RFC 2548 section
    2.4.2). None when the value cannot be a salt-encrypted one."""
    if len(value) < 18 or (len(value) - 2) % 16:
        return None
    salt, cipher = value[:2], value[2:]
    plain = bytearray()
    previous = request_authenticator + salt
    for start in range(0, len(cipher), 16):
        block = cipher[start:start + 16]
        plain += _xor16(hashlib.md5(secret + previous).digest(), block)
        previous = block
    length = plain[0]
    if length > len(plain) - 1:
        return None
    return bytes(plain[1:1 + length])


def split_vendor_specific(value: bytes) -> tuple[int, list[tuple[int, bytes]]] | None:
    """A Vendor-Specific value in the common format of RFC 2865 section 5.26:
    (vendor id, [(vendor type, value), …]); None when it does not parse so."""
    if len(value) < 4:
        return None
    vendor_id = struct.unpack_from("!L", value)[0]
    subs, offset = [], 4
    while offset < len(value):
        if len(value) - offset < 2:
            return None
        vendor_type, length = value[offset], value[offset + 1]
        if length < 2 or offset + length > len(value):
            return None
        subs.append((vendor_type, value[offset + 2:offset + length]))
        offset += length
    return (vendor_id, subs) if subs else None


# --------------------------------------------------------------------------
# Encoding


class ReplyTooLarge(LocalProtocolError):
    """The reply as asked would exceed 4,096 octets (RFC 2865 section 3)."""

    def __init__(self, length: int):
        self.length = length
        super().__init__(f"packet of {length} octets exceeds {MAX_PACKET_LENGTH}")


def encode_response(request: Request, code: int,
                    attributes: Sequence[tuple[AttributeKey, object]] = (),
                    secret: bytes | None = None) -> bytes:
    """Encode the reply to ``request``, exactly as asked.

    Layout: Message-Authenticator first (always: BlastRADIUS), then the
    request's Proxy-State attributes unmodified and in order (RFC 2865
    5.33), then ``attributes`` in the order given (repeats allowed; a long
    Reply-Message or EAP-Message is split over several attributes). The
    Response Authenticator covers everything. ``secret`` defaults to the
    one the request was decoded with.

    Raises :class:`LocalProtocolError` for a code that is not a reply, an
    unknown attribute or a value that does not fit, and
    :class:`ReplyTooLarge` (a LocalProtocolError) for a packet over 4096
    octets. A server answering a NAS uses :func:`encode_fitting`, which
    never fails so.
    """
    _check_reply_code(code)
    secret = request.secret if secret is None else secret
    encoder = _AttributeEncoder(request.packet.dict, secret, request.authenticator)
    wire = [_encode_reply_attribute(encoder, key, value) for key, value in attributes]
    return _assemble(request, code, request.proxy_states, wire, secret)


@dataclass(frozen=True)
class FittedReply:
    """What :func:`encode_fitting` sent.

    ``code`` is the code asked for, or ACCESS_REJECT when the reply asked
    for could not be sent (``reason`` then says why: ``"too_large"`` or
    ``"unencodable"``; None otherwise). ``dropped`` names each attribute
    left out, once per attribute, in the order they were dropped (for a
    replaced reply: every name that was asked for, once each;
    ``"Proxy-State"`` when a Proxy-State could not be echoed); ``truncated`` names those
    shortened (only ``"Reply-Message"``). Names only: never a value.
    """
    packet: bytes = field(repr=False)
    code: int
    dropped: tuple[str, ...] = ()
    truncated: tuple[str, ...] = ()
    reason: str | None = None


@dataclass
class _Item:
    name: str
    wire: bytes
    value: object = field(default=None, repr=False)


def encode_fitting(request: Request, code: int,
                   attributes: Sequence[tuple[AttributeKey, object]] = (),
                   secret: bytes | None = None) -> FittedReply:
    """Encode the reply to ``request`` so that it can always be sent: a
    packet of at most 4,096 octets, Message-Authenticator first and every
    Proxy-State echoed as :func:`encode_response` does.

    When the reply as asked does not fit, in this order, stopping as soon
    as it fits:

    1. Access-Challenge and Access-Reject: the optional attributes are
       dropped, the last first. Optional is anything but State and
       EAP-Message in a challenge, anything but EAP-Message in a reject,
       nothing in an Access-Accept (its attributes authorise the session:
       an Accept is never sent with less than it was given).
    2. Reply-Message (all of them, concatenated) is truncated at a UTF-8
       character boundary to what fits, or dropped when nothing does.
    3. An Accept or a Challenge that still does not fit is replaced by an
       Access-Reject (``reason="too_large"``) carrying only an EAP-Failure
       for an EAP request (:func:`eap_failure`), fitted in turn.
    4. A Reject that still does not fit (possible only for a request that
       carried neither Message-Authenticator nor User-Password and was
       padded with Proxy-State to the last octet): its EAP-Message is
       dropped, then the *first* Proxy-States, those of the farthest
       proxies, until it fits; the ones kept are the nearest hop's, in
       order. Never the Message-Authenticator.

    An attribute the encoder cannot carry (:class:`LocalProtocolError`: a
    value too long or of the wrong type) is dropped when optional (as in
    1, Reply-Message included); in an Accept, or a State or EAP-Message,
    it replaces the reply with an Access-Reject (``reason="unencodable"``).

    Raises :class:`LocalProtocolError` only for a code that is not a reply.
    """
    _check_reply_code(code)
    secret = request.secret if secret is None else secret
    dictionary = request.packet.dict
    encoder = _AttributeEncoder(dictionary, secret, request.authenticator)
    items: list[_Item] = []
    dropped: list[str] = []
    for key, value in attributes:
        name = attribute_name(dictionary, key)
        try:
            items.append(_Item(name, _encode_reply_attribute(encoder, key, value), value))
        except _ENCODE_ERRORS:
            if _essential(code, name):
                return _fallback_reject(request, secret, encoder, "unencodable",
                                        [*dropped, *(attribute_name(dictionary, k)
                                                     for k, _ in attributes)])
            dropped.append(name)
    proxy_states = list(request.proxy_states)
    truncated: list[str] = []
    if _fit(code, items, proxy_states, encoder, dropped, truncated):
        return FittedReply(_assemble(request, code, proxy_states, [i.wire for i in items], secret),
                           code, tuple(dropped), tuple(truncated))
    return _fallback_reject(request, secret, encoder, "too_large",
                            [*dropped, *(attribute_name(dictionary, k) for k, _ in attributes)])


def can_encode(dictionary: Dictionary, key: AttributeKey, value: object) -> bool:
    """Whether ``(key, value)`` can go into a reply (:func:`encode_response`
    would not raise for it): for checking attributes that come from
    elsewhere (an upstream server) before they are handed on."""
    encoder = _AttributeEncoder(dictionary, b"trial", _ZERO_MA)
    try:
        _encode_reply_attribute(encoder, key, value)
    except _ENCODE_ERRORS:
        return False
    return True


def _fallback_reject(request: Request, secret: bytes, encoder: "_AttributeEncoder",
                     reason: str, dropped: list[str]) -> FittedReply:
    """The Access-Reject that replaces a reply that cannot be sent."""
    failure = eap_failure(request)
    items = [] if failure is None else [
        _Item("EAP-Message", encoder.encode("EAP-Message", failure), failure)]
    proxy_states = list(request.proxy_states)
    seen = list(dict.fromkeys(dropped))          # once each, in order
    truncated: list[str] = []
    _fit(ACCESS_REJECT, items, proxy_states, encoder, seen, truncated)
    return FittedReply(_assemble(request, ACCESS_REJECT, proxy_states, [i.wire for i in items],
                                 secret), ACCESS_REJECT, tuple(seen), tuple(truncated), reason)


def _fit(code: int, items: list[_Item], proxy_states: list[bytes],
         encoder: "_AttributeEncoder", dropped: list[str], truncated: list[str], *,
         overhead: int = len(_MA_PLACEHOLDER)) -> bool:
    """Trim ``items`` (and, for a reject, ``proxy_states``) in place as
    :func:`encode_fitting` documents; True when the packet now fits.
    ``overhead``: octets the packet carries besides the header, the
    Proxy-States and ``items`` (the Message-Authenticator; none in RADIUS/1.1)."""
    def size() -> int:
        return (HEADER_LENGTH + overhead + sum(2 + len(p) for p in proxy_states)
                + sum(len(item.wire) for item in items))

    if size() <= MAX_PACKET_LENGTH:
        return True
    if code != ACCESS_ACCEPT:                                   # 1. optional attributes
        for index in range(len(items) - 1, -1, -1):
            item = items[index]
            if item.name != "Reply-Message" and not _essential(code, item.name):
                del items[index]
                dropped.append(item.name)
                if size() <= MAX_PACKET_LENGTH:
                    return True
    messages = [item for item in items if item.name == "Reply-Message"]
    if messages:                                                # 2. Reply-Message
        room = MAX_PACKET_LENGTH - (size() - sum(len(item.wire) for item in messages))
        text = b"".join(_message_octets(item.value) for item in messages)
        shortened = _truncated_message(text, room, encoder)
        first = items.index(messages[0])
        items[:] = [item for item in items if item.name != "Reply-Message"]
        if shortened is not None:
            items.insert(first, shortened)
            truncated.append("Reply-Message")
        else:
            dropped.append("Reply-Message")
        if size() <= MAX_PACKET_LENGTH:
            return True
    if code != ACCESS_REJECT:
        return False
    for item in [item for item in items if item.name == "EAP-Message"]:     # 4. a bare reject
        items.remove(item)
        dropped.append(item.name)
    while proxy_states and size() > MAX_PACKET_LENGTH:
        proxy_states.pop(0)
        dropped.append("Proxy-State")
    return size() <= MAX_PACKET_LENGTH


def _essential(code: int, name: str) -> bool:
    """Whether an attribute may not be left out of a reply of ``code``."""
    if name == "Reply-Message":
        return False
    if code == ACCESS_ACCEPT:
        return True
    if code == ACCESS_CHALLENGE:
        return name in ("State", "EAP-Message")
    return name == "EAP-Message"


def _message_octets(value: object) -> bytes:
    if isinstance(value, (list, tuple)):
        return b"".join(_message_octets(one) for one in value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value)          # encoded once already: bytes or bytearray


def _truncated_message(text: bytes, room: int, encoder: "_AttributeEncoder") -> _Item | None:
    """The longest prefix of ``text`` (cut at a UTF-8 character boundary)
    whose Reply-Message attributes take at most ``room`` octets; None when
    no character fits."""
    def prefix(length: int) -> bytes:
        while 0 < length < len(text) and (text[length] & 0xC0) == 0x80:
            length -= 1
        return text[:length]

    best: _Item | None = None
    low, high = 1, len(text)
    while low <= high:
        middle = (low + high) // 2
        candidate = prefix(middle)
        wire = encoder.encode("Reply-Message", candidate) if candidate else b""
        if candidate and len(wire) <= room:
            best = _Item("Reply-Message", wire, candidate)
            low = middle + 1
        else:
            high = middle - 1
    return best


def attribute_name(dictionary: Dictionary, key: AttributeKey) -> str:
    """The dictionary name of an attribute key, for logs (no tag, no value)."""
    if isinstance(key, str):
        return key.partition(":")[0]
    index = dictionary.attrindex
    try:
        if index.HasBackward(key):
            return str(index.GetBackward(key))
    except TypeError:                  # an unhashable key: named below
        pass
    if isinstance(key, tuple) and len(key) == 2:
        return f"Vendor-{key[0]}-Attr-{key[1]}"
    return f"Attr-{key}"


def _check_reply_code(code: int) -> None:
    if code not in RESPONSE_CODES:
        raise LocalProtocolError(f"code {code} is not an Access-Request reply")


def _encode_reply_attribute(encoder: "_AttributeEncoder", key: AttributeKey,
                            value: object) -> bytes:
    if key in ("Message-Authenticator", "Proxy-State", MESSAGE_AUTHENTICATOR, PROXY_STATE):
        raise LocalProtocolError(f"{key} is added by the codec, not by the caller")
    return encoder.encode(key, value)


def _assemble(request: Request, code: int, proxy_states: Sequence[bytes],
              wire: Sequence[bytes], secret: bytes) -> bytes:
    body = bytearray(_MA_PLACEHOLDER)
    for state in proxy_states:
        body += _tlv(PROXY_STATE, state)
    for attribute in wire:
        body += attribute
    if HEADER_LENGTH + len(body) > MAX_PACKET_LENGTH:
        raise ReplyTooLarge(HEADER_LENGTH + len(body))
    packet = _sign(code, request.id, request.authenticator, bytes(body), secret,
                   ma_offset=HEADER_LENGTH)
    return _with_response_authenticator(packet, request.authenticator, secret)


def build_access_request(secret: bytes, user_name: str | bytes | None,
                         password: bytes | str | None = None, *,
                         id: int = 0,  # noqa: A002 - the RADIUS field name
                         authenticator: bytes | None = None,
                         message_authenticator: bool = True,
                         state: bytes | None = None,
                         attributes: Sequence[tuple[AttributeKey, object]] = (),
                         code: int = ACCESS_REQUEST,
                         dictionary: Dictionary | None = None) -> bytes:
    """Build an Access-Request (or, with ``code=STATUS_SERVER``, a
    Status-Server): the client side, for tests, benchmarks and tools.

    Attribute order: Message-Authenticator (when asked for), User-Name,
    User-Password (hidden), State, then ``attributes`` as given. A random
    Request Authenticator is made unless one is passed.
    """
    if not 0 <= id <= 255:
        raise LocalProtocolError(f"packet id {id} out of range 0..255")
    authenticator = os.urandom(AUTHENTICATOR_LENGTH) if authenticator is None else authenticator
    if len(authenticator) != AUTHENTICATOR_LENGTH:
        raise LocalProtocolError("authenticator must be 16 octets")
    dictionary = load_dictionary() if dictionary is None else dictionary
    encoder = _AttributeEncoder(dictionary, secret, authenticator)
    body = bytearray(_MA_PLACEHOLDER if message_authenticator else b"")
    if user_name is not None:
        body += encoder.encode("User-Name", user_name)
    if password is not None:
        if isinstance(password, str):
            password = password.encode("utf-8")
        body += _tlv(USER_PASSWORD, hide_password(password, secret, authenticator))
    if state is not None:
        body += encoder.encode("State", state)
    for key, value in attributes:
        body += encoder.encode(key, value)
    return _sign(code, id, authenticator, bytes(body), secret,
                 ma_offset=HEADER_LENGTH if message_authenticator else None)


def _sign(code: int, ident: int, authenticator: bytes, body: bytes, secret: bytes, *,
          ma_offset: int | None) -> bytes:
    """Assemble header and body and fill in the Message-Authenticator placeholder.

    ``authenticator`` is the Request Authenticator in both directions: for
    a reply the Authenticator field is overwritten afterwards.
    """
    length = HEADER_LENGTH + len(body)
    if length > MAX_PACKET_LENGTH:
        raise LocalProtocolError(f"packet of {length} octets exceeds {MAX_PACKET_LENGTH}")
    packet = struct.pack("!BBH", code, ident, length) + authenticator + body
    if ma_offset is None:
        return packet
    mac = message_authenticator(packet, secret, authenticator)
    return packet[:ma_offset + 2] + mac + packet[ma_offset + 18:]


def _with_response_authenticator(packet: bytes, request_authenticator: bytes,
                                 secret: bytes) -> bytes:
    """RFC 2865 section 3: MD5(Code+ID+Length+RequestAuth+Attributes+Secret)."""
    digest = hashlib.md5(packet[:4] + request_authenticator + packet[HEADER_LENGTH:]
                         + secret).digest()
    return packet[:4] + digest + packet[HEADER_LENGTH:]


def _tlv(kind: int, value: bytes) -> bytes:
    if len(value) > MAX_ATTRIBUTE_VALUE:
        raise LocalProtocolError(f"attribute {kind}: value of {len(value)} octets exceeds 253")
    return bytes((kind, len(value) + 2)) + value


def _vsa(vendor_id: int, vendor_type: int, value: bytes) -> bytes:
    """RFC 2865 section 5.26, the common one-octet type and length format."""
    if not 0 <= vendor_type <= 255 or not 0 <= vendor_id < 2**32:
        raise LocalProtocolError(f"vendor attribute {vendor_id}/{vendor_type} out of range")
    inner = bytes((vendor_type, len(value) + 2)) + value
    if len(inner) + 4 > MAX_ATTRIBUTE_VALUE:
        raise LocalProtocolError(
            f"vendor attribute {vendor_id}/{vendor_type}: value of {len(value)} octets too long")
    return _tlv(VENDOR_SPECIFIC, struct.pack("!L", vendor_id) + inner)


class _AttributeEncoder:
    """Turns ``(key, value)`` pairs into wire attributes for one packet.

    Holds what encryption needs (secret, Request Authenticator) and the
    salts used so far: RFC 2548 wants them unique within a packet.
    """

    def __init__(self, dictionary: Dictionary, secret: bytes, authenticator: bytes):
        self.dictionary = dictionary
        self.secret = secret
        self.authenticator = authenticator
        self._salts: set[bytes] = set()

    def encode(self, key: AttributeKey, value: object) -> bytes:
        if isinstance(value, (list, tuple)):
            return b"".join(self.encode(key, one) for one in value)
        if isinstance(key, str):
            return self._encode_named(key, value)
        if not isinstance(value, (bytes, bytearray)):
            raise LocalProtocolError(f"raw attribute {key!r} needs a bytes value")
        if isinstance(key, int) and not isinstance(key, bool) and 1 <= key <= 255:
            return _tlv(key, bytes(value))
        if (isinstance(key, tuple) and len(key) == 2
                and all(isinstance(part, int) for part in key)):
            return _vsa(key[0], key[1], bytes(value))
        raise LocalProtocolError(f"attribute key {key!r} is neither a name nor a code")

    def _encode_named(self, key: str, value: object) -> bytes:
        name, _, tag_text = key.partition(":")
        attr = self.dictionary.attributes.get(name)
        if attr is None:
            raise LocalProtocolError(f"attribute {name!r} is not in the dictionary")
        if attr.type == "tlv" or attr.is_sub_attribute:
            raise LocalProtocolError(f"attribute {name!r}: TLVs are not supported")
        tag = _parse_tag(attr, tag_text)
        payload = _encode_value(attr, value)
        if name in _CONCATENATED and len(payload) > MAX_ATTRIBUTE_VALUE:
            return b"".join(_tlv(attr.code, chunk) for chunk in _chunks(payload, name))
        payload = self._protect(attr, payload, tag)
        if attr.vendor:
            return _vsa(self.dictionary.vendors.GetForward(attr.vendor), attr.code, payload)
        return _tlv(attr.code, payload)

    def _protect(self, attr: Attribute, payload: bytes, tag: int | None) -> bytes:
        """Apply the tag (RFC 2868 section 3) and the encryption flag."""
        if attr.encrypt == 1:
            payload = hide_password(payload, self.secret, self.authenticator)
        elif attr.encrypt == 2:
            payload = salt_encrypt(payload, self.secret, self.authenticator, self._new_salt())
        if not attr.has_tag:
            return payload
        if attr.type == "integer":
            if payload[0]:
                raise LocalProtocolError(f"{attr.name}: tagged integers hold 24 bits")
            return bytes((tag or 0,)) + payload[1:]
        if attr.encrypt == 2 or tag is not None or (payload and payload[0] <= 0x1F):
            return bytes((tag or 0,)) + payload
        return payload

    def _new_salt(self) -> bytes:
        while True:
            salt = struct.pack("!H", 0x8000 | secrets.randbits(15))
            if salt not in self._salts:
                self._salts.add(salt)
                return salt


def _parse_tag(attr: Attribute, tag_text: str) -> int | None:
    if not tag_text:
        return None
    if not attr.has_tag:
        raise LocalProtocolError(f"attribute {attr.name!r} takes no tag")
    if not tag_text.isdigit() or not 0 <= int(tag_text) <= 0x1F:
        raise LocalProtocolError(f"attribute {attr.name!r}: tag {tag_text!r} not in 0..31")
    return int(tag_text)


def _encode_value(attr: Attribute, value: object) -> bytes:
    """The value octets for the attribute's data type, before tag/encryption.

    Strings and octets are handled here (pyrad treats ``"0x..."`` and
    decimal strings as hex or numbers); the rest goes through pyrad.
    """
    if isinstance(value, str) and attr.values.HasForward(value):
        return attr.values.GetForward(value)
    if attr.type in ("string", "octets"):
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        raise LocalProtocolError(f"{attr.name}: needs str or bytes, not {type(value).__name__}")
    if isinstance(value, bool):
        raise LocalProtocolError(f"{attr.name}: a bool is not a {attr.type}")
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address,
                          ipaddress.IPv6Network)):
        value = str(value)
    try:
        return pyrad_tools.EncodeAttr(attr.type, value)
    except (ValueError, TypeError, struct.error, OverflowError) as exc:
        raise LocalProtocolError(f"{attr.name}: cannot encode {type(value).__name__} "
                                 f"as {attr.type}: {exc}") from exc


def _chunks(payload: bytes, name: str) -> Iterable[bytes]:
    """Split a concatenated attribute at 253 octets; Reply-Message (text)
    only at UTF-8 character boundaries, so each piece stays valid text."""
    start = 0
    while start < len(payload):
        end = min(start + MAX_ATTRIBUTE_VALUE, len(payload))
        if name == "Reply-Message" and end < len(payload):
            while end > start and (payload[end] & 0xC0) == 0x80:
                end -= 1
        yield payload[start:end]
        start = end
