"""RADIUS over TLS configuration and matching, without sockets: the `tls`
listener, server.tls, clients with `transport: tls` and `cert_name`,
check-config's messages, clients matched within their transport, and the
dialect chosen by ALPN."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from peers.pki import Pki
from radius_mfa.cli import main
from radius_mfa.config import ClientConfig, ListenAddress, load_config
from radius_mfa.errors import ConfigError
from radius_mfa.radius.clients import ClientTable
from radius_mfa.radius.dialect import DIALECTS, RADIUS_10
from radius_mfa.radsec import certificate_names, name_matches


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca = Pki(tmp_path_factory.mktemp("pki"))
    ca.server_cert = ca.server()
    ca.other = Pki(tmp_path_factory.mktemp("other"), name="other-ca").server("other")
    return ca


def tls_section(pki, *, cert=None, key=None, ca=None, extra: str = "") -> str:
    return (f"  tls:\n    cert_file: {cert or pki.server_cert.cert}\n"
            f"    key_file: {key or pki.server_cert.key}\n    ca_file: {ca or pki.ca_file}\n{extra}")


def config_text(pki, *, listen: str = '    - tls: "127.0.0.1:2083"\n', tls: str | None = "",
                clients: str = "") -> str:
    tls = tls_section(pki) if tls == "" else (tls or "")
    return f"""server:
  listen:
    - udp: "127.0.0.1:1812"
{listen}{tls}clients:
  - name: vpn
    address: 127.0.0.1
    secret: s3cret-value-long-enough
{clients}"""


TLS_CLIENT = """  - name: vpn-tls
    address: 127.0.0.1
    transport: tls
    cert_name: nas1.example.org
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "radius-mfa.yaml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def test_tls_listener_server_tls_and_tls_client_load(tmp_path, pki):
    config = load_config(write(tmp_path, config_text(pki, clients=TLS_CLIENT)))
    assert config.server.listen == (ListenAddress("127.0.0.1", 1812),
                                    ListenAddress("127.0.0.1", 2083, "tls"))
    assert config.server.tls.ca_file == str(pki.ca_file) and config.server.tls.idle_timeout == 60.0
    udp, tls = config.clients
    assert (udp.transport, tls.transport, tls.cert_name) == ("udp", "tls", "nas1.example.org")
    assert tls.secret == b"radsec"                        # RFC 6614's default


def test_a_udp_and_a_tls_client_may_share_an_address_but_not_two_of_one_transport(tmp_path, pki):
    twice = TLS_CLIENT + TLS_CLIENT.replace("vpn-tls", "vpn-tls-2")
    path = write(tmp_path, config_text(pki, clients=twice))
    assert problems_of(path) == [
        f"{path}:18: clients[2].address: 127.0.0.1/32 is also the address of tls client 'vpn-tls' (line 14)"]


def test_tls_listener_without_server_tls_is_an_error(tmp_path, pki):
    path = write(tmp_path, config_text(pki, tls=None))
    assert problems_of(path) == [
        f"{path}:4: server.listen[1].tls: a tls listener needs server.tls (cert_file, key_file, ca_file)"]


def test_tls_client_without_tls_listener_is_an_error(tmp_path, pki):
    path = write(tmp_path, config_text(pki, listen="", tls=None, clients=TLS_CLIENT))
    assert problems_of(path) == [
        f"{path}:10: clients[1].transport: tls needs a tls listener in server.listen "
        '(e.g. - tls: "0.0.0.0:2083")']


