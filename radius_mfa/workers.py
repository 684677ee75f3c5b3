"""`server.workers: N`: N processes serve one UDP port, so that every core works.

RADIUS over TLS listeners are shared the same way: N listening TCP sockets in
one SO_REUSEPORT group, socket *i* to worker *i*; Linux spreads connections
over them, and every packet of a connection (and so its duplicate cache)
stays with the worker that accepted it.

Why a supervisor that holds the sockets, and SO_REUSEPORT:

* One Python process decides on one core (the GIL); password hashes already
  run in a thread pool outside it, but packet decoding, HMACs and the engine do
  not. N worker processes, each a complete server (:class:`Service`), share
  the load.
* The supervisor binds the sockets, N per listen address, each with
  ``SO_REUSEPORT``, and hands socket *i* of every address to worker *i*
  (``pass_fds``). Linux then spreads datagrams over the N sockets by a hash
  of the source and destination address and port.
* That hash is what keeps the duplicate cache correct without sharing it:
  RFC 5080 defines a retransmission as the same source address and port, the
  same identifier and Request Authenticator, so every retransmission of a
  request reaches the socket that received the original, and the worker that
  reads it answers from its own cache (or stays silent while it decides).
  An inherited single socket would hand the copy to whichever worker reads
  first, which would run the factor again.
* The sockets belong to the supervisor, not to the workers: a worker that
  dies is started again on the same socket, so the hash group never changes
  and the datagrams that arrive meanwhile wait in the socket's buffer instead
  of being spread over the other workers.
* Everything else that must hold across workers (single-use States and
  codes, HOTP counters, TOTP replay, lockout, rate limits, one login attempt
  one factor run) is in the store already, closed by the database, so it
  holds across workers exactly as it does across servers.

Before binding, the supervisor tries each address once *without*
``SO_REUSEPORT``: when another process (another radius-mfa with workers, say)
holds it, that bind fails and we refuse to start, rather than silently
sharing the port with a stranger.

The supervisor runs no reactor. It waits in a selector on a self-pipe for
signals and on a private ``NOTIFY_SOCKET`` (the systemd protocol) on which
each worker says ``READY=1``; once all have, it logs ``server.listening`` and
tells systemd. SIGHUP goes to every worker (each reloads); SIGTERM/SIGINT go to
every worker, which finish what is in flight (≤ 5 s) and exit, and the
supervisor exits 0. A worker that fails before it is ready ends the start
with its exit code (a bad config gives 2, as in one process); one that dies
later is started again, with a back-off.

With metrics configured, the workers write their figures into a private
directory (prometheus-client's multi-process mode) and the supervisor serves
``/metrics`` and ``/health`` for all of them.
"""

from __future__ import annotations

import errno
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import structlog

from radius_mfa.config import Config, ListenAddress
from radius_mfa.errors import StoreError
from radius_mfa.store import open_store
from radius_mfa.usernames import prepare_store
from radius_mfa.systemd import notify
from radius_mfa.udp import enlarge_receive_buffer

log = structlog.get_logger("radius_mfa.workers")

# what a worker process finds in its environment
WORKER_ENV = "RADIUS_MFA_WORKER"            # its index, 0 … N-1
LISTEN_FDS_ENV = "RADIUS_MFA_LISTEN_FDS"    # its sockets, one per listen address, in config order
SUPERVISOR_ENV = "RADIUS_MFA_SUPERVISOR"    # the supervisor's pid: a worker whose parent changed stops
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

STOP_SECONDS = 10.0          # workers drain for 5 s; after this they are killed
START_SECONDS = 60.0         # a worker that is not ready by then failed to start
RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
STABLE_SECONDS = 60.0        # a worker that ran this long restarts without back-off


@dataclass(frozen=True)
class WorkerSlot:
    """What a worker process was handed: its index and its sockets."""
    index: int
    fds: tuple[int, ...]
    supervisor: int = 0

    def orphaned(self) -> bool:
        """True once the supervisor is gone (killed without a chance to stop us)."""
        return self.supervisor != 0 and os.getppid() != self.supervisor


def worker_slot(environ: dict[str, str] | None = None) -> WorkerSlot | None:
    """The slot of this process when the supervisor started it, else None."""
    environ = os.environ if environ is None else environ
    index = environ.get(WORKER_ENV)
    if index is None:
        return None
    fds = tuple(int(fd) for fd in environ.get(LISTEN_FDS_ENV, "").split(",") if fd)
    return WorkerSlot(int(index), fds, int(environ.get(SUPERVISOR_ENV, "0") or 0))


