"""The ``ldap`` backend: the user's password checked by a bind to LDAP or Active Directory.

Two ways to find the user's entry:

* **direct bind** (``user_dn_template``): the user name, escaped for a DN
  (RFC 4514), goes into the template and that DN binds with the password;
* **search-then-bind** (``base_dn`` + ``user_filter``): the service account
  (``bind_dn``, or an anonymous search without one) searches for the one
  entry whose filter matches the user name, escaped for a filter (RFC 4515),
  and that entry's DN binds with the password.

ldap3 is blocking: every network step runs through ``run`` (a thread pool in
the server), never on the reactor. Each step is bounded by ``timeout`` and by
what is left of ``request.deadline``; a server that refuses, times out or
fails TLS is marked down for :data:`DEAD_TIME` seconds and the next one in
the list is tried, so one dead domain controller costs one timeout, not one
per request. Nothing raises out of :meth:`LdapBackend.authenticate`: no
server → ``upstream_down``, a refused bind → ``bad_password`` (or what an
Active Directory sub-code says), a bug → ``error`` with a logged traceback.

The service account's connections are bound once and reused (a small idle
pool; a stale one is replaced on the spot). A user's bind always uses a fresh
connection that is closed at once: a user-bound connection never enters the
pool.

An empty password is never sent: a simple bind with a DN and no password is
an "unauthenticated bind" that many servers (RFC 4513 §5.1.2) accept as
anonymous — a success that proves nothing.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Callable, TypeVar
from urllib.parse import urlsplit

import structlog
from ldap3 import ANONYMOUS, BASE, NONE, SIMPLE, SUBTREE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPCommunicationError, LDAPException
from ldap3.operation.search import parse_filter
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn

from radius_mfa.config import LdapPrimaryConfig
from radius_mfa.primary.base import PrimaryRequest, PrimaryResult
from radius_mfa.verdicts import Reason

log = structlog.get_logger("radius_mfa.primary.ldap")

T = TypeVar("T")
# runs one operation on a connection bound as whoever may read the user's entry
_Reader = Callable[[Callable[[Connection], T]], T]

DEAD_TIME = 30.0            # seconds a failed server is tried only after the others
IDLE_SERVICE_CONNECTIONS = 4   # bound service connections kept for reuse
NESTED_MATCHING_RULE = "1.2.840.113556.1.4.1941"   # AD's LDAP_MATCHING_RULE_IN_CHAIN
# rootDSE supportedCapabilities of Active Directory (LDAP_CAP_ACTIVE_DIRECTORY_OID)
# and AD LDS (LDAP_CAP_ACTIVE_DIRECTORY_ADAM_OID): the servers that know that rule
AD_CAPABILITIES = frozenset({"1.2.840.113556.1.4.800", "1.2.840.113556.1.4.1851"})

# LDAP result codes (RFC 4511 §4.1.9)
SUCCESS = 0
SIZE_LIMIT_EXCEEDED = 4
COMPARE_FALSE = 5
COMPARE_TRUE = 6
STRONGER_AUTH_REQUIRED = 8
CONFIDENTIALITY_REQUIRED = 13
INVALID_CREDENTIALS = 49
BUSY = 51
UNAVAILABLE = 52

# Active Directory explains an invalidCredentials (49) in its diagnostic
# message: "80090308: LdapErr: DSID-…, comment: AcceptSecurityContext error,
# data 775, v4563". The sub-code says why; the reply to the NAS stays the same.
AD_SUBCODE = re.compile(r"\bdata ([0-9a-fA-F]{3,8})\b")
AD_REASONS = {
    "525": Reason.UNKNOWN_USER,     # no such user
    "52e": Reason.BAD_PASSWORD,     # wrong password
    "530": Reason.DISABLED,         # not permitted to log on at this time
    "531": Reason.DISABLED,         # not permitted to log on at this workstation
    "532": Reason.BAD_PASSWORD,     # password expired
    "533": Reason.DISABLED,         # account disabled
    "701": Reason.DISABLED,         # account expired
    "773": Reason.BAD_PASSWORD,     # the user must reset the password
    "775": Reason.LOCKED,           # locked out by the directory
}


def reason_for_refused_bind(result: int, message: str) -> Reason:
    """What a refused bind means, from its result code and diagnostic message."""
    if result != INVALID_CREDENTIALS:
        return Reason.BAD_PASSWORD
    match = AD_SUBCODE.search(message or "")
    if match is None:
        return Reason.BAD_PASSWORD
    return AD_REASONS.get(match.group(1).lower(), Reason.BAD_PASSWORD)


def user_dn(template: str, user_name: str) -> str:
    """The template's ``{user}`` replaced by the name escaped as an RDN value (RFC 4514)."""
    return template.replace("{user}", escape_rdn(user_name))


