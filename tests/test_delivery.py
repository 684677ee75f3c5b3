"""Code delivery: providers against real peers on loopback, and the Sender's failover.

The async tests are trial TestCases (as in test_primary_radius.py): trial
spins the real reactor until the returned Deferred fires. The HTTP gateways
are Twisted web servers in this process (tests/peers/gateway.py); the SMTP
server is aiosmtpd in a thread (tests/peers/smtpd.py) with the test CA of
tests/peers/slapd.py. Timeouts are short (0.3 s) to keep the suite fast.
"""

from __future__ import annotations

import base64
import functools
import json
import tempfile
import time
import urllib.parse
from pathlib import Path

import pytest
import structlog
from twisted.internet import defer, reactor, ssl
from twisted.trial import unittest

from peers.gateway import HANG, Gateway
from peers.slapd import make_tls
from radius_mfa.config import (DeliveryFactorConfig, FactorsConfig, HttpProviderConfig, SmtpProviderConfig,
                               TwilioProviderConfig)
from radius_mfa.delivery.base import DeliveryError, DeliveryFailed, Outgoing
from radius_mfa.delivery.http import HttpProvider
from radius_mfa.delivery.sender import Sender, build_senders, for_voice, spoken
from radius_mfa.delivery.smtp import SmtpProvider
from radius_mfa.delivery.twilio import TwilioProvider, twiml_say_twice
from radius_mfa.httptemplate import HttpTemplate

CODE = "482910"
PHONE = "+4915112345678"
SMS = Outgoing(channel="sms", to=PHONE, user="alice", code=CODE,
               text=f'Your "sign-in" code is {CODE}')
TIMEOUT = 0.3


