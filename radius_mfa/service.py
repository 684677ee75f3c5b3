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
from twisted.python.threadpool import ThreadPool

from radius_mfa.activity import ClientActivity
from radius_mfa.audit import AuditLog, audit_record, bridge_twisted_logging, configure_logging
from radius_mfa.config import Config, load_config
from radius_mfa.engine import Engine
from radius_mfa.errors import ConfigError, StoreError
from radius_mfa.model import AuthRecord
from radius_mfa.primary.local import LocalBackend, NoPrimary
from radius_mfa.radius.clients import ClientTable
from radius_mfa.radius.dictionary import load_dictionary
from radius_mfa.radius.droplog import DropLogger
from radius_mfa.radius.dupcache import DuplicateCache
from radius_mfa.server import Finished, RadiusServer, Runtime
from radius_mfa.sessions import Sessions
from radius_mfa.store import open_store
from radius_mfa.store.asyncstore import AsyncStore, thread_runner
from radius_mfa.delivery.base import CHANNELS
from radius_mfa.delivery.sender import build_senders
from radius_mfa.verifiers.hotp import HotpVerifier
from radius_mfa.verifiers.totp import TotpVerifier

log = structlog.get_logger("radius_mfa.service")

DRAIN_SECONDS = 5.0
ACTIVITY_FLUSH_SECONDS = 5.0
PURGE_SECONDS = 60.0
DROPLOG_FLUSH_SECONDS = 10.0     # the tail of a burst of drops is reported even if none follows
# a replaced backend (SIGHUP) keeps serving the requests it has in flight this long
RETIRE_SECONDS = 120.0


def build_primary(config: Config, *, reactor, hash_runner, ldap_runner, dictionary):
    """The primary backend of a configuration; started, ready to use."""
    backend = config.primary.backend
    if backend == "local":
        return LocalBackend(hash_runner)
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
                 *, reactor=None) -> Engine:
    """The engine for ``config``; ``reactor`` drives the code senders (SMS,
    voice, email), which exist only where their factors are configured."""
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
    )


