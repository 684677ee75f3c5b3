"""A RADIUS/1.1 client (RFC 9765) for the tests, written from the RFC.

It connects over TLS with a client certificate and offers ALPN: by default
``radius/1.1`` alone (a client configured "1.1", RFC 9765 section 3.3), or
any list, e.g. ``radius/1.0`` alone to check the fallback to historic
RADIUS/TLS, or both. Once connected, ``protocol`` is what the server chose.

Over RADIUS/1.1 each request carries a Token from a per-connection 32-bit
counter that starts at a random value and grows by one per packet (section
4.2.1); replies are matched by Token, so several requests may be in flight
at once (:meth:`send` then :meth:`receive`). Over historic RADIUS/TLS the
packets are RFC 2865's with the shared secret (``radsec`` by default) and
replies are matched by Identifier.

Blocking sockets, no reactor: a test drives it step by step.
"""

from __future__ import annotations

import secrets
import socket
import ssl
import struct
from collections.abc import Sequence

from radius_mfa.errors import RemoteProtocolError
from radius_mfa.radius import codec, v11

ALPN_V11 = v11.ALPN_V11.decode()
ALPN_V10 = v11.ALPN_V10.decode()


class ConnectionClosed(Exception):
    """The server closed the connection (or it broke) before a reply came."""


class Radius11Client:
    def __init__(self, host: str, port: int, *, ca_file: str, cert_file: str | None = None,
                 key_file: str | None = None, alpn: Sequence[str] | None = (ALPN_V11,),
                 server_hostname: str | None = None, secret: bytes = b"radsec",
                 timeout: float = 5.0, tls_version: ssl.TLSVersion | None = None,
                 source: str | None = None):
        """``alpn``: the names offered, in order (None: no ALPN extension at
        all). ``tls_version``: pin the TLS version (e.g. TLSv1_2 to see that
        RADIUS/1.1, which requires 1.3, is not chosen over it). ``source``:
        the local address to connect from (clients are matched by it)."""
        self.host, self.port = host, port
        self.source = source
        self.secret = secret
        self.timeout = timeout
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(ca_file)
        if cert_file is not None:
            context.load_cert_chain(cert_file, key_file)
        context.check_hostname = server_hostname is not None
        if alpn is not None:
            context.set_alpn_protocols(list(alpn))
        if tls_version is not None:
            context.minimum_version = context.maximum_version = tls_version
        self._context = context
        self._server_hostname = server_hostname
        self._sock: ssl.SSLSocket | None = None
        self._buffer = b""
        self._replies: dict[bytes | int, bytes] = {}      # Token (1.1) or Identifier (1.0) → packet
        self._authenticators: dict[int, bytes] = {}       # 1.0: Identifier → Request Authenticator
        self._counter = secrets.randbits(32)
        self._next_id = secrets.randbelow(256)
        self.protocol: str | None = None                  # the ALPN name the server chose, or None

    # --- the connection -------------------------------------------------------
    def connect(self) -> "Radius11Client":
        """The TCP connection and the TLS handshake; ssl.SSLError (e.g. an
        alert no_application_protocol) or OSError when refused."""
        raw = socket.create_connection((self.host, self.port), timeout=self.timeout,
                                       source_address=(self.source, 0) if self.source else None)
        try:
            self._sock = self._context.wrap_socket(
                raw, server_hostname=self._server_hostname or self.host)
        except BaseException:
            raw.close()
            raise
        self.protocol = self._sock.selected_alpn_protocol()
        return self

    @property
    def v11(self) -> bool:
        """Whether the connection speaks RADIUS/1.1 (the server chose it)."""
        return self.protocol == ALPN_V11

    @property
    def tls_version(self) -> str | None:
        return self._sock.version() if self._sock is not None else None

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def __enter__(self) -> "Radius11Client":
        return self.connect() if self._sock is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    def closed_by_server(self, timeout: float = 3.0) -> bool:
        """Whether the server ends the connection within ``timeout`` (it
        reads and keeps whatever replies come first)."""
        try:
            while True:
                self._read_more(timeout)
        except ConnectionClosed:
            return True
        except TimeoutError:
            return False

    # --- requests -------------------------------------------------------------
    def next_token(self) -> bytes:
        """The next Token of this connection: a counter from a random start."""
        token = struct.pack("!L", self._counter)
        self._counter = (self._counter + 1) % 2**32
        return token

    def send_raw(self, data: bytes) -> None:
        self._sock.sendall(data)

    def send(self, user_name: str | bytes | None, password: str | bytes | None = None, *,
             state: bytes | None = None, attributes: Sequence[tuple] = (),
             code: int = codec.ACCESS_REQUEST, token: bytes | None = None) -> bytes | int:
        """Send one request in the connection's protocol without waiting;
        the key to :meth:`receive` its reply with (a Token, or an Identifier)."""
        if self.v11:
            token = self.next_token() if token is None else token
            self.send_raw(v11.build_access_request(token, user_name, password, state=state,
                                                   attributes=attributes, code=code))
            return token
        ident = self._next_id
        self._next_id = (self._next_id + 1) % 256
        packet = codec.build_access_request(self.secret, user_name, password, id=ident,
                                            state=state, attributes=attributes, code=code)
        self._authenticators[ident] = packet[4:20]
        self.send_raw(packet)
        return ident

    def receive(self, key: bytes | int, timeout: float | None = None):
        """The reply to the request sent under ``key``, decoded and checked
        (v11.Response, or codec.Response over historic RADIUS/TLS). Replies
        to other requests that arrive first are kept for their turn."""
        timeout = self.timeout if timeout is None else timeout
        while key not in self._replies:
            self._read_more(timeout)
        data = self._replies.pop(key)
        if self.v11:
            return v11.decode_response(data, key)
        return codec.decode_response(data, self.secret, self._authenticators.pop(key))

    def request(self, user_name, password=None, **kwargs):
        """Send one request and wait for its reply."""
        timeout = kwargs.pop("timeout", None)
        return self.receive(self.send(user_name, password, **kwargs), timeout)

    # --- reading the stream ---------------------------------------------------
    def _read_more(self, timeout: float) -> None:
        """Read from the connection and file every whole packet by its key."""
        if self._sock is None:
            raise ConnectionClosed("not connected")
        self._sock.settimeout(timeout)
        try:
            chunk = self._sock.recv(65536)
        except (ssl.SSLError, ConnectionError) as exc:
            raise ConnectionClosed(str(exc)) from exc
        except socket.timeout as exc:
            raise TimeoutError(f"no reply within {timeout} s") from exc
        if not chunk:
            raise ConnectionClosed("the server closed the connection")
        self._buffer += chunk
        while len(self._buffer) >= 4:
            length = struct.unpack_from("!H", self._buffer, 2)[0]
            if length < codec.HEADER_LENGTH or length > codec.MAX_PACKET_LENGTH:
                raise RemoteProtocolError(f"the server sent a length field of {length}")
            if len(self._buffer) < length:
                break
            packet, self._buffer = self._buffer[:length], self._buffer[length:]
            key = packet[4:8] if self.v11 else packet[1]
            self._replies[key] = packet
