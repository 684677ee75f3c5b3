"""check-config checks the machine too, without changing it: clients
configured, the store key file, the store reachable, the listen addresses
bindable. Every line keeps the ``FILE:LINE: key.path: message`` form."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from peers.process import free_tcp_port
from radius_mfa.cli import main

CLIENTS = """\
clients:
  - name: vpn
    address: 127.0.0.1
    secret: "a-long-enough-nas-secret"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "radius-mfa.yaml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def check_config(path: Path, capsys) -> tuple[int, str, list[str]]:
    code = main(["-c", str(path), "check-config"])
    out, err = capsys.readouterr()
    return code, out, err.splitlines()


def test_a_good_config_on_this_machine_is_ok_and_creates_nothing(tmp_path, capsys):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = write(tmp_path, f"""\
server:
  listen:
    - udp: "127.0.0.1:{port}"
store: "sqlite:///state/radius-mfa.db"
{CLIENTS}""")
    code, out, err = check_config(path, capsys)
    assert (code, out, err) == (0, f"{path}: OK\n", [])
    assert not (tmp_path / "state").exists(), "check-config created the store's directory"
    assert not (tmp_path / "store.key").exists(), "check-config created the store key"


def test_a_config_with_no_clients_is_refused(tmp_path, capsys):
    path = write(tmp_path, 'server:\n  name: mfa1\nstore: "sqlite:///x.db"\n')
    code, out, err = check_config(path, capsys)
    assert (code, out) == (2, "")
    assert f"{path}:1: clients: no clients: every request would be dropped; add at least one" in err

    path = write(tmp_path, 'store: "sqlite:///x.db"\n\nclients: []\n')
    code, _, err = check_config(path, capsys)
    assert code == 2
    assert f"{path}:3: clients: no clients: every request would be dropped; add at least one" in err


def test_an_empty_file_is_refused_for_want_of_clients(tmp_path, capsys):
    path = write(tmp_path, "")
    code, _, err = check_config(path, capsys)
    assert code == 2
    assert any(line.startswith(f"{path}:1: clients: no clients") for line in err), err


def test_a_listen_address_in_use_is_a_warning_not_an_error(tmp_path, capsys):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy, \
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as metrics:
        busy.bind(("127.0.0.1", 0))
        metrics.bind(("127.0.0.1", 0))
        metrics.listen(1)
        udp, tcp = busy.getsockname()[1], metrics.getsockname()[1]
        path = write(tmp_path, f"""\
server:
  listen:
    - udp: "127.0.0.1:0"
    - udp: "127.0.0.1:{udp}"
store: "sqlite:///x.db"
{CLIENTS}metrics:
  listen: "127.0.0.1:{tcp}"
""")
        code, out, err = check_config(path, capsys)
    assert (code, out) == (0, f"{path}: OK\n")
    assert err == [
        f"{path}:4: server.listen[1].udp: warning: 127.0.0.1:{udp}/udp in use (a running server?)",
        f"{path}:11: metrics.listen: warning: 127.0.0.1:{tcp}/tcp in use (a running server?)",
    ]


def test_a_listen_address_this_machine_does_not_have_is_an_error(tmp_path, capsys):
    path = write(tmp_path, f"""\
server:
  listen:
    - udp: "192.0.2.1:1812"
store: "sqlite:///x.db"
{CLIENTS}""")
    code, out, err = check_config(path, capsys)
    assert (code, out) == (2, "")
    assert err == [f"{path}:3: server.listen[0].udp: 192.0.2.1:1812 is not an address of this machine"]


def test_an_unreachable_store_is_an_error(tmp_path, capsys):
    port = free_tcp_port()
    path = write(tmp_path, f"""\
server:
  listen:
    - udp: "127.0.0.1:0"
store: "postgresql://postgres:hunter2@127.0.0.1:{port}/radius_mfa"
{CLIENTS}""")
    code, out, err = check_config(path, capsys)
    assert (code, out) == (2, "")
    assert len(err) == 1, err
    assert err[0].startswith(f"{path}:4: store: the store cannot be reached: "), err
    assert "hunter2" not in err[0]


def test_a_reachable_postgresql_store_is_ok(tmp_path, capsys):
    pg = pytest.importorskip("pg")
    pg.ensure_database()
    path = write(tmp_path, f"""\
server:
  listen:
    - udp: "127.0.0.1:0"
store: "{pg.DATABASE_URL}"
{CLIENTS}""")
    code, out, err = check_config(path, capsys)
    assert (code, out, err) == (0, f"{path}: OK\n", [])


def test_a_sqlite_store_in_a_place_that_cannot_hold_it_is_an_error(tmp_path, capsys):
    (tmp_path / "plain-file").write_text("")
    path = write(tmp_path, f"""\
server:
  listen:
    - udp: "127.0.0.1:0"
store: "sqlite:///plain-file/radius-mfa.db"
{CLIENTS}""")
    code, _, err = check_config(path, capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"{path}:4: store: the store cannot be reached: "), err


def test_the_store_key_file_must_be_readable_and_well_formed(tmp_path, capsys):
    key = tmp_path / "store.key"
    key.write_text("not hexadecimal\n")
    key.chmod(0o600)
    path = write(tmp_path, f"""\
server:
  listen:
    - udp: "127.0.0.1:0"
store: "sqlite:///x.db"
store_key_file: store.key
{CLIENTS}""")
    code, _, err = check_config(path, capsys)
    assert code == 2
    assert err == [f"{path}:5: store_key_file: the store key file {key} must hold 64 hexadecimal digits"]

    key.unlink()
    key.mkdir()                       # root reads any file: a directory is what cannot be read
    code, _, err = check_config(path, capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"{path}:5: store_key_file: cannot read the store key file"), err


def test_a_store_key_that_others_can_read_is_an_error_since_the_store_refuses_it(tmp_path, capsys):
    key = tmp_path / "store.key"
    key.write_text(os.urandom(32).hex() + "\n")
    key.chmod(0o644)
    path = write(tmp_path, f"""\
server:
  listen:
    - udp: "127.0.0.1:0"
store: "sqlite:///x.db"
{CLIENTS}""")
    code, out, err = check_config(path, capsys)
    assert (code, out) == (2, "")
    errors = [line for line in err if ": warning: " not in line]
    assert len(errors) == 1, err
    assert errors[0].startswith(f"{path}:1: store_key_file: ") and "chmod 600" in errors[0], err
