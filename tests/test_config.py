"""The configuration loader: the sample loads, every problem is reported with
its line and key path, secrets come from files and never show in a message."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from peers.pki import Pki

from radius_mfa.config import (
    Config,
    HttpProviderConfig,
    ListenAddress,
    Mode,
    PasswordsConfig,
    RequireMA,
    SmtpProviderConfig,
    TwilioProviderConfig,
    UsernameConfig,
    load_config,
    mask_url_password,
)
from radius_mfa.errors import ConfigError

SAMPLE = Path(__file__).resolve().parent.parent / "etc" / "radius-mfa.yaml"

MINIMAL_CLIENT = """\
clients:
  - name: vpn
    address: 192.0.2.0/24
    secret: s3cret-value
"""


def write(tmp_path: Path, text: str, name: str = "radius-mfa.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


# --------------------------------------------------------------------------
# The sample
# --------------------------------------------------------------------------


def test_sample_loads_cleanly():
    config = load_config(SAMPLE)
    assert config.server.name == "mfa1"
    assert config.server.listen == (ListenAddress("127.0.0.1", 1812),)
    assert config.store == "sqlite:///" + str(SAMPLE.parent / "radius-mfa.db")
    assert [(c.name, str(c.network)) for c in config.clients] == [
        ("localhost", "127.0.0.1/32"), ("localhost6", "::1/128")]
    assert all(c.secret == b"testing123" for c in config.clients)
    assert all(c.mode is Mode.CHALLENGE for c in config.clients)
    assert all(c.require_message_authenticator is RequireMA.TRUE for c in config.clients)
    assert config.primary.backend == "local"
    assert config.factors.totp.window == 1
    assert config.factors.hotp.look_ahead == 10
    assert config.factors.sms is None and config.factors.push is None
    assert config.policy.delimiter == ","
    assert config.policy.lockout.failures == 5
    assert config.audit.file == "-"
    assert config.metrics is None


def uncomment_examples(text: str) -> str:
    """Turn the sample's commented-out YAML (lines like ``  #   key: value``
    or ``#     - item``) into live YAML; prose comments stay comments."""
    live = re.compile(r"^(\s*)# ( *(?:[a-z_]+:(?: |$)|- ).*)$")
    return "\n".join(live.sub(r"\1\2", line) for line in text.splitlines()) + "\n"


def test_every_commented_example_in_the_sample_is_valid(tmp_path: Path):
    for name in ("upstream.secret", "ldap.secret", "twilio.secret"):
        (tmp_path / name).write_text("example-secret\n")
    ca_file = tmp_path / "corp-ca.pem"
    ca_file.write_text("not checked beyond being readable\n")
    pki = Pki(tmp_path / "pki", name="nas-ca")          # the tls listener's files are loaded
    issued = pki.server("radsec")
    for source, target in ((issued.cert, "radsec.crt"), (issued.key, "radsec.key"), (pki.ca_file, "nas-ca.pem")):
        (tmp_path / target).write_bytes(source.read_bytes())
    (tmp_path / "radsec.key").chmod(0o600)
    text = uncomment_examples(SAMPLE.read_text()).replace("/etc/ssl/certs/corp-ca.pem", str(ca_file))
    config = load_config(write(tmp_path, text))
    assert [a.transport for a in config.server.listen] == ["udp", "udp", "tls"]
    assert config.server.tls.idle_timeout == 60
    tls_client = next(c for c in config.clients if c.transport == "tls")
    assert (tls_client.cert_name, tls_client.secret) == ("nas1.example.org", b"radsec")
    assert config.primary.radius.servers[0].host == "10.0.0.5"
    assert config.primary.radius.servers[0].secret == b"example-secret"
    assert config.primary.ldap.servers == ("ldaps://dc1.example.org", "ldap://dc2.example.org:389")
    assert config.primary.ldap.bind_password == "example-secret"
    assert config.primary.ldap.attributes.phone == ("mobile", "telephoneNumber")
    sms = config.factors.sms
    assert sms is not None and [p.type for p in sms.providers] == ["http", "twilio"]
    assert sms.providers[0].headers == (("Authorization", "Bearer change-me"),)
    assert sms.providers[1].auth_token == "example-secret"
    assert sms.providers[1].from_number == "+15005550006"
    assert config.factors.voice is not None and config.factors.voice.providers[0].name == "twilio-voice"
    email = config.factors.email
    assert email is not None and email.subject == "Your sign-in code"
    assert email.providers[0].from_address == "mfa@example.org"
    assert email.providers[0].port == 587 and email.providers[0].starttls
    push = config.factors.push
    assert push is not None and push.listen == ListenAddress("0.0.0.0", 8443)
    assert (push.pairing_ttl, push.rate_limit.sends, push.rate_limit.minutes) == (600.0, 5, 5.0)
    assert [(n.name, n.type, n.method, n.timeout) for n in push.notify] == [("chat", "webhook", "POST", 5.0)]
    assert "{number_hint}" in push.notify[0].body
    assert config.metrics is not None and config.metrics.listen == ListenAddress("127.0.0.1", 9812)


# --------------------------------------------------------------------------
# Defaults and shapes
# --------------------------------------------------------------------------


def test_an_empty_file_gives_all_defaults(tmp_path: Path):
    config = load_config(write(tmp_path, ""))
    assert config.clients == ()
    assert config.server == Config(path="x").server
    assert config.factors.sms is None and config.metrics is None


