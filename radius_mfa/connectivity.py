"""`radius-mfa check-connectivity`: every upstream the configuration names,
contacted once, without signing anyone in.

* each upstream RADIUS server (``primary.radius.servers``): a Status-Server
  (RFC 5997); when none answers, an Access-Request for a made-up user with a
  random password, whose verified Access-Reject proves the shared secret.
  The probe goes out twice, with and without a Message-Authenticator: a
  server with another secret drops the first silently but answers the second,
  and that answer's Response Authenticator (RFC 2865 section 3) then fails to
  verify: "wrong shared secret", not "no answer";
* each LDAP server (``primary.ldap.servers``): TCP, the TLS or StartTLS
  handshake with the certificate checked, and the service account's bind
  (``bind_dn``; an anonymous bind without one), through the ldap backend's
  own connection code;
* each SMS, voice and email provider and push notifier: a TCP connection and,
  for https, SMTPS and STARTTLS, the TLS handshake with the certificate
  checked against the system's CAs, as the sender checks it. Nothing is sent:
  an SMTP session ends at QUIT before any MAIL FROM;
* the store: one query.

The checks are blocking and short, so each runs in its own thread, all at
once, each bounded by ``timeout`` seconds: a dead server costs one timeout,
not one per server. Reasons never hold a secret, a password or a store URL's
password.
"""

from __future__ import annotations

import os
import secrets
import smtplib
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable
from urllib.parse import urlsplit

from radius_mfa.errors import RadiusMfaError, RemoteProtocolError

DEFAULT_TIMEOUT = 10.0
PROBE_USER_PREFIX = "radius-mfa-connectivity-check-"
_REASON_MAX = 200


@dataclass(frozen=True)
class Check:
    """One upstream to contact: ``kind`` (radius, ldap, sms, voice, email,
    notify, store), ``name`` (its address or the provider's name) and the
    blocking function that contacts it within the seconds it is given,
    returning what it found (OK) or raising :class:`CheckFailed`."""

    kind: str
    name: str
    run: Callable[[float], str]


@dataclass(frozen=True)
class Outcome:
    check: Check
    ok: bool
    detail: str
    ms: int

    def line(self) -> str:
        status = "OK" if self.ok else "FAIL"
        return f"{status:<4} {self.check.kind} {self.check.name}: {self.detail} ({self.ms} ms)"


class CheckFailed(Exception):
    """The upstream did not answer as it should; the message says why."""


# --------------------------------------------------------------------------
# Running the checks
# --------------------------------------------------------------------------


def run_checks(checks: Iterable[Check], timeout: float = DEFAULT_TIMEOUT) -> list[Outcome]:
    """Every check at once, each in a daemon thread given ``timeout``
    seconds; one still running a second after that is reported as timed out
    (its thread is left to end on its own socket timeout)."""
    checks = list(checks)
    results: list[Outcome | None] = [None] * len(checks)
    threads = []
    for index, check in enumerate(checks):
        thread = threading.Thread(target=_run_one, args=(check, timeout, results, index),
                                  name=f"check-{check.kind}", daemon=True)
        thread.start()
        threads.append(thread)
    deadline = time.monotonic() + timeout + 1.0
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [result if result is not None
            else Outcome(check, False, f"no answer within {timeout:g} s", int(timeout * 1000))
            for check, result in zip(checks, results)]


def _run_one(check: Check, timeout: float, results: list, index: int) -> None:
    started = time.monotonic()
    try:
        detail, ok = check.run(timeout), True
    except CheckFailed as exc:
        detail, ok = str(exc), False
    except Exception as exc:            # noqa: BLE001 - one line per check, never a traceback
        detail, ok = describe(exc), False
    results[index] = Outcome(check, ok, detail[:_REASON_MAX], int((time.monotonic() - started) * 1000))


