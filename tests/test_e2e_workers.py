"""`server.workers: 2`, end to end: two processes share the port through
SO_REUSEPORT sockets the supervisor holds; retransmissions stay with the
worker that has the original; a worker that dies is replaced; SIGHUP and
SIGTERM reach every worker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from e2e import SECRET, Server, command, needs_radclient, write_config
from peers.process import free_tcp_port, wait_for
from radius_mfa.radius import codec

PASSWORD = "correct horse"
USERS = 4


def worker_pids(server: Server) -> set[int]:
    """The supervisor's children, read from /proc."""
    children = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == server.proc.pid:
            children.add(int(entry))
    return children


def events(server: Server, name: str) -> list[dict]:
    return [e for e in server.log_events() if e.get("event") == name]


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path, workers=2)
    enrolled = [srv.enrol(f"user{i}", PASSWORD) for i in range(USERS)]
    srv.start()
    yield srv, enrolled
    srv.stop()


@needs_radclient
def test_both_workers_serve_and_retransmissions_stay_with_their_worker(server):
    srv, enrolled = server
    assert len(events(srv, "worker.listening")) == 2
    assert len(worker_pids(srv)) == 2
    for user in enrolled:
        # a fresh source port per user: the kernel's hash spreads them over the workers
        request = codec.build_access_request(SECRET.encode(), user.name,
                                             f"{PASSWORD},{user.code()}".encode(), id=9)
        first, late = srv.send_copies(request, copies=4)
        # had a copy reached the other worker, it would have decided again: a replay, rejected
        assert first[0] == codec.ACCESS_ACCEPT, user.name
        assert late == first
    records = srv.wait_audit(USERS)
    assert [r["result"] for r in records] == ["accept"] * USERS   # one record per attempt
    for index in range(32):
        # 32 more source ports (unknown users, rejected): all on one worker would be
        # a one-in-two-billion coincidence of the kernel's hash
        reply = srv.send(codec.build_access_request(SECRET.encode(), f"nobody{index}", b"x", id=index))
        assert reply is not None and reply[0] == codec.ACCESS_REJECT
    assert wait_for(lambda: len(events(srv, "auth.decision")) == USERS + 32, timeout=5)
    assert {e["worker"] for e in events(srv, "auth.decision")} == {0, 1}


@needs_radclient
def test_a_dead_worker_is_replaced_on_the_same_socket(server):
    srv, enrolled = server
    (victim, *_) = sorted(worker_pids(srv))
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: events(srv, "worker.exited"), timeout=5)
    assert wait_for(lambda: len(events(srv, "worker.listening")) == 3, timeout=15)
    assert victim not in worker_pids(srv) and len(worker_pids(srv)) == 2
    for user in enrolled:
        request = codec.build_access_request(SECRET.encode(), user.name,
                                             f"{PASSWORD},{user.code()}".encode(), id=3)
        reply = srv.send(request, timeout=5)
        assert reply is not None and reply[0] == codec.ACCESS_ACCEPT, user.name


@needs_radclient
def test_sighup_reaches_every_worker_and_sigterm_stops_them_all(server):
    srv, _ = server
    workers = worker_pids(srv)
    srv.send_signal(signal.SIGHUP)
    assert wait_for(lambda: len(events(srv, "config.reloaded")) == 2, timeout=10)
    assert srv.stop() == 0
    for pid in workers:
        assert not os.path.exists(f"/proc/{pid}") or _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_port_held_by_another_process_is_refused(tmp_path):
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    try:
        config = write_config(tmp_path, port, workers=2)
        proc = subprocess.run(command() + ["-c", str(config), "serve"], capture_output=True,
                              text=True, timeout=30, cwd=tmp_path)
    finally:
        holder.close()
    assert proc.returncode == 1
    failure = [json.loads(line) for line in proc.stderr.splitlines()
               if "server.start_failed" in line]
    assert failure and "in use" in failure[0]["error"]


def test_workers_stop_when_the_supervisor_is_killed(tmp_path):
    srv = Server(tmp_path, workers=2)
    srv.start()
    workers = worker_pids(srv)
    try:
        assert len(workers) == 2
        os.kill(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in workers):
            time.sleep(0.1)
        assert not any(os.path.exists(f"/proc/{p}") for p in workers)
    finally:
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        srv.stop()


@needs_radclient
def test_metrics_and_health_cover_every_worker(tmp_path):
    metrics_port = free_tcp_port()
    srv = Server(tmp_path, workers=2, extra=f'metrics:\n  listen: "127.0.0.1:{metrics_port}"')
    url = f"http://127.0.0.1:{metrics_port}"
    srv.start()
    try:
        assert fetch(url + "/health")[0] == 200
        for index in range(16):
            reply = srv.send(codec.build_access_request(SECRET.encode(), f"nobody{index}", b"x", id=index))
            assert reply is not None and reply[0] == codec.ACCESS_REJECT
        assert wait_for(lambda: len(events(srv, "auth.decision")) == 16, timeout=5)
        assert {e["worker"] for e in events(srv, "auth.decision")} == {0, 1}
        # one scrape of the supervisor sums both workers' counters
        assert wait_for(lambda: requests_total(fetch(url + "/metrics")[1]) == 16, timeout=5)
        (victim, *_) = sorted(worker_pids(srv))
        os.kill(victim, signal.SIGKILL)
        assert wait_for(lambda: fetch(url + "/health")[0] == 503, timeout=5)
        assert wait_for(lambda: len(events(srv, "worker.listening")) == 3, timeout=15)
        assert wait_for(lambda: fetch(url + "/health")[0] == 200, timeout=5)
    finally:
        assert srv.stop() == 0


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def requests_total(text: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(sample.value for family in text_string_to_metric_families(text)
               if family.name == "radius_mfa_requests"
               for sample in family.samples if sample.name == "radius_mfa_requests_total")
