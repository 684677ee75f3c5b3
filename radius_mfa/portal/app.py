"""The self-service page as a Twisted web resource, served over HTTPS.

A browser gets in one of two ways:

- an enrolment link (:mod:`radius_mfa.enrolment`): ``GET /enrol/TOKEN``
  shows a button, and only its ``POST /enrol`` redeems the link (a mail
  scanner that fetches links uses up nothing);
- ``POST /sign-in``: the primary password, checked by the configured
  primary backend, then a code from a token the user holds (TOTP or HOTP)
  or one sent to them; ``sms``, ``voice``, ``email`` or ``push`` in place of
  the code runs that factor through the RADIUS engine, as an inline client.
  Each is one lockout attempt, taken before it is checked (as the RADIUS
  engine does), so the page adds no guesses to ``policy.lockout``.

Sessions live in the store (every worker and server sharing it knows them):
the cookie is 32 random bytes, the store keeps its SHA-256; a session ends
after 15 minutes without a request or 8 hours after sign-in, whichever comes
first, or at sign-out. Every form carries a CSRF token, compared in constant
time: the session's own once signed in, and before that a random value also
set as a cookie (double submit). Cookies are ``__Host-`` prefixed, ``Secure;
HttpOnly; SameSite=Strict``. Nothing changes state before the request is
authenticated; every error is a sentence on the page, never a traceback.

Store calls go through the AsyncStore; slow hashes (app passwords) run in
the hash pool; the primary backend runs its own checks off the reactor.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import segno
import structlog
from twisted.internet import defer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from radius_mfa.config import ClientConfig, Mode
from radius_mfa.enrolment import LINK_PATH, EnrolLinks
from radius_mfa.errors import AlreadyExistsError, StoreError
from radius_mfa.model import PortalSession, Token, User
from radius_mfa.portal import html
from radius_mfa.requests import FACTOR_WORDS, AuthRequest
from radius_mfa.verdicts import COUNTS_AS_FAILURE, Reason, Verdict

log = structlog.get_logger("radius_mfa.portal")

#: A session ends after this long without a request …
IDLE_SECONDS = 15 * 60.0
#: … or this long after sign-in, whichever comes first.
ABSOLUTE_SECONDS = 8 * 3600.0

SESSION_COOKIE = "__Host-radius-mfa-session"
FORM_COOKIE = "__Host-radius-mfa-form"
COOKIE_FLAGS = "Path=/; Secure; HttpOnly; SameSite=Strict"

_RANDOM = re.compile(r"[A-Za-z0-9_-]{43}")          # secrets.token_urlsafe(32)
_CODE = re.compile(r"[0-9]{4,10}")                   # a token's 6–10 digits, a sent code's 4 and up
_SECRET_BYTES = 20                                   # RFC 4226: as long as SHA-1's output
SIGN_IN_FAILED = ("The user name, password or code is not right, or the account is locked for a while. "
                  "Check them and try again.")
FORM_EXPIRED = ("This form has expired or did not come from this page: "
                "go back, reload the page and try again.")
SESSION_ENDED = ("Your session has ended (after 15 minutes without use, or 8 hours after signing in). "
                 "Sign in again.")

CODE_SENT = ("A code is on its way (if the account has somewhere to send it). "
             "Enter your password again with the code you receive.")
# The page as the engine sees it: an inline client that waits for a push as
# long as a person at a browser will.
PORTAL_CLIENT = ClientConfig(name="portal", network=ipaddress.ip_network("127.0.0.1/32"), secret=b"",
                             mode=Mode.INLINE, timeout=60)

NOTICES = {
    "totp": "Your authenticator app is set up: its codes work from now on.",
    "deleted": "All your app passwords are deleted: they no longer work anywhere.",
}


class PageError(Exception):
    """A refusal shown as a sentence on the page."""

    def __init__(self, status: int, message: str, *, title: str = "Something is not right",
                 sign_in: bool = False):
        super().__init__(message)
        self.status = status
        self.message = message
        self.title = title
        self.sign_in = sign_in          # show the sign-in form under the message


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    location: str | None = None
    cookies: list[str] = field(default_factory=list)


@dataclass
class Call:
    request: Any
    method: str
    path: str
    form: dict[str, str]
    cookies: dict[str, str]
    address: str | None


def digest(value: str) -> str:
    return hashlib.sha256(value.encode("ascii")).hexdigest()


def same(a: str | None, b: str | None) -> bool:
    """Constant-time equality of two tokens, both present."""
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape"))


def qr_data_uri(text: str) -> str:
    return segno.make(text, error="m", micro=False).png_data_uri(scale=5, border=4)


class Portal(Resource):
    """The self-service page (mount it as a Site's root, or beside the
    device API with :class:`SharedRoot`).

    ``store``: the AsyncStore; ``config``: the whole Config; ``primary()``:
    the primary backend in force (it changes on SIGHUP); ``clock()``: epoch
    seconds; ``hash_runner(fn, *args)``: runs a slow hash off the reactor;
    ``engine()``: the engine in force, through which a user without a token
    signs in with a sent code or a push approval (as an inline RADIUS client).
    """
    isLeaf = True

    def __init__(self, store, config, primary: Callable[[], Any], clock: Callable[[], float],
                 hash_runner: Callable[..., Awaitable[Any]], engine: Callable[[], Any] | None = None):
        super().__init__()
        self.store = store
        self.primary = primary
        self.engine = engine            # the RADIUS engine in force: sent codes and push sign in too
        self.clock = clock
        self.hash_runner = hash_runner
        self.reconfigure(config)

    def reconfigure(self, config) -> None:
        """Take a reloaded Config (SIGHUP): lockout, username policy, factor
        windows, push, public_url. Sessions and links stay valid."""
        from radius_mfa.lockout import Lockout
        from radius_mfa.verifiers.hotp import HotpVerifier
        from radius_mfa.verifiers.totp import TotpVerifier

        store, clock = self.store, self.clock
        self.config = config
        self.links = EnrolLinks(store, clock, config.portal.public_url)
        self.lockout = Lockout(store, config.policy.lockout, clock)
        self.verifiers = [TotpVerifier(store, config.factors.totp.window),
                          HotpVerifier(store, config.factors.hotp.look_ahead)]

    # --- twisted.web ---------------------------------------------------------------
    def render(self, request) -> Any:
        defer.ensureDeferred(self._serve(request)).addErrback(
            lambda failure: log.error("portal.unhandled", error=failure.getErrorMessage()))
        return NOT_DONE_YET

    async def _serve(self, request) -> None:
        try:
            call = _call(request)
            reply = await self._route(call)
        except PageError as refused:
            reply = Reply(refused.status, self._refusal_page(refused, request))
        except StoreError:
            log.error("portal.store_error", path=_logged_path(request))
            reply = Reply(503, html.page("Try again in a minute", html.back_link(),
                                         error="The server cannot reach its store right now. "
                                               "Try again in a minute."))
        except Exception:
            log.exception("portal.error", path=_logged_path(request))
            reply = Reply(500, html.page("Something went wrong", html.back_link(),
                                         error="Something went wrong on the server. Try again; if it "
                                               "keeps happening, tell your administrator."))
        _answer(request, reply)

    def _refusal_page(self, refused: PageError, request) -> bytes:
        if refused.sign_in:
            csrf = secrets.token_urlsafe(32)
            request.responseHeaders.addRawHeader(b"set-cookie", _cookie(FORM_COOKIE, csrf).encode())
            return html.page("Sign in", html.sign_in(csrf), error=refused.message)
        return html.page(refused.title, html.back_link(), error=refused.message)

    # --- routing -------------------------------------------------------------------
    async def _route(self, call: Call) -> Reply:
        if call.path.startswith(LINK_PATH) and call.method in ("GET", "HEAD"):
            return self._link_page(call.path[len(LINK_PATH):])
        routes: dict[tuple[str, str], Callable[[Call], Awaitable[Reply]]] = {
            ("GET", "/"): self._index,
            ("POST", "/sign-in"): self._sign_in,
            ("POST", "/enrol"): self._redeem,
            ("POST", "/sign-out"): self._sign_out,
            ("POST", "/totp/start"): self._totp_start,
            ("GET", "/totp"): self._totp_page,
            ("POST", "/totp/confirm"): self._totp_confirm,
            ("POST", "/device/pair"): self._pair,
            ("POST", "/app-passwords"): self._app_password_create,
            ("POST", "/app-passwords/delete-all"): self._app_passwords_delete,
        }
        method = "GET" if call.method == "HEAD" else call.method
        handler = routes.get((method, call.path))
        if handler is None:
            if any(path == call.path for _, path in routes):
                raise PageError(405, "This page does not take that kind of request.", title="Not allowed")
            raise PageError(404, "There is no such page here.", title="Not found")
        return await handler(call)

    # --- signed out ----------------------------------------------------------------
    def _sign_in_page(self, *, error: str | None = None, notice: str | None = None, status: int = 200,
                      name: str = "") -> Reply:
        csrf = secrets.token_urlsafe(32)
        return Reply(status, html.page("Sign in", html.sign_in(csrf, name), error=error, notice=notice),
                     cookies=[_cookie(FORM_COOKIE, csrf)])

    def _link_page(self, token: str) -> Reply:
        csrf = secrets.token_urlsafe(32)
        return Reply(200, html.page("Set up your sign-in", html.enrol_link(csrf, token)),
                     cookies=[_cookie(FORM_COOKIE, csrf)])

    def _check_form_csrf(self, call: Call) -> None:
        """Before a session exists: the form's token must equal the form cookie."""
        if not same(call.form.get("csrf"), call.cookies.get(FORM_COOKIE)):
            raise PageError(403, FORM_EXPIRED, title="Form expired", sign_in=True)

    async def _index(self, call: Call) -> Reply:
        found = await self._session(call)
        if found is None:
            ended = SESSION_ENDED if call.cookies.get(SESSION_COOKIE) else None
            return self._sign_in_page(notice=ended)
        session, user = found
        store = self.store
        tokens = [t for t in await store.list_tokens(user.name) if t.type in ("totp", "hotp")]
        devices = await store.list_devices(user.name) if self.config.factors.push else []
        app_passwords = await store.list_app_passwords(user.name)
        records = await store.auth_records(user=user.name)
        sign_ins = [r.fields for r in reversed(records[-20:])]
        notice = NOTICES.get(urllib.parse.parse_qs(_query(call.request)).get("done", [""])[0])
        body = html.home(session.csrf, tokens=tokens, devices=devices, app_passwords=app_passwords,
                         sign_ins=sign_ins, push=self.config.factors.push is not None)
        return Reply(200, html.page(f"Your sign-in factors, {user.display_name or user.name}", body,
                                    notice=notice, signed_in=(user.name, session.csrf)))

    async def _redeem(self, call: Call) -> Reply:
        self._check_form_csrf(call)
        name = await self.links.redeem(call.form.get("token", ""))
        user = await self.store.get_user(name) if name is not None else None
        if user is None or user.disabled:
            log.info("portal.sign_in", via="link", result="reject", reason="bad_link", address=call.address)
            raise PageError(403, "This enrolment link does not work: it was used already, it has expired "
                                 "(links last 15 minutes), or it was not copied whole. Ask your "
                                 "administrator for a new one.", title="Link not valid")
        log.info("portal.sign_in", via="link", user=user.name, result="accept", address=call.address)
        return await self._start_session(user)

    async def _sign_in(self, call: Call) -> Reply:
        from radius_mfa.usernames import canonical

        self._check_form_csrf(call)
        typed = call.form.get("user", "")
        password = call.form.get("password", "")
        code = call.form.get("code", "").strip().replace(" ", "")
        if not typed.strip() or not password or not code:
            return self._sign_in_page(status=400, name=typed,
                                      error="Enter your user name, your password and a code.")
        name = canonical(typed, self.config.policy.username)
        user = await self.store.get_user(name)
        if code.lower() in FACTOR_WORDS and self.engine is not None:
            return await self._sign_in_by_word(call, typed, name, password, code.lower())
        reason = await self._check_sign_in(user, name, password, code)
        log.info("portal.sign_in", via="password", user=name, result="reject" if reason else "accept",
                 reason=str(reason) if reason else None, address=call.address)
        if reason is not None:
            return self._sign_in_page(status=403, name=typed, error=SIGN_IN_FAILED)
        return await self._start_session(user)

    async def _sign_in_by_word(self, call: Call, typed: str, name: str, password: str, word: str) -> Reply:
        """``sms``, ``voice``, ``email`` or ``push`` in place of a code: the
        engine runs it as for an inline RADIUS client (lockout, rate limits,
        one code or push per attempt): a code is sent (then typed here like
        any code), or the request waits for the device's approval."""
        engine = self.engine()
        request = AuthRequest(client=PORTAL_CLIENT, user_name=name, calling_station_id=call.address,
                              password=f"{password}{self.config.policy.delimiter}{word}".encode("utf-8"))
        decision = await engine.handle(request)
        accepted = decision.verdict is Verdict.ACCEPT and decision.factor == "push"
        log.info("portal.sign_in", via=word, user=name, result="accept" if accepted else "reject",
                 reason=str(decision.reason) if decision.reason else None, address=call.address)
        if accepted:
            return await self._start_session(decision.user)
        if decision.reason is Reason.CODE_SENT:
            return self._sign_in_page(name=typed, notice=CODE_SENT)
        return self._sign_in_page(status=403, name=typed, error=SIGN_IN_FAILED)

    async def _check_sign_in(self, user: User | None, name: str, password: str, code: str) -> Reason | None:
        """None when the password and then the code are right; else why not.
        One lockout attempt for the password, another for the code, each
        taken before it is checked."""
        from radius_mfa.primary.base import PrimaryRequest

        primary = self.primary()
        secret = password.encode("utf-8")
        if user is None or user.disabled:
            await primary.equalize(secret)
            return Reason.UNKNOWN_USER if user is None else Reason.DISABLED
        attempt = await self.lockout.take(user)
        if attempt is None:
            await primary.equalize(secret)
            return Reason.LOCKED
        result = await primary.authenticate(PrimaryRequest(user_name=name, user=user, password=secret,
                                                           client="portal", deadline=30.0))
        if not result.ok or result.challenge is not None:
            reason = result.reason or Reason.BAD_PASSWORD
            await self.lockout.settle(user, attempt, reason)
            return reason
        await self.lockout.settle(user, attempt, None)          # a right password: given back
        if not _CODE.fullmatch(code):
            attempt = await self.lockout.take(user)
            if attempt is None:
                return Reason.LOCKED
            await self.lockout.settle(user, attempt, Reason.BAD_CODE)
            return Reason.BAD_CODE
        attempt = await self.lockout.take(user)
        if attempt is None:
            return Reason.LOCKED
        reason = await self._check_code(user, code)
        await self.lockout.settle(user, attempt, reason, accepted=reason is None)
        return reason

    async def _check_code(self, user: User, code: str) -> Reason | None:
        codes = self.engine().codes if self.engine is not None else None
        if codes is not None and codes.configured:
            sent = await codes.check(user, code)     # a code sent by sms, voice or email
            if sent is not None:
                return None if sent.ok else sent.reason
        tokens = await self.store.list_tokens(user.name)
        refusal: Reason = Reason.BAD_CODE
        now = self.clock()
        for verifier in self.verifiers:
            mine = [t for t in tokens if verifier.handles(t)]
            if not mine:
                continue
            result = await verifier.verify(user, mine, code, now)
            if result is not None and result.ok:
                return None
            if result is not None and result.reason in COUNTS_AS_FAILURE:
                refusal = result.reason
        return refusal

    async def _start_session(self, user: User) -> Reply:
        cookie = secrets.token_urlsafe(32)
        now = self.clock()
        await self.store.put_portal_session(PortalSession(
            id_digest=digest(cookie), user=user.name, csrf=secrets.token_urlsafe(32),
            created=now, last_seen=now, expires=now + ABSOLUTE_SECONDS))
        return Reply(303, location="/", cookies=[_cookie(SESSION_COOKIE, cookie), _expired(FORM_COOKIE)])

    # --- signed in -----------------------------------------------------------------
    async def _session(self, call: Call) -> tuple[PortalSession, User] | None:
        cookie = call.cookies.get(SESSION_COOKIE)
        if not cookie or not _RANDOM.fullmatch(cookie):
            return None
        session = await self.store.touch_portal_session(digest(cookie), self.clock(), IDLE_SECONDS)
        if session is None:
            return None
        user = await self.store.get_user(session.user)
        if user is None or user.disabled:
            await self.store.delete_portal_session(session.id_digest)
            return None
        return session, user

    async def _signed_in(self, call: Call) -> tuple[PortalSession, User]:
        """The session of a form post, its CSRF token checked; PageError otherwise."""
        found = await self._session(call)
        if found is None:
            raise PageError(401, SESSION_ENDED, title="Signed out", sign_in=True)
        session, user = found
        if not same(call.form.get("csrf"), session.csrf):
            raise PageError(403, FORM_EXPIRED, title="Form expired")
        return session, user

    async def _sign_out(self, call: Call) -> Reply:
        session, user = await self._signed_in(call)
        await self.store.delete_portal_session(session.id_digest)
        log.info("portal.sign_out", user=user.name)
        csrf = secrets.token_urlsafe(32)
        return Reply(200, html.page("Signed out", html.sign_in(csrf), notice="You are signed out."),
                     cookies=[_expired(SESSION_COOKIE), _cookie(FORM_COOKIE, csrf)])

    async def _totp_start(self, call: Call) -> Reply:
        from radius_mfa.validate import encode_base32

        session, user = await self._signed_in(call)
        await self.store.set_portal_pending_totp(session.id_digest,
                                                 encode_base32(secrets.token_bytes(_SECRET_BYTES)))
        return Reply(303, location="/totp")

    async def _totp_page(self, call: Call, error: str | None = None) -> Reply:
        found = await self._session(call)
        if found is None:
            return self._sign_in_page(notice=SESSION_ENDED)
        session, user = found
        if session.pending_totp is None:
            return Reply(303, location="/")
        return Reply(400 if error else 200, html.page(
            "Add an authenticator app", html.totp_enrol(session.csrf, session.pending_totp,
                                                        qr_data_uri(self._uri(user, session.pending_totp))),
            error=error, signed_in=(user.name, session.csrf)))

    def _uri(self, user: User, secret: str) -> str:
        from radius_mfa.otp import provisioning_uri

        return provisioning_uri(_pending_token(user.name, secret, "pending"), self.config.server.name)

    async def _totp_confirm(self, call: Call) -> Reply:
        from radius_mfa.otp import otp_at
        from radius_mfa.verifiers.totp import steps_to_try

        session, user = await self._signed_in(call)
        secret = session.pending_totp
        if secret is None:
            raise PageError(409, "There is no authenticator app waiting to be confirmed: start again with "
                                 "“Add an authenticator app”.")
        code = call.form.get("code", "").strip().replace(" ", "")
        token = _pending_token(user.name, secret, "pending")
        step = next((s for s in steps_to_try(self.clock(), token.period, self.config.factors.totp.window)
                     if hmac.compare_digest(otp_at(token, s).encode(), code.encode())), None) \
            if _CODE.fullmatch(code) else None
        if step is None:
            return await self._totp_page(call, error="That code is not the one the app shows now. Check "
                                                     "that the app holds this key and its clock is right, "
                                                     "then enter the current code.")
        taken = await self.store.take_portal_pending_totp(session.id_digest)
        if taken is None or not same(taken, secret):
            raise PageError(409, "This authenticator app was confirmed already (in another tab?).")
        stored = await self._add_token(user, secret)
        await self.store.advance_totp(stored.serial, step)      # the confirming code is used up
        log.info("portal.totp_enrolled", user=user.name, serial=stored.serial)
        return Reply(303, location="/?done=totp")

    async def _add_token(self, user: User, secret: str) -> Token:
        for _ in range(10):
            token = _pending_token(user.name, secret, "TOTP" + secrets.token_hex(4).upper(), self.clock())
            try:
                await self.store.add_token(token)
            except AlreadyExistsError:
                continue
            return token
        raise StoreError("could not find a free token serial")

    async def _pair(self, call: Call) -> Reply:
        from radius_mfa.audit import iso_time
        from radius_mfa.cli import device_api_base_url
        from radius_mfa.model import Pairing
        from radius_mfa.push import crypto

        session, user = await self._signed_in(call)
        push = self.config.factors.push
        if push is None:
            raise PageError(404, "Push approval is not set up on this server.", title="Not available")
        try:
            fingerprint = await self.hash_runner(crypto.certificate_fingerprint, push.tls_cert)
        except (OSError, ValueError):
            log.error("portal.pairing_certificate", cert_file=push.tls_cert)
            raise PageError(503, "Pairing is not possible right now: the server's device certificate cannot "
                                 "be read. Tell your administrator.") from None
        token = crypto.new_pairing_token()
        now = self.clock()
        expires = now + push.pairing_ttl
        await self.store.add_pairing(Pairing(token_digest=crypto.token_digest(token), user=user.name,
                                             created=now, expires=expires))
        url = crypto.pairing_url(device_api_base_url(push), token, fingerprint)
        log.info("portal.pairing_started", user=user.name)
        return Reply(200, html.page("Pair a push device", html.pairing(url, iso_time(expires), qr_data_uri(url)),
                                    signed_in=(user.name, session.csrf)))

    async def _app_password_create(self, call: Call) -> Reply:
        from radius_mfa.verifiers.app_password import new_record

        session, user = await self._signed_in(call)
        label = " ".join(call.form.get("label", "").split())[:64] or None
        if label is not None and any(ord(c) < 32 for c in label):
            raise PageError(400, "The label may hold letters, digits, spaces and punctuation only.")
        record, password = await self.hash_runner(new_record, user.name, label, self.config.passwords,
                                                  self.clock())
        await self.store.add_app_password(record)
        log.info("portal.app_password_created", user=user.name, id=record.id)
        return Reply(200, html.page("New app password", html.app_password(record.id, record.label, password),
                                    signed_in=(user.name, session.csrf)))

    async def _app_passwords_delete(self, call: Call) -> Reply:
        session, user = await self._signed_in(call)
        count = await self.store.delete_app_passwords(user.name)
        log.info("portal.app_passwords_deleted", user=user.name, count=count)
        return Reply(303, location="/?done=deleted")


