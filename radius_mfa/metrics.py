"""Prometheus metrics and the health endpoint.

A network administrator watches a RADIUS server from outside: how many
requests each NAS sends and how they end, how long the out-of-band factors
keep a NAS waiting, whether the upstream servers and the store answer, and
how many packets are dropped in silence. :class:`Metrics` holds those
families (all named ``radius_mfa_…``); the service feeds it every answered
request, every drop and every store failure.

Two process models, one set of families:

- One process (``server.workers: 1``): each :class:`Metrics` has its own
  ``CollectorRegistry``, and the process serves ``/metrics`` and ``/health``
  on its reactor (:func:`listen_http`, twisted.web; rendering reads memory
  only, so the reactor never waits).
- Several workers: ``PROMETHEUS_MULTIPROC_DIR`` is set before the worker
  starts, prometheus_client writes every value to a file of its own in that
  directory, and the supervisor, which has no reactor, aggregates the files
  with ``MultiProcessCollector`` in a thread (:func:`serve_threaded`). Each
  gauge declares how its per-worker values combine.

``/health`` is for load balancers: 200 ``{"status": "ok", …}`` while the
process serves (the store answered its last ping, no shutdown has begun),
else 503 ``{"status": "unavailable", "problems": […]}``. It carries no
secret and no store URL.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector
from twisted.web.resource import Resource
from twisted.web.server import Site

from radius_mfa.radius.droplog import DropReason
from radius_mfa.verdicts import Reason, Verdict

log = structlog.get_logger("radius_mfa.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The classic text format, which every Prometheus version scrapes (our names need no escaping).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# From a TOTP check (milliseconds) to a push or a phone call the NAS waits on (up to a minute).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0)

STORE_PING_SECONDS = 5.0     # how often the service pings the store and refreshes the gauges
STORE_STALE_SECONDS = 15.0   # no answer from the store for this long: unhealthy

HealthCheck = Callable[[], "tuple[bool, dict[str, Any]]"]


def multiprocess_active() -> bool:
    """Whether prometheus_client writes values to ``PROMETHEUS_MULTIPROC_DIR``.

    prometheus_client decides once, when it is first imported; this asks it
    rather than the environment, which may have changed since."""
    return values.ValueClass is not values.MutexValue


class Metrics:
    """The metric families of one serving process.

    In one-process mode ``registry`` is a private ``CollectorRegistry``
    (several Metrics can live side by side); in multi-process mode it is
    None and the values go to the shared directory.
    """

    def __init__(self) -> None:
        self.multiprocess = multiprocess_active()
        registry = None if self.multiprocess else CollectorRegistry()
        self.registry: CollectorRegistry | None = registry
        self.requests = Counter(
            "radius_mfa_requests_total",
            "Access-Requests answered (or deliberately left unanswered: result fail), "
            "by client, result, factor and reason; empty factor/reason where there is none.",
            ["client", "result", "factor", "reason"], registry=registry)
        self.duration = Histogram(
            "radius_mfa_request_duration_seconds",
            "Time from an Access-Request to its answer, by client; "
            "out-of-band factors (push, voice) keep the NAS waiting.",
            ["client"], buckets=DURATION_BUCKETS, registry=registry)
        self.codes_sent = Counter(
            "radius_mfa_codes_sent_total",
            "Answers telling the user a code is on its way, by channel and the provider that "
            "delivered it (a NAS retry that joins a code already sent counts again).",
            ["channel", "provider"], registry=registry)
        self.delivery_failures = Counter(
            "radius_mfa_code_delivery_failures_total",
            "Codes that no provider of the channel delivered.",
            ["channel"], registry=registry)
        self.dropped = Counter(
            "radius_mfa_dropped_packets_total",
            "Packets dropped without an answer, by reason.",
            ["reason"], registry=registry)
        self.store_errors = Counter(
            "radius_mfa_store_errors_total",
            "Store calls that failed, by operation.",
            ["operation"], registry=registry)
        # the work behind the requests: what a benchmark divides by requests
        self.thread_calls = Counter(
            "radius_mfa_thread_calls_total",
            "Calls handed from the reactor to a thread and back (thread hops), by pool: "
            "store, hash, ldap.",
            ["pool"], registry=registry)
        self.store_transactions = Counter(
            "radius_mfa_store_transactions_total",
            "Transactions the store ran (a statement on its own is one), by kind: read, write.",
            ["kind"], registry=registry)
        # per worker: 0 as soon as any live worker skips the server
        self.upstream_up = Gauge(
            "radius_mfa_upstream_up",
            "1 while the primary backend's server is in use, 0 while it is skipped as dead.",
            ["backend", "server"], multiprocess_mode="livemin", registry=registry)
        # store-wide: every worker reads the same figure, the latest counts
        self.pending_challenges = Gauge(
            "radius_mfa_pending_challenges",
            "Access-Challenges waiting for their answer, in the whole store "
            "(every server sharing it).",
            multiprocess_mode="mostrecent", registry=registry)
        self.store_up = Gauge(
            "radius_mfa_store_up",
            "1 when the store answered its last ping, else 0.",
            multiprocess_mode="livemin", registry=registry)
        self._upstream_labels: dict[str, set[str]] = {}
        self.before_render: Callable[[], None] | None = None

    # --- what the service reports ------------------------------------------------
    def add_work(self, thread_calls: dict[str, int], transactions: dict[str, int]) -> None:
        """Thread hops by pool and store transactions by kind since the last call."""
        for pool, count in thread_calls.items():
            if count:
                self.thread_calls.labels(pool=pool).inc(count)
        for kind, count in transactions.items():
            if count:
                self.store_transactions.labels(kind=kind).inc(count)

    def observe(self, finished: Any) -> None:
        """Count one answered request (a :class:`radius_mfa.server.Finished`)."""
        decision = finished.decision
        client = finished.client.name
        factor = decision.factor or ""
        reason = decision.reason.value if decision.reason is not None else ""
        self.requests.labels(client=client, result=decision.verdict.value, factor=factor,
                             reason=reason).inc()
        self.duration.labels(client=client).observe(max(0.0, finished.duration_ms / 1000.0))
        if decision.provider and (decision.verdict is Verdict.CHALLENGE
                                  or decision.reason is Reason.CODE_SENT):
            self.codes_sent.labels(channel=factor, provider=decision.provider).inc()
        elif decision.reason is Reason.DELIVERY_FAILED:
            self.delivery_failures.labels(channel=factor).inc()

    def drop(self, reason: DropReason | str) -> None:
        """Count one dropped packet (the DropLogger's observer)."""
        self.dropped.labels(reason=DropReason(reason).value).inc()

    def store_error(self, operation: str) -> None:
        """Count one failed store call (the AsyncStore's ``on_error``)."""
        self.store_errors.labels(operation=operation).inc()

    def set_upstreams(self, backend: str, health: Mapping[str, bool]) -> None:
        """The primary backend's servers, each up or not; servers no longer
        configured (after a reload) disappear from the output."""
        for server, up in health.items():
            self.upstream_up.labels(backend=backend, server=server).set(1 if up else 0)
        previous = self._upstream_labels.get(backend, set())
        for server in previous - set(health):
            self.upstream_up.remove(backend, server)
        self._upstream_labels[backend] = set(health)

    def set_pending_challenges(self, count: int) -> None:
        self.pending_challenges.set(count)

    def set_store_up(self, up: bool) -> None:
        self.store_up.set(1 if up else 0)

    def render(self) -> tuple[bytes, str]:
        """This process's figures, or every worker's in multi-process mode;
        ``before_render`` (when set) brings the counted work up to date first."""
        if self.before_render is not None:
            self.before_render()
        return render(self.registry)


def render(registry: CollectorRegistry | None, path: str | None = None) -> tuple[bytes, str]:
    """(body, content type) in the Prometheus text format.

    ``registry`` None: aggregate the multi-process directory ``path``
    (default ``$PROMETHEUS_MULTIPROC_DIR``); raises ValueError when there is none.
    """
    if registry is None:
        path = path or os.environ.get(MULTIPROC_ENV)
        if not path or not os.path.isdir(path):
            raise ValueError(f"no multi-process metrics directory ({MULTIPROC_ENV} is unset "
                             "or not a directory)")
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=path)
    return generate_latest(registry), CONTENT_TYPE


