"""Logging and the audit trail.

``configure_logging`` sets structlog up once for ``serve``: one processor chain,
JSON on a pipe and console output when a person watches, a redaction step that
removes passwords, codes and secrets whatever a call site passed, and Twisted's
own log events routed into the same stream.

``AuditLog`` writes the one JSON line per finished authentication that docs/reference.md
describes, to ``audit.file`` ("-" is stdout), and keeps it in the store for
``report auth``.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, Callable, TextIO

import structlog

# Keys whose values never reach a log line, whatever their case.
SENSITIVE_KEYS = frozenset({
    "password", "passwd", "user_password", "secret", "shared_secret", "token_secret",
    "code", "otp", "answer", "state", "password_hash", "authenticator",
    "message_authenticator", "bind_password", "auth_token", "key",
    "signature", "pairing_token", "private_key", "number",
})
REDACTED = "[redacted]"


def redact(_logger: Any, _method: str, event: dict) -> dict:
    """structlog processor: blank every value whose key names a secret."""
    for key in list(event):
        if key.lower() in SENSITIVE_KEYS:
            event[key] = REDACTED
    return event


def _level_number(level: str) -> int:
    return getattr(logging, level.upper(), logging.INFO)


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog for the server process (stderr by default)."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer = (structlog.dev.ConsoleRenderer(colors=False) if fmt == "console"
                else structlog.processors.JSONRenderer(sort_keys=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_level_number(level)),
        logger_factory=structlog.WriteLoggerFactory(stream),   # one write() per line: workers share stderr
        cache_logger_on_first_use=False,
    )


def bridge_twisted_logging() -> None:
    """Send Twisted's own log events (and failures) into structlog."""
    from twisted.logger import LogLevel, formatEvent, globalLogBeginner

    log = structlog.get_logger("twisted")
    levels = {LogLevel.debug: log.debug, LogLevel.info: log.debug,
              LogLevel.warn: log.warning, LogLevel.error: log.error,
              LogLevel.critical: log.critical}

    def observer(event: dict) -> None:
        emit = levels.get(event.get("log_level"), log.info)
        failure = event.get("log_failure")
        text = formatEvent(event)
        if failure is not None:
            log.error("twisted.failure", message=text,
                      exception=failure.getTraceback())
        else:
            emit("twisted", message=text)

    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False,
                                     discardBuffer=True)


def iso_time(epoch: float | None, timespec: str = "milliseconds") -> str | None:
    """Epoch seconds → ISO 8601 UTC with a ``Z`` (``2026-11-25T10:00:00.123Z``);
    None stays None. ``timespec`` as for ``datetime.isoformat``."""
    if epoch is None:
        return None
    moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc)
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")


class AuditLog:
    """One JSON line per finished authentication, to a file and to the store.

    ``keep`` is called with each record (the server passes the store's
    ``add_auth_record`` through its thread pool); a failure there is logged,
    never raised into the request.
    """

    def __init__(self, path: str, keep: Callable[[dict], Any] | None = None):
        self.path = path
        self._keep = keep
        self._stream: TextIO | None = None
        self._owns_stream = False
        self.open()

    def open(self) -> None:
        if self.path == "-":
            self._stream, self._owns_stream = sys.stdout, False
        else:
            self._stream = open(self.path, "a", encoding="utf-8", buffering=1)
            self._owns_stream = True

    def reopen(self) -> None:
        """After log rotation (SIGHUP): a fresh handle on the same path."""
        self.close()
        self.open()

    def write(self, record: dict) -> None:
        record = redact(None, "audit", dict(record))
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
        try:
            self._stream.write(line + "\n")
            self._stream.flush()
        except (OSError, ValueError) as exc:
            structlog.get_logger("audit").error("audit.write_failed", error=str(exc))
        if self._keep is not None:
            self._keep(record)

    def close(self) -> None:
        if self._owns_stream and self._stream is not None:
            self._stream.close()
        self._stream = None


def user_ip_from(calling_station_id: str | None) -> str | None:
    """Calling-Station-Id holds the user's address on VPNs; a MAC on Wi-Fi."""
    if not calling_station_id:
        return None
    import ipaddress
    candidate = calling_station_id.strip()
    if candidate.startswith("[") and "]" in candidate:
        candidate = candidate[1:candidate.index("]")]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return None


def audit_record(finished, server_name: str, now: float) -> dict:
    """The audit record of docs/reference.md for one answered request (a ``Finished``)."""
    from radius_mfa.masking import mask_email, mask_phone

    decision = finished.decision
    user = decision.user
    info = decision.user_info or {}
    return {
        "time": iso_time(now),
        "server": server_name,
        "server_ip": finished.server_ip,
        "client": finished.client.name,
        "client_ip": finished.client_ip,
        "transport": finished.transport,   # udp | tls (RADIUS over TLS)
        "protocol": finished.protocol,     # radius/1.0 | radius/1.1 (RFC 9765)
        "user_ip": user_ip_from(finished.calling_station_id),
        "calling_station_id": finished.calling_station_id,
        "user": decision.user_name,
        "display_name": (user.display_name if user else None) or info.get("display_name"),
        "email": mask_email((user.email if user else None) or info.get("email")),
        "phone": mask_phone((user.phone if user else None) or info.get("phone")),
        "device": decision.device,
        "primary": decision.primary or None,
        "method": finished.method,
        "factor": decision.factor,
        "provider": decision.provider,   # which delivery provider sent the code, where one did
        "result": decision.verdict.value,
        "reason": decision.reason.value if decision.reason is not None else None,
        "mode": finished.client.mode.value,
        "duration_ms": finished.duration_ms,
        "request_id": finished.request_id,
    }
