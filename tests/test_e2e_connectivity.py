"""End to end: `radius-mfa check-connectivity` against real peers — a FreeRADIUS
upstream (with and without Status-Server, with the right and a wrong secret),
a slapd over LDAPS with the service bind, a local HTTP server, a local SMTP
server with STARTTLS, a closed port, and the store."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from e2e import command
from peers import freeradius
from peers.freeradius import FreeRadius
from peers.process import free_tcp_port, free_udp_port, wait_for
from peers.slapd import SERVICE_DN, SERVICE_PASSWORD, Slapd
from peers.slapd import available as slapd_available
from peers.smtpd import Smtpd

pytestmark = pytest.mark.skipif(not freeradius.available(),
                                reason="FreeRADIUS (Debian freeradius) is not installed")

LINE = re.compile(r"^(OK|FAIL)\s+(\S+) (.+?): (.+) \((\d+) ms\)$")


class NoStatusServer(FreeRadius):
    """A FreeRADIUS that ignores Status-Server, as many deployed servers do."""

    def _write_config(self) -> None:
        super()._write_config()
        conf = self.directory / "radiusd.conf"
        conf.write_text(conf.read_text().replace("status_server = yes", "status_server = no"))

    def start(self, timeout: float = 20.0) -> "NoStatusServer":
        self._stdout = open(self.directory / "stdout.log", "ab")
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                     stdout=self._stdout, stderr=subprocess.STDOUT)
        if not wait_for(lambda: "Ready to process requests" in self.log(), timeout):
            self.stop()
            raise AssertionError(f"FreeRADIUS did not start:\n{self.log()}")
        return self


class _Hello(BaseHTTPRequestHandler):
    requests = 0

    def do_POST(self):            # noqa: N802 - the http.server spelling
        type(self).requests += 1
        self.send_response(200)
        self.end_headers()

    do_GET = do_POST

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def peers(tmp_path_factory):
    started = []
    try:
        radius = FreeRadius(tmp_path_factory.mktemp("freeradius")).start()
        started.append(radius.stop)
        quiet = NoStatusServer(tmp_path_factory.mktemp("freeradius-quiet")).start()
        started.append(quiet.stop)
        directory = None
        if slapd_available():
            directory = Slapd(tmp_path_factory.mktemp("slapd")).start()
            started.append(directory.stop)
        http = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
        thread = threading.Thread(target=http.serve_forever, daemon=True)
        thread.start()
        started.append(http.server_close)
        started.append(http.shutdown)
        from peers.slapd import make_tls
        tls = directory.tls if directory is not None else make_tls(tmp_path_factory.mktemp("tls"))
        smtp = Smtpd.start(security="starttls", tls=tls)
        started.append(smtp.stop)
        yield {"radius": radius, "quiet": quiet, "slapd": directory, "http": http,
               "smtp": smtp, "ca": str(tls.ca_cert)}
    finally:
        for stop in reversed(started):
            stop()


def write(home: Path, body: str, store: str = "sqlite:///radius-mfa.db") -> Path:
    path = home / "radius-mfa.yaml"
    path.write_text(f"""
store: "{store}"
clients:
  - name: vpn
    address: 127.0.0.1
    secret: "a-long-enough-nas-secret"
{body}
""")
    return path


def check(home: Path, config: Path, *args: str, ca: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if ca is not None:
        env["SSL_CERT_FILE"] = ca        # what the system's CA list would hold for a real provider
    return subprocess.run(command() + ["-c", str(config), "check-connectivity", *args],
                          cwd=home, capture_output=True, text=True, timeout=60, env=env)


def lines(done: subprocess.CompletedProcess) -> dict[tuple[str, str], tuple[str, str, int]]:
    found = {}
    for line in done.stdout.splitlines():
        match = LINE.match(line)
        assert match, f"not a check line: {line!r}\n{done.stdout}{done.stderr}"
        status, kind, name, detail, ms = match.groups()
        found[(kind, name)] = (status, detail, int(ms))
    return found


def test_every_upstream_answers_and_nothing_is_sent(peers, tmp_path):
    radius, quiet, smtp, http = peers["radius"], peers["quiet"], peers["smtp"], peers["http"]
    subprocess.run(command() + ["-c", str(write(tmp_path, "")), "user", "list"], cwd=tmp_path,
                   check=True, capture_output=True, timeout=60)          # the store exists
    config = write(tmp_path, f"""
