"""Push approval end to end: a real `radius-mfa serve`, FreeRADIUS's radclient
as the NAS, and the reference authenticator (`radius-mfa-authenticator`) as
the phone, each a process of its own on loopback; the device API over TLS
with the self-signed certificate the server made, pinned through the
pairing URL.

Two servers: one whose client is in `challenge` mode (number matching at the
prompt), one in `second-factor-only` mode (RD Gateway behind NPS: no
password, the request waits for the device)."""

from __future__ import annotations

import concurrent.futures
import http.client
import itertools
import json
import re
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from e2e import SECRET, Server, needs_radclient, radclient
from peers import freeradius
from peers.freeradius import FreeRadius
from peers.mschapv2 import MsChapV2, asymmetric_start_key, master_key
from peers.process import free_tcp_port, wait_for
from radius_mfa.push import crypto
from radius_mfa.radius import codec

PASSWORD = "correct horse"
CHALLENGE_TIMEOUT = 8          # the NAS's timeout: an answer waits up to 7 s
SFO_TIMEOUT = 6                # second-factor-only: waits up to 5 s
_names = itertools.count()

pytestmark = needs_radclient


def push_factor(directory: Path, port: int, *, timeout: float = 20) -> str:
    return f"""  push:
    listen: "127.0.0.1:{port}"
    tls_cert: "{directory}/push.crt"
    tls_key: "{directory}/push.key"
    public_url: "https://127.0.0.1:{port}"
    timeout: {timeout}
    number_matching: true
    rate_limit: {{sends: 100, minutes: 5}}
"""


def start_server(directory: Path, mode: str, timeout: int) -> Server:
    port = free_tcp_port()
    server = Server(directory, factors=push_factor(directory, port), clients=f"""
  - name: {"rdgw" if mode == "second-factor-only" else "vpn"}
    address: 127.0.0.1
    secret: "{SECRET}"
    require_message_authenticator: true
    mode: {mode}
    timeout: {timeout}
""")
    server.push_port = port
    return server.start()


@pytest.fixture(scope="module")
def vpn(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("vpn"), "challenge", CHALLENGE_TIMEOUT)
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def rdgw(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("rdgw"), "second-factor-only", SFO_TIMEOUT)
    yield server
    assert server.stop() == 0, server.log()


# --- the phone -------------------------------------------------------------------
def authenticator_command() -> list[str]:
    script = shutil.which("radius-mfa-authenticator")
    return [script] if script else [sys.executable, "-m", "radius_mfa_authenticator"]


