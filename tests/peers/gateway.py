"""A local HTTP gateway for the delivery tests: Twisted web on loopback, in-process.

``gateway = await Gateway.start(reactor, answer=200)`` listens on a free
port of 127.0.0.1 and records every request it gets (:class:`Received`:
method, path with query, headers, body). ``answer`` is the status to give
(200, 201, 500…) or :data:`HANG` to never answer (the connection stays open
until the client gives up, or :meth:`stop` drops it). Optional ``body`` is
what it answers with (e.g. a Twilio error JSON). ``tls`` (a ``TlsFiles``
from ``peers.slapd.make_tls``) serves https instead.

``await gateway.stop()`` closes the port and every open connection and
waits until they are gone, so trial finds a clean reactor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.web import resource, server

HANG = "hang"


@dataclass(frozen=True)
class Received:
    method: str
    path: str                                # with the query string, still %-encoded
    headers: dict[str, str]                  # lower-case names; the last value of each
    body: bytes = field(repr=False)


class _Record(resource.Resource):
    isLeaf = True

    def __init__(self, gateway: "Gateway"):
        super().__init__()
        self.gateway = gateway

    def render(self, request):
        gateway = self.gateway
        gateway.received.append(Received(
            method=request.method.decode("ascii"),
            path=request.uri.decode("ascii"),
            headers={k.decode("latin-1").lower(): v[-1].decode("latin-1")
                     for k, v in request.requestHeaders.getAllRawHeaders()},
            body=request.content.read()))
        arrived, gateway._arrived = gateway._arrived, []
        for waiter in arrived:
            waiter.callback(None)
        if gateway.answer == HANG:
            return server.NOT_DONE_YET
        request.setResponseCode(gateway.answer)
        request.setHeader(b"content-type", b"application/json")
        return gateway.body


class _TrackingSite(server.Site):
    """A Site that knows its open connections, to close them on stop."""

    def __init__(self, gateway: "Gateway", *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gateway = gateway

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        gateway = self.gateway
        gone: defer.Deferred = defer.Deferred()
        gateway._connections[protocol] = gone
        lost = protocol.connectionLost

        def connection_lost(reason, _lost=lost, _protocol=protocol):
            gateway._connections.pop(_protocol, None)
            try:
                return _lost(reason)
            finally:
                gone.callback(None)

        protocol.connectionLost = connection_lost
        return protocol


class Gateway:
    def __init__(self, answer: int | str = 200, body: bytes = b'{"ok": true}'):
        self.answer = answer
        self.body = body
        self.received: list[Received] = []
        self._connections: dict[Protocol, defer.Deferred] = {}
        self._arrived: list[defer.Deferred] = []
        self._port = None
        self.scheme = "http"

    @classmethod
    def start(cls, reactor, answer: int | str = 200, *, body: bytes = b'{"ok": true}',
              tls=None) -> "Gateway":
        gateway = cls(answer, body)
        site = _TrackingSite(gateway, _Record(gateway))
        site.displayTracebacks = False
        site.noisy = False
        if tls is None:
            gateway._port = reactor.listenTCP(0, site, interface="127.0.0.1")
        else:
            from twisted.internet import ssl
            options = ssl.PrivateCertificate.loadPEM(
                tls.server_cert.read_text() + tls.server_key.read_text()).options()
            gateway._port = reactor.listenSSL(0, site, options, interface="127.0.0.1")
            gateway.scheme = "https"
        return gateway

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self._port.getHost().port}"

    def arrived(self) -> defer.Deferred:
        """Fires when the next request arrives."""
        waiter: defer.Deferred = defer.Deferred()
        self._arrived.append(waiter)
        return waiter

    async def stop(self) -> None:
        await self._port.stopListening()
        # a TLS connection whose handshake failed never reached the HTTP protocol
        waiting = [(p, gone) for p, gone in self._connections.items()
                   if getattr(p, "transport", None) is not None]
        for protocol, _ in waiting:
            protocol.transport.abortConnection()
        await defer.gatherResults([gone for _, gone in waiting])