def test_ipv6_listen_and_client_network(tmp_path: Path):
    config = load_config(write(tmp_path, """\
server:
  listen:
    - udp: "[::]:1812"
    - udp: "0.0.0.0:1645"
clients:
  - name: v6-nas
    address: "2001:db8::/32"
    secret: x
  - name: v6-host
    address: "2001:db8:1::5"
    secret: y
"""))
    assert config.server.listen == (ListenAddress("::", 1812), ListenAddress("0.0.0.0", 1645))
    assert config.clients[0].network == ipaddress.ip_network("2001:db8::/32")
    assert config.clients[1].network == ipaddress.ip_network("2001:db8:1::5/128")


@pytest.mark.parametrize("written, expected", [
    ("true", RequireMA.TRUE), ("false", RequireMA.FALSE), ("yes", RequireMA.TRUE),
    ("auto", RequireMA.AUTO), ('"auto"', RequireMA.AUTO), ('"false"', RequireMA.FALSE),
])
def test_require_message_authenticator_takes_booleans_and_auto(tmp_path: Path, written, expected):
    path = write(tmp_path, MINIMAL_CLIENT + f"    require_message_authenticator: {written}\n")
    assert load_config(path).clients[0].require_message_authenticator is expected


def test_require_message_authenticator_refuses_other_values(tmp_path: Path):
    path = write(tmp_path, MINIMAL_CLIENT + "    require_message_authenticator: sometimes\n")
    assert problems_of(path) == [
        f"{path}:5: clients[0].require_message_authenticator: 'sometimes' is not one of true, false, auto"]


def test_modes(tmp_path: Path):
    path = write(tmp_path, MINIMAL_CLIENT + "    mode: second-factor-only\n    timeout: 50\n")
    client = load_config(path).clients[0]
    assert client.mode is Mode.SECOND_FACTOR_ONLY and client.timeout == 50.0


# --------------------------------------------------------------------------
# Paths relative to the config file
# --------------------------------------------------------------------------


def test_secret_file_is_read_relative_to_the_config_and_stripped(tmp_path: Path):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "vpn.secret").write_bytes(b"from-a-file\n")
    path = write(tmp_path, """\
clients:
  - name: vpn
    address: 10.0.0.1
    secret_file: secrets/vpn.secret
""")
    assert load_config(path).clients[0].secret == b"from-a-file"


def test_absolute_secret_file(tmp_path: Path):
    secret = tmp_path / "abs.secret"
    secret.write_bytes(b"absolute\r\n")
    (tmp_path / "conf").mkdir()
    path = write(tmp_path / "conf", f"""\
clients:
  - {{name: vpn, address: 10.0.0.1, secret_file: "{secret}"}}
""")
    assert load_config(path).clients[0].secret == b"absolute"


def test_relative_sqlite_store_resolves_against_the_config_dir(tmp_path: Path):
    path = write(tmp_path, 'store: "sqlite:///data/radius-mfa.db"\n')
    assert load_config(path).store == f"sqlite:///{tmp_path}/data/radius-mfa.db"
    assert load_config(path).store.startswith("sqlite:////")


def test_absolute_sqlite_store_and_postgresql_are_kept(tmp_path: Path):
    path = write(tmp_path, 'store: "sqlite:////var/lib/radius-mfa/x.db"\n')
    assert load_config(path).store == "sqlite:////var/lib/radius-mfa/x.db"
    path = write(tmp_path, 'store: "postgresql://mfa:pw@db.example.org/mfa"\n')
    assert load_config(path).store == "postgresql://mfa:pw@db.example.org/mfa"


def test_audit_file_resolves_but_dash_stays(tmp_path: Path):
    assert load_config(write(tmp_path, "audit: {file: logs/audit.jsonl}\n")).audit.file == str(
        tmp_path / "logs" / "audit.jsonl")
    assert load_config(write(tmp_path, 'audit: {file: "-"}\n')).audit.file == "-"


def test_postgresql_password_is_masked_in_problems(tmp_path: Path):
    path = write(tmp_path, 'store: "postgresql://mfa:hunter2@db:notaport/mfa"\n')
    assert problems_of(path) == [f"{path}:1: store: not a valid PostgreSQL URL: postgresql://mfa:***@db:notaport/mfa"]
    assert mask_url_password("postgresql://u:p@h:5432/d") == "postgresql://u:***@h:5432/d"
    assert mask_url_password("postgresql://h/d") == "postgresql://h/d"


def test_the_store_key_file_defaults_to_beside_the_config(tmp_path: Path):
    assert load_config(write(tmp_path, MINIMAL_CLIENT)).store_key_file == str(tmp_path / "store.key")


def test_the_store_key_file_resolves_against_the_config_dir(tmp_path: Path):
    config = load_config(write(tmp_path, MINIMAL_CLIENT + "store_key_file: keys/mfa.key\n"))
    assert config.store_key_file == str(tmp_path / "keys" / "mfa.key")
    config = load_config(write(tmp_path, MINIMAL_CLIENT + "store_key_file: /srv/mfa.key\n"))
    assert config.store_key_file == "/srv/mfa.key"


def test_a_store_key_file_that_is_not_a_path_is_refused(tmp_path: Path):
    assert any("store_key_file" in p for p in problems_of(write(tmp_path, MINIMAL_CLIENT + "store_key_file: [1]\n")))


def test_other_store_schemes_are_refused(tmp_path: Path):
    path = write(tmp_path, 'store: "mysql://root:pw@db/mfa"\n')
    assert problems_of(path) == [
        f"{path}:1: store: unsupported store (mysql://): use sqlite:///FILE or postgresql://USER@HOST/DB"]


