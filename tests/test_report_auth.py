"""`report auth --limit N` and `report auth --follow`.

--follow is driven end to end: the real `radius-mfa report auth --follow`
process reads the store while records arrive (written through the store, or
by a running server after a radclient sign-in), and is stopped by its pid.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import queue
import signal
import subprocess
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from e2e import Server, command, needs_radclient, radclient
from pg import KINDS, store_schema
from radius_mfa import cli
from radius_mfa.model import AuthRecord

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc).timestamp()


@pytest.fixture(params=KINDS)
def config_file(request, tmp_path, monkeypatch):
    monkeypatch.delenv(cli.CONFIG_ENV, raising=False)
    with contextlib.ExitStack() as stack:
        url = f"sqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite" else stack.enter_context(store_schema())
        path = tmp_path / "radius-mfa.yaml"
        path.write_text(
            f'server:\n  name: mfa-test\nstore: "{url}"\nstore_key_file: "{tmp_path / "store.key"}"\n'
            'clients:\n  - name: vpn\n    address: 127.0.0.1\n    secret: "testing123-testing123"\n'
        )
        yield str(path)


def rec(i: int, user: str, result: str = "accept", factor: str | None = "totp") -> AuthRecord:
    return AuthRecord(time=T0 + i, fields={"time": f"t{i}", "user": user, "client": "vpn", "factor": factor,
                                           "result": result, "reason": None, "request_id": f"r{i}"})


# --- --limit ------------------------------------------------------------------------


def test_limit_prints_the_newest_oldest_first(run, store) -> None:
    store.add_auth_records([rec(i, "alice" if i % 2 else "bob") for i in range(10)])
    code, out, err = run("report", "auth", "--limit", "3", "--json")
    assert code == 0, err
    assert [r["request_id"] for r in json.loads(out)] == ["r7", "r8", "r9"]


def test_limit_with_user_since_and_csv(run, store) -> None:
    store.add_auth_records([rec(i, "alice" if i % 2 else "bob") for i in range(10)])
    code, out, _ = run("report", "auth", "--limit", "2", "--user", "alice", "--csv")
    assert code == 0
    assert [row["request_id"] for row in csv.DictReader(io.StringIO(out))] == ["r7", "r9"]
    since = datetime.fromtimestamp(T0 + 8, timezone.utc).isoformat()
    code, out, _ = run("report", "auth", "--limit", "5", "--since", since, "--json")
    assert [r["request_id"] for r in json.loads(out)] == ["r8", "r9"]


def test_limit_in_the_table(run, store) -> None:
    store.add_auth_records([rec(i, f"user{i}") for i in range(4)])
    code, out, _ = run("report", "auth", "--limit", "2")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["TIME", "USER"]
    assert [line.split()[1] for line in lines[1:]] == ["user2", "user3"]


def test_limit_larger_than_the_log_prints_everything(run, store) -> None:
    store.add_auth_records([rec(i, "alice") for i in range(3)])
    code, out, _ = run("report", "auth", "--limit", "100", "--json")
    assert [r["request_id"] for r in json.loads(out)] == ["r0", "r1", "r2"]


@pytest.mark.parametrize("limit", ["0", "-1", "x"])
def test_a_bad_limit_is_bad_usage(run, limit: str) -> None:
    code, out, err = run("report", "auth", "--limit", limit)
    assert code == 2 and out == "" and "--limit" in err


# --- --follow, the real command as a subprocess ------------------------------------


class Follower:
    """`radius-mfa report auth --follow …` as a child process; its stdout
    lines arrive on a queue."""

    def __init__(self, config: str, *args: str):
        self.proc = subprocess.Popen([*command(), "-c", config, "report", "auth", "--follow", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def take(self, count: int, timeout: float = 10.0) -> list[str]:
        got, deadline = [], time.monotonic() + timeout
        while len(got) < count:
            try:
                got.append(self.lines.get(timeout=max(deadline - time.monotonic(), 0.01)))
            except queue.Empty:
                raise AssertionError(f"{len(got)} of {count} lines in {timeout} s: {got}; stderr: "
                                     f"{self.stderr_now()}") from None
        return got

    def quiet_for(self, seconds: float) -> list[str]:
        """Whatever it printed in the next ``seconds`` (nothing, usually)."""
        time.sleep(seconds)
        extra = []
        while not self.lines.empty():
            extra.append(self.lines.get_nowait())
        return extra

    def stderr_now(self) -> str:
        return "" if self.proc.poll() is None else self.proc.stderr.read()

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, str]:
        """Signal it by pid; its exit code and stderr."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)
        try:
            code = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError("report auth --follow did not stop within 10 s")
        err = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code, err


