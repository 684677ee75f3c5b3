"""The device API: HTTPS + JSON between the server and paired push devices.

The contract (paths, statuses, error sentences) is docs/device-api.yaml, a
copy of which is served at ``GET /v1/openapi.yaml``:

- ``POST /v1/pair``: a device pairs with a one-time token (the token is the
  credential; only its digest is looked up). Attempts are rate-limited per
  source address (:class:`PairingLimiter`, 429 with ``Retry-After``), and a
  token is read first: only one that exists and has not expired reaches the
  store's write transaction, so a flood of wrong tokens takes no write lock.
- ``GET /v1/pending?wait=S`` and ``GET /v1/device``: signed requests
  (``X-Device-Id``, ``X-Time``, ``X-Signature`` over
  :func:`radius_mfa.push.crypto.request_message`).
- ``POST /v1/approvals/{id}``: an answer, signed in its body over
  :func:`radius_mfa.push.crypto.answer_message`.

This module is the HTTP side only: the answer logic lives in
:class:`radius_mfa.push.hub.PushHub` and the records in the store. Every
request is handled by one coroutine (``ensureDeferred`` at the edge, the
twisted.web ``NOT_DONE_YET`` protocol), ends in one JSON answer and one
``push.api`` log line (method, path, status, device id, duration), and never
shows a traceback to the client. The one exception to the line: of a run of
429s to one source, only the first is logged (with its ``source``). Nothing secret is logged: no pairing token,
signature or key.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import secrets
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import unquote, urlsplit

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from radius_mfa.model import Device
from radius_mfa.push import crypto
from radius_mfa.push.hub import MAX_LONG_POLL, PushRefused

log = structlog.get_logger("radius_mfa.push.api")

#: Largest request body taken (bytes); a larger one is a 413.
MAX_BODY = 16 * 1024
#: Longest device name kept (what the device calls itself when pairing).
MAX_NAME = 64
DEFAULT_NAME = "device"
#: Seconds an HTTP connection may stay idle (above the longest long-poll).
IDLE_TIMEOUT = 120
#: The status logged for a request whose client went away before the answer.
CLIENT_GONE = 499

OPENAPI_FILE = Path(__file__).with_name("device-api.yaml")

# The contract's error sentences.
UNSIGNED = "unsigned request"
NOT_PAIRED = "this device is not paired with an active account"
BAD_SIGNATURE = "bad signature"
CLOCK_OFF = (f"the request's time is more than {crypto.MAX_SKEW:g} s off the server's clock; "
             "check this device's clock")
PAIRING_INVALID = ("this pairing link is not valid: it was used already or has expired; "
                   "ask for a new one")
PAIRING_LIMITED = ("too many pairing attempts from this address; "
                   "try again after the Retry-After seconds")
INTERNAL = "internal error"

_INTEGER = re.compile(r"-?[0-9]{1,15}")
_MAX_TOKEN = 512              # longer than any token `device pair` makes
_MAX_DEVICE_ID = 64
#: Seconds between two records of a device's last signed request.
TOUCH_SECONDS = 60.0
#: Pairing attempts a source address may make per PAIRING_PERIOD seconds.
PAIRING_LIMIT = 10
PAIRING_PERIOD = 60.0
#: Source addresses the pairing limiter remembers at most; beyond, new sources
#: share one bucket (a flood of addresses neither grows memory nor escapes).
PAIRING_SOURCES = 10_000


class ApiError(Exception):
    """A refusal with its HTTP status and one clear sentence for the device."""

    def __init__(self, status: int, message: str, *, allow: tuple[str, ...] = (),
                 retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.allow = allow
        self.retry_after = retry_after


@dataclass
class _Bucket:
    tokens: float
    at: float
    refused: bool = False      # refused since its last allowed attempt


class PairingLimiter:
    """At most ``limit`` pairing attempts per ``period`` seconds per source
    (a token bucket: a burst of ``limit``, then one every period/limit s).

    Sources are IPv4 addresses and IPv6 /64 prefixes (one host's share of a
    network; an IPv4-mapped address counts as IPv4). At most ``max_sources``
    are remembered: a source idle for a whole period is forgotten (its bucket
    would be full again), and when the table is full of live sources, every
    new one shares a single overflow bucket, so a flood from many addresses
    costs bounded memory and still gets ``limit`` attempts per period in all.
    Pure logic: ``clock()`` is epoch seconds, nothing else is read.
    """

    def __init__(self, clock: Callable[[], float], *, limit: int = PAIRING_LIMIT,
                 period: float = PAIRING_PERIOD, max_sources: int = PAIRING_SOURCES):
        if limit < 1 or period <= 0 or max_sources < 1:
            raise ValueError("limit, period and max_sources must be positive")
        self.clock = clock
        self.limit = limit
        self.period = float(period)
        self.max_sources = max_sources
        self._rate = limit / self.period
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()   # oldest touched first
        self._overflow: _Bucket | None = None

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, address: str) -> tuple[float, bool]:
        """Count one attempt from ``address``: ``(0.0, False)`` when it may
        go on; else ``(seconds until the next attempt may, first)`` where
        ``first`` says this is the first refusal since the source's last
        allowed attempt (log that one, not the flood behind it)."""
        now = self.clock()
        self._forget_idle(now)
        key = source_key(address)
        bucket = self._buckets.get(key)
        if bucket is not None:
            self._buckets.move_to_end(key)
        elif len(self._buckets) < self.max_sources:
            bucket = self._buckets[key] = _Bucket(tokens=float(self.limit), at=now)
        else:
            if self._overflow is None:
                self._overflow = _Bucket(tokens=float(self.limit), at=now)
            bucket = self._overflow
        bucket.tokens = min(float(self.limit),
                            bucket.tokens + max(0.0, now - bucket.at) * self._rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            bucket.refused = False
            return 0.0, False
        first = not bucket.refused
        bucket.refused = True
        return (1.0 - bucket.tokens) / self._rate, first

    def _forget_idle(self, now: float) -> None:
        # the table is in touch order: stop at the first source still refilling
        while self._buckets:
            key, bucket = next(iter(self._buckets.items()))
            if now - bucket.at < self.period:
                break
            del self._buckets[key]


def source_key(address: str) -> str:
    """What the pairing limit counts by: the IPv4 address, or the /64 of an
    IPv6 address; anything else (a UNIX socket) as itself."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _client_host(request: Request) -> str:
    address = request.getClientAddress()
    return str(getattr(address, "host", None) or address)