def multiprocess_store_up(path: str | None = None) -> bool | None:
    """The workers' ``radius_mfa_store_up`` aggregated (0 if any live worker's
    last ping failed): True, False, or None when no worker has reported yet.
    For a supervisor's health check."""
    path = path or os.environ.get(MULTIPROC_ENV)
    if not path or not os.path.isdir(path):
        return None
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)
    value = registry.get_sample_value("radius_mfa_store_up")
    return None if value is None else value >= 1


# --- health ------------------------------------------------------------------------
class ServiceHealth:
    """What ``/health`` answers for one serving process; pure (a clock, no I/O).

    The service reports each store ping (:meth:`ping_started`,
    :meth:`ping_finished`) and the start of a shutdown (:meth:`mark_stopping`).
    The store was just opened when this is made, so it counts as answering
    until ``stale_after`` seconds pass without a successful ping.
    """

    def __init__(self, clock: Callable[[], float], *, server: str, workers: int = 1,
                 dead_upstreams: Callable[[], list[str]] = list,
                 stale_after: float = STORE_STALE_SECONDS):
        self._clock = clock
        self.server = server
        self.workers = workers
        self._dead_upstreams = dead_upstreams
        self._stale_after = stale_after
        self._store_ok = True
        self._answered_at = clock()
        self._pinging = False
        self._stopping = False

    def ping_started(self) -> bool:
        """A ping is about to go out; False (send none) while one is still outstanding."""
        if self._pinging:
            return False
        self._pinging = True
        return True

    def ping_finished(self, ok: bool) -> None:
        self._pinging = False
        self._store_ok = ok
        if ok:
            self._answered_at = self._clock()

    @property
    def store_ok(self) -> bool:
        """Whether the last ping was answered."""
        return self._store_ok

    def mark_stopping(self) -> None:
        self._stopping = True

    def __call__(self) -> tuple[bool, dict[str, Any]]:
        problems = []
        silent = self._clock() - self._answered_at
        if self._stopping:
            problems.append("shutting down")
        if not self._store_ok:
            store = "failing"
            problems.append("store: the last ping failed")
        elif silent > self._stale_after:
            store = "not answering"
            problems.append(f"store: no answer for {silent:.0f} s")
        else:
            store = "ok"
        detail: dict[str, Any] = {"server": self.server, "workers": self.workers, "store": store,
                                  "dead_upstreams": list(self._dead_upstreams())}
        if problems:
            detail["problems"] = problems
        return not problems, detail


