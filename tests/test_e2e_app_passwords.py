"""App passwords end to end: made with the command, typed alone into
radclient in challenge and inline mode, deleted (one, or all) with effect at
once, also on a second server sharing the PostgreSQL store."""

from __future__ import annotations

import json

import pytest

from e2e import SECRET, Server, needs_radclient, radclient

PASSWORD = "correct horse"


def ask(server: Server, password: str, user: str = "alice"):
    return radclient(server.port, [("User-Name", user), ("User-Password", password),
                                   ("Message-Authenticator", "0x00")],
                     secret=SECRET, timeout=8, retries=1)


def enrol(server: Server) -> None:
    server.cli("user", "add", "alice", "--password-stdin", input=PASSWORD + "\n")
    server.cli("token", "add", "alice", "--type", "totp", "--json")


def create(server: Server, label: str = "mail") -> dict:
    return json.loads(server.cli("app-password", "create", "alice", "--label", label, "--json").stdout)


@pytest.fixture
def server(tmp_path):
    made = Server(tmp_path)
    enrol(made)
    made.start()
    yield made
    made.stop()


@needs_radclient
def test_an_app_password_alone_signs_in_and_is_audited_as_such(server):
    made = create(server)
    assert ask(server, PASSWORD).code == "Access-Challenge"          # the password alone: a challenge
    server.mark("alice")
    assert ask(server, made["password"]).code == "Access-Accept"
    record = server.record_since_mark("alice")
    assert (record["factor"], record["device"], record["result"]) == ("app_password", made["id"], "accept")
    listed = json.loads(server.cli("app-password", "list", "alice", "--json").stdout)
    assert listed[0]["last_used"] is not None
    assert made["password"] not in server.log()


@needs_radclient
def test_an_app_password_works_in_inline_mode(tmp_path):
    inline = Server(tmp_path, clients=f"""
  - name: local
    address: 127.0.0.1
    secret: "{SECRET}"
    mode: inline
""")
    enrol(inline)
    made = create(inline)
    inline.start()
    try:
        assert ask(inline, made["password"]).code == "Access-Accept"
        assert ask(inline, made["password"] + "x").code == "Access-Reject"
    finally:
        inline.stop()


@needs_radclient
def test_delete_all_takes_effect_at_once(server):
    first, second = create(server, "mail"), create(server, "laptop")
    assert ask(server, first["password"]).code == "Access-Accept"
    server.cli("app-password", "delete-all", "alice")
    assert ask(server, first["password"]).code == "Access-Reject"
    assert ask(server, second["password"]).code == "Access-Reject"


@needs_radclient
def test_a_deleted_app_password_is_refused_by_a_second_server_on_the_same_store(tmp_path, pg_url):
    servers = []
    for name in ("a", "b"):
        directory = tmp_path / name
        directory.mkdir()
        servers.append(Server(directory, store=pg_url, name=f"mfa-{name}",
                              extra=f"store_key_file: {tmp_path / 'store.key'}"))
    a, b = servers
    enrol(a)
    made = create(a)
    for server in servers:
        server.start()
    try:
        assert ask(b, made["password"]).code == "Access-Accept"
        a.cli("app-password", "delete", "alice", made["id"])
        b.mark("alice")
        assert ask(b, made["password"]).code == "Access-Reject"
        assert b.record_since_mark("alice")["reason"] == "bad_password"
    finally:
        for server in servers:
            server.stop()
