"""The device API client, over an HTTPS connection pinned to the certificate
the device was paired with."""

from __future__ import annotations

import json
import time
from typing import Callable
from urllib.parse import urlencode, urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from radius_mfa.push import crypto
from radius_mfa_authenticator import PROG
from radius_mfa_authenticator.errors import ApiError, BadUsage, Refused, one_line

CONNECT_TIMEOUT = 10.0        # seconds to open a connection
REQUEST_TIMEOUT = 30.0        # seconds for an answer, beyond a long-poll's own wait

MISMATCH = "the server's certificate does not match the one this device was paired with"
_MAX_BODY = 1024 * 1024


#
# Twisted is imported inside these builders and the client, so that
# `--help` and argument errors stay quick and importing this module never
# installs a reactor.


def pinned_policy(fingerprint: str):
    """An IPolicyForHTTPS whose connections accept only the certificate whose
    DER has SHA-256 ``fingerprint``. ``policy.mismatch`` is set to the
    fingerprint the server showed when it was refused (None otherwise)."""
    from OpenSSL import SSL
    from twisted.internet.abstract import isIPAddress, isIPv6Address
    from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
    from twisted.web.iweb import IPolicyForHTTPS
    from zope.interface import implementer

    @implementer(IOpenSSLClientConnectionCreator)
    class PinnedCreator:
        def __init__(self, policy: "PinnedPolicy", hostname: str):
            self._policy = policy
            self._hostname = hostname

        def _verify(self, connection, x509, errno: int, depth: int, preverify_ok: int) -> bool:
            if depth > 0:
                return True          # chain certificates do not matter: the leaf is pinned
            from cryptography.hazmat.primitives.serialization import Encoding

            seen = crypto.fingerprint_of_der(x509.to_cryptography().public_bytes(Encoding.DER))
            if seen != self._policy.fingerprint:
                self._policy.mismatch = seen
                return False
            return True

        def clientConnectionForTLS(self, tls_protocol):
            context = SSL.Context(SSL.TLS_CLIENT_METHOD)
            context.set_min_proto_version(SSL.TLS1_2_VERSION)
            context.set_verify(SSL.VERIFY_PEER, self._verify)
            connection = SSL.Connection(context, None)
            connection.set_app_data(tls_protocol)
            host = self._hostname
            if host and not (isIPAddress(host) or isIPv6Address(host)):
                try:
                    connection.set_tlsext_host_name(host.encode("idna"))
                except UnicodeError:
                    pass
            return connection

    @implementer(IPolicyForHTTPS)
    class PinnedPolicy:
        def __init__(self, fingerprint: str):
            self.fingerprint = fingerprint.lower()
            self.mismatch: str | None = None

        def creatorForNetloc(self, hostname: bytes, port: int):
            return PinnedCreator(self, hostname.decode("ascii", "replace"))

    return PinnedPolicy(fingerprint)


# --------------------------------------------------------------------------
# The device API client
# --------------------------------------------------------------------------