@pytest.fixture
def follow():
    started: list[Follower] = []

    def start(config: str, *args: str) -> Follower:
        follower = Follower(config, *args)
        started.append(follower)
        return follower

    yield start
    for follower in started:
        if follower.proc.poll() is None:
            follower.stop(signal.SIGKILL)


def test_follow_prints_the_log_then_new_records_until_sigterm(config_file, store, follow) -> None:
    store.add_auth_records([rec(0, "alice"), rec(1, "bob"), rec(2, "alice")])
    follower = follow(config_file, "--json", "--user", "alice")
    assert [json.loads(line)["request_id"] for line in follower.take(2)] == ["r0", "r2"]
    store.add_auth_records([rec(3, "bob"), rec(4, "alice", "reject")])
    store.add_auth_record(rec(5, "alice"))
    new = [json.loads(line) for line in follower.take(2)]
    assert [(r["request_id"], r["result"]) for r in new] == [("r4", "reject"), ("r5", "accept")]
    assert follower.quiet_for(1.5) == []                    # bob's record is not alice's; nothing twice
    code, err = follower.stop(signal.SIGTERM)
    assert code == 0
    assert "Traceback" not in err and err == ""


def test_follow_with_limit_and_csv_stops_on_sigint(config_file, store, follow) -> None:
    store.add_auth_records([rec(i, "alice") for i in range(5)])
    follower = follow(config_file, "--csv", "--limit", "2")
    header, *rows = follower.take(3)
    assert header.startswith("time,server,server_ip,client")
    assert [row.split(",")[0] for row in rows] == ["t3", "t4"]
    store.add_auth_record(rec(9, "carol"))
    assert follower.take(1)[0].split(",")[0] == "t9"
    code, err = follower.stop(signal.SIGINT)
    assert (code, err) == (0, "")


def test_follow_on_an_empty_log_prints_the_first_record_that_comes(config_file, store, follow) -> None:
    follower = follow(config_file)
    assert follower.take(1)[0].split()[:2] == ["TIME", "USER"]
    store.add_auth_record(rec(1, "dave", "reject", None))
    line = follower.take(1)[0].split()
    assert line[1:] == ["dave", "vpn", "-", "reject", "-"]
    code, err = follower.stop()
    assert (code, err) == (0, "")


@needs_radclient
def test_follow_sees_a_radclient_sign_in_on_a_running_server(tmp_path: Path, follow) -> None:
    server = Server(tmp_path)
    password = "correct horse battery"
    alice = server.enrol("alice", password=password)
    server.start()
    try:
        follower = follow(str(server.config), "--json")
        reply = radclient(server.port, [("User-Name", "alice"), ("User-Password", f"{password},{alice.code()}"),
                                        ("Message-Authenticator", "0x00")])
        assert reply.code == "Access-Accept", reply.output
        record = json.loads(follower.take(1)[0])
        assert (record["user"], record["result"], record["factor"]) == ("alice", "accept", "totp")
        assert password not in json.dumps(record)
        code, err = follower.stop(signal.SIGTERM)
        assert (code, err) == (0, "")
    finally:
        server.stop()
