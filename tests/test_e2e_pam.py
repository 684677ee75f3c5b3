"""End to end: Debian 12's pam_radius_auth 2.0, driven by pamtester, against `radius-mfa serve`.

pam_radius 2.0 sends no Message-Authenticator (it came with pam_radius 3.0,
after BlastRADIUS), so its client entry needs
``require_message_authenticator: auto`` (the recipe: it stays "not yet" for
as long as the client sends none, and turns required the day an upgraded
pam_radius signs its requests) or ``false``. With ``true`` every request it
sends is dropped, and the drop shows in the log and in `report clients`.

One radius-mfa serves four client entries; pam_radius sends from a
loopback address of each (the fourth column of its configuration), so
each PAM service below talks to radius-mfa as a different client.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import socket
import struct
import threading
import time

import pytest

from e2e import Server
from peers import pam
from peers.pam import PamRadius

pytestmark = pytest.mark.skipif(pam.unavailable() is not None, reason=pam.unavailable() or "")

PASSWORD = "correct horse"
CODE_PROMPT = "Enter the 6-digit code from your authenticator app"
SECRETS = {"inline": "pam-inline-secret-0123", "challenge": "pam-challenge-secret-01",
           "strict": "pam-strict-secret-01234", "legacy": "pam-legacy-secret-01234"}
SOURCES = {"inline": "127.0.0.1", "challenge": "127.0.0.2", "strict": "127.0.0.3",
           "legacy": "127.0.0.4"}
_names = itertools.count()

CLIENTS = f"""
  - name: pam-inline
    address: {SOURCES["inline"]}
    secret: "{SECRETS["inline"]}"
    require_message_authenticator: auto
    mode: inline
  - name: pam-challenge
    address: {SOURCES["challenge"]}
    secret: "{SECRETS["challenge"]}"
    require_message_authenticator: auto
    mode: challenge
  - name: pam-strict
    address: {SOURCES["strict"]}
    secret: "{SECRETS["strict"]}"
    require_message_authenticator: true
    mode: challenge
  - name: pam-legacy
    address: {SOURCES["legacy"]}
    secret: "{SECRETS["legacy"]}"
    require_message_authenticator: false
    mode: inline
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("pam-e2e"), clients=CLIENTS)
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.log()


def service(server, tmp_path_factory, kind: str, timeout: int = 3):
    directory = tmp_path_factory.mktemp(f"pam-{kind}")
    return PamRadius(directory, [pam.Server("127.0.0.1", server.port, SECRETS[kind],
                                            timeout=timeout, source_ip=SOURCES[kind])])


@pytest.fixture(scope="module")
def inline(server, tmp_path_factory):
    with service(server, tmp_path_factory, "inline") as svc:
        yield svc
    assert not svc.service.exists()


@pytest.fixture(scope="module")
def challenge(server, tmp_path_factory):
    with service(server, tmp_path_factory, "challenge") as svc:
        yield svc


@pytest.fixture
def user(server):
    return server.enrol(f"pamuser{next(_names)}", PASSWORD)


def record(server, name):
    return server.record_since_mark(name)


def records(server, name, count: int) -> list[dict]:
    """The user's audit records, once there are ``count`` (the reply can reach
    pam_radius a moment before its record reaches the file)."""
    deadline = time.monotonic() + 5
    while True:
        mine = [r for r in server.audit() if r["user"] == name]
        if len(mine) >= count or time.monotonic() > deadline:
            return mine
        time.sleep(0.02)


def other_code(right: str) -> str:
    return f"{(int(right) + 500_000) % 1_000_000:06d}"


# --- what pam_radius 2.0 sends ----------------------------------------------------

def test_pam_radius_2_sends_no_message_authenticator(tmp_path):
    """Not radius-mfa at all: a socket that records pam_radius's request and
    rejects it, so the tests below rest on what the client really sends."""
    secret = b"capture-secret-0123456"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(10)
        seen: list[bytes] = []

        def answer():
            data, peer = sock.recvfrom(4096)
            seen.append(data)
            header = struct.pack("!BBH", 3, data[1], 20)                    # Access-Reject
            digest = hashlib.md5(header + data[4:20] + secret).digest()
            sock.sendto(header + digest, peer)

        thread = threading.Thread(target=answer)
        thread.start()
        with PamRadius(tmp_path, [pam.Server("127.0.0.1", sock.getsockname()[1],
                                             secret.decode(), timeout=2)]) as svc:
            result = svc.authenticate("alice", "pw")
        thread.join(10)
    assert not result.ok
    assert seen, result.output
    data = seen[0]
    assert data[0] == 1                                                     # Access-Request
    attributes = {}
    at = 20
    while at < len(data):
        kind, length = data[at], data[at + 1]
        attributes.setdefault(kind, []).append(data[at + 2:at + length])
        at += length
    assert 80 not in attributes                                             # no Message-Authenticator
    assert attributes[1] == [b"alice"]                                      # User-Name
    assert 2 in attributes                                                  # User-Password (PAP)
    assert attributes[6] == [struct.pack("!I", 8)]                          # Service-Type Authenticate-Only
    assert attributes[32] == [svc.name.encode()]                            # NAS-Identifier: the service


