"""The ``radius`` backend: the password is checked by an upstream RADIUS server.

radius-mfa acts as a RADIUS proxy towards the organisation's own server (NPS,
FreeRADIUS, an RSA/Entrust appliance): one Access-Request per check, carrying
User-Name, the User-Password hidden again with the upstream's secret (or the
NAS's MS-CHAP attributes as they came), the NAS attributes the engine chose to
forward, the upstream's State when answering its Access-Challenge, a
Proxy-State of our own and always a Message-Authenticator.

Reliability follows what a NAS expects of its RADIUS servers:

* each server gets ``timeout`` seconds per try and ``retries`` extra tries of
  the *same* packet (same identifier and Request Authenticator, so that the
  upstream's duplicate detection recognises it), then the next server;
* a server that let every try go unanswered is *dead* for ``dead_time``
  seconds: skipped (unless every server is dead) and probed with
  Status-Server (RFC 5997) until a probe is answered or the time is over;
* the whole call never takes longer than ``PrimaryRequest.deadline``.

A reply counts only when it comes from the server's address and port, on the
socket and identifier of an outstanding request, with a valid Response
Authenticator, a valid Message-Authenticator (required unless the server is
configured otherwise) and our Proxy-State. Anything else is logged and
ignored, as if it had never arrived: a forged or mis-keyed reply cannot end
the wait early.

Reply attributes: those whose names are in ``reply_attributes`` pass to the
NAS's final Access-Accept, plus always MS-CHAP2-Success and the MS-MPPE
attributes. Salt-encrypted values (the MPPE keys, RFC 2548 section 2.4.2)
are decrypted here with the upstream's secret and our Request
Authenticator; the codec encrypts them again for the NAS's secret and
Request Authenticator when the reply is encoded.

Identifiers are per socket and per server: one socket carries at most 256
outstanding requests to one server; beyond that another socket is opened.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

import structlog
from pyrad.dictionary import Attribute as DictAttribute, Dictionary
from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol

from radius_mfa.config import RadiusPrimaryConfig, RadiusServerConfig
from radius_mfa.errors import LocalProtocolError, RemoteProtocolError
from radius_mfa.primary.base import Attribute, PrimaryRequest, PrimaryResult, UpstreamChallenge
from radius_mfa.radius import codec
from radius_mfa.ratelog import RateLimitedLog
from radius_mfa.verdicts import Reason

log = structlog.get_logger("radius_mfa.primary.radius")

#: Reply attributes an Access-Accept always passes on: MS-CHAPv2 needs them.
ALWAYS_PASSED = frozenset({
    "MS-CHAP2-Success", "MS-MPPE-Send-Key", "MS-MPPE-Recv-Key",
    "MS-MPPE-Encryption-Policy", "MS-MPPE-Encryption-Types",
})
#: Added by the codec to every reply we send: never copied from upstream.
_NEVER_PASSED = frozenset({codec.MESSAGE_AUTHENTICATOR, codec.PROXY_STATE})
#: Request attributes the backend writes itself: never taken from ``forward``.
_NOT_FORWARDED = frozenset({codec.USER_NAME, codec.USER_PASSWORD, codec.STATE,
                            codec.MESSAGE_AUTHENTICATOR, codec.PROXY_STATE})
_EAP_MESSAGE = 79
_MICROSOFT = 311
_MS_CHAP_RESPONSES = frozenset({1, 25})      # MS-CHAP-Response, MS-CHAP2-Response
_REPLY_MESSAGE = 18
_TAG_MAX = 0x1F

IDS_PER_SOCKET = 256
MAX_SOCKETS_PER_INTERFACE = 64               # 16,384 requests in flight per server
PROXY_STATE_LENGTH = 8
RESOLVE_TTL = 300.0                          # seconds a host name's address is reused
RECEIVE_BUFFER = 1 << 20
LOG_INTERVAL = 60.0                          # seconds: a repeating warning is logged once per interval
#: Warnings every request can repeat while a server is down or misbehaving:
#: logged once per LOG_INTERVAL (per server where one is named), with a count.
_RATE_LIMITED = {
    "down": "warning", "no_answer": "warning", "busy": "warning", "send_failed": "warning",
    "unresolved": "warning", "attributes_dropped": "warning", "failed": "exception",
    "bad_reply": "warning",          # per (server, reason): forged datagrams cannot flood the log
}

Destination = tuple[str, int]                # (IP address as text, port)


# ==========================================================================
# Reply attributes: wire (type, bytes) → the values the codec encodes again


def _plain_value(attr_type: str, raw: bytes) -> object | None:
    """The decoded value the codec turns back into exactly ``raw``; None
    for types and lengths passed on as raw bytes instead."""
    if attr_type == "octets":
        return raw
    if attr_type == "string":
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw
    if attr_type in ("integer", "date") and len(raw) == 4:
        return int.from_bytes(raw, "big")
    if attr_type == "ipaddr" and len(raw) == 4:
        return ipaddress.IPv4Address(raw)
    if attr_type == "ipv6addr" and len(raw) == 16:
        return ipaddress.IPv6Address(raw)
    return None


class ReplyAttributes:
    """Which upstream reply attributes pass to the NAS, and in what form.

    Known attributes come back by dictionary name with a decoded value
    (``"Tunnel-Type:1"`` with its tag); unknown vendor attributes as
    ``((vendor, type), bytes)``; attributes of types the codec cannot
    reproduce byte for byte as ``(code, bytes)`` or ``((vendor, type),
    bytes)``. Either way :func:`codec.encode_response` writes the same
    octets again, except that encrypted values are re-encrypted.
    """

    def __init__(self, dictionary: Dictionary, names: Iterable[str]):
        self.dictionary = dictionary
        names = tuple(names)
        self.any_vendor = "Vendor-Specific" in names
        self.allowed = frozenset(names) | ALWAYS_PASSED
        unknown = sorted(n for n in names if n != "Vendor-Specific" and n not in dictionary.attributes)
        if unknown:
            log.warning("radius.upstream.unknown_reply_attributes", names=unknown,
                        detail="not in the dictionary: passed only as vendor attributes "
                               "when Vendor-Specific is allowed")

    def convert(self, response: codec.Response, secret: bytes, request_authenticator: bytes, *,
                exclude: frozenset[str] = frozenset(),
                dropped: dict[str, str] | None = None) -> tuple[Attribute, ...]:
        """The attributes to pass on. One that is allowed but cannot be
        passed on (a tag above 31, a value that does not decrypt or that
        the codec cannot encode again) is left out, never the reply: its
        name and a value-free reason go into ``dropped`` when given."""
        dropped = {} if dropped is None else dropped
        out: list[Attribute] = []
        for kind, value in response.attributes:
            if kind in _NEVER_PASSED:
                continue
            if kind == codec.VENDOR_SPECIFIC:
                out += self._vendor(value, secret, request_authenticator, exclude, dropped)
            else:
                out += self._one(kind, value, secret, request_authenticator, exclude, dropped)
        return tuple(attribute for attribute in out if self._encodable(attribute, dropped))

    def _encodable(self, attribute: Attribute, dropped: dict[str, str]) -> bool:
        """The codec must be able to write it into the NAS's reply: an
        attribute it cannot carry is dropped here, never the whole reply."""
        key, value = attribute
        if codec.can_encode(self.dictionary, key, value):
            return True
        dropped[codec.attribute_name(self.dictionary, key)] = "cannot be encoded again"
        return False

    def _vendor(self, value: bytes, secret: bytes, authenticator: bytes,
                exclude: frozenset[str], dropped: dict[str, str]) -> list[Attribute]:
        split = codec.split_vendor_specific(value)
        vendor_known = split is not None and self.dictionary.vendors.HasBackward(split[0])
        if split is None or (not vendor_known and len(split[1]) != 1):
            # a format we cannot take apart without changing it: all or nothing
            return [(codec.VENDOR_SPECIFIC, value)] if self.any_vendor else []
        vendor_id, subs = split
        out: list[Attribute] = []
        for vendor_type, sub_value in subs:
            out += self._one((vendor_id, vendor_type), sub_value, secret, authenticator, exclude,
                             dropped)
        return out

    def _one(self, key: int | tuple[int, int], raw: bytes, secret: bytes, authenticator: bytes,
             exclude: frozenset[str], dropped: dict[str, str]) -> list[Attribute]:
        index = self.dictionary.attrindex
        name = index.GetBackward(key) if index.HasBackward(key) else None
        is_vendor = isinstance(key, tuple)
        if name in exclude:
            return []
        if not (name in self.allowed or (is_vendor and self.any_vendor)):
            return []
        if name is None:
            return [(key, raw)]                       # an unknown vendor attribute, as it came
        converted = self._named(self.dictionary.attributes[name], key, raw, secret, authenticator)
        if isinstance(converted, str):
            dropped[name] = converted
            return []
        return [converted]

    def _named(self, attr: DictAttribute, key: int | tuple[int, int], raw: bytes,
               secret: bytes, authenticator: bytes) -> Attribute | str:
        """The attribute to pass on, or why it cannot be (no value in it)."""
        tag, payload = _untag(attr, raw)
        if tag is not None and tag > _TAG_MAX:
            return f"tag {tag} above {_TAG_MAX} (RFC 2868)"
        encrypted = attr.encrypt in (1, 2)
        if attr.encrypt == 2:
            payload = codec.salt_decrypt(payload, secret, authenticator)
        elif attr.encrypt == 1:
            payload = codec.unhide_password(payload, secret, authenticator)
        if payload is None:
            return "encrypted value cannot be decrypted"
        value = _plain_value(attr.type, payload)
        if value is None:
            if encrypted or tag is not None:
                return f"{attr.type} value of {len(payload)} octets"
            return (key, raw)
        return (_tagged_name(attr, tag), value)


def _untag(attr: DictAttribute, raw: bytes) -> tuple[int | None, bytes]:
    """Split off the RFC 2868 tag the way the codec puts it back on.

    Tagged integers: the tag is the first of the four octets. Salt-encrypted
    tagged values always start with the tag. Other tagged strings have one
    only when the first octet is 0x00–0x1F. The tag returned may be above
    0x1F (an integer's or an encrypted value's): not valid, and the caller
    drops the attribute.
    """
    if not attr.has_tag:
        return None, raw
    if attr.type == "integer":
        return (raw[0], b"\x00" + raw[1:]) if len(raw) == 4 else (None, raw)
    if raw and (attr.encrypt == 2 or raw[0] <= _TAG_MAX):
        return raw[0], raw[1:]
    return None, raw


def _tagged_name(attr: DictAttribute, tag: int | None) -> str:
    """The codec writes tag 0 for integers and encrypted values without
    being told; a tagged plain string needs its tag named, even 0."""
    if tag is None:
        return attr.name
    if tag == 0 and (attr.type == "integer" or attr.encrypt == 2):
        return attr.name
    return f"{attr.name}:{tag}"


# ==========================================================================
# Sockets, servers and outstanding requests


class _UpstreamSocket(DatagramProtocol):
    """One UDP socket towards the upstream servers, with its identifiers.

    Identifiers are allocated per destination, cyclically, so that a freed
    identifier is reused as late as possible (a late answer to the old
    request would otherwise meet a new one).
    """

    def __init__(self, backend: "RadiusBackend"):
        self.backend = backend
        self.exchanges: dict[tuple[str, int, int], _Exchange] = {}
        self._next_id: dict[Destination, int] = {}
        self._in_use: dict[Destination, set[int]] = {}

    def allocate(self, dest: Destination) -> int | None:
        used = self._in_use.setdefault(dest, set())
        if len(used) >= IDS_PER_SOCKET:
            return None
        ident = self._next_id.get(dest, int.from_bytes(os.urandom(1), "big"))
        while ident in used:
            ident = (ident + 1) % IDS_PER_SOCKET
        used.add(ident)
        self._next_id[dest] = (ident + 1) % IDS_PER_SOCKET
        return ident

    def release(self, dest: Destination, ident: int) -> None:
        self._in_use.get(dest, set()).discard(ident)
        self.exchanges.pop((dest[0], dest[1], ident), None)

    def datagramReceived(self, data: bytes, addr) -> None:
        try:
            self.backend._received(self, data, addr)
        except Exception:                      # a bug of ours: never kill the socket
            log.exception("radius.upstream.receive_failed", source=str(addr[0]))


@dataclass(eq=False)
class _Upstream:
    """One configured server and what we know of its health."""
    config: RadiusServerConfig
    label: str                                 # "host:port", for logs
    destination: Destination | None = None     # resolved address
    resolved_until: float = 0.0
    dead_until: float | None = None
    probe_call: object = None                  # IDelayedCall of the next probe
    last_answer: float = float("-inf")         # when it last sent a valid reply


@dataclass(eq=False)
class _Exchange:
    """One request to one server, from the first try to the last retry."""
    upstream: _Upstream
    sock: _UpstreamSocket
    dest: Destination
    ident: int
    authenticator: bytes
    packet: bytes = field(repr=False)
    proxy_state: bytes | None
    waiter: defer.Deferred | None = None

    @property
    def key(self) -> tuple[str, int, int]:
        return self.dest[0], self.dest[1], self.ident


class _NotSendable(Exception):
    """The request cannot be encoded (a password over 128 octets, …)."""


def _fire(d: defer.Deferred, value: object) -> None:
    if not d.called:
        d.callback(value)


def _address_text(host: str) -> str | None:
    """The canonical text of an IP address, or None for a host name."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _interface_for(ip: str) -> str:
    """Bind where the server is: loopback servers from loopback only."""
    address = ipaddress.ip_address(ip)
    if address.version == 4:
        return "127.0.0.1" if address.is_loopback else ""
    return "::1" if address.is_loopback else "::"


