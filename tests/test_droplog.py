"""Rate-limited logging of dropped packets."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from radius_mfa.radius.droplog import SUMMARY_EVENT, DropLogger, DropReason
from radius_mfa.ratelog import RateLimitedLog


class ListLogger:
    """Captures structlog-style calls."""

    def __init__(self):
        self.lines: list[tuple[str, dict]] = []

    def warning(self, event, **kw):
        self.lines.append((event, kw))

    error = warning


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
                                            "hint": "shared secret mismatch?",
                                            "suppressed": 5})
    clock.advance(10)
    drops.drop("bad_message_authenticator", "192.0.2.1", client="vpn")
    assert "suppressed" not in log.lines[2][1]


def test_a_wrong_message_authenticator_hints_at_the_shared_secret(drops, log):
    drops.drop("bad_message_authenticator", "192.0.2.1", client="vpn")
    drops.drop("malformed", "192.0.2.1", client="vpn")
    assert log.lines[0][1]["hint"] == "shared secret mismatch?"
    assert "hint" not in log.lines[1][1]


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
    drops = DropLogger(log, clock, interval=10.0, max_sources=100, max_lines=10_000)
    for i in range(1000):
        drops.drop("unknown_client", f"10.0.{i // 256}.{i % 256}")
    assert len(drops._windows) <= 100
    assert len(log.lines) == 1000              # under the global cap, every new source is logged once


def accounted(lines) -> int:
    """Every drop the lines account for: a line, a pair's count, a summary's count."""
    return sum((0 if event == SUMMARY_EVENT else 1) + kw.get("suppressed", 0) for event, kw in lines)


def test_spoofed_sources_flood_is_capped_globally_with_a_summary(log, clock):
    # the defect: 36,000 datagrams from 12,000 addresses wrote 36,245 lines
    drops = DropLogger(log, clock, interval=10.0, max_lines=50)
    for i in range(36_000):
        source = i % 12_000
        drops.drop("unknown_client" if i % 3 else "malformed", f"10.{source >> 16}.{(source >> 8) & 255}.{source & 255}")
        if i % 1000 == 999:
            clock.advance(1)                   # 1,000 datagrams a second for 36 s
    clock.advance(10)
    drops.flush()
    intervals = 36 // 10 + 2
    assert len(log.lines) <= intervals * (50 + 1)
    assert accounted(log.lines) == 36_000     # nothing is lost: what is not logged is counted
    summaries = [kw for event, kw in log.lines if event == SUMMARY_EVENT]
    assert summaries and all(kw["interval"] == 10.0 for kw in summaries)
    assert set().union(*(kw["reasons"] for kw in summaries)) == {"unknown_client", "malformed"}
    assert all(set(kw) == {"suppressed", "reasons", "interval"} for kw in summaries)


def test_global_cap_counts_lines_per_interval(log, clock):
    drops = DropLogger(log, clock, interval=10.0, max_lines=3)
    assert [drops.drop("malformed", f"192.0.2.{i}") for i in range(5)] == [True, True, True, False, False]
    assert drops.held == 2
    clock.advance(9.9)
    assert not drops.drop("malformed", "192.0.2.99")
    clock.advance(0.1)                         # a new interval: the summary, then room again
    assert drops.drop("malformed", "192.0.2.100")
    assert log.lines[3] == (SUMMARY_EVENT, {"suppressed": 3, "reasons": {"malformed": 3}, "interval": 10.0})
    assert log.lines[4][1]["source_ip"] == "192.0.2.100"
    assert drops.held == 0


def test_flush_writes_the_summary_when_no_drop_follows(log, clock):
    drops = DropLogger(log, clock, interval=10.0, max_lines=1)
    drops.drop("unknown_client", "192.0.2.1")
    drops.drop("unknown_client", "192.0.2.2")
    drops.drop("bad_authenticator", "192.0.2.3")
    assert drops.flush() == 0
    clock.advance(10)
    assert drops.flush() == 1
    assert log.lines[-1] == (SUMMARY_EVENT, {"suppressed": 2, "interval": 10.0,
                                             "reasons": {"bad_authenticator": 1, "unknown_client": 1}})
    clock.advance(10)
    assert drops.flush() == 0


def test_pair_tails_flushed_past_the_cap_go_into_the_summary(log, clock):
    drops = DropLogger(log, clock, interval=10.0, max_lines=2)
    for source in ("192.0.2.1", "192.0.2.2"):
        for _ in range(4):
            drops.drop("malformed", source)    # 1 line and 3 counted, for each
    clock.advance(10)
    drops.drop("malformed", "192.0.2.3")       # a new interval, its first line
    drops.drop("malformed", "192.0.2.4")       # its second: the cap is reached
    assert drops.flush() == 0                  # the two tails wait for the summary
    clock.advance(10)
    drops.flush()
    assert log.lines[-1] == (SUMMARY_EVENT, {"suppressed": 6, "reasons": {"malformed": 6},
                                             "interval": 10.0})
    assert accounted(log.lines) == 10


def test_every_drop_is_observed_whatever_is_logged(log, clock):
    seen = []
    drops = DropLogger(log, clock, max_lines=1, observer=seen.append)
    for i in range(10):
        drops.drop("unknown_client", f"192.0.2.{i}")
    assert seen == [DropReason.UNKNOWN_CLIENT] * 10 and len(log.lines) == 1


# ---------------------------------------------------------------- RateLimitedLog


def limited(log, clock, **kw) -> RateLimitedLog:
    return RateLimitedLog(log, "radius.upstream.down", clock=clock, interval=kw.pop("interval", 60.0), **kw)


def test_repeated_event_is_logged_once_per_interval_with_a_count(log, clock):
    down = limited(log, clock, context={"backend": "radius"})
    assert down.emit(user="alice")
    assert [down.emit(user=f"user{i}") for i in range(99)] == [False] * 99
    assert down.suppressed == 99
    clock.advance(59)
    assert not down.emit(user="bob")
    clock.advance(1)
    assert down.emit(user="carol")
    assert log.lines == [("radius.upstream.down", {"backend": "radius", "user": "alice"}),
                         ("radius.upstream.down", {"backend": "radius", "user": "carol", "suppressed": 100})]
    clock.advance(60)
    assert down.emit(user="dave") and "suppressed" not in log.lines[-1][1]


def test_flush_reports_a_count_when_the_event_stops(log, clock):
    down = limited(log, clock)
    down.emit(server="a")
    down.emit(server="a")
    down.emit(server="a")
    assert down.flush() == 0
    clock.advance(60)
    assert down.flush() == 1
    assert log.lines[-1] == ("radius.upstream.down", {"suppressed": 2, "interval": 60.0})
    assert down.flush() == 0 and down.suppressed == 0
    assert down.emit(server="a") and "suppressed" not in log.lines[-1][1]


def test_keys_have_their_own_windows_and_are_bounded(log, clock):
    down = limited(log, clock, max_keys=3)
    assert down.emit("10.0.0.1:1812") and down.emit("10.0.0.2:1812")
    assert not down.emit("10.0.0.1:1812")
    assert [down.emit(f"10.0.1.{i}:1812") for i in range(100)] == [True, True] + [False] * 98
    assert len(down._windows) <= 4


def test_due_says_whether_a_line_would_be_logged(log, clock):
    failed = limited(log, clock, level="error", interval=10.0)
    assert failed.due()
    failed.emit(exception="Traceback …")
    assert not failed.due()
    clock.advance(10)
    assert failed.due()
    assert log.lines == [("radius.upstream.down", {"exception": "Traceback …"})]


def test_level_is_checked(log, clock):
    with pytest.raises(ValueError):
        limited(log, clock, level="loud")