# --- the recipe: require_message_authenticator auto --------------------------------

def test_pam_radius_inline_password_and_code_is_accepted(server, inline, user):
    server.mark(user.name)
    result = inline.authenticate(user.name, f"{PASSWORD},{user.code()}")
    assert result.ok, result.output
    entry = record(server, user.name)
    assert (entry["client"], entry["result"], entry["factor"], entry["method"]) == (
        "pam-inline", "accept", "totp", "pap")


def test_pam_radius_inline_wrong_code_is_rejected(server, inline, user):
    server.mark(user.name)
    result = inline.authenticate(user.name, f"{PASSWORD},{other_code(user.code())}")
    assert result.returncode != 0 and "successfully" not in result.output, result.output
    entry = record(server, user.name)
    assert (entry["client"], entry["result"], entry["reason"]) == ("pam-inline", "reject", "bad_code")


def test_pam_radius_inline_wrong_password_is_rejected(server, inline, user):
    server.mark(user.name)
    result = inline.authenticate(user.name, f"not {PASSWORD},{user.code()}")
    assert not result.ok, result.output
    assert record(server, user.name)["reason"] == "bad_password"


def test_pam_radius_challenge_prompts_with_the_reply_message_and_accepts_the_code(
        server, challenge, user):
    result = challenge.authenticate(user.name, PASSWORD, user.code())
    assert result.ok, result.output
    assert CODE_PROMPT in result.output                # pam_radius showed the Reply-Message
    assert [(r["client"], r["result"]) for r in records(server, user.name, 2)] == [
        ("pam-challenge", "challenge"), ("pam-challenge", "accept")]


def test_pam_radius_challenge_wrong_code_is_rejected(server, challenge, user):
    result = challenge.authenticate(user.name, PASSWORD, other_code(user.code()))
    assert not result.ok, result.output
    assert CODE_PROMPT in result.output
    assert [(r["result"], r["reason"]) for r in records(server, user.name, 2)] == [
        ("challenge", None), ("reject", "bad_code")]


def test_auto_stays_not_required_for_pam_radius_2(server, inline, user):
    """`auto` never switches on for a client that has never sent a
    Message-Authenticator: pam_radius 2.0 keeps working, and `report clients`
    says why."""
    assert inline.authenticate(user.name, f"{PASSWORD},{user.code()}").ok
    entry = wait_report(server, "pam-inline", lambda e: e["requests"] >= 1)
    assert entry["require_message_authenticator"] == "auto"
    assert entry["requires_message_authenticator_now"] is False
    assert entry["sends_message_authenticator"] == "no", entry
    assert entry["dropped"] == {}


# --- the alternative: false --------------------------------------------------------

def test_pam_radius_with_message_authenticator_not_required_is_accepted(
        server, tmp_path_factory, user):
    with service(server, tmp_path_factory, "legacy") as legacy:
        server.mark(user.name)
        result = legacy.authenticate(user.name, f"{PASSWORD},{user.code()}")
    assert result.ok, result.output
    assert record(server, user.name)["client"] == "pam-legacy"
    assert not legacy.service.exists()


# --- required: dropped, and the drop visible ------------------------------------

def test_pam_radius_without_message_authenticator_is_dropped_when_required_and_the_drop_is_visible(
        server, tmp_path_factory, user):
    with service(server, tmp_path_factory, "strict", timeout=1) as strict:
        result = strict.authenticate(user.name, f"{PASSWORD},{user.code()}")
    assert not result.ok, result.output
    # no answer at all: pam_radius gives up with PAM_AUTHINFO_UNAVAIL
    assert "cannot retrieve authentication info" in result.output, result.output
    assert [r for r in server.audit() if r["user"] == user.name] == []
    drops = [e for e in server.log_events()
             if e.get("event") == "radius.drop" and e.get("client") == "pam-strict"]
    assert drops and all(e["reason"] == "missing_message_authenticator" for e in drops), drops
    assert all(e.get("source_ip") == SOURCES["strict"] for e in drops)
    assert PASSWORD not in server.log() and "Traceback" not in server.log()
    # counted per client: `report clients` shows it (the counts reach the
    # store within a few seconds)
    entry = wait_report(server, "pam-strict",
                        lambda e: e["dropped"].get("missing_message_authenticator", 0) >= 1)
    assert entry["dropped"].get("missing_message_authenticator", 0) >= 1, entry
    assert entry["requires_message_authenticator_now"] is True


def wait_report(server, name: str, predicate, timeout: float = 12.0) -> dict:
    """`report clients --json` until the client's entry satisfies ``predicate``."""
    deadline = time.monotonic() + timeout
    while True:
        entries = json.loads(server.cli("report", "clients", "--json").stdout)
        entry = next(e for e in entries if e["name"] == name)
        if predicate(entry) or time.monotonic() > deadline:
            return entry
        time.sleep(0.5)
