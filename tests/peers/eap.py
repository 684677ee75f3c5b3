"""Wi-Fi 802.1X in front of radius-mfa: FreeRADIUS 3.2 terminating EAP-TTLS
with inner PAP, and ``eapol_test`` (Debian ``eapoltest``) as the supplicant
and the access point in one.

The FreeRADIUS configuration is the recipe of docs/wifi-8021x.md, kept as
files in ``freeradius_eap/`` with ``@NAME@`` placeholders: ``render`` fills
them in, for a test (loopback ports, a throwaway certificate chain) or with
the example values the document shows (tests/test_e2e_eap_ttls.py holds the
two to each other). Around them this module writes only what a test needs
and a site has already: radiusd.conf (a private directory, logs there, the
modules the recipe names), and a users file standing for the directory the
front end checks passwords against in ``second-factor-only`` mode.

Why proxying: FreeRADIUS 3.2 has no rlm_radius (a module of 4.x), so the
one way to hand an inner-tunnel request to another RADIUS server is to
proxy it: ``Proxy-To-Realm`` in the inner-tunnel's authorize, a
``home_server`` for radius-mfa, and ``eap`` in the outer server's
post-proxy, where the answer becomes EAP-Success or EAP-Failure.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from peers.freeradius import MODULE_DIR, FreeRadius

TEMPLATES = Path(__file__).with_name("freeradius_eap")
EAPOL_TEST = shutil.which("eapol_test") or (
    "/usr/sbin/eapol_test" if os.path.exists("/usr/sbin/eapol_test") else None)
SERVER_NAME = "radius.wifi.example.test"      # the name in the server's certificate
MODES = ("inline", "second-factor-only")


def available() -> bool:
    """eapol_test is installed (Debian package ``eapoltest``)."""
    return EAPOL_TEST is not None


# --- the recipe's files --------------------------------------------------------------
PLACEHOLDER = re.compile(r"@([A-Z_]+)@")


def inner_tunnel_file(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    return f"inner-tunnel-{mode}"


def render(name: str, values: dict[str, object]) -> str:
    """One recipe file with its ``@NAME@`` placeholders filled in; a
    placeholder without a value is an error, not a silent blank."""
    text = (TEMPLATES / name).read_text()
    missing = sorted({m for m in PLACEHOLDER.findall(text) if m not in values})
    if missing:
        raise KeyError(f"{name}: no value for {', '.join(missing)}")
    return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


# --- a throwaway certificate chain ---------------------------------------------------
@dataclass(frozen=True)
class Chain:
    ca_file: Path
    cert_file: Path
    key_file: Path


def make_chain(directory: Path, server_name: str = SERVER_NAME) -> Chain:
    """A CA and a server certificate it signed (EC P-256, SAN ``server_name``,
    serverAuth), as PEM files in ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Wi-Fi test CA")])
    ca = (x509.CertificateBuilder()
          .subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(server_name)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    chain = Chain(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    chain.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    chain.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                 serialization.PrivateFormat.TraditionalOpenSSL,
                                                 serialization.NoEncryption()))
    chain.key_file.chmod(0o600)
    return chain


# --- FreeRADIUS as the EAP front end -----------------------------------------------------
RADIUSD_CONF = """\
prefix = /usr
confdir = %(confdir)s
raddbdir = ${confdir}
modconfdir = ${confdir}/mods-config
logdir = ${confdir}
run_dir = ${confdir}
db_dir = ${confdir}
libdir = %(libdir)s
pidfile = ${run_dir}/radiusd.pid
name = radiusd
max_request_time = %(max_request_time)d
cleanup_delay = 5
max_requests = 16384
hostname_lookups = no
log {
\tdestination = files
\tfile = ${logdir}/radius.log
\tcolourise = no
\tauth = yes
}
security {
\tuser = root
\tgroup = root
\tallow_core_dumps = no
\tmax_attributes = 200
\treject_delay = 0
\tstatus_server = yes
}
proxy_requests = yes
$INCLUDE proxy.conf
thread pool {
\tstart_servers = 4
\tmax_servers = 16
\tmin_spare_servers = 2
\tmax_spare_servers = 8
\tmax_requests_per_server = 0
\tauto_limit_acct = no
}
$INCLUDE clients.conf
modules {
\talways ok {
\t\trcode = ok
\t}
\talways reject {
\t\trcode = reject
\t}
\tpap {
\t}
\tfiles {
\t\tmoddir = ${modconfdir}/files
\t\tfilename = ${moddir}/authorize
\t}
\t$INCLUDE mods-enabled/eap
}
instantiate {
}
$INCLUDE sites-enabled/default
$INCLUDE sites-enabled/inner-tunnel
"""


