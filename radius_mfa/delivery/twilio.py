"""Twilio's REST API (``type: twilio``): SMS through Messages, voice through Calls.

SMS: ``POST {base}/2010-04-01/Accounts/{sid}/Messages.json`` with the form
fields ``To``, ``From``, ``Body``. Voice: ``POST …/Calls.json`` with ``To``,
``From`` and ``Twiml``: ``<Response><Say>`` reading the text twice, with a
pause between; the Sender has already spelled the code digit by digit.
Both authenticate with HTTP basic auth ``account_sid:auth_token``. ``url``
replaces the base ``https://api.twilio.com`` (tests point it at a local
gateway). A non-2xx answer becomes ``HTTP 400`` plus Twilio's numeric error
code when its JSON body carries one (``HTTP 400 (Twilio error 21211)``); the
body's text is never repeated.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from xml.sax.saxutils import escape as xml_escape

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Protocol
from twisted.web.http_headers import Headers

from radius_mfa.config import TwilioProviderConfig
from radius_mfa.delivery.base import DeliveryError, Outgoing
from radius_mfa.delivery.http import call, discard_body, make_agent

DEFAULT_BASE = "https://api.twilio.com"


def twiml_say_twice(text: str) -> str:
    """The TwiML a call plays: the text, a pause, the text again."""
    say = f"<Say>{xml_escape(text)}</Say>"
    return f'<Response>{say}<Pause length="1"/>{say}</Response>'


class TwilioProvider:
    """SMS and voice calls through Twilio (or anything speaking its API)."""

    def __init__(self, config: TwilioProviderConfig, reactor, *, trust_root=None):
        missing = [key for key in ("account_sid", "auth_token", "from_number") if not getattr(config, key)]
        if missing:
            raise ValueError(f"provider {config.name}: a twilio provider needs {', '.join(missing)}")
        self.name = config.name
        self.timeout = config.timeout
        self._config = config
        self._base = (config.url or DEFAULT_BASE).rstrip("/")
        self._agent = make_agent(reactor, trust_root)

    def request_for(self, message: Outgoing) -> tuple[str, str, Headers, bytes]:
        """Method, URL, headers and form body for ``message`` (pure)."""
        config = self._config
        resource = "Calls.json" if message.channel == "voice" else "Messages.json"
        sid = urllib.parse.quote(config.account_sid, safe="")
        url = f"{self._base}/2010-04-01/Accounts/{sid}/{resource}"
        fields = {"To": message.to, "From": config.from_number}
        if message.channel == "voice":
            fields["Twiml"] = twiml_say_twice(message.text)
        else:
            fields["Body"] = message.text
        credentials = base64.b64encode(f"{config.account_sid}:{config.auth_token}".encode()).decode("ascii")
        headers = Headers({"Authorization": [f"Basic {credentials}"],
                           "Content-Type": ["application/x-www-form-urlencoded"]})
        return "POST", url, headers, urllib.parse.urlencode(fields).encode("ascii")

    async def send(self, message: Outgoing) -> None:
        response = await call(self._agent, *self.request_for(message))
        if 200 <= response.code < 300:
            discard_body(response)
            return
        raise DeliveryError(f"HTTP {response.code}{await _error_code(response)}")


class _Collect(Protocol):
    """The first ``limit`` bytes of a body; fires ``done`` when the body ends."""

    def __init__(self, limit: int = 4096):
        self.done: Deferred = Deferred()
        self.data = b""
        self.limit = limit

    def dataReceived(self, data: bytes) -> None:
        self.data = (self.data + data)[:self.limit]

    def connectionLost(self, reason) -> None:
        self.done.callback(self.data)


async def _error_code(response) -> str:
    """`` (Twilio error N)`` from a JSON error body, or nothing."""
    collect = _Collect()
    response.deliverBody(collect)
    try:
        code = json.loads(await collect.done).get("code")
    except CancelledError:
        raise
    except Exception:               # a partial, non-JSON or odd body: no detail
        return ""
    return f" (Twilio error {code})" if isinstance(code, int) else ""