def _has_credential(request: PrimaryRequest) -> bool:
    """RFC 2865 section 4.1: an Access-Request carries a User-Password, a
    CHAP-Password, a State or EAP; for us also MS-CHAP(v2) in vendor form."""
    if request.password is not None or request.upstream_state is not None:
        return True
    for kind, value in request.forward:
        if kind in (codec.CHAP_PASSWORD, _EAP_MESSAGE):
            return True
        if kind == codec.VENDOR_SPECIFIC:
            split = codec.split_vendor_specific(value)
            if split and split[0] == _MICROSOFT and any(t in _MS_CHAP_RESPONSES for t, _ in split[1]):
                return True
    return False


# ==========================================================================
# The backend


class RadiusBackend:
    """PrimaryBackend that asks upstream RADIUS servers (see the module doc).

    ``start()`` opens the sockets, ``stop()`` closes them, ends every wait
    (pending calls return ``upstream_down``) and cancels the probes; it
    returns a Deferred that fires once the sockets are closed.
    ``probe_interval``: seconds between Status-Server probes of a dead
    server (default: the per-try timeout, at least one second).
    ``log_interval``: the warnings that every request can repeat while a
    server is down or a stranger sends garbage (``radius.upstream.down``,
    ``no_answer``, ``busy``, ``send_failed``, ``unresolved``,
    ``attributes_dropped``, ``bad_reply`` per reason, and the traceback of
    ``failed``) are logged once per interval per server, with
    ``suppressed=N``; :meth:`flush_logs` reports the counts of a burst that
    has ended.
    """

    name = "radius"
    supports_mschap = True

    def __init__(self, config: RadiusPrimaryConfig, *, reactor, dictionary: Dictionary,
                 probe_interval: float | None = None, log_interval: float = LOG_INTERVAL):
        self.config = config
        self.reactor = reactor
        self.dictionary = dictionary
        self.probe_interval = probe_interval if probe_interval is not None else max(config.timeout, 1.0)
        self.reply_attributes = ReplyAttributes(dictionary, config.reply_attributes)
        self.upstreams = [_Upstream(server, _label(server)) for server in config.servers]
        self._sockets: dict[str, list[_UpstreamSocket]] = {}
        self._exchanges: set[_Exchange] = set()
        self._stopped = False
        self._logs = {name: RateLimitedLog(log, f"radius.upstream.{name}", clock=reactor,
                                           interval=log_interval, level=level)
                      for name, level in _RATE_LIMITED.items()}

    # --- lifecycle --------------------------------------------------------------
    def start(self) -> None:
        """Open one socket for each address family the servers need (host
        names: opened on first use, once resolved)."""
        self._stopped = False
        for upstream in self.upstreams:
            ip = _address_text(upstream.config.host)
            if ip is not None:
                upstream.destination = (ip, upstream.config.port)
                upstream.resolved_until = float("inf")
                if not self._sockets.get(_interface_for(ip)):
                    self._open_socket(_interface_for(ip))

    def stop(self) -> defer.Deferred:
        self._stopped = True
        for upstream in self.upstreams:
            self._cancel_probe(upstream)
        for exchange in list(self._exchanges):
            if exchange.waiter is not None:
                _fire(exchange.waiter, None)
        closing = []
        for sockets in self._sockets.values():
            for sock in sockets:
                result = sock.transport.stopListening()
                if isinstance(result, defer.Deferred):
                    closing.append(result)
        self._sockets.clear()
        return defer.DeferredList(closing, consumeErrors=True)

    async def equalize(self, password: bytes) -> None:
        return None          # a check upstream would count against the user there

    def dead_servers(self) -> tuple[str, ...]:
        """``host:port`` of the servers currently skipped (health, metrics)."""
        now = self.reactor.seconds()
        return tuple(u.label for u in self.upstreams
                     if u.dead_until is not None and now < u.dead_until)

    def flush_logs(self) -> int:
        """Log the counts of rate-limited warnings whose interval has passed
        (for a periodic timer); return the number of lines."""
        return sum(limited.flush() for limited in self._logs.values())

    def server_health(self) -> dict[str, bool]:
        """``host:port`` of each configured server → in use (False: skipped as dead)."""
        dead = set(self.dead_servers())
        return {u.label: u.label not in dead for u in self.upstreams}

    # --- the check ----------------------------------------------------------------
    async def authenticate(self, request: PrimaryRequest) -> PrimaryResult:
        try:
            return await self._authenticate(request)
        except defer.CancelledError:
            raise
        except Exception:                       # a bug of ours: fail closed, never raise
            self._logs["failed"].emit(user=request.user_name)
            return PrimaryResult(False, Reason.ERROR)

    async def _authenticate(self, request: PrimaryRequest) -> PrimaryResult:
        if not _has_credential(request):
            return PrimaryResult(False, Reason.BAD_REQUEST)
        budget_end = None if request.deadline is None else self.reactor.seconds() + request.deadline
        for upstream in self._candidates():
            if self._stopped or self._spent(budget_end):
                break
            try:
                reply = await self._ask(upstream, request, budget_end)
            except _NotSendable as exc:
                log.warning("radius.upstream.not_sendable", user=request.user_name, reason=str(exc))
                return PrimaryResult(False, Reason.BAD_REQUEST)
            if reply is not None:
                response, authenticator = reply
                return self._result(response, upstream, authenticator)
        self._logs["down"].emit(user=request.user_name, servers=[u.label for u in self.upstreams],
                                reason="deadline" if self._spent(budget_end) else "no server answered")
        return PrimaryResult(False, Reason.UPSTREAM_DOWN)

    def _spent(self, budget_end: float | None) -> bool:
        return budget_end is not None and self.reactor.seconds() >= budget_end

    def _candidates(self) -> list[_Upstream]:
        """Live servers in order; every server when none is live."""
        now = self.reactor.seconds()
        alive = [u for u in self.upstreams if not self._is_dead(u, now)]
        return alive or list(self.upstreams)

    async def _ask(self, upstream: _Upstream, request: PrimaryRequest,
                   budget_end: float | None) -> tuple[codec.Response, bytes] | None:
        """One server, every try: the verified reply and our Request
        Authenticator, or None (and the server marked dead when it had
        all its tries and answered none)."""
        dest = await self._destination(upstream, budget_end)
        if dest is None:
            return None
        slot = self._allocate(dest)
        if slot is None:
            self._logs["busy"].emit(upstream.label, server=upstream.label)
            return None
        sock, ident = slot
        authenticator = os.urandom(codec.AUTHENTICATOR_LENGTH)
        proxy_state = os.urandom(PROXY_STATE_LENGTH)
        try:
            packet = self._access_request(upstream, request, ident, authenticator, proxy_state)
        except _NotSendable:
            sock.release(dest, ident)
            raise
        exchange = _Exchange(upstream, sock, dest, ident, authenticator, packet, proxy_state)
        started = self.reactor.seconds()
        with self._outstanding(exchange):
            response, complete = await self._transmit(exchange, budget_end)
        if response is not None:
            self._mark_alive(upstream)
            return response, authenticator
        if complete and not self._stopped:
            self._unanswered(upstream, started)
        return None

    def _unanswered(self, upstream: _Upstream, started: float) -> None:
        """Every try of one request went unanswered. A server that answered
        other requests meanwhile is busy or dropped this one, not dead
        (FreeRADIUS's home servers do the same): dead only when silent."""
        if upstream.last_answer >= started:
            self._logs["no_answer"].emit(upstream.label, server=upstream.label,
                                         detail="answers other requests: not marked dead")
            return
        self._mark_dead(upstream)

    def _access_request(self, upstream: _Upstream, request: PrimaryRequest, ident: int,
                        authenticator: bytes, proxy_state: bytes) -> bytes:
        forwarded = [(kind, value) for kind, value in request.forward if kind not in _NOT_FORWARDED]
        try:
            return codec.build_access_request(
                upstream.config.secret, request.user_name, request.password,
                id=ident, authenticator=authenticator, message_authenticator=True,
                state=request.upstream_state,
                attributes=[*forwarded, (codec.PROXY_STATE, proxy_state)],
                dictionary=self.dictionary)
        except LocalProtocolError as exc:
            raise _NotSendable(str(exc)) from None

    async def _transmit(self, exchange: _Exchange,
                        budget_end: float | None) -> tuple[codec.Response | None, bool]:
        """Send, wait, resend the same packet: (reply, True), or (None,
        whether the server had every try in full)."""
        for _ in range(self.config.retries + 1):
            wait, cut = self._try_time(budget_end)
            if wait <= 0 or self._stopped:
                return None, False
            self._write(exchange)
            response = await self._wait(exchange, wait)
            if response is not None:
                return response, True
            if cut or self._stopped:
                return None, False
        return None, True

    @contextlib.contextmanager
    def _outstanding(self, exchange: _Exchange):
        """Replies can match the exchange while inside; its identifier is
        free again after."""
        exchange.sock.exchanges[exchange.key] = exchange
        self._exchanges.add(exchange)
        try:
            yield exchange
        finally:
            self._exchanges.discard(exchange)
            exchange.sock.release(exchange.dest, exchange.ident)

    def _try_time(self, budget_end: float | None) -> tuple[float, bool]:
        """Seconds to wait for this try, and whether the budget cut it short."""
        if budget_end is None:
            return self.config.timeout, False
        left = budget_end - self.reactor.seconds()
        return min(self.config.timeout, left), left < self.config.timeout

    def _write(self, exchange: _Exchange) -> None:
        try:
            exchange.sock.transport.write(exchange.packet, exchange.dest)
        except OSError as exc:                 # unreachable network: this try is lost
            self._logs["send_failed"].emit(exchange.upstream.label, server=exchange.upstream.label,
                                           reason=exc.strerror or str(exc))

    async def _wait(self, exchange: _Exchange, seconds: float) -> codec.Response | None:
        waiter: defer.Deferred = defer.Deferred()
        exchange.waiter = waiter
        timer = self.reactor.callLater(seconds, _fire, waiter, None)
        try:
            return await waiter
        finally:
            exchange.waiter = None
            if timer.active():
                timer.cancel()

    # --- replies ----------------------------------------------------------------------
    def _received(self, sock: _UpstreamSocket, data: bytes, addr) -> None:
        source = (_address_text(str(addr[0])) or str(addr[0]), int(addr[1]))
        try:
            header = codec.peek(data)
        except RemoteProtocolError as exc:
            self._logs["bad_reply"].emit(("", str(exc)), source=f"{source[0]}:{source[1]}",
                                         reason=str(exc))
            return
        exchange = sock.exchanges.get((source[0], source[1], header.id))
        if exchange is None or exchange.waiter is None:
            # an answer to a retransmission already answered, or to a request
            # given up on; or a stranger (wrong source address or port)
            log.debug("radius.upstream.unmatched_reply", source=f"{source[0]}:{source[1]}", id=header.id)
            return
        upstream = exchange.upstream
        try:
            response = codec.decode_response(
                data, upstream.config.secret, exchange.authenticator,
                require_message_authenticator=upstream.config.require_message_authenticator,
                dictionary=self.dictionary)
        except RemoteProtocolError as exc:
            self._logs["bad_reply"].emit((upstream.label, str(exc)), server=upstream.label,
                                         reason=str(exc))
            return
        if exchange.proxy_state is not None and exchange.proxy_state not in response.proxy_states:
            self._logs["bad_reply"].emit((upstream.label, "proxy_state"), server=upstream.label,
                                         reason="our Proxy-State is missing")
            return
        upstream.last_answer = self.reactor.seconds()
        _fire(exchange.waiter, response)

    def _result(self, response: codec.Response, upstream: _Upstream,
                authenticator: bytes) -> PrimaryResult:
        secret = upstream.config.secret
        dropped: dict[str, str] = {}
        try:
            if response.code == codec.ACCESS_ACCEPT:
                attributes = self.reply_attributes.convert(response, secret, authenticator,
                                                           dropped=dropped)
                return PrimaryResult(True, attributes=attributes)
            if response.code == codec.ACCESS_CHALLENGE:
                return PrimaryResult(False, challenge=self._challenge(response, secret, authenticator,
                                                                      dropped))
            return PrimaryResult(False, Reason.BAD_PASSWORD)
        finally:
            if dropped:         # names and reasons only: a value could be a key or a password
                self._logs["attributes_dropped"].emit(upstream.label, server=upstream.label,
                                                      dropped=dropped)

    def _challenge(self, response: codec.Response, secret: bytes,
                   authenticator: bytes, dropped: dict[str, str]) -> UpstreamChallenge:
        state = next((value for kind, value in response.attributes if kind == codec.STATE), None)
        parts = [value for kind, value in response.attributes if kind == _REPLY_MESSAGE]
        message = b"".join(parts).decode("utf-8", errors="replace") if parts else None
        attributes = self.reply_attributes.convert(
            response, secret, authenticator, exclude=frozenset({"State", "Reply-Message"}),
            dropped=dropped)
        return UpstreamChallenge(state, message, attributes)

    # --- addresses and sockets -----------------------------------------------------------
    async def _destination(self, upstream: _Upstream, budget_end: float | None) -> Destination | None:
        """The server's address; host names resolved (IPv4) and cached."""
        now = self.reactor.seconds()
        if upstream.destination is not None and now < upstream.resolved_until:
            return upstream.destination
        wait, _ = self._try_time(budget_end)
        try:
            resolving = self.reactor.resolve(upstream.config.host, timeout=(max(wait, 0.1),))
            ip = await resolving
        except Exception as exc:             # DNS failure of any kind: no address, no try
            self._logs["unresolved"].emit(upstream.label, server=upstream.label, reason=str(exc))
            if upstream.destination is not None:
                return upstream.destination  # the last known address beats none
            return None
        upstream.destination = (str(ip), upstream.config.port)
        upstream.resolved_until = now + RESOLVE_TTL
        return upstream.destination

    def _allocate(self, dest: Destination) -> tuple[_UpstreamSocket, int] | None:
        interface = _interface_for(dest[0])
        sockets = self._sockets.setdefault(interface, [])
        for sock in sockets:
            ident = sock.allocate(dest)
            if ident is not None:
                return sock, ident
        if len(sockets) >= MAX_SOCKETS_PER_INTERFACE:
            return None
        sock = self._open_socket(interface)
        ident = sock.allocate(dest)
        return (sock, ident) if ident is not None else None

    def _open_socket(self, interface: str) -> _UpstreamSocket:
        sock = _UpstreamSocket(self)
        port = self.reactor.listenUDP(0, sock, interface=interface)     # sets sock.transport
        try:      # room for 256 replies arriving at once (the kernel caps it at rmem_max)
            port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        except (OSError, AttributeError):
            pass
        self._sockets.setdefault(interface, []).append(sock)
        return sock

    # --- dead servers and Status-Server probes ------------------------------------------
    def _is_dead(self, upstream: _Upstream, now: float) -> bool:
        if upstream.dead_until is None:
            return False
        if now < upstream.dead_until:
            return True
        log.info("radius.upstream.retry", server=upstream.label, reason="dead_time over")
        self._mark_alive(upstream, quiet=True)
        return False

    def _mark_dead(self, upstream: _Upstream) -> None:
        was_dead = upstream.dead_until is not None
        upstream.dead_until = self.reactor.seconds() + self.config.dead_time
        if not was_dead:
            log.warning("radius.upstream.dead", server=upstream.label,
                        dead_time=self.config.dead_time)
        if upstream.probe_call is None:
            self._schedule_probe(upstream)

    def _mark_alive(self, upstream: _Upstream, quiet: bool = False) -> None:
        if upstream.dead_until is not None and not quiet:
            log.info("radius.upstream.alive", server=upstream.label)
        upstream.dead_until = None
        self._cancel_probe(upstream)

    def _schedule_probe(self, upstream: _Upstream) -> None:
        if not self._stopped:
            upstream.probe_call = self.reactor.callLater(self.probe_interval, self._probe, upstream)

    def _cancel_probe(self, upstream: _Upstream) -> None:
        call, upstream.probe_call = upstream.probe_call, None
        if call is not None and call.active():
            call.cancel()

    def _probe(self, upstream: _Upstream) -> None:
        upstream.probe_call = None
        d = defer.Deferred.fromCoroutine(self._send_probe(upstream))
        d.addErrback(lambda failure: log.error("radius.upstream.probe_failed", server=upstream.label,
                                               error=failure.getErrorMessage()))

    async def _send_probe(self, upstream: _Upstream) -> None:
        """One Status-Server, one timeout: answered → alive, else probe again."""
        if self._stopped or upstream.dead_until is None:
            return
        dest = await self._destination(upstream, None)
        slot = self._allocate(dest) if dest is not None and not self._stopped else None
        if slot is not None and await self._status_server(upstream, dest, *slot):
            if upstream.dead_until is not None:
                self._mark_alive(upstream)
            return
        if upstream.dead_until is not None and upstream.probe_call is None:
            self._schedule_probe(upstream)

    async def _status_server(self, upstream: _Upstream, dest: Destination,
                             sock: _UpstreamSocket, ident: int) -> bool:
        authenticator = os.urandom(codec.AUTHENTICATOR_LENGTH)
        packet = codec.build_access_request(
            upstream.config.secret, None, id=ident, authenticator=authenticator,
            code=codec.STATUS_SERVER, dictionary=self.dictionary)
        exchange = _Exchange(upstream, sock, dest, ident, authenticator, packet, None)
        with self._outstanding(exchange):
            self._write(exchange)
            return await self._wait(exchange, self.config.timeout) is not None


def _label(server: RadiusServerConfig) -> str:
    host = f"[{server.host}]" if ":" in server.host else server.host
    return f"{host}:{server.port}"