class EapFrontEnd(FreeRadius):
    """FreeRADIUS terminating EAP-TTLS on 127.0.0.1:``port`` for access points
    on 127.0.0.1 (``secret``), proxying each inner PAP request to radius-mfa
    at ``mfa`` = (host, port) with ``mfa_secret``, from ``source_address``.

    ``mode`` picks the inner-tunnel: ``inline`` passes ``password,code`` on;
    ``second-factor-only`` checks the password against ``users`` (name →
    password) first and sends radius-mfa the name alone.
    """

    def __init__(self, directory: Path, chain: Chain, mfa: tuple[str, int], mfa_secret: str, *,
                 mode: str = "inline", secret: str = "wifi-ap-secret-0123456789",
                 source_address: str = "127.0.0.1", response_window: int = 20,
                 users: dict[str, str] | None = None, port: int | None = None):
        self.chain = chain
        self.mfa = mfa
        self.mfa_secret = mfa_secret
        self.mode = mode
        self.inner_tunnel = inner_tunnel_file(mode)
        self.source_address = source_address
        self.response_window = response_window
        self.users = users or {}
        super().__init__(directory, secret=secret, port=port, sign_replies=False)

    def values(self) -> dict[str, object]:
        return {
            "LISTEN_ADDRESS": self.host, "LISTEN_PORT": self.port,
            "AP_NETWORK": "127.0.0.1/32", "AP_SECRET": self.secret,
            "CERT_FILE": self.chain.cert_file, "KEY_FILE": self.chain.key_file,
            "CA_FILE": self.chain.ca_file,
            "MFA_ADDRESS": self.mfa[0], "MFA_PORT": self.mfa[1], "MFA_SECRET": self.mfa_secret,
            "SOURCE_ADDRESS": self.source_address, "RESPONSE_WINDOW": self.response_window,
        }

    def _write_config(self) -> None:
        conf = self.directory
        values = self.values()
        for sub in ("mods-enabled", "sites-enabled", "mods-config/files"):
            (conf / sub).mkdir(parents=True, exist_ok=True)
        (conf / "mods-enabled" / "eap").write_text(render("eap", values))
        (conf / "sites-enabled" / "default").write_text(render("default", values))
        (conf / "sites-enabled" / "inner-tunnel").write_text(render(self.inner_tunnel, values))
        (conf / "proxy.conf").write_text(render("proxy.conf", values))
        (conf / "clients.conf").write_text(render("clients.conf", values))
        users = "".join(f'{name}\tCleartext-Password := "{password}"\n\n'
                        for name, password in self.users.items())
        (conf / "mods-config" / "files" / "authorize").write_text(users or "# nobody\n")
        (conf / "radiusd.conf").write_text(RADIUSD_CONF % {
            "confdir": conf, "libdir": MODULE_DIR,
            "max_request_time": self.response_window + 10})
        (conf / "dictionary").write_text("# local additions: none\n")


# --- the supplicant ------------------------------------------------------------------------
@dataclass
class EapolResult:
    returncode: int
    output: str

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0 and "SUCCESS" in self.output.splitlines()[-1:]

    @property
    def eap_failure(self) -> bool:
        return "CTRL-EVENT-EAP-FAILURE" in self.output

    @property
    def mppe_keys_ok(self) -> bool:
        """The access point got MS-MPPE keys from FreeRADIUS, and they equal
        the keys the supplicant derived from the TLS tunnel."""
        match = re.search(r"MPPE keys OK: (\d+)\s+mismatch: (\d+)", self.output)
        return bool(match) and int(match.group(1)) >= 1 and match.group(2) == "0"


def supplicant_config(identity: str, password: str, ca_file: Path, *,
                      server_name: str = SERVER_NAME, anonymous_identity: str = "anonymous") -> str:
    """A wpa_supplicant network block for EAP-TTLS with inner PAP: the outer
    identity anonymous, the server's certificate checked (CA and name)."""
    def quoted(text: str) -> str:
        if any(c in text for c in '"\n\r'):
            raise ValueError("a wpa_supplicant string cannot hold a quote or a line break")
        return f'"{text}"'

    return (
        "network={\n"
        "\tkey_mgmt=WPA-EAP\n"
        "\teap=TTLS\n"
        f"\tidentity={quoted(identity)}\n"
        f"\tanonymous_identity={quoted(anonymous_identity)}\n"
        f"\tpassword={quoted(password)}\n"
        f"\tca_cert={quoted(str(ca_file))}\n"
        f"\tdomain_suffix_match={quoted(server_name)}\n"
        '\tphase2="auth=PAP"\n'
        "}\n")


def eapol_test(front: EapFrontEnd, identity: str, password: str, directory: Path, *,
               timeout: int = 30, calling_station: str = "02:00:00:00:00:01",
               ca_file: Path | None = None, reauthentications: int = 0) -> EapolResult:
    """One 802.1X authentication against ``front`` (and ``reauthentications``
    more with the same saved settings, as a device that reconnects);
    ``timeout`` is eapol_test's whole budget (-t), which must outlast a push.
    ``ca_file``: the CA the supplicant trusts, the front end's by default."""
    if EAPOL_TEST is None:
        raise RuntimeError("eapol_test is not installed (Debian package eapoltest)")
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / f"supplicant-{identity}.conf"
    config.write_text(supplicant_config(identity, password, ca_file or front.chain.ca_file))
    proc = subprocess.run(
        [EAPOL_TEST, "-c", str(config), "-a", front.host, "-p", str(front.port),
         "-s", front.secret, "-t", str(timeout), "-M", calling_station,
         "-r", str(reauthentications)],
        capture_output=True, text=True, timeout=(timeout + 15) * (1 + reauthentications),
        stdin=subprocess.DEVNULL)
    return EapolResult(proc.returncode, proc.stdout + proc.stderr)