def user_filter(template: str, user_name: str) -> str:
    """The filter's ``{user}`` replaced by the name escaped as an assertion value (RFC 4515)."""
    return template.replace("{user}", escape_filter_chars(user_name))


# --------------------------------------------------------------------------- failures

class _Down(Exception):
    """No server could be used: all refused, timed out or failed TLS, or time ran out."""


class _Unusable(Exception):
    """This one server could not be used (refused, timed out, TLS failed, busy)."""


class _Refused(Exception):
    """A server answered the bind with a refusal (wrong password, locked, …)."""

    def __init__(self, result: int, description: str, message: str):
        super().__init__(description)
        self.result = result
        self.description = description
        self.message = message


# --------------------------------------------------------------------------- servers

@dataclass(frozen=True)
class _Target:
    url: str
    host: str
    port: int
    use_ssl: bool


def _parse_url(url: str) -> _Target:
    parts = urlsplit(url)
    use_ssl = parts.scheme.lower() == "ldaps"
    host = parts.hostname or "localhost"
    return _Target(url, host, parts.port or (636 if use_ssl else 389), use_ssl)


class _ServerHealth:
    """Which servers failed lately: they are tried after the others for DEAD_TIME."""

    def __init__(self, count: int, clock: Callable[[], float]):
        self._down_until = [0.0] * count
        self._clock = clock
        self._lock = threading.Lock()

    def order(self) -> list[int]:
        """Server indices to try: healthy ones in configured order, then the rest."""
        now = self._clock()
        with self._lock:
            healthy = [i for i, t in enumerate(self._down_until) if t <= now]
            resting = [i for i, t in enumerate(self._down_until) if t > now]
        return healthy + resting

    def mark_down(self, index: int) -> None:
        with self._lock:
            self._down_until[index] = self._clock() + DEAD_TIME

    def mark_up(self, index: int) -> None:
        with self._lock:
            self._down_until[index] = 0.0


class _Deadline:
    """What is left of the request's time, in steps no longer than ``timeout``."""

    def __init__(self, clock: Callable[[], float], timeout: float, limit: float | None):
        self._clock = clock
        self._timeout = timeout
        self._end = None if limit is None else clock() + limit

    def step(self) -> float:
        """Seconds one network step may take; _Down when nothing is left."""
        if self._end is None:
            return self._timeout
        left = self._end - self._clock()
        if left <= 0:
            raise _Down("the request's deadline passed")
        return min(self._timeout, left)


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Certificate chain and host name (or IP address) checked; TLS 1.2 at least.

    ``ca_file`` is the CA that signed the directory's certificates (the
    corporate CA for Active Directory); without one the system's CAs are used.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class _VerifyingTls(Tls):
    """TLS with the standard library's own checks, for LDAPS and StartTLS alike.

    ldap3 turns ``check_hostname`` off and matches names itself, with a
    helper that is gone from newer Pythons; this one hands the socket to a
    context that lets OpenSSL check the chain and the name during the handshake.
    """

    def __init__(self, context: ssl.SSLContext, host: str):
        super().__init__(validate=ssl.CERT_REQUIRED)
        self._context = context
        self._host = host

    def wrap_socket(self, connection, do_handshake=False):
        # the handshake's last flight and the first request are small writes
        # in a row: without NODELAY, Nagle and delayed ACKs add 40 ms to each
        connection.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection.socket = self._context.wrap_socket(
            connection.socket, server_side=False, server_hostname=self._host,
            do_handshake_on_connect=do_handshake)


def _close(conn: Connection | None) -> None:
    """Unbind and close, ignoring whatever a dead socket says."""
    if conn is None:
        return
    try:
        conn.unbind()
    except Exception:   # noqa: BLE001 - closing a broken connection may fail any way
        pass


