"""Metrics and health: the families after real observations, both process models, both HTTP servers.

The multi-process tests write their values from real child processes (each
with ``PROMETHEUS_MULTIPROC_DIR`` set before prometheus_client is imported,
as a worker has it) and aggregate them here. The twisted.web endpoints are
served on the real reactor (a trial TestCase) and fetched with Twisted's
HTTP client; the supervisor's threaded server is fetched with urllib.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import structlog
from prometheus_client.multiprocess import mark_process_dead
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import Agent, readBody

from helpers import FakeClock
from radius_mfa.config import (ClientConfig, LdapPrimaryConfig, ListenAddress, RadiusPrimaryConfig,
                               RadiusServerConfig)
from radius_mfa.engine import Decision
from radius_mfa.errors import NotFoundError, StoreError
from radius_mfa.metrics import (Metrics, ServiceHealth, health_response, listen_http,
                                multiprocess_active, multiprocess_store_up, parse_address, render,
                                serve_threaded, stop_threaded, workers_health)
from radius_mfa.radius.droplog import DropLogger
from radius_mfa.server import Finished
from radius_mfa.store.asyncstore import AsyncStore, immediate_runner
from radius_mfa.verdicts import Reason, Verdict

REPO = Path(__file__).resolve().parent.parent
VPN = ClientConfig(name="vpn", network=ipaddress.ip_network("10.0.0.0/24"), secret=b"s3cret")
WIFI = ClientConfig(name="wifi", network=ipaddress.ip_network("10.0.1.0/24"), secret=b"s3cret")


def finished(verdict: Verdict, *, client: ClientConfig = VPN, factor: str | None = None,
             reason: Reason | None = None, provider: str | None = None,
             duration_ms: float = 12.0) -> Finished:
    decision = Decision(verdict, "alice", primary="local", reason=reason, factor=factor,
                        provider=provider)
    return Finished(decision=decision, client=client, client_ip="10.0.0.1", server_ip="10.0.0.254",
                    calling_station_id=None, request_id="r1", duration_ms=duration_ms)


def result_of(d: defer.Deferred):
    """The result of a Deferred that has fired (an immediate runner's); raises its failure."""
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


# --- the families -------------------------------------------------------------------

def test_this_process_is_in_single_process_mode():
    assert not multiprocess_active()
    assert Metrics().registry is not None


def test_requests_are_counted_by_client_result_factor_and_reason():
    metrics = Metrics()
    metrics.observe(finished(Verdict.ACCEPT, factor="totp"))
    metrics.observe(finished(Verdict.ACCEPT, factor="totp"))
    metrics.observe(finished(Verdict.REJECT, factor="totp", reason=Reason.BAD_CODE))
    metrics.observe(finished(Verdict.REJECT, reason=Reason.BAD_PASSWORD, client=WIFI))
    metrics.observe(finished(Verdict.FAIL, reason=Reason.UPSTREAM_DOWN))

    name = "radius_mfa_requests_total"
    assert sample(metrics, name, client="vpn", result="accept", factor="totp", reason="") == 2
    assert sample(metrics, name, client="vpn", result="reject", factor="totp", reason="bad_code") == 1
    assert sample(metrics, name, client="wifi", result="reject", factor="", reason="bad_password") == 1
    assert sample(metrics, name, client="vpn", result="fail", factor="", reason="upstream_down") == 1
    assert sample(metrics, name, client="wifi", result="accept", factor="totp", reason="") is None


def test_duration_histogram_in_seconds_with_buckets_up_to_a_minute():
    metrics = Metrics()
    metrics.observe(finished(Verdict.ACCEPT, factor="totp", duration_ms=3.0))
    metrics.observe(finished(Verdict.ACCEPT, factor="voice", duration_ms=42_000.0))
    name = "radius_mfa_request_duration_seconds"
    assert sample(metrics, name + "_count", client="vpn") == 2
    assert sample(metrics, name + "_sum", client="vpn") == pytest.approx(42.003)
    assert sample(metrics, name + "_bucket", client="vpn", le="0.001") == 0
    assert sample(metrics, name + "_bucket", client="vpn", le="0.005") == 1
    assert sample(metrics, name + "_bucket", client="vpn", le="30.0") == 1
    assert sample(metrics, name + "_bucket", client="vpn", le="60.0") == 2
    assert sample(metrics, name + "_count", client="wifi") is None


def test_codes_sent_count_by_channel_and_provider_but_not_their_use():
    metrics = Metrics()
    metrics.observe(finished(Verdict.CHALLENGE, factor="sms", provider="gateway-a"))
    metrics.observe(finished(Verdict.REJECT, factor="sms", reason=Reason.CODE_SENT, provider="gateway-b"))
    metrics.observe(finished(Verdict.ACCEPT, factor="sms", provider="gateway-a"))    # the code typed in
    metrics.observe(finished(Verdict.REJECT, factor="voice", reason=Reason.DELIVERY_FAILED))
    metrics.observe(finished(Verdict.CHALLENGE, factor="totp"))                       # a menu, nothing sent

    assert sample(metrics, "radius_mfa_codes_sent_total", channel="sms", provider="gateway-a") == 1
    assert sample(metrics, "radius_mfa_codes_sent_total", channel="sms", provider="gateway-b") == 1
    assert sample(metrics, "radius_mfa_code_delivery_failures_total", channel="voice") == 1
    assert sample(metrics, "radius_mfa_code_delivery_failures_total", channel="sms") is None


def test_each_metrics_has_its_own_registry():
    first, second = Metrics(), Metrics()
    first.observe(finished(Verdict.ACCEPT, factor="totp"))
    labels = dict(client="vpn", result="accept", factor="totp", reason="")
    assert sample(first, "radius_mfa_requests_total", **labels) == 1
    assert sample(second, "radius_mfa_requests_total", **labels) is None


def test_every_drop_is_counted_also_those_the_log_suppresses():
    metrics = Metrics()
    lines = []

    class Log:
        def warning(self, event, **kw):
            lines.append(kw)

    droplog = DropLogger(Log(), Clock(), observer=metrics.drop)
    for _ in range(3):
        droplog.drop("malformed", "192.0.2.7")
    droplog.drop("unknown_client", "192.0.2.8")
    assert len(lines) == 2
    assert sample(metrics, "radius_mfa_dropped_packets_total", reason="malformed") == 3
    assert sample(metrics, "radius_mfa_dropped_packets_total", reason="unknown_client") == 1


class FailingStore:
    """A store whose database is gone, and which knows no user."""

    def take_challenge(self, digest):
        raise StoreError("database is locked")

    def unlock(self, name):
        raise NotFoundError(f"no user {name}")

    def ping(self):
        return None


def test_store_errors_are_counted_by_operation_and_still_reach_the_caller():
    metrics = Metrics()
    store = AsyncStore(FailingStore(), immediate_runner, on_error=metrics.store_error)
    for _ in range(2):
        with pytest.raises(StoreError):
            result_of(store.take_challenge("abc"))
    with pytest.raises(NotFoundError):          # the caller's mistake, not a store error
        result_of(store.unlock("nobody"))
    result_of(store.ping())
    assert sample(metrics, "radius_mfa_store_errors_total", operation="take_challenge") == 2
    assert sample(metrics, "radius_mfa_store_errors_total", operation="unlock") is None
    assert sample(metrics, "radius_mfa_store_errors_total", operation="ping") is None


def test_a_failing_error_hook_changes_nothing_for_the_caller():
    def broken(operation):
        raise RuntimeError("hook bug")

    store = AsyncStore(FailingStore(), immediate_runner, on_error=broken)
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(StoreError):
            result_of(store.take_challenge("abc"))
    assert [entry["event"] for entry in logs] == ["store.on_error_failed"]


def test_upstreams_follow_the_configured_servers():
    metrics = Metrics()
    metrics.set_upstreams("radius", {"10.0.0.5:1812": True, "10.0.0.6:1812": False})
    assert sample(metrics, "radius_mfa_upstream_up", backend="radius", server="10.0.0.5:1812") == 1
    assert sample(metrics, "radius_mfa_upstream_up", backend="radius", server="10.0.0.6:1812") == 0
    metrics.set_upstreams("radius", {"10.0.0.6:1812": True})            # after a reload
    assert sample(metrics, "radius_mfa_upstream_up", backend="radius", server="10.0.0.5:1812") is None
    assert sample(metrics, "radius_mfa_upstream_up", backend="radius", server="10.0.0.6:1812") == 1


def test_store_gauges():
    metrics = Metrics()
    metrics.set_pending_challenges(7)
    metrics.set_store_up(False)
    assert sample(metrics, "radius_mfa_pending_challenges") == 7
    assert sample(metrics, "radius_mfa_store_up") == 0


def test_radius_backend_reports_each_server_up_until_marked_dead():
    from radius_mfa.primary.radius import RadiusBackend
    from radius_mfa.radius.dictionary import load_dictionary

    clock = Clock()
    config = RadiusPrimaryConfig(servers=(RadiusServerConfig("10.0.0.5", 1812, b"x"),
                                          RadiusServerConfig("2001:db8::5", 1645, b"y")), dead_time=30)
    backend = RadiusBackend(config, reactor=clock, dictionary=load_dictionary())
    assert backend.server_health() == {"10.0.0.5:1812": True, "[2001:db8::5]:1645": True}
    backend._mark_dead(backend.upstreams[1])
    assert backend.server_health() == {"10.0.0.5:1812": True, "[2001:db8::5]:1645": False}
    backend.stop()


def test_ldap_backend_reports_scheme_host_and_port_only():
    from radius_mfa.primary.ldap import LdapBackend

    clock = FakeClock()
    config = LdapPrimaryConfig(servers=("ldap://dc1.example.com", "ldaps://dc2.example.com:3269/?x"),
                               user_dn_template="uid={user},dc=example,dc=com")
    backend = LdapBackend(config, run=immediate_runner, clock=clock)
    assert backend.server_health() == {"ldap://dc1.example.com:389": True,
                                       "ldaps://dc2.example.com:3269": True}
    backend._health.mark_down(0)
    assert backend.server_health()["ldap://dc1.example.com:389"] is False
    clock.advance(3600)
    assert backend.server_health()["ldap://dc1.example.com:389"] is True


# --- rendering ------------------------------------------------------------------------

def test_render_single_process_gives_the_prometheus_text():
    metrics = Metrics()
    metrics.observe(finished(Verdict.ACCEPT, factor="totp"))
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert 'radius_mfa_requests_total{client="vpn",factor="totp",reason="",result="accept"} 1.0' in text
    assert 'radius_mfa_request_duration_seconds_count{client="vpn"} 1.0' in text
    assert "# TYPE radius_mfa_upstream_up gauge" in text


def test_render_of_a_missing_multiprocess_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no multi-process metrics directory"):
        render(None, str(tmp_path / "absent"))


WORKER = textwrap.dedent("""
    import ipaddress, json, sys
    from radius_mfa.config import ClientConfig
    from radius_mfa.engine import Decision
    from radius_mfa.metrics import Metrics, multiprocess_active
    from radius_mfa.server import Finished
    from radius_mfa.verdicts import Reason, Verdict

    pending, upstream_up, store_up = int(sys.argv[1]), sys.argv[2] == "up", sys.argv[3] == "up"
    metrics = Metrics()
    client = ClientConfig(name="vpn", network=ipaddress.ip_network("10.0.0.0/24"), secret=b"x")
    for verdict, reason in ((Verdict.ACCEPT, None), (Verdict.REJECT, Reason.BAD_CODE)):
        decision = Decision(verdict, "alice", primary="local", reason=reason, factor="totp")
        metrics.observe(Finished(decision, client, "10.0.0.1", "10.0.0.254", None, "r", 250.0))
    metrics.drop("malformed")
    metrics.set_pending_challenges(pending)
    metrics.set_upstreams("radius", {"10.0.0.5:1812": upstream_up})
    metrics.set_store_up(store_up)
    print(json.dumps({"multiprocess": multiprocess_active(), "registry": metrics.registry is None}))
""")


def run_worker(directory: Path, *args: str) -> tuple[int, dict]:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", WORKER, *args], env=env, cwd=str(directory),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return proc.pid, json.loads(out)


@pytest.fixture
def workers_dir(tmp_path) -> Path:
    """Values written by two worker processes: pending challenges 3 then 5,
    the upstream up in the first and dead in the second, the store up in both."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    first, mode = run_worker(directory, "3", "up", "up")
    assert mode == {"multiprocess": True, "registry": True}
    second, _ = run_worker(directory, "5", "down", "up")
    directory.joinpath("pids").write_text(f"{first} {second}")
    return directory


def samples(text: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_render_multiprocess_aggregates_the_workers(workers_dir):
    body, content_type = render(None, str(workers_dir))
    assert content_type.startswith("text/plain")
    values = samples(body.decode())
    accept = (("client", "vpn"), ("factor", "totp"), ("reason", ""), ("result", "accept"))
    assert values[("radius_mfa_requests_total", accept)] == 2
    assert values[("radius_mfa_request_duration_seconds_count", (("client", "vpn"),))] == 4
    assert values[("radius_mfa_request_duration_seconds_sum", (("client", "vpn"),))] == pytest.approx(1.0)
    assert values[("radius_mfa_dropped_packets_total", (("reason", "malformed"),))] == 2
    assert values[("radius_mfa_pending_challenges", ())] == 5          # the latest written
    upstream = (("backend", "radius"), ("server", "10.0.0.5:1812"))
    assert values[("radius_mfa_upstream_up", upstream)] == 0           # dead in one live worker
    assert multiprocess_store_up(str(workers_dir)) is True


def test_a_dead_workers_gauges_leave_the_aggregate_its_counters_stay(workers_dir):
    first, second = map(int, workers_dir.joinpath("pids").read_text().split())
    mark_process_dead(second, str(workers_dir))
    values = samples(render(None, str(workers_dir))[0].decode())
    upstream = (("backend", "radius"), ("server", "10.0.0.5:1812"))
    assert values[("radius_mfa_upstream_up", upstream)] == 1
    accept = (("client", "vpn"), ("factor", "totp"), ("reason", ""), ("result", "accept"))
    assert values[("radius_mfa_requests_total", accept)] == 2


def test_multiprocess_store_up_is_none_before_any_worker_reports(tmp_path):
    assert multiprocess_store_up(str(tmp_path)) is None
    assert multiprocess_store_up(str(tmp_path / "absent")) is None


# --- health ---------------------------------------------------------------------------

def test_health_is_ok_while_the_store_answers():
    clock = FakeClock()
    health = ServiceHealth(clock, server="mfa1", dead_upstreams=lambda: ["10.0.0.6:1812"])
    assert health.ping_started()
    clock.advance(4)
    health.ping_finished(True)
    status, body = health_response(health)
    assert status == 200
    assert json.loads(body) == {"status": "ok", "server": "mfa1", "workers": 1, "store": "ok",
                                "dead_upstreams": ["10.0.0.6:1812"]}


def test_health_fails_when_the_last_ping_failed_and_recovers():
    clock = FakeClock()
    health = ServiceHealth(clock, server="mfa1")
    health.ping_started()
    health.ping_finished(False)
    status, body = health_response(health)
    assert status == 503
    answer = json.loads(body)
    assert answer["status"] == "unavailable" and answer["store"] == "failing"
    assert answer["problems"] == ["store: the last ping failed"]
    health.ping_started()
    health.ping_finished(True)
    assert health_response(health)[0] == 200


def test_health_fails_when_a_ping_hangs_and_sends_no_second_one():
    clock = FakeClock()
    health = ServiceHealth(clock, server="mfa1", stale_after=15)
    assert health.ping_started()
    clock.advance(10)
    assert not health.ping_started()               # still outstanding
    assert health_response(health)[0] == 200
    clock.advance(6)
    status, body = health_response(health)
    assert status == 503
    assert json.loads(body)["problems"] == ["store: no answer for 16 s"]


def test_health_fails_as_soon_as_stopping_begins():
    health = ServiceHealth(FakeClock(), server="mfa1")
    health.mark_stopping()
    status, body = health_response(health)
    assert status == 503
    assert json.loads(body)["problems"] == ["shutting down"]


def test_a_health_check_that_raises_is_unavailable():
    def broken():
        raise RuntimeError("bug")

    with structlog.testing.capture_logs():
        status, body = health_response(broken)
    assert status == 503
    assert json.loads(body)["status"] == "unavailable"


def test_supervisor_health_needs_every_worker_and_their_store(workers_dir):
    state = {"alive": 2, "stopping": False}
    check = workers_health(server="mfa1", workers=2, alive=lambda: state["alive"],
                           stopping=lambda: state["stopping"], path=str(workers_dir))
    status, body = health_response(check)
    assert status == 200
    assert json.loads(body) == {"status": "ok", "server": "mfa1", "workers": 2,
                                "workers_running": 2, "store": "ok"}
    state["alive"] = 1
    status, body = health_response(check)
    assert status == 503 and json.loads(body)["problems"] == ["1 of 2 workers running"]
    state.update(alive=2, stopping=True)
    assert json.loads(health_response(check)[1])["problems"] == ["shutting down"]
    state["stopping"] = False
    run_worker(workers_dir, "0", "up", "down")          # a worker whose store ping failed
    status, body = health_response(check)
    assert status == 503
    assert json.loads(body)["problems"] == ["store: a worker's last ping failed"]


def test_parse_address():
    assert parse_address("127.0.0.1:9812") == ("127.0.0.1", 9812)
    assert parse_address("[::1]:9812") == ("::1", 9812)
    assert parse_address(ListenAddress("0.0.0.0", 0)) == ("0.0.0.0", 0)
    for bad in ("127.0.0.1", "[::1]", "host:port", ":9812", "127.0.0.1:70000"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_address(bad)


# --- the supervisor's threaded server -------------------------------------------------------

def fetch(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_threaded_server_aggregates_the_workers_and_answers_health(workers_dir):
    state = {"ok": True}

    def health():
        return state["ok"], {"workers": 2, **({} if state["ok"] else {"problems": ["no worker"]})}

    server, thread = serve_threaded("127.0.0.1:0", health, path=str(workers_dir))
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        status, content_type, text = fetch(base + "/metrics")
        assert status == 200 and content_type.startswith("text/plain")
        accept = (("client", "vpn"), ("factor", "totp"), ("reason", ""), ("result", "accept"))
        assert samples(text)[("radius_mfa_requests_total", accept)] == 2
        status, content_type, text = fetch(base + "/health")
        assert (status, content_type) == (200, "application/json")
        assert json.loads(text) == {"status": "ok", "workers": 2}
        state["ok"] = False
        status, _, text = fetch(base + "/health")
        assert status == 503
        assert json.loads(text) == {"status": "unavailable", "workers": 2, "problems": ["no worker"]}
        assert fetch(base + "/other")[0] == 404
    finally:
        stop_threaded(server, thread)
    assert not thread.is_alive()


def test_threaded_server_reports_a_broken_directory_as_500(tmp_path):
    with structlog.testing.capture_logs():
        server, thread = serve_threaded("127.0.0.1:0", lambda: (True, {}), path=str(tmp_path / "gone"))
        try:
            status, _, text = fetch(f"http://127.0.0.1:{server.server_address[1]}/metrics")
        finally:
            stop_threaded(server, thread)
    assert (status, text) == (500, "metrics unavailable\n")


# --- twisted.web on the reactor ----------------------------------------------------------------

class ReactorEndpoints(unittest.TestCase):
    """/metrics and /health served by ``listen_http`` on the real reactor."""

    def setUp(self):
        self.metrics = Metrics()
        self.clock = FakeClock()
        self.health = ServiceHealth(self.clock, server="mfa1")
        self.port = listen_http(reactor, "127.0.0.1:0", self.metrics, self.health)
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"

    @defer.inlineCallbacks
    def get(self, path: str):
        answer = yield Agent(reactor).request(b"GET", (self.base + path).encode())
        body = yield readBody(answer)
        content_type = answer.headers.getRawHeaders(b"content-type", [b""])[0].decode()
        return answer.code, content_type, body.decode()

    @defer.inlineCallbacks
    def test_metrics_are_served_as_prometheus_text(self):
        self.metrics.observe(finished(Verdict.REJECT, factor="totp", reason=Reason.REPLAY))
        status, content_type, text = yield self.get("/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(content_type.startswith("text/plain; version=0.0.4"))
        labels = (("client", "vpn"), ("factor", "totp"), ("reason", "replay"), ("result", "reject"))
        self.assertEqual(samples(text)[("radius_mfa_requests_total", labels)], 1)

    @defer.inlineCallbacks
    def test_health_turns_503_when_stopping(self):
        status, content_type, text = yield self.get("/health")
        self.assertEqual((status, content_type), (200, "application/json"))
        self.assertEqual(json.loads(text)["status"], "ok")
        self.health.mark_stopping()
        status, _, text = yield self.get("/health")
        self.assertEqual(status, 503)
        self.assertEqual(json.loads(text)["problems"], ["shutting down"])

    @defer.inlineCallbacks
    def test_other_paths_are_not_found(self):
        status, _, _ = yield self.get("/")
        self.assertEqual(status, 404)