# --------------------------------------------------------------------------
# Problems: all of them, in line order, with key paths; never a secret
# --------------------------------------------------------------------------

MANY_PROBLEMS = """\
server:
  name: mfa1
  listen:
    - udp: "0.0.0.0:99999"
    - tcp: "0.0.0.0:1812"
  workers: "four"
store: "sqlite:///ok.db"
clients:
  - name: vpn
    address: 192.0.2.0/24
    secret: ""
    mode: fancy
  - name: vpn
    address: 192.0.2.0/24
    secret: topsecret-1
    secret_file: vpn.secret
    timeout: -3
  - name: wifi
    address: 10.0.0.300
    scret: topsecret-2
primary:
  backend: radius
factors:
  sms:
    providers:
      - name: a
        type: http
        url: "https://sms.example/send"
      - name: b
        type: http
        url: "ftp://sms.example/send"
policy:
  delimiter: ""
  lockout: {failures: 0}
"""


def test_every_problem_is_reported_with_line_and_key_path(tmp_path: Path):
    path = write(tmp_path, MANY_PROBLEMS)
    f = str(path)
    assert problems_of(path) == [
        f"{f}:4: server.listen[0].udp: port must be a number between 0 and 65535, got '99999'",
        f"{f}:5: server.listen[1].udp: missing (required)",
        f"{f}:5: server.listen[1].tcp: unknown key",
        f"{f}:6: server.workers: expected an integer, got a string",
        f"{f}:11: clients[0].secret: must not be empty",
        f"{f}:12: clients[0].mode: 'fancy' is not one of challenge, inline, second-factor-only",
        f"{f}:13: clients[1].name: duplicate client name 'vpn' (first at line 9)",
        f"{f}:14: clients[1].address: 192.0.2.0/24 is also the address of client 'vpn' (line 10)",
        f"{f}:16: clients[1].secret_file: give secret or secret_file, not both",
        f"{f}:17: clients[1].timeout: must be greater than 0, got -3",
        f"{f}:18: clients[2]: needs secret or secret_file",
        f"{f}:19: clients[2].address: '10.0.0.300' is not an IP address or CIDR network",
        f"{f}:20: clients[2].scret: unknown key (did you mean 'secret'?)",
        f"{f}:22: primary.backend: radius needs primary.radius.servers",
        f"{f}:31: factors.sms.providers[1].url: expected a URL like http://HOST or https://HOST",
        f"{f}:33: policy.delimiter: must not be empty",
        f"{f}:34: policy.lockout.failures: must be at least 1, got 0",
    ]


def test_no_secret_value_appears_in_any_problem(tmp_path: Path):
    text = str(problems_of(write(tmp_path, MANY_PROBLEMS)))
    assert "topsecret" not in text


def test_wrong_types_name_the_kind_not_the_value(tmp_path: Path):
    path = write(tmp_path, """\
clients:
  - name: vpn
    address: 10.0.0.1
    secret: 123456
    exempt: "no"
policy:
  exempt_users: alice
""")
    assert problems_of(path) == [
        f"{path}:4: clients[0].secret: expected a string, got an integer (quote it)",
        f"{path}:5: clients[0].exempt: expected true or false, got a string",
        f"{path}:7: policy.exempt_users: expected a list, got a string",
    ]


def test_unreadable_secret_file_is_a_problem(tmp_path: Path):
    path = write(tmp_path, "clients:\n  - {name: vpn, address: 10.0.0.1, secret_file: missing.secret}\n")
    assert problems_of(path) == [
        f"{path}:2: clients[0].secret_file: cannot read {tmp_path / 'missing.secret'}: No such file or directory"]


def test_empty_secret_file_is_a_problem(tmp_path: Path):
    (tmp_path / "empty.secret").write_text("\n")
    path = write(tmp_path, "clients:\n  - {name: vpn, address: 10.0.0.1, secret_file: empty.secret}\n")
    assert problems_of(path) == [f"{path}:2: clients[0].secret_file: {tmp_path / 'empty.secret'} is empty"]


def test_host_bits_set_suggests_the_network(tmp_path: Path):
    path = write(tmp_path, "clients:\n  - {name: vpn, address: 192.0.2.7/24, secret: x}\n")
    assert problems_of(path) == [
        f"{path}:2: clients[0].address: '192.0.2.7/24' has host bits set (did you mean 192.0.2.0/24?)"]


def test_provider_keys_depend_on_its_type(tmp_path: Path):
    path = write(tmp_path, """\
factors:
  email:
    providers:
      - name: mail
        type: smtp
        host: smtp.example.org
        url: "https://wrong.example"
        tls: true
        starttls: true
        from: mfa@example.org
  sms:
    subject: "no subject for sms"
    providers:
      - {name: t, type: smtp}
""")
    assert problems_of(path) == [
        f"{path}:7: factors.email.providers[0].url: unknown key",
        f"{path}:8: factors.email.providers[0].tls: give starttls or tls, not both",
        f"{path}:12: factors.sms.subject: unknown key",
        f"{path}:14: factors.sms.providers[0].type: 'smtp' is not one of http, twilio",
    ]


