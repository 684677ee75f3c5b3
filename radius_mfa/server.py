"""The packet path, bytes ↔ engine, for every transport; and the UDP protocol.

One Access-Request: client lookup by source address (before decoding: the
secret depends on it) → duplicate cache → decode → Message-Authenticator
policy → ``engine.handle`` (async) → one audit record → encode
(Message-Authenticator first) → write → cache the reply.

The path (:meth:`RadiusServer.receive`) takes the packet and a :class:`Peer`:
who sent it (address, transport, the dialect it speaks, the scope of its
retransmissions) and where the reply goes. UDP datagrams come through
``datagramReceived`` with a peer per datagram; RADIUS over TLS
(radius_mfa/radsec.py) hands in each framed packet with its connection as
the peer. The wire format is the peer's dialect's (radius_mfa/radius/dialect.py).

Nothing a client sends can raise out of ``datagramReceived``: every bad
packet is dropped with a rate-limited log line, and an unexpected error while
deciding becomes an Access-Reject (fail closed) with one logged traceback.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import structlog
from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol
from twisted.python.failure import Failure

from radius_mfa.config import ClientConfig, Mode, RequireMA
from radius_mfa.requests import AuthRequest, Decision
from radius_mfa.errors import RemoteProtocolError
from radius_mfa.radius import codec
from radius_mfa.radius.clients import ClientTable
from radius_mfa.radius.dialect import RADIUS_10, Dialect
from radius_mfa.radius.dupcache import DuplicateCache, Lookup
from radius_mfa.radius.droplog import DropLogger
from radius_mfa.ratelog import RateLimitedLog
from radius_mfa.trace import RequestTrace, TraceWriter, state_digest
from radius_mfa.verdicts import Reason, Verdict

log = structlog.get_logger("radius_mfa.server")

# Seconds between two tracebacks of the same error (a store outage fails
# every request the same way; the lines between are counted).
ERROR_LOG_INTERVAL = 10.0

_CODE_NAMES = {
    codec.ACCESS_REQUEST: "Access-Request",
    codec.STATUS_SERVER: "Status-Server",
    codec.ACCESS_ACCEPT: "Access-Accept",
    codec.ACCESS_REJECT: "Access-Reject",
    codec.ACCESS_CHALLENGE: "Access-Challenge",
}

RESPONSE_CODES = {
    Verdict.ACCEPT: codec.ACCESS_ACCEPT,
    Verdict.REJECT: codec.ACCESS_REJECT,
    Verdict.CHALLENGE: codec.ACCESS_CHALLENGE,
}


@dataclass(frozen=True)
class Runtime:
    """What SIGHUP replaces as one piece: the client table and the engine."""
    clients: ClientTable
    engine: object                   # radius_mfa.engine.Engine


@dataclass(frozen=True)
class Finished:
    """Everything the audit record needs about one answered request."""
    decision: Decision
    client: ClientConfig
    client_ip: str
    server_ip: str
    calling_station_id: str | None
    request_id: str
    duration_ms: float
    method: str = "pap"              # pap | chap | mschap | mschapv2 | eap | none
    transport: str = "udp"           # udp | tls
    protocol: str = "radius/1.0"     # the dialect: radius/1.0 | radius/1.1


class Peer(Protocol):
    """Where a packet came from and where its reply goes."""
    transport_name: str              # "udp" | "tls": clients are matched within it
    host: str                        # the source address (the client's, for lookup and audit)
    port: int
    scope: tuple                     # the duplicate cache key's prefix: (host, port) over UDP, a connection over TLS
    dialect: Dialect                 # the wire format
    server_ip: str                   # our address it reached

    def admits(self, client: ClientConfig) -> bool:
        """Whether this peer may speak for ``client`` (TLS: its certificate carries cert_name)."""

    def send(self, data: bytes) -> None:
        """Write a reply (nothing when the peer is gone)."""

    def refuse(self, reason: str) -> None:
        """A packet this peer sent ends it (TLS: the connection closes; UDP: nothing)."""

    def deciding(self, change: int) -> None:
        """+1 when a request of this peer starts being decided, -1 when it is
        done (TLS: a connection waiting for an answer is not idle)."""


class UdpPeer:
    """One datagram's sender: its reply goes back through the listening socket."""
    __slots__ = ("_protocol", "addr", "host", "port", "scope")
    transport_name = "udp"
    dialect = RADIUS_10

    def __init__(self, protocol: DatagramProtocol, addr):
        self._protocol = protocol
        self.addr = addr
        self.host, self.port = addr[0], addr[1]
        self.scope = (addr[0], addr[1])

    @property
    def server_ip(self) -> str:
        return self._protocol.local_host()

    def admits(self, client: ClientConfig) -> bool:
        return True

    def send(self, data: bytes) -> None:
        transport = self._protocol.transport
        if transport is not None:
            transport.write(data, self.addr)

    def refuse(self, reason: str) -> None:
        pass

    def deciding(self, change: int) -> None:
        pass


