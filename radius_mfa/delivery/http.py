"""The generic HTTP gateway provider (``type: http``), and the HTTP call it shares with Twilio.

Placeholders ``{phone}``, ``{message}``, ``{code}`` and ``{user}`` are filled
in the URL and in the body, in one pass (a value that itself contains
``{code}`` is not filled again); any other brace is left alone, so a JSON
body needs no doubling of braces. Each value is escaped for where it lands:

* in the URL: percent-encoded (``+49 151`` → ``%2B49%20151``);
* in the body, when it is JSON — the Content-Type header contains ``json``,
  or there is no Content-Type and the body starts with ``{`` or ``[``: escaped
  as the inside of a JSON string (quotes, backslashes, control characters),
  so write the placeholder inside quotes: ``{"text": "{message}"}``;
* in the body, when the Content-Type is ``application/x-www-form-urlencoded``:
  form-encoded (``to={phone}&text={message}``);
* otherwise: as is.

A body without a Content-Type header is sent as ``application/json`` when it
is JSON by the rule above, else as ``text/plain; charset=utf-8``. Any 2xx
answer means delivered; anything else is ``DeliveryError("HTTP 500")`` — the
answer's body is never read into an error, as a gateway may echo the message
(and so the code). https uses the system's CAs.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import Callable

from twisted.internet.defer import CancelledError, succeed
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from radius_mfa.config import HttpProviderConfig
from radius_mfa.delivery.base import DeliveryError, Outgoing

_PLACEHOLDER = re.compile(r"\{(phone|message|code|user)\}")


def fill(template: str, message: Outgoing, escape: Callable[[str], str]) -> str:
    """The template with every known placeholder replaced by its escaped value."""
    values = {"phone": message.to, "message": message.text, "code": message.code, "user": message.user}
    return _PLACEHOLDER.sub(lambda m: escape(values[m.group(1)]), template)


def json_string_inside(value: str) -> str:
    """``say "hi"`` → ``say \\"hi\\"``: the value as it goes between JSON quotes."""
    return json.dumps(value, ensure_ascii=False)[1:-1]


def url_component(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def body_kind(body: str, content_type: str | None) -> str:
    """``json`` | ``form`` | ``plain``: how placeholder values are escaped in the body."""
    if content_type is None:
        return "json" if body.lstrip().startswith(("{", "[")) else "plain"
    lowered = content_type.lower()
    if "json" in lowered:
        return "json"
    if lowered.startswith("application/x-www-form-urlencoded"):
        return "form"
    return "plain"


_BODY_ESCAPES = {"json": json_string_inside, "form": urllib.parse.quote_plus, "plain": lambda v: v}
_DEFAULT_TYPES = {"json": "application/json", "plain": "text/plain; charset=utf-8"}


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
        self._config = config
        self._agent = make_agent(reactor, trust_root)
        content_type = next((v for k, v in config.headers if k.lower() == "content-type"), None)
        self._body_kind = body_kind(config.body, content_type) if config.body is not None else None
        self._default_type = None if content_type else _DEFAULT_TYPES.get(self._body_kind or "")

    def request_for(self, message: Outgoing) -> tuple[str, str, Headers, bytes | None]:
        """Method, URL, headers and body for ``message`` (pure; tested on its own)."""
        config = self._config
        url = fill(config.url, message, url_component)
        headers = Headers()
        for key, value in config.headers:
            headers.addRawHeader(key, value)
        body = None
        if config.body is not None:
            body = fill(config.body, message, _BODY_ESCAPES[self._body_kind]).encode("utf-8")
            if self._default_type:
                headers.addRawHeader("Content-Type", self._default_type)
        return config.method, url, headers, body

    async def send(self, message: Outgoing) -> None:
        response = await call(self._agent, *self.request_for(message))
        discard_body(response)
        if not 200 <= response.code < 300:
            raise DeliveryError(f"HTTP {response.code}")