def test_each_provider_is_read_into_the_section_of_its_kind(tmp_path: Path):
    path = write(tmp_path, """\
factors:
  sms:
    providers:
      - {name: gw, type: http, url: "https://gw.example/send?to={phone}", timeout: 2}
      - {name: tw, type: twilio, account_sid: AC1, auth_token: t0ken, from: "+15005550006"}
  email:
    providers:
      - {name: mail, type: smtp, host: smtp.example.org, tls: true, from: mfa@example.org}
""")
    config = load_config(path)
    http, twilio = config.factors.sms.providers
    [smtp] = config.factors.email.providers
    assert http == HttpProviderConfig(name="gw", timeout=2.0, url="https://gw.example/send?to={phone}")
    assert twilio == TwilioProviderConfig(name="tw", account_sid="AC1", auth_token="t0ken",
                                          from_number="+15005550006")
    assert smtp == SmtpProviderConfig(name="mail", host="smtp.example.org", from_address="mfa@example.org",
                                      port=465, tls=True)
    assert [p.type for p in (http, twilio, smtp)] == ["http", "twilio", "smtp"]
    assert not hasattr(http, "host") and not hasattr(smtp, "url")


def test_a_delivery_factor_needs_a_provider(tmp_path: Path):
    path = write(tmp_path, "factors:\n  sms:\n    code_ttl: 60\n")
    assert problems_of(path) == [f"{path}:3: factors.sms.providers: missing (at least one provider is required)"]


def test_duplicate_yaml_keys_are_problems(tmp_path: Path):
    path = write(tmp_path, "policy:\n  delimiter: ','\n  delimiter: ';'\n")
    assert problems_of(path) == [f"{path}:3: policy.delimiter: duplicate key (first at line 2)"]


def test_listen_needs_ip_and_port(tmp_path: Path):
    path = write(tmp_path, """\
server:
  listen:
    - udp: "localhost:1812"
    - udp: "::1:1812"
    - udp: "127.0.0.1"
metrics:
  listen: 9812
""")
    assert problems_of(path) == [
        f"{path}:3: server.listen[0].udp: 'localhost' is not an IP address",
        f"{path}:4: server.listen[1].udp: write an IPv6 address in brackets, like [::1]:1812",
        f"{path}:5: server.listen[2].udp: expected HOST:PORT, like 127.0.0.1:1812 or [::1]:1812",
        f"{path}:7: metrics.listen: expected a string, got an integer (quote it)",
    ]


def test_upstream_radius_server_defaults_its_port(tmp_path: Path):
    path = write(tmp_path, """\
primary:
  backend: radius
  radius:
    servers:
      - {address: radius.example.org, secret: up}
      - {address: "[2001:db8::5]:1645", secret: up2}
""")
    servers = load_config(path).primary.radius.servers
    assert [(s.host, s.port, s.secret) for s in servers] == [
        ("radius.example.org", 1812, b"up"), ("2001:db8::5", 1645, b"up2")]


def test_unknown_top_level_section(tmp_path: Path):
    path = write(tmp_path, "polcy: {}\n")
    assert problems_of(path) == [f"{path}:1: polcy: unknown key (did you mean 'policy'?)"]


# --------------------------------------------------------------------------
# Files that are not YAML, or not there
# --------------------------------------------------------------------------