def async_test(method):
    """Let trial wait for a coroutine test method."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        return defer.Deferred.fromCoroutine(method(self, *args, **kwargs))
    return run


def http_config(name: str, url: str, **options) -> HttpProviderConfig:
    options.setdefault("timeout", TIMEOUT)
    return HttpProviderConfig(name=name, url=url, **options)


# --------------------------------------------------------------------------- pure parts

def test_spoken_spells_the_digits():
    assert spoken("123456") == "1, 2, 3, 4, 5, 6"


def test_voice_text_spells_the_code_and_keeps_the_rest():
    voice = for_voice(Outgoing(channel="voice", to=PHONE, user="a", code="123", text="Code 123."))
    assert voice.text == "Code 1, 2, 3."
    assert voice.code == "123"


def test_json_body_escapes_quotes_and_url_is_percent_encoded():
    provider = HttpProvider(http_config("g", "https://gw.example/send?to={phone}&u={user}",
                                        body='{"to": "{phone}", "text": "{message}", "c": "{code}"}'),
                            reactor)
    method, url, headers, body = provider.request_for(SMS)
    assert method == "POST"
    assert url == "https://gw.example/send?to=%2B4915112345678&u=alice"
    assert json.loads(body) == {"to": PHONE, "text": SMS.text, "c": CODE}
    assert headers.getRawHeaders("content-type") == ["application/json"]


def test_form_body_is_form_encoded_and_values_are_not_filled_twice():
    message = Outgoing(channel="sms", to=PHONE, user="{code}", code=CODE, text="a&b=c")
    provider = HttpProvider(http_config("g", "http://gw/", body="to={phone}&text={message}&u={user}",
                                        headers=(("Content-Type", "application/x-www-form-urlencoded"),)),
                            reactor)
    body = provider.request_for(message)[3].decode()
    assert urllib.parse.parse_qs(body) == {"to": [PHONE], "text": ["a&b=c"], "u": ["{code}"]}


def test_one_template_serves_any_set_of_placeholders_and_leaves_other_braces():
    template = HttpTemplate(method="PUT", url="https://hook.example/{who}/x?a={who}", headers=(),
                            body='{"who": "{who}", "other": "{unknown}"}', placeholders=("who",))
    method, url, headers, body = template.request({"who": 'a "b"/c'})
    assert (method, url) == ("PUT", "https://hook.example/a%20%22b%22%2Fc/x?a=a%20%22b%22%2Fc")
    assert json.loads(body) == {"who": 'a "b"/c', "other": "{unknown}"}
    assert headers.getRawHeaders("content-type") == ["application/json"]
    plain = HttpTemplate(method="POST", url="http://gw/", headers=(), body="hi {who}", placeholders=("who",))
    assert plain.request({"who": "{who}"})[3] == b"hi {who}"           # filled once, not again
    assert plain.request({"who": "x"})[2].getRawHeaders("content-type") == ["text/plain; charset=utf-8"]


def test_twiml_escapes_the_text():
    assert twiml_say_twice("a < b") == ('<Response><Say>a &lt; b</Say><Pause length="1"/>'
                                        '<Say>a &lt; b</Say></Response>')


def test_build_senders_only_for_configured_channels():
    sms = DeliveryFactorConfig(providers=(http_config("a", "http://gw/"),))
    senders = build_senders(FactorsConfig(sms=sms), reactor=reactor)
    assert list(senders) == ["sms"]
    assert [p.name for p in senders["sms"].providers] == ["a"]


# --------------------------------------------------------------------------- HTTP gateways

class HttpDeliveryTest(unittest.TestCase):
    timeout = 15

    def gateway(self, answer=200, **options) -> Gateway:
        gateway = Gateway.start(reactor, answer, **options)
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(gateway.stop()))
        return gateway

    @async_test
    async def test_gateway_receives_method_headers_and_filled_body(self):
        gateway = self.gateway()
        provider = HttpProvider(http_config(
            "gw", gateway.url + "/send?user={user}", headers=(("Authorization", "Bearer t0ken"),),
            body='{"to": "{phone}", "text": "{message}"}'), reactor)
        sender = Sender("sms", [provider], reactor=reactor)
        assert await sender.send(SMS, deadline=5) == "gw"
        [got] = gateway.received
        assert got.method == "POST"
        assert got.path == "/send?user=alice"
        assert got.headers["authorization"] == "Bearer t0ken"
        assert got.headers["content-type"] == "application/json"
        assert json.loads(got.body) == {"to": PHONE, "text": SMS.text}

    @async_test
    async def test_get_carries_the_data_in_the_url(self):
        gateway = self.gateway()
        provider = HttpProvider(http_config("gw", gateway.url + "/s?to={phone}&m={message}",
                                            method="GET"), reactor)
        await provider.send(SMS)
        [got] = gateway.received
        assert got.method == "GET" and got.body == b""
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(got.path).query)
        assert query == {"to": [PHONE], "m": [SMS.text]}

    @async_test
    async def test_https_with_a_trusted_ca(self):
        tls = _tls()
        gateway = self.gateway(tls=tls)
        trust = ssl.Certificate.loadPEM(tls.ca_cert.read_bytes())
        provider = HttpProvider(http_config("gw", gateway.url + "/send", body="text={message}"),
                                reactor, trust_root=trust)
        await provider.send(SMS)
        assert gateway.received[0].body == f"text={SMS.text}".encode()

    @async_test
    async def test_https_refuses_an_untrusted_certificate(self):
        gateway = self.gateway(tls=_tls())
        provider = HttpProvider(http_config("gw", gateway.url + "/send", body="{message}"), reactor)
        with pytest.raises(DeliveryError):
            await provider.send(SMS)
        assert gateway.received == []

    @async_test
    async def test_500_fails_over_to_the_second_provider(self):
        broken, good = self.gateway(500, body=f'{{"echo": "{CODE}"}}'.encode()), self.gateway()
        sender = Sender("sms", [HttpProvider(http_config("first", broken.url), reactor),
                                HttpProvider(http_config("second", good.url), reactor)],
                        reactor=reactor)
        with structlog.testing.capture_logs() as events:
            assert await sender.send(SMS, deadline=5) == "second"
        assert len(broken.received) == 1 and len(good.received) == 1
        failed, sent = events
        assert failed["event"] == "delivery.failed" and failed["provider"] == "first"
        assert failed["reason"] == "HTTP 500"
        assert sent["event"] == "delivery.sent" and sent["provider"] == "second"
        assert failed["to"] == sent["to"] == "***5678"
        assert failed["channel"] == "sms" and failed["user"] == "alice"
        assert CODE not in repr(events) and PHONE not in repr(events)

    @async_test
    async def test_a_hung_gateway_fails_over_after_its_timeout(self):
        hung, good = self.gateway(HANG), self.gateway()
        sender = Sender("sms", [HttpProvider(http_config("hung", hung.url), reactor),
                                HttpProvider(http_config("good", good.url), reactor)],
                        reactor=reactor)
        started = time.monotonic()
        assert await sender.send(SMS, deadline=2) == "good"
        elapsed = time.monotonic() - started
        assert TIMEOUT <= elapsed < 1.5
        assert len(hung.received) == 1 and len(good.received) == 1

    @async_test
    async def test_the_deadline_bounds_a_provider_with_a_long_timeout(self):
        hung, good = self.gateway(HANG), self.gateway()
        sender = Sender("sms", [HttpProvider(http_config("hung", hung.url, timeout=30), reactor),
                                HttpProvider(http_config("good", good.url), reactor)],
                        reactor=reactor)
        started = time.monotonic()
        with pytest.raises(DeliveryFailed) as failed:
            await sender.send(SMS, deadline=0.4)
        assert time.monotonic() - started < 1.2
        assert failed.value.attempts == (("hung", "timed out after 0.4 s"),
                                         ("good", "skipped: no time left"))
        assert good.received == []

    @async_test
    async def test_all_failing_raises_delivery_failed_listing_each(self):
        broken, hung = self.gateway(503), self.gateway(HANG)
        closed = Gateway.start(reactor)
        url = closed.url
        await closed.stop()                     # nothing listens there any more
        sender = Sender("sms", [HttpProvider(http_config("a", broken.url), reactor),
                                HttpProvider(http_config("b", hung.url), reactor),
                                # Twisted's HostnameEndpoint reports a refusal after its
                                # 0.3 s attempt delay: give it the time
                                HttpProvider(http_config("c", url, timeout=2), reactor)],
                        reactor=reactor)
        with structlog.testing.capture_logs() as events:
            with pytest.raises(DeliveryFailed) as failed:
                await sender.send(SMS, deadline=5)
        names = [name for name, _ in failed.value.attempts]
        reasons = dict(failed.value.attempts)
        assert names == ["a", "b", "c"]
        assert reasons["a"] == "HTTP 503"
        assert reasons["b"] == f"timed out after {TIMEOUT:g} s"
        assert reasons["c"].startswith("no answer: ConnectionRefusedError")
        assert [e["event"] for e in events] == ["delivery.failed"] * 3
        assert CODE not in str(failed.value) and CODE not in repr(events)

    @async_test
    async def test_a_provider_bug_is_an_attempt_not_a_crash(self):
        class Broken:
            name, timeout = "broken", 1.0

            async def send(self, message):
                raise RuntimeError(f"oops with {message.code} for {message.to}")

        good = self.gateway()
        sender = Sender("sms", [Broken(), HttpProvider(http_config("good", good.url), reactor)],
                        reactor=reactor)
        with structlog.testing.capture_logs() as events:
            assert await sender.send(SMS, deadline=5) == "good"
        assert events[0]["reason"] == "RuntimeError: oops with *** for ***"

    # ----------------------------------------------------------------------- voice over http

    @async_test
    async def test_voice_over_http_reads_the_digits_one_by_one(self):
        gateway = self.gateway()
        sender = Sender("voice", [HttpProvider(http_config("tts", gateway.url,
                                                           body='{"say": "{message}", "c": "{code}"}'),
                                               reactor)], reactor=reactor)
        voice = Outgoing(channel="voice", to=PHONE, user="alice", code=CODE,
                         text=f"Your sign-in code is {CODE}")
        await sender.send(voice, deadline=5)
        assert json.loads(gateway.received[0].body) == {
            "say": "Your sign-in code is 4, 8, 2, 9, 1, 0", "c": CODE}

    # ----------------------------------------------------------------------- twilio

    def twilio(self, gateway: Gateway, name: str = "twilio") -> TwilioProvider:
        return TwilioProvider(TwilioProviderConfig(
            name=name, url=gateway.url, account_sid="AC123", auth_token="tok3n",
            from_number="+15005550006", timeout=TIMEOUT), reactor)

    @async_test
    async def test_twilio_sms_is_a_form_post_to_messages_with_basic_auth(self):
        gateway = self.gateway(201)
        assert await Sender("sms", [self.twilio(gateway)], reactor=reactor).send(SMS, 5) == "twilio"
        [got] = gateway.received
        assert got.method == "POST"
        assert got.path == "/2010-04-01/Accounts/AC123/Messages.json"
        assert got.headers["authorization"] == "Basic " + base64.b64encode(b"AC123:tok3n").decode()
        assert got.headers["content-type"] == "application/x-www-form-urlencoded"
        assert urllib.parse.parse_qs(got.body.decode()) == {
            "To": [PHONE], "From": ["+15005550006"], "Body": [SMS.text]}

    @async_test
    async def test_twilio_voice_is_a_call_saying_the_digits_twice(self):
        gateway = self.gateway(201)
        voice = Outgoing(channel="voice", to=PHONE, user="alice", code="123456",
                         text="Your code is 123456")
        await Sender("voice", [self.twilio(gateway)], reactor=reactor).send(voice, 5)
        [got] = gateway.received
        assert got.path == "/2010-04-01/Accounts/AC123/Calls.json"
        form = urllib.parse.parse_qs(got.body.decode())
        assert form["To"] == [PHONE] and form["From"] == ["+15005550006"]
        say = "<Say>Your code is 1, 2, 3, 4, 5, 6</Say>"
        assert form["Twiml"] == [f'<Response>{say}<Pause length="1"/>{say}</Response>']

    @async_test
    async def test_twilio_error_names_the_status_and_twilio_code_only(self):
        gateway = self.gateway(400, body=json.dumps(
            {"code": 21211, "message": f"The 'To' number {PHONE} is not valid"}).encode())
        with pytest.raises(DeliveryError) as error:
            await self.twilio(gateway).send(SMS)
        assert str(error.value) == "HTTP 400 (Twilio error 21211)"


# --------------------------------------------------------------------------- SMTP

_TLS = None


def _tls():
    """One test CA and server certificate (127.0.0.1, localhost) for the module."""
    global _TLS
    if _TLS is None:
        _TLS = make_tls(Path(tempfile.mkdtemp(prefix="delivery-tls-")))
    return _TLS


EMAIL = Outgoing(channel="email", to="alice@example.org", user="alice", code=CODE,
                 text=f"Your sign-in code is {CODE} — valid 5 minutes", subject="Your sign-in code")


class SmtpDeliveryTest(unittest.TestCase):
    timeout = 15

    def smtpd(self, **options):
        from peers.smtpd import Smtpd
        server = Smtpd.start(tls=_tls(), **options)
        self.addCleanup(server.stop)
        return server

    def provider(self, server, **options) -> SmtpProvider:
        trust = ssl.Certificate.loadPEM(_tls().ca_cert.read_bytes())
        options.setdefault("host", "127.0.0.1")
        options.setdefault("timeout", 5)
        return SmtpProvider(SmtpProviderConfig(name="mail", port=server.port,
                                               from_address="mfa@example.org", **options),
                            reactor, trust_root=trust)

    def assert_mail(self, mail):
        assert mail.mail_from == "mfa@example.org"
        assert mail.rcpt_tos == ("alice@example.org",)
        message = mail.message
        assert message["From"] == "mfa@example.org"
        assert message["To"] == "alice@example.org"
        assert message["Subject"] == "Your sign-in code"
        assert message["Date"] and message["Message-ID"].endswith("@example.org>")
        assert message.get_content().strip() == EMAIL.text
        assert b"\r\r" not in mail.content and max(mail.content) < 128     # 7-bit clean

    @async_test
    async def test_plain_smtp_delivers_the_mail(self):
        server = self.smtpd(security="plain")
        sender = Sender("email", [self.provider(server)], reactor=reactor)
        with structlog.testing.capture_logs() as events:
            assert await sender.send(EMAIL, deadline=5) == "mail"
        [mail] = server.mails
        self.assert_mail(mail)
        assert mail.login is None and not mail.tls
        assert events[0]["to"] == "a***@example.org" and CODE not in repr(events)

    @async_test
    async def test_starttls_with_auth_delivers_the_mail(self):
        server = self.smtpd(security="starttls", users={"mfa": "s3cret"})
        await self.provider(server, host="localhost", starttls=True, username="mfa",
                            password="s3cret").send(EMAIL)
        [mail] = server.mails
        self.assert_mail(mail)
        assert mail.login == "mfa" and mail.tls

    @async_test
    async def test_implicit_tls_delivers_the_mail(self):
        server = self.smtpd(security="tls")
        await self.provider(server, tls=True).send(EMAIL)
        [mail] = server.mails
        self.assert_mail(mail)
        assert mail.tls

    @async_test
    async def test_wrong_password_is_a_delivery_error(self):
        server = self.smtpd(security="starttls", users={"mfa": "s3cret"})
        with pytest.raises(DeliveryError) as error:
            await self.provider(server, starttls=True, username="mfa", password="wrong").send(EMAIL)
        assert str(error.value) == "authentication refused"
        assert server.mails == []

    @async_test
    async def test_starttls_required_but_not_offered_sends_nothing(self):
        server = self.smtpd(security="plain")
        with pytest.raises(DeliveryError) as error:
            await self.provider(server, starttls=True).send(EMAIL)
        assert str(error.value) == "STARTTLS not offered by the server"
        assert server.mails == []

    @async_test
    async def test_untrusted_certificate_is_refused(self):
        server = self.smtpd(security="tls")
        provider = SmtpProvider(SmtpProviderConfig(name="mail", host="127.0.0.1",
                                                   port=server.port, tls=True,
                                                   from_address="mfa@example.org"), reactor)
        with pytest.raises(DeliveryError) as error:
            await provider.send(EMAIL)
        assert str(error.value).startswith("connection failed")
        assert server.mails == []


class SmtpTimeoutTest(unittest.TestCase):
    timeout = 15

    @async_test
    async def test_a_server_that_never_greets_fails_over_within_the_timeout(self):
        silent = Gateway.start(reactor, HANG)          # accepts, never says 220
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(silent.stop()))
        good = Gateway.start(reactor, 200)
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(good.stop()))
        port = int(silent.url.rsplit(":", 1)[1])
        mail = SmtpProvider(SmtpProviderConfig(name="mail", host="127.0.0.1", port=port,
                                               from_address="mfa@example.org", timeout=TIMEOUT), reactor)
        relay = HttpProvider(http_config("relay", good.url, body="{message}"), reactor)
        started = time.monotonic()
        assert await Sender("email", [mail, relay], reactor=reactor).send(EMAIL, 3) == "relay"
        assert time.monotonic() - started < 1.5
