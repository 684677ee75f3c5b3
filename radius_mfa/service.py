"""`radius-mfa serve`: assembles everything; the one place that imports the reactor.

Start-up order: config (already validated) → store → thread pools → engine →
UDP listeners → ``READY=1`` to systemd. SIGHUP reloads clients, secrets and
policies (pending challenges live in the store, so none is dropped); SIGTERM
stops listening, lets requests in flight finish for up to 5 s, and exits 0.
"""

from __future__ import annotations

import os
import signal
import socket
from typing import Callable

import structlog
from twisted.internet import task
from twisted.internet.error import CannotListenError

from radius_mfa.activity import ClientActivity
from radius_mfa.auditstore import AuditBatcher
from radius_mfa.audit import AuditLog, audit_record, bridge_twisted_logging, configure_logging
from radius_mfa.config import Config, load_config
from radius_mfa.engine import Engine
from radius_mfa.enrolment import EnrolLinks
from radius_mfa.errors import ConfigError, StoreError
from radius_mfa.primary.local import LocalBackend, NoPrimary
from radius_mfa.radius.clients import ClientTable
from radius_mfa.radius.dictionary import load_dictionary
from radius_mfa.radius.droplog import DropLogger
from radius_mfa.radius.dupcache import DuplicateCache
from radius_mfa.server import Finished, RadiusServer, Runtime
from radius_mfa.sessions import Sessions
from radius_mfa.store import open_store
from radius_mfa.verifiers.app_password import AppPasswordFactor
from radius_mfa.usernames import prepare_store
from radius_mfa.store.asyncstore import AsyncStore, immediate_runner
from radius_mfa.threads import Executor
from radius_mfa.delivery.base import CHANNELS
from radius_mfa.delivery.sender import build_senders
from radius_mfa.verifiers.hotp import HotpVerifier
from radius_mfa.verifiers.totp import TotpVerifier
from radius_mfa.systemd import notify
from radius_mfa.trace import TraceWriter
from radius_mfa.udp import enlarge_receive_buffer
from radius_mfa.workers import WorkerSlot, supervise, worker_slot

log = structlog.get_logger("radius_mfa.service")

DRAIN_SECONDS = 5.0
ACTIVITY_FLUSH_SECONDS = 5.0
PURGE_SECONDS = 60.0
DROPLOG_FLUSH_SECONDS = 10.0     # the tail of a burst of drops is reported even if none follows
# a replaced backend (SIGHUP) keeps serving the requests it has in flight this long
RETIRE_SECONDS = 120.0
ORPHAN_CHECK_SECONDS = 1.0
# store calls at once: PostgreSQL answers several in parallel; SQLite takes one
# writer at a time, and one thread spares the calls that queue for its lock the
# busy-wait sleeps and the hand-offs (measured: 5-10 % more sign-ins a second)
STORE_THREADS = {"sqlite": 1, "postgresql": 4}
LDAP_THREADS = 8                 # directory binds and searches at once


def build_primary(config: Config, *, reactor, hash_runner, ldap_runner, dictionary,
                  store=None, hash_threads: int | None = None):
    """The primary backend of a configuration; started, ready to use.
    ``store`` (synchronous) receives the local backend's rehashed passwords;
    ``hash_threads``: the hash pool's threads, the checks handed to it at once
    (the rest wait in the backend, and are dropped past their deadline)."""
    backend = config.primary.backend
    if backend == "local":
        try:
            return LocalBackend(hash_runner, config.passwords, store=store,
                                clock=reactor.seconds, concurrency=hash_threads)
        except ValueError as exc:          # a passwords section the loader let through
            raise ConfigError([f"{config.path}: {exc}"]) from None
    if backend == "none":
        return NoPrimary()
    if backend == "radius":
        from radius_mfa.primary.radius import RadiusBackend

        primary = RadiusBackend(config.primary.radius, reactor=reactor, dictionary=dictionary)
        primary.start()
        return primary
    from radius_mfa.primary.ldap import LdapBackend

    try:
        return LdapBackend(config.primary.ldap, run=ldap_runner,
                           exempt_groups=config.policy.exempt_groups)
    except ValueError as exc:          # what the loader cannot see: a filter that does not parse
        raise ConfigError([f"{config.path}: {exc}"]) from None