class Phone:
    """The reference authenticator with a state directory of its own."""

    def __init__(self, directory: Path):
        self.state = directory

    def run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([*authenticator_command(), "--state", str(self.state), *args],
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def pending(self) -> list[dict]:
        result = self.run("pending", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def wait(self, timeout: float = 10) -> dict:
        result = self.run("wait", "--timeout", str(timeout), timeout=timeout + 20)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


def new_user(server: Server, tmp_path: Path, *, password: bool = True) -> tuple[str, Phone]:
    """A user with a local password and one paired reference authenticator."""
    name = f"user{next(_names)}"
    args = ["user", "add", name] + (["--password-stdin"] if password else [])
    server.cli(*args, input=PASSWORD + "\n" if password else None)
    link = json.loads(server.cli("device", "pair", name, "--json").stdout)
    assert link["url"].startswith(f"https://127.0.0.1:{server.push_port}/")
    phone = Phone(tmp_path / f"phone-{name}")
    paired = phone.run("pair", link["url"])
    assert paired.returncode == 0, paired.stderr
    return name, phone


def auth(server: Server, name: str, password: str | None, *extra, timeout: float = 12):
    attributes = [("User-Name", name)]
    if password is not None:
        attributes.append(("User-Password", password))
    attributes += [*extra, ("Message-Authenticator", "0x00")]
    return radclient(server.port, attributes, timeout=timeout, retries=1)


def records(server: Server, name: str, count: int, timeout: float = 5) -> list[dict]:
    wait_for(lambda: len([r for r in server.audit() if r["user"] == name]) >= count, timeout)
    return [r for r in server.audit() if r["user"] == name]


def shown_number(reply) -> int:
    match = re.search(r"number (\d\d)\b", reply.first("Reply-Message") or "")
    assert match, reply.output
    return int(match.group(1))


background = concurrent.futures.ThreadPoolExecutor(max_workers=64)


# --- challenge mode: number matching -------------------------------------------------
def test_the_number_at_the_prompt_approved_in_the_authenticator_signs_in(vpn, tmp_path):
    name, phone = new_user(vpn, tmp_path)
    challenge = auth(vpn, name, PASSWORD)
    assert challenge.code == "Access-Challenge", challenge.output
    number = shown_number(challenge)
    (pending,) = phone.pending()
    assert pending["needs_number"] is True and pending["user"] == name and pending["client"] == "vpn"
    assert str(number) not in json.dumps({k: v for k, v in pending.items() if k != "id"})
    approved = phone.run("approve", pending["id"], "--number", str(number))
    assert approved.returncode == 0, approved.stderr
    answer = auth(vpn, name, "", ("State", challenge.first("State")))     # an empty OK
    assert answer.code == "Access-Accept", answer.output
    last = records(vpn, name, 2)[-1]
    assert (last["result"], last["factor"], last["reason"]) == ("accept", "push", None)
    assert last["device"] and last["device"].startswith("d")


def test_the_answer_waits_for_the_approval_that_follows_it(vpn, tmp_path):
    name, phone = new_user(vpn, tmp_path)
    challenge = auth(vpn, name, PASSWORD)
    number = shown_number(challenge)
    started = time.monotonic()
    answer = background.submit(auth, vpn, name, "ok", ("State", challenge.first("State")))
    pending = phone.wait()
    time.sleep(1.0)                        # the user takes a moment in the app
    assert not answer.done()
    assert phone.run("approve", pending["id"], "--number", str(number)).returncode == 0
    assert answer.result().code == "Access-Accept"
    assert time.monotonic() - started < CHALLENGE_TIMEOUT


def test_a_wrong_number_is_refused_and_the_sign_in_rejected(vpn, tmp_path):
    name, phone = new_user(vpn, tmp_path)
    challenge = auth(vpn, name, PASSWORD)
    number = shown_number(challenge)
    (pending,) = phone.pending()
    wrong = phone.run("approve", pending["id"], "--number", str(number % 90 + 10))
    assert wrong.returncode == 1 and "does not match" in wrong.stderr
    answer = auth(vpn, name, "", ("State", challenge.first("State")))
    assert answer.code == "Access-Reject"
    assert records(vpn, name, 2)[-1]["reason"] == "wrong_number"


def test_a_denial_rejects(vpn, tmp_path):
    name, phone = new_user(vpn, tmp_path)
    challenge = auth(vpn, name, PASSWORD)
    (pending,) = phone.pending()
    assert phone.run("deny", pending["id"]).returncode == 0
    assert auth(vpn, name, "", ("State", challenge.first("State"))).code == "Access-Reject"
    assert records(vpn, name, 2)[-1]["reason"] == "denied"


def test_fraud_rejects_disables_the_user_and_is_audited(vpn, tmp_path):
    name, phone = new_user(vpn, tmp_path)
    challenge = auth(vpn, name, PASSWORD)
    (pending,) = phone.pending()
    assert phone.run("fraud", pending["id"]).returncode == 0
    assert auth(vpn, name, "", ("State", challenge.first("State"))).code == "Access-Reject"
    reasons = [r["reason"] for r in records(vpn, name, 3)]
    assert "fraud" in reasons
    assert json.loads(vpn.cli("user", "show", name, "--json").stdout)["disabled"] is True
    assert auth(vpn, name, PASSWORD).code == "Access-Reject"          # disabled now
    vpn.cli("user", "enable", name)
    assert auth(vpn, name, PASSWORD).code == "Access-Challenge"


def test_a_reset_user_s_device_is_told_it_is_not_paired(vpn, tmp_path):
    name, phone = new_user(vpn, tmp_path)
    assert phone.pending() == []
    vpn.cli("user", "reset", name)
    refused = phone.run("pending")
    assert refused.returncode == 1
    assert "this device is not paired with an active account" in refused.stderr
    assert json.loads(vpn.cli("device", "list", name, "--json").stdout) == []


# --- second-factor-only: RD Gateway behind NPS --------------------------------------
def test_second_factor_only_waits_for_the_device_and_shows_the_context(rdgw, tmp_path):
    name, phone = new_user(rdgw, tmp_path, password=False)
    reply = background.submit(auth, rdgw, name, None, ("Calling-Station-Id", "203.0.113.45"))
    pending = phone.wait()
    assert (pending["user"], pending["client"], pending["user_ip"]) == (name, "rdgw", "203.0.113.45")
    assert pending["needs_number"] is False and pending["time"]
    assert phone.run("approve", pending["id"]).returncode == 0
    assert reply.result().code == "Access-Accept"
    last = records(rdgw, name, 1)[-1]
    assert (last["factor"], last["result"], last["user_ip"]) == ("push", "accept", "203.0.113.45")


def test_no_answer_is_a_timeout_and_a_late_approval_changes_nothing(rdgw, tmp_path):
    name, phone = new_user(rdgw, tmp_path, password=False)
    started = time.monotonic()
    reply = background.submit(auth, rdgw, name, None)
    pending = phone.wait()
    assert reply.result().code == "Access-Reject"
    assert SFO_TIMEOUT - 2 < time.monotonic() - started < SFO_TIMEOUT + 2
    assert records(rdgw, name, 1)[-1]["reason"] == "timeout"
    late = phone.run("approve", pending["id"])
    assert late.returncode == 1 and "too late" in late.stderr
    time.sleep(0.3)
    assert len(records(rdgw, name, 1)) == 1


def test_a_retransmission_during_the_wait_joins_it_one_push_one_record(rdgw, tmp_path):
    name, phone = new_user(rdgw, tmp_path, password=False)
    request = codec.build_access_request(SECRET.encode(), name, None, id=77,
                                         attributes=[("Calling-Station-Id", "198.51.100.3")])
    copies = background.submit(rdgw.send_copies, request, 4, SFO_TIMEOUT + 4)
    pending = phone.wait()
    time.sleep(0.5)
    assert len(phone.pending()) == 1                       # the copies started nothing
    assert phone.run("approve", pending["id"]).returncode == 0
    first, late = copies.result()
    assert first[0] == codec.ACCESS_ACCEPT and late == first
    assert [r["result"] for r in records(rdgw, name, 1)] == ["accept"]


# --- the device API, spoken to directly ------------------------------------------------
_sources = itertools.count()


class Device:
    """A device of the test's own making: its key, and signed calls."""

    def __init__(self, server: Server, name: str):
        self.server = server
        self.key = Ed25519PrivateKey.generate()
        index = next(_sources)
        self.source = f"127.0.{2 + index // 250}.{index % 250 + 1}"
        url = json.loads(server.cli("device", "pair", name, "--json").stdout)["url"]
        self.link = crypto.parse_pairing_url(url)
        pem = ssl.get_server_certificate(("127.0.0.1", server.push_port))
        assert crypto.fingerprint_of_der(ssl.PEM_cert_to_DER_cert(pem)) == self.link.fingerprint
        status, body = self.call("POST", "/v1/pair", {"token": self.link.token, "name": "test",
                                                      "public_key": crypto.public_key_b64(self.key)})
        assert status == 201, body
        self.id = body["device_id"]

    def call(self, method: str, path: str, body: dict | None = None, signed: bool = False):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE     # pinned once, in __init__
        headers = {"Content-Type": "application/json", "X-Device-Id": getattr(self, "id", "")}
        if signed:
            now = int(time.time())
            headers.update({"X-Time": str(now), "X-Signature": crypto.sign(
                self.key, crypto.request_message(method, path.split("?")[0], now, self.id))})
        data = None if body is None else json.dumps(body).encode()
        # each device from a loopback address of its own, as phones come from
        # their own addresses (the device API limits pairing per source)
        connection = http.client.HTTPSConnection("127.0.0.1", self.server.push_port, context=context,
                                                 timeout=70, source_address=(self.source, 0))
        try:
            connection.request(method, path, body=data, headers=headers)
            answer = connection.getresponse()
            return answer.status, json.loads(answer.read())
        finally:
            connection.close()

    def answer(self, push_id: str, decision: str = "approve", key=None, number=None):
        now = int(time.time())
        signature = crypto.sign(key or self.key, crypto.answer_message(push_id, decision, number, now))
        return {"decision": decision, "number": number, "time": now, "signature": signature}


def test_forged_unsigned_and_replayed_answers_are_refused(rdgw):
    name = f"user{next(_names)}"
    rdgw.cli("user", "add", name)
    device = Device(rdgw, name)
    reply = background.submit(auth, rdgw, name, None)
    status, body = device.call("GET", "/v1/pending?wait=10", signed=True)
    assert status == 200
    (pending,) = body["pending"]
    path = f"/v1/approvals/{pending['id']}"
    forged = device.answer(pending["id"], key=Ed25519PrivateKey.generate())
    assert device.call("POST", path, forged) == (401, {"error": "bad signature"})
    unsigned = {k: v for k, v in device.answer(pending["id"]).items() if k != "signature"}
    assert device.call("POST", path, unsigned)[0] == 401
    tampered = device.answer(pending["id"], "deny")
    tampered["decision"] = "approve"                 # signed as a denial
    assert device.call("POST", path, tampered)[0] == 401
    good = device.answer(pending["id"])
    assert device.call("POST", path, good) == (200, {"status": "approved"})
    assert device.call("POST", path, good)[0] == 409          # the same answer replayed
    assert reply.result().code == "Access-Accept"


def test_many_pending_pushes_are_all_decided_within_their_timeout(rdgw):
    count = 40
    names = [f"user{next(_names)}" for _ in range(count)]
    devices = []
    for name in names:
        rdgw.cli("user", "add", name)
        devices.append(Device(rdgw, name))
    started = time.monotonic()
    replies = [background.submit(auth, rdgw, name, None, ("Calling-Station-Id", f"10.0.0.{i}"))
               for i, name in enumerate(names)]

    def approve(device: Device) -> int:
        status, body = device.call("GET", "/v1/pending?wait=10", signed=True)
        assert status == 200 and len(body["pending"]) == 1, body
        push_id = body["pending"][0]["id"]
        return device.call("POST", f"/v1/approvals/{push_id}", device.answer(push_id))[0]

    assert list(background.map(approve, devices)) == [200] * count
    assert [r.result().code for r in replies] == ["Access-Accept"] * count
    assert time.monotonic() - started < SFO_TIMEOUT + 2


# --- MS-CHAPv2 through an upstream FreeRADIUS: the Accept waits for the device -------
@pytest.mark.skipif(not freeradius.available(), reason="FreeRADIUS (Debian freeradius) is not installed")
def test_mschapv2_waits_for_the_device_then_passes_the_upstream_keys(tmp_path):
    upstream = FreeRadius(tmp_path / "freeradius").start()
    try:
        port = free_tcp_port()
        server = Server(tmp_path, factors=push_factor(tmp_path, port), clients=f"""
  - name: vpn
    address: 127.0.0.1
    secret: "{SECRET}"
    mode: challenge
    timeout: {SFO_TIMEOUT}
""", primary=f"""  backend: radius
  radius:
    servers:
      - {{address: "127.0.0.1:{upstream.port}", secret: "testing123"}}
    timeout: 2
    retries: 1""")
        server.push_port = port
        server.start()
        try:
            server.cli("user", "add", "bob")          # the upstream holds bob's password
            link = json.loads(server.cli("device", "pair", "bob", "--json").stdout)
            phone = Phone(tmp_path / "phone")
            assert phone.run("pair", link["url"]).returncode == 0
            attempt = MsChapV2("bob", "bob-pw")
            request = codec.build_access_request(SECRET.encode(), "bob", None, id=31,
                                                 attributes=list(attempt.forward()))
            reply = background.submit(server.send, request, SFO_TIMEOUT + 4)
            pending = phone.wait()
            assert pending["needs_number"] is False     # MS-CHAPv2 has no prompt to show one
            assert phone.run("approve", pending["id"]).returncode == 0
            response = codec.decode_response(reply.result(), SECRET.encode(), request[4:20])
            assert response.code == codec.ACCESS_ACCEPT
            assert response.get("MS-CHAP2-Success") == attempt.expected_success()
            master = master_key("bob-pw", attempt.nt_response)
            assert response.get("MS-MPPE-Send-Key") == asymmetric_start_key(master, True, True)
            assert response.get("MS-MPPE-Recv-Key") == asymmetric_start_key(master, False, True)
            assert records(server, "bob", 1)[-1]["factor"] == "push"
        finally:
            assert server.stop() == 0, server.log()
    finally:
        upstream.stop()
