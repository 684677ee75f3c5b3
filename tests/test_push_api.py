"""The device API over real TLS: pairing, signed requests, the long-poll and answers.

A real HTTPS server on 127.0.0.1 (``listen_device_api``, its self-signed
certificate made on the spot) runs ``DeviceApi`` with a real ``PushHub`` over
a real SQLite store, on the real reactor (trial TestCases). The client is
Twisted's ``Agent`` trusting exactly that certificate, signing with a fresh
Ed25519 key as a device does. Time is a ``task.Clock`` the test moves: the
hub's clock and timers and the API's clock all read it, so expiry and the
end of a long-poll happen when the test says, never after a sleep.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
import time
from io import BytesIO
from pathlib import Path

import structlog
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet import defer, reactor, task
from twisted.internet.ssl import Certificate
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest
from twisted.web.client import (UNKNOWN_LENGTH, Agent, BrowserLikePolicyForHTTPS, FileBodyProducer,
                                HTTPConnectionPool, readBody)
from twisted.web.http_headers import Headers

from helpers import FakeClock, open_sqlite
from radius_mfa.config import ListenAddress, PushConfig
from radius_mfa.model import Pairing, User
from radius_mfa.push import api, crypto
from radius_mfa.push.api import (DeviceApi, DeviceApiTlsError, PairingLimiter, listen_device_api,
                                  load_tls_options, source_key)
from radius_mfa.push.hub import PushHub
from radius_mfa.store.asyncstore import AsyncStore, immediate_runner, thread_runner

REPO = Path(__file__).resolve().parent.parent
NOW = 1_700_000_000.0
CONTRACT_PATHS = {"/v1/pair", "/v1/pending", "/v1/device", "/v1/approvals/{push_id}",
                  "/v1/openapi.yaml"}

UNSIGNED = {"error": "unsigned request"}
NOT_PAIRED = {"error": "this device is not paired with an active account"}
BAD_SIGNATURE = {"error": "bad signature"}
CLOCK_OFF = {"error": "the request's time is more than 60 s off the server's clock; "
                      "check this device's clock"}
PAIRING_INVALID = {"error": "this pairing link is not valid: it was used already or has expired; "
                            "ask for a new one"}
PAIRING_LIMITED = {"error": "too many pairing attempts from this address; "
                            "try again after the Retry-After seconds"}
NOT_FOUND = {"error": "no such sign-in for this device"}
ANSWERED = {"error": "this sign-in was answered already"}
TOO_LATE = {"error": "too late: this sign-in has timed out"}
NEEDS_NUMBER = {"error": "this sign-in needs the number shown on the sign-in screen"}
WRONG_NUMBER = {"error": "the number does not match the one on the sign-in screen; "
                         "the sign-in was denied"}


class Phone:
    """A device's side: its key, and its id once paired."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.public_key = crypto.public_key_b64(self.key)
        self.device_id: str | None = None

    def request_headers(self, method: str, path: str, when: int) -> dict[str, str]:
        path = path.split("?", 1)[0]
        signature = crypto.sign(self.key, crypto.request_message(method, path, when, self.device_id))
        return {"X-Device-Id": self.device_id, "X-Time": str(when), "X-Signature": signature}

    def answer(self, push_id: str, decision: str, number: int | None, when: int) -> dict:
        signature = crypto.sign(self.key, crypto.answer_message(push_id, decision, number, when))
        return {"decision": decision, "number": number, "time": when, "signature": signature}


def scratch_dir(test: unittest.TestCase) -> Path:
    """A directory of the test's own outside the tree, removed when it ends
    (trial's ``mktemp`` would write below the working directory)."""
    path = Path(tempfile.mkdtemp(prefix="push-api-"))
    test.addCleanup(shutil.rmtree, path, True)
    return path


