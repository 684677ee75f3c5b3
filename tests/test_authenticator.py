"""The reference authenticator against a small device API on loopback.

:class:`DeviceApi` below is a real HTTPS server on 127.0.0.1 (the standard
library's, in a thread, with a self-signed certificate made by
crypto.ensure_certificate) that speaks the device API contract for pair,
pending (with its long-poll), device and approvals, and checks every
signature with crypto.verify: the authenticator is tested against the
contract, not against itself. The server side of radius-mfa
(radius_mfa.push.api) is tested end to end elsewhere.

The commands run in-process through radius_mfa_authenticator.cli.run() on trial's reactor
(Twisted's reactor can run once per process, so main(), which calls
task.react, runs as the console script in a subprocess).
"""

from __future__ import annotations

import functools
import io
import json
import os
import secrets
import shutil
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from twisted.internet import defer, reactor
from twisted.trial import unittest

from radius_mfa.push import crypto
from radius_mfa_authenticator import PROG, cli
from radius_mfa_authenticator.client import MISMATCH
from radius_mfa_authenticator.state import KEY_FILE, STATE_FILE, StateDir

SERVER_NAME = "mfa-test"
EXPIRED = "this pairing link is not valid: it was used already or has expired; ask for a new one"


# --------------------------------------------------------------------------
# A device API that speaks the contract
# --------------------------------------------------------------------------


class DeviceApi:
    """``api = DeviceApi(directory)``; ``api.start()``; ``api.pairing_url("alice")``;
    ``api.add_push("alice", number=42)``; ``api.stop()``."""

    def __init__(self, directory: Path, *, now=time.time):
        directory.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = str(directory / "push.crt"), str(directory / "push.key")
        crypto.ensure_certificate(self.cert, self.key, ("127.0.0.1",))
        self.fingerprint = crypto.certificate_fingerprint(self.cert)
        self.now = now
        self.tokens: dict[str, str] = {}                  # token → user
        self.devices: dict[str, dict] = {}                # id → {user, public_key, name}
        self.pushes: dict[str, dict] = {}                 # id → {user, client, …, status}
        self.answers: list[dict] = []
        self.requests: list[tuple[str, str]] = []         # (method, path with query)
        self.changed = threading.Condition()
        self.stopping = False
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- set-up -------------------------------------------------------------
    def start(self) -> "DeviceApi":
        api = self

        class Handler(_Handler):
            pass
        Handler.api = api
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        server.handle_error = lambda request, address: None     # refused handshakes are expected
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self.changed:
            self.stopping = True
            self.changed.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def pairing_url(self, user: str) -> str:
        token = crypto.new_pairing_token()
        self.tokens[token] = user
        return crypto.pairing_url(self.base_url, token, self.fingerprint)

    def add_push(self, user: str, *, number: int | None = None, client: str = "vpn",
                 user_ip: str | None = "192.0.2.7", created: float | None = None) -> str:
        push_id = secrets.token_hex(16)
        created = self.now() if created is None else created
        with self.changed:
            self.pushes[push_id] = {"id": push_id, "user": user, "client": client, "user_ip": user_ip,
                                    "created": created, "expires": created + 50, "number": number,
                                    "status": "pending"}
            self.changed.notify_all()
        return push_id

    def add_push_later(self, delay: float, user: str) -> None:
        threading.Timer(delay, self.add_push, args=(user,)).start()

    def pending_for(self, user: str) -> list[dict]:
        now = self.now()
        items = [p for p in self.pushes.values()
                 if p["user"] == user and p["status"] == "pending" and p["expires"] > now]
        return sorted(items, key=lambda p: p["created"])


