"""Push notifiers: webhooks received by a real HTTP server on loopback.

As in test_delivery.py, the async tests are trial TestCases that spin the
real reactor, and the webhook receiver is the Twisted gateway of
tests/peers/gateway.py. Timeouts are short (0.3 s) to keep the suite fast.
"""

from __future__ import annotations

import functools
import json
import time
import urllib.parse

import structlog
from twisted.internet import defer, reactor
from twisted.trial import unittest

from peers.gateway import HANG, Gateway
from radius_mfa.config import NotifierConfig, PushConfig
from radius_mfa.model import Push
from radius_mfa.push.notify import NUMBER_HINT, WebhookNotifier, notifiers_from_config, placeholder_values

TIMEOUT = 0.3
PUSH = Push(id="0f" * 16, user="alice", client="vpn", calling_station_id="192.0.2.7",
            user_ip="192.0.2.7", created=1_700_000_000.0, expires=1_700_000_050.0, number=42)


def async_test(method):
    """Let trial wait for a coroutine test method."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        return defer.Deferred.fromCoroutine(method(self, *args, **kwargs))
    return run


def hook(name: str, url: str, **options) -> NotifierConfig:
    options.setdefault("timeout", TIMEOUT)
    return NotifierConfig(name=name, url=url, **options)


# --------------------------------------------------------------------------- pure parts

def test_placeholders_carry_the_hint_never_the_number():
    values = placeholder_values(PUSH)
    assert values == {"user": "alice", "client": "vpn", "push_id": PUSH.id, "user_ip": "192.0.2.7",
                      "number_hint": NUMBER_HINT}
    assert "42" not in repr(values)
    plain = placeholder_values(Push(id="1", user="bob", client="wifi", calling_station_id=None,
                                    user_ip=None, created=0.0, expires=1.0))
    assert plain["user_ip"] == "" and plain["number_hint"] == ""


def test_notifiers_from_config_gives_one_notifier_or_none():
    assert notifiers_from_config(PushConfig(), reactor) is None
    notifier = notifiers_from_config(PushConfig(notify=(hook("a", "http://127.0.0.1:9/"),
                                                        hook("b", "http://127.0.0.1:9/"))), reactor)
    assert isinstance(notifier, WebhookNotifier) and notifier.names == ("a", "b")


# --------------------------------------------------------------------------- real webhooks

class WebhookTest(unittest.TestCase):
    timeout = 15

    def gateway(self, answer=200) -> Gateway:
        gateway = Gateway.start(reactor, answer)
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(gateway.stop()))
        return gateway

    @async_test
    async def test_webhook_receives_a_filled_json_body_and_its_headers(self):
        gateway = self.gateway()
        notifier = WebhookNotifier([hook(
            "chat", gateway.url + "/hook/{user}?push={push_id}&from={user_ip}",
            headers=(("Authorization", "Bearer hook-secret"),),
            body='{"text": "{user} signs in to {client}. {number_hint}", "id": "{push_id}"}')], reactor)
        with structlog.testing.capture_logs() as events:
            await notifier.notify(PUSH, 1)
        [got] = gateway.received
        assert got.method == "POST"
        path, _, query = got.path.partition("?")
        assert path == "/hook/alice"
        assert urllib.parse.parse_qs(query) == {"push": [PUSH.id], "from": ["192.0.2.7"]}
        assert got.headers["authorization"] == "Bearer hook-secret"
        assert got.headers["content-type"] == "application/json"
        assert json.loads(got.body) == {"text": f"alice signs in to vpn. {NUMBER_HINT}", "id": PUSH.id}
        assert [e["event"] for e in events] == ["push.notified"]
        assert events[0]["notifier"] == "chat" and events[0]["devices"] == 1

    @async_test
    async def test_values_are_escaped_for_a_json_body_and_a_form_body(self):
        gateway = self.gateway()
        tricky = Push(id="p1", user='ev"il\\', client="a&b=c", calling_station_id=None, user_ip=None,
                      created=0.0, expires=1.0)
        notifier = WebhookNotifier([
            hook("json", gateway.url + "/j", body='{"u": "{user}", "ip": "{user_ip}"}'),
            hook("form", gateway.url + "/f", body="u={user}&c={client}",
                 headers=(("Content-Type", "application/x-www-form-urlencoded"),)),
        ], reactor)
        await notifier.notify(tricky, 1)
        by_path = {r.path: r for r in gateway.received}
        assert json.loads(by_path["/j"].body) == {"u": 'ev"il\\', "ip": ""}
        assert urllib.parse.parse_qs(by_path["/f"].body.decode()) == {"u": ['ev"il\\'], "c": ["a&b=c"]}

    @async_test
    async def test_a_failing_webhook_is_logged_without_secrets_and_the_others_still_get_it(self):
        broken, hung, good = self.gateway(500), self.gateway(HANG), self.gateway()
        notifier = WebhookNotifier([
            hook("broken", broken.url + "/?token=url-secret", headers=(("X-Api-Key", "header-secret"),),
                 body="{user}"),
            hook("hung", hung.url + "/"),
            hook("good", good.url + "/", method="PUT"),
        ], reactor)
        started = time.monotonic()
        with structlog.testing.capture_logs() as events:
            await notifier.notify(PUSH, 2)            # never raises
        assert time.monotonic() - started < 1.5       # all at once, each within its timeout
        assert len(broken.received) == len(hung.received) == len(good.received) == 1
        assert good.received[0].method == "PUT"
        by_name = {e["notifier"]: e for e in events}
        assert by_name["broken"]["event"] == "push.notify_failed" and by_name["broken"]["reason"] == "HTTP 500"
        assert by_name["hung"]["event"] == "push.notify_failed"
        assert by_name["hung"]["reason"] == "timed out after 0.3 s"
        assert by_name["good"]["event"] == "push.notified"
        assert all(e["user"] == "alice" and e["push_id"] == PUSH.id for e in events)
        for secret in ("url-secret", "header-secret", "42"):
            assert secret not in repr(events)

    @async_test
    async def test_the_device_count_may_be_left_out(self):
        gateway = self.gateway()
        notifier = notifiers_from_config(PushConfig(notify=(hook("a", gateway.url + "/"),)), reactor)
        with structlog.testing.capture_logs() as events:
            await notifier.notify(PUSH)
        assert len(gateway.received) == 1
        assert events[0]["event"] == "push.notified" and events[0]["devices"] is None

    @async_test
    async def test_nobody_listening_is_logged_not_raised(self):
        closed = Gateway.start(reactor)
        url = closed.url
        await closed.stop()
        notifier = WebhookNotifier([hook("gone", url + "/")], reactor)
        with structlog.testing.capture_logs() as events:
            await notifier.notify(PUSH, 1)
        [event] = events
        assert event["event"] == "push.notify_failed" and event["notifier"] == "gone"
        assert event["reason"].startswith("no answer: ")
        assert url not in event["reason"]