def stop_primary(primary) -> None:
    """Release what a backend holds (sockets, timers, connections)."""
    for name in ("stop", "close"):
        method = getattr(primary, name, None)
        if method is not None:
            method()
            return


def build_engine(config: Config, store: AsyncStore, primary, clock: Callable[[], float],
                 *, reactor=None, push=None, hash_runner=None) -> Engine:
    """The engine for ``config``; ``reactor`` drives the code senders (SMS,
    voice, email), which exist only where their factors are configured;
    ``push`` is the PushHub where factors.push is configured."""
    delivery = {channel: section for channel in CHANNELS
                if (section := getattr(config.factors, channel)) is not None}
    senders = build_senders(config.factors, reactor=reactor) if delivery and reactor is not None else {}
    return Engine(
        store=store, primary=primary,
        verifiers=[
            TotpVerifier(store, config.factors.totp.window),
            HotpVerifier(store, config.factors.hotp.look_ahead),
        ],
        policy=config.policy,
        sessions=Sessions(store, clock, ttl=config.policy.state_ttl),
        clock=clock,
        senders=senders,
        delivery=delivery,
        push=push if config.factors.push is not None else None,
        number_matching=config.factors.push.number_matching if config.factors.push else True,
        app_passwords=AppPasswordFactor(store, hash_runner or immediate_runner, clock),
        enrol_links=EnrolLinks(store, clock, config.portal.public_url) if config.portal is not None else None,
    )