primary:
  backend: radius
  radius:
    servers:
      - {{address: "127.0.0.1:{radius.port}", secret: "{radius.secret}"}}
      - {{address: "127.0.0.1:{quiet.port}", secret: "{quiet.secret}"}}
    timeout: 1
factors:
  sms:
    providers:
      - name: gateway
        type: http
        url: "http://127.0.0.1:{http.server_address[1]}/send"
        body: '{{"to": "{{phone}}", "text": "{{message}}"}}'
  email:
    providers:
      - name: mail
        type: smtp
        host: localhost
        port: {smtp.port}
        starttls: true
        from: "mfa@example.org"
""")
    before = _Hello.requests
    done = check(tmp_path, config, ca=peers["ca"])
    assert done.returncode == 0, done.stdout + done.stderr
    found = lines(done)
    assert found[("radius", f"127.0.0.1:{radius.port}")][:2] == ("OK", "answered Status-Server (secret verified)")
    status, detail, _ = found[("radius", f"127.0.0.1:{quiet.port}")]
    assert status == "OK" and "made-up user was rejected (secret verified)" in detail, detail
    assert found[("sms", "gateway")][0] == "OK"
    status, detail, _ = found[("email", "mail")]
    assert status == "OK" and "STARTTLS, TLSv1." in detail, detail
    status, detail, _ = found[("store", str(tmp_path / "radius-mfa.db"))]
    assert status == "OK" and detail.startswith("one query answered"), detail
    assert len(found) == 5
    assert _Hello.requests == before, "the check sent an HTTP request"
    assert smtp.mails == [], "the check sent a mail"


def test_a_closed_port_and_an_untrusted_certificate_fail_with_the_reason(peers, tmp_path):
    closed = free_tcp_port()
    closed_udp = free_udp_port()
    config = write(tmp_path, f"""
primary:
  backend: radius
  radius:
    servers:
      - {{address: "127.0.0.1:{closed_udp}", secret: "testing123"}}
    timeout: 1
factors:
  sms:
    providers:
      - name: dead-gateway
        type: http
        url: "https://127.0.0.1:{closed}/send"
  email:
    providers:
      - name: mail
        type: smtp
        host: localhost
        port: {peers["smtp"].port}
        starttls: true
        from: "mfa@example.org"
""")
    started = time.monotonic()
    done = check(tmp_path, config, "--timeout", "3")          # no SSL_CERT_FILE: the test CA is unknown
    assert done.returncode == 1, done.stdout + done.stderr
    assert time.monotonic() - started < 10
    found = lines(done)
    assert found[("sms", "dead-gateway")][:2] == ("FAIL", "connection refused")
    assert found[("radius", f"127.0.0.1:{closed_udp}")][0] == "FAIL"
    status, detail, _ = found[("email", "mail")]
    assert status == "FAIL" and "certificate" in detail, detail
    assert found[("store", str(tmp_path / "radius-mfa.db"))][0] == "OK"      # not created yet, creatable
    assert not (tmp_path / "radius-mfa.db").exists(), "the check created the store"
    assert not (tmp_path / "store.key").exists(), "the check created the store key"


def test_a_wrong_radius_secret_is_reported_as_such(peers, tmp_path):
    radius, quiet = peers["radius"], peers["quiet"]
    config = write(tmp_path, f"""
primary:
  backend: radius
  radius:
    servers:
      - {{address: "127.0.0.1:{radius.port}", secret: "not-the-secret"}}
      - {{address: "127.0.0.1:{quiet.port}", secret: "not-the-secret"}}
    timeout: 1
""")
    done = check(tmp_path, config, "--timeout", "4")
    assert done.returncode == 1, done.stdout + done.stderr
    found = lines(done)
    for port in (radius.port, quiet.port):
        status, detail, _ = found[("radius", f"127.0.0.1:{port}")]
        assert status == "FAIL" and detail.startswith("wrong shared secret"), detail
    assert "not-the-secret" not in done.stdout + done.stderr


def test_a_wrong_secret_where_message_authenticator_is_required_is_named_among_the_causes(tmp_path):
    """Such a server drops every probe unanswered: the line lists the causes."""
    strict = FreeRadius(tmp_path / "freeradius", require_message_authenticator=True).start()
    try:
        config = write(tmp_path, f"""
