"""Codes by SMS, voice and email, end to end: radclient plays the VPN, local HTTP
servers play the SMS gateways (one answering 500, one never answering, one
recording), a real SMTP server (aiosmtpd) receives the mail."""

from __future__ import annotations

import json
import re
import time

import pytest

from e2e import SECRET, Server, needs_radclient, radclient
from peers.recording_gateway import Gateway
from peers.smtpd import Smtpd

PASSWORD = "correct horse"
PHONE = "+4915112345678"


@pytest.fixture
def gateways():
    made = {name: Gateway(status) for name, status in (("broken", 500), ("stuck", "hang"), ("good", 200))}
    yield made
    for gateway in made.values():
        gateway.stop()


def sms_section(gateways, channel: str = "sms", sends: int = 5) -> str:
    providers = "".join(f"""
      - name: {name}
        type: http
        url: "{gateways[name].url}"
        body: '{{"to": "{{phone}}", "text": "{{message}}", "code": "{{code}}", "user": "{{user}}"}}'
        timeout: 1
""" for name in ("broken", "stuck", "good"))
    return f"""
  {channel}:
    code_ttl: 300
    rate_limit: {{sends: {sends}, minutes: 5}}
    providers:{providers}"""


def start(tmp_path, factors: str, mode: str = "challenge") -> Server:
    clients = f"""
  - name: local
    address: 127.0.0.1
    secret: "{SECRET}"
    mode: {mode}
"""
    server = Server(tmp_path, clients=clients)
    # the harness writes factors.totp only: the delivery sections go beside it
    text = server.config.read_text().replace("factors:\n  totp: {window: 1}\n",
                                             f"factors:\n  totp: {{window: 1}}{factors}\n")
    server.config.write_text(text)
    return server


def ask(server: Server, password: str, *, state: str | None = None, station: str = "192.0.2.10",
        user: str = "alice", timeout: float = 8.0):
    attributes = [("User-Name", user), ("User-Password", password), ("Calling-Station-Id", station),
                  ("Message-Authenticator", "0x00")]
    if state:
        attributes.append(("State", state))
    return radclient(server.port, attributes, timeout=timeout, retries=1)


@needs_radclient
def test_challenge_menu_then_sms_through_failover_then_the_code(tmp_path, gateways):
    server = start(tmp_path, sms_section(gateways))
    server.cli("user", "add", "alice", "--phone", PHONE, "--password-stdin", input=PASSWORD + "\n")
    server.cli("token", "add", "alice", "--type", "totp", "--json")
    server.start()
    try:
        menu = ask(server, PASSWORD)
        assert menu.code == "Access-Challenge"
        assert "sms" in menu.first("Reply-Message") and "***5678" in menu.first("Reply-Message")
        started = time.monotonic()
        sent = ask(server, "sms", state=menu.first("State"))
        assert sent.code == "Access-Challenge", sent.output
        assert time.monotonic() - started < 5               # two dead gateways, one second each at most
        assert "***5678" in sent.first("Reply-Message") and PHONE not in sent.output
        assert len(gateways["broken"].received) == 1 and len(gateways["stuck"].received) == 1
        (code,) = gateways["good"].codes()
        body = json.loads(gateways["good"].received[0][1])
        assert body["to"] == PHONE and code in body["text"] and body["user"] == "alice"
        server.mark("alice")
        accepted = ask(server, code, state=sent.first("State"))
        assert accepted.code == "Access-Accept"
        record = server.record_since_mark("alice")
        assert (record["factor"], record["provider"]) == ("sms", "good")
        # the code was used
        again = ask(server, PASSWORD)
        assert ask(server, f"{PASSWORD},{code}").code == "Access-Reject"
        assert again.code == "Access-Challenge"
        log = server.log() + server.audit_path.read_text()
        assert not re.search(rf"\b{code}\b", log)             # no code in any log
        assert PHONE not in log
    finally:
        assert server.stop() == 0