class SharedRoot(Resource):
    """One HTTPS server for both: the device API under ``/v1/``, the page
    everywhere else (``portal.listen`` equal to ``factors.push.listen``)."""
    isLeaf = True

    def __init__(self, device_api: Resource, portal: Resource):
        super().__init__()
        self.device_api = device_api
        self.portal = portal

    def render(self, request):
        target = self.device_api if (request.path or b"").startswith(b"/v1/") else self.portal
        return target.render(request)


def listen_portal(reactor, portal_config, resource: Resource):
    """Serve ``resource`` over HTTPS on ``portal.listen``, making a
    self-signed certificate first when ``tls_cert`` is absent (as the device
    API does). OSError naming the file when it cannot be made or read;
    CannotListenError when the address is taken."""
    from radius_mfa.push import crypto
    from radius_mfa.push.api import DeviceApiTlsError, certificate_names, device_api_site, load_tls_options

    cert_path, key_path = portal_config.tls_cert, portal_config.tls_key
    try:
        made = crypto.ensure_certificate(cert_path, key_path, certificate_names(portal_config.public_url))
        if made:
            log.info("portal.certificate_created", cert_file=cert_path, key_file=key_path,
                     fingerprint=crypto.certificate_fingerprint(cert_path))
        options = load_tls_options(cert_path, key_path)
    except DeviceApiTlsError as exc:
        raise OSError(str(exc).replace("the device API's", "the self-service page's")) from None
    except OSError as exc:
        raise OSError(f"cannot create the self-service page's certificate {cert_path} and key "
                      f"{key_path}: {exc.strerror or exc}") from None
    listen = portal_config.listen
    return reactor.listenSSL(int(listen.port), device_api_site(resource), options, interface=listen.host)