primary:
  backend: radius
  radius:
    servers:
      - {{address: "127.0.0.1:{strict.port}", secret: "not-the-secret"}}
    timeout: 1
""")
        done = check(tmp_path, config, "--timeout", "2")
    finally:
        strict.stop()
    assert done.returncode == 1
    status, detail, ms = lines(done)[("radius", f"127.0.0.1:{strict.port}")]
    assert status == "FAIL" and detail.startswith("no answer to Status-Server or to an Access-Request"), detail
    assert "wrong shared secret" in detail and 1900 <= ms <= 3500


@pytest.mark.skipif(not slapd_available(), reason="slapd (Debian slapd) is not installed")
def test_ldap_tls_and_the_service_bind_are_checked(peers, tmp_path):
    directory = peers["slapd"]
    (tmp_path / "ldap.secret").write_text(SERVICE_PASSWORD + "\n")
    (tmp_path / "wrong.secret").write_text("not-the-password\n")
    section = """
primary:
  backend: ldap
  ldap:
    servers: ["{url}"]
    ca_file: "{ca}"
    bind_dn: "{dn}"
    bind_password_file: {secret}
    base_dn: "dc=example,dc=org"
    timeout: 3
"""
    good = write(tmp_path, section.format(url=directory.ldaps_url, ca=directory.ca_file,
                                          dn=SERVICE_DN, secret="ldap.secret"))
    done = check(tmp_path, good)
    assert done.returncode == 0, done.stdout + done.stderr
    status, detail, _ = lines(done)[("ldap", directory.ldaps_url)]
    assert (status, detail) == ("OK", f"TLS, bound as {SERVICE_DN}")
    assert directory.binds(SERVICE_DN), "no service bind reached slapd"

    wrong = write(tmp_path, section.format(url=directory.ldaps_url, ca=directory.ca_file,
                                           dn=SERVICE_DN, secret="wrong.secret"))
    done = check(tmp_path, wrong)
    assert done.returncode == 1
    status, detail, _ = lines(done)[("ldap", directory.ldaps_url)]
    assert status == "FAIL" and "service account's bind was refused: invalidCredentials" in detail, detail
    assert "not-the-password" not in done.stdout + done.stderr

    plain = write(tmp_path, section.format(url=directory.ldap_url, ca=directory.ca_file,
                                           dn=SERVICE_DN, secret="ldap.secret"))
    done = check(tmp_path, plain)
    assert done.returncode == 0, done.stdout + done.stderr
    assert lines(done)[("ldap", directory.ldap_url)][:2] == (
        "OK", f"no TLS: passwords cross the network in clear, bound as {SERVICE_DN}")
    plain.write_text(plain.read_text().replace("    timeout: 3\n", "    timeout: 3\n    starttls: true\n"))
    done = check(tmp_path, plain)
    assert done.returncode == 0, done.stdout + done.stderr
    assert lines(done)[("ldap", directory.ldap_url)][:2] == ("OK", f"StartTLS, bound as {SERVICE_DN}")

    closed = f"ldaps://127.0.0.1:{free_tcp_port()}"
    done = check(tmp_path, write(tmp_path, section.format(url=closed, ca=directory.ca_file,
                                                          dn=SERVICE_DN, secret="ldap.secret")))
    assert done.returncode == 1
    assert lines(done)[("ldap", closed)][0] == "FAIL"


def test_the_postgresql_store_answers_one_query(tmp_path):
    pg = pytest.importorskip("pg")
    done = check(tmp_path, write(tmp_path, "", store=pg.DATABASE_URL.replace("postgresql://postgres@",
                                                                           "postgresql://postgres:hunter2@")))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK   store postgresql://127.0.0.1:5432/radius_mfa_test: one query answered" in done.stdout
    assert "hunter2" not in done.stdout + done.stderr


def test_a_bad_configuration_exits_2(tmp_path):
    config = tmp_path / "radius-mfa.yaml"
    config.write_text("clients: [\n")
    done = check(tmp_path, config)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