def describe(exc: BaseException) -> str:
    """One line for a network error, without Python's decoration."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the name: {exc.strerror or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def checks_for(config) -> list[Check]:
    """What ``config`` names, in the order of the file."""
    checks: list[Check] = []
    primary = config.primary
    if primary.backend == "radius":
        for server in primary.radius.servers:
            checks.append(Check("radius", _host_port(server.host, server.port),
                                _bind(radius_check, server, primary.radius.timeout)))
    if primary.backend == "ldap":
        for url in primary.ldap.servers:
            checks.append(Check("ldap", url, _bind(ldap_check, primary.ldap, url)))
    for channel in ("sms", "voice", "email"):
        section = getattr(config.factors, channel)
        for provider in (section.providers if section is not None else ()):
            checks.append(Check(channel, provider.name, _bind(provider_check, provider)))
    push = config.factors.push
    for notifier in (push.notify if push is not None else ()):
        checks.append(Check("notify", notifier.name, _bind(url_check, notifier.url)))
    checks.append(Check("store", store_label(config.store),
                        _bind(store_check, config.store, config.store_key_file)))
    return checks


def _bind(function, *args) -> Callable[[float], str]:
    return lambda seconds: function(*args, seconds)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --------------------------------------------------------------------------
# RADIUS
# --------------------------------------------------------------------------


def radius_check(server, try_timeout: float, seconds: float) -> str:
    """Status-Server first; then the Access-Request probe (see the module)."""
    from radius_mfa.radius import codec

    deadline = time.monotonic() + seconds
    family, address = _udp_address(server.host, server.port)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        status_id = secrets.randbelow(256)
        status_auth = os.urandom(codec.AUTHENTICATOR_LENGTH)
        packet = codec.build_access_request(server.secret, None, id=status_id,
                                            authenticator=status_auth, code=codec.STATUS_SERVER)
        wait = min(try_timeout, seconds / 2)
        answers = _exchange(sock, [packet], time.monotonic() + wait)
        if answers:
            response = _verified(answers[0], server.secret, status_auth,
                                 server.require_message_authenticator)
            if response.code != codec.ACCESS_ACCEPT:
                raise CheckFailed(f"Status-Server answered with code {response.code}, not Access-Accept")
            return "answered Status-Server (secret verified)"

        # No Status-Server: an Access-Request for nobody, with and without a Message-Authenticator.
        user = PROBE_USER_PREFIX + secrets.token_hex(4)
        password = secrets.token_urlsafe(24)
        probes = {}
        packets = []
        for with_ma in (True, False):
            ident = (status_id + len(probes) + 1) % 256
            authenticator = os.urandom(codec.AUTHENTICATOR_LENGTH)
            packets.append(codec.build_access_request(
                server.secret, user, password, id=ident, authenticator=authenticator,
                message_authenticator=with_ma, attributes=(("NAS-Identifier", "radius-mfa"),)))
            probes[ident] = (authenticator, with_ma)
        answers = _exchange(sock, packets, deadline, ids=set(probes), want=1)
        if not answers:
            raise CheckFailed(f"no answer to Status-Server or to an Access-Request within {seconds:g} s "
                              "(down, filtered, not configured for this address as a client, "
                              "or a wrong shared secret where a Message-Authenticator is required)")
        reply = answers[0]
        authenticator, with_ma = probes[reply[1]]
        response = _verified(reply, server.secret, authenticator,
                             server.require_message_authenticator and with_ma)
        if response.code == codec.ACCESS_REJECT:
            return "no Status-Server; an Access-Request for a made-up user was rejected (secret verified)"
        if response.code == codec.ACCESS_CHALLENGE:
            return "no Status-Server; an Access-Request for a made-up user was challenged (secret verified)"
        if response.code == codec.ACCESS_ACCEPT:
            raise CheckFailed("it accepted a made-up user with a random password: check its policy")
        raise CheckFailed(f"unexpected reply code {response.code}")


def _udp_address(host: str, port: int):
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise CheckFailed(f"cannot resolve {host}")
    family, _, _, _, address = infos[0]
    return family, address


def _exchange(sock: socket.socket, packets: list[bytes], deadline: float, *,
              ids: set[int] | None = None, want: int = 1) -> list[bytes]:
    """Send ``packets``, collect replies whose identifier is one of ours until
    ``want`` came or ``deadline`` passed. ICMP port unreachable (a closed
    port) surfaces as ConnectionRefusedError."""
    ids = {packet[1] for packet in packets} if ids is None else ids
    for packet in packets:
        sock.send(packet)
    replies: list[bytes] = []
    while len(replies) < want:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            data = sock.recv(4096)
        except (socket.timeout, TimeoutError):
            break
        except ConnectionRefusedError:
            raise CheckFailed("port unreachable (nothing listens there)") from None
        if len(data) >= 20 and data[1] in ids:
            replies.append(data)
    return replies


def _verified(data: bytes, secret: bytes, request_authenticator: bytes, require_ma: bool):
    from radius_mfa.radius import codec

    try:
        return codec.decode_response(data, secret, request_authenticator,
                                     require_message_authenticator=require_ma)
    except RemoteProtocolError as exc:
        if "Authenticator" in str(exc) and "without" not in str(exc):
            raise CheckFailed(f"wrong shared secret: the reply's {str(exc).removeprefix('bad ')} "
                              "does not verify") from None
        raise CheckFailed(f"a reply that does not verify: {exc}") from None


# --------------------------------------------------------------------------
# LDAP
# --------------------------------------------------------------------------


def ldap_check(config, url: str, seconds: float) -> str:
    """Connect, TLS, bind as the service account: the backend's own steps."""
    from radius_mfa.primary import ldap

    # The backend's connection step alone: no service pool, and no start-up
    # log line about cleartext (this check's own line says "no TLS").
    try:
        ldap._check_config(config)
        backend = ldap.LdapBackend.__new__(ldap.LdapBackend)
        backend._config = config
        backend._tls_context = ldap.LdapBackend._make_tls_context(config)
    except ValueError as exc:
        raise CheckFailed(str(exc)) from None
    target = ldap._parse_url(url)
    try:
        conn = backend._connect(target, config.bind_dn, config.bind_password,
                                min(seconds, config.timeout))
    except ldap._Unusable as exc:
        raise CheckFailed(str(exc)) from None
    except ldap._Refused as exc:
        who = "the service account's bind" if config.bind_dn else "an anonymous bind"
        raise CheckFailed(f"{who} was refused: {exc.description}") from None
    ldap._close(conn)
    secured = ("TLS" if target.use_ssl else "StartTLS" if config.starttls
               else "no TLS: passwords cross the network in clear")
    bound = f"bound as {config.bind_dn}" if config.bind_dn else "anonymous bind"
    return f"{secured}, {bound}"