@defer.inlineCallbacks
def until(predicate, timeout: float = 5.0):
    """Wait (on the real reactor) until ``predicate()`` holds: for the server
    to notice something the client did, never for time to pass."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("the condition never came true")
        yield task.deferLater(reactor, 0.01, lambda: None)


class DeviceApiTestCase(unittest.TestCase):
    timeout = 20

    def setUp(self):
        self.dir = scratch_dir(self)
        self.sync = open_sqlite(self.dir / "store.db")
        self.addCleanup(self.sync.close)
        for name in ("alice", "bob"):
            self.sync.add_user(User(name=name))
        self.store = AsyncStore(self.sync, immediate_runner)
        self.clock = task.Clock()
        self.clock.advance(NOW)
        self.frauds: list = []
        self.config = PushConfig(listen=ListenAddress("127.0.0.1", 0),
                                 tls_cert=str(self.dir / "push.crt"),
                                 tls_key=str(self.dir / "push.key"),
                                 public_url="https://mfa.example.org:8443", timeout=50.0)
        self.hub = PushHub(self.store, config=self.config, clock=self.clock.seconds,
                           reactor=self.clock,
                           on_fraud=lambda push, device: self.frauds.append((push, device)))
        self.watch_polls()
        self.api = DeviceApi(self.hub, self.store, self.clock.seconds, "mfa1")

        capture = structlog.testing.capture_logs()
        self.logs = capture.__enter__()
        self.addCleanup(capture.__exit__, None, None, None)

        self.port = listen_device_api(reactor, self.config, self.api)
        self.addCleanup(self.port.stopListening)
        self.base = f"https://127.0.0.1:{self.port.getHost().port}"
        trust = Certificate.loadPEM((self.dir / "push.crt").read_bytes())
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(self.pool.closeCachedConnections)
        self.agent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=trust),
                           pool=self.pool)

    def watch_polls(self) -> None:
        """``self.polled`` fires (on the next reactor turn, once the hub has
        registered its waiter) each time the hub reads a user's pending pushes."""
        original = self.store.pending_pushes
        self.polled: list[defer.Deferred] = []

        def pending_pushes(*args, **kwargs):
            waiting, self.polled = self.polled, []
            for d in waiting:
                reactor.callLater(0, d.callback, None)
            return original(*args, **kwargs)

        self.store.pending_pushes = pending_pushes

    def next_poll(self) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.polled.append(d)
        return d

    # --- the client ------------------------------------------------------------------
    @defer.inlineCallbacks
    def request(self, method: str, path: str, body=None, headers: dict | None = None):
        """(status, decoded body, response headers); the body is JSON when it parses."""
        raw = {k.encode(): [v.encode()] for k, v in (headers or {}).items()}
        producer = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            raw[b"content-type"] = [b"application/json"]
            producer = FileBodyProducer(BytesIO(data))
        response = yield self.agent.request(method.encode(), (self.base + path).encode(),
                                            Headers(raw), producer)
        content = yield readBody(response)
        try:
            decoded = json.loads(content)
        except ValueError:
            decoded = content
        return response.code, decoded, response.headers

    def now(self) -> int:
        return int(self.clock.seconds())

    def signed_get(self, phone: Phone, path: str, when: int | None = None):
        when = self.now() if when is None else when
        return self.request("GET", path, headers=phone.request_headers("GET", path, when))

    def answer(self, phone: Phone, push_id: str, decision: str, number: int | None = None,
               when: int | None = None):
        when = self.now() if when is None else when
        return self.request("POST", f"/v1/approvals/{push_id}",
                            phone.answer(push_id, decision, number, when),
                            headers={"X-Device-Id": phone.device_id})

    def pairing(self, user: str = "alice", ttl: float = 600.0) -> str:
        token = crypto.new_pairing_token()
        now = self.clock.seconds()
        self.sync.add_pairing(Pairing(crypto.token_digest(token), user, now, now + ttl))
        return token

    @defer.inlineCallbacks
    def paired_phone(self, user: str = "alice"):
        phone = Phone()
        status, body, _ = yield self.request("POST", "/v1/pair", {
            "token": self.pairing(user), "public_key": phone.public_key, "name": f"{user}'s phone"})
        self.assertEqual(status, 201)
        phone.device_id = body["device_id"]
        return phone

    @defer.inlineCallbacks
    def start_push(self, user: str = "alice", number_matching: bool = False,
                   station: str | None = "198.51.100.7"):
        started = yield defer.ensureDeferred(self.hub.start(
            User(name=user), "vpn", 30.0, station, station, number_matching))
        return started.push

    def api_lines(self) -> list[dict]:
        return [e for e in self.logs if e["event"] == "push.api"]


class PairingEndpoint(DeviceApiTestCase):
    @defer.inlineCallbacks
    def test_a_pairing_token_pairs_one_device_once(self):
        phone, token = Phone(), self.pairing()
        body = {"token": token, "public_key": phone.public_key, "name": "alice's laptop"}
        status, answer, headers = yield self.request("POST", "/v1/pair", body)
        self.assertEqual(status, 201)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertRegex(answer["device_id"], r"^d[0-9a-f]{16}$")
        self.assertEqual(answer, {"device_id": answer["device_id"], "user": "alice", "server": "mfa1"})
        device = self.sync.get_device(answer["device_id"])
        self.assertEqual((device.user, device.name, device.public_key),
                         ("alice", "alice's laptop", phone.public_key))

        status, again, _ = yield self.request("POST", "/v1/pair", body)
        self.assertEqual((status, again), (403, PAIRING_INVALID))
        self.assertEqual(len(self.sync.list_devices("alice")), 1)

    @defer.inlineCallbacks
    def test_an_expired_pairing_link_is_refused(self):
        token = self.pairing(ttl=600)
        self.clock.advance(601)
        status, body, _ = yield self.request("POST", "/v1/pair",
                                             {"token": token, "public_key": Phone().public_key})
        self.assertEqual((status, body), (403, PAIRING_INVALID))
        self.assertEqual(self.sync.list_devices("alice"), [])

    @defer.inlineCallbacks
    def test_an_unknown_token_is_refused(self):
        status, body, _ = yield self.request("POST", "/v1/pair",
                                             {"token": "nope", "public_key": Phone().public_key})
        self.assertEqual((status, body), (403, PAIRING_INVALID))

    @defer.inlineCallbacks
    def test_a_bad_public_key_is_refused_and_leaves_the_token_usable(self):
        token = self.pairing()
        for bad in ("not base64!", "AAAA", crypto.public_key_b64(Ed25519PrivateKey.generate()) + "x", 42, None):
            status, body, _ = yield self.request("POST", "/v1/pair", {"token": token, "public_key": bad})
            self.assertEqual(status, 400, bad)
            self.assertIn("public_key", body["error"])
        status, body, _ = yield self.request("POST", "/v1/pair",
                                             {"token": token, "public_key": Phone().public_key})
        self.assertEqual(status, 201)
        self.assertEqual(self.sync.get_device(body["device_id"]).name, "device")   # the default

    @defer.inlineCallbacks
    def test_a_name_must_be_short_and_printable(self):
        token = self.pairing()
        for name in ("x" * 65, "bad\nname", 7):
            status, body, _ = yield self.request("POST", "/v1/pair", {
                "token": token, "public_key": Phone().public_key, "name": name})
            self.assertEqual(status, 400, name)
            self.assertIn("name", body["error"])

    @defer.inlineCallbacks
    def test_a_body_without_token_is_malformed(self):
        status, body, _ = yield self.request("POST", "/v1/pair", {"public_key": Phone().public_key})
        self.assertEqual(status, 400)
        self.assertIn("token", body["error"])