def test_yaml_syntax_error_is_one_problem_with_its_line_and_no_content(tmp_path: Path):
    path = write(tmp_path, 'server:\n  name: mfa1\nclients:\n  - name: vpn\n    secret: "unterminated-secret\n')
    problems = problems_of(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:6: (syntax): found unexpected end of stream")
    assert "while scanning a quoted scalar at line 5" in problems[0]
    assert "unterminated-secret" not in problems[0]


def test_bad_indentation_is_a_syntax_problem(tmp_path: Path):
    path = write(tmp_path, "server:\n  name: mfa1\n   workers: 2\n")
    problems = problems_of(path)
    assert len(problems) == 1 and problems[0].startswith(f"{path}:3: (syntax): ")


def test_a_list_at_the_top_is_a_problem(tmp_path: Path):
    path = write(tmp_path, "- server\n")
    assert problems_of(path) == [f"{path}:1: (document): expected a mapping of sections, got a list"]


def test_missing_file(tmp_path: Path):
    missing = tmp_path / "nope.yaml"
    assert problems_of(missing) == [f"{missing}: cannot read: No such file or directory"]


def test_a_directory_is_not_a_config_file(tmp_path: Path):
    assert problems_of(tmp_path) == [f"{tmp_path}: cannot read: Is a directory"]


def test_yaml_anchors_and_merge_keys_work(tmp_path: Path):
    path = write(tmp_path, """\
clients:
  - &nas {name: a, address: 10.0.0.1, secret: shared, mode: inline}
  - <<: *nas
    name: b
    address: 10.0.0.2
""")
    clients = load_config(path).clients
    assert [(c.name, str(c.network), c.mode, c.secret) for c in clients] == [
        ("a", "10.0.0.1/32", Mode.INLINE, b"shared"), ("b", "10.0.0.2/32", Mode.INLINE, b"shared")]


def test_a_control_character_is_a_syntax_problem_with_its_line(tmp_path: Path):
    path = write(tmp_path, "server:\n  name: a\x07b\n")
    assert problems_of(path) == [f"{path}:2: (syntax): unacceptable character #x0007"]


def test_a_file_that_is_not_utf8(tmp_path: Path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"server: {name: caf\xe9}\n")
    assert problems_of(path) == [f"{path}: cannot read: not UTF-8 text"]


# --------------------------------------------------------------------------
# Factors, push, metrics, log
# --------------------------------------------------------------------------


def test_smtp_port_follows_tls_settings_and_auth_goes_in_pairs(tmp_path: Path):
    (tmp_path / "smtp.secret").write_text("mail-password\n")
    path = write(tmp_path, """\
factors:
  email:
    providers:
      - {name: implicit, type: smtp, host: h, tls: true, from: a@example.org,
         username: mfa, password_file: smtp.secret}
      - {name: plain, type: smtp, host: h, from: a@example.org}
""")
    implicit, plain = load_config(path).factors.email.providers
    assert (implicit.port, implicit.tls, implicit.username, implicit.password) == (465, True, "mfa", "mail-password")
    assert (plain.port, plain.username, plain.password) == (25, None, None)

    path = write(tmp_path, """\
factors:
  email:
    providers:
      - {name: m, type: smtp, host: h, from: a@example.org, password: lonely-password}
""")
    problems = problems_of(path)
    assert problems == [f"{path}:4: factors.email.providers[0]: username and password (or password_file) go together"]
    assert "lonely-password" not in problems[0]


def test_twilio_needs_its_keys_and_header_values_never_show(tmp_path: Path):
    path = write(tmp_path, """\
factors:
  sms:
    providers:
      - name: t
        type: twilio
        from: "+15005550006"
      - name: h
        type: http
        url: "https://sms.example/send"
        headers: {X-Api-Key: 98765432}
""")
    assert problems_of(path) == [
        f"{path}:4: factors.sms.providers[0].account_sid: missing (required)",
        f"{path}:4: factors.sms.providers[0]: needs auth_token or auth_token_file",
        f"{path}:10: factors.sms.providers[1].headers.X-Api-Key: expected a string, got an integer (quote it)",
    ]


def test_push_metrics_and_log_sections(tmp_path: Path):
    path = write(tmp_path, """\
factors:
  push:
    listen: "[::]:8443"
    tls_cert: push.crt
    tls_key: push.key
    public_url: "https://mfa.example.org:8443"
    timeout: 55
    number_matching: false
metrics:
  listen: "127.0.0.1:9812"
log:
  level: debug
  format: json
""")
    config = load_config(path)
    push = config.factors.push
    assert push is not None
    assert push.listen == ListenAddress("::", 8443)
    assert (push.tls_cert, push.tls_key) == (str(tmp_path / "push.crt"), str(tmp_path / "push.key"))
    assert (push.public_url, push.timeout, push.number_matching) == ("https://mfa.example.org:8443", 55.0, False)
    assert config.metrics is not None and config.metrics.listen == ListenAddress("127.0.0.1", 9812)
    assert (config.log.level, config.log.format) == ("debug", "json")


def test_push_defaults_for_pairing_rate_limit_and_notify(tmp_path: Path):
    push = load_config(write(tmp_path, "factors:\n  push: {}\n")).factors.push
    assert push is not None
    assert push.pairing_ttl == 600.0
    assert (push.rate_limit.sends, push.rate_limit.minutes) == (5, 5.0)
    assert push.notify == ()
    assert push.public_url is None and push.number_matching


def test_push_notify_webhooks_are_read_whole(tmp_path: Path):
    path = write(tmp_path, """\
factors:
  push:
    pairing_ttl: 120
    rate_limit: {sends: 3, minutes: 10}
    notify:
      - name: chat
        url: "https://chat.example.org/hook?u={user}"
        headers: {Authorization: "Bearer hook-secret"}
        body: '{"text": "{user} on {client} from {user_ip} ({push_id}). {number_hint}"}'
      - {name: pager, type: webhook, url: "http://127.0.0.1:9/p", method: PUT, timeout: 2.5}
""")
    push = load_config(path).factors.push
    assert (push.pairing_ttl, push.rate_limit.sends, push.rate_limit.minutes) == (120.0, 3, 10.0)
    chat, pager = push.notify
    assert (chat.name, chat.type, chat.method, chat.timeout) == ("chat", "webhook", "POST", 5.0)
    assert chat.url == "https://chat.example.org/hook?u={user}"
    assert chat.headers == (("Authorization", "Bearer hook-secret"),)
    assert "hook-secret" not in repr(chat)
    assert (pager.name, pager.method, pager.timeout, pager.body) == ("pager", "PUT", 2.5, None)


def test_push_notify_problems_have_line_and_path(tmp_path: Path):
    path = write(tmp_path, """\
factors:
  push:
    pairing_ttl: 0
    rate_limit: {sends: 0}
    notify:
      - name: a
        url: "ftp://example.org/"
      - name: b
        url: "https://example.org/{usr}"
        body: '{"n": "{number}"}'
        method: DELETE
        type: fcm
        colour: red
      - {name: c, url: "https://example.org/"}
      - {name: c, url: "https://example.org/"}
      - url: "https://example.org/"
        headers: {X-Key: 12345}
""")
    assert problems_of(path) == [
        f"{path}:3: factors.push.pairing_ttl: must be greater than 0, got 0",
        f"{path}:4: factors.push.rate_limit.sends: must be at least 1, got 0",
        f"{path}:7: factors.push.notify[0].url: expected a URL like http://HOST or https://HOST",
        f"{path}:9: factors.push.notify[1].url: unknown placeholder {{usr}} "
        "(known: {user} {client} {push_id} {user_ip} {number_hint})",
        f"{path}:10: factors.push.notify[1].body: unknown placeholder {{number}} "
        "(known: {user} {client} {push_id} {user_ip} {number_hint})",
        f"{path}:11: factors.push.notify[1].method: 'DELETE' is not one of POST, GET, PUT, PATCH",
        f"{path}:12: factors.push.notify[1].type: 'fcm' is not one of webhook",
        f"{path}:13: factors.push.notify[1].colour: unknown key",
        f"{path}:15: factors.push.notify[3].name: duplicate notifier name 'c'",
        f"{path}:16: factors.push.notify[4].name: missing (required)",
        f"{path}:17: factors.push.notify[4].headers.X-Key: expected a string, got an integer (quote it)",
    ]


def test_push_notify_must_be_a_list(tmp_path: Path):
    path = write(tmp_path, "factors:\n  push:\n    notify: {name: a}\n")
    assert problems_of(path) == [f"{path}:3: factors.push.notify: expected a list, got a mapping"]


def test_ldap_backend_needs_a_way_to_find_users(tmp_path: Path):
    path = write(tmp_path, """\
primary:
  backend: ldap
  ldap:
    servers: ["ldaps://dc1.example.org", "http://dc2.example.org"]
    user_filter: "(uid=alice)"
""")
    assert problems_of(path) == [
        f"{path}:2: primary.backend: ldap needs primary.ldap.user_dn_template or primary.ldap.base_dn",
        f"{path}:4: primary.ldap.servers[1]: expected a URL like ldap://HOST or ldaps://HOST",
        f"{path}:5: primary.ldap.user_filter: must contain {{user}}",
    ]


# --------------------------------------------------------------------------
# Issue 12: passwords, policy.username, limit_proxy_state, transport
# --------------------------------------------------------------------------


def private(path: Path) -> Path:
    path.chmod(0o600)
    return path


def test_passwords_section_defaults_to_scrypt(tmp_path: Path):
    config = load_config(write(tmp_path, ""))
    assert (config.passwords.scheme, config.passwords.pbkdf2_iterations) == ("scrypt", 600_000)


def test_passwords_section_is_read(tmp_path: Path):
    config = load_config(write(tmp_path, "passwords:\n  scheme: pbkdf2-sha256\n  pbkdf2_iterations: 310000\n"))
    assert config.passwords == PasswordsConfig(scheme="pbkdf2-sha256", pbkdf2_iterations=310_000)


def test_a_cheap_password_hash_is_refused(tmp_path: Path):
    path = write(tmp_path, "passwords:\n  scheme: md5\n  pbkdf2_iterations: 1000\n  rounds: 3\n")
    assert problems_of(path) == [
        f"{path}:2: passwords.scheme: 'md5' is not one of scrypt, pbkdf2-sha256",
        f"{path}:3: passwords.pbkdf2_iterations: must be between 10000 and 10000000, got 1000",
        f"{path}:4: passwords.rounds: unknown key",
    ]


def test_pbkdf2_iterations_must_be_an_integer(tmp_path: Path):
    path = write(tmp_path, "passwords: {pbkdf2_iterations: \"many\"}\n")
    assert problems_of(path) == [
        f"{path}:1: passwords.pbkdf2_iterations: expected an integer, got a string"]


def test_policy_username_and_unenrolled_enrol(tmp_path: Path):
    config = load_config(write(tmp_path, """\
policy:
  unenrolled: enrol
  username: {case: sensitive, strip_realm: true}
portal:
  public_url: "https://mfa.example.org:8444"
"""))
    assert config.policy.unenrolled == "enrol"
    assert config.policy.username == UsernameConfig(case="sensitive", strip_realm=True)
    assert load_config(write(tmp_path, "")).policy.username == UsernameConfig("insensitive", False)


def test_policy_username_refuses_bad_values(tmp_path: Path):
    path = write(tmp_path, """\
policy:
  unenrolled: maybe
  username:
    case: upper
    strip_realm: "yes"
    realm: corp
""")
    assert problems_of(path) == [
        f"{path}:2: policy.unenrolled: 'maybe' is not one of reject, allow, enrol",
        f"{path}:4: policy.username.case: 'upper' is not one of insensitive, sensitive",
        f"{path}:5: policy.username.strip_realm: expected true or false, got a string",
        f"{path}:6: policy.username.realm: unknown key (did you mean 'strip_realm'?)",
    ]


def test_limit_proxy_state_per_client(tmp_path: Path):
    config = load_config(write(tmp_path, MINIMAL_CLIENT + "    limit_proxy_state: true\n"))
    assert config.clients[0].limit_proxy_state is True
    assert load_config(write(tmp_path, MINIMAL_CLIENT)).clients[0].limit_proxy_state is False
    path = write(tmp_path, MINIMAL_CLIENT + "    limit_proxy_state: 1\n")
    assert problems_of(path) == [
        f"{path}:5: clients[0].limit_proxy_state: expected true or false, got an integer"]


def test_transport_udp_is_accepted_and_cert_name_applies_to_tls_only(tmp_path: Path):
    # transport: tls and server.tls: tests/test_radsec_config.py
    assert load_config(write(tmp_path, MINIMAL_CLIENT + "    transport: udp\n    cert_name: null\n")).clients
    path = write(tmp_path, MINIMAL_CLIENT + "    transport: udp\n    cert_name: nas.example.org\n")
    assert problems_of(path) == [f"{path}:6: clients[0].cert_name: applies to transport: tls only"]


# --------------------------------------------------------------------------
# Issue 12: check-config refuses second-factor-only without Message-Authenticator
# --------------------------------------------------------------------------


def check_config(path: Path, capsys) -> tuple[int, str, str]:
    from radius_mfa.cli import main

    code = main(["-c", str(path), "check-config"])
    out, err = capsys.readouterr()
    return code, out, err


def test_second_factor_only_without_message_authenticator_is_rejected(tmp_path: Path, capsys):
    """No password is checked in this mode: without a required
    Message-Authenticator a forged request (BlastRADIUS) would be enough."""
    path = write(tmp_path, """\
clients:
  - name: rdgw
    address: 192.0.2.0/24
    secret: a-long-enough-shared-secret
    require_message_authenticator: false
    mode: second-factor-only
""")
    code, out, err = check_config(path, capsys)
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"{path}:6: clients[0].mode: second-factor-only needs require_message_authenticator true or auto: "
        "no password is checked, so only the Message-Authenticator proves the request comes from the NAS"]