def notify_systemd(message: bytes) -> None:
    """sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET, if set."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        log.warning("systemd.notify_failed", error=str(exc))


class Service:
    def __init__(self, config: Config, reactor):
        self.config = config
        self.reactor = reactor
        self.exit_code = 0
        self.protocols: list[RadiusServer] = []
        self.ports = []
        self._stopping = False

    def start(self) -> None:
        """Open the store and the listeners; raises ConfigError, StoreError or
        CannotListenError before anything is half-started."""
        config, reactor = self.config, self.reactor
        self.sync_store = open_store(config.store, config.store_key_file)
        self.store_pool = ThreadPool(minthreads=1, maxthreads=4, name="store")
        self.hash_pool = ThreadPool(minthreads=1, maxthreads=max(2, os.cpu_count() or 2), name="hash")
        for pool in (self.store_pool, self.hash_pool):
            pool.start()
            reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
        self.ldap_pool = ThreadPool(minthreads=0, maxthreads=8, name="ldap")
        self.ldap_pool.start()
        reactor.addSystemEventTrigger("during", "shutdown", self.ldap_pool.stop)
        self.store = AsyncStore(self.sync_store, thread_runner(reactor, self.store_pool))
        self.hash_runner = thread_runner(reactor, self.hash_pool)
        self.ldap_runner = thread_runner(reactor, self.ldap_pool)
        self.dictionary = load_dictionary()

        runtime = self._runtime(config)
        self.activity = ClientActivity(self.store, self.sync_store.list_clients_seen())
        self.audit = AuditLog(config.audit.file, keep=self._keep_record)
        dictionary = self.dictionary
        duplicates = DuplicateCache(reactor)
        droplog = DropLogger(structlog.get_logger("radius_mfa.drop"), reactor)

        for address in config.server.listen:
            protocol = RadiusServer(runtime, dictionary=dictionary, reactor=reactor,
                                    activity=self.activity, on_finished=self._finished,
                                    droplog=droplog, duplicates=duplicates)
            self.ports.append(reactor.listenUDP(address.port, protocol, interface=address.host,
                                                maxPacketSize=4096))
            self.protocols.append(protocol)
        if config.server.workers > 1:
            log.warning("server.workers_not_supported", workers=config.server.workers,
                        detail="this version serves with one process")

        self._loops = []
        for work, interval in ((self.activity.flush, ACTIVITY_FLUSH_SECONDS),
                               (self._purge, PURGE_SECONDS),
                               (droplog.flush, DROPLOG_FLUSH_SECONDS)):
            loop = task.LoopingCall(work)
            loop.clock = reactor
            loop.start(interval, now=False).addErrback(self._loop_failed)
            self._loops.append(loop)

        log.info("server.listening", server=config.server.name,
                 listen=[f"{p.getHost().host}:{p.getHost().port}" for p in self.ports],
                 clients=len(config.clients), primary=config.primary.backend)
        notify_systemd(b"READY=1\nSTATUS=listening")

    def _runtime(self, config: Config) -> Runtime:
        primary = build_primary(config, reactor=self.reactor, hash_runner=self.hash_runner,
                                ldap_runner=self.ldap_runner, dictionary=self.dictionary)
        engine = build_engine(config, self.store, primary, self.reactor.seconds, reactor=self.reactor)
        return Runtime(clients=ClientTable(config.clients), engine=engine)

    # --- per request -------------------------------------------------------------
    def _finished(self, finished: Finished) -> None:
        record = audit_record(finished, self.config.server.name, self.reactor.seconds())
        self.audit.write(record)
        log.info("auth.decision", client=record["client"], user=record["user"],
                 result=record["result"], reason=record["reason"], factor=record["factor"],
                 duration_ms=record["duration_ms"], request_id=record["request_id"])

    def _keep_record(self, record: dict) -> None:
        d = self.store.add_auth_record(AuthRecord(time=self.reactor.seconds(), fields=record))
        d.addErrback(lambda f: log.error("audit.store_failed", error=f.getErrorMessage()))

    async def _purge(self) -> None:
        now = self.reactor.seconds()
        removed = await self.store.purge_challenges(now)
        if removed:
            log.debug("challenges.purged", count=removed)
        codes = await self.store.purge_sent_codes(now)
        if codes:
            log.debug("sent_codes.purged", count=codes)

    def _loop_failed(self, failure) -> None:
        log.error("service.loop_failed", exception=failure.getTraceback())

    # --- signals -------------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP: a new client table and engine from the file; on error keep the old."""
        try:
            config = load_config(self.config.path)
            runtime = self._runtime(config)
        except ConfigError as exc:
            log.error("config.reload_failed", problems=exc.problems)
            return
        if config.store != self.config.store or config.server.listen != self.config.server.listen:
            log.warning("config.reload_partial",
                        detail="store and listen addresses change only with a restart")
        retired = self.protocols[0].runtime.engine.primary if self.protocols else None
        for protocol in self.protocols:
            protocol.runtime = runtime
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
        d.addBoth(lambda _: self._close())

    def abort(self) -> None:
        """Undo a start that failed half-way: close ports, stop thread pools."""
        for port in self.ports:
            port.stopListening()
        for pool in (getattr(self, "store_pool", None), getattr(self, "hash_pool", None),
                     getattr(self, "ldap_pool", None)):
            if pool is not None and pool.started:
                pool.stop()

    def _close(self) -> None:
        if self.protocols:
            stop_primary(self.protocols[0].runtime.engine.primary)
        self.audit.close()
        self.reactor.stop()
        log.info("server.stopped")


def run(config: Config) -> int:
    """Serve in the foreground until SIGTERM; returns the exit code."""
    from twisted.internet import reactor

    configure_logging(config.log.level, config.log.format)
    bridge_twisted_logging()
    service = Service(config, reactor)
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

    def on_signal(handler):
        return lambda signum, frame: reactor.callFromThread(handler)

    signal.signal(signal.SIGHUP, on_signal(service.reload))
    signal.signal(signal.SIGTERM, on_signal(service.stop))
    signal.signal(signal.SIGINT, on_signal(service.stop))
    reactor.run(installSignalHandlers=False)
    service.sync_store.close()
    return service.exit_code