class Service:
    def __init__(self, config: Config, reactor, *, worker: WorkerSlot | None = None,
                 serve_http: bool = True, debug: bool = False):
        self.config = config
        self.reactor = reactor
        self.worker = worker             # set in a process the supervisor started (server.workers > 1)
        self.exit_code = 0
        self.protocols: list[RadiusServer] = []
        self.ports = []
        self.radsec_tls = None           # tls listeners: the server context SIGHUP reloads
        self.radsec_factories = []       # one per tls listener
        self._stopping = False
        # metrics (config.metrics): the families, the health check, and the
        # HTTP port unless a supervisor serves /metrics for its workers
        self.serve_http = serve_http
        self.debug = debug               # `serve --debug`: a readable block per request on stderr
        self.metrics = None
        self.health = None
        self.http_port = None
        self.push_hub = None             # factors.push: the waiting requests and the device API
        self.push_port = None
        self.portal = None               # portal: the self-service page (shares push's port when asked)
        self.portal_port = None
        self._work_counted: tuple[dict[str, int], dict[str, int]] = ({}, {})

    def start(self) -> None:
        """Open the store and the listeners; raises ConfigError, StoreError or
        CannotListenError before anything is half-started."""
        config, reactor = self.config, self.reactor
        self.sync_store = open_store(config.store, config.store_key_file)
        prepare_store(self.sync_store, config.policy.username, log)
        self.store_pool = Executor(reactor, STORE_THREADS.get(config.store.partition(":")[0], 4), "store")
        self.hash_threads = max(2, os.cpu_count() or 2)
        self.hash_pool = Executor(reactor, self.hash_threads, "hash")
        self.ldap_pool = Executor(reactor, LDAP_THREADS, "ldap")
        for pool in (self.store_pool, self.hash_pool, self.ldap_pool):
            pool.start()
            reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
        self.store = AsyncStore(self.sync_store, self.store_pool.run, on_error=self._store_failed)
        self.hash_runner = self.hash_pool.run
        self.ldap_runner = self.ldap_pool.run
        self.dictionary = load_dictionary()
        self.audit_rows = AuditBatcher(self.store, reactor, reactor.seconds)
        self.audit = AuditLog(config.audit.file, keep=self.audit_rows.keep)
        self.portal = self._portal_resource(config)
        self._start_push(config)
        self._start_portal(config)

        runtime = self._runtime(config)
        self.activity = ClientActivity(self.store, self.sync_store.list_clients_seen())
        dictionary = self.dictionary
        duplicates = DuplicateCache(reactor)
        tracer = TraceWriter(reactor) if self.debug else None
        droplog = DropLogger(structlog.get_logger("radius_mfa.drop"), reactor,
                             observer=self._dropped)

        for address in config.server.listen:
            protocol = RadiusServer(runtime, dictionary=dictionary, reactor=reactor,
                                    activity=self.activity, on_finished=self._finished,
                                    droplog=droplog, duplicates=duplicates, tracer=tracer)
            self.ports.append(self._listen(len(self.ports), address, protocol))
            self.protocols.append(protocol)

        self._loops = []
        for work, interval in ((self.activity.flush, ACTIVITY_FLUSH_SECONDS),
                               (self._purge, PURGE_SECONDS),
                               (droplog.flush, DROPLOG_FLUSH_SECONDS),
                               (self._flush_logs, DROPLOG_FLUSH_SECONDS)):
            loop = task.LoopingCall(work)
            loop.clock = reactor
            loop.start(interval, now=False).addErrback(self._loop_failed)
            self._loops.append(loop)

        if self.worker is not None:
            loop = task.LoopingCall(self._watch_supervisor)
            loop.clock = reactor
            loop.start(ORPHAN_CHECK_SECONDS, now=False).addErrback(self._loop_failed)
            self._loops.append(loop)

        self._start_metrics()

        listening = [f"{p.getHost().host}:{p.getHost().port}" + ("/tls" if a.transport == "tls" else "")
                     for p, a in zip(self.ports, config.server.listen)]
        if self.worker is not None:      # the supervisor says server.listening once all are ready
            log.info("worker.listening", listen=listening)
            notify(b"READY=1\nWORKER=%d" % self.worker.index)
        else:
            log.info("server.listening", server=config.server.name, listen=listening,
                     clients=len(config.clients), primary=config.primary.backend)
            notify(b"READY=1\nSTATUS=listening")

    def _watch_supervisor(self) -> None:
        """A worker whose supervisor died (SIGKILL) stops instead of serving on alone."""
        if self.worker is not None and self.worker.orphaned():
            log.error("worker.orphaned", detail="the supervisor is gone: stopping")
            self.stop()

    def _listen(self, index: int, address, protocol):
        """The UDP port for the ``index``-th listen address: bound here, or,
        in a worker, adopted from the socket the supervisor handed over."""
        if address.transport == "tls":
            return self._listen_tls(index, address, protocol)
        if self.worker is None:
            port = self.reactor.listenUDP(address.port, protocol, interface=address.host,
                                          maxPacketSize=4096)
            enlarge_receive_buffer(port.socket)
            return port
        fd = self.worker.fds[index]
        with socket.socket(fileno=os.dup(fd)) as sock:
            family = sock.family
        port = self.reactor.adoptDatagramPort(fd, family, protocol, maxPacketSize=4096)
        os.close(fd)                     # the reactor holds its own duplicate
        return port

    def _listen_tls(self, index: int, address, pipeline: RadiusServer):
        """A RADIUS over TLS listener (radius_mfa/radsec.py) whose packets take
        ``pipeline``; in a worker, on the listening socket the supervisor
        shares (SO_REUSEPORT: the kernel spreads connections over the workers)."""
        from radius_mfa.radsec import RadsecFactory, RadsecTls, TlsFilesError, listen_factory

        tls = self.config.server.tls
        if self.radsec_tls is None:
            try:
                self.radsec_tls = RadsecTls(tls)
            except TlsFilesError as exc:
                raise ConfigError([f"{self.config.path}: server.tls.{exc.key}: {exc}"]) from None
        factory = RadsecFactory(pipeline, reactor=self.reactor, idle_timeout=tls.idle_timeout)
        self.radsec_factories.append(factory)
        wrapped = listen_factory(self.radsec_tls, factory)
        if self.worker is None:
            return self.reactor.listenTCP(address.port, wrapped, interface=address.host, backlog=128)
        fd = self.worker.fds[index]
        with socket.socket(fileno=os.dup(fd)) as sock:
            family = sock.family
        port = self.reactor.adoptStreamPort(fd, family, wrapped)
        os.close(fd)
        return port

    def _reload_tls(self, config: Config) -> None:
        """SIGHUP: new handshakes use the certificate, key and CA files as they are now."""
        if self.radsec_tls is None or config.server.tls is None:
            return
        from radius_mfa.radsec import TlsFilesError

        try:
            self.radsec_tls.reload(config.server.tls)
        except TlsFilesError as exc:
            log.error("config.reload_failed",
                      problems=[f"{config.path}: server.tls.{exc.key}: {exc} (the old certificates stay)"])
            return
        for factory in self.radsec_factories:
            factory.idle_timeout = config.server.tls.idle_timeout
        log.info("radsec.certificates_reloaded")

    def _runtime(self, config: Config) -> Runtime:
        primary = build_primary(config, reactor=self.reactor, hash_runner=self.hash_runner,
                                ldap_runner=self.ldap_runner, dictionary=self.dictionary,
                                store=self.sync_store, hash_threads=self.hash_threads)
        engine = build_engine(config, self.store, primary, self.reactor.seconds, reactor=self.reactor,
                              push=self.push_hub, hash_runner=self.hash_runner)
        return Runtime(clients=ClientTable(config.clients), engine=engine)

    def _flush_logs(self) -> None:
        """Rate-limited warnings (an upstream down, an error during a store
        outage) whose interval has passed: their counts are logged now, not
        only when the next such warning comes."""
        for protocol in self.protocols:
            protocol.errors.flush()
        for factory in self.radsec_factories:
            factory.flush_logs()
        primary = getattr(self.protocols[0].runtime.engine, "primary", None) if self.protocols else None
        if hasattr(primary, "flush_logs"):
            primary.flush_logs()

    # --- per request -------------------------------------------------------------
    def _finished(self, finished: Finished) -> None:
        if self.metrics is not None:
            self.metrics.observe(finished)
        record = audit_record(finished, self.config.server.name, self.reactor.seconds())
        self.audit.write(record)
        log.info("auth.decision", client=record["client"], user=record["user"],
                 result=record["result"], reason=record["reason"], factor=record["factor"],
                 duration_ms=record["duration_ms"], request_id=record["request_id"])

    # --- push approval -----------------------------------------------------------
    def _start_push(self, config: Config) -> None:
        """factors.push: the hub every engine shares (it outlives a SIGHUP,
        with the requests waiting in it) and the device API, served by a
        single process or by worker 0 (the others learn of answers through
        the store)."""
        push = config.factors.push
        if push is None:
            return
        from radius_mfa.push.api import DeviceApi, listen_device_api
        from radius_mfa.push.hub import PushHub
        from radius_mfa.push.notify import notifiers_from_config

        self.push_hub = PushHub(self.store, config=push, clock=self.reactor.seconds,
                                reactor=self.reactor,
                                notifier=notifiers_from_config(push, self.reactor),
                                on_fraud=self._fraud_reported)
        if self.worker is None or self.worker.index == 0:
            api = DeviceApi(self.push_hub, self.store, self.reactor.seconds, config.server.name)
            if self._portal_shares_push(config):
                from radius_mfa.portal.app import SharedRoot

                api = SharedRoot(api, self.portal)
                log.info("portal.listening", address=f"{push.listen.host}:{push.listen.port}", shared="push")
            self.push_port = listen_device_api(self.reactor, push, api)
            host = self.push_port.getHost()
            log.info("push.listening", address=f"{host.host}:{host.port}")

    # --- the self-service page -----------------------------------------------------
    def _serves_http(self) -> bool:
        """The device API and the page run in one process: the only one, or worker 0."""
        return self.worker is None or self.worker.index == 0

    @staticmethod
    def _portal_shares_push(config: Config) -> bool:
        push, portal = config.factors.push, config.portal
        return push is not None and portal is not None and push.listen == portal.listen

    def _portal_resource(self, config: Config):
        if config.portal is None or not self._serves_http():
            return None
        from radius_mfa.portal.app import Portal

        # the primary backend in force, looked up per sign-in (a SIGHUP replaces it)
        return Portal(self.store, config, lambda: self.protocols[0].runtime.engine.primary,
                      self.reactor.seconds, self.hash_runner, engine=lambda: self.protocols[0].runtime.engine)

    def _start_portal(self, config: Config) -> None:
        if self.portal is None or self._portal_shares_push(config):
            return
        from radius_mfa.portal.app import listen_portal

        self.portal_port = listen_portal(self.reactor, config.portal, self.portal)
        host = self.portal_port.getHost()
        log.info("portal.listening", address=f"{host.host}:{host.port}")

    def _fraud_reported(self, push, device) -> None:
        """The audit record of a push the user reported as fraud."""
        from radius_mfa.audit import iso_time

        client = next((c for c in self.config.clients if c.name == push.client), None)
        self.audit.write({
            "time": iso_time(self.reactor.seconds()), "server": self.config.server.name,
            "server_ip": None, "client": push.client, "client_ip": None,
            "user_ip": push.user_ip, "calling_station_id": push.calling_station_id,
            "user": push.user, "display_name": None, "email": None, "phone": None,
            "device": device.id, "primary": None, "factor": "push", "provider": None,
            "result": "reject", "reason": "fraud",
            "mode": client.mode.value if client is not None else None,
            "duration_ms": round((self.reactor.seconds() - push.created) * 1000.0, 3),
            "request_id": push.id,
        })

    async def _purge(self) -> None:
        now = self.reactor.seconds()
        removed = await self.store.purge_challenges(now)
        if removed:
            log.debug("challenges.purged", count=removed)
        codes = await self.store.purge_sent_codes(now)
        if codes:
            log.debug("sent_codes.purged", count=codes)
        if self.push_hub is not None:
            pushes = await self.store.purge_pushes(now)
            if pushes:
                log.debug("pushes.purged", count=pushes)
        if self.portal is not None:
            from radius_mfa.portal.app import IDLE_SECONDS

            await self.store.purge_portal(now, IDLE_SECONDS)

    def _loop_failed(self, failure) -> None:
        log.error("service.loop_failed", exception=failure.getTraceback())

    # --- metrics and health ----------------------------------------------------------
    def _start_metrics(self) -> None:
        """With ``metrics`` configured: the metric families, a refresh every
        few seconds (store ping, pending challenges, upstream health) and,
        unless a supervisor serves them, /metrics and /health on this reactor."""
        config = self.config
        if config.metrics is None:
            return
        from radius_mfa.metrics import STORE_PING_SECONDS, Metrics, ServiceHealth, listen_http

        self.metrics = Metrics()
        self.metrics.set_store_up(True)     # it was just opened; the first ping follows now
        self.health = ServiceHealth(self.reactor.seconds, server=config.server.name,
                                    workers=config.server.workers,
                                    dead_upstreams=self._dead_upstreams)
        loop = task.LoopingCall(self._refresh_metrics)
        loop.clock = self.reactor
        loop.start(STORE_PING_SECONDS, now=True).addErrback(self._loop_failed)
        self._loops.append(loop)
        self.metrics.before_render = self._count_work     # a scrape sees every request so far
        if self.serve_http:
            self.http_port = listen_http(self.reactor, config.metrics.listen, self.metrics,
                                         self.health)
            host = self.http_port.getHost()
            log.info("metrics.listening", address=f"{host.host}:{host.port}")

    def _primary(self):
        return self.protocols[0].runtime.engine.primary if self.protocols else None

    def _upstream_health(self) -> tuple[str, dict[str, bool]] | None:
        """(backend, server → up) of a primary that talks to servers; else None."""
        primary = self._primary()
        server_health = getattr(primary, "server_health", None)
        return None if server_health is None else (primary.name, server_health())

    def _dead_upstreams(self) -> list[str]:
        upstreams = self._upstream_health()
        return [] if upstreams is None else [s for s, up in upstreams[1].items() if not up]

    def _count_work(self) -> None:
        """Thread hops and store transactions since the last refresh, into the metrics."""
        pools = (self.store_pool, self.hash_pool, self.ldap_pool)
        counts = self.sync_store.transactions
        now = {pool.name: pool.calls for pool in pools}
        now_tx = {"read": counts.reads, "write": counts.writes}
        last, last_tx = self._work_counted
        self.metrics.add_work({name: n - last.get(name, 0) for name, n in now.items()},
                              {kind: n - last_tx.get(kind, 0) for kind, n in now_tx.items()})
        self._work_counted = (now, now_tx)

    def _refresh_metrics(self) -> None:
        self._count_work()
        upstreams = self._upstream_health()
        if upstreams is not None:
            self.metrics.set_upstreams(*upstreams)
        if self.health.ping_started():      # never a second ping while one hangs
            from twisted.internet.defer import Deferred

            Deferred.fromCoroutine(self._ping_store()).addErrback(self._loop_failed)

    async def _ping_store(self) -> None:
        ok = False
        try:
            await self.store.ping()
            pending = await self.store.count_challenges(self.reactor.seconds())
            self.metrics.set_pending_challenges(pending)
            ok = True
        except StoreError as exc:
            if self.health.store_ok:
                log.error("store.unreachable", error=str(exc))
        finally:
            if ok and not self.health.store_ok:
                log.info("store.reachable")
            self.health.ping_finished(ok)
            self.metrics.set_store_up(ok)

    def _store_failed(self, operation: str) -> None:
        if self.metrics is not None:
            self.metrics.store_error(operation)

    def _dropped(self, reason) -> None:
        if self.metrics is not None:
            self.metrics.drop(reason)

    # --- signals -------------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP: a new client table and engine from the file; on error keep the old."""
        try:
            config = load_config(self.config.path)
            runtime = self._runtime(config)
        except ConfigError as exc:
            log.error("config.reload_failed", problems=exc.problems)
            return
        except Exception as exc:  # noqa: BLE001 - a reload must never take the server down
            # one line, no traceback: the exception's text could quote the file
            log.error("config.reload_failed",
                      problems=[f"{self.config.path}: cannot reload: unexpected {type(exc).__name__}"])
            return
        old_push, new_push = self.config.factors.push, config.factors.push
        if (config.store != self.config.store or config.server.listen != self.config.server.listen
                or config.metrics != self.config.metrics or config.server.workers != self.config.server.workers
                or (old_push is None) != (new_push is None)
                or (old_push is not None and new_push is not None
                    and (old_push.listen, old_push.tls_cert, old_push.tls_key)
                    != (new_push.listen, new_push.tls_cert, new_push.tls_key))):
            log.warning("config.reload_partial",
                        detail="store, listen and metrics addresses, workers, and whether and where "
                               "the device API listens change only with a restart")
        if self.push_hub is not None and new_push is not None:
            self.push_hub.config = new_push     # timeout, rate limit, number matching
        if self.portal is not None and config.portal is not None:
            if _portal_place(config) != _portal_place(self.config):
                log.warning("config.reload_partial",
                            detail="whether and where the self-service page listens changes only with a restart")
            self.portal.reconfigure(config)     # lockout, username policy, factors, public_url
        retired = self.protocols[0].runtime.engine.primary if self.protocols else None
        for protocol in self.protocols:
            protocol.runtime = runtime
        self._reload_tls(config)
        if retired is not None:
            self.reactor.callLater(RETIRE_SECONDS, stop_primary, retired)
        self.config = config
        self.audit.reopen()
        log.info("config.reloaded", clients=len(config.clients))

    def stop(self) -> None:
        """SIGTERM/SIGINT: stop listening, finish what is in flight (≤ 5 s), exit 0."""
        if self._stopping:
            return
        self._stopping = True
        if self.health is not None:          # load balancers look elsewhere while we drain
            self.health.mark_stopping()
        log.info("server.stopping")
        for loop in self._loops:
            if loop.running:
                loop.stop()
        from twisted.internet import defer

        # stop reading new datagrams but keep the sockets: answers still go out
        for port in self.ports:
            port.stopReading()
        draining = [protocol.drain(DRAIN_SECONDS) for protocol in self.protocols]
        d = defer.DeferredList(draining, consumeErrors=True)
        d.addCallback(lambda _: defer.DeferredList(
            [defer.maybeDeferred(port.stopListening) for port in self.ports], consumeErrors=True))
        d.addCallback(lambda _: defer.Deferred.fromCoroutine(self.activity.flush()))
        d.addBoth(lambda _: self.audit_rows.flush())
        d.addBoth(lambda _: self._close())

    def abort(self) -> None:
        """Undo a start that failed half-way: close ports, stop thread pools."""
        for port in self.ports:
            port.stopListening()
        if self.http_port is not None:
            self.http_port.stopListening()
        if self.push_port is not None:
            self.push_port.stopListening()
        if self.portal_port is not None:
            self.portal_port.stopListening()
        for pool in (getattr(self, "store_pool", None), getattr(self, "hash_pool", None),
                     getattr(self, "ldap_pool", None)):
            if pool is not None and pool.started:
                pool.stop()

    def _close(self) -> None:
        if self.push_port is not None:
            self.push_port.stopListening()
        if self.portal_port is not None:
            self.portal_port.stopListening()
        if self.push_hub is not None:
            self.push_hub.stop()
        for factory in self.radsec_factories:
            factory.close_all()
        if self.protocols:
            stop_primary(self.protocols[0].runtime.engine.primary)
        self.audit.close()
        if self.http_port is not None:
            self.http_port.stopListening()
        self.reactor.stop()
        log.info("server.stopped")