@needs_radclient
def test_inline_password_sms_then_password_code(tmp_path, gateways):
    server = start(tmp_path, sms_section(gateways), mode="inline")
    server.cli("user", "add", "alice", "--phone", PHONE, "--password-stdin", input=PASSWORD + "\n")
    server.start()
    try:
        server.mark("alice")
        told = ask(server, f"{PASSWORD},sms")
        assert told.code == "Access-Reject"
        assert "password,CODE" in told.first("Reply-Message") and "***5678" in told.first("Reply-Message")
        assert server.record_since_mark("alice")["reason"] == "code_sent"
        # the NAS retries the same attempt with a new identifier: no second message
        assert ask(server, f"{PASSWORD},sms").code == "Access-Reject"
        (code,) = gateways["good"].codes()
        assert ask(server, f"{PASSWORD},{code}").code == "Access-Accept"
        assert ask(server, f"{PASSWORD},{code}").code == "Access-Reject"       # single use
        # a bad password never sends anything
        assert ask(server, "wrong,sms").code == "Access-Reject"
        assert len(gateways["good"].received) == 1
    finally:
        assert server.stop() == 0


@needs_radclient
def test_the_rate_limit_answers_with_a_clear_message(tmp_path, gateways):
    server = start(tmp_path, sms_section(gateways, sends=2), mode="inline")
    server.cli("user", "add", "alice", "--phone", PHONE, "--password-stdin", input=PASSWORD + "\n")
    server.start()
    try:
        for station in ("192.0.2.1", "192.0.2.2"):           # two attempts: two codes
            assert ask(server, f"{PASSWORD},sms", station=station).code == "Access-Reject"
        server.mark("alice")
        limited = ask(server, f"{PASSWORD},sms", station="192.0.2.3")
        assert limited.code == "Access-Reject" and "Too many" in limited.first("Reply-Message")
        assert server.record_since_mark("alice")["reason"] == "rate_limited"
        assert len(gateways["good"].received) == 2
    finally:
        assert server.stop() == 0


@needs_radclient
def test_voice_reads_the_code_out(tmp_path, gateways):
    server = start(tmp_path, sms_section(gateways, channel="voice"), mode="inline")
    server.cli("user", "add", "alice", "--phone", PHONE, "--password-stdin", input=PASSWORD + "\n")
    server.start()
    try:
        assert ask(server, f"{PASSWORD},voice").code == "Access-Reject"
        body = json.loads(gateways["good"].received[0][1])
        code = body["code"]
        assert ", ".join(code) in body["text"]                  # digit by digit for the speech engine
        assert ask(server, f"{PASSWORD},{code}").code == "Access-Accept"
    finally:
        assert server.stop() == 0


@needs_radclient
def test_email_only_user_gets_the_code_straight_after_the_password(tmp_path):
    smtpd = Smtpd.start()
    try:
        server = start(tmp_path, f"""
  email:
    subject: "Your sign-in code"
    message: "Your sign-in code is {{code}}"
    providers:
      - name: mail
        type: smtp
        host: 127.0.0.1
        port: {smtpd.port}
        from: "mfa@example.org"
        timeout: 5""")
        server.cli("user", "add", "alice", "--email", "alice@example.org", "--password-stdin",
                   input=PASSWORD + "\n")
        server.start()
        try:
            sent = ask(server, PASSWORD)
            assert sent.code == "Access-Challenge"
            assert "a***@example.org" in sent.first("Reply-Message")
            (mail,) = smtpd.mails
            message = mail.message
            assert message["To"] == "alice@example.org" and message["Subject"] == "Your sign-in code"
            code = re.search(r"\b(\d{6})\b", message.get_content()).group(1)
            server.mark("alice")
            assert ask(server, code, state=sent.first("State")).code == "Access-Accept"
            record = server.record_since_mark("alice")
            assert (record["factor"], record["provider"]) == ("email", "mail")
        finally:
            assert server.stop() == 0
    finally:
        smtpd.stop()


@needs_radclient
def test_retransmissions_never_send_a_second_message(tmp_path, gateways):
    """Copies of one request sent while it is decided (the dead gateways make
    that take a while) and after: one message, identical replies."""
    from radius_mfa.radius import codec

    server = start(tmp_path, sms_section(gateways), mode="inline")
    server.cli("user", "add", "alice", "--phone", PHONE, "--password-stdin", input=PASSWORD + "\n")
    server.start()
    try:
        request = codec.build_access_request(SECRET.encode(), "alice", f"{PASSWORD},sms".encode(), id=7)
        first, cached = server.send_copies(request, 3)
        assert first == cached
        assert codec.decode_response(first, SECRET.encode(), request[4:20]).code == codec.ACCESS_REJECT
        assert len(gateways["good"].received) == 1
        assert len(server.wait_audit(1)) == 1
    finally:
        assert server.stop() == 0
