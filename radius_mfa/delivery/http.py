"""The generic HTTP gateway provider (``type: http``), and the HTTP call it shares.

Placeholders ``{phone}``, ``{message}``, ``{code}`` and ``{user}`` are filled
in the URL and in the body, each value escaped for where it lands
(percent-encoded in the URL, as the inside of a JSON string in a JSON body,
form-encoded in a form body): see radius_mfa.httptemplate, which the push
webhooks share. Any 2xx answer means delivered; anything else is
``DeliveryError("HTTP 500")`` — the answer's body is never read into an
error, as a gateway may echo the message (and so the code). https uses the
system's CAs. Twilio and the push webhooks send through :func:`call` too.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, succeed
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from radius_mfa.config import HttpProviderConfig
from radius_mfa.delivery.base import DeliveryError, Outgoing
from radius_mfa.httptemplate import HttpTemplate

#: What an http provider's url and body may carry.
PLACEHOLDERS = ("phone", "message", "code", "user")


def placeholder_values(message: Outgoing) -> dict[str, str]:
    """What ``{phone}``, ``{message}``, ``{code}`` and ``{user}`` stand for."""
    return {"phone": message.to, "message": message.text, "code": message.code, "user": message.user}


@implementer(IBodyProducer)
class BytesProducer:
    """A request body already in memory, written at once (FileBodyProducer
    would schedule its writes on the global reactor's cooperator)."""

    def __init__(self, body: bytes):
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer):
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def make_agent(reactor, trust_root=None) -> Agent:
    """An HTTP(S) client: system CAs unless a test passes its own ``trust_root``
    (a ``twisted.internet.ssl.Certificate``); no connection kept between sends."""
    policy = BrowserLikePolicyForHTTPS(trustRoot=trust_root)
    return Agent(reactor, contextFactory=policy, pool=HTTPConnectionPool(reactor, persistent=False))


async def call(agent: Agent, method: str, url: str, headers: Headers, body: bytes | None) -> IResponse:
    """One request; a connection problem becomes a one-line DeliveryError."""
    producer = BytesProducer(body) if body is not None else None
    try:
        return await agent.request(method.upper().encode("ascii"), url.encode("ascii"), headers, producer)
    except CancelledError:
        raise
    except Exception as exc:
        raise DeliveryError(f"no answer: {_describe(exc)}") from None


def _describe(exc: Exception) -> str:
    """A short name for what went wrong on the wire (never a body, never a URL)."""
    reasons = getattr(exc, "reasons", None)      # ResponseNeverReceived, RequestTransmissionFailed
    if reasons:
        inner = reasons[0].value
        if isinstance(inner, CancelledError):
            raise inner
        return f"{type(exc).__name__} ({type(inner).__name__})"
    return type(exc).__name__


class _Discard(Protocol):
    """Swallows an answer's body: the verdict is in the status."""

    def dataReceived(self, data: bytes) -> None:
        pass


def discard_body(response: IResponse) -> None:
    """Read and drop the answer in the background, so the connection can close."""
    response.deliverBody(_Discard())


class HttpProvider:
    """A generic SMS/voice gateway reached over HTTP(S)."""

    def __init__(self, config: HttpProviderConfig, reactor, *, trust_root=None):
        if not config.url:
            raise ValueError(f"provider {config.name}: an http provider needs a url")
        self.name = config.name
        self.timeout = config.timeout
        self._agent = make_agent(reactor, trust_root)
        self._template = HttpTemplate(method=config.method, url=config.url, headers=config.headers,
                                      body=config.body, placeholders=PLACEHOLDERS)

    def request_for(self, message: Outgoing) -> tuple[str, str, Headers, bytes | None]:
        """Method, URL, headers and body for ``message`` (pure; tested on its own)."""
        return self._template.request(placeholder_values(message))

    async def send(self, message: Outgoing) -> None:
        response = await call(self._agent, *self.request_for(message))
        discard_body(response)
        if not 200 <= response.code < 300:
            raise DeliveryError(f"HTTP {response.code}")