class _Handler(BaseHTTPRequestHandler):
    api: DeviceApi
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    # --- plumbing -------------------------------------------------------------
    def reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def body(self) -> dict | None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    def signed_device(self, path: str) -> dict | None:
        """The calling device of a signed GET, or None once an error was sent."""
        device_id, when, signature = (self.headers.get(h) for h in ("X-Device-Id", "X-Time", "X-Signature"))
        if not (device_id and when and signature):
            self.reply(401, {"error": "unsigned request"})
            return None
        device = self.api.devices.get(device_id)
        if device is None:
            self.reply(401, {"error": "this device is not paired with an active account"})
            return None
        if not crypto.verify(device["public_key"], signature,
                             crypto.request_message(self.command, path, int(when), device_id)):
            self.reply(401, {"error": "bad signature"})
            return None
        if abs(int(when) - self.api.now()) > crypto.MAX_SKEW:
            self.reply(401, {"error": "the request's time is more than 60 s off the server's clock; "
                                      "check this device's clock"})
            return None
        return device

    # --- the routes -----------------------------------------------------------
    def do_GET(self) -> None:
        api = self.api
        api.requests.append(("GET", self.path))
        parts = urlsplit(self.path)
        if parts.path == "/v1/device":
            device = self.signed_device(parts.path)
            if device is not None:
                self.reply(200, {"device_id": device["id"], "user": device["user"], "name": device["name"]})
        elif parts.path == "/v1/pending":
            device = self.signed_device(parts.path)
            if device is None:
                return
            wait = min(float((parse_qs(parts.query).get("wait") or ["0"])[0]), 55)
            end = time.monotonic() + wait
            with api.changed:
                while not api.pending_for(device["user"]) and not api.stopping and time.monotonic() < end:
                    api.changed.wait(end - time.monotonic())
                items = [{k: v for k, v in p.items() if k not in ("number", "status")}
                         | {"needs_number": p["number"] is not None} for p in api.pending_for(device["user"])]
            self.reply(200, {"pending": items})
        else:
            self.reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        api = self.api
        api.requests.append(("POST", self.path))
        body = self.body()
        if self.path == "/v1/pair":
            if body is None or not crypto.valid_public_key(body.get("public_key")):
                self.reply(400, {"error": "malformed body"})
                return
            user = api.tokens.pop(body.get("token"), None)
            if user is None:
                self.reply(403, {"error": EXPIRED})
                return
            device_id = "d" + secrets.token_hex(8)
            api.devices[device_id] = {"id": device_id, "user": user, "public_key": body["public_key"],
                                      "name": body.get("name")}
            self.reply(201, {"device_id": device_id, "user": user, "server": SERVER_NAME})
        elif self.path.startswith("/v1/approvals/"):
            self.approval(self.path.rsplit("/", 1)[1], body)
        else:
            self.reply(404, {"error": "not found"})

    def approval(self, push_id: str, body: dict | None) -> None:
        api = self.api
        if body is None or body.get("decision") not in crypto.DECISIONS or not isinstance(body.get("time"), int):
            self.reply(400, {"error": "malformed body"})
            return
        number = body.get("number")
        device = api.devices.get(self.headers.get("X-Device-Id") or "")
        if device is None:
            self.reply(401, {"error": "this device is not paired with an active account"})
            return
        message = crypto.answer_message(push_id, body["decision"], number, body["time"])
        if not crypto.verify(device["public_key"], body.get("signature") or "", message):
            self.reply(401, {"error": "bad signature"})
            return
        with api.changed:
            push = api.pushes.get(push_id)
            if push is None or push["user"] != device["user"]:
                self.reply(404, {"error": "no such sign-in for this device"})
                return
            if push["status"] != "pending":
                self.reply(409, {"error": "this sign-in was answered already"})
                return
            decision = body["decision"]
            if decision == "approve" and push["number"] is not None:
                if number is None:
                    self.reply(422, {"error": "this sign-in needs the number shown on the sign-in screen"})
                    return
                if number != push["number"]:
                    push["status"] = "wrong_number"
                    self.reply(422, {"error": "the number does not match the one on the sign-in screen; "
                                              "the sign-in was denied"})
                    return
            push["status"] = {"approve": "approved", "deny": "denied", "fraud": "fraud"}[decision]
            api.answers.append({"push": push_id, "device": device["id"], **body})
        self.reply(200, {"status": push["status"]})


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def async_test(method):
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        return defer.Deferred.fromCoroutine(method(self, *args, **kwargs))
    return run


