"""The `serve --debug` block, without sockets: what the server fills in, as
the person at the terminal reads it, and nothing that could hurt them."""

from __future__ import annotations

import io

from twisted.internet.task import Clock

from radius_mfa.requests import Decision
from radius_mfa.trace import TraceWriter, primary_answer, printable, state_digest
from radius_mfa.verdicts import Reason, Verdict


def writer() -> tuple[TraceWriter, io.StringIO, Clock]:
    clock, out = Clock(), io.StringIO()
    return TraceWriter(clock, out), out, clock


def test_a_user_name_with_terminal_escapes_is_printed_escaped():
    assert printable("alice\x1b[2J\r\n") == '"alice\\x1b[2J\\x0d\\x0a"'
    assert printable('a"b') == '"a\\"b"'
    assert printable(None) == "(none)"


def test_a_state_is_shown_as_a_short_hash_never_its_value():
    state = bytes(range(16))
    shown = state_digest(state)
    assert shown.startswith("sha256:") and len(shown) == len("sha256:") + 8
    assert state.hex() not in shown and state.hex()[:8] not in shown
    assert state_digest(None) == "none"


def test_blocks_are_numbered_prefixed_and_timed():
    tracer, out, clock = writer()
    first = tracer.begin("192.0.2.1", 1645)
    second = tracer.begin("2001:db8::1", 1812)
    clock.advance(0.0125)
    tracer.finish(first.drop("unknown_client"))
    lines = out.getvalue().splitlines()
    assert all(line.startswith("(1) ") for line in lines)
    assert lines[0] == "(1) Received packet from 192.0.2.1:1645"
    assert "(1)   client: no client for 192.0.2.1" in lines
    assert lines[-1] == "(1)   done in 12.5 ms"
    assert second.source == "[2001:db8::1]:1812" and second.number == 2


def test_the_primary_answer_is_read_from_the_decision():
    def answer(verdict, reason=None, factor=None, **kw):
        return primary_answer(Decision(verdict, "alice", "ldap", reason=reason, factor=factor), **kw)
    assert answer(Verdict.REJECT, Reason.BAD_PASSWORD, answering_challenge=False) == "rejected the password"
    assert answer(Verdict.REJECT, Reason.BAD_CODE, "totp", answering_challenge=False) == "accepted the password"
    assert answer(Verdict.REJECT, Reason.UPSTREAM_DOWN, answering_challenge=False) == "did not answer in time"
    assert answer(Verdict.REJECT, Reason.LOCKED, answering_challenge=False) == "not asked"
    assert answer(Verdict.ACCEPT, factor="totp", answering_challenge=True).startswith("not asked")
    assert answer(Verdict.ACCEPT, factor="app_password", answering_challenge=False).startswith("not asked")
    assert answer(Verdict.ACCEPT, factor="totp", answering_challenge=False,
                  second_factor_only=True).startswith("not asked")


def test_a_closed_stderr_does_not_stop_the_server():
    tracer, out, _ = writer()
    out.close()
    tracer.finish(tracer.begin("192.0.2.1", 1))      # no exception