@pytest.mark.parametrize("required", ["true", "auto"])
def test_second_factor_only_with_message_authenticator_required_or_auto_is_fine(tmp_path: Path, capsys, required):
    path = private(write(tmp_path, f"""\
clients:
  - name: rdgw
    address: 192.0.2.0/24
    secret: a-long-enough-shared-secret
    require_message_authenticator: {required}
    mode: second-factor-only
"""))
    assert check_config(path, capsys) == (0, f"{path}: OK\n", "")


# --------------------------------------------------------------------------
# Issue 12: warnings (short shared secrets, files others can read)
# --------------------------------------------------------------------------


def test_a_short_client_secret_is_a_warning_that_never_shows_it(tmp_path: Path, capsys):
    path = private(write(tmp_path, """\
clients:
  - name: vpn
    address: 192.0.2.0/24
    secret: Sh0rtSecret9
  - name: wifi
    address: 198.51.100.0/24
    secret: sixteen-chars-ok
"""))
    code, out, err = check_config(path, capsys)
    assert (code, out) == (0, f"{path}: OK\n")
    assert err.splitlines() == [
        f"{path}:4: clients[0].secret: warning: the shared secret is shorter than 16 characters: "
        "use a random one of 16 or more (openssl rand -base64 24)"]
    assert "Sh0rtSecret9" not in err
    assert load_config(path).clients[0].secret == b"Sh0rtSecret9"     # a warning, not a refusal


