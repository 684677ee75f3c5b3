"""RADIUS over TLS (RadSec, RFC 6614): the `tls` listener.

Layers, outside in:

* :class:`RadsecTls`: the server's OpenSSL context (TLS 1.2 and 1.3, our
  certificate from ``server.tls``, client certificates required and checked
  against ``server.tls.ca_file``, ALPN), built anew by :meth:`RadsecTls.reload`
  on SIGHUP: handshakes after it use the new files, open connections keep theirs.
* :class:`RadsecFactory`: one per listener. A connection from an address no
  ``transport: tls`` client holds is closed before the handshake.
* :class:`RadsecConnection`: one per TCP connection, under Twisted's TLS
  wrapper. It refuses the handshake when the certificate does not chain to
  the CA or lacks the client's ``cert_name``; picks the connection's
  dialect (radius_mfa/radius/dialect.py) by ALPN; frames the stream by the
  RADIUS Length field; hands each packet to the shared packet path
  (:meth:`radius_mfa.server.RadiusServer.receive`) with itself as the peer;
  and closes when the peer sends a length outside 20..4096 or a packet that
  does not decode (garbage), or stays idle for ``server.tls.idle_timeout``.

Every refusal and every close for cause is logged, rate-limited per reason
and source address; one connection's trouble never touches another.
"""

from __future__ import annotations

import itertools
import struct
from typing import Callable

import structlog
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from radius_mfa.config import ClientConfig, ServerTlsConfig
from radius_mfa.radius import codec, v11
from radius_mfa.radius.dialect import DIALECTS, RADIUS_10, Dialect
from radius_mfa.ratelog import RateLimitedLog

log = structlog.get_logger("radius_mfa.radsec")

HANDSHAKE_SECONDS = 10.0          # a connection that has not finished its handshake by then is closed
LOG_INTERVAL = 10.0               # seconds between two lines of one (event, reason, source)
_LENGTH = struct.Struct("!H")

# X509_V_ERR_* (openssl/x509_vfy.h): the ones a misconfigured client meets, in words
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate not from server.tls.ca_file",
    19: "self-signed certificate in the chain, not from server.tls.ca_file",
    20: "certificate does not chain to server.tls.ca_file (unknown CA)",
    21: "unable to verify the first certificate",
    23: "certificate revoked",
    24: "invalid CA certificate",
    26: "certificate not meant for TLS clients (extended key usage)",
}