def bind_shared(address: ListenAddress, count: int) -> list[socket.socket]:
    """``count`` sockets bound to ``address`` in one SO_REUSEPORT group: UDP,
    or for a tls listener TCP sockets already listening (the kernel spreads
    new connections over them; a connection stays with the worker that
    accepted it, and so does its duplicate cache). OSError (EADDRINUSE) when
    another process holds the address already."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    stream = address.transport == "tls"
    kind = socket.SOCK_STREAM if stream else socket.SOCK_DGRAM
    probe = socket.socket(family, kind)
    try:
        if stream:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((address.host, address.port))     # without SO_REUSEPORT: is the port free?
        port = probe.getsockname()[1]
    finally:
        probe.close()
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, kind)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if stream:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address.host, port))
            if stream:
                sock.listen(128)
            else:
                enlarge_receive_buffer(sock)
            sock.setblocking(False)
            sock.set_inheritable(True)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


@dataclass
class _Worker:
    index: int
    fds: tuple[int, ...]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    ready: bool = False
    failures: int = 0                  # restarts in a row without a stable run
    restart_at: float | None = None


@dataclass
class Supervisor:
    config: Config
    command: list[str] = field(default_factory=lambda: [sys.executable, "-m", "radius_mfa"])
    clock: Callable[[], float] = time.monotonic

    def run(self) -> int:
        config = self.config
        try:
            # opened here first: a wrong key or an unreachable database stops
            # the start with one message, not N; /health pings it later
            self._store = open_store(config.store, config.store_key_file)
            prepare_store(self._store, config.policy.username, log)
        except StoreError as exc:
            log.error("server.start_failed", error=str(exc))
            return 1
        try:
            groups = [bind_shared(address, config.server.workers) for address in config.server.listen]
        except OSError as exc:
            detail = ("the address is in use by another process" if exc.errno == errno.EADDRINUSE
                      else exc.strerror or str(exc))
            log.error("server.start_failed", error=f"cannot listen: {detail}")
            self._store.close()
            return 1
        self._private = tempfile.mkdtemp(prefix="radius-mfa-")
        try:
            return self._supervise(groups)
        finally:
            for group in groups:
                for sock in group:
                    sock.close()
            shutil.rmtree(self._private, ignore_errors=True)
            self._store.close()

    # --- the loop ------------------------------------------------------------------
    def _supervise(self, groups: list[list[socket.socket]]) -> int:
        config = self.config
        notify_path = os.path.join(self._private, "notify")
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(notify_path)
        self._notify.setblocking(False)
        self._env = {**os.environ, "NOTIFY_SOCKET": notify_path}
        self._metrics_dir = None
        if config.metrics is not None:
            self._metrics_dir = os.path.join(self._private, "metrics")
            os.mkdir(self._metrics_dir, 0o700)
            self._env[METRICS_DIR_ENV] = self._metrics_dir
        self._systemd = os.environ.get("NOTIFY_SOCKET")

        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        os.set_blocking(wake_r, False)
        previous_wakeup = signal.set_wakeup_fd(wake_w)
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
        previous = {signum: signal.signal(signum, lambda *_: None) for signum in handled}
        selector = selectors.DefaultSelector()
        selector.register(wake_r, selectors.EVENT_READ, "signal")
        selector.register(self._notify, selectors.EVENT_READ, "notify")
        self._http = None
        self._stopping = False
        self.workers = [_Worker(i, tuple(group[i].fileno() for group in groups))
                        for i in range(config.server.workers)]
        try:
            if not self._start_http():
                return 1
            for worker in self.workers:
                self._spawn(worker)
            return self._loop(selector, wake_r)
        finally:
            self._stopping = True
            self._stop_all()
            self._stop_http()
            selector.close()
            signal.set_wakeup_fd(previous_wakeup)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            os.close(wake_r)
            os.close(wake_w)
            self._notify.close()

    def _loop(self, selector: selectors.BaseSelector, wake_r: int) -> int:
        listening = False
        start_deadline = self.clock() + START_SECONDS
        while True:
            for key, _ in selector.select(timeout=0.5):
                if key.data == "notify":
                    self._read_notifications()
                else:
                    for signum in _drain(wake_r):
                        if signum in (signal.SIGTERM, signal.SIGINT):
                            self._stopping = True     # /health says 503 from now on
                            log.info("server.stopping", workers=len(self.workers))
                            return 0          # _stop_all in the caller's finally
                        if signum == signal.SIGHUP:
                            self._forward(signal.SIGHUP)
            failed = self._reap(listening)
            if failed is not None:
                return failed
            if not listening:
                if all(worker.ready for worker in self.workers):
                    listening = True
                    log.info("server.listening", server=self.config.server.name,
                             listen=[f"{a.host}:{a.port}" for a in self.config.server.listen],
                             workers=len(self.workers), clients=len(self.config.clients),
                             primary=self.config.primary.backend)
                    notify(b"READY=1\nSTATUS=listening", self._systemd or "")
                elif self.clock() > start_deadline:
                    log.error("server.start_failed", error="the workers did not become ready in time")
                    return 1
            self._restart_due()

    def _spawn(self, worker: _Worker) -> None:
        env = {**self._env, WORKER_ENV: str(worker.index), SUPERVISOR_ENV: str(os.getpid()),
               LISTEN_FDS_ENV: ",".join(str(fd) for fd in worker.fds)}
        worker.proc = subprocess.Popen(
            [*self.command, "-c", os.path.abspath(self.config.path), "serve"],
            env=env, pass_fds=worker.fds, stdin=subprocess.DEVNULL)
        worker.started = self.clock()
        worker.ready = False
        worker.restart_at = None
        log.debug("worker.started", worker=worker.index, pid=worker.proc.pid)

    def _read_notifications(self) -> None:
        while True:
            try:
                data = self._notify.recv(4096)
            except BlockingIOError:
                return
            fields = dict(line.split("=", 1) for line in data.decode("utf-8", "replace").splitlines()
                          if "=" in line)
            if fields.get("READY") == "1" and fields.get("WORKER", "").isdigit():
                index = int(fields["WORKER"])
                if 0 <= index < len(self.workers):
                    self.workers[index].ready = True

    def _reap(self, listening: bool) -> int | None:
        """Collect workers that exited; during the start one failing ends it
        (its exit code); later it is started again after a back-off."""
        for worker in self.workers:
            proc = worker.proc
            if proc is None or proc.poll() is None:
                continue
            code = proc.returncode
            worker.proc = None
            self._forget_metrics(proc.pid)
            if not listening and not worker.ready:
                log.error("worker.start_failed", worker=worker.index, exit_code=code)
                return code if code in (1, 2) else 1
            ran = self.clock() - worker.started
            worker.failures = 0 if ran >= STABLE_SECONDS else worker.failures + 1
            delay = RESTART_DELAYS[min(worker.failures, len(RESTART_DELAYS)) - 1] if worker.failures else 0.0
            worker.restart_at = self.clock() + delay
            log.error("worker.exited", worker=worker.index, exit_code=code, restart_in=delay)
        return None

    def _restart_due(self) -> None:
        now = self.clock()
        for worker in self.workers:
            if worker.proc is None and worker.restart_at is not None and now >= worker.restart_at:
                self._spawn(worker)

    def _forward(self, signum: int) -> None:
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.send_signal(signum)

    def _stop_all(self) -> None:
        """SIGTERM to every worker; SIGKILL to any still running after STOP_SECONDS."""
        self._forward(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for worker in self.workers:
            proc = worker.proc
            if proc is None:
                continue
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker.killed", worker=worker.index, detail="did not stop in time")
                proc.kill()
                proc.wait()
            worker.proc = None
        log.info("server.stopped")

    # --- metrics --------------------------------------------------------------------
    def _start_http(self) -> bool:
        """/metrics (every worker's figures) and /health from a thread of
        ours, bound before any worker starts; False when it cannot listen."""
        if self.config.metrics is None:
            return True
        from radius_mfa import metrics

        health = metrics.workers_health(
            server=self.config.server.name, workers=len(self.workers),
            alive=lambda: sum(1 for w in self.workers if w.proc is not None and w.ready),
            stopping=lambda: self._stopping, path=self._metrics_dir)
        try:
            self._http = metrics.serve_threaded(self.config.metrics.listen, health,
                                                path=self._metrics_dir)
        except OSError as exc:
            log.error("server.start_failed",
                      error=f"metrics: cannot listen on {self.config.metrics.listen}: {exc.strerror or exc}")
            return False
        return True

    def _stop_http(self) -> None:
        if self._http is not None:
            from radius_mfa import metrics

            metrics.stop_threaded(*self._http)
            self._http = None

    def _forget_metrics(self, pid: int) -> None:
        if self._metrics_dir is None:
            return
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, self._metrics_dir)


def _drain(fd: int) -> list[int]:
    signals: list[int] = []
    while True:
        try:
            data = os.read(fd, 512)
        except BlockingIOError:
            return signals
        if not data:
            return signals
        signals.extend(data)



def supervise(config: Config) -> int:
    """`serve` with ``server.workers`` > 1: returns the exit code."""
    return Supervisor(config).run()