def test_a_one_character_secret_from_a_file_is_warned_about(tmp_path: Path):
    private(write(tmp_path, "x\n", "vpn.secret"))
    path = private(write(tmp_path, "clients:\n  - {name: vpn, address: 10.0.0.1, secret_file: vpn.secret}\n"))
    [warning] = load_config(path).warnings
    assert warning.startswith(f"{path}:2: clients[0].secret_file: warning: the shared secret is shorter than 16")


def test_a_short_upstream_radius_secret_is_warned_about(tmp_path: Path):
    path = private(write(tmp_path, """\
primary:
  backend: radius
  radius:
    servers:
      - {address: "10.0.0.5:1812", secret: upstream-secret-long-enough}
      - address: "10.0.0.6:1812"
        secret: "123"
"""))
    assert load_config(path).warnings == (
        f"{path}:7: primary.radius.servers[1].secret: warning: the shared secret is shorter than 16 "
        "characters: use a random one of 16 or more (openssl rand -base64 24)",)


def test_a_config_file_others_can_read_is_warned_about(tmp_path: Path, capsys):
    path = write(tmp_path, "server: {name: a, listen: [{udp: '127.0.0.1:0'}]}\n"
                           "clients: [{name: vpn, address: 10.0.0.1, secret: a-long-enough-shared-secret}]\n")
    path.chmod(0o644)
    code, out, err = check_config(path, capsys)
    assert (code, out) == (0, f"{path}: OK\n")
    assert err.splitlines() == [
        f"{path}:1: (file): warning: this file can be read by other users (mode 0644): chmod o-rwx it"]
    path.chmod(0o640)            # root:radius-mfa 0640, as systemd/radius-mfa.service installs it
    assert load_config(path).warnings == ()


def test_secret_files_others_can_read_are_warned_about_by_key(tmp_path: Path):
    for name in ("vpn.secret", "upstream.secret", "ldap.secret", "smtp.secret", "twilio.secret"):
        (tmp_path / name).write_text("a-secret-of-more-than-16-characters\n")
        (tmp_path / name).chmod(0o604)
    (tmp_path / "ldap.secret").chmod(0o600)      # this one is private: no warning
    path = private(write(tmp_path, """\
clients:
  - {name: vpn, address: 10.0.0.1, secret_file: vpn.secret}
primary:
  backend: ldap
  radius:
    servers: [{address: "10.0.0.5", secret_file: upstream.secret}]
  ldap:
    servers: ["ldap://127.0.0.1"]
    base_dn: "dc=example,dc=org"
    bind_dn: "cn=svc,dc=example,dc=org"
    bind_password_file: ldap.secret
factors:
  email:
    providers:
      - {name: mail, type: smtp, host: smtp.example.org, from: a@example.org, username: u, password_file: smtp.secret}
  sms:
    providers:
      - {name: tw, type: twilio, account_sid: AC1, auth_token_file: twilio.secret, from: "+15005550006"}
"""))
    warnings = load_config(path).warnings
    assert [w.split(": warning: ")[0] for w in warnings] == [
        f"{path}:2: clients[0].secret_file",
        f"{path}:6: primary.radius.servers[0].secret_file",
        f"{path}:15: factors.email.providers[0].password_file",
        f"{path}:18: factors.sms.providers[0].auth_token_file",
    ]
    assert warnings[0].endswith(f"{tmp_path / 'vpn.secret'} can be read by other users (mode 0604): chmod o-rwx it")
    assert not any("a-secret-of" in w for w in warnings)