@dataclass
class _Call:
    """One request being handled: what the log line needs, and whether the
    client is still there."""
    request: Request
    method: str
    path: str
    started: float
    device: str | None = None
    user: str | None = None
    source: str | None = None     # logged only with a 429 (an address is no secret)
    quiet: bool = False           # a refusal repeating the one logged: no line
    gone: bool = False
    _on_gone: list[Callable[[], None]] = field(default_factory=list)

    def lost(self, _failure: Any) -> None:
        """notifyFinish's errback: the connection closed before the answer."""
        self.gone = True
        for callback in self._on_gone:
            callback()
        self._on_gone.clear()

    def cancel_when_gone(self, d: defer.Deferred) -> defer.Deferred:
        """Cancel ``d`` (a long-poll) if the client disconnects meanwhile."""
        if self.gone:
            d.cancel()
        else:
            self._on_gone.append(d.cancel)
            d.addBoth(self._forget, d.cancel)
        return d

    def _forget(self, result: Any, callback: Callable[[], None]) -> Any:
        if callback in self._on_gone:
            self._on_gone.remove(callback)
        return result


Handler = Callable[[_Call], Awaitable[tuple[int, Any]]]


class DeviceApi(Resource):
    """The resource behind the device API (mount it as a Site's root).

    ``hub``: the PushHub; ``store``: the AsyncStore; ``clock()``: epoch
    seconds (the signed times are checked against it); ``server_name``: what
    a paired device is told it paired with (``server.name``);
    ``pairing_limiter``: the per-address limit on ``POST /v1/pair`` (default:
    PAIRING_LIMIT per PAIRING_PERIOD on ``clock``).
    """
    isLeaf = True

    def __init__(self, hub, store, clock: Callable[[], float], server_name: str, *,
                 pairing_limiter: PairingLimiter | None = None):
        super().__init__()
        self.hub = hub
        self.store = store
        self.clock = clock
        self.server_name = server_name
        self.pairing_limiter = pairing_limiter or PairingLimiter(clock)
        self._openapi: bytes | None = None
        # exact paths → {method: handler}; /v1/approvals/{id} is matched apart
        self._routes: dict[str, dict[str, Handler]] = {
            "/v1/pair": {"POST": self._pair},
            "/v1/pending": {"GET": self._pending},
            "/v1/device": {"GET": self._device},
            "/v1/openapi.yaml": {"GET": self._openapi_document},
        }

    # --- twisted.web ------------------------------------------------------------
    def render(self, request: Request) -> int:
        method = (request.method or b"").decode("ascii", "replace").upper()
        path = (request.path or b"").decode("ascii", "replace")
        call = _Call(request=request, method=method, path=path, started=time.monotonic())
        request.notifyFinish().addErrback(call.lost)
        request.setHeader(b"server", b"radius-mfa")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        defer.ensureDeferred(self._handle(call)).addErrback(
            lambda failure: log.error("push.api_unhandled", path=path,
                                      error=failure.getErrorMessage()))
        return NOT_DONE_YET

    async def _handle(self, call: _Call) -> None:
        """Route, run, answer, log: whatever happens, one answer and one line."""
        exc_info = None
        headers: dict[bytes, bytes] = {}
        content_type = b"application/json"
        try:
            handler = self._route(call)
            status, body = await handler(call)
            if isinstance(body, bytes):
                content_type = b"application/yaml"
                payload = body
            else:
                payload = _json(body)
        except ApiError as refused:
            status, payload = refused.status, _json({"error": refused.message})
            if refused.allow:
                headers[b"allow"] = ", ".join(refused.allow).encode("ascii")
            if refused.retry_after is not None:
                headers[b"retry-after"] = str(refused.retry_after).encode("ascii")
        except Exception as exc:
            if isinstance(exc, defer.CancelledError) and call.gone:
                status, payload = CLIENT_GONE, b""      # the long-poll of a client that left
            else:
                exc_info = sys.exc_info()
                status, payload = 500, _json({"error": INTERNAL})
        if call.gone and status != CLIENT_GONE:
            status = CLIENT_GONE
        self._log(call, status, exc_info)
        if status == CLIENT_GONE or call.request.finished:
            return
        request = call.request
        request.setResponseCode(status)
        request.setHeader(b"content-type", content_type)
        for name, value in headers.items():
            request.setHeader(name, value)
        request.setHeader(b"content-length", str(len(payload)).encode("ascii"))
        request.write(payload)
        request.finish()

    def _log(self, call: _Call, status: int, exc_info: Any) -> None:
        if call.quiet and exc_info is None:
            return
        fields = {"method": call.method, "path": call.path, "status": status,
                  "device": call.device, "user": call.user,
                  "duration_ms": round((time.monotonic() - call.started) * 1000.0, 3)}
        if call.source is not None:
            fields["source"] = call.source
        if exc_info is not None:
            log.error("push.api", **fields, exc_info=exc_info)
        else:
            log.info("push.api", **fields)

    def _route(self, call: _Call) -> Handler:
        methods = self._routes.get(call.path)
        if methods is None and call.path.startswith("/v1/approvals/"):
            methods = {"POST": self._answer}
        if methods is None:
            raise ApiError(404, "no such endpoint: see /v1/openapi.yaml")
        handler = methods.get(call.method)
        if handler is None:
            allowed = tuple(sorted(methods))
            raise ApiError(405, f"method not allowed: use {' or '.join(allowed)}", allow=allowed)
        return handler

    # --- POST /v1/pair ---------------------------------------------------------------
    async def _pair(self, call: _Call) -> tuple[int, Any]:
        source = _client_host(call.request)
        wait, first = self.pairing_limiter.take(source)
        if wait > 0:
            call.source, call.quiet = source, not first
            raise ApiError(429, PAIRING_LIMITED, retry_after=max(1, math.ceil(round(wait, 3))))
        body = _json_body(call.request)
        token = body.get("token")
        if not isinstance(token, str) or not token:
            raise ApiError(400, "token is missing: it is the token= of the pairing URL")
        public_key = body.get("public_key")
        if not crypto.valid_public_key(public_key):
            raise ApiError(400, "public_key is not a valid Ed25519 public key "
                                "(32 bytes, standard base64)")
        name = _device_name(body.get("name"))
        if len(token) > _MAX_TOKEN:
            raise ApiError(403, PAIRING_INVALID)
        digest = crypto.token_digest(token)
        now = self.clock()
        # read first: an unknown, used or expired token never takes the write
        # lock; complete_pairing still decides (two racing callers: one pairs)
        pairing = await self.store.get_pairing(digest)
        if pairing is None or pairing.expires <= now:
            raise ApiError(403, PAIRING_INVALID)
        device = Device(id="d" + secrets.token_hex(8), user="", name=name,
                        public_key=public_key, created=now)   # type: ignore[arg-type]
        paired = await self.store.complete_pairing(digest, device, now)
        if paired is None:
            raise ApiError(403, PAIRING_INVALID)
        call.device, call.user = paired.id, paired.user
        return 201, {"device_id": paired.id, "user": paired.user, "server": self.server_name}

    # --- signed requests ---------------------------------------------------------------
    async def _signed_device(self, call: _Call) -> Device:
        """The device of a signed request (headers), or ApiError 401/400."""
        request = call.request
        device_id = _header(request, b"x-device-id")
        signed_time = _header(request, b"x-time")
        signature = _header(request, b"x-signature")
        if not device_id or not signed_time or not signature:
            raise ApiError(401, UNSIGNED)
        if not _INTEGER.fullmatch(signed_time):
            raise ApiError(400, "X-Time must be Unix seconds, an integer")
        when = int(signed_time)
        message = crypto.request_message(call.method, call.path, when, device_id)
        return await self._check(call, device_id, signature, message, when)

    async def _check(self, call: _Call, device_id: str, signature: str, message: bytes,
                     when: int) -> Device:
        """Device known, signature good, time close to ours: the device (touched)."""
        if len(device_id) > _MAX_DEVICE_ID:
            raise ApiError(401, NOT_PAIRED)
        device = await self.store.get_device(device_id)
        if device is None:
            call.device = device_id
            raise ApiError(401, NOT_PAIRED)
        call.device, call.user = device.id, device.user
        if not crypto.verify(device.public_key, signature, message):
            raise ApiError(401, BAD_SIGNATURE)
        now = self.clock()
        if abs(when - now) > crypto.MAX_SKEW:
            raise ApiError(401, CLOCK_OFF)
        if device.last_seen is None or now - device.last_seen >= TOUCH_SECONDS:
            # last seen to the minute: not one write per long-poll and answer
            await self.store.touch_device(device.id, now)
        return device

    # --- GET /v1/pending ---------------------------------------------------------------
    async def _pending(self, call: _Call) -> tuple[int, Any]:
        device = await self._signed_device(call)
        wait = _wait_seconds(call.request)
        if wait > 0:
            d = defer.Deferred.fromCoroutine(self.hub.pending_for(device, wait))
            pushes = await call.cancel_when_gone(d)
        else:
            pushes = await self.hub.pending_for(device, 0.0)
        return 200, {"pending": [push.public() for push in pushes]}

    # --- GET /v1/device ----------------------------------------------------------------
    async def _device(self, call: _Call) -> tuple[int, Any]:
        device = await self._signed_device(call)
        return 200, {"device_id": device.id, "user": device.user, "name": device.name}

    # --- POST /v1/approvals/{id} ---------------------------------------------------------
    async def _answer(self, call: _Call) -> tuple[int, Any]:
        rest = call.path[len("/v1/approvals/"):]
        if not rest or "/" in rest:
            raise ApiError(404, "no such endpoint: see /v1/openapi.yaml")
        push_id = unquote(rest)
        body = _json_body(call.request)
        device_id = _header(call.request, b"x-device-id")
        signature = body.get("signature")
        if not device_id or not isinstance(signature, str) or not signature:
            raise ApiError(401, UNSIGNED)
        decision = body.get("decision")
        if decision not in crypto.DECISIONS:
            raise ApiError(400, "decision must be approve, deny or fraud")
        number = body.get("number")
        if number is not None and not _is_int(number):
            raise ApiError(400, "number must be an integer or null")
        when = body.get("time")
        if not _is_int(when):
            raise ApiError(400, "time must be Unix seconds, an integer")
        message = crypto.answer_message(push_id, decision, number, when)
        device = await self._check(call, device_id, signature, message, when)
        try:
            answered = await self.hub.answer(push_id, device, decision, number)
        except PushRefused as refused:
            raise ApiError(refused.status, refused.message) from None
        return 200, {"status": answered.status}

    # --- GET /v1/openapi.yaml ------------------------------------------------------------
    async def _openapi_document(self, call: _Call) -> tuple[int, Any]:
        if self._openapi is None:
            self._openapi = OPENAPI_FILE.read_bytes()
        return 200, self._openapi


