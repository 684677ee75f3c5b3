"""Client lookup by source address: longest prefix wins, v4 and v6."""

from __future__ import annotations

import ipaddress
import timeit

import pytest

from radius_mfa.config import ClientConfig
from radius_mfa.radius.clients import ClientTable


def client(name: str, network: str) -> ClientConfig:
    return ClientConfig(name=name, network=ipaddress.ip_network(network), secret=b"s3cret")


@pytest.fixture
def table() -> ClientTable:
    return ClientTable([
        client("lan", "192.0.2.0/24"),
        client("vpn", "192.0.2.128/25"),
        client("fw", "192.0.2.200/32"),
        client("everything-v4", "0.0.0.0/0"),
        client("v6-site", "2001:db8::/32"),
        client("v6-host", "2001:db8::10/128"),
    ])


@pytest.mark.parametrize("ip, expected", [
    ("192.0.2.1", "lan"),
    ("192.0.2.129", "vpn"),
    ("192.0.2.200", "fw"),
    ("198.51.100.1", "everything-v4"),
    ("2001:db8::1", "v6-site"),
    ("2001:db8::10", "v6-host"),
    ("::ffff:192.0.2.200", "fw"),
    ("::ffff:192.0.2.5", "lan"),
])
def test_longest_prefix_wins(table, ip, expected):
    assert table.lookup(ip).name == expected


@pytest.mark.parametrize("ip", ["2001:db9::1", "::1", "fe80::1"])
def test_unmatched_v6_is_unknown(table, ip):
    assert table.lookup(ip) is None


@pytest.mark.parametrize("ip", ["", "not-an-ip", "192.0.2", "192.0.2.1.5", "[::1]", "192.0.2.1:1812"])
def test_invalid_address_is_unknown(table, ip):
    assert table.lookup(ip) is None


def test_non_string_is_unknown(table):
    assert table.lookup(3221225985) is None   # an int would parse as 192.0.2.1


def test_ipv4_mapped_source_does_not_match_without_v4_networks():
    only_v6 = ClientTable([client("v6", "2001:db8::/32")])
    assert only_v6.lookup("::ffff:192.0.2.1") is None


def test_scoped_link_local_address_matches():
    table = ClientTable([client("ll", "fe80::/64")])
    assert table.lookup("fe80::1%eth0").name == "ll"


def test_single_address_client():
    table = ClientTable([client("one", "10.1.2.3/32")])
    assert table.lookup("10.1.2.3").name == "one"
    assert table.lookup("10.1.2.4") is None


def test_first_listed_client_wins_for_the_same_network():
    table = ClientTable([client("first", "10.0.0.0/8"), client("second", "10.0.0.0/8")])
    assert table.lookup("10.9.9.9").name == "first"


def test_empty_table():
    table = ClientTable([])
    assert table.lookup("192.0.2.1") is None and len(table) == 0


def test_table_lists_its_clients(table):
    assert len(table) == 6 and [c.name for c in table][0] == "lan"


def test_lookup_stays_fast_with_many_clients():
    clients = [client(f"nas{i}", f"10.{i // 256}.{i % 256}.0/24") for i in range(2000)]
    clients += [client(f"host{i}", f"172.16.{i // 256}.{i % 256}/32") for i in range(2000)]
    table = ClientTable(clients)
    assert table.lookup("10.7.200.9").name == "nas1992"          # 7 * 256 + 200
    assert table.lookup("10.7.208.9") is None
    assert table.lookup("172.16.3.4").name == f"host{3 * 256 + 4}"
    per_lookup = timeit.timeit(lambda: table.lookup("10.7.200.9"), number=2000) / 2000
    assert per_lookup < 100e-6   # a handful of dict probes, not a scan of 4000 networks


def test_a_flood_of_spoofed_sources_does_not_grow_the_lookup_memory():
    """Lookups are remembered by source address; a flood from many forged
    sources empties that memory rather than growing it, and answers stay right."""
    from radius_mfa.radius import clients as clients_module

    table = ClientTable([client("nas", "10.0.0.0/8")])
    for i in range(clients_module.KNOWN_SOURCES * 2 + 5):
        assert table.lookup(f"192.0.{i // 256 % 256}.{i % 256}") is None
    assert len(table._known) <= clients_module.KNOWN_SOURCES
    assert table.lookup("10.1.2.3").name == "nas"
    assert table.lookup("10.1.2.3").name == "nas"         # remembered, the same answer
