"""A real SMTP server for the tests: aiosmtpd on loopback, in its own thread.

``Smtpd.start(security="plain" | "starttls" | "tls", tls=TlsFiles, users={...})``
listens on a free port of 127.0.0.1. aiosmtpd runs its own asyncio loop in a
thread (its ``Controller``), so it answers while the test's Twisted reactor
runs in the main thread. ``starttls`` offers STARTTLS and refuses mail
before it; ``tls`` is implicit TLS (port-465 style). With ``users`` the
server offers AUTH (LOGIN, PLAIN), requires it, and records who logged in.
The TLS material is the test CA of :func:`peers.slapd.make_tls`.

Every accepted mail lands in :attr:`Smtpd.mails` (:class:`Mail`: envelope
sender and recipients, the login used, the raw RFC 5322 bytes, parsed into
``message`` for the assertions). ``stop()`` stops the thread.
"""

from __future__ import annotations

import email
import email.policy
import ssl
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from peers.process import free_tcp_port


@dataclass(frozen=True)
class Mail:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    login: str | None
    tls: bool                                  # the session was encrypted when the mail came
    content: bytes = field(repr=False)

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.content, policy=email.policy.default)


class _Handler:
    def __init__(self, smtpd: "Smtpd"):
        self.smtpd = smtpd

    async def handle_DATA(self, server, session, envelope):
        login = session.auth_data
        login = login.decode() if isinstance(login, bytes) else login
        with self.smtpd._lock:
            self.smtpd.mails.append(Mail(
                mail_from=envelope.mail_from, rcpt_tos=tuple(envelope.rcpt_tos), login=login,
                tls=_encrypted(server, session), content=envelope.original_content or envelope.content))
        return "250 OK"


def _encrypted(server, session) -> bool:
    """STARTTLS done (``session.ssl``) or a TLS socket from the start (implicit TLS)."""
    transport = getattr(server, "transport", None)
    return session.ssl is not None or (
        transport is not None and transport.get_extra_info("ssl_object") is not None)


class Smtpd:
    def __init__(self) -> None:
        self.mails: list[Mail] = []
        self.failed_logins = 0
        self._lock = threading.Lock()
        self._controller: Controller | None = None
        self.port = 0

    @classmethod
    def start(cls, *, security: str = "plain", tls=None, users: dict[str, str] | None = None) -> "Smtpd":
        smtpd = cls()
        context = None
        if security != "plain":
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(tls.server_cert), str(tls.server_key))
        options: dict = {}
        if security == "starttls":
            options.update(tls_context=context, require_starttls=True)
        elif security == "tls":
            options.update(ssl_context=context)
        if users:
            options.update(authenticator=smtpd._authenticator(users), auth_required=True,
                           auth_require_tls=security != "plain")
        smtpd.port = free_tcp_port()
        smtpd._controller = Controller(_Handler(smtpd), hostname="127.0.0.1", port=smtpd.port,
                                       server_hostname="localhost", **options)
        smtpd._controller.start()
        return smtpd

    def _authenticator(self, users: dict[str, str]):
        def check(server, session, envelope, mechanism, auth_data):
            if isinstance(auth_data, LoginPassword):
                login, password = auth_data.login.decode(), auth_data.password.decode()
                if users.get(login) == password:
                    return AuthResult(success=True, auth_data=login)
            with self._lock:
                self.failed_logins += 1
            return AuthResult(success=False, handled=False)
        return check

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
