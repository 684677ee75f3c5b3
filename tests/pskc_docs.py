"""PSKC documents (RFC 6030) written for the tests, in the forms of the RFC's examples.

Deliberately independent of python-pskc, which the importer reads them with:
our own XML templates, our own AES-CBC (``cryptography``), HMAC-SHA1
(``hmac``) and PBKDF2 (``hashlib``). A bug shared by writer and reader
would otherwise go unseen. ``tests/test_tokenimport.py`` checks this writer
against the RFC itself: given the RFC's keys and IVs it reproduces the
published ciphertexts and MACs of Figures 6 and 7 byte for byte.

* Figure 2 form: plain values (``<PlainValue>``), :func:`document` without
  protection.
* Figure 6 form: :class:`PresharedKey`, AES-CBC, a random MAC key sealed
  with the same key in ``<MACMethod><MACKey>``, ``<ValueMAC>`` = HMAC-SHA1
  over IV‖ciphertext.
* Figure 7 form: :class:`Password`, the AES key derived with PBKDF2
  (``xenc11:DerivedKey``, ``pkcs5:PBKDF2-params``), otherwise as Figure 6.

:func:`document_chunks` yields the document piece by piece, so the benchmark
writes 100,000 keys without holding them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator
from xml.sax.saxutils import escape, quoteattr

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

PSKC_NS = "urn:ietf:params:xml:ns:keyprov:pskc"
HOTP_URI = "urn:ietf:params:xml:ns:keyprov:pskc:hotp"
TOTP_URI = "urn:ietf:params:xml:ns:keyprov:pskc:totp"
OCRA_URI = "urn:ietf:params:xml:ns:keyprov:pskc#OCRA-1:HOTP-SHA512-8:C-QN08"
HMAC_SHA1_URI = "http://www.w3.org/2000/09/xmldsig#hmac-sha1"
PBKDF2_URI = "http://www.rsasecurity.com/rsalabs/pkcs/schemas/pkcs-5v2-0#pbkdf2"

# RFC 6030 Figure 6: the pre-shared key, the MAC key and the IVs its example uses
RFC6030_PSK = bytes.fromhex("12345678901234567890123456789012")
RFC6030_MAC_KEY = bytes.fromhex("1122334455667788990011223344556677889900")
RFC6030_FIG6_MAC_KEY_IV = bytes.fromhex("11223344556677889900112233445566")
RFC6030_FIG6_SECRET_IV = bytes(range(16))
# RFC 6030 Figure 7: password, salt, iteration count, key length
RFC6030_PASSWORD = "qwerty"
RFC6030_SALT = base64.b64decode("Ej7/PEpyEpw=")
RFC6030_ITERATIONS = 1000


# --- crypto, our own ---------------------------------------------------------------


def aes_cbc_encrypt(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    """IV ‖ AES-CBC(PKCS#7-padded plaintext): the CipherValue of RFC 6030 §6.1."""
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return iv + encryptor.update(padded) + encryptor.finalize()


def aes_cbc_decrypt(key: bytes, cipher_value: bytes) -> bytes:
    decryptor = Cipher(algorithms.AES(key), modes.CBC(cipher_value[:16])).decryptor()
    padded = decryptor.update(cipher_value[16:]) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def hmac_sha1(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha1).digest()


def pbkdf2_sha1(password: str, salt: bytes, iterations: int, length: int) -> bytes:
    """PBKDF2 with HMAC-SHA1, the PRF RFC 6030 Figure 7 leaves implicit."""
    return hashlib.pbkdf2_hmac("sha1", password.encode(), salt, iterations, length)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- what to write -------------------------------------------------------------------


@dataclass(frozen=True)
class KeySpec:
    """One ``<KeyPackage>`` with one ``<Key>``. None leaves an element out."""
    serial: str | None                       # DeviceInfo/SerialNo
    secret: bytes | None
    algorithm: str = "hotp"                  # "hotp", "totp" or a full URI
    key_id: str | None = None                # Key Id; default: the serial, else "K1"
    digits: int | None = None                # ResponseFormat Length
    encoding: str = "DECIMAL"
    suite: str | None = None                 # AlgorithmParameters/Suite, e.g. "HMAC-SHA256"
    counter: int | None = None
    time: int | None = None                  # <Time>
    time_interval: int | None = None
    time_drift: int | None = None
    key_xml: str = ""                        # extra XML at the end of <Key> (a <Policy>…)
    tamper: str | None = None                # "ciphertext" | "mac" | "no-mac": spoil the encrypted secret


@dataclass(frozen=True)
class PresharedKey:
    """Figure 6: values sealed with a pre-shared AES key (16 or 32 bytes)."""
    key: bytes
    mac_key: bytes = RFC6030_MAC_KEY
    key_name: str = "Pre-shared-key"
    mac_method: bool = True                  # False: no <MACMethod> at all

    def aes_key(self) -> bytes:
        return self.key


@dataclass(frozen=True)
class Password:
    """Figure 7: the AES key derived from a password with PBKDF2."""
    password: str
    salt: bytes = RFC6030_SALT
    iterations: int = RFC6030_ITERATIONS
    key_length: int = 16
    mac_key: bytes = RFC6030_MAC_KEY
    key_name: str = "My Password 1"
    mac_method: bool = True

    def aes_key(self) -> bytes:
        return pbkdf2_sha1(self.password, self.salt, self.iterations, self.key_length)


Protection = PresharedKey | Password


def document(keys: Iterable[KeySpec], protection: Protection | None = None, *,
             ivs: Iterator[bytes] | None = None) -> str:
    return "".join(document_chunks(keys, protection, ivs=ivs))


def write_document(path: Path, keys: Iterable[KeySpec], protection: Protection | None = None) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for chunk in document_chunks(keys, protection):
            f.write(chunk)
    return path


def document_chunks(keys: Iterable[KeySpec], protection: Protection | None = None, *,
                    ivs: Iterator[bytes] | None = None) -> Iterator[str]:
    """The document piece by piece. ``ivs``: the CBC IVs to use in order (the
    MAC key's first, then each secret's); random when None."""
    next_iv = (lambda: next(ivs)) if ivs is not None else (lambda: os.urandom(16))
    aes_key = protection.aes_key() if protection is not None else None
    cipher_uri = f"http://www.w3.org/2001/04/xmlenc#aes{8 * len(aes_key)}-cbc" if aes_key else ""
    yield '<?xml version="1.0" encoding="UTF-8"?>\n'
    if isinstance(protection, Password):
        # Figure 7 writes every PSKC element with the pskc: prefix
        p = "pskc:"
        yield (f'<pskc:KeyContainer xmlns:pskc="{PSKC_NS}" xmlns:xenc11="http://www.w3.org/2009/xmlenc11#"'
               ' xmlns:pkcs5="http://www.rsasecurity.com/rsalabs/pkcs/schemas/pkcs-5v2-0#"'
               ' xmlns:xenc="http://www.w3.org/2001/04/xmlenc#" Version="1.0">\n')
        yield (f"  <pskc:EncryptionKey>\n    <xenc11:DerivedKey>\n"
               f'      <xenc11:KeyDerivationMethod Algorithm="{PBKDF2_URI}">\n'
               f"        <pkcs5:PBKDF2-params>\n"
               f"          <Salt><Specified>{b64(protection.salt)}</Specified></Salt>\n"
               f"          <IterationCount>{protection.iterations}</IterationCount>\n"
               f"          <KeyLength>{protection.key_length}</KeyLength>\n"
               f"          <PRF/>\n"
               f"        </pkcs5:PBKDF2-params>\n      </xenc11:KeyDerivationMethod>\n"
               f'      <xenc:ReferenceList><xenc:DataReference URI="#ED"/></xenc:ReferenceList>\n'
               f"      <xenc11:MasterKeyName>{escape(protection.key_name)}</xenc11:MasterKeyName>\n"
               f"    </xenc11:DerivedKey>\n  </pskc:EncryptionKey>\n")
    else:
        p = ""
        yield (f'<KeyContainer Version="1.0" xmlns="{PSKC_NS}" xmlns:ds="http://www.w3.org/2000/09/xmldsig#"'
               ' xmlns:xenc="http://www.w3.org/2001/04/xmlenc#">\n')
        if protection is not None:
            yield (f"  <EncryptionKey>\n    <ds:KeyName>{escape(protection.key_name)}</ds:KeyName>\n"
                   "  </EncryptionKey>\n")
    if protection is not None and protection.mac_method:
        sealed_mac_key = aes_cbc_encrypt(aes_key, next_iv(), protection.mac_key)
        yield (f'  <{p}MACMethod Algorithm="{HMAC_SHA1_URI}">\n    <{p}MACKey>\n'
               f'      <xenc:EncryptionMethod Algorithm="{cipher_uri}"/>\n'
               f"      <xenc:CipherData><xenc:CipherValue>{b64(sealed_mac_key)}</xenc:CipherValue></xenc:CipherData>\n"
               f"    </{p}MACKey>\n  </{p}MACMethod>\n")
    for spec in keys:
        yield _key_package(spec, p, protection, aes_key, cipher_uri, next_iv)
    yield f"</{p}KeyContainer>\n"


def _key_package(spec: KeySpec, p: str, protection: Protection | None, aes_key: bytes | None,
                 cipher_uri: str, next_iv) -> str:
    uri = {"hotp": HOTP_URI, "totp": TOTP_URI}.get(spec.algorithm, spec.algorithm)
    key_id = spec.key_id or spec.serial or "K1"
    out = [f"  <{p}KeyPackage>\n"]
    if spec.serial is not None:
        out.append(f"    <{p}DeviceInfo>\n      <{p}Manufacturer>Manufacturer</{p}Manufacturer>\n"
                   f"      <{p}SerialNo>{escape(spec.serial)}</{p}SerialNo>\n    </{p}DeviceInfo>\n")
    out.append(f"    <{p}CryptoModuleInfo><{p}Id>CM_ID_001</{p}Id></{p}CryptoModuleInfo>\n")
    out.append(f"    <{p}Key Id={quoteattr(key_id)} Algorithm={quoteattr(uri)}>\n"
               f"      <{p}Issuer>Issuer</{p}Issuer>\n")
    if spec.suite is not None or spec.digits is not None:
        out.append(f"      <{p}AlgorithmParameters>\n")
        if spec.suite is not None:
            out.append(f"        <{p}Suite>{escape(spec.suite)}</{p}Suite>\n")
        if spec.digits is not None:
            out.append(f'        <{p}ResponseFormat Length="{spec.digits}" Encoding="{spec.encoding}"/>\n')
        out.append(f"      </{p}AlgorithmParameters>\n")
    out.append(f"      <{p}Data>\n")
    if spec.secret is not None:
        out.append(f"        <{p}Secret>\n")
        if protection is None:
            out.append(f"          <{p}PlainValue>{b64(spec.secret)}</{p}PlainValue>\n")
        else:
            cipher_value = aes_cbc_encrypt(aes_key, next_iv(), spec.secret)
            mac = hmac_sha1(protection.mac_key, cipher_value)
            if spec.tamper == "ciphertext":
                cipher_value = _flip(cipher_value, -1)
            elif spec.tamper == "mac":
                mac = _flip(mac, 0)
            out.append(f'          <{p}EncryptedValue Id="ED">\n'
                       f'            <xenc:EncryptionMethod Algorithm="{cipher_uri}"/>\n'
                       f"            <xenc:CipherData><xenc:CipherValue>{b64(cipher_value)}"
                       f"</xenc:CipherValue></xenc:CipherData>\n"
                       f"          </{p}EncryptedValue>\n")
            if spec.tamper != "no-mac":
                out.append(f"          <{p}ValueMAC>{b64(mac)}</{p}ValueMAC>\n")
        out.append(f"        </{p}Secret>\n")
    for element, value in (("Counter", spec.counter), ("Time", spec.time),
                           ("TimeInterval", spec.time_interval), ("TimeDrift", spec.time_drift)):
        if value is not None:
            out.append(f"        <{p}{element}><{p}PlainValue>{value}</{p}PlainValue></{p}{element}>\n")
    out.append(f"      </{p}Data>\n{spec.key_xml}    </{p}Key>\n  </{p}KeyPackage>\n")
    return "".join(out)


def _flip(data: bytes, index: int) -> bytes:
    """``data`` with one bit of one byte changed."""
    spoilt = bytearray(data)
    spoilt[index] ^= 0x01
    return bytes(spoilt)