class TlsFilesError(ValueError):
    """A ``server.tls`` file that cannot serve: ``key`` names which one."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(message)


def _readable(path: str, key: str) -> None:
    try:
        with open(path, "rb") as stream:
            stream.read(1)
    except OSError as exc:
        raise TlsFilesError(key, f"cannot read {path}: {exc.strerror or exc}") from None


def build_context(tls: ServerTlsConfig, *, verify: Callable | None = None,
                  select_alpn: Callable | None = None) -> SSL.Context:
    """The server context for ``tls``; TlsFilesError naming the file at fault."""
    for key in ("cert_file", "key_file", "ca_file"):
        _readable(getattr(tls, key), key)
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_RENEGOTIATION)
    try:
        ctx.use_certificate_chain_file(tls.cert_file)
    except SSL.Error:
        raise TlsFilesError("cert_file", f"{tls.cert_file} holds no PEM certificate") from None
    try:
        with open(tls.key_file, "rb") as stream:
            serialization.load_pem_private_key(stream.read(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise TlsFilesError("key_file", f"{tls.key_file} holds no PEM private key "
                                        "(or one protected by a passphrase)") from None
    try:
        ctx.use_privatekey_file(tls.key_file)
        ctx.check_privatekey()
    except SSL.Error:
        raise TlsFilesError("key_file", f"{tls.key_file} is not the key of the certificate in "
                                        f"{tls.cert_file}") from None
    try:
        ctx.load_verify_locations(tls.ca_file)
        ctx.load_client_ca(tls.ca_file.encode())      # tells clients which CA we accept
    except SSL.Error:
        raise TlsFilesError("ca_file", f"{tls.ca_file} holds no PEM CA certificate") from None
    # session resumption with client certificates needs a session id context
    ctx.set_session_id(b"radius-mfa-radsec")
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
                   verify or (lambda conn, cert, errno, depth, ok: bool(ok)))
    if select_alpn is not None:
        ctx.set_alpn_select_callback(select_alpn)
    return ctx


def certificate_names(cert: x509.Certificate) -> tuple[str, ...]:
    """The DNS names of the subjectAltName, then the subject's CN, lower case."""
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names.extend(san.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        pass
    for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        if isinstance(attribute.value, str):
            names.append(attribute.value)
    return tuple(dict.fromkeys(name.lower().rstrip(".") for name in names))


def name_matches(cert_name: str | None, names: tuple[str, ...]) -> bool:
    """``cert_name`` unset, or one of the certificate's names (no wildcards)."""
    return cert_name is None or cert_name.lower().rstrip(".") in names


@implementer(IOpenSSLServerConnectionCreator)
class RadsecTls:
    """The current server context; every connection is made from it."""

    def __init__(self, tls: ServerTlsConfig):
        self.context = self._build(tls)
        self.config = tls

    def reload(self, tls: ServerTlsConfig) -> None:
        """New handshakes use ``tls``'s files from now on; TlsFilesError keeps the old."""
        self.context = self._build(tls)
        self.config = tls

    def _build(self, tls: ServerTlsConfig) -> SSL.Context:
        return build_context(tls, verify=_verify, select_alpn=_select_alpn)

    def serverConnectionForTLS(self, protocol) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(protocol)       # the callbacks find the RadsecConnection through it
        return connection


def _connection_of(conn: SSL.Connection) -> "RadsecConnection | None":
    wrapper = conn.get_app_data()
    wrapped = getattr(wrapper, "wrappedProtocol", None)
    return wrapped if isinstance(wrapped, RadsecConnection) else None


def _verify(conn: SSL.Connection, cert, errno: int, depth: int, ok: int) -> bool:
    """OpenSSL's verify callback: the chain as OpenSSL judged it, and at the
    leaf the client's cert_name. Never raises (pyOpenSSL would re-raise later)."""
    try:
        connection = _connection_of(conn)
        if connection is None:
            return False
        return connection.verify_certificate(cert, errno, depth, bool(ok))
    except Exception:                                   # a bug of ours: refuse, say why
        log.exception("radsec.verify_failed")
        return False


class NoApplicationProtocol(SSL.Error):
    """Raised from the ALPN callback: pyOpenSSL then answers
    SSL_TLSEXT_ERR_ALERT_FATAL, and OpenSSL ends the handshake with the
    alert no_application_protocol (RFC 7301 section 3.2, RFC 9765 section 3.3);
    do_handshake re-raises it, which Twisted takes as a failed handshake."""


def _select_alpn(conn: SSL.Connection, offered: list[bytes]) -> bytes:
    try:
        connection = _connection_of(conn)
        chosen = connection.select_protocol(offered) if connection is not None else None
    except Exception:
        log.exception("radsec.alpn_failed")
        chosen = None
    if chosen is None:
        raise NoApplicationProtocol("no application protocol in common")
    return chosen


class RadsecFactory(Factory):
    """Builds a :class:`RadsecConnection` for each connection from an address
    a ``tls`` client holds; closes the others at once."""

    noisy = False

    def __init__(self, pipeline, *, reactor, idle_timeout: float):
        self.pipeline = pipeline              # radius_mfa.server.RadiusServer
        self.reactor = reactor
        self.idle_timeout = idle_timeout
        self.connections: set[RadsecConnection] = set()
        self._serials = itertools.count(1)
        self.events = RateLimitedLog(log, "radsec.refused", clock=reactor, interval=LOG_INTERVAL,
                                     max_keys=1024)
        self.closes = RateLimitedLog(log, "radsec.closed", clock=reactor, interval=LOG_INTERVAL,
                                     max_keys=1024)

    def buildProtocol(self, addr):
        host = getattr(addr, "host", "")
        client = self.pipeline.runtime.clients.lookup(host, "tls")
        if client is None:
            self.pipeline.droplog.drop("unknown_client", host, detail="tls connection")
            self.refused("unknown_client", host, None, detail="no transport: tls client has this address")
            return None
        connection = RadsecConnection(self, client, host, getattr(addr, "port", 0), next(self._serials))
        return connection

    def refused(self, reason: str, host: str, client: str | None, **fields) -> None:
        """A connection refused before it could carry a request."""
        self.events.emit((reason, host), reason=reason, source_ip=host, client=client, **fields)

    def closed(self, reason: str, host: str, client: str | None, **fields) -> None:
        """A connection closed for cause (garbage, a bad length, idle)."""
        self.closes.emit((reason, host), reason=reason, source_ip=host, client=client, **fields)

    def flush_logs(self) -> None:
        self.events.flush()
        self.closes.flush()

    def close_all(self) -> None:
        for connection in list(self.connections):
            connection.close()


def listen_factory(tls: RadsecTls, factory: RadsecFactory) -> TLSMemoryBIOFactory:
    """What a TCP port serves: TLS around :class:`RadsecConnection`."""
    return TLSMemoryBIOFactory(tls, False, factory, clock=factory.reactor)


@implementer(IHandshakeListener)
class RadsecConnection(Protocol):
    """One RadSec connection; the peer of every packet it carries
    (radius_mfa.server.Peer)."""

    transport_name = "tls"

    def __init__(self, factory: RadsecFactory, client: ClientConfig, host: str, port: int, serial: int):
        self.factory = factory
        self.client = client                  # matched by address at connect; re-checked per packet
        self.host = host
        self.port = port
        self.scope = ("tls", serial)          # the duplicate cache's key prefix: this connection
        self.dialect: Dialect = RADIUS_10
        self.cert_names: tuple[str, ...] = ()
        self.server_ip = ""
        self._buffer = bytearray()
        self._handshake_done = False
        self._refusal: tuple[str, str] | None = None    # (reason, detail) the verify or ALPN step found
        self._closing = False
        self._timer = None
        self._deciding = 0                    # requests of this connection being decided (a push waits)

    # --- radius_mfa.server.Peer ---------------------------------------------------
    def admits(self, client: ClientConfig) -> bool:
        return name_matches(client.cert_name, self.cert_names)

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self._closing:
            self.transport.write(data)
            self._touch()

    def refuse(self, reason: str) -> None:
        """A packet the pipeline refused ends this connection (garbage, or the client gone)."""
        self.factory.closed(reason, self.host, self.client.name)
        self.close(abort=True)

    def deciding(self, change: int) -> None:
        self._deciding += change

    # --- connection lifecycle -------------------------------------------------------
    def connectionMade(self) -> None:
        self.factory.connections.add(self)
        host = self.transport.getHost()
        self.server_ip = getattr(host, "host", "")
        self._timer = self.factory.reactor.callLater(
            min(HANDSHAKE_SECONDS, self.factory.idle_timeout), self._timed_out)

    def verify_certificate(self, cert, errno: int, depth: int, ok: bool) -> bool:
        if not ok:
            if self._refusal is None:
                self._refusal = ("certificate", _VERIFY_ERRORS.get(errno, f"verify error {errno}"))
            return False
        if depth != 0:
            return True
        names = certificate_names(cert.to_cryptography())
        if not name_matches(self.client.cert_name, names):
            self._refusal = ("cert_name", f"the certificate does not carry {self.client.cert_name!r} "
                                          f"(it names {', '.join(names) or 'nothing'})")
            return False
        self.cert_names = names
        return True

    def select_protocol(self, offered: list[bytes]) -> bytes | None:
        """ALPN: our most preferred dialect the client offers and may use; None refuses."""
        handle = getattr(self.transport, "getHandle", None)                  # the version is chosen
        version = handle().get_protocol_version_name() if handle is not None else None   # before ALPN
        for alpn, dialect in DIALECTS.items():
            versions = getattr(dialect, "tls_versions", None)    # RADIUS/1.1: TLS 1.3 only
            if alpn in offered and dialect.permitted(self.client) and (
                    versions is None or version in versions):
                return alpn
        self._refusal = ("alpn", "no offered ALPN protocol is one we speak or the client may use: "
                                 + ", ".join(p.decode("ascii", "replace") for p in offered))
        return None

    def handshakeCompleted(self) -> None:
        self._handshake_done = True
        negotiated = getattr(self.transport, "negotiatedProtocol", None)
        self.dialect = DIALECTS.get(negotiated, RADIUS_10) if negotiated else RADIUS_10
        if not negotiated and not RADIUS_10.permitted(self.client):
            # radius11: require and no ALPN: a Protocol-Error says why, then the
            # connection closes (RFC 9765 section 3.3.1)
            self.factory.refused("alpn", self.host, self.client.name,
                                 detail="no ALPN offered; the client entry requires radius/1.1")
            self.transport.write(v11.encode_protocol_error(
                error_cause=v11.UNSUPPORTED_EXTENSION, reply_message="RADIUS/1.1 is required"))
            self.close()
            return
        connection = self.transport.getHandle() if hasattr(self.transport, "getHandle") else None
        version = connection.get_protocol_version_name() if connection is not None else None
        log.info("radsec.connected", client=self.client.name, source_ip=self.host,
                 tls=version, dialect=self.dialect.name)
        self._touch()

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 4 and not self._closing:
            (length,) = _LENGTH.unpack_from(buffer, 2)
            if length < codec.HEADER_LENGTH or length > codec.MAX_PACKET_LENGTH:
                self.factory.pipeline.drop("malformed", self.host, self.client,
                                           detail=f"length field {length} outside 20..4096")
                self.factory.closed("bad_length", self.host, self.client.name, length=length)
                self.close(abort=True)
                return
            if len(buffer) < length:
                break
            packet = bytes(buffer[:length])
            del buffer[:length]
            self._touch()
            self.factory.pipeline.receive(packet, self)

    def _touch(self) -> None:
        """A packet in or out: the idle clock starts again."""
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.factory.idle_timeout)

    def _timed_out(self) -> None:
        if self._handshake_done and self._deciding > 0:
            # a request still waits for its answer (a push, a slow upstream): not idle
            self._timer = self.factory.reactor.callLater(self.factory.idle_timeout, self._timed_out)
            return
        self._timer = None
        reason = "idle" if self._handshake_done else "handshake_timeout"
        if reason == "idle":
            log.info("radsec.closed", reason="idle", source_ip=self.host, client=self.client.name,
                     idle_timeout=self.factory.idle_timeout)
        else:
            self.factory.refused(reason, self.host, self.client.name)
        self.close(abort=not self._handshake_done)

    def close(self, abort: bool = False) -> None:
        if self._closing or self.transport is None:
            return
        self._closing = True
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        self._closing = True
        self.factory.connections.discard(self)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self._handshake_done:
            why, detail = self._refusal or ("handshake", _failure_text(reason))
            self.factory.refused(why, self.host, self.client.name, detail=detail)
        else:
            log.debug("radsec.disconnected", source_ip=self.host, client=self.client.name)


def _failure_text(reason) -> str:
    """A short account of why a handshake ended (no payload, no secret)."""
    value = getattr(reason, "value", reason)
    if isinstance(value, SSL.Error) and value.args and isinstance(value.args[0], list):
        parts = [entry[2] for entry in value.args[0] if isinstance(entry, tuple) and len(entry) == 3]
        if parts:
            return "; ".join(parts)
    text = str(value) or type(value).__name__
    return text[:200]


__all__ = ["RadsecTls", "RadsecFactory", "RadsecConnection", "TlsFilesError", "build_context",
           "certificate_names", "listen_factory", "name_matches"]
