"""Enrolment at sign-in (``policy.unenrolled: enrol``) driven with radclient
against the running server: a right password and no factor gets an
Access-Reject whose Reply-Message holds a one-time link to the self-service
page, and the link opens that page over HTTPS."""

from __future__ import annotations

import re
import ssl
import urllib.request
from pathlib import Path

from e2e import Server, needs_radclient, radclient
from peers.process import free_tcp_port

PASSWORD = "Tr0ub4dor&3-enrol"
LINK = re.compile(r"https://127\.0\.0\.1:\d+/enrol/[A-Za-z0-9_-]{43}")


def sign_in(server: Server, password: str):
    return radclient(server.port, [("User-Name", "nina"), ("User-Password", password),
                                   ("Message-Authenticator", "0x00")])


def open_page(url: str) -> tuple[int, str]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE           # the page's self-signed certificate, on loopback
    with urllib.request.urlopen(url, context=context, timeout=10) as response:
        return response.status, response.read().decode()


@needs_radclient
def test_a_right_password_without_a_factor_gets_a_link_that_opens_the_self_service_page(tmp_path: Path):
    web = free_tcp_port()
    server = Server(tmp_path, policy="  unenrolled: enrol", extra=f"""
portal:
  listen: "127.0.0.1:{web}"
  tls_cert: portal.crt
  tls_key: portal.key
  public_url: "https://127.0.0.1:{web}"
""")
    server.cli("user", "add", "nina", "--password-stdin", input=PASSWORD + "\n")
    server.start()
    try:
        server.mark("nina")
        wrong = sign_in(server, "not the password")
        assert wrong.code == "Access-Reject" and wrong.first("Reply-Message") is None
        assert server.record_since_mark("nina")["reason"] == "bad_password"

        server.mark("nina")
        reply = sign_in(server, PASSWORD)
        assert reply.code == "Access-Reject"
        url = LINK.search(reply.first("Reply-Message") or "").group(0)
        record = server.record_since_mark("nina")
        assert (record["result"], record["reason"]) == ("reject", "enrol")
        # the link is a secret: not in the audit, nor in the log
        assert url not in server.log() and url not in (tmp_path / "audit.jsonl").read_text()

        status, page = open_page(url)
        assert status == 200 and "<form" in page
    finally:
        server.stop()
