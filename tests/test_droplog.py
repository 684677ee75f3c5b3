"""Rate-limited logging of dropped packets."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from radius_mfa.radius.droplog import DropLogger, DropReason


class ListLogger:
    """Captures structlog-style calls."""

    def __init__(self):
        self.lines: list[tuple[str, dict]] = []

    def warning(self, event, **kw):
        self.lines.append((event, kw))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def log() -> ListLogger:
    return ListLogger()


@pytest.fixture
def drops(log, clock) -> DropLogger:
    return DropLogger(log, clock, interval=10.0)


def test_first_drop_is_logged_at_once(drops, log):
    assert drops.drop("unknown_client", "198.51.100.9")
    assert log.lines == [("radius.drop", {"reason": "unknown_client", "source_ip": "198.51.100.9"})]


def test_client_and_detail_are_logged_when_known(drops, log):
    drops.drop(DropReason.MALFORMED, "192.0.2.1", client="vpn", detail="attribute 2 overruns the packet")
    assert log.lines[0][1] == {"reason": "malformed", "source_ip": "192.0.2.1", "client": "vpn",
                               "detail": "attribute 2 overruns the packet"}


def test_repeats_within_the_interval_are_counted_and_reported_later(drops, log, clock):
    drops.drop("bad_message_authenticator", "192.0.2.1", client="vpn")
    for _ in range(5):
        clock.advance(1)
        assert not drops.drop("bad_message_authenticator", "192.0.2.1", client="vpn")
    assert len(log.lines) == 1
    clock.advance(5)                           # 10 s after the first line
    assert drops.drop("bad_message_authenticator", "192.0.2.1", client="vpn")
    assert log.lines[1] == ("radius.drop", {"reason": "bad_message_authenticator",
                                            "source_ip": "192.0.2.1", "client": "vpn",
                                            "suppressed": 5})
    clock.advance(10)
    drops.drop("bad_message_authenticator", "192.0.2.1", client="vpn")
    assert "suppressed" not in log.lines[2][1]


def test_limits_are_per_reason_and_source(drops, log):
    drops.drop("malformed", "192.0.2.1")
    drops.drop("malformed", "192.0.2.2")
    drops.drop("unsupported_code", "192.0.2.1")
    drops.drop("malformed", "192.0.2.1")
    assert [(kw["reason"], kw["source_ip"]) for _, kw in log.lines] == [
        ("malformed", "192.0.2.1"), ("malformed", "192.0.2.2"), ("unsupported_code", "192.0.2.1")]


def test_reasons_are_a_closed_set(drops):
    with pytest.raises(ValueError):
        drops.drop("because", "192.0.2.1")
    assert {r.value for r in DropReason} == {
        "unknown_client", "bad_authenticator", "bad_message_authenticator",
        "missing_message_authenticator", "malformed", "unsupported_code"}


def test_flush_reports_the_tail_of_a_burst(drops, log, clock):
    drops.drop("missing_message_authenticator", "192.0.2.1")
    drops.drop("missing_message_authenticator", "192.0.2.1")
    drops.drop("missing_message_authenticator", "192.0.2.1")
    assert drops.flush() == 0                  # the interval has not passed yet
    clock.advance(10)
    assert drops.flush() == 1
    assert log.lines[-1][1] == {"reason": "missing_message_authenticator",
                                "source_ip": "192.0.2.1", "suppressed": 2}
    assert drops.flush() == 0
    assert drops.drop("missing_message_authenticator", "192.0.2.1")
    assert "suppressed" not in log.lines[-1][1]


def test_memory_is_bounded_under_a_spoofed_flood(log, clock):
    drops = DropLogger(log, clock, interval=10.0, max_sources=100)
    for i in range(1000):
        drops.drop("unknown_client", f"10.0.{i // 256}.{i % 256}")
    assert len(drops._windows) <= 100
    assert len(log.lines) == 1000              # every new source is logged once