# --- helpers ---------------------------------------------------------------------------


def _pending_token(user: str, secret: str, serial: str, created: float = 0.0) -> Token:
    return Token(serial=serial, type="totp", secret=secret, user=user, digits=6, period=30,
                 algorithm="sha1", counter=0, created=created or time.time())


def _path(request) -> str:
    return (request.path or b"").decode("ascii", "replace")


def _logged_path(request) -> str:
    """The path as a log may show it: never a link's token."""
    path = _path(request)
    return LINK_PATH + "…" if path.startswith(LINK_PATH) else path


def _query(request) -> str:
    uri = (request.uri or b"").decode("ascii", "replace")
    return uri.split("?", 1)[1] if "?" in uri else ""


def _call(request) -> Call:
    method = (request.method or b"").decode("ascii", "replace").upper()
    form: dict[str, str] = {}
    if method == "POST":
        if getattr(request, "body_too_large", False):
            raise PageError(413, "That form was too large to be taken.")
        raw = request.content.read() if request.content is not None else b""
        try:
            pairs = urllib.parse.parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                                           max_num_fields=50)
        except (UnicodeDecodeError, ValueError):
            raise PageError(400, "That form could not be read: send it again from the page.") from None
        form = {key: value for key, value in pairs}
    cookies: dict[str, str] = {}
    for header in request.requestHeaders.getRawHeaders(b"cookie") or []:
        for part in header.decode("latin-1").split(";"):
            key, _, value = part.strip().partition("=")
            cookies.setdefault(key, value)
    client = request.getClientAddress()
    return Call(request=request, method=method, path=_path(request), form=form, cookies=cookies,
                address=getattr(client, "host", None))


def _cookie(name: str, value: str) -> str:
    return f"{name}={value}; {COOKIE_FLAGS}"


def _expired(name: str) -> str:
    return f"{name}=; Max-Age=0; {COOKIE_FLAGS}"


def _answer(request, reply: Reply) -> None:
    if getattr(request, "_disconnected", False) or request.finished:
        return
    request.setResponseCode(reply.status)
    headers = request.responseHeaders
    for name, value in (
            (b"server", b"radius-mfa"),
            (b"content-type", b"text/html; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
            (b"content-security-policy", html.CSP.encode("ascii"))):
        headers.setRawHeaders(name, [value])
    for cookie in reply.cookies:
        headers.addRawHeader(b"set-cookie", cookie.encode("ascii"))
    if reply.location is not None:
        headers.setRawHeaders(b"location", [reply.location.encode("ascii")])
    body = reply.body
    if request.method != b"HEAD":
        request.write(body)
    request.finish()
