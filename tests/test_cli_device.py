"""`radius-mfa device pair|list|remove` through main(), on a real SQLite store."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from datetime import datetime

import pytest

from radius_mfa import cli
from radius_mfa.model import Device, Pairing
from radius_mfa.push import crypto

CONFIG_TEMPLATE = """\
server:
  name: mfa-test
store: "sqlite:///{db}"
clients:
  - name: vpn
    address: 127.0.0.1
    secret: "testing123"
{push}"""

PUSH_SECTION = """\
factors:
  push:
    listen: "127.0.0.1:8443"
    tls_cert: tls/push.crt
    tls_key: tls/push.key
    pairing_ttl: 120
{public_url}"""


def write_config(tmp_path, *, push: bool = True, public_url: str | None = "https://mfa.example.org:8443") -> str:
    section = ""
    if push:
        section = PUSH_SECTION.format(public_url=f'    public_url: "{public_url}"\n' if public_url else "")
    path = tmp_path / "radius-mfa.yaml"
    path.write_text(CONFIG_TEMPLATE.format(db=tmp_path / "store.db", push=section))
    key = tmp_path / "store.key"                 # made ahead: its creation notice is not under test
    if not key.exists():
        key.write_text(os.urandom(32).hex() + "\n")
        key.chmod(0o600)
    return str(path)


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    monkeypatch.delenv(cli.CONFIG_ENV, raising=False)
    (tmp_path / "tls").mkdir()
    return write_config(tmp_path)




def add_users(run, *names: str) -> None:
    for name in names:
        code, _, err = run("user", "add", name)
        assert code == 0, err


def paired_device(store, user: str, name: str, created: float) -> Device:
    """A device as the device API would store it after `pair`."""
    token = crypto.new_pairing_token()
    store.add_pairing(Pairing(crypto.token_digest(token), user, created, created + 60))
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    device = Device(id="d" + os.urandom(8).hex(), user=user, name=name,
                    public_key=crypto.public_key_b64(Ed25519PrivateKey.generate()), created=created)
    stored = store.complete_pairing(crypto.token_digest(token), device, created)
    assert stored is not None
    return stored


# --------------------------------------------------------------------------- device pair

def test_pair_json_gives_a_one_time_link_pinning_the_certificate_it_made(run, store, tmp_path):
    add_users(run, "alice")
    before = time.time()
    code, out, err = run("device", "pair", "alice", "--json")
    assert code == 0, err
    answer = json.loads(out)
    assert set(answer) == {"url", "expires"}
    link = crypto.parse_pairing_url(answer["url"])
    assert link.base_url == "https://mfa.example.org:8443"
    cert, key = tmp_path / "tls" / "push.crt", tmp_path / "tls" / "push.key"
    assert link.fingerprint == crypto.certificate_fingerprint(str(cert))
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    expires = datetime.fromisoformat(answer["expires"].replace("Z", "+00:00")).timestamp()
    assert before + 120 - 1 <= expires <= time.time() + 120
    # the store keeps the token's digest only: pairing with it works once
    assert link.token.encode() not in (tmp_path / "store.db").read_bytes()
    device = Device(id="d0123456789abcdef", user="?", name="laptop", public_key="x")
    stored = store.complete_pairing(crypto.token_digest(link.token), device, time.time())
    assert stored is not None and stored.user == "alice"
    assert store.complete_pairing(crypto.token_digest(link.token), device, time.time()) is None


def test_pair_twice_reuses_the_certificate_and_hands_out_new_tokens(run):
    add_users(run, "alice")
    links = []
    for _ in range(2):
        code, out, err = run("device", "pair", "alice", "--json")
        assert code == 0, err
        links.append(crypto.parse_pairing_url(json.loads(out)["url"]))
    assert links[0].fingerprint == links[1].fingerprint
    assert links[0].token != links[1].token


def test_pair_prints_the_link_and_a_qr_code(run):
    add_users(run, "alice")
    code, out, err = run("device", "pair", "alice")
    assert code == 0, err
    [url] = [line for line in out.splitlines() if line.startswith("https://")]
    assert crypto.parse_pairing_url(url).base_url == "https://mfa.example.org:8443"
    assert any(ch in out for ch in "\u2580\u2584\u2588")
    assert "radius-mfa-authenticator pair" in out


def test_without_public_url_the_link_names_this_host_and_the_listen_port(run, tmp_path):
    config = write_config(tmp_path, public_url=None)
    add_users(run, "alice")
    code, out, err = run("device", "pair", "alice", "--json", config=config)
    assert code == 0, err
    assert crypto.parse_pairing_url(json.loads(out)["url"]).base_url == f"https://{socket.getfqdn()}:8443"


def test_pair_without_push_configured_is_bad_usage(run, tmp_path):
    config = write_config(tmp_path, push=False)
    add_users(run, "alice")
    code, out, err = run("device", "pair", "alice", config=config)
    assert code == 2
    assert out == ""
    assert err.strip() == f"radius-mfa: push is not configured: add a factors.push section to {config}"


def test_pair_for_an_unknown_user_is_refused(run, tmp_path):
    code, out, err = run("device", "pair", "nobody")
    assert code == 1 and out == ""
    assert err.strip() == "radius-mfa: user 'nobody' not found"
    assert not (tmp_path / "tls" / "push.crt").exists()


def test_pair_where_the_certificate_cannot_be_made_is_one_clear_line(run, tmp_path):
    add_users(run, "alice")
    (tmp_path / "tls").rmdir()
    code, out, err = run("device", "pair", "alice")
    assert code == 1 and out == ""
    assert err.splitlines() == [f"radius-mfa: cannot make the device API certificate "
                                f"{tmp_path / 'tls' / 'push.crt'}: No such file or directory"]


def test_device_pair_does_not_import_the_reactor(config_file):
    code = (
        "import sys; from radius_mfa.cli import main; "
        f"main(['-c', {config_file!r}, 'user', 'add', 'alice']); "
        f"rc = main(['-c', {config_file!r}, 'device', 'pair', 'alice', '--json']); "
        "assert rc == 0, rc; "
        "assert 'twisted.internet.reactor' not in sys.modules, 'reactor imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------- device list / remove

def test_list_shows_each_users_devices(run, store):
    add_users(run, "alice", "bob")
    laptop = paired_device(store, "alice", "alice's laptop", 1_700_000_000.0)
    phone = paired_device(store, "alice", "phone", 1_700_000_100.0)
    other = paired_device(store, "bob", "bob's phone", 1_700_000_200.0)
    store.touch_device(phone.id, 1_700_000_500.0)

    code, out, err = run("device", "list", "alice", "--json")
    assert code == 0, err
    assert json.loads(out) == [
        {"id": laptop.id, "user": "alice", "name": "alice's laptop", "created": 1_700_000_000.0, "last_seen": None},
        {"id": phone.id, "user": "alice", "name": "phone", "created": 1_700_000_100.0, "last_seen": 1_700_000_500.0},
    ]
    code, out, err = run("device", "list", "alice")
    assert code == 0, err
    header, first, second = out.splitlines()
    assert header.split() == ["ID", "USER", "NAME", "CREATED", "LAST", "SEEN"]
    assert first.startswith(laptop.id) and "2023-11-14T22:13:20Z" in first and first.endswith("-")
    assert second.startswith(phone.id) and second.endswith("2023-11-14T22:21:40Z")
    code, out, _ = run("device", "list", "--json")
    assert [d["id"] for d in json.loads(out)] == [laptop.id, phone.id, other.id]


def test_list_of_an_unknown_user_is_refused_and_an_empty_list_is_empty(run):
    add_users(run, "alice")
    assert run("device", "list", "alice", "--json")[:2] == (0, "[]\n")
    code, out, err = run("device", "list", "nobody")
    assert code == 1 and err.strip() == "radius-mfa: user 'nobody' not found"


def test_remove_unpairs_only_the_users_own_device(run, store):
    add_users(run, "alice", "bob")
    mine = paired_device(store, "alice", "laptop", 1_700_000_000.0)
    theirs = paired_device(store, "bob", "phone", 1_700_000_000.0)

    code, out, err = run("device", "remove", "alice", theirs.id)
    assert code == 1 and out == ""
    assert err.startswith("radius-mfa: no such device")
    assert store.get_device(theirs.id) is not None

    code, out, err = run("device", "remove", "alice", mine.id)
    assert code == 0, err
    assert out.strip() == f"device '{mine.id}' of 'alice' removed"
    assert store.get_device(mine.id) is None
    code, _, err = run("device", "remove", "alice", mine.id)
    assert code == 1 and "no such device" in err


def test_device_commands_need_their_arguments(run):
    for words in (("device",), ("device", "pair"), ("device", "remove", "alice")):
        code, _, err = run(*words)
        assert code == 2 and "usage:" in err
