"""RADIUS over TLS (RadSec, RFC 6614) end to end: a real `radius-mfa serve`
with a tls listener, reached through radsecproxy and FreeRADIUS 3.2 (both as
TLS clients, radclient behind them) and through a TLS client written here
(Python's ssl) for what the real peers cannot be made to do: present the
wrong certificate, speak plain TCP, send garbage or an oversized length.

Each test session makes a throwaway CA with server and client certificates
(tests/peers/pki.py). Everything binds to loopback; every process started
is stopped by pid.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import struct
import time
from pathlib import Path

import pytest

from e2e import SECRET, Server, needs_radclient, radclient
from peers import freeradius, radsecproxy
from peers.freeradius_tls import TlsFrontProxy
from peers.pki import SERVER_NAME, Pki
from peers.process import free_tcp_port, wait_for
from peers.radsecproxy import RadsecProxy
from radius_mfa.radius import codec

PASSWORD = "correct horse"
RADSEC = b"radsec"
NAS_NAME = "nas1.example.org"

needs_radsecproxy = pytest.mark.skipif(not radsecproxy.available() and not os.environ.get("CI"),
                                       reason="radsecproxy (Debian radsecproxy) is not installed")
needs_freeradius = pytest.mark.skipif(not freeradius.available() and not os.environ.get("CI"),
                                      reason="FreeRADIUS (Debian freeradius) is not installed")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca = Pki(directory)
    ca.server_cert = ca.server()
    ca.nas = ca.client("nas1", NAS_NAME)
    ca.other_nas = ca.client("nas2", "other.example.org")
    rogue = Pki(directory / "rogue", name="rogue-ca")
    ca.rogue_nas = rogue.client("rogue", NAS_NAME)     # the right name, from a CA we do not trust
    return ca


def tls_clients(mode: str = "inline", cert_name: str | None = NAS_NAME, extra: str = "") -> str:
    name_line = f"    cert_name: {cert_name}\n" if cert_name else ""
    return f"""
  - name: local
    address: 127.0.0.1
    secret: "{SECRET}"
  - name: nas-tls
    address: 127.0.0.1
    transport: tls
{name_line}    mode: {mode}
{extra}"""


def radsec_server(directory: Path, pki, *, mode: str = "inline", workers: int = 1,
                  idle_timeout: float | None = None, cert_name: str | None = NAS_NAME) -> Server:
    tls_port = free_tcp_port()
    idle = f"    idle_timeout: {idle_timeout}\n" if idle_timeout is not None else ""
    server = Server(directory, clients=tls_clients(mode, cert_name), workers=workers,
                    listen=f'    - tls: "127.0.0.1:{tls_port}"',
                    server=(f"  tls:\n    cert_file: {pki.server_cert.cert}\n"
                            f"    key_file: {pki.server_cert.key}\n    ca_file: {pki.ca_file}\n{idle}"))
    server.tls_port = tls_port
    return server


@pytest.fixture
def inline_server(tmp_path, pki):
    server = radsec_server(tmp_path, pki)
    alice = server.enrol("alice", PASSWORD)
    server.start()
    yield server, alice
    server.stop()


# --- a TLS client for the attacks -------------------------------------------------

def tls_connect(port: int, pki, issued=None, *, source: str = "127.0.0.1",
                timeout: float = 5.0) -> ssl.SSLSocket:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(pki.ca_file)
    if issued is not None:
        context.load_cert_chain(issued.cert, issued.key)
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.settimeout(timeout)
    raw.bind((source, 0))
    raw.connect(("127.0.0.1", port))
    return context.wrap_socket(raw, server_hostname=SERVER_NAME)


def read_packet(sock) -> bytes | None:
    """One RADIUS packet from the stream; None when the server closed it."""
    data = b""
    try:
        while len(data) < 4 or len(data) < struct.unpack_from("!H", data, 2)[0]:
            chunk = sock.recv(4096)
            if not chunk:
                return None
            data += chunk
    except (ssl.SSLError, ConnectionError):
        return None
    return data


def status_server(ident: int = 1) -> bytes:
    return codec.build_access_request(RADSEC, None, id=ident, code=codec.STATUS_SERVER)


def closed_by_server(sock, timeout: float = 5.0) -> bool:
    """The server ended the connection: EOF, a TLS alert or a reset."""
    sock.settimeout(timeout)
    try:
        return sock.recv(4096) == b""
    except (ssl.SSLError, ConnectionError):
        return True
    except socket.timeout:
        return False


def handshake_refused(port: int, pki, issued=None, *, source: str = "127.0.0.1") -> bool:
    """The handshake fails, or (TLS 1.3: the client's certificate is judged
    after the client thinks it is done) the first exchange does."""
    try:
        sock = tls_connect(port, pki, issued, source=source)
    except (ssl.SSLError, ConnectionError):
        return True
    with sock:
        try:
            sock.sendall(status_server())
        except (ssl.SSLError, ConnectionError):
            return True
        return read_packet(sock) is None


def events(server: Server, name: str) -> list[dict]:
    return [e for e in server.log_events() if e.get("event") == name]


# --- real peers ---------------------------------------------------------------------

@needs_radclient
@needs_radsecproxy
def test_radsecproxy_inline_accept_and_reject_over_tls(inline_server, pki, tmp_path):
    server, alice = inline_server
    proxy = RadsecProxy(tmp_path / "radsecproxy", server=("127.0.0.1", server.tls_port),
                        ca_file=pki.ca_file, cert_file=pki.nas.cert, key_file=pki.nas.key)
    with proxy:
        accepted = radclient(proxy.port, [("User-Name", "alice"), ("User-Password", f"{PASSWORD},{alice.code()}"),
                                          ("Message-Authenticator", "0x00")], timeout=5)
        assert accepted.code == "Access-Accept", proxy.log() + server.log()
        rejected = radclient(proxy.port, [("User-Name", "alice"), ("User-Password", f"{PASSWORD},000000"),
                                          ("Message-Authenticator", "0x00")], timeout=5)
        assert rejected.code == "Access-Reject"
    records = server.wait_audit(2)
    assert [(r["result"], r["client"], r["transport"]) for r in records] == [
        ("accept", "nas-tls", "tls"), ("reject", "nas-tls", "tls")]
    assert records[1]["reason"] == "bad_code"


@needs_radclient
@needs_radsecproxy
def test_radsecproxy_challenge_mode_over_tls(tmp_path, pki):
    server = radsec_server(tmp_path, pki, mode="challenge")
    alice = server.enrol("alice", PASSWORD)
    server.start()
    proxy = RadsecProxy(tmp_path / "radsecproxy", server=("127.0.0.1", server.tls_port),
                        ca_file=pki.ca_file, cert_file=pki.nas.cert, key_file=pki.nas.key)
    try:
        proxy.start()
        challenge = radclient(proxy.port, [("User-Name", "alice"), ("User-Password", PASSWORD),
                                           ("Message-Authenticator", "0x00")], timeout=5)
        assert challenge.code == "Access-Challenge", proxy.log() + server.log()
        state = challenge.first("State")
        answer = radclient(proxy.port, [("User-Name", "alice"), ("User-Password", alice.code()),
                                        ("State", state), ("Message-Authenticator", "0x00")], timeout=5)
        assert answer.code == "Access-Accept"
    finally:
        proxy.stop()
        server.stop()
    assert [(r["result"], r["transport"]) for r in server.wait_audit(2)] == [
        ("challenge", "tls"), ("accept", "tls")]


@needs_radclient
@needs_freeradius
def test_freeradius_proxies_to_radius_mfa_over_tls(tmp_path, pki):
    fr_cert = pki.client("freeradius", "freeradius.example.org")
    server = radsec_server(tmp_path, pki, cert_name="freeradius.example.org")
    alice = server.enrol("alice", PASSWORD)
    server.start()
    (tmp_path / "freeradius").mkdir()
    proxy = TlsFrontProxy(tmp_path / "freeradius", ("127.0.0.1", server.tls_port), ca_file=pki.ca_file,
                          cert_file=fr_cert.cert, key_file=fr_cert.key, server_name=SERVER_NAME)
    try:
        proxy.start()
        reply = radclient(proxy.port, [("User-Name", "alice"), ("User-Password", f"{PASSWORD},{alice.code()}"),
                                       ("Message-Authenticator", "0x00")], timeout=8)
        assert reply.code == "Access-Accept", proxy.log() + server.log()
    finally:
        proxy.stop()
        server.stop()
    record = server.wait_audit(1)[0]
    assert (record["result"], record["transport"], record["client"]) == ("accept", "tls", "nas-tls")


# --- the RADIUS rules over TLS --------------------------------------------------------

def test_status_server_and_retransmission_on_one_connection(inline_server, pki):
    server, alice = inline_server
    with tls_connect(server.tls_port, pki, pki.nas) as sock:
        sock.sendall(status_server(3))
        reply = read_packet(sock)
        assert reply is not None and reply[0] == codec.ACCESS_ACCEPT and reply[1] == 3
        request = codec.build_access_request(RADSEC, "alice", f"{PASSWORD},{alice.code()}", id=9)
        sock.sendall(request)
        first = read_packet(sock)
        sock.sendall(request)                  # a retransmission on the same connection
        again = read_packet(sock)
    assert first[0] == codec.ACCESS_ACCEPT and again == first
    assert [r["result"] for r in server.wait_audit(1)] == ["accept"]   # decided once


def test_attack_request_without_message_authenticator_dropped_over_tls(inline_server, pki):
    server, alice = inline_server
    with tls_connect(server.tls_port, pki, pki.nas) as sock:
        sock.sendall(codec.build_access_request(RADSEC, "alice", f"{PASSWORD},{alice.code()}",
                                                message_authenticator=False, id=4))
        sock.settimeout(1.0)
        with pytest.raises(socket.timeout):
            sock.recv(4096)                     # dropped, not answered
        sock.sendall(status_server(5))          # and the connection still works
        assert read_packet(sock)[1] == 5
    assert server.audit() == []
    assert any(e.get("reason") == "missing_message_authenticator" for e in events(server, "radius.drop"))


def test_report_clients_shows_transport(inline_server, pki):
    server, _ = inline_server
    with tls_connect(server.tls_port, pki, pki.nas) as sock:
        sock.sendall(status_server())
        assert read_packet(sock) is not None
    server.send_signal(signal.SIGTERM)       # the counts reach the store at shutdown
    server.proc.wait(10)
    clients = {c["name"]: c for c in json.loads(server.cli("report", "clients", "--json").stdout)}
    assert clients["nas-tls"]["transport"] == "tls" and clients["nas-tls"]["requests"] == 1
    assert clients["local"]["transport"] == "udp"
    table = server.cli("report", "clients").stdout.splitlines()
    assert "TRANSPORT" in table[0].split()
    assert any(line.split()[:3] == ["nas-tls", "127.0.0.1", "tls"] for line in table)


# --- attacks: who may connect ---------------------------------------------------------

def test_attack_client_cert_from_unknown_ca_refused(inline_server, pki):
    server, _ = inline_server
    assert handshake_refused(server.tls_port, pki, pki.rogue_nas)
    assert wait_for(lambda: any(e.get("reason") == "certificate" for e in events(server, "radsec.refused")))
    refusal = next(e for e in events(server, "radsec.refused") if e.get("reason") == "certificate")
    assert "unknown CA" in refusal["detail"] and refusal["client"] == "nas-tls"


def test_attack_certificate_without_required_cert_name_refused(inline_server, pki):
    server, _ = inline_server
    assert handshake_refused(server.tls_port, pki, pki.other_nas)
    assert wait_for(lambda: any(e.get("reason") == "cert_name" for e in events(server, "radsec.refused")))


def test_attack_client_without_certificate_refused(inline_server, pki):
    server, _ = inline_server
    assert handshake_refused(server.tls_port, pki, None)
    assert wait_for(lambda: events(server, "radsec.refused"))


def test_attack_plain_tcp_client_refused(inline_server, pki):
    server, alice = inline_server
    with socket.create_connection(("127.0.0.1", server.tls_port), timeout=5) as sock:
        sock.sendall(codec.build_access_request(RADSEC, "alice", f"{PASSWORD},{alice.code()}"))
        assert closed_by_server(sock)
    assert wait_for(lambda: any(e.get("reason") == "handshake" for e in events(server, "radsec.refused")))
    assert server.audit() == []


def test_attack_connection_from_address_without_tls_client_refused(inline_server, pki):
    server, _ = inline_server
    # the certificate is right, the source address is no tls client's (nor any client's)
    assert handshake_refused(server.tls_port, pki, pki.nas, source="127.0.0.2")
    assert wait_for(lambda: any(e.get("reason") == "unknown_client" and e.get("source_ip") == "127.0.0.2"
                                for e in events(server, "radsec.refused")))


def test_attack_udp_client_address_does_not_open_tls(tmp_path, pki):
    # the address is a udp client's only: no tls entry, no connection
    server = Server(tmp_path, listen=f'    - tls: "127.0.0.1:{free_tcp_port()}"',
                    clients=f'\n  - name: local\n    address: 127.0.0.1\n    secret: "{SECRET}"\n'
                            f'  - name: other-tls\n    address: 192.0.2.1\n    transport: tls\n',
                    server=(f"  tls:\n    cert_file: {pki.server_cert.cert}\n"
                            f"    key_file: {pki.server_cert.key}\n    ca_file: {pki.ca_file}\n"))
    port = int(server.config.read_text().split('tls: "127.0.0.1:')[1].split('"')[0])
    server.start()
    try:
        assert handshake_refused(port, pki, pki.nas)
    finally:
        server.stop()


# --- attacks: what a connected client sends -----------------------------------------------

def test_attack_garbage_closes_that_connection_only(inline_server, pki):
    server, _ = inline_server
    with tls_connect(server.tls_port, pki, pki.nas) as good, tls_connect(server.tls_port, pki, pki.nas) as bad:
        good.sendall(status_server(1))
        assert read_packet(good)[1] == 1
        # a length in range, attributes that overrun the packet
        bad.sendall(bytes((1, 7, 0, 30)) + os.urandom(16) + bytes((1, 200, 0, 0, 0, 0, 0, 0, 0, 0)))
        assert closed_by_server(bad)
        good.sendall(status_server(2))
        assert read_packet(good)[1] == 2
    assert wait_for(lambda: any(e.get("reason") == "malformed" for e in events(server, "radsec.closed")))


def test_attack_oversized_length_closes_connection(inline_server, pki):
    server, _ = inline_server
    with tls_connect(server.tls_port, pki, pki.nas) as sock:
        sock.sendall(bytes((1, 1)) + struct.pack("!H", 4097) + os.urandom(60))
        assert closed_by_server(sock)
    with tls_connect(server.tls_port, pki, pki.nas) as sock:
        sock.sendall(bytes((1, 1)) + struct.pack("!H", 12) + os.urandom(20))   # below 20
        assert closed_by_server(sock)
    closes = [e for e in events(server, "radsec.closed") if e.get("reason") == "bad_length"]
    # logged once per source and interval: the second close is counted, not logged
    assert [e["length"] for e in closes] == [4097]


def test_idle_connection_is_closed(tmp_path, pki):
    server = radsec_server(tmp_path, pki, idle_timeout=1)
    server.start()
    try:
        with tls_connect(server.tls_port, pki, pki.nas) as sock:
            sock.sendall(status_server())
            assert read_packet(sock) is not None
            started = time.monotonic()
            assert closed_by_server(sock, timeout=5)
            assert 0.5 < time.monotonic() - started < 4
        assert wait_for(lambda: any(e.get("reason") == "idle" for e in events(server, "radsec.closed")))
    finally:
        server.stop()


# --- operations -------------------------------------------------------------------------------

def test_sighup_reloads_certificates_for_new_handshakes(inline_server, pki):
    server, _ = inline_server
    with tls_connect(server.tls_port, pki, pki.nas) as old:
        first = old.getpeercert(binary_form=True)
        renewed = pki.issue("server-renewed", SERVER_NAME, dns=(SERVER_NAME,), ips=("127.0.0.1",), server=True)
        Path(pki.server_cert.cert).write_bytes(renewed.cert.read_bytes())
        Path(pki.server_cert.key).write_bytes(renewed.key.read_bytes())
        server.send_signal(signal.SIGHUP)
        assert wait_for(lambda: events(server, "radsec.certificates_reloaded"))
        with tls_connect(server.tls_port, pki, pki.nas) as new:
            assert new.getpeercert(binary_form=True) != first
            assert new.getpeercert(binary_form=True) == _der(renewed.cert)
        old.sendall(status_server(8))          # the open connection keeps working
        assert read_packet(old)[1] == 8


def _der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def test_tls_listener_served_by_every_worker(tmp_path, pki):
    server = radsec_server(tmp_path, pki, workers=2)
    alice = server.enrol("alice", PASSWORD)
    server.start()
    try:
        assert len(events(server, "worker.listening")) == 2
        socks = [tls_connect(server.tls_port, pki, pki.nas) for _ in range(8)]
        try:
            for index, sock in enumerate(socks):
                sock.sendall(status_server(index))
                assert read_packet(sock)[1] == index
            request = codec.build_access_request(RADSEC, "alice", f"{PASSWORD},{alice.code()}", id=1)
            socks[0].sendall(request)
            assert read_packet(socks[0])[0] == codec.ACCESS_ACCEPT
        finally:
            for sock in socks:
                sock.close()
        pids = {e.get("worker") for e in events(server, "radsec.connected")}
        assert pids == {0, 1}                     # eight connections: both workers took some
    finally:
        server.stop()