class PairingAttacks(DeviceApiTestCase):
    """Unauthenticated pairing attempts: limited per source address, and a
    wrong token answered from a read, never the store's write lock."""

    def count_complete_pairing(self, store) -> list[str]:
        """The token digests ``store.complete_pairing`` (the write) was called with."""
        calls: list[str] = []
        original = store.complete_pairing

        def complete_pairing(token_digest, *args, **kwargs):
            calls.append(token_digest)
            return original(token_digest, *args, **kwargs)

        store.complete_pairing = complete_pairing
        return calls

    def hold_write_lock(self) -> sqlite3.Connection:
        """Another connection holding the store's write lock (BEGIN IMMEDIATE)
        until the test commits it: whatever needs the lock waits meanwhile."""
        holder = sqlite3.connect(str(self.dir / "store.db"), isolation_level=None)
        self.addCleanup(holder.close)
        holder.execute("BEGIN IMMEDIATE")
        return holder

    def pair(self, token: str, phone: Phone | None = None):
        return self.request("POST", "/v1/pair",
                            {"token": token, "public_key": (phone or Phone()).public_key})

    @defer.inlineCallbacks
    def test_a_burst_of_pairing_attempts_from_one_address_is_rejected(self):
        for _ in range(api.PAIRING_LIMIT):
            status, body, _ = yield self.pair("guess-" + crypto.new_pairing_token())
            self.assertEqual((status, body), (403, PAIRING_INVALID))
        token = self.pairing()
        before = len(self.api_lines())
        for _ in range(3):                 # even the right token: the address is over its limit
            status, body, headers = yield self.pair(token)
            self.assertEqual((status, body), (429, PAIRING_LIMITED))
            self.assertEqual(headers.getRawHeaders(b"retry-after"), [b"6"])   # 60 s / 10
            self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertIsNotNone(self.sync.get_pairing(crypto.token_digest(token)))  # not used up
        self.assertEqual(self.sync.list_devices("alice"), [])
        # one line for the run of refusals, naming the source; not one per request
        lines = self.api_lines()[before:]
        self.assertEqual([(e["path"], e["status"], e["source"]) for e in lines],
                         [("/v1/pair", 429, "127.0.0.1")])

        self.clock.advance(6)              # what Retry-After said: one attempt more
        status, body, _ = yield self.pair(token)
        self.assertEqual(status, 201)
        self.assertEqual(body["user"], "alice")
        status, body, _ = yield self.pair(self.pairing())
        self.assertEqual(status, 429)

    @defer.inlineCallbacks
    def test_a_burst_of_malformed_pairing_attempts_counts_too(self):
        for _ in range(api.PAIRING_LIMIT):
            status, _, _ = yield self.request("POST", "/v1/pair", b"not json")
            self.assertEqual(status, 400)
        status, body, _ = yield self.pair(self.pairing())
        self.assertEqual((status, body), (429, PAIRING_LIMITED))

    @defer.inlineCallbacks
    def test_a_wrong_used_or_expired_token_takes_no_write_lock(self):
        writes = self.count_complete_pairing(self.store)
        used = self.pairing()
        status, _, _ = yield self.pair(used)
        self.assertEqual(status, 201)
        expired = self.pairing(ttl=60)
        self.clock.advance(61)
        good = self.pairing()
        self.assertEqual(len(writes), 1)

        holder = self.hold_write_lock()
        # the store runs in the reactor's thread here: a write would wait for the
        # lock (5 s) and fail; a read answers at once
        started = time.monotonic()
        for token in ("nope", "guess-" + crypto.new_pairing_token(), used, expired):
            status, body, _ = yield self.pair(token)
            self.assertEqual((status, body), (403, PAIRING_INVALID), token[:8])
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertEqual(len(writes), 1)
        self.assertTrue(holder.in_transaction)
        holder.execute("COMMIT")
        # the expired link stays for the store's cleanup; nothing was written
        self.assertIsNotNone(self.sync.get_pairing(crypto.token_digest(expired)))
        self.assertEqual(len(self.sync.list_devices("alice")), 1)

        status, _, _ = yield self.pair(good)
        self.assertEqual(status, 201)
        self.assertEqual(writes, [crypto.token_digest(used), crypto.token_digest(good)])

    @defer.inlineCallbacks
    def test_a_flood_of_wrong_tokens_does_not_block_a_real_pairing(self):
        pool = ThreadPool(2, 4, name="push-api-test-store")
        pool.start()
        self.addCleanup(pool.stop)
        store = AsyncStore(self.sync, thread_runner(reactor, pool))
        writes = self.count_complete_pairing(store)
        self.api.store = store
        self.api.pairing_limiter = PairingLimiter(self.clock.seconds, limit=1000)

        token, phone = self.pairing("bob"), Phone()
        holder = self.hold_write_lock()
        flood = [self.pair("guess-" + crypto.new_pairing_token()) for _ in range(20)]
        real = self.pair(token, phone)
        flood += [self.pair("guess-" + crypto.new_pairing_token()) for _ in range(20)]
        answers = yield defer.gatherResults(flood)
        # every wrong token answered while another writer still holds the lock
        self.assertEqual({(status, json.dumps(body)) for status, body, _ in answers},
                         {(403, json.dumps(PAIRING_INVALID))})
        self.assertTrue(holder.in_transaction)
        self.assertEqual(writes, [crypto.token_digest(token)])   # only the real one writes
        holder.execute("COMMIT")
        status, body, _ = yield real
        self.assertEqual(status, 201)
        self.assertEqual(self.sync.get_device(body["device_id"]).public_key, phone.public_key)

    @defer.inlineCallbacks
    def test_two_racing_pairings_with_one_token_pair_once(self):
        token = self.pairing()
        answers = yield defer.gatherResults([self.pair(token), self.pair(token)])
        self.assertEqual(sorted(status for status, _, _ in answers), [201, 403])
        self.assertEqual(len(self.sync.list_devices("alice")), 1)


