"""The RadSec connection without sockets or TLS: framing by the Length
field, closing on a bad length, the idle timer (not while a request waits),
and the packet path's behaviour towards a TLS peer (duplicates per
connection, refusal closes). Twisted's StringTransport and Clock stand in
for the network and time."""

from __future__ import annotations

import ipaddress

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from radius_mfa.config import ClientConfig
from radius_mfa.radius import codec
from radius_mfa.radius.clients import ClientTable
from radius_mfa.radius.droplog import DropLogger
from radius_mfa.radsec import RadsecConnection, RadsecFactory

TLS_CLIENT = ClientConfig(name="nas-tls", network=ipaddress.ip_network("127.0.0.1/32"), secret=b"radsec",
                          transport="tls", cert_name="nas1.example.org")


class Log:
    def __init__(self):
        self.lines = []

    def warning(self, event, **fields):
        self.lines.append((event, fields))

    info = error = debug = warning


class Runtime:
    clients = ClientTable([TLS_CLIENT])


class Pipeline:
    """Records what the connection hands to the packet path."""

    def __init__(self, clock):
        self.runtime = Runtime()
        self.packets = []
        self.drops = []
        self.droplog = DropLogger(Log(), clock)

    def receive(self, data, peer):
        self.packets.append((data, peer))

    def drop(self, reason, host, client, detail=None, trace=None):
        self.drops.append((reason, detail))


class Address:
    def __init__(self, host, port=40000):
        self.host, self.port = host, port


def connect(idle: float = 30.0):
    clock = Clock()
    pipeline = Pipeline(clock)
    factory = RadsecFactory(pipeline, reactor=clock, idle_timeout=idle)
    connection = factory.buildProtocol(Address("127.0.0.1"))
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.cert_names = ("nas1.example.org",)
    connection.handshakeCompleted()
    return clock, pipeline, factory, connection, transport


def status_server(ident: int) -> bytes:
    return codec.build_access_request(b"radsec", None, id=ident, code=codec.STATUS_SERVER)


def test_packets_are_framed_by_the_length_field_across_chunks():
    _, pipeline, _, connection, _ = connect()
    one, two, three = status_server(1), status_server(2), status_server(3)
    stream = one + two + three
    connection.dataReceived(stream[:3])
    connection.dataReceived(stream[3:30])
    assert [p for p, _ in pipeline.packets] == []
    connection.dataReceived(stream[30:])
    assert [p for p, _ in pipeline.packets] == [one, two, three]
    assert all(peer is connection for _, peer in pipeline.packets)
    assert connection.transport_name == "tls" and connection.scope[0] == "tls"


def test_attack_oversized_length_closes_the_connection():
    _, pipeline, factory, connection, transport = connect()
    connection.dataReceived(bytes((1, 1, 0x10, 0x01)) + b"\x00" * 16)   # 4097
    assert transport.disconnecting and pipeline.packets == []
    assert pipeline.drops == [("malformed", "length field 4097 outside 20..4096")]
    connection.dataReceived(status_server(1))                           # nothing more is read
    assert pipeline.packets == []


def test_attack_length_below_header_closes_the_connection():
    _, pipeline, _, connection, transport = connect()
    connection.dataReceived(bytes((1, 1, 0, 19)) + b"\x00" * 30)
    assert transport.disconnecting and pipeline.packets == []


def test_idle_connection_closes_after_the_timeout_and_traffic_restarts_the_clock():
    clock, _, _, connection, transport = connect(idle=30)
    clock.advance(20)
    connection.dataReceived(status_server(1))
    clock.advance(20)
    assert not transport.disconnecting
    connection.send(b"reply")
    clock.advance(29)
    assert not transport.disconnecting
    clock.advance(2)
    assert transport.disconnecting


def test_connection_waiting_for_an_answer_is_not_idle():
    clock, _, _, connection, transport = connect(idle=30)
    connection.dataReceived(status_server(1))
    connection.deciding(+1)                 # a push waits
    clock.advance(95)
    assert not transport.disconnecting
    connection.deciding(-1)
    connection.send(b"reply")
    clock.advance(31)
    assert transport.disconnecting


def test_handshake_must_finish_in_time():
    clock = Clock()
    factory = RadsecFactory(Pipeline(clock), reactor=clock, idle_timeout=60)
    connection = factory.buildProtocol(Address("127.0.0.1"))
    transport = StringTransport()
    connection.makeConnection(transport)
    clock.advance(11)
    assert transport.disconnecting


def test_attack_address_without_tls_client_gets_no_connection():
    clock = Clock()
    pipeline = Pipeline(clock)
    factory = RadsecFactory(pipeline, reactor=clock, idle_timeout=60)
    assert factory.buildProtocol(Address("192.0.2.66")) is None


def test_peer_admits_a_client_only_with_its_cert_name():
    _, _, _, connection, _ = connect()
    assert connection.admits(TLS_CLIENT)
    connection.cert_names = ("other.example.org",)
    assert not connection.admits(TLS_CLIENT)


def test_replies_after_close_are_dropped_quietly():
    _, _, _, connection, transport = connect()
    connection.refuse("malformed")
    connection.send(b"late reply")
    assert transport.value() == b""


def test_connections_have_separate_duplicate_scopes():
    _, _, factory, first, _ = connect()
    second = factory.buildProtocol(Address("127.0.0.1"))
    assert isinstance(second, RadsecConnection) and second.scope != first.scope