# --------------------------------------------------------------------------
# Delivery providers and notifiers: TCP and TLS, nothing sent
# --------------------------------------------------------------------------


def provider_check(provider, seconds: float) -> str:
    from radius_mfa.config import HttpProviderConfig, SmtpProviderConfig, TwilioProviderConfig

    seconds = min(seconds, provider.timeout) if provider.timeout else seconds
    if isinstance(provider, SmtpProviderConfig):
        return smtp_check(provider, seconds)
    if isinstance(provider, TwilioProviderConfig):
        return url_check(provider.url or "https://api.twilio.com", seconds)
    if isinstance(provider, HttpProviderConfig):
        return url_check(provider.url, seconds)
    raise CheckFailed(f"unknown provider type {provider.type}")


def url_check(url: str, seconds: float) -> str:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise CheckFailed("the URL is not http:// or https://")
    host = parts.hostname
    port = parts.port or (443 if scheme == "https" else 80)
    with socket.create_connection((host, port), timeout=seconds) as sock:
        if scheme == "http":
            return f"TCP connected to {_host_port(host, port)} (http: no TLS)"
        with ssl.create_default_context().wrap_socket(sock, server_hostname=host) as tls:
            return f"TLS handshake with {_host_port(host, port)} ({tls.version()})"


def smtp_check(provider, seconds: float) -> str:
    host = provider.host
    port = provider.port or (465 if provider.tls else 587 if provider.starttls else 25)
    where = _host_port(host, port)
    context = ssl.create_default_context()
    try:
        if provider.tls:
            session = smtplib.SMTP_SSL(host, port, timeout=seconds, context=context)
        else:
            session = smtplib.SMTP(host, port, timeout=seconds)
        try:
            session.ehlo()
            if provider.starttls:
                if not session.has_extn("starttls"):
                    raise CheckFailed(f"{where} does not offer STARTTLS")
                session.starttls(context=context)
                session.ehlo()
            secured = session.sock.version() if isinstance(session.sock, ssl.SSLSocket) else None
        finally:
            try:
                session.quit()
            except (smtplib.SMTPException, OSError):
                session.close()
    except smtplib.SMTPException as exc:
        raise CheckFailed(f"SMTP: {describe(exc)}") from None
    how = "STARTTLS" if provider.starttls else "TLS" if provider.tls else "plain, no TLS"
    return f"SMTP greeting from {where} ({how}{', ' + secured if secured else ''}); nothing sent"


# --------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------


def store_label(url: str) -> str:
    """The store as a line may show it: never its password."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return "(not a URL)"
    if scheme.lower() == "sqlite":
        return os.path.abspath(rest[1:]) if rest.startswith("/") else rest
    from radius_mfa.store.postgres import redacted_label

    return redacted_label(url)


def store_check(url: str, key_file: str, seconds: float) -> str:
    """One query, and nothing created: a SQLite file that does not exist yet
    is fine when its directory can hold it (serve and the admin commands make
    it); the key file is never made here."""
    scheme = url.partition("://")[0].lower()
    if scheme == "sqlite":
        return _sqlite_check(url)
    if scheme.startswith("postgres"):
        return _postgres_check(url, seconds)
    raise CheckFailed("not a store URL: sqlite:////path/to/file.db or postgresql://user@host/database")


def _sqlite_check(url: str) -> str:
    import sqlite3

    path = os.path.abspath(url[len("sqlite:///"):])
    if not os.path.exists(path):
        directory = os.path.dirname(path)
        probe = directory
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        if not os.access(probe, os.W_OK | os.X_OK):
            raise CheckFailed(f"{path} does not exist and {probe} is not writable")
        return "not created yet (made at first use)"
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
        try:
            tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise CheckFailed(f"{path}: {exc}") from None
    return f"one query answered ({tables} tables)"


def _postgres_check(url: str, seconds: float) -> str:
    try:
        import psycopg
    except ImportError:
        raise CheckFailed("the PostgreSQL store needs psycopg 3") from None
    from radius_mfa.store.postgres import _libpq_url

    try:
        conninfo = _libpq_url(url)
        with psycopg.connect(conninfo, connect_timeout=max(1, int(seconds))) as conn:
            conn.execute("SELECT 1").fetchone()
    except psycopg.Error as exc:
        # libpq's messages name host and user, never the password
        message = str(exc).strip().splitlines()
        raise CheckFailed(message[0] if message else type(exc).__name__) from None
    except RadiusMfaError as exc:
        raise CheckFailed(str(exc)) from None
    return "one query answered"
