"""Mail through an SMTP server (``type: smtp``), with Twisted's ESMTP client.

Three transports, as configured: ``starttls: true`` (port 587 usually;
STARTTLS is required — a server that does not offer it fails the attempt
rather than receiving the code in clear), ``tls: true`` (implicit TLS, port
465), or plain when both are false (tests, a relay on localhost). The server
certificate is checked against the system's CAs and the configured host name.
AUTH (CRAM-MD5, LOGIN or PLAIN, as the server offers) is used, and required,
when ``username`` is set.

The message is RFC 5322: From, To, Subject, Date, Message-ID, UTF-8 text.
"""

from __future__ import annotations

import email.utils
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from io import BytesIO

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.ssl import optionsForClientTLS
from twisted.mail import smtp

from radius_mfa.config import SmtpProviderConfig
from radius_mfa.delivery.base import DeliveryError, Outgoing

DEFAULT_SUBJECT = "Your sign-in code"


def compose(message: Outgoing, from_address: str) -> bytes:
    """The RFC 5322 bytes of the mail carrying ``message``.

    Lines end in LF: Twisted's SMTP client turns them into CRLF (and
    dot-stuffs) as it sends. The text is quoted-printable, so the mail is
    7-bit clean and needs no 8BITMIME from the server.
    """
    mail = EmailMessage(policy=SMTP_POLICY)
    mail["From"] = from_address
    mail["To"] = message.to
    mail["Subject"] = message.subject or DEFAULT_SUBJECT
    mail["Date"] = email.utils.formatdate(localtime=False, usegmt=True)
    domain = from_address.rpartition("@")[2] or None
    mail["Message-ID"] = email.utils.make_msgid(domain=domain)
    mail.set_content(message.text, charset="utf-8", cte="quoted-printable")
    return mail.as_bytes(policy=SMTP_POLICY.clone(linesep="\n"))


class SmtpProvider:
    """One SMTP submission server."""

    def __init__(self, config: SmtpProviderConfig, reactor, *, trust_root=None):
        if not config.host or not config.from_address:
            raise ValueError(f"provider {config.name}: an smtp provider needs host and from")
        if config.tls and config.starttls:
            raise ValueError(f"provider {config.name}: choose tls or starttls, not both")
        self.name = config.name
        self.timeout = config.timeout
        self._config = config
        self._reactor = reactor
        self._port = config.port or (465 if config.tls else 587 if config.starttls else 25)
        # trust_root: tests pass their own CA (a twisted.internet.ssl.Certificate);
        # None means the platform's trust store.
        self._tls_options = (optionsForClientTLS(config.host, trustRoot=trust_root)
                             if config.tls or config.starttls else None)

    async def send(self, message: Outgoing) -> None:
        config = self._config
        username = config.username.encode("utf-8") if config.username else None
        password = (config.password or "").encode("utf-8") if config.username else None
        result: Deferred = Deferred(lambda _: self._abort(factory, connector))
        factory = smtp.ESMTPSenderFactory(
            username, password, config.from_address, [message.to],
            BytesIO(compose(message, config.from_address)), result,
            retries=0,
            contextFactory=self._tls_options if config.starttls else None,
            requireAuthentication=username is not None,
            requireTransportSecurity=config.starttls)
        if config.tls:
            connector = self._reactor.connectSSL(config.host, self._port, factory, self._tls_options)
        else:
            connector = self._reactor.connectTCP(config.host, self._port, factory)
        try:
            await result
        except CancelledError:
            raise
        except Exception as exc:
            raise DeliveryError(_describe(exc)) from None

    @staticmethod
    def _abort(factory: smtp.ESMTPSenderFactory, connector) -> None:
        """Cancelled (the Sender's timeout): drop the connection, do not retry."""
        factory.sendFinished = True
        if factory.currentProtocol is not None and factory.currentProtocol.transport is not None:
            factory.currentProtocol.transport.abortConnection()
        else:
            connector.disconnect()


def _describe(exc: Exception) -> str:
    """One line, no server text (it may quote the message): what kind of failure."""
    if isinstance(exc, smtp.TLSRequiredError):
        return "STARTTLS not offered by the server"
    if isinstance(exc, smtp.AUTHDeclinedError):
        return "authentication refused"
    if isinstance(exc, smtp.AUTHRequiredError):
        return "authentication required but not offered"
    if isinstance(exc, smtp.SMTPConnectError):
        cause = exc.__cause__
        if cause is not None and "certificate verify failed" in str(cause):
            return "connection failed (TLS certificate not trusted)"
        return f"connection failed ({type(cause).__name__ if cause else 'unknown'})"
    if isinstance(exc, smtp.SMTPDeliveryError):
        return f"SMTP {exc.code}: recipient or message refused"
    if isinstance(exc, smtp.SMTPClientError):
        return f"SMTP {exc.code}" if exc.code else type(exc).__name__
    return type(exc).__name__
