"""A private OpenLDAP ``slapd`` for the tests: a real directory on loopback.

``Slapd(directory).start()`` writes a ``slapd.conf`` (mdb backend, suffix
``dc=example,dc=org``, the core/cosine/inetorgperson/nis schemas of the
system), loads the sample directory with ``slapadd`` before the server
starts (``add()`` adds more with ``ldapadd`` while it runs), and runs
``slapd -d 256`` as a child listening on ``ldap://127.0.0.1:P`` (StartTLS offered) and
``ldaps://127.0.0.1:Q``. The TLS material comes from :func:`make_tls`: a
test CA and a server certificate for 127.0.0.1 (IP SAN) and localhost (DNS
SAN), made with ``cryptography``. Share one :class:`TlsFiles` between two
instances to play a primary and a replica (failover), and ``stop()`` one.

The system's own slapd is never used or touched. ``-d 256`` is the "stats"
log level: every connection and every BIND lands in ``slapd.log``, so a test
can count binds (:meth:`Slapd.binds`) instead of guessing.

The sample directory (:data:`PEOPLE`, :func:`sample_ldif`):

* ``alice`` — every attribute; member of ``vpn-mfa`` (groupOfNames),
  ``vpn-unique`` (groupOfUniqueNames) and ``ops`` (posixGroup, memberUid);
* ``bob`` — no ``mobile``, only ``telephoneNumber``; in no group;
* ``carol`` — member of ``helpdesk``, which is itself a member of
  ``vpn-mfa``: OpenLDAP's plain ``member`` check does NOT resolve that
  nesting (Active Directory's 1.2.840.113556.1.4.1941 would);
* ``dave`` — member of ``service-accounts``;
* ``o*brien`` — a name that must be escaped inside a search filter;
* ``doe, john`` — a name that must be escaped inside a DN; in ``vpn-mfa``;
* ``dup1`` and ``dup2`` — two entries with the same ``cn`` (``Dup User``);
* ``cn=svc-mfa,ou=services`` — the service account, which may read all.

``allow bind_anon_dn`` is on, as on the many servers that accept an
"unauthenticated bind" (a DN with an empty password) as anonymous: the
backend must never send one.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from peers.process import free_tcp_port, stop_process  # noqa: F401 (free_tcp_port: for the tests)

SLAPD = shutil.which("slapd") or "/usr/sbin/slapd"
SLAPADD = shutil.which("slapadd") or "/usr/sbin/slapadd"
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")

SUFFIX = "dc=example,dc=org"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PASSWORD = "root-secret"
PEOPLE_DN = f"ou=people,{SUFFIX}"
GROUPS_DN = f"ou=groups,{SUFFIX}"
SERVICES_DN = f"ou=services,{SUFFIX}"
SERVICE_DN = f"cn=svc-mfa,{SERVICES_DN}"
SERVICE_PASSWORD = "svc-secret"
MFA_GROUP = f"cn=vpn-mfa,{GROUPS_DN}"
HELPDESK_GROUP = f"cn=helpdesk,{GROUPS_DN}"
SERVICE_GROUP = f"cn=service-accounts,{GROUPS_DN}"
UNIQUE_GROUP = f"cn=vpn-unique,{GROUPS_DN}"
POSIX_GROUP = f"cn=ops,{GROUPS_DN}"


def available() -> bool:
    """True when slapd and its modules are installed (Debian ``slapd``)."""
    return os.access(SLAPD, os.X_OK) and (MODULE_DIR / "back_mdb.la").exists()


@dataclass(frozen=True)
class Person:
    uid: str
    password: str
    cn: str
    display_name: str | None = None
    mail: str | None = None
    mobile: str | None = None
    telephone: str | None = None

    @property
    def dn(self) -> str:
        return f"uid={escape_rdn_value(self.uid)},{PEOPLE_DN}"


PEOPLE: dict[str, Person] = {p.uid: p for p in (
    Person("alice", "alice-pw", "Alice Example", "Alice Example", "alice@example.org",
           "+15550100001", "+15550100011"),
    Person("bob", "bob-pw", "Bob Example", "Bob Example", "bob@example.org",
           None, "+15550100022"),
    Person("carol", "çarol-pässwörd", "Carol Example", "Carol Exämple", "carol@example.org",
           "+15550100003"),
    Person("dave", "dave-pw", "Dave Example", "Dave Example", "dave@example.org"),
    Person("o*brien", "obrien-pw", "Pat O'Brien", "Pat O'Brien", "obrien@example.org"),
    Person("doe, john", "doe-pw", "John Doe", "John Doe", "jdoe@example.org", "+15550100005"),
    Person("dup1", "dup-pw", "Dup User"),
    Person("dup2", "dup-pw", "Dup User"),
)}


def escape_rdn_value(value: str) -> str:
    """RFC 4514 escaping for the fixture's own DNs (independent of the code under test)."""
    out = []
    for i, ch in enumerate(value):
        if ch in ',+"\\<>;=' or (ch == "#" and i == 0) or (ch == " " and i in (0, len(value) - 1)):
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def ssha(password: str, salt: bytes | None = None) -> str:
    """An OpenLDAP ``{SSHA}`` userPassword: what ``password-hash {SSHA}`` stores."""
    salt = salt if salt is not None else os.urandom(8)
    digest = hashlib.sha1(password.encode("utf-8") + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode("ascii")


def _ldif_line(name: str, value: str) -> str:
    """One attribute line; base64 (``::``) when the value is not safe as is."""
    safe = value.isascii() and value == value.strip() and not value.startswith((":", "<")) \
        and "\n" not in value and "\r" not in value
    if safe:
        return f"{name}: {value}"
    return f"{name}:: {base64.b64encode(value.encode('utf-8')).decode('ascii')}"


def ldif_entry(dn: str, attributes: list[tuple[str, str]]) -> str:
    return "\n".join([_ldif_line("dn", dn)] + [_ldif_line(k, v) for k, v in attributes]) + "\n"


def person_entry(person: Person) -> str:
    attrs = [("objectClass", "inetOrgPerson"), ("uid", person.uid), ("cn", person.cn),
             ("sn", person.cn.split()[-1]), ("userPassword", ssha(person.password))]
    for name, value in (("displayName", person.display_name), ("mail", person.mail),
                        ("mobile", person.mobile), ("telephoneNumber", person.telephone)):
        if value is not None:
            attrs.append((name, value))
    return ldif_entry(person.dn, attrs)


def _group_entry(dn: str, object_class: str, member_attribute: str, members: list[str],
                 extra: list[tuple[str, str]] = ()) -> str:
    cn = dn.split(",", 1)[0].split("=", 1)[1]
    attrs = [("objectClass", object_class), ("cn", cn), *extra]
    attrs += [(member_attribute, m) for m in members]
    return ldif_entry(dn, attrs)


def sample_ldif() -> str:
    """The sample directory described in the module docstring."""
    p = PEOPLE
    entries = [
        ldif_entry(SUFFIX, [("objectClass", "dcObject"), ("objectClass", "organization"),
                            ("o", "Example"), ("dc", "example")]),
        *(ldif_entry(dn, [("objectClass", "organizationalUnit"), ("ou", dn[3:].split(",")[0])])
          for dn in (PEOPLE_DN, GROUPS_DN, SERVICES_DN)),
        ldif_entry(SERVICE_DN, [("objectClass", "applicationProcess"),
                                ("objectClass", "simpleSecurityObject"), ("cn", "svc-mfa"),
                                ("userPassword", ssha(SERVICE_PASSWORD))]),
        *(person_entry(person) for person in p.values()),
        _group_entry(MFA_GROUP, "groupOfNames", "member",
                     [p["alice"].dn, p["doe, john"].dn, HELPDESK_GROUP]),
        _group_entry(HELPDESK_GROUP, "groupOfNames", "member", [p["carol"].dn]),
        _group_entry(SERVICE_GROUP, "groupOfNames", "member", [p["dave"].dn, SERVICE_DN]),
        _group_entry(UNIQUE_GROUP, "groupOfUniqueNames", "uniqueMember", [p["alice"].dn]),
        _group_entry(POSIX_GROUP, "posixGroup", "memberUid", ["alice"],
                     [("gidNumber", "5000")]),
    ]
    return "\n".join(entries)


# --------------------------------------------------------------------------- TLS

@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path          # PEM: what a client trusts (the backend's ca_file)
    server_cert: Path
    server_key: Path


def make_tls(directory: Path, *, name: str = "radius-mfa test CA",
             hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> TlsFiles:
    """A fresh CA and a server certificate for ``hosts`` (IP or DNS SANs), in ``directory``.

    Pass other ``hosts`` (``("ldap.example.org",)``) for a certificate that
    does not name 127.0.0.1: a client that checks host names must refuse it.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    valid_from, valid_to = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(valid_from).not_valid_after(valid_to)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(valid_from).not_valid_after(valid_to)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    files.server_key.chmod(0o600)
    return files


def _san(host: str):
    from cryptography import x509
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


# --------------------------------------------------------------------------- slapd

BIND_LINE = re.compile(r'conn=(\d+) op=\d+ BIND dn="([^"]*)" method=(\d+)')
ACCEPT_LINE = re.compile(r"conn=(\d+) fd=\d+ ACCEPT from")


class Slapd:
    """One private slapd child process under ``directory``."""

    def __init__(self, directory: Path, *, tls: TlsFiles | None = None, ldif: str | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.tls = tls or make_tls(self.directory / "tls")
        self.ldif = ldif if ldif is not None else sample_ldif()
        self.ldap_port = free_tcp_port()
        self.ldaps_port = free_tcp_port()
        self.conf = self.directory / "slapd.conf"
        self.log_path = self.directory / "slapd.log"
        self.proc: subprocess.Popen | None = None
        self._log = None

    # -- addresses
    @property
    def ldap_url(self) -> str:
        return f"ldap://127.0.0.1:{self.ldap_port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    @property
    def ca_file(self) -> str:
        return str(self.tls.ca_cert)

    # -- lifecycle
    def start(self, timeout: float = 15.0) -> "Slapd":
        if self.proc is not None and self.proc.poll() is None:
            return self
        if not (self.directory / "data" / "data.mdb").exists():
            self._write_config()
            self._load()
        self._log = open(self.log_path, "ab")
        urls = f"{self.ldap_url}/ {self.ldaps_url}/"
        self.proc = subprocess.Popen([SLAPD, "-h", urls, "-f", str(self.conf), "-d", "256"],
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log)
        self._wait_ready(timeout)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the child by pid (SIGTERM, then SIGKILL); the data stays for a restart."""
        if self.proc is None:
            return
        stop_process(self.proc, timeout)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> "Slapd":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- changes while it runs
    def add(self, ldif: str) -> None:
        """Add entries to the running server as the rootdn, with ``ldapadd``."""
        proc = subprocess.run([shutil.which("ldapadd") or "ldapadd", "-x", "-H", self.ldap_url,
                               "-D", ROOT_DN, "-w", ROOT_PASSWORD],
                              input=ldif, capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"ldapadd failed ({proc.returncode}): {proc.stderr}")

    # -- what happened
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def binds(self, dn: str | None = None) -> list[str]:
        """The DNs of the simple BINDs slapd has received so far ("" = anonymous)."""
        found = [m.group(2) for m in BIND_LINE.finditer(self.log())]
        if dn is None:
            return found
        return [d for d in found if d.lower() == dn.lower()]

    def connections(self) -> int:
        """How many connections slapd has accepted so far."""
        return len(ACCEPT_LINE.findall(self.log()))

    # -- internals
    def _write_config(self) -> None:
        data = self.directory / "data"
        data.mkdir(exist_ok=True)
        schemas = "\n".join(f"include {SCHEMA_DIR / name}.schema"
                            for name in ("core", "cosine", "inetorgperson", "nis"))
        self.conf.write_text(f"""\
{schemas}
modulepath {MODULE_DIR}
moduleload back_mdb
pidfile {self.directory / 'slapd.pid'}
argsfile {self.directory / 'slapd.args'}
TLSCACertificateFile {self.tls.ca_cert}
TLSCertificateFile {self.tls.server_cert}
TLSCertificateKeyFile {self.tls.server_key}
password-hash {{SSHA}}
allow bind_anon_dn
sizelimit 100

database mdb
maxsize 33554432
suffix "{SUFFIX}"
rootdn "{ROOT_DN}"
rootpw {ROOT_PASSWORD}
directory {data}

access to attrs=userPassword
    by self =xw
    by anonymous auth
    by * none
access to *
    by dn.exact="{SERVICE_DN}" read
    by self read
    by users read
    by anonymous auth
""")

    def _load(self) -> None:
        ldif = self.directory / "sample.ldif"
        ldif.write_text(self.ldif, encoding="utf-8")
        proc = subprocess.run([SLAPADD, "-q", "-f", str(self.conf), "-l", str(ldif)],
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"slapadd failed ({proc.returncode}): {proc.stderr}")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"slapd exited {self.proc.returncode}:\n{self.log()}")
            if "slapd starting" in self.log() and self._answers():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"slapd did not start within {timeout} s:\n{self.log()}")

    def _answers(self) -> bool:
        for port in (self.ldap_port, self.ldaps_port):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            except OSError:
                return False
        return True