class PairingLimits(unittest.TestCase):
    """The limiter alone, on a fake clock."""

    def setUp(self):
        self.clock = FakeClock()

    def test_a_burst_from_one_address_is_rejected_until_it_refills(self):
        limiter = PairingLimiter(self.clock, limit=10, period=60)
        self.assertEqual([limiter.take("192.0.2.1") for _ in range(10)], [(0.0, False)] * 10)
        self.assertEqual(limiter.take("192.0.2.1"), (6.0, True))
        self.assertEqual(limiter.take("192.0.2.1"), (6.0, False))      # not reported again
        self.assertEqual(limiter.take("192.0.2.2"), (0.0, False))      # another address
        self.clock.advance(3)
        self.assertEqual(limiter.take("192.0.2.1"), (3.0, False))
        self.clock.advance(3)
        self.assertEqual(limiter.take("192.0.2.1"), (0.0, False))      # one every 6 s
        self.assertEqual(limiter.take("192.0.2.1"), (6.0, True))
        self.clock.advance(600)                                        # refilled: a burst of 10, no more
        self.assertEqual(sum(limiter.take("192.0.2.1") == (0.0, False) for _ in range(20)), 10)

    def test_a_flood_of_source_addresses_is_held_in_a_bounded_table(self):
        limiter = PairingLimiter(self.clock, limit=10, period=60, max_sources=100)
        allowed = 0
        for i in range(20_000):
            address = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
            allowed += limiter.take(address) == (0.0, False)
        self.assertEqual(len(limiter), 100)
        # the first 100 sources remembered, the 19,900 others sharing one bucket of 10
        self.assertEqual(allowed, 100 + 10)
        self.assertEqual(limiter.take("198.51.100.9")[0], 6.0)

    def test_rotating_addresses_cannot_reset_a_source_s_limit(self):
        limiter = PairingLimiter(self.clock, limit=10, period=60, max_sources=100)
        for _ in range(10):
            limiter.take("192.0.2.1")
        for i in range(1000):                  # try to push 192.0.2.1 out of the table
            limiter.take(f"10.0.{i >> 8}.{i & 255}")
        self.assertGreater(limiter.take("192.0.2.1")[0], 0)

    def test_idle_sources_are_forgotten(self):
        limiter = PairingLimiter(self.clock, limit=10, period=60, max_sources=100)
        for i in range(100):
            limiter.take(f"10.0.0.{i}")
        self.clock.advance(30)
        limiter.take("10.0.1.1")
        self.assertEqual(len(limiter), 100)    # full, none idle long enough: it shared the overflow
        self.clock.advance(30)
        self.assertEqual(limiter.take("10.0.1.2"), (0.0, False))
        self.assertEqual(len(limiter), 1)      # the idle hundred are gone, the new one kept

    def test_the_addresses_of_one_ipv6_64_share_a_limit(self):
        limiter = PairingLimiter(self.clock, limit=10, period=60)
        for i in range(10):
            self.assertEqual(limiter.take(f"2001:db8:1:2::{i + 1:x}"), (0.0, False))
        self.assertGreater(limiter.take("2001:db8:1:2:ffff::1")[0], 0)
        self.assertEqual(limiter.take("2001:db8:1:3::1"), (0.0, False))
        self.assertEqual(source_key("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::/64")
        self.assertEqual(source_key("::ffff:192.0.2.7"), "192.0.2.7")
        self.assertEqual(source_key("fe80::1%eth0"), "fe80::/64")
        self.assertEqual(source_key("/run/socket"), "/run/socket")

    def test_a_clock_stepping_back_refills_nothing(self):
        limiter = PairingLimiter(self.clock, limit=2, period=60)
        limiter.take("192.0.2.1")
        limiter.take("192.0.2.1")
        self.clock.advance(-3600)
        self.assertGreater(limiter.take("192.0.2.1")[0], 0)


class SignedRequests(DeviceApiTestCase):
    @defer.inlineCallbacks
    def test_the_device_endpoint_answers_a_signed_request_and_touches_the_device(self):
        phone = yield self.paired_phone()
        self.clock.advance(5)
        status, body, _ = yield self.signed_get(phone, "/v1/device")
        self.assertEqual((status, body), (200, {"device_id": phone.device_id, "user": "alice",
                                                "name": "alice's phone"}))
        self.assertEqual(self.sync.get_device(phone.device_id).last_seen, NOW + 5)
        # to the minute: the next calls within it write nothing
        self.clock.advance(30)
        yield self.signed_get(phone, "/v1/device")
        self.assertEqual(self.sync.get_device(phone.device_id).last_seen, NOW + 5)
        self.clock.advance(30)
        yield self.signed_get(phone, "/v1/device")
        self.assertEqual(self.sync.get_device(phone.device_id).last_seen, NOW + 65)

    @defer.inlineCallbacks
    def test_an_unsigned_request_is_refused(self):
        phone = yield self.paired_phone()
        status, body, _ = yield self.request("GET", "/v1/pending")
        self.assertEqual((status, body), (401, UNSIGNED))
        headers = phone.request_headers("GET", "/v1/pending", self.now())
        for missing in headers:
            partial = {k: v for k, v in headers.items() if k != missing}
            status, body, _ = yield self.request("GET", "/v1/pending", headers=partial)
            self.assertEqual((status, body), (401, UNSIGNED), missing)

    @defer.inlineCallbacks
    def test_a_forged_signature_is_refused(self):
        phone = yield self.paired_phone()
        forger = Phone()
        forger.device_id = phone.device_id
        status, body, _ = yield self.signed_get(forger, "/v1/device")
        self.assertEqual((status, body), (401, BAD_SIGNATURE))
        # a good signature over another path does not carry over
        headers = phone.request_headers("GET", "/v1/device", self.now())
        status, body, _ = yield self.request("GET", "/v1/pending", headers=headers)
        self.assertEqual((status, body), (401, BAD_SIGNATURE))
        self.assertIsNone(self.sync.get_device(phone.device_id).last_seen)

    @defer.inlineCallbacks
    def test_a_time_off_by_more_than_a_minute_is_refused(self):
        phone = yield self.paired_phone()
        for off in (-61, 61):
            status, body, _ = yield self.signed_get(phone, "/v1/device", self.now() + off)
            self.assertEqual((status, body), (401, CLOCK_OFF))
        status, _, _ = yield self.signed_get(phone, "/v1/device", self.now() - 60)
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_a_non_integer_time_is_malformed(self):
        phone = yield self.paired_phone()
        headers = phone.request_headers("GET", "/v1/device", self.now())
        headers["X-Time"] = "soon"
        status, body, _ = yield self.request("GET", "/v1/device", headers=headers)
        self.assertEqual(status, 400)
        self.assertIn("X-Time", body["error"])

    @defer.inlineCallbacks
    def test_a_removed_device_is_not_paired_any_more(self):
        phone = yield self.paired_phone()
        self.sync.remove_device("alice", phone.device_id)
        status, body, _ = yield self.signed_get(phone, "/v1/pending")
        self.assertEqual((status, body), (401, NOT_PAIRED))
        push = yield self.start_push()
        status, body, _ = yield self.answer(phone, push.id, "approve")
        self.assertEqual((status, body), (401, NOT_PAIRED))

    @defer.inlineCallbacks
    def test_a_reset_user_s_device_is_not_paired_any_more(self):
        phone = yield self.paired_phone()
        self.sync.reset_user("alice")
        status, body, _ = yield self.signed_get(phone, "/v1/device")
        self.assertEqual((status, body), (401, NOT_PAIRED))


class PendingEndpoint(DeviceApiTestCase):
    @defer.inlineCallbacks
    def test_pending_lists_the_user_s_pushes_oldest_first_without_the_number(self):
        phone = yield self.paired_phone()
        first = yield self.start_push(number_matching=True, station="198.51.100.7")
        self.clock.advance(1)
        second = yield self.start_push(number_matching=False, station=None)
        yield self.start_push(user="bob")
        status, body, _ = yield self.signed_get(phone, "/v1/pending")
        self.assertEqual(status, 200)
        self.assertEqual(body, {"pending": [
            {"id": first.id, "user": "alice", "client": "vpn", "user_ip": "198.51.100.7",
             "created": NOW, "expires": NOW + 50, "needs_number": True},
            {"id": second.id, "user": "alice", "client": "vpn", "user_ip": None,
             "created": NOW + 1, "expires": NOW + 51, "needs_number": False},
        ]})
        self.assertIsNotNone(first.number)

    @defer.inlineCallbacks
    def test_without_wait_an_empty_list_comes_at_once(self):
        phone = yield self.paired_phone()
        status, body, _ = yield self.signed_get(phone, "/v1/pending")
        self.assertEqual((status, body), (200, {"pending": []}))
        status, body, _ = yield self.signed_get(phone, "/v1/pending?wait=0")
        self.assertEqual((status, body), (200, {"pending": []}))

    @defer.inlineCallbacks
    def test_a_push_started_during_a_long_poll_wakes_it_at_once(self):
        phone = yield self.paired_phone()
        polled = self.next_poll()
        answer = self.signed_get(phone, "/v1/pending?wait=30")
        yield polled
        self.assertFalse(answer.called)
        push = yield self.start_push(number_matching=True)
        # the hub's clock never moved: only the push can have ended the wait
        status, body, _ = yield answer
        self.assertEqual(status, 200)
        self.assertEqual([p["id"] for p in body["pending"]], [push.id])
        self.assertTrue(body["pending"][0]["needs_number"])
        self.assertNotIn("number", body["pending"][0])

    @defer.inlineCallbacks
    def test_a_long_poll_ends_empty_after_its_wait_capped_at_55_seconds(self):
        phone = yield self.paired_phone()
        polled = self.next_poll()
        answer = self.signed_get(phone, "/v1/pending?wait=600")
        yield polled
        self.clock.advance(54)
        self.assertFalse(answer.called)
        self.clock.advance(1)
        status, body, _ = yield answer
        self.assertEqual((status, body), (200, {"pending": []}))

    @defer.inlineCallbacks
    def test_a_bad_wait_is_malformed(self):
        phone = yield self.paired_phone()
        for wait in ("soon", "nan"):
            status, body, _ = yield self.signed_get(phone, f"/v1/pending?wait={wait}")
            self.assertEqual(status, 400, wait)
            self.assertIn("wait", body["error"])

    @defer.inlineCallbacks
    def test_a_client_leaving_during_a_long_poll_ends_it_quietly(self):
        phone = yield self.paired_phone()
        polled = self.next_poll()
        answer = self.signed_get(phone, "/v1/pending?wait=30")
        answer.addErrback(lambda failure: None)     # the client's own cancellation
        yield polled
        answer.cancel()
        yield until(lambda: any(e["status"] == api.CLIENT_GONE for e in self.api_lines()))
        self.assertEqual(self.hub._devices, {})      # the hub forgot the waiting poll
        yield self.start_push()                      # nobody to wake, nothing raises
        self.clock.advance(60)
        self.assertEqual([e for e in self.logs if e["log_level"] == "error"], [])
        status, _, _ = yield self.signed_get(phone, "/v1/device")   # the server still serves
        self.assertEqual(status, 200)


class Answers(DeviceApiTestCase):
    @defer.inlineCallbacks
    def test_approve_then_a_replay_is_refused(self):
        phone = yield self.paired_phone()
        push = yield self.start_push()
        when = self.now()
        status, body, _ = yield self.answer(phone, push.id, "approve", when=when)
        self.assertEqual((status, body), (200, {"status": "approved"}))
        stored = self.sync.get_push(push.id)
        self.assertEqual((stored.status, stored.device, stored.answered),
                         ("approved", phone.device_id, NOW))
        status, body, _ = yield self.answer(phone, push.id, "approve", when=when)
        self.assertEqual((status, body), (409, ANSWERED))
        status, body, _ = yield self.answer(phone, push.id, "deny")
        self.assertEqual((status, body), (409, ANSWERED))

    @defer.inlineCallbacks
    def test_deny(self):
        phone = yield self.paired_phone()
        push = yield self.start_push(number_matching=True)
        status, body, _ = yield self.answer(phone, push.id, "deny")
        self.assertEqual((status, body), (200, {"status": "denied"}))
        self.assertEqual(self.sync.get_push(push.id).status, "denied")
        self.assertFalse(self.sync.get_user("alice").disabled)

    @defer.inlineCallbacks
    def test_fraud_denies_disables_the_user_and_reports_it(self):
        phone = yield self.paired_phone()
        push = yield self.start_push()
        status, body, _ = yield self.answer(phone, push.id, "fraud")
        self.assertEqual((status, body), (200, {"status": "fraud"}))
        self.assertEqual(self.sync.get_push(push.id).status, "fraud")
        self.assertTrue(self.sync.get_user("alice").disabled)
        self.assertEqual([(p.id, d.id) for p, d in self.frauds], [(push.id, phone.device_id)])

    @defer.inlineCallbacks
    def test_the_right_number_approves(self):
        phone = yield self.paired_phone()
        push = yield self.start_push(number_matching=True)
        status, body, _ = yield self.answer(phone, push.id, "approve", push.number)
        self.assertEqual((status, body), (200, {"status": "approved"}))

    @defer.inlineCallbacks
    def test_a_missing_number_is_refused_and_the_push_stays_pending(self):
        phone = yield self.paired_phone()
        push = yield self.start_push(number_matching=True)
        status, body, _ = yield self.answer(phone, push.id, "approve", None)
        self.assertEqual((status, body), (422, NEEDS_NUMBER))
        self.assertEqual(self.sync.get_push(push.id).status, "pending")
        status, body, _ = yield self.answer(phone, push.id, "approve", push.number)
        self.assertEqual((status, body), (200, {"status": "approved"}))

    @defer.inlineCallbacks
    def test_a_wrong_number_ends_the_push(self):
        phone = yield self.paired_phone()
        push = yield self.start_push(number_matching=True)
        wrong = 10 if push.number != 10 else 11
        status, body, _ = yield self.answer(phone, push.id, "approve", wrong)
        self.assertEqual((status, body), (422, WRONG_NUMBER))
        self.assertEqual(self.sync.get_push(push.id).status, "wrong_number")
        status, body, _ = yield self.answer(phone, push.id, "approve", push.number)
        self.assertEqual((status, body), (409, ANSWERED))

    @defer.inlineCallbacks
    def test_an_answer_after_expiry_is_too_late(self):
        phone = yield self.paired_phone()
        push = yield self.start_push()
        self.clock.advance(50)
        status, body, _ = yield self.answer(phone, push.id, "approve")
        self.assertEqual((status, body), (410, TOO_LATE))
        self.assertEqual(self.sync.get_push(push.id).status, "pending")

    @defer.inlineCallbacks
    def test_another_user_s_push_or_an_unknown_one_is_not_found(self):
        phone = yield self.paired_phone()
        bobs = yield self.start_push(user="bob")
        for push_id in (bobs.id, "0" * 32):
            status, body, _ = yield self.answer(phone, push_id, "approve")
            self.assertEqual((status, body), (404, NOT_FOUND))
        self.assertEqual(self.sync.get_push(bobs.id).status, "pending")

    @defer.inlineCallbacks
    def test_an_unsigned_answer_is_refused(self):
        phone = yield self.paired_phone()
        push = yield self.start_push()
        signed = phone.answer(push.id, "approve", None, self.now())
        unsigned = {k: v for k, v in signed.items() if k != "signature"}
        status, body, _ = yield self.request("POST", f"/v1/approvals/{push.id}", unsigned,
                                             headers={"X-Device-Id": phone.device_id})
        self.assertEqual((status, body), (401, UNSIGNED))
        status, body, _ = yield self.request("POST", f"/v1/approvals/{push.id}", signed)
        self.assertEqual((status, body), (401, UNSIGNED))
        self.assertEqual(self.sync.get_push(push.id).status, "pending")

    @defer.inlineCallbacks
    def test_a_forged_or_altered_answer_is_refused(self):
        phone = yield self.paired_phone()
        push = yield self.start_push()
        forger = Phone()
        forger.device_id = phone.device_id
        status, body, _ = yield self.answer(forger, push.id, "approve")
        self.assertEqual((status, body), (401, BAD_SIGNATURE))
        # the device's signature over "deny" does not approve
        altered = phone.answer(push.id, "deny", None, self.now())
        altered["decision"] = "approve"
        status, body, _ = yield self.request("POST", f"/v1/approvals/{push.id}", altered,
                                             headers={"X-Device-Id": phone.device_id})
        self.assertEqual((status, body), (401, BAD_SIGNATURE))
        self.assertEqual(self.sync.get_push(push.id).status, "pending")

    @defer.inlineCallbacks
    def test_an_answer_with_a_skewed_time_is_refused(self):
        phone = yield self.paired_phone()
        push = yield self.start_push()
        status, body, _ = yield self.answer(phone, push.id, "approve", when=self.now() - 61)
        self.assertEqual((status, body), (401, CLOCK_OFF))
        self.assertEqual(self.sync.get_push(push.id).status, "pending")

    @defer.inlineCallbacks
    def test_malformed_answers_are_refused(self):
        phone = yield self.paired_phone()
        push = yield self.start_push()
        path = f"/v1/approvals/{push.id}"
        headers = {"X-Device-Id": phone.device_id}
        good = phone.answer(push.id, "approve", None, self.now())
        for changes, word in (({"decision": "maybe"}, "decision"), ({"number": "12"}, "number"),
                              ({"number": 12.5}, "number"), ({"number": True}, "number"),
                              ({"time": "now"}, "time"), ({"time": None}, "time")):
            status, body, _ = yield self.request("POST", path, {**good, **changes}, headers=headers)
            self.assertEqual(status, 400, changes)
            self.assertIn(word, body["error"])
        for raw in (b"{not json", b"[1, 2]", b"\xff\xfe", b"[" * 10000):
            status, body, _ = yield self.request("POST", path, raw, headers=headers)
            self.assertEqual(status, 400, raw[:10])
            self.assertIn("JSON", body["error"])
        self.assertEqual(self.sync.get_push(push.id).status, "pending")


class Http(DeviceApiTestCase):
    @defer.inlineCallbacks
    def test_an_oversized_body_is_refused(self):
        phone = yield self.paired_phone()
        big = {"token": "x", "public_key": "A" * (api.MAX_BODY + 1)}
        status, body, _ = yield self.request("POST", "/v1/pair", big)
        self.assertEqual(status, 413)
        self.assertIn("larger", body["error"])
        push = yield self.start_push()
        answer = {**phone.answer(push.id, "approve", None, self.now()), "pad": "x" * 20000}
        status, body, _ = yield self.request("POST", f"/v1/approvals/{push.id}", answer,
                                             headers={"X-Device-Id": phone.device_id})
        self.assertEqual(status, 413)
        self.assertEqual(self.sync.get_push(push.id).status, "pending")

    @defer.inlineCallbacks
    def test_an_oversized_chunked_body_is_refused(self):
        producer = FileBodyProducer(BytesIO(b'{"token": "' + b"x" * 40000 + b'"}'))
        producer.length = UNKNOWN_LENGTH          # sent chunked, without Content-Length
        response = yield self.agent.request(b"POST", (self.base + "/v1/pair").encode(),
                                            Headers({}), producer)
        body = yield readBody(response)
        self.assertEqual(response.code, 413)
        self.assertIn("larger", json.loads(body)["error"])

    @defer.inlineCallbacks
    def test_unknown_paths_and_methods_answer_json(self):
        status, body, _ = yield self.request("GET", "/v1/nothing")
        self.assertEqual(status, 404)
        self.assertEqual(list(body), ["error"])
        status, body, _ = yield self.request("GET", "/pair?token=x&fp=y")
        self.assertEqual(status, 404)
        status, body, headers = yield self.request("GET", "/v1/pair")
        self.assertEqual(status, 405)
        self.assertEqual(list(body), ["error"])
        self.assertEqual(headers.getRawHeaders(b"allow"), [b"POST"])
        status, body, _ = yield self.request("DELETE", "/v1/approvals/abc")
        self.assertEqual(status, 405)
        status, body, _ = yield self.request("POST", "/v1/approvals/")
        self.assertEqual(status, 404)

    @defer.inlineCallbacks
    def test_the_openapi_document_is_served(self):
        status, body, headers = yield self.request("GET", "/v1/openapi.yaml")
        self.assertEqual(status, 200)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/yaml"])
        self.assertEqual(body, (REPO / "docs" / "device-api.yaml").read_bytes())

    @defer.inlineCallbacks
    def test_an_unexpected_error_is_a_500_and_one_log_line(self):
        phone = yield self.paired_phone()

        def broken(device_id):
            raise RuntimeError("the database melted at /secret/path")

        self.store.get_device = broken
        before = len(self.logs)
        status, body, _ = yield self.signed_get(phone, "/v1/device")
        self.assertEqual((status, body), (500, {"error": "internal error"}))
        lines = self.logs[before:]
        self.assertEqual(len(lines), 1)
        self.assertEqual((lines[0]["event"], lines[0]["log_level"], lines[0]["status"]),
                         ("push.api", "error", 500))
        self.assertIn("exc_info", lines[0])

    @defer.inlineCallbacks
    def test_log_lines_name_the_device_and_status_but_no_secret(self):
        phone, token = Phone(), self.pairing()
        status, paired, _ = yield self.request("POST", "/v1/pair", {
            "token": token, "public_key": phone.public_key})
        phone.device_id = paired["device_id"]
        push = yield self.start_push()
        answer = phone.answer(push.id, "approve", None, self.now())
        yield self.request("POST", f"/v1/approvals/{push.id}", answer,
                           headers={"X-Device-Id": phone.device_id})
        headers = phone.request_headers("GET", "/v1/device", self.now())
        yield self.request("GET", "/v1/device", headers=headers)
        lines = self.api_lines()
        self.assertEqual([(e["method"], e["path"], e["status"], e["device"]) for e in lines], [
            ("POST", "/v1/pair", 201, phone.device_id),
            ("POST", f"/v1/approvals/{push.id}", 200, phone.device_id),
            ("GET", "/v1/device", 200, phone.device_id)])
        text = repr(self.logs)
        for secret in (token, crypto.token_digest(token), phone.public_key, answer["signature"],
                       headers["X-Signature"]):
            self.assertNotIn(secret, text)


class Tls(unittest.TestCase):
    def setUp(self):
        self.dir = scratch_dir(self)
        self.cert, self.key = str(self.dir / "push.crt"), str(self.dir / "push.key")

    def config(self, **changes) -> PushConfig:
        return PushConfig(listen=ListenAddress("127.0.0.1", 0), tls_cert=self.cert,
                          tls_key=self.key, **changes)

    def test_the_certificate_is_made_for_the_public_host_and_loopback(self):
        port = listen_device_api(reactor, self.config(public_url="https://mfa.example.org:8443/"),
                                 DeviceApi(None, None, time.time, "mfa1"))
        self.addCleanup(port.stopListening)
        cert = x509.load_pem_x509_certificate(Path(self.cert).read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(names.get_values_for_type(x509.DNSName), ["mfa.example.org", "localhost"])
        self.assertEqual([str(a) for a in names.get_values_for_type(x509.IPAddress)], ["127.0.0.1"])

    def test_an_unreadable_key_names_its_file(self):
        crypto.ensure_certificate(self.cert, self.key, ("localhost",))
        Path(self.key).unlink()
        with self.assertRaises(DeviceApiTlsError) as raised:
            listen_device_api(reactor, self.config(), DeviceApi(None, None, time.time, "mfa1"))
        self.assertIn(self.key, str(raised.exception))
        self.assertIsInstance(raised.exception, OSError)     # what `serve` reports and exits on

    def test_a_garbled_certificate_names_its_file(self):
        crypto.ensure_certificate(self.cert, self.key, ("localhost",))
        Path(self.cert).write_text("not a certificate\n")
        with self.assertRaises(DeviceApiTlsError) as raised:
            load_tls_options(self.cert, self.key)
        self.assertIn(self.cert, str(raised.exception))

    def test_a_key_of_another_certificate_is_refused(self):
        crypto.ensure_certificate(self.cert, self.key, ("localhost",))
        other_cert, other_key = str(self.dir / "b.crt"), str(self.dir / "b.key")
        crypto.ensure_certificate(other_cert, other_key, ("localhost",))
        with self.assertRaises(DeviceApiTlsError) as raised:
            load_tls_options(self.cert, other_key)
        self.assertIn("does not belong", str(raised.exception))

    def test_an_unwritable_directory_is_a_clear_error(self):
        missing = self.dir / "nowhere"
        config = PushConfig(listen=ListenAddress("127.0.0.1", 0), tls_cert=str(missing / "c.crt"),
                            tls_key=str(missing / "c.key"))
        with self.assertRaises(DeviceApiTlsError) as raised:
            listen_device_api(reactor, config, DeviceApi(None, None, time.time, "mfa1"))
        self.assertIn(str(missing / "c.crt"), str(raised.exception))


# --- the OpenAPI document --------------------------------------------------------------------

def test_the_packaged_openapi_document_is_the_repository_s():
    docs = (REPO / "docs" / "device-api.yaml").read_bytes()
    packaged = (REPO / "radius_mfa" / "push" / "device-api.yaml").read_bytes()
    assert packaged == docs
    assert api.OPENAPI_FILE.read_bytes() == docs


def test_the_openapi_document_covers_the_contract():
    document = yaml.safe_load((REPO / "docs" / "device-api.yaml").read_text())
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) == CONTRACT_PATHS
    answers = document["paths"]["/v1/approvals/{push_id}"]["post"]["responses"]
    assert set(answers) >= {"200", "400", "401", "404", "409", "410", "422"}
    assert set(document["paths"]["/v1/pair"]["post"]["responses"]) >= {"201", "400", "403", "429"}
    text = (REPO / "docs" / "device-api.yaml").read_text()
    for sentence in (UNSIGNED, NOT_PAIRED, BAD_SIGNATURE, CLOCK_OFF, PAIRING_INVALID,
                     PAIRING_LIMITED, NOT_FOUND,
                     ANSWERED, TOO_LATE, NEEDS_NUMBER, WRONG_NUMBER):
        assert sentence["error"] in text, sentence
