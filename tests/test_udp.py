"""The listening sockets ask for a receive buffer that holds a burst."""

from __future__ import annotations

import socket

from radius_mfa.udp import RECEIVE_BUFFER_BYTES, enlarge_receive_buffer


def test_the_receive_buffer_grows_beyond_the_default_up_to_what_the_kernel_allows():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        default = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        granted = enlarge_receive_buffer(sock)
        with open("/proc/sys/net/core/rmem_max") as f:
            ceiling = int(f.read())
        # Linux doubles the request for its bookkeeping and caps it at rmem_max
        assert granted == 2 * min(RECEIVE_BUFFER_BYTES, ceiling)
        assert granted == sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert ceiling <= default // 2 or granted > default