def workers_health(*, server: str, workers: int, alive: Callable[[], int],
                   stopping: Callable[[], bool], path: str | None = None) -> HealthCheck:
    """The health check of a supervisor of ``workers`` processes, for
    :func:`serve_threaded`: ok while every worker runs, no shutdown has begun
    and no live worker's last store ping failed (``radius_mfa_store_up`` in
    the multi-process directory ``path``). ``alive()`` counts the running
    workers; both callables are called from the HTTP thread."""

    def check() -> tuple[bool, dict[str, Any]]:
        problems = []
        running = alive()
        store_up = multiprocess_store_up(path)
        if stopping():
            problems.append("shutting down")
        if running < workers:
            problems.append(f"{running} of {workers} workers running")
        if store_up is False:
            problems.append("store: a worker's last ping failed")
        detail: dict[str, Any] = {
            "server": server, "workers": workers, "workers_running": running,
            "store": {True: "ok", False: "failing", None: "unknown"}[store_up]}
        if problems:
            detail["problems"] = problems
        return not problems, detail

    return check


def health_response(health: HealthCheck) -> tuple[int, bytes]:
    """(HTTP status, JSON body) for a health check; a check that raises is a 503."""
    try:
        ok, detail = health()
    except Exception:
        log.exception("health.check_failed")
        ok, detail = False, {"problems": ["the health check failed"]}
    body = {"status": "ok" if ok else "unavailable", **detail}
    if not ok:
        body.setdefault("problems", [])
    return (200 if ok else 503), (json.dumps(body, sort_keys=True) + "\n").encode()


