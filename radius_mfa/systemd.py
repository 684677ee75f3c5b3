"""sd_notify without libsystemd: one datagram to the notify socket.

`serve` says ``READY=1`` once it listens (``Type=notify`` units wait for it).
A worker of ``server.workers`` says it to its supervisor's private socket
instead, which says it to systemd once every worker has.
"""

from __future__ import annotations

import os
import socket

import structlog

log = structlog.get_logger("radius_mfa.systemd")


def notify(message: bytes, address: str | None = None) -> None:
    """Send ``message`` to ``address`` (default ``$NOTIFY_SOCKET``); nothing
    when there is none; a failure is logged, never raised."""
    address = os.environ.get("NOTIFY_SOCKET") if address is None else address
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