# --- request parsing ------------------------------------------------------------------
def _json(value: Any) -> bytes:
    return (json.dumps(value, separators=(",", ":")) + "\n").encode("utf-8")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _header(request: Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    if value is None:
        return None
    return value.strip() if isinstance(value, str) else value.decode("latin-1").strip()


def _read_body(request: Request) -> bytes:
    """At most MAX_BODY bytes of the body; ApiError 413 beyond."""
    if getattr(request, "body_too_large", False):
        raise ApiError(413, f"the request body is larger than {MAX_BODY} bytes")
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    data = content.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise ApiError(413, f"the request body is larger than {MAX_BODY} bytes")
    return data


def _json_body(request: Request) -> dict:
    """The body as a JSON object; ApiError 400 / 413."""
    data = _read_body(request)
    try:
        value = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):       # UnicodeDecodeError and JSONDecodeError too
        raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return value


def _device_name(value: Any) -> str:
    if value is None:
        return DEFAULT_NAME
    if not isinstance(value, str):
        raise ApiError(400, "name must be a string")
    name = value.strip()
    if len(name) > MAX_NAME or not name.isprintable():
        raise ApiError(400, f"name must be at most {MAX_NAME} printable characters")
    return name or DEFAULT_NAME


def _wait_seconds(request: Request) -> float:
    values = (request.args or {}).get(b"wait")
    if not values:
        return 0.0
    try:
        wait = float(values[-1].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "wait must be a number of seconds") from None
    if not math.isfinite(wait):
        raise ApiError(400, "wait must be a number of seconds")
    return min(max(wait, 0.0), MAX_LONG_POLL)


