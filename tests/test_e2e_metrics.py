"""End to end: `radius-mfa serve` with `metrics.listen`, driven by radclient, scraped over HTTP.

The counters are checked against the audit trail the same server wrote: every
audited request is one increment of ``radius_mfa_requests_total`` with the
record's client, result, factor and reason.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e import Server, needs_radclient, radclient
from peers.process import free_tcp_port

pytestmark = needs_radclient
PASSWORD = "correct horse"


@pytest.fixture
def server(tmp_path):
    metrics_port = free_tcp_port()
    srv = Server(tmp_path, extra=f'metrics:\n  listen: "127.0.0.1:{metrics_port}"')
    srv.metrics_url = f"http://127.0.0.1:{metrics_port}"
    srv.start()
    yield srv
    srv.stop()


def fetch(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def scrape(server: Server) -> dict[tuple[str, tuple], float]:
    status, content_type, text = fetch(server.metrics_url + "/metrics")
    assert status == 200 and content_type.startswith("text/plain"), text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def auth(server: Server, name: str, password: str, *, ma: bool = True):
    attributes = [("User-Name", name), ("User-Password", password)]
    if ma:
        attributes.append(("Message-Authenticator", "0x00"))
    return radclient(server.port, attributes)


def test_requests_drops_and_latency_are_scraped_and_health_is_ok(server):
    user = server.enrol("alice", PASSWORD)
    assert auth(server, "alice", f"{PASSWORD},{user.code()}").code == "Access-Accept"
    assert auth(server, "alice", "wrong password,123456").code == "Access-Reject"
    assert auth(server, "mallory", f"{PASSWORD},123456").code == "Access-Reject"
    assert auth(server, "alice", PASSWORD, ma=False).code is None          # dropped
    records = server.wait_audit(3)
    assert len(records) == 3

    values = scrape(server)
    expected = Counter((("client", r["client"]), ("factor", r["factor"] or ""),
                        ("reason", r["reason"] or ""), ("result", r["result"])) for r in records)
    assert {result for (_, _, _, (_, result)) in expected} == {"accept", "reject"}
    for labels, count in expected.items():
        assert values[("radius_mfa_requests_total", labels)] == count, (labels, values)
    requests = {k: v for k, v in values.items() if k[0] == "radius_mfa_requests_total"}
    assert sum(requests.values()) == 3

    client = (("client", "local"),)
    assert values[("radius_mfa_request_duration_seconds_count", client)] == 3
    assert 0 < values[("radius_mfa_request_duration_seconds_sum", client)] < 10
    assert values[("radius_mfa_dropped_packets_total",
                   (("reason", "missing_message_authenticator"),))] == 1
    assert values[("radius_mfa_store_up", ())] == 1

    status, content_type, text = fetch(server.metrics_url + "/health")
    assert (status, content_type) == (200, "application/json")
    health = json.loads(text)
    assert health["status"] == "ok" and health["server"] == "mfa-test" and health["store"] == "ok"
    assert "sqlite" not in text and "radius-mfa.db" not in text


def test_pending_challenges_are_counted_from_the_store(server):
    server.enrol("bob", PASSWORD)
    assert scrape(server)[("radius_mfa_pending_challenges", ())] == 0
    assert auth(server, "bob", PASSWORD).code == "Access-Challenge"
    deadline = time.monotonic() + 12          # refreshed every 5 s
    while scrape(server)[("radius_mfa_pending_challenges", ())] != 1:
        assert time.monotonic() < deadline, "the pending challenge never showed"
        time.sleep(0.2)


def test_the_http_port_closes_with_the_server(server):
    assert fetch(server.metrics_url + "/health")[0] == 200
    assert server.stop() == 0, server.log()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.metrics_url + "/health", timeout=2)


def test_thread_hops_and_store_transactions_are_counted_per_sign_in(server):
    """The work behind a request, as the benchmarks divide it: an inline
    sign-in is one password hash and, in the store, the first round (user,
    tokens, attempt) and the accepted code (its step and the attempt), plus
    its share of the audit rows written in batches."""
    user = server.enrol("alice", PASSWORD)
    time.sleep(0.5)                       # the enrolment's own work settles
    before = scrape(server)
    assert auth(server, "alice", f"{PASSWORD},{user.code()}").code == "Access-Accept"
    time.sleep(0.5)                       # the audit batch follows within 0.1 s
    after = scrape(server)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("radius_mfa_thread_calls_total", pool="hash") == 1
    # begin_sign_in, advance_totp, the audit batch (the 5 s housekeeping may add one)
    assert delta("radius_mfa_thread_calls_total", pool="store") in (3, 4)
    assert delta("radius_mfa_store_transactions_total", kind="write") >= 3
    assert delta("radius_mfa_store_transactions_total", kind="read") >= 2