def _set_timeout(conn: Connection, seconds: float) -> None:
    """Bound the next operation on a reused connection by what is left of the request."""
    sock = getattr(conn, "socket", None)
    if sock is not None:
        sock.settimeout(seconds)


def _entries(conn: Connection) -> list[dict]:
    """The entries of the last search (referrals left out: they are not followed)."""
    return [e for e in (conn.response or []) if e.get("type") == "searchResEntry"]


def _first(value) -> str | None:
    """ldap3 gives a list (no schema loaded) or a scalar; the first non-empty value."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value or None


# --------------------------------------------------------------------------- the backend

class _ServicePool:
    """Idle connections bound as the service account, taken by one thread at a time."""

    def __init__(self, keep: int):
        self._idle: list[Connection] = []
        self._keep = keep
        self._lock = threading.Lock()
        self._closed = False

    def take(self) -> Connection | None:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
        return None

    def give(self, conn: Connection) -> None:
        with self._lock:
            if not self._closed and not conn.closed and len(self._idle) < self._keep:
                self._idle.append(conn)
                return
        _close(conn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            _close(conn)


def _check_config(config: LdapPrimaryConfig) -> None:
    """What config.py cannot check: a clear ValueError at start, not at the first login."""
    if not config.servers:
        raise ValueError("primary.ldap.servers: at least one server is needed")
    if not (config.user_dn_template or config.base_dn):
        raise ValueError("primary.ldap: user_dn_template or base_dn is needed")
    if not config.user_dn_template:
        sample = user_filter(config.user_filter, "x")
        try:
            parse_filter(sample, None, True, True, None, False)
        except LDAPException as exc:
            raise ValueError(f"primary.ldap.user_filter: {config.user_filter!r} is not an "
                             f"LDAP filter: {exc}") from None
    for url in config.servers:
        if urlsplit(url).scheme.lower() not in ("ldap", "ldaps"):
            raise ValueError(f"primary.ldap.servers: {url!r} is not an ldap:// or ldaps:// URL")


class LdapBackend:
    """``primary.backend: ldap`` — see the module docstring."""

    name = "ldap"
    supports_mschap = False

    def __init__(self, config: LdapPrimaryConfig, *, run, exempt_groups: tuple[str, ...] = (),
                 clock: Callable[[], float] = time.monotonic):
        _check_config(config)
        self._config = config
        self._run = run            # runner: run(fn, *args) -> awaitable, off the reactor
        self._clock = clock
        self._targets = [_parse_url(url) for url in config.servers]
        self._tls_context = self._make_tls_context(config)
        self._health = _ServerHealth(len(self._targets), clock)
        self._pool = _ServicePool(IDLE_SERVICE_CONNECTIONS)
        self._groups = self._groups_to_check(config.mfa_group, exempt_groups)
        self._resolves_nesting: bool | None = None   # learnt from the rootDSE on first use
        cleartext = [t.url for t in self._targets if not t.use_ssl and not config.starttls]
        if cleartext:
            log.warning("ldap.cleartext", servers=cleartext,
                        hint="passwords cross the network in clear: "
                             "use ldaps:// or starttls: true")

    @staticmethod
    def _make_tls_context(config: LdapPrimaryConfig) -> ssl.SSLContext | None:
        if not (config.starttls or any(t.use_ssl for t in map(_parse_url, config.servers))):
            return None
        try:
            return tls_context(config.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"primary.ldap.ca_file: cannot load {config.ca_file}: {exc}") from None

    @staticmethod
    def _groups_to_check(mfa_group: str | None, exempt_groups: tuple[str, ...]) -> tuple[str, ...]:
        seen: dict[str, str] = {}
        for group in ((mfa_group,) if mfa_group else ()) + tuple(exempt_groups):
            seen.setdefault(group.lower(), group)
        return tuple(seen.values())

    # -- the PrimaryBackend protocol
    async def authenticate(self, request: PrimaryRequest) -> PrimaryResult:
        refusal = self._refuse_early(request)
        if refusal is not None:
            return refusal
        # the clock starts now: time spent queued for a worker thread counts too
        deadline = _Deadline(self._clock, self._config.timeout, request.deadline)
        try:
            return await self._run(self._authenticate_blocking, request.user_name,
                                   request.password, deadline)
        except Exception:   # noqa: BLE001 - a backend never raises: fail closed, say why
            log.exception("ldap.error", user=request.user_name)
            return PrimaryResult(False, Reason.ERROR)

    async def equalize(self, password: bytes) -> None:
        """Nothing: a bind for a locked user would count against the directory's own lockout."""
        return None

    def close(self) -> None:
        """Unbind the idle service connections; later ones are closed when handed back."""
        self._pool.close()

    def server_health(self) -> dict[str, bool]:
        """``ldap[s]://host:port`` of each configured server → in use (False:
        failed lately, tried after the others). Only scheme, host and port:
        nothing else of the URL."""
        now = self._clock()
        with self._health._lock:
            down_until = list(self._health._down_until)
        health = {}
        for target, until in zip(self._targets, down_until):
            host = f"[{target.host}]" if ":" in target.host else target.host
            scheme = "ldaps" if target.use_ssl else "ldap"
            health[f"{scheme}://{host}:{target.port}"] = until <= now
        return health

    # -- checks that need no network
    @staticmethod
    def _refuse_early(request: PrimaryRequest) -> PrimaryResult | None:
        if request.password is None:
            return PrimaryResult(False, Reason.BAD_REQUEST)   # MS-CHAP: nothing to bind with
        if not request.user_name or "\x00" in request.user_name:
            return PrimaryResult(False, Reason.UNKNOWN_USER)
        if not request.password or b"\x00" in request.password:
            # never sent: an empty password is an unauthenticated bind, which
            # many servers accept as anonymous
            return PrimaryResult(False, Reason.BAD_PASSWORD)
        return None

    # -- the blocking part, in a worker thread
    def _authenticate_blocking(self, user_name: str, password: bytes,
                               deadline: _Deadline) -> PrimaryResult:
        try:
            return self._authenticate_steps(user_name, password, deadline)
        except _Down as exc:
            log.warning("ldap.upstream_down", user=user_name, error=str(exc))
            return PrimaryResult(False, Reason.UPSTREAM_DOWN)
        except LDAPCommunicationError as exc:
            log.warning("ldap.upstream_down", user=user_name, error=f"{type(exc).__name__}: {exc}")
            return PrimaryResult(False, Reason.UPSTREAM_DOWN)

    def _authenticate_steps(self, user_name: str, password: bytes,
                            deadline: _Deadline) -> PrimaryResult:
        config = self._config
        entry: dict | None = None
        if config.user_dn_template:
            dn = user_dn(config.user_dn_template, user_name)
        else:
            found = self._find_user(user_name, deadline)
            if isinstance(found, PrimaryResult):
                return found
            entry = found
            dn = entry["dn"]

        try:
            user_conn = self._open(dn, password, deadline)
        except _Refused as exc:
            reason = reason_for_refused_bind(exc.result, exc.message)
            log.info("ldap.bind_refused", user=user_name, dn=dn, result=exc.description,
                     reason=str(reason))
            return PrimaryResult(False, reason)
        log.debug("ldap.bind_ok", user=user_name, dn=dn)

        if config.bind_dn:
            # the user's connection is done: everything else is read as the service
            _close(user_conn)
            return self._accepted(self._service_reader(deadline), entry, dn, user_name)
        try:
            return self._accepted(self._connection_reader(user_conn, deadline), None, dn,
                                  user_name)
        finally:
            _close(user_conn)

    def _accepted(self, read: _Reader, entry: dict | None, dn: str,
                  user_name: str) -> PrimaryResult:
        """The password was right: what the directory says of the user, and the result."""
        if entry is None:
            entry = read(lambda conn: self._read_entry(conn, dn)) or {"dn": dn, "attributes": {}}
        info = self._user_info(entry.get("attributes") or {})
        info.update(self._membership(read, entry["dn"], user_name))
        return PrimaryResult(True, user_info=info)

    def _service_reader(self, deadline: _Deadline) -> _Reader:
        def read(operation):
            return self._as_service(deadline, operation)
        return read

    @staticmethod
    def _connection_reader(conn: Connection, deadline: _Deadline) -> _Reader:
        def read(operation):
            _set_timeout(conn, deadline.step())
            return operation(conn)
        return read

    def _find_user(self, user_name: str, deadline: _Deadline) -> dict | PrimaryResult:
        """The one entry the filter matches, or the reject that says why there is none."""
        config = self._config
        search_filter = user_filter(config.user_filter, user_name)

        def search(conn: Connection) -> tuple[dict, list[dict]]:
            conn.search(config.base_dn, search_filter, SUBTREE,
                        attributes=self._attribute_names(), size_limit=2)
            return conn.result, _entries(conn)

        result, entries = self._as_service(deadline, search)
        if result["result"] not in (SUCCESS, SIZE_LIMIT_EXCEEDED):
            raise _Down(f"search under {config.base_dn!r} failed: {result['description']} "
                        f"{result.get('message') or ''}".strip())
        if not entries:
            log.info("ldap.unknown_user", user=user_name)
            return PrimaryResult(False, Reason.UNKNOWN_USER)
        if len(entries) > 1:
            log.warning("ldap.ambiguous_user", user=user_name, base_dn=config.base_dn,
                        hint="user_filter matches more than one entry")
            return PrimaryResult(False, Reason.UNKNOWN_USER)
        return entries[0]

    def _read_entry(self, conn: Connection, dn: str) -> dict | None:
        conn.search(dn, "(objectClass=*)", BASE, attributes=self._attribute_names())
        entries = _entries(conn)
        if not entries:
            log.warning("ldap.entry_unreadable", dn=dn, result=conn.result.get("description"))
            return None
        return entries[0]

    def _attribute_names(self) -> list[str]:
        attributes = self._config.attributes
        names = [attributes.display_name, attributes.email, *attributes.phone]
        return list(dict.fromkeys(n for n in names if n))

    def _user_info(self, attributes: dict) -> dict:
        wanted = self._config.attributes
        lowered = {k.lower(): v for k, v in attributes.items()}
        info: dict = {}
        display_name = _first(lowered.get(wanted.display_name.lower()))
        email = _first(lowered.get(wanted.email.lower()))
        phones = (_first(lowered.get(name.lower())) for name in wanted.phone)
        phone = next((p for p in phones if p), None)
        if display_name:
            info["display_name"] = display_name
        if email:
            info["email"] = email
        if phone:
            info["phone"] = phone
        return info

    # -- groups
    def _membership(self, read: _Reader, dn: str, user_name: str) -> dict:
        """``groups`` and ``mfa_required``; a check that cannot be made fails closed
        (not exempt, second factor required), with a warning."""
        config = self._config
        answers = {group: read(lambda conn, g=group: self._is_member(conn, g, dn, user_name))
                   for group in self._groups}
        groups = frozenset(g.lower() for g, member in answers.items() if member is True)
        info: dict = {"groups": groups}
        if config.mfa_group:
            info["mfa_required"] = answers.get(config.mfa_group) is not False
        else:
            info["mfa_required"] = True
        return info

    def _is_member(self, conn: Connection, group: str, dn: str, user_name: str) -> bool | None:
        """True or False as the directory says; None when it could not say."""
        attribute = self._config.group_member_attribute
        if self._config.nested_groups:
            if not self._directory_resolves_nesting(conn):
                return None
            nested = f"(memberOf:{NESTED_MATCHING_RULE}:={escape_filter_chars(group)})"
            conn.search(dn, nested, BASE, attributes=["1.1"])
            if conn.result["result"] == SUCCESS:
                return bool(_entries(conn))
        else:
            value = user_name if attribute.lower() == "memberuid" else dn
            conn.compare(group, attribute, value)
            if conn.result["result"] in (COMPARE_TRUE, COMPARE_FALSE):
                return conn.result["result"] == COMPARE_TRUE
        log.warning("ldap.group_check_failed", group=group, dn=dn,
                    result=conn.result.get("description"), message=conn.result.get("message"))
        return None

    def _directory_resolves_nesting(self, conn: Connection) -> bool:
        """Whether the server is Active Directory, which knows the in-chain rule.

        Any other server evaluates the unknown matching rule as Undefined and
        returns no entry: "not a member" of every group, which would excuse
        everyone from the mfa_group. So elsewhere the checks fail closed.
        """
        if self._resolves_nesting is None:
            conn.search("", "(objectClass=*)", BASE, attributes=["supportedCapabilities"])
            entries = _entries(conn)
            found = entries[0]["attributes"].get("supportedCapabilities", []) if entries else []
            capabilities = {found} if isinstance(found, str) else set(found)
            self._resolves_nesting = bool(capabilities & AD_CAPABILITIES)
            if not self._resolves_nesting:
                log.error("ldap.nested_groups_unsupported",
                          hint="nested_groups: true needs Active Directory "
                               f"({NESTED_MATCHING_RULE}); group checks fail closed: "
                               "a second factor for everyone, no group exemptions")
        return self._resolves_nesting

    # -- connections
    def _as_service(self, deadline: _Deadline, operation: Callable[[Connection], T]) -> T:
        """Run ``operation`` on a service connection: a pooled one, or a new one
        when the pooled one turns out to be dead. Handed back only when it worked."""
        seconds = deadline.step()
        conn = self._pool.take()
        if conn is not None:
            try:
                _set_timeout(conn, seconds)
                result = operation(conn)
            except LDAPCommunicationError as exc:
                # idle too long, or the server went away: a new one, maybe elsewhere
                log.info("ldap.service_reconnect", error=type(exc).__name__)
                _close(conn)
            except BaseException:
                _close(conn)
                raise
            else:
                self._pool.give(conn)
                return result
        try:
            conn = self._open(self._config.bind_dn, self._config.bind_password, deadline)
        except _Refused as exc:
            log.error("ldap.service_bind_refused", bind_dn=self._config.bind_dn,
                      result=exc.description, hint="check bind_dn and bind_password_file")
            raise _Down("the service account's bind was refused") from None
        try:
            result = operation(conn)
        except BaseException:
            _close(conn)
            raise
        self._pool.give(conn)
        return result

    def _open(self, dn: str | None, password, deadline: _Deadline) -> Connection:
        """A connection bound as ``dn`` (anonymous when None), from the first server
        that answers. _Refused when a server refused the bind, _Down when none answered."""
        errors = []
        for index in self._health.order():
            target = self._targets[index]
            try:
                conn = self._connect(target, dn, password, deadline.step())
            except _Unusable as exc:
                self._health.mark_down(index)
                log.warning("ldap.server_unusable", server=target.url, error=str(exc))
                errors.append(f"{target.url}: {exc}")
                continue
            self._health.mark_up(index)
            return conn
        raise _Down("no LDAP server answered (" + "; ".join(errors) + ")")

    def _connect(self, target: _Target, dn: str | None, password, seconds: float) -> Connection:
        config = self._config
        tls = (_VerifyingTls(self._tls_context, target.host)
               if target.use_ssl or config.starttls else None)
        # connect_timeout is a socket timeout that stays on the socket after
        # connect: it bounds the TLS handshake and every later reply too.
        # (ldap3's receive_timeout would set SO_RCVTIMEO in whole seconds.)
        server = Server(target.host, port=target.port, use_ssl=target.use_ssl, tls=tls,
                        get_info=NONE, connect_timeout=seconds)
        if dn is None:
            conn = Connection(server, authentication=ANONYMOUS, auto_referrals=False,
                              read_only=True, raise_exceptions=False)
        else:
            conn = Connection(server, user=dn, password=password, authentication=SIMPLE,
                              auto_referrals=False, read_only=True, raise_exceptions=False)
        try:
            conn.open()
            if config.starttls and not target.use_ssl:
                conn.start_tls()
            bound = conn.bind()
        except (LDAPException, OSError, ssl.SSLError) as exc:
            _close(conn)
            raise _Unusable(f"{type(exc).__name__}: {exc}") from None
        if bound:
            return conn
        _close(conn)
        result = conn.result or {}
        code = result.get("result", -1)
        if code in (BUSY, UNAVAILABLE):
            raise _Unusable(f"bind answered {result.get('description')}")
        if code in (STRONGER_AUTH_REQUIRED, CONFIDENTIALITY_REQUIRED):
            raise _Unusable(f"the server requires TLS ({result.get('description')}): "
                            "use ldaps:// or starttls: true")
        raise _Refused(code, str(result.get("description")), str(result.get("message") or ""))