def response_for(decision: Decision) -> tuple[int, list[tuple[str, object]]] | None:
    """The reply code and attributes for a decision; None: send nothing.

    Every Access-Reject is the same whatever its reason (no user enumeration
    by reply): no attributes besides Message-Authenticator and Proxy-State.
    """
    if decision.verdict is Verdict.FAIL:
        return None
    code = RESPONSE_CODES[decision.verdict]
    if decision.verdict is Verdict.CHALLENGE:
        attributes: list[tuple[str, object]] = [("Reply-Message", decision.reply_message or ""),
                                                ("State", decision.state)]
    elif decision.verdict is Verdict.ACCEPT:
        attributes = list(decision.attributes)
        if decision.reply_message:
            attributes.insert(0, ("Reply-Message", decision.reply_message))
    else:
        attributes = []
        if decision.reply_message:          # the one allowed exception: an instruction after a correct password
            attributes.append(("Reply-Message", decision.reply_message))
    return code, attributes


def _name_and_method(request) -> dict:
    """The AuthRequest fields for the User-Name as octets (RFC 2865: one that
    is not UTF-8 is answered, escaped for the audit) and the method used."""
    fields = {"user_name": request.user_name, "method": codec.method_of(request)}
    if request.user_name_invalid:
        fields.update(user_name=codec.escape_user_name(request.user_name_raw), name_invalid=True)
    return fields


