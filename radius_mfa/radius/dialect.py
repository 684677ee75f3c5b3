"""RADIUS dialects: the wire format a packet path speaks, chosen per connection.

Pure, no I/O. The server's packet path (radius_mfa/server.py) asks the
dialect of its peer for everything wire-shaped (reading the header, what
makes a retransmission, decoding, encoding the reply) and nothing else in it
knows the format. UDP and RADIUS over TLS without ALPN, or with ALPN
``radius/1.0``, speak RFC 2865 as radius_mfa/radius/codec.py does
(:data:`RADIUS_10`); a TLS connection negotiates its dialect by ALPN from
:data:`DIALECTS` (radius_mfa/radsec.py), where RADIUS/1.1 (RFC 9765) joins.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from radius_mfa.config import ClientConfig
from radius_mfa.radius import codec, v11


class Dialect(Protocol):
    name: str                      # "radius/1.0", "radius/1.1": logs and traces
    alpn: bytes | None             # its ALPN protocol id; None: never negotiated
    # whether the Message-Authenticator policy applies (require_message_authenticator,
    # limit_proxy_state, Status-Server needs one); False where TLS alone protects packets
    message_authenticator: bool

    def permitted(self, client: ClientConfig) -> bool:
        """Whether ``client`` may speak this dialect (False: the connection is refused)."""

    def peek(self, data: bytes) -> codec.Header:
        """The header, read before the client's secret is needed; RemoteProtocolError when malformed."""

    def request_key(self, header: codec.Header) -> tuple:
        """What identifies a retransmission of a request within one peer."""

    def decode_request(self, data: bytes, secret: bytes, dictionary) -> codec.Request:
        """A request; RemoteProtocolError when malformed (codec.UnsupportedCode for another code)."""

    def encode_reply(self, request: codec.Request, code: int,
                     attributes: Sequence[tuple[codec.AttributeKey, object]],
                     secret: bytes) -> codec.FittedReply:
        """The reply, always sendable (codec.encode_fitting's rules)."""


class Radius10:
    """RFC 2865 packets with the RFC 3579 / BlastRADIUS Message-Authenticator
    rules: RADIUS over UDP, and over TLS as RFC 6614 has it (ALPN
    ``radius/1.0`` or none)."""

    name = "radius/1.0"
    alpn = b"radius/1.0"
    message_authenticator = True

    def permitted(self, client: ClientConfig) -> bool:
        return client.radius11 != "require"          # the entry wants RADIUS/1.1 only

    def peek(self, data: bytes) -> codec.Header:
        return codec.peek(data)

    def request_key(self, header: codec.Header) -> tuple:
        return (header.id, header.authenticator)

    def decode_request(self, data: bytes, secret: bytes, dictionary) -> codec.Request:
        return codec.decode_request(data, secret, dictionary)

    def encode_reply(self, request: codec.Request, code: int,
                     attributes: Sequence[tuple[codec.AttributeKey, object]],
                     secret: bytes) -> codec.FittedReply:
        return codec.encode_fitting(request, code, attributes, secret=secret)


RADIUS_10 = Radius10()

#: The dialects a TLS listener offers by ALPN, the preferred first. A client
#: that offers no ALPN speaks RADIUS_10 (RFC 6614).
DIALECTS: dict[bytes, Dialect] = {v11.RADIUS_11.alpn: v11.RADIUS_11, RADIUS_10.alpn: RADIUS_10}
