"""What the server and a device agree on: signed messages, the pairing URL,
and the device API's certificate.

A device holds an Ed25519 key pair; the server keeps the public key. Every
answer is signed over :func:`answer_message` (the push id, the decision, the
number the user typed, the device's clock); other calls are signed over
:func:`request_message`. Both carry a time, and the server refuses one off by
more than :data:`MAX_SKEW` seconds.

The pairing URL carries the SHA-256 fingerprint of the device API's
certificate (DER), so a device pins the certificate it was paired with and a
self-signed one needs no CA.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import ipaddress
import os
import secrets
import socket
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

#: Seconds a signed time may differ from the server's clock.
MAX_SKEW = 60.0
DECISIONS = ("approve", "deny", "fraud")


# --- signed messages ---------------------------------------------------------------
def answer_message(push_id: str, decision: str, number: int | None, time: int) -> bytes:
    """The bytes a device signs to answer push ``push_id``."""
    shown = "" if number is None else str(int(number))
    return f"radius-mfa-answer\n{push_id}\n{decision}\n{shown}\n{int(time)}".encode()


def request_message(method: str, path: str, time: int, device_id: str) -> bytes:
    """The bytes a device signs to call ``method path`` (path without query)."""
    return f"radius-mfa-request\n{method.upper()}\n{path}\n{int(time)}\n{device_id}".encode()


def sign(private_key: Ed25519PrivateKey, message: bytes) -> str:
    """Standard base64 of the Ed25519 signature."""
    return base64.b64encode(private_key.sign(message)).decode("ascii")


def verify(public_key_b64: str, signature_b64: str, message: bytes) -> bool:
    """True only for a valid signature by that key; any malformed input is False."""
    try:
        key = Ed25519PublicKey.from_public_bytes(b64decode(public_key_b64))
        key.verify(b64decode(signature_b64), message)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def b64decode(text: str) -> bytes:
    """Strict standard base64 (ValueError on anything else)."""
    if not isinstance(text, str):
        raise ValueError("not base64 text")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError("not base64") from exc


def public_key_b64(private_key: Ed25519PrivateKey) -> str:
    raw = private_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def valid_public_key(text: object) -> bool:
    """A standard-base64 Ed25519 public key (32 raw bytes)."""
    try:
        Ed25519PublicKey.from_public_bytes(b64decode(text))   # type: ignore[arg-type]
    except ValueError:
        return False
    return True


# --- pairing -----------------------------------------------------------------------
def new_pairing_token() -> str:
    """The one-time secret of a pairing URL (32 bytes, URL-safe)."""
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """What the store keeps of a pairing token."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class PairingLink:
    base_url: str                     # the device API, e.g. https://mfa.example.org:8443
    token: str
    fingerprint: str                  # sha256 of the certificate (DER), 64 lowercase hex digits


def pairing_url(base_url: str, token: str, fingerprint: str) -> str:
    """``{base_url}/pair?token=…&fp=…``"""
    return f"{base_url.rstrip('/')}/pair?token={quote(token, safe='')}&fp={fingerprint}"


def parse_pairing_url(url: str) -> PairingLink:
    """ValueError with a message a person can act on."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError("a pairing URL starts with https://")
    if not parts.path.endswith("/pair"):
        raise ValueError("not a pairing URL: its path ends in /pair")
    query = parse_qs(parts.query)
    token = (query.get("token") or [""])[0]
    fingerprint = (query.get("fp") or [""])[0].lower().replace(":", "")
    if not token:
        raise ValueError("the pairing URL has no token")
    if len(fingerprint) != 64 or any(c not in "0123456789abcdef" for c in fingerprint):
        raise ValueError("the pairing URL has no certificate fingerprint (fp=)")
    base = urlunsplit((parts.scheme, parts.netloc, parts.path[: -len("/pair")], "", ""))
    return PairingLink(base_url=base, token=token, fingerprint=fingerprint)


# --- the device API's certificate ---------------------------------------------------
def fingerprint_of_der(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def certificate_fingerprint(cert_path: str) -> str:
    """SHA-256 (hex) of the PEM certificate's DER form; OSError / ValueError."""
    with open(cert_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    return fingerprint_of_der(cert.public_bytes(serialization.Encoding.DER))


def ensure_certificate(cert_path: str, key_path: str, names: tuple[str, ...] = ()) -> bool:
    """Make a self-signed certificate and key (ECDSA P-256, 10 years) when the
    certificate file is absent; True when made. Both files appear whole or not
    at all (written aside, then linked in), so a server and a `device pair`
    starting together agree on one certificate. OSError when the directory
    is not writable."""
    if os.path.exists(cert_path):
        return False
    key = ec.generate_private_key(ec.SECP256R1())
    hostnames = tuple(dict.fromkeys(names or (socket.getfqdn(), "localhost")))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0][:64] or "radius-mfa")])
    alt: list[x509.GeneralName] = []
    for name in hostnames:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    # the key first, then the certificate: whoever sees the certificate finds its key
    if not _publish(key_path, key_pem, 0o600):
        if os.path.exists(cert_path):
            return False          # another process made both meanwhile
    if not _publish(cert_path, cert_pem, 0o644):
        return False
    return True


def _publish(path: str, data: bytes, mode: int) -> bool:
    """Write ``data`` beside ``path`` and link it in only if ``path`` does not
    exist: False when it did (the other writer's file stays)."""
    directory = os.path.dirname(os.path.abspath(path))
    aside = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            os.link(aside, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(aside)