# --- HTTP on the reactor (one process) ----------------------------------------------------
def parse_address(address: Any) -> tuple[str, int]:
    """A ListenAddress, or ``"host:port"`` / ``"[v6]:port"`` → (host, port)."""
    if hasattr(address, "host") and hasattr(address, "port"):
        return address.host, int(address.port)
    text = str(address)
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT or [V6]:PORT, got {text!r}")
    return host, int(port)


def _metrics_source(metrics: Any) -> Callable[[], tuple[bytes, str]]:
    return metrics.render if hasattr(metrics, "render") else metrics


class MetricsResource(Resource):
    """``GET /metrics``: the Prometheus text of ``metrics`` (a Metrics, or a
    callable returning (body, content type))."""
    isLeaf = True

    def __init__(self, metrics: Any):
        super().__init__()
        self._render = _metrics_source(metrics)

    def render_GET(self, request) -> bytes:
        try:
            body, content_type = self._render()
        except Exception:
            log.exception("metrics.render_failed")
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"metrics unavailable\n"
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return body


class HealthResource(Resource):
    """``GET /health``: 200 or 503 with a JSON body (see the module doc)."""
    isLeaf = True

    def __init__(self, health: HealthCheck):
        super().__init__()
        self._health = health

    def render_GET(self, request) -> bytes:
        status, body = health_response(self._health)
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return body


class _QuietSite(Site):
    """A scrape every few seconds is not worth a log line."""
    noisy = False
    displayTracebacks = False

    def log(self, request) -> None:
        pass


class _Root(Resource):
    def getChild(self, path: bytes, request) -> Resource:
        from twisted.web import pages

        return pages.notFound("Not found", "Try /metrics or /health.")


def http_root(metrics: Any, health: HealthCheck) -> Resource:
    root = _Root()
    root.putChild(b"metrics", MetricsResource(metrics))
    root.putChild(b"health", HealthResource(health))
    return root


def listen_http(reactor, address: Any, metrics: Any, health: HealthCheck):
    """Serve ``/metrics`` and ``/health`` on ``address`` (a ListenAddress or
    ``"host:port"``); returns the listening port (``stopListening()`` to close).
    Raises CannotListenError when the address is taken."""
    host, port = parse_address(address)
    return reactor.listenTCP(port, _QuietSite(http_root(metrics, health)), interface=host)


# --- HTTP in a thread (the supervisor of several workers) --------------------------------
class _Handler(BaseHTTPRequestHandler):
    server_version = "radius-mfa"
    server: "_ThreadedServer"

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        if path == "/metrics":
            try:
                body, content_type = render(None, self.server.multiprocess_dir)
                status = 200
            except Exception:
                log.exception("metrics.render_failed")
                status, body, content_type = 500, b"metrics unavailable\n", "text/plain; charset=utf-8"
        elif path == "/health":
            status, body = health_response(self.server.health)
            content_type = "application/json"
        else:
            status, body, content_type = 404, b"not found: try /metrics or /health\n", "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadedServer(ThreadingHTTPServer):
    daemon_threads = True
    multiprocess_dir: str | None
    health: HealthCheck


def serve_threaded(address: Any, health: HealthCheck, *,
                   path: str | None = None) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Serve ``/metrics`` (every worker's figures, aggregated from the
    multi-process directory ``path``, default ``$PROMETHEUS_MULTIPROC_DIR``
    read at each scrape) and ``/health`` (``health()``, called in the HTTP
    thread) from a daemon thread. Returns (server, thread); :func:`stop_threaded`
    ends both. Raises OSError when the address cannot be bound."""
    host, port = parse_address(address)

    class Server(_ThreadedServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    server = Server((host, port), _Handler)
    server.multiprocess_dir = path
    server.health = health
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                              name="metrics-http", daemon=True)
    thread.start()
    return server, thread


def stop_threaded(server: ThreadingHTTPServer, thread: threading.Thread, timeout: float = 5.0) -> None:
    """Stop a :func:`serve_threaded` server and wait for its thread."""
    server.shutdown()
    server.server_close()
    thread.join(timeout)
