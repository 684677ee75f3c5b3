"""Which configured client (NAS) a packet comes from, by source address and transport.

Runs for every packet before anything else (the secret depends on it), so
the lookup is a handful of dict probes: networks are grouped by prefix
length and keyed by their network bits; the longest matching prefix wins.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence

from radius_mfa.config import ClientConfig

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


KNOWN_SOURCES = 4096       # lookups remembered by source address


class _PrefixTable:
    """Longest-prefix match for one address family."""

    def __init__(self, max_prefix: int):
        self._max_prefix = max_prefix
        self._by_length: dict[int, dict[int, ClientConfig]] = {}
        self._lengths: tuple[int, ...] = ()

    def add(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network,
            client: ClientConfig) -> None:
        shift = self._max_prefix - network.prefixlen
        bucket = self._by_length.setdefault(network.prefixlen, {})
        # the first client listed for a network wins, as in the config file
        bucket.setdefault(int(network.network_address) >> shift, client)
        self._lengths = tuple(sorted(self._by_length, reverse=True))

    def lookup(self, address: int) -> ClientConfig | None:
        for length in self._lengths:
            client = self._by_length[length].get(address >> (self._max_prefix - length))
            if client is not None:
                return client
        return None


class ClientTable:
    """The configured clients, searchable by source IP (v4 and v6) within
    their transport: a ``udp`` entry and a ``tls`` entry may name the same
    address, and a datagram never matches a tls entry (nor a TLS connection
    a udp one).

    An IPv4-mapped IPv6 source (``::ffff:192.0.2.1``, what a dual-stack
    socket reports for IPv4 peers) matches the IPv4 networks.
    """

    def __init__(self, clients: Sequence[ClientConfig]):
        self._clients = tuple(clients)
        self._tables: dict[str, tuple[_PrefixTable, _PrefixTable]] = {}
        # answers by source, so that a NAS's address is parsed once, not per
        # packet; emptied when full (spoofed sources cannot grow it)
        self._known: dict[tuple[str, str], ClientConfig | None] = {}
        for client in self._clients:
            tables = self._tables.get(client.transport)
            if tables is None:
                tables = self._tables[client.transport] = (_PrefixTable(32), _PrefixTable(128))
            table = tables[0] if client.network.version == 4 else tables[1]
            table.add(client.network, client)

    def lookup(self, ip: str, transport: str = "udp") -> ClientConfig | None:
        """The ``transport`` client whose network holds ``ip`` most
        specifically, or None (also for a string that is not an IP address)."""
        key = (ip, transport)
        try:
            return self._known[key]
        except (KeyError, TypeError):
            pass
        client = self._find(ip, transport)
        if isinstance(ip, str):
            if len(self._known) >= KNOWN_SOURCES:
                self._known.clear()
            self._known[key] = client
        return client

    def _find(self, ip: str, transport: str) -> ClientConfig | None:
        tables = self._tables.get(transport)
        if tables is None:
            return None
        address = _parse(ip)
        if address is None:
            return None
        v4, v6 = tables
        if address.version == 6:
            mapped = address.ipv4_mapped
            if mapped is not None:
                return v4.lookup(int(mapped)) or v6.lookup(int(address))
            return v6.lookup(int(address))
        return v4.lookup(int(address))

    def has_transport(self, transport: str) -> bool:
        return transport in self._tables

    def __len__(self) -> int:
        return len(self._clients)

    def __iter__(self) -> Iterator[ClientConfig]:
        return iter(self._clients)


def _parse(ip: str) -> _IPAddress | None:
    if not isinstance(ip, str):   # ip_address() would take an int too
        return None
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        # fe80::1%eth0: the zone names the interface, not part of the address
        address = ipaddress.IPv6Address(ip.partition("%")[0])
    return address