# --- serving over TLS --------------------------------------------------------------------
class DeviceApiTlsError(OSError):
    """The device API's certificate or key cannot be made, read or used
    (the message names the file)."""


class _ApiRequest(Request):
    """Keeps at most MAX_BODY bytes of a request body in memory and counts the
    rest, so an oversized upload is answered 413 without being stored."""
    body_too_large = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        self.body_too_large = length is not None and length > MAX_BODY
        self.content = BytesIO()          # never more than MAX_BODY: no temporary file

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > MAX_BODY:
            self.body_too_large = True
            return
        super().handleContentChunk(data)


class _DeviceApiSite(Site):
    """The API writes its own ``push.api`` line per request."""
    noisy = False
    displayTracebacks = False

    def log(self, request) -> None:
        pass


def device_api_site(resource: Resource) -> Site:
    """The Site serving ``resource`` (body limit, no access log, idle timeout)."""
    return _DeviceApiSite(resource, requestFactory=_ApiRequest, parsePOSTFormSubmission=False,
                          timeout=IDLE_TIMEOUT)


def certificate_names(public_url: str | None) -> tuple[str, ...]:
    """The names a generated certificate carries: the host of ``public_url``
    when set, then ``localhost`` and ``127.0.0.1``."""
    names: list[str] = []
    if public_url:
        host = urlsplit(public_url).hostname
        if host:
            names.append(host)
    names += ["localhost", "127.0.0.1"]
    return tuple(dict.fromkeys(names))


