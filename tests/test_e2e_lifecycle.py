"""The server process: start-up errors, systemd readiness, SIGHUP and SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import time

import pytest

from peers.process import wait_for
from e2e import SECRET, Server, command, needs_radclient, radclient, write_config
from radius_mfa.radius import codec

PASSWORD = "correct horse"


@needs_radclient
def test_sighup_reloads_secrets_and_keeps_pending_challenges(tmp_path):
    server = Server(tmp_path).start()
    try:
        totp = server.enrol("alice", PASSWORD).totp
        challenge = radclient(server.port, [("User-Name", "alice"), ("User-Password", PASSWORD),
                                            ("Message-Authenticator", "0x00")])
        assert challenge.code == "Access-Challenge", challenge.output
        write_config(tmp_path, server.port, clients="""
  - name: local
    address: 127.0.0.1
    secret: "a-new-secret"
""")
        server.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "config.reloaded" in server.log())
        old = radclient(server.port, [("User-Name", "alice"), ("User-Password", PASSWORD),
                                      ("Message-Authenticator", "0x00")], timeout=1)
        assert old.code is None                            # the old secret is gone
        answer = radclient(server.port, [("User-Name", "alice"), ("User-Password", totp.now()),
                                         ("State", challenge.first("State")),
                                         ("Message-Authenticator", "0x00")], secret="a-new-secret")
        assert answer.code == "Access-Accept", answer.output   # the challenge survived
    finally:
        assert server.stop() == 0


@needs_radclient
def test_sighup_with_a_broken_file_keeps_the_running_configuration(tmp_path):
    server = Server(tmp_path).start()
    try:
        server.enrol("alice", PASSWORD)
        server.config.write_text(server.config.read_text() + "\nbogus_key: 1\n")
        server.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "config.reload_failed" in server.log())
        reply = radclient(server.port, [("User-Name", "alice"), ("User-Password", PASSWORD),
                                        ("Message-Authenticator", "0x00")])
        assert reply.code == "Access-Challenge"
        assert "bogus_key" in server.log() and "Traceback" not in server.log()
    finally:
        assert server.stop() == 0


def test_sigterm_finishes_the_request_in_flight_and_exits_zero(tmp_path):
    server = Server(tmp_path).start()
    totp = server.enrol("alice", PASSWORD).totp
    request = codec.build_access_request(SECRET.encode(), "alice",
                                         f"{PASSWORD},{totp.now()}".encode(), id=5)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(6)
        sock.sendto(request, ("127.0.0.1", server.port))
        time.sleep(0.02)                  # read by the server, now hashing the password
        server.send_signal(signal.SIGTERM)
        reply = sock.recv(4096)
    assert codec.decode_response(reply, SECRET.encode(), request[4:20]).code == codec.ACCESS_ACCEPT
    assert server.proc.wait(10) == 0
    assert "server.stopped" in server.log()


def test_serve_tells_systemd_it_is_ready(tmp_path):
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        listener.settimeout(20)
        server = Server(tmp_path).start(env={"NOTIFY_SOCKET": address})
        try:
            message = listener.recv(1024)
        finally:
            assert server.stop() == 0
    assert b"READY=1" in message.split(b"\n")


def test_a_sighup_sent_the_moment_it_says_ready_reloads_and_does_not_end_it(tmp_path):
    # a supervisor (or systemd) may pass on a SIGHUP right after READY=1:
    # the handler must already be there, or SIGHUP's default action ends the process
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        listener.settimeout(20)
        server = Server(tmp_path).start(env={"NOTIFY_SOCKET": address})
        try:
            assert b"READY=1" in listener.recv(1024).split(b"\n")
            server.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while "config.reloaded" not in server.log() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "config.reloaded" in server.log()
            assert server.proc.poll() is None
        finally:
            assert server.stop() == 0


def test_serve_with_a_bad_configuration_exits_2_with_every_problem(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("server:\n  listen:\n    - udp: 'nowhere'\nclients:\n  - name: x\n")
    proc = subprocess.run(command() + ["-c", str(config), "serve"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2
    assert f"{config}:3: server.listen[0].udp" in proc.stderr
    assert f"{config}:5: clients[0]" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_serve_on_a_busy_port_exits_1_with_one_clear_line(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        config = write_config(tmp_path, port)
        proc = subprocess.run(command() + ["-c", str(config), "serve"], capture_output=True,
                              text=True, timeout=30)
    assert proc.returncode == 1
    assert "server.start_failed" in proc.stderr and "Traceback" not in proc.stderr


def test_ipv6_clients_are_served_where_ipv6_loopback_exists(tmp_path):
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
            port = probe.getsockname()[1]
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    server = Server(tmp_path, clients=f"""
  - name: six
    address: "::1/128"
    secret: "{SECRET}"
""")
    server.config.write_text(server.config.read_text().replace(
        f'udp: "127.0.0.1:{server.port}"', f'udp: "[::1]:{port}"'))
    server.port = port
    server.start()
    try:
        server.enrol("alice", PASSWORD)
        request = codec.build_access_request(SECRET.encode(), "alice", PASSWORD.encode(), id=1)
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto(request, ("::1", port))
            reply = sock.recv(4096)
        assert codec.decode_response(reply, SECRET.encode(), request[4:20]).code == codec.ACCESS_CHALLENGE
    finally:
        assert server.stop() == 0