def _portal_place(config: Config):
    """Where the self-service page listens, and with which certificate."""
    portal = config.portal
    return None if portal is None else (portal.listen, portal.tls_cert, portal.tls_key)


def run(config: Config, *, debug: bool = False) -> int:
    """Serve in the foreground until SIGTERM; returns the exit code.

    With ``server.workers`` > 1 this process supervises the workers
    (:mod:`radius_mfa.workers`); a worker it started serves here."""
    configure_logging(config.log.level, config.log.format)
    slot = worker_slot()
    if slot is None:
        for warning in config.warnings:      # once, not once per worker
            log.warning("config.warning", problem=warning)
    if debug and slot is None and config.server.workers > 1:
        # like `freeradius -X`: one process, so that every block reaches this terminal
        log.warning("server.debug_single_process", workers=config.server.workers,
                    detail="--debug serves in one process: server.workers is ignored")
    elif slot is None and config.server.workers > 1:
        return supervise(config)
    if slot is not None:
        structlog.contextvars.bind_contextvars(worker=slot.index)
        if len(slot.fds) != len(config.server.listen):
            log.error("server.start_failed",
                      error="server.listen changed: restart the server to listen elsewhere")
            return 1
    from twisted.internet import reactor

    bridge_twisted_logging()
    service = Service(config, reactor, worker=slot, serve_http=slot is None, debug=debug)

    def on_signal(handler):
        return lambda signum, frame: reactor.callFromThread(handler)

    # before start(): it says READY, and a SIGHUP that follows at once must
    # find its handler (the default action would end the process)
    signal.signal(signal.SIGHUP, on_signal(service.reload))
    signal.signal(signal.SIGTERM, on_signal(service.stop))
    signal.signal(signal.SIGINT, on_signal(service.stop))
    try:
        service.start()
    except ConfigError as exc:
        service.abort()
        for problem in exc.problems:
            log.error("config.invalid", problem=problem)
        return 2
    except (StoreError, CannotListenError, OSError) as exc:
        service.abort()
        log.error("server.start_failed", error=str(exc))
        return 1

    reactor.run(installSignalHandlers=False)
    service.sync_store.close()
    return service.exit_code
