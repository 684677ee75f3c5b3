"""The listening sockets' receive buffer.

RADIUS clients send in bursts: a VPN concentrator that reconnects a few
thousand users, a NAS retrying after a failover, a thousand requests in
flight towards a slow upstream. Linux's default UDP receive buffer
(``net.core.rmem_default``, ~208 KiB: about 1,000 small datagrams counted
with their overhead) fills while the reactor is busy, and the kernel drops
what does not fit, silently for the server (it shows in ``RcvbufErrors`` of
``/proc/net/snmp``). Measured with 1,000 requests in flight: every timeout
was such a drop. So each listening socket asks for 4 MiB; the kernel caps
the request at ``net.core.rmem_max``, which the administrator may raise.
"""

from __future__ import annotations

import socket

import structlog

log = structlog.get_logger("radius_mfa.udp")

RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024


def enlarge_receive_buffer(sock: socket.socket, wanted: int = RECEIVE_BUFFER_BYTES) -> int:
    """Ask for a ``wanted``-byte receive buffer; returns what the kernel
    granted (it reports double the usable size, and caps at rmem_max)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    except OSError as exc:
        log.warning("udp.receive_buffer_failed", error=str(exc))
        return 0
    if granted < wanted:
        log.info("udp.receive_buffer_capped", wanted=wanted, granted=granted,
                 detail="raise net.core.rmem_max for a larger buffer")
    return granted