class Terminal(io.StringIO):
    """Typed input at a terminal."""

    def isatty(self) -> bool:
        return True


class AuthenticatorTest(unittest.TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="authenticator-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.state = str(self.tmp / "state")

    def api(self, name: str = "server", **options) -> DeviceApi:
        api = DeviceApi(self.tmp / name, **options).start()
        self.addCleanup(api.stop)
        return api

    async def cli(self, *words: str, stdin: io.StringIO | None = None, clock=time.time) -> tuple[int, str, str]:
        args = cli.parse_args(["--state", self.state, *words])
        out, err = io.StringIO(), io.StringIO()
        code = await cli.run(args, reactor, cli.Streams(stdin or io.StringIO(), out, err), clock)
        await _settle()
        return code, out.getvalue(), err.getvalue()

    async def paired(self, api: DeviceApi, user: str = "alice") -> None:
        code, out, err = await self.cli("pair", api.pairing_url(user), "--name", "test laptop")
        assert code == 0, err

    # --- pair ---------------------------------------------------------------
    @async_test
    async def test_pair_stores_a_private_key_and_the_pinned_server(self):
        api = self.api()
        code, out, err = await self.cli("pair", api.pairing_url("alice"), "--name", "alice's laptop")
        assert (code, err) == (0, "")
        [device_id] = api.devices
        assert out == f"paired as alice with {SERVER_NAME} at {api.base_url} (device {device_id})\n"
        assert stat.S_IMODE(os.stat(self.state).st_mode) == 0o700
        key_file = Path(self.state, KEY_FILE)
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert key_file.read_text().startswith("-----BEGIN PRIVATE KEY-----")
        saved = json.loads(Path(self.state, STATE_FILE).read_text())
        assert saved == {"base_url": api.base_url, "fingerprint": api.fingerprint, "device_id": device_id,
                         "user": "alice", "server": SERVER_NAME, "name": "alice's laptop"}
        state, key = StateDir(self.state).load()
        assert crypto.public_key_b64(key) == api.devices[device_id]["public_key"]
        assert api.devices[device_id]["name"] == "alice's laptop"
        # nothing secret on the screen
        assert "PRIVATE" not in out and not any(t in out for t in api.tokens)

    @async_test
    async def test_a_used_pairing_link_is_refused_with_the_servers_words(self):
        api = self.api()
        url = api.pairing_url("alice")
        assert (await self.cli("pair", url))[0] == 0
        code, out, err = await self.cli("pair", url)
        assert (code, out) == (1, "")
        assert err == f"radius-mfa-authenticator: {EXPIRED}\n"

    @async_test
    async def test_an_unwritable_state_directory_is_refused_before_the_link_is_spent(self):
        api = self.api()
        blocker = self.tmp / "a-file"
        blocker.write_text("")
        self.state = str(blocker / "state")
        code, out, err = await self.cli("pair", api.pairing_url("alice"))
        assert (code, out) == (1, "")
        assert err == (f"radius-mfa-authenticator: cannot write the state to {self.state}: "
                       f"{blocker} is not a writable directory\n")
        assert len(api.tokens) == 1 and api.requests == []

    @async_test
    async def test_pairing_again_replaces_the_key_and_the_device(self):
        api = self.api()
        await self.paired(api)
        first_key = Path(self.state, KEY_FILE).read_text()
        await self.paired(api, "alice")
        assert Path(self.state, KEY_FILE).read_text() != first_key
        state, key = StateDir(self.state).load()
        assert len(api.devices) == 2
        assert api.devices[state.device_id]["public_key"] == crypto.public_key_b64(key)
        assert sorted(os.listdir(self.state)) == sorted([KEY_FILE, STATE_FILE])

    @async_test
    async def test_pinning_refuses_a_server_with_another_certificate(self):
        api, impostor = self.api("server"), self.api("impostor")
        link = crypto.parse_pairing_url(api.pairing_url("alice"))
        # the impostor's address, the real server's fingerprint
        url = crypto.pairing_url(impostor.base_url, link.token, link.fingerprint)
        code, out, err = await self.cli("pair", url)
        assert (code, out) == (1, "")
        assert err == f"radius-mfa-authenticator: {MISMATCH}\n"
        assert impostor.requests == [] and not os.path.exists(self.state)

    @async_test
    async def test_a_paired_device_refuses_the_server_once_its_certificate_changed(self):
        api = self.api()
        await self.paired(api)
        api.add_push("alice")
        # the server comes back with a new certificate at the same address
        state_file = Path(self.state, STATE_FILE)
        impostor = self.api("impostor")
        saved = json.loads(state_file.read_text())
        state_file.write_text(json.dumps(saved | {"base_url": impostor.base_url}))
        code, out, err = await self.cli("pending")
        assert (code, out) == (1, "")
        assert err == f"radius-mfa-authenticator: {MISMATCH}\n"
        assert impostor.requests == []

    @async_test
    async def test_bad_pairing_urls_are_bad_usage(self):
        for url, message in (
            ("https://127.0.0.1:1/pair?token=abc", "the pairing URL has no certificate fingerprint (fp=)"),
            ("https://127.0.0.1:1/elsewhere", "not a pairing URL: its path ends in /pair"),
            ("http://127.0.0.1:1/pair?token=abc&fp=" + "a" * 64,
             "the device API is reached over https only, not http://127.0.0.1:1"),
        ):
            code, out, err = await self.cli("pair", url)
            assert (code, out, err) == (2, "", f"radius-mfa-authenticator: {message}\n")

    @async_test
    async def test_nobody_listening_is_one_clear_line(self):
        api = self.api()
        url = api.pairing_url("alice")
        api.stop()
        code, out, err = await self.cli("pair", url)
        assert (code, out) == (1, "")
        where = urlsplit(url).netloc
        assert err == (f"radius-mfa-authenticator: cannot reach {where}: connection refused "
                       "(is the server running?)\n")

    # --- before pairing -------------------------------------------------------
    @async_test
    async def test_every_command_needs_a_pairing_first(self):
        for words in (("pending",), ("approve", "x"), ("deny", "x"), ("fraud", "x"), ("wait",), ("status",)):
            code, out, err = await self.cli(*words)
            assert (code, out, err) == (1, "", "radius-mfa-authenticator: not paired: run pair URL first\n")

    @async_test
    async def test_damaged_state_says_so(self):
        api = self.api()
        await self.paired(api)
        Path(self.state, KEY_FILE).write_text("not a key")
        code, _, err = await self.cli("pending")
        assert code == 1 and err == f"radius-mfa-authenticator: the state in {self.state} is damaged; pair again\n"

    # --- pending, status ------------------------------------------------------
    @async_test
    async def test_pending_lists_the_users_sign_ins_oldest_first_without_the_number(self):
        api = self.api()
        await self.paired(api)
        first = api.add_push("alice", number=42, created=time.time() - 5)
        second = api.add_push("alice", user_ip=None, client="wifi")
        api.add_push("bob")
        code, out, err = await self.cli("pending", "--json")
        assert (code, err) == (0, "")
        items = json.loads(out)
        assert [i["id"] for i in items] == [first, second]
        created = api.pushes[first]["created"]
        assert items[0] == {"id": first, "user": "alice", "client": "vpn", "user_ip": "192.0.2.7",
                            "time": cli.iso_time(created),
                            "expires": cli.iso_time(created + 50), "needs_number": True}
        assert items[0]["time"].endswith("Z") and "T" in items[0]["time"]
        assert items[1]["user_ip"] is None and items[1]["needs_number"] is False
        code, out, _ = await self.cli("pending")
        header, row1, row2 = out.splitlines()
        assert header.split() == ["ID", "USER", "CLIENT", "FROM", "TIME", "NUMBER"]
        assert row1.startswith(first) and row1.endswith("needed") and "192.0.2.7" in row1
        assert row2.startswith(second) and " - " in row2

    @async_test
    async def test_nothing_pending(self):
        api = self.api()
        await self.paired(api)
        assert await self.cli("pending", "--json") == (0, "[]\n", "")
        assert await self.cli("pending") == (0, "no sign-in waits for approval\n", "")

    @async_test
    async def test_signed_requests_carry_the_devices_clock_and_the_server_says_when_it_is_off(self):
        api = self.api()
        await self.paired(api)
        code, out, err = await self.cli("pending", clock=lambda: time.time() - 600)
        assert (code, out) == (1, "")
        assert err == ("radius-mfa-authenticator: the request's time is more than 60 s off the server's "
                       "clock; check this device's clock\n")

    @async_test
    async def test_a_removed_device_hears_it_is_not_paired(self):
        api = self.api()
        await self.paired(api)
        assert (await self.cli("status"))[1].startswith("paired as alice with mfa-test")
        api.devices.clear()
        code, _, err = await self.cli("status")
        assert code == 1
        assert err == "radius-mfa-authenticator: this device is not paired with an active account\n"

    # --- answers --------------------------------------------------------------
    @async_test
    async def test_approve_deny_and_fraud_send_signed_answers(self):
        api = self.api()
        await self.paired(api)
        approve, deny, fraud = (api.add_push("alice") for _ in range(3))
        assert await self.cli("approve", approve) == (0, "approved\n", "")
        assert await self.cli("deny", deny) == (0, "denied\n", "")
        code, out, _ = await self.cli("fraud", fraud)
        assert code == 0 and out.startswith("reported as fraud")
        assert [(a["push"], a["decision"], a["number"]) for a in api.answers] == [
            (approve, "approve", None), (deny, "deny", None), (fraud, "fraud", None)]
        assert [api.pushes[p]["status"] for p in (approve, deny, fraud)] == ["approved", "denied", "fraud"]

    @async_test
    async def test_a_second_answer_and_an_unknown_id_are_refused_with_the_servers_words(self):
        api = self.api()
        await self.paired(api)
        push = api.add_push("alice")
        assert (await self.cli("approve", push))[0] == 0
        assert await self.cli("deny", push) == (
            1, "", "radius-mfa-authenticator: this sign-in was answered already\n")
        assert await self.cli("approve", "no-such-id") == (
            1, "", "radius-mfa-authenticator: no such sign-in for this device\n")
        other = api.add_push("bob")
        assert (await self.cli("approve", other))[0] == 1
        assert api.pushes[other]["status"] == "pending"

    @async_test
    async def test_number_matching(self):
        api = self.api()
        await self.paired(api)
        push = api.add_push("alice", number=42)
        # no number, nobody at a terminal: say what to do; the push stays pending
        code, out, err = await self.cli("approve", push)
        assert (code, out) == (1, "")
        assert err == ("radius-mfa-authenticator: this sign-in needs the number shown on the sign-in screen: "
                       f"approve {push} --number N\n")
        assert api.pushes[push]["status"] == "pending"
        # at a terminal: asked for it
        code, out, err = await self.cli("approve", push, stdin=Terminal("42\n"))
        assert (code, out) == (0, "approved\n")
        assert "Number shown on the sign-in screen" in err
        assert api.answers[-1]["number"] == 42
        # given on the command line; a wrong one ends the sign-in
        wrong = api.add_push("alice", number=17)
        code, out, err = await self.cli("approve", wrong, "--number", "71")
        assert (code, out) == (1, "")
        assert err == ("radius-mfa-authenticator: the number does not match the one on the sign-in screen; "
                       "the sign-in was denied\n")
        right = api.add_push("alice", number=23)
        assert await self.cli("approve", right, "--number", "23") == (0, "approved\n", "")

    # --- wait -----------------------------------------------------------------
    @async_test
    async def test_wait_returns_as_soon_as_a_push_arrives(self):
        api = self.api()
        await self.paired(api)
        api.add_push_later(0.3, "alice")
        started = time.monotonic()
        code, out, err = await self.cli("wait", "--timeout", "10")
        assert (code, err) == (0, "")
        assert time.monotonic() - started < 5
        [line] = out.splitlines()
        item = json.loads(line)
        assert set(item) == {"id", "user", "client", "user_ip", "time", "expires", "needs_number"}
        assert item["user"] == "alice" and item["id"] in api.pushes
        assert any(path.startswith("/v1/pending?wait=") for _, path in api.requests)

    @async_test
    async def test_wait_gives_up_after_its_timeout(self):
        api = self.api()
        await self.paired(api)
        started = time.monotonic()
        code, out, err = await self.cli("wait", "--timeout", "1.5")
        elapsed = time.monotonic() - started
        assert (code, out) == (1, "")
        assert err == "radius-mfa-authenticator: no sign-in waited for approval within 1.5 s\n"
        assert 1.4 <= elapsed < 4

    @async_test
    async def test_wait_with_a_push_already_pending_prints_the_oldest(self):
        api = self.api()
        await self.paired(api)
        oldest = api.add_push("alice", created=time.time() - 3)
        api.add_push("alice")
        code, out, _ = await self.cli("wait", "--timeout", "0")
        assert code == 0 and json.loads(out)["id"] == oldest


async def _settle() -> None:
    """Let the closed client connections finish closing before the test ends
    (trial checks for a clean reactor)."""
    for _ in range(100):
        if not [s for s in reactor.getReaders() + reactor.getWriters() if _is_tcp(s)]:
            return
        d: defer.Deferred = defer.Deferred()
        reactor.callLater(0.01, d.callback, None)
        await d


def _is_tcp(selectable) -> bool:
    from twisted.internet import tcp
    return isinstance(selectable, tcp.Connection)


# --------------------------------------------------------------------------
# Argument errors (pure) and the console script
# --------------------------------------------------------------------------


@pytest.mark.parametrize("words", [
    (), ("approve",), ("approve", "x", "--number", "seven"), ("wait", "--timeout", "-1"),
    ("wait", "--timeout", "soon"), ("pair",), ("dance",),
])
def test_bad_usage_exits_2(words, capsys, tmp_path):
    assert cli.main(["--state", str(tmp_path), *words]) == 2
    assert "usage:" in capsys.readouterr().err


def test_state_comes_from_the_option_then_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(cli.STATE_ENV, str(tmp_path / "env"))
    assert cli.parse_args(["pending"]).state == str(tmp_path / "env")
    assert cli.parse_args(["pending", "--state", "x"]).state == "x"
    assert cli.parse_args(["--state", "y", "pending"]).state == "y"
    monkeypatch.delenv(cli.STATE_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert cli.parse_args(["pending"]).state == str(tmp_path / "cfg" / PROG)


def test_pending_json_times_are_iso_utc():
    assert cli.iso_time(1_700_000_000) == "2023-11-14T22:13:20Z"
    assert cli.iso_time(None) is None and cli.iso_time("x") is None


def _console_script() -> str:
    beside_python = os.path.join(os.path.dirname(sys.executable), PROG)
    found = beside_python if os.path.exists(beside_python) else shutil.which(PROG)
    if not found:
        pytest.skip("the radius-mfa-authenticator console script is not installed")
    return found


def test_console_script_pairs_approves_and_never_prints_a_traceback(tmp_path):
    script, state = _console_script(), str(tmp_path / "state")
    api = DeviceApi(tmp_path / "server").start()
    try:
        def call(*words: str) -> subprocess.CompletedProcess:
            return subprocess.run([script, "--state", state, *words], capture_output=True, text=True,
                                  timeout=60, stdin=subprocess.DEVNULL)

        assert call("pending").returncode == 1
        paired = call("pair", api.pairing_url("alice"))
        assert paired.returncode == 0, paired.stderr
        assert paired.stdout.startswith("paired as alice with mfa-test")
        push = api.add_push("alice", number=42)
        asked = call("approve", push)
        assert asked.returncode == 1 and "approve " + push + " --number N" in asked.stderr
        done = call("approve", push, "--number", "42")
        assert (done.returncode, done.stdout) == (0, "approved\n")
    finally:
        api.stop()
    gone = call("pending")
    assert gone.returncode == 1
    assert gone.stderr.startswith("radius-mfa-authenticator: cannot reach 127.0.0.1:")
    assert "Traceback" not in gone.stderr and len(gone.stderr.splitlines()) == 1