class RadiusServer(DatagramProtocol):
    def __init__(self, runtime: Runtime, *, dictionary, reactor, activity,
                 on_finished: Callable[[Finished], None], droplog: DropLogger,
                 duplicates: DuplicateCache, wall_clock: Callable[[], float] = time.time,
                 tracer: TraceWriter | None = None):
        self.runtime = runtime
        self.dictionary = dictionary
        self.reactor = reactor
        self.activity = activity
        self.on_finished = on_finished
        self.droplog = droplog
        self.duplicates = duplicates
        self.wall_clock = wall_clock
        self.tracer = tracer             # `serve --debug`: a readable block per request; else None
        self._local_host: str | None = None
        self.in_flight: set[defer.Deferred] = set()
        self.errors = RateLimitedLog(log, "auth.error", clock=reactor, interval=ERROR_LOG_INTERVAL,
                                     level="error")

    def local_host(self) -> str:
        """The address this socket is bound to (asked of the kernel once: a
        bound socket keeps it)."""
        if self._local_host is None:
            if self.transport is None:
                return ""
            self._local_host = getattr(self.transport.getHost(), "host", "")
        return self._local_host

    # --- the packet path ------------------------------------------------------
    def datagramReceived(self, data: bytes, addr) -> None:
        self.receive(data, UdpPeer(self, addr))

    def receive(self, data: bytes, peer: Peer) -> None:
        """One packet from ``peer``; whatever it holds, nothing raises from here."""
        try:
            self._receive(data, peer)
        except Exception:                       # a bug of ours: never kill the listener
            log.exception("radius.receive_failed", source=peer.host, transport=peer.transport_name)

    def _receive(self, data: bytes, peer: Peer) -> None:
        host, port, dialect = peer.host, peer.port, peer.dialect
        trace = self.tracer.begin(host, port) if self.tracer is not None else None
        client = self.runtime.clients.lookup(host, peer.transport_name)
        if client is None or not peer.admits(client):
            # over TLS: the client entry was removed or changed by a SIGHUP
            self.droplog.drop("unknown_client", host)
            peer.refuse("unknown_client")
            if trace is not None:
                trace.size = len(data)
                try:
                    header = dialect.peek(data)
                    trace.code = _CODE_NAMES.get(header.code, f"code {header.code}")
                    trace.packet_id = header.id
                except RemoteProtocolError:
                    pass
                self._finish_trace(trace.drop("unknown_client"))
            return
        if trace is not None:
            trace.matched(client)
        try:
            header = dialect.peek(data)
        except RemoteProtocolError as exc:
            self.drop("malformed", host, client, detail=str(exc), trace=trace)
            peer.refuse("malformed")
            return
        if header.code not in (codec.ACCESS_REQUEST, codec.STATUS_SERVER):
            self.drop("unsupported_code", host, client, detail=str(header.code), trace=trace)
            return

        # read only until the packet is authenticated: a spoofed copy of a
        # real request must not empty or replace its slot
        key = peer.scope + dialect.request_key(header)
        seen = self.duplicates.lookup(key)
        if seen.kind is Lookup.CACHED:
            peer.send(seen.response)
            if trace is not None:
                trace.notes.append("a retransmission: the reply already sent is sent again")
                self._finish_trace(trace)
            return
        if seen.kind is Lookup.IN_PROGRESS:
            if trace is not None:
                trace.notes.append("a retransmission of a request still being decided: ignored")
                self._finish_trace(trace)
            return

        try:
            request = dialect.decode_request(data, client.secret, self.dictionary)
        except RemoteProtocolError as exc:
            self.drop("malformed", host, client, detail=str(exc), trace=trace)
            peer.refuse("malformed")
            return
        if trace is not None:
            fields = _name_and_method(request)
            trace.decoded(request, code=_CODE_NAMES.get(request.code, str(request.code)),
                          user=fields["user_name"], method=fields["method"])
            trace.checked_message_authenticator(
                request, dialect.message_authenticator and self._ma_required(request, client))
        if dialect.message_authenticator and not self._authentic(request, client, host, trace):
            return
        self.duplicates.claim(key)
        self.activity.note(client.name, self.wall_clock(), request.has_message_authenticator)

        if request.code == codec.STATUS_SERVER:
            self._send(key, peer, dialect.encode_reply(request, codec.ACCESS_ACCEPT, (),
                                                       client.secret).packet)
            if trace is not None:
                trace.reply = "Access-Accept (Status-Server: alive)"
                self._finish_trace(trace)
            return
        self._start(request, client, key, peer, trace)

    def drop(self, reason: str, host: str, client: ClientConfig, detail: str | None = None,
             trace: RequestTrace | None = None) -> None:
        """A request from a known client dropped unanswered: logged (rate
        limited) and counted per client for `report clients`."""
        self.droplog.drop(reason, host, client=client.name, detail=detail)
        self.activity.note_drop(client.name, reason, self.wall_clock())
        if trace is not None:
            self._finish_trace(trace.drop(reason, detail))

    def _finish_trace(self, trace: RequestTrace) -> None:
        self.tracer.finish(trace)

    def _ma_required(self, request, client: ClientConfig) -> bool:
        """Whether this request must carry a Message-Authenticator."""
        return (
            request.code == codec.STATUS_SERVER                       # RFC 5997
            or client.require_message_authenticator is RequireMA.TRUE
            or (client.require_message_authenticator is RequireMA.AUTO
                and self.activity.has_sent_message_authenticator(client.name))
            or (client.limit_proxy_state and bool(request.proxy_states))
        )

    def _authentic(self, request, client: ClientConfig, host: str,
                   trace: RequestTrace | None = None) -> bool:
        """The Message-Authenticator policy (BlastRADIUS): a wrong one always
        drops; a missing one drops when the client must send one, or when
        the request carries Proxy-State and the client is set to
        ``limit_proxy_state`` (draft-ietf-radext-deprecating-radius)."""
        if request.has_message_authenticator:
            if not request.message_authenticator_ok:
                self.drop("bad_message_authenticator", host, client, trace=trace)
                return False
            return True
        if self._ma_required(request, client):
            self.drop("missing_message_authenticator", host, client, trace=trace)
            return False
        return True

    # --- deciding -------------------------------------------------------------
    def _start(self, request, client: ClientConfig, key, peer: Peer,
               trace: RequestTrace | None = None) -> None:
        peer.deciding(+1)
        d = defer.Deferred.fromCoroutine(self._handle(request, client, key, peer, trace))
        d.addErrback(self._lost, key)
        self.in_flight.add(d)
        d.addBoth(self._done, d, peer)

    async def _handle(self, request, client: ClientConfig, key, peer: Peer,
                      trace: RequestTrace | None = None) -> None:
        """Decide one Access-Request and answer it.

        Its ``request_id`` is bound here, once, for every line logged while
        it is worked on (engine, primary, delivery, push, audit): the
        coroutine runs in a copy of the caller's contextvars context, made by
        ``Deferred.fromCoroutine`` and entered again at each step after an
        await, so the binding follows the request and never reaches another.
        """
        started = self.reactor.seconds()
        request_id = secrets.token_hex(16)      # as random as uuid4().hex, a third of its cost
        structlog.contextvars.bind_contextvars(request_id=request_id)
        auth = AuthRequest(client=client, password=request.password,
                           state=request.state, calling_station_id=request.calling_station_id,
                           request_id=request_id, mschap=codec.is_mschapv2(request),
                           forward=codec.forwardable(request), **_name_and_method(request))
        try:
            decision = await self.runtime.engine.handle(auth)
        except Exception:              # a bug, or the store gone: fail closed
            decision = self._fail_closed(Failure(), auth)
        self._answer(decision, request, client, key, peer, started, request_id, auth.method, trace)

    def _fail_closed(self, failure, auth: AuthRequest) -> Decision:
        """An unexpected error while deciding: a Reject (fail closed). During
        an outage every request fails the same way: the traceback is logged
        once per interval per kind of error, with a count of the others."""
        kind = (failure.type.__name__, failure.getErrorMessage()[:200])
        if self.errors.due(kind):
            self.errors.emit(kind, client=auth.client.name, user=auth.user_name,
                             request_id=auth.request_id, exception=failure.getTraceback())
        else:
            self.errors.emit(kind)
        return Decision(Verdict.REJECT, auth.user_name, primary="", reason=Reason.ERROR)

    def _answer(self, decision: Decision, request, client: ClientConfig, key, peer: Peer,
                started: float, request_id: str, method: str = "pap",
                trace: RequestTrace | None = None) -> None:
        packet, decision = self._encode(decision, request, client, method, request_id, peer.dialect)
        if trace is not None:
            trace.request_id = request_id
            trace.decided(decision, answering_challenge=request.state is not None,
                          second_factor_only=client.mode is Mode.SECOND_FACTOR_ONLY)
            trace.reply = (_CODE_NAMES[RESPONSE_CODES[decision.verdict]] if packet is not None
                           and decision.verdict in RESPONSE_CODES
                           else "Protocol-Error: the NAS tries another server" if packet is not None
                           else "nothing: the NAS retries or fails over")
            if packet is not None and decision.state is not None:
                trace.reply += f" (State {state_digest(decision.state)})"
        finished = Finished(
            decision=decision, client=client, client_ip=peer.host,
            server_ip=peer.server_ip, calling_station_id=request.calling_station_id,
            request_id=request_id, method=method, transport=peer.transport_name,
            protocol=peer.dialect.name,
            duration_ms=round((self.reactor.seconds() - started) * 1000.0, 3))
        # the audit record first, in the same reactor turn as the reply: when
        # the NAS has its answer, the record is in the audit file
        try:
            self.on_finished(finished)
        except Exception:
            # a failing audit hook must not reach _lost, whose abandon() would
            # let a retransmission decide again: the reply still goes out
            log.exception("radius.finished_failed", request_id=request_id)
        if packet is None:
            self.duplicates.abandon(key)     # no reply: a retransmission is worked on afresh
        else:
            self._send(key, peer, packet)
        if trace is not None:
            self._finish_trace(trace)

    def _encode(self, decision: Decision, request, client: ClientConfig, method: str,
                request_id: str, dialect: Dialect = RADIUS_10) -> tuple[bytes | None, Decision]:
        """The reply's bytes (None: send nothing), always within 4,096
        octets, and the decision as sent: a reply that could not be sent as
        decided (too large even trimmed, or an attribute that cannot be
        encoded) goes out as an Access-Reject, and the audit says so."""
        response = response_for(decision)
        if response is None:
            # silence, or where the dialect has one, its "cannot answer" (RADIUS/1.1: a Protocol-Error)
            unanswerable = getattr(dialect, "unanswerable", None)
            return (unanswerable(request) if unanswerable is not None else None), decision
        code, attributes = response
        if method == "eap" and code == codec.ACCESS_REJECT:
            failure = codec.eap_failure(request)
            if failure is not None:            # RFC 3579 2.6.3: an EAP request's reject says so
                attributes = [*attributes, ("EAP-Message", failure)]
        fitted = dialect.encode_reply(request, code, attributes, client.secret)
        if fitted.code != code:
            log.warning("radius.reply_replaced", request_id=request_id, why=fitted.reason,
                        decided=decision.verdict.value, dropped=list(fitted.dropped))
            reason = Reason.REPLY_TOO_LARGE if fitted.reason == "too_large" else Reason.REPLY_UNENCODABLE
            decision = dataclasses.replace(decision, verdict=Verdict.REJECT, reason=reason,
                                           state=None, reply_message=None, attributes=())
        elif fitted.dropped or fitted.truncated:
            log.warning("radius.reply_trimmed", request_id=request_id,
                        dropped=list(fitted.dropped), truncated=list(fitted.truncated))
        return fitted.packet, decision

    def _lost(self, failure, key) -> None:
        self.duplicates.abandon(key)
        log.error("radius.answer_failed", exception=failure.getTraceback())

    def _done(self, result, d: defer.Deferred, peer: Peer):
        self.in_flight.discard(d)
        peer.deciding(-1)
        return None

    def _send(self, key, peer: Peer, data: bytes) -> None:
        self.duplicates.finish(key, data)
        peer.send(data)

    # --- shutdown -------------------------------------------------------------
    def drain(self, timeout: float) -> defer.Deferred:
        """Fires (with None) when every request in flight has been answered, or after ``timeout``.

        A request still open at the timeout is left unanswered, not cancelled:
        cancelling would fail it closed into an Access-Reject (reason
        ``error``), where silence lets the NAS retry another server.
        """
        pending = list(self.in_flight)
        if not pending:
            return defer.succeed(None)
        drained: defer.Deferred = defer.Deferred()

        def fire(_=None) -> None:
            if not drained.called:
                drained.callback(None)

        def stop_timer(result):
            if timer.active():
                timer.cancel()
            return result

        timer = self.reactor.callLater(timeout, fire)
        defer.DeferredList(pending, consumeErrors=True).addBoth(fire)
        return drained.addBoth(stop_timer)