def test_server_tls_files_are_checked_with_precise_messages(tmp_path, pki):
    missing = tmp_path / "missing.pem"
    path = write(tmp_path, config_text(pki, tls=tls_section(pki, ca=missing)))
    assert problems_of(path) == [
        f"{path}:8: server.tls.ca_file: cannot read {missing}: No such file or directory"]
    path = write(tmp_path, config_text(pki, tls=tls_section(pki, key=pki.other.key)))
    assert problems_of(path) == [
        f"{path}:7: server.tls.key_file: {pki.other.key} is not the key of the certificate in "
        f"{pki.server_cert.cert}"]
    path = write(tmp_path, config_text(pki, tls=tls_section(pki, cert=pki.server_cert.key)))
    assert problems_of(path) == [f"{path}:6: server.tls.cert_file: {pki.server_cert.key} holds no PEM certificate"]
    path = write(tmp_path, config_text(pki, tls="  tls:\n    cert_file: x.pem\n    idle_timeout: 0\n"))
    assert problems_of(path) == [
        f"{path}:6: server.tls.key_file: missing (required)",
        f"{path}:6: server.tls.ca_file: missing (required)",
        f"{path}:7: server.tls.idle_timeout: must be greater than 0, got 0",
    ]


def test_listen_entry_with_udp_and_tls_is_an_error(tmp_path, pki):
    path = write(tmp_path, config_text(pki, listen='    - {udp: "127.0.0.1:1", tls: "127.0.0.1:2"}\n'))
    assert problems_of(path) == [f"{path}:4: server.listen[1].tls: give udp or tls, not both (one address per entry)"]


def test_cert_name_must_be_one_plain_name(tmp_path, pki):
    path = write(tmp_path, config_text(pki, clients=TLS_CLIENT.replace("nas1.example.org", '"*.example.org"')))
    assert problems_of(path) == [f"{path}:16: clients[1].cert_name: must be one name, without spaces or wildcards"]


def test_server_tls_without_tls_listener_is_a_warning(tmp_path, pki):
    config = load_config(write(tmp_path, config_text(pki, listen="")))
    assert any("server.tls: warning: no tls listener" in w for w in config.warnings)


def test_check_config_accepts_a_tls_setup_and_names_the_tls_problem(tmp_path, pki, capsys):
    good = write(tmp_path, config_text(pki, clients=TLS_CLIENT).replace("2083", "0")
                 + "store: sqlite:///radius-mfa.db\n")
    assert main(["-c", str(good), "check-config"]) == 0, capsys.readouterr()
    capsys.readouterr()
    bad = write(tmp_path, config_text(pki, tls=None, clients=TLS_CLIENT))
    assert main(["-c", str(bad), "check-config"]) == 2
    assert "server.listen[1].tls: a tls listener needs server.tls" in capsys.readouterr().err


# --- matching --------------------------------------------------------------------------------

def client(name: str, address: str, transport: str = "udp") -> ClientConfig:
    return ClientConfig(name=name, network=ipaddress.ip_network(address), secret=b"s", transport=transport)


def test_clients_are_matched_within_their_transport():
    table = ClientTable([client("vpn", "192.0.2.0/24"), client("vpn-tls", "192.0.2.7", "tls"),
                         client("wide-tls", "198.51.100.0/24", "tls")])
    assert table.lookup("192.0.2.7").name == "vpn"
    assert table.lookup("192.0.2.7", "tls").name == "vpn-tls"
    assert table.lookup("192.0.2.8", "tls") is None              # a udp client's address opens no TLS
    assert table.lookup("198.51.100.9") is None                   # nor a tls client's a datagram
    assert table.lookup("::ffff:198.51.100.9", "tls").name == "wide-tls"


def test_certificate_names_are_san_dns_then_cn(pki):
    from cryptography import x509

    issued = pki.issue("named", "CN-Name.example.org", dns=("nas1.example.org", "nas1-alt.example.org"))
    names = certificate_names(x509.load_pem_x509_certificate(issued.cert.read_bytes()))
    assert names == ("nas1.example.org", "nas1-alt.example.org", "cn-name.example.org")
    assert name_matches("NAS1.example.org.", names) and name_matches(None, names)
    assert not name_matches("example.org", names)


def test_rfc6614_dialect_is_offered_by_alpn_and_is_the_default():
    assert DIALECTS[b"radius/1.0"] is RADIUS_10
    assert RADIUS_10.message_authenticator and RADIUS_10.permitted(client("x", "192.0.2.1", "tls"))