class DeviceClient:
    """Calls of the device API contract, over a pinned HTTPS connection.
    Every failure is a :class:`Refused` with one clear line."""

    def __init__(self, reactor, base_url: str, fingerprint: str, *,
                 device_id: str | None = None, key: Ed25519PrivateKey | None = None,
                 clock: Callable[[], float] = time.time):
        from twisted.web.client import Agent, HTTPConnectionPool

        parts = urlsplit(base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise BadUsage(f"the device API is reached over https only, not {base_url}")
        self._reactor = reactor
        self._base = base_url.rstrip("/")
        self._base_path = parts.path.rstrip("/")
        self._where = parts.netloc
        self._device_id = device_id
        self._key = key
        self._clock = clock
        self._policy = pinned_policy(fingerprint)
        self._agent = Agent(reactor, contextFactory=self._policy, connectTimeout=CONNECT_TIMEOUT,
                            pool=HTTPConnectionPool(reactor, persistent=False))

    # --- the calls -------------------------------------------------------
    async def pair(self, token: str, public_key: str, name: str) -> dict:
        answer = await self._call("POST", "/v1/pair", body={"token": token, "public_key": public_key, "name": name})
        return _expect(answer, device_id=str, user=str)

    async def device(self) -> dict:
        return _expect(await self._call("GET", "/v1/device", signed=True), device_id=str, user=str)

    async def pending(self, wait: int = 0) -> list[dict]:
        query = {"wait": str(wait)} if wait else None
        answer = await self._call("GET", "/v1/pending", query=query, signed=True,
                                  timeout=REQUEST_TIMEOUT + wait)
        items = answer.get("pending")
        if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("id"), str)
                                                  for i in items):
            raise Refused(f"the server at {self._where} gave an answer this authenticator does not understand")
        return items

    async def answer(self, push_id: str, decision: str, number: int | None) -> str:
        assert self._key is not None and self._device_id is not None
        now = int(self._clock())
        signature = crypto.sign(self._key, crypto.answer_message(push_id, decision, number, now))
        body = {"decision": decision, "number": number, "time": now, "signature": signature}
        path = "/v1/approvals/" + _path_segment(push_id)
        answer = await self._call("POST", path, body=body, headers={"X-Device-Id": self._device_id})
        return str(_expect(answer, status=str)["status"])

    # --- the wire --------------------------------------------------------
    async def _call(self, method: str, path: str, *, query: dict | None = None, body: dict | None = None,
                    signed: bool = False, headers: dict[str, str] | None = None,
                    timeout: float = REQUEST_TIMEOUT) -> dict:
        from twisted.internet.defer import CancelledError, Deferred, TimeoutError as DeferredTimeout
        from twisted.web.http_headers import Headers

        from radius_mfa.delivery.http import BytesProducer

        full_path = self._base_path + path
        sent = Headers({"Accept": ["application/json"], "User-Agent": [PROG]})
        for name, value in (headers or {}).items():
            sent.addRawHeader(name, value)
        if signed:
            assert self._key is not None and self._device_id is not None
            now = int(self._clock())
            signature = crypto.sign(self._key, crypto.request_message(method, full_path, now, self._device_id))
            sent.addRawHeader("X-Device-Id", self._device_id)
            sent.addRawHeader("X-Time", str(now))
            sent.addRawHeader("X-Signature", signature)
        producer = None
        if body is not None:
            sent.addRawHeader("Content-Type", "application/json")
            producer = BytesProducer(json.dumps(body).encode("utf-8"))
        url = urlsplit(self._base)._replace(path=full_path, query=urlencode(query or {})).geturl()
        try:
            url_bytes = url.encode("ascii")
        except UnicodeEncodeError:
            raise BadUsage(f"the device API's URL must be ASCII: {url}") from None

        async def exchange() -> tuple[int, bytes]:
            response = await self._agent.request(method.encode("ascii"), url_bytes, sent, producer)
            body = _body_reader()
            response.deliverBody(body)
            return response.code, await body.done

        self._policy.mismatch = None
        attempt = Deferred.fromCoroutine(exchange())
        attempt.addTimeout(timeout, self._reactor)
        try:
            status, data = await attempt
        except (DeferredTimeout, CancelledError):
            raise Refused(f"no answer from {self._where} within {timeout:g} s") from None
        except Exception as exc:
            raise Refused(self._describe(exc)) from None
        return self._decode(status, data)

    def _decode(self, status: int, data: bytes) -> dict:
        try:
            answer = json.loads(data.decode("utf-8")) if data else {}
        except (UnicodeDecodeError, ValueError):
            answer = None
        if 200 <= status < 300:
            if not isinstance(answer, dict):
                raise Refused(f"the server at {self._where} gave an answer this authenticator does not understand")
            return answer
        error = answer.get("error") if isinstance(answer, dict) else None
        if not isinstance(error, str) or not error.strip():
            error = f"the server at {self._where} answered HTTP {status}"
        raise ApiError(status, one_line(error))

    def _describe(self, exc: Exception) -> str:
        """What went wrong on the way, in one line."""
        from OpenSSL import SSL
        from twisted.internet import error

        if self._policy.mismatch is not None:
            return MISMATCH
        reasons = [getattr(r, "value", r) for r in getattr(exc, "reasons", None) or []]
        inner = reasons[0] if reasons else exc
        if isinstance(inner, error.ConnectionRefusedError):
            return f"cannot reach {self._where}: connection refused (is the server running?)"
        if isinstance(inner, error.DNSLookupError):
            return f"cannot reach {self._where}: the host name does not resolve"
        if isinstance(inner, (error.TimeoutError, error.TCPTimedOutError)):
            return f"cannot reach {self._where}: timed out"
        if isinstance(inner, error.ConnectError):
            why = inner.osError or inner.__class__.__name__
            return f"cannot reach {self._where}: {why}"
        if isinstance(inner, SSL.Error):
            return f"the TLS handshake with {self._where} failed (is it the device API?)"
        return f"the connection to {self._where} failed ({type(inner).__name__})"


def _body_reader():
    """A protocol that collects an answer's body (at most _MAX_BODY bytes;
    the rest is dropped, and the JSON then fails to parse); ``.done`` fires
    with the bytes."""
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import Protocol
    from twisted.web.client import ResponseDone
    from twisted.web.http import PotentialDataLoss

    class BodyReader(Protocol):
        def __init__(self) -> None:
            self.done: Deferred = Deferred()
            self._parts: list[bytes] = []
            self._size = 0

        def dataReceived(self, data: bytes) -> None:
            if self._size < _MAX_BODY:
                self._parts.append(data[: _MAX_BODY - self._size])
            self._size += len(data)

        def connectionLost(self, reason) -> None:
            if reason.check(ResponseDone, PotentialDataLoss):
                self.done.callback(b"".join(self._parts))
            else:
                self.done.errback(reason)

    return BodyReader()


def _path_segment(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def _expect(answer: dict, **fields: type) -> dict:
    """The answer when each field has its type; else a Refused."""
    for name, kind in fields.items():
        if not isinstance(answer.get(name), kind):
            raise Refused("the server gave an answer this authenticator does not understand")
    return answer