def test_a_store_key_its_group_can_read_is_warned_about_before_the_store_refuses_it(tmp_path: Path):
    key = tmp_path / "store.key"
    key.write_text("00" * 32 + "\n")
    key.chmod(0o640)
    path = private(write(tmp_path, "server: {name: a}\n"))
    assert load_config(path).warnings == (
        f"{path}:1: store_key_file: warning: {key} can be read by other users (mode 0640): chmod 600 it",)
    key.chmod(0o600)
    assert load_config(path).warnings == ()


def test_warnings_do_not_change_the_exit_code_of_errors(tmp_path: Path, capsys):
    path = write(tmp_path, MINIMAL_CLIENT + "    mode: sometimes\n")
    code, out, err = check_config(path, capsys)
    assert code == 2 and "clients[0].mode: 'sometimes' is not one of" in err


def test_the_sample_checks_with_only_its_known_warnings(capsys):
    """The sample keeps `testing123` (the README's radclient examples use it);
    a checkout cannot make it private, so that warning may appear too."""
    code, out, err = check_config(SAMPLE, capsys)
    assert (code, out) == (0, f"{SAMPLE}: OK\n")
    for line in err.splitlines():
        assert (": warning: the shared secret is shorter than 16 characters" in line
                or line.startswith(f"{SAMPLE}:1: (file): warning: this file can be read by other users"))


def test_the_sample_documents_every_new_key():
    text = SAMPLE.read_text()
    for key in ("passwords:", "scheme:", "pbkdf2_iterations:", "username:", "case:", "strip_realm:",
                "limit_proxy_state:", "enrol"):
        assert key in text, key


# --------------------------------------------------------------------------
# Issue 12: nesting deep enough to exhaust the stack
# --------------------------------------------------------------------------


DEPTH = 500


def deeply_nested_block() -> str:
    return "".join("  " * i + "a:\n" for i in range(DEPTH)) + "  " * DEPTH + "b: 1\n"


@pytest.mark.parametrize("text", [
    "policy: " + "[" * DEPTH + "]" * DEPTH + "\n",
    "policy: " + "{a: " * DEPTH + "1" + "}" * DEPTH + "\n",
    deeply_nested_block(),
], ids=["flow-lists", "flow-mappings", "block-mappings"])
def test_a_config_nested_500_levels_deep_is_one_problem_not_a_recursion_error(tmp_path: Path, capsys, text):
    path = write(tmp_path, text)
    [problem] = problems_of(path)
    assert re.fullmatch(rf"{re.escape(str(path))}:\d+: \(syntax\): nested more than 64 levels deep", problem)
    code, out, err = check_config(path, capsys)
    assert (code, out, err) == (2, "", problem + "\n")


def test_merge_keys_chained_thousands_deep_are_one_problem(tmp_path: Path):
    lines = ["x0: &a0 {delimiter: \",\"}"]
    lines += [f"x{i}: &a{i} {{<<: *a{i - 1}}}" for i in range(1, 3000)]
    lines += ["policy: {<<: *a2999}"]
    problems = problems_of(write(tmp_path, "\n".join(lines) + "\n"))
    assert any("policy: merge keys nested too deeply" in p for p in problems)


def test_a_reload_of_a_deeply_nested_config_logs_reload_failed(tmp_path: Path):
    """What SIGHUP calls: Service.reload, which keeps the running config."""
    import structlog.testing
    from twisted.internet.task import Clock

    from radius_mfa.service import Service

    path = private(write(tmp_path, MINIMAL_CLIENT.replace("s3cret-value", "a-long-enough-shared-secret")))
    service = Service(load_config(path), Clock())
    path.write_text(deeply_nested_block())
    with structlog.testing.capture_logs() as events:
        service.reload()
    [event] = events
    assert (event["event"], event["log_level"]) == ("config.reload_failed", "error")
    assert len(event["problems"]) == 1 and "nested more than 64 levels deep" in event["problems"][0]
    assert service.config.clients[0].name == "vpn"           # the running one stays


def test_an_unexpected_error_during_reload_is_one_line_not_a_traceback(tmp_path: Path, monkeypatch):
    import structlog.testing
    from twisted.internet.task import Clock

    from radius_mfa import service as service_module

    path = private(write(tmp_path, ""))
    service = service_module.Service(load_config(path), Clock())

    def broken(_path):
        raise RuntimeError("something quoting the file: topsecret")

    monkeypatch.setattr(service_module, "load_config", broken)
    with structlog.testing.capture_logs() as events:
        service.reload()
    assert events == [{"event": "config.reload_failed", "log_level": "error",
                       "problems": [f"{path.resolve()}: cannot reload: unexpected RuntimeError"]}]


def test_sighup_with_a_deeply_nested_config_logs_reload_failed_and_keeps_serving(tmp_path: Path):
    import signal

    from e2e import Server
    from peers.process import wait_for

    server = Server(tmp_path).start()
    try:
        server.config.write_text(deeply_nested_block())
        server.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "config.reload_failed" in server.log())
        assert "nested more than 64 levels deep" in server.log()
        assert "Traceback" not in server.log() and "RecursionError" not in server.log()
        assert server.proc.poll() is None
    finally:
        assert server.stop() == 0
