"""An HTTP request written as a template: SMS gateways and push webhooks.

An :class:`HttpTemplate` is a configured method, URL, headers and body whose
URL and body carry ``{name}`` placeholders from a fixed set (an SMS gateway:
``{phone}``, ``{message}``, ``{code}``, ``{user}``; a push webhook:
``{user}``, ``{client}``, ``{push_id}``, ``{user_ip}``, ``{number_hint}``).
They are filled in one pass (a value that itself holds ``{code}`` is not
filled again); any other brace is left alone, so a JSON body needs no
doubling of braces. Each value is escaped for where it lands:

* in the URL: percent-encoded (``+49 151`` → ``%2B49%20151``);
* in the body, when it is JSON — the Content-Type header contains ``json``,
  or there is no Content-Type and the body starts with ``{`` or ``[``: escaped
  as the inside of a JSON string (quotes, backslashes, control characters),
  so write the placeholder inside quotes: ``{"text": "{message}"}``;
* in the body, when the Content-Type is ``application/x-www-form-urlencoded``:
  form-encoded (``to={phone}&text={message}``);
* otherwise: as is.

Header values are sent as configured. A body without a Content-Type header
is sent as ``application/json`` when it is JSON by the rule above, else as
``text/plain; charset=utf-8``. Building a request is pure: sending it is the
caller's business (radius_mfa.delivery.http).
"""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import Callable, Iterable, Mapping

from twisted.web.http_headers import Headers


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


_BODY_ESCAPES: dict[str, Callable[[str], str]] = {
    "json": json_string_inside, "form": urllib.parse.quote_plus, "plain": lambda v: v}
_DEFAULT_TYPES = {"json": "application/json", "plain": "text/plain; charset=utf-8"}


class HttpTemplate:
    """One configured request; :meth:`request` fills it with a set of values."""

    def __init__(self, *, method: str, url: str, headers: tuple[tuple[str, str], ...], body: str | None,
                 placeholders: Iterable[str]):
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self._placeholder = re.compile(r"\{(" + "|".join(map(re.escape, placeholders)) + r")\}")
        content_type = next((v for k, v in headers if k.lower() == "content-type"), None)
        self._body_kind = body_kind(body, content_type) if body is not None else None
        self._default_type = None if content_type else _DEFAULT_TYPES.get(self._body_kind or "")

    def fill(self, template: str, values: Mapping[str, str], escape: Callable[[str], str]) -> str:
        """*template* with each placeholder replaced by its escaped value, in one pass."""
        return self._placeholder.sub(lambda m: escape(values[m.group(1)]), template)

    def request(self, values: Mapping[str, str]) -> tuple[str, str, Headers, bytes | None]:
        """Method, URL, headers and body, with *values* filled in (a value for
        each placeholder)."""
        url = self.fill(self.url, values, url_component)
        headers = Headers()
        for key, value in self.headers:
            headers.addRawHeader(key, value)
        body = None
        if self.body is not None:
            assert self._body_kind is not None
            body = self.fill(self.body, values, _BODY_ESCAPES[self._body_kind]).encode("utf-8")
            if self._default_type:
                headers.addRawHeader("Content-Type", self._default_type)
        return self.method, url, headers, body