def load_tls_options(cert_path: str, key_path: str):
    """A CertificateOptions (TLS 1.2 or later) from PEM files: the certificate
    file may carry its chain after the server's certificate. DeviceApiTlsError
    naming the file that cannot be read, parsed or does not match."""
    from OpenSSL import crypto as openssl
    from twisted.internet.ssl import CertificateOptions, TLSVersion

    cert_pem = _read(cert_path, "certificate")
    key_pem = _read(key_path, "private key")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise DeviceApiTlsError(f"the device API's certificate {cert_path} is not a PEM "
                                "certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise DeviceApiTlsError(f"the device API's private key {key_path} is not an "
                                "unencrypted PEM private key") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if chain[0].public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise DeviceApiTlsError(f"the device API's private key {key_path} does not belong to "
                                f"its certificate {cert_path}")
    if _openssl_takes_cryptography_objects():
        private_key, certs = key, chain
    else:
        private_key = openssl.PKey.from_cryptography_key(key)    # type: ignore[arg-type]
        certs = [openssl.X509.from_cryptography(c) for c in chain]
    return CertificateOptions(privateKey=private_key, certificate=certs[0],
                              extraCertChain=certs[1:], raiseMinimumTo=TLSVersion.TLSv1_2)


def _openssl_takes_cryptography_objects() -> bool:
    """pyOpenSSL 24.3 and later take cryptography's keys and certificates
    (and deprecate their own wrappers)."""
    import OpenSSL

    try:
        major, minor = (int(part) for part in OpenSSL.__version__.split(".")[:2])
    except ValueError:
        return True
    return (major, minor) >= (24, 3)


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise DeviceApiTlsError(f"cannot read the device API's {what} {path}: "
                                f"{exc.strerror or exc}") from None


def listen_device_api(reactor, push_config, resource: Resource) -> IListeningPort:
    """Serve ``resource`` over HTTPS on ``push_config.listen``.

    Makes a self-signed certificate and key (``tls_cert``, ``tls_key``) first
    when the certificate is absent. Raises DeviceApiTlsError (an OSError,
    naming the file) when they cannot be made or read, CannotListenError when
    the address is taken.
    """
    cert_path, key_path = push_config.tls_cert, push_config.tls_key
    try:
        made = crypto.ensure_certificate(cert_path, key_path,
                                         certificate_names(push_config.public_url))
    except OSError as exc:
        raise DeviceApiTlsError(f"cannot create the device API's certificate "
                                f"{cert_path} and key {key_path}: {exc.strerror or exc}") from None
    if made:
        log.info("push.certificate_created", cert_file=cert_path, key_file=key_path,
                 fingerprint=crypto.certificate_fingerprint(cert_path))
    options = load_tls_options(cert_path, key_path)
    listen = push_config.listen
    return reactor.listenSSL(int(listen.port), device_api_site(resource), options,
                             interface=listen.host)
