"""MS-CHAPv2, the client side, for the tests: MD4 (RFC 1320), RFC 2759, RFC 3079.

What a NAS computes before it forwards an MS-CHAPv2 attempt, written out so
that an upstream's answer (MS-CHAP2-Success, the MPPE keys) can be checked.
MD4 is written here because OpenSSL 3 no longer offers it.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from hashlib import sha1

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from radius_mfa.radius import codec

MICROSOFT = 311


def md4(data: bytes) -> bytes:
    """RFC 1320. OpenSSL 3 has dropped MD4 from the default provider."""
    mask = 0xFFFFFFFF

    def rotl(x: int, n: int) -> int:
        return ((x << n) | (x >> (32 - n))) & mask

    rounds = (
        (lambda x, y, z: (x & y) | (~x & z), 0, range(16), (3, 7, 11, 19)),
        (lambda x, y, z: (x & y) | (x & z) | (y & z), 0x5A827999,
         [(i % 4) * 4 + i // 4 for i in range(16)], (3, 5, 9, 13)),
        (lambda x, y, z: x ^ y ^ z, 0x6ED9EBA1,
         [0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15], (3, 9, 11, 15)),
    )
    message = data + b"\x80" + b"\x00" * ((55 - len(data)) % 64) + struct.pack("<Q", len(data) * 8)
    state = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476]
    for start in range(0, len(message), 64):
        words = struct.unpack("<16I", message[start:start + 64])
        h = list(state)
        for function, constant, order, shifts in rounds:
            for step, k in enumerate(order):
                t = (-step) % 4       # a, d, c, b, a, …
                b, c, d = h[(t + 1) % 4], h[(t + 2) % 4], h[(t + 3) % 4]
                h[t] = rotl((h[t] + function(b, c, d) + words[k] + constant) & mask, shifts[step % 4])
        state = [(x + y) & mask for x, y in zip(state, h)]
    return struct.pack("<4I", *state)


def des_encrypt(key7: bytes, block: bytes) -> bytes:
    """DES with a 56-bit key spread over 8 octets (parity bits ignored)."""
    bits = int.from_bytes(key7, "big")
    key8 = bytes(((bits >> (49 - 7 * i)) & 0x7F) << 1 for i in range(8))
    encryptor = Cipher(TripleDES(key8 * 3), modes.ECB()).encryptor()   # K1=K2=K3: single DES
    return encryptor.update(block) + encryptor.finalize()


def nt_password_hash(password: str) -> bytes:
    return md4(password.encode("utf-16-le"))


def challenge_hash(peer_challenge: bytes, authenticator_challenge: bytes, user_name: str) -> bytes:
    return sha1(peer_challenge + authenticator_challenge + user_name.encode()).digest()[:8]


def generate_nt_response(authenticator_challenge: bytes, peer_challenge: bytes,
                         user_name: str, password: str) -> bytes:
    challenge = challenge_hash(peer_challenge, authenticator_challenge, user_name)
    key = nt_password_hash(password).ljust(21, b"\x00")
    return b"".join(des_encrypt(key[i:i + 7], challenge) for i in (0, 7, 14))


_AUTH_MAGIC1 = b"Magic server to client signing constant"
_AUTH_MAGIC2 = b"Pad to make it do more than one iteration"


def authenticator_response(password: str, nt_response: bytes, peer_challenge: bytes,
                           authenticator_challenge: bytes, user_name: str) -> str:
    hash_hash = md4(nt_password_hash(password))
    digest = sha1(hash_hash + nt_response + _AUTH_MAGIC1).digest()
    challenge = challenge_hash(peer_challenge, authenticator_challenge, user_name)
    return "S=" + sha1(digest + challenge + _AUTH_MAGIC2).hexdigest().upper()


_KEY_MAGIC1 = b"This is the MPPE Master Key"
_KEY_MAGIC2 = (b"On the client side, this is the send key; "
               b"on the server side, it is the receive key.")
_KEY_MAGIC3 = (b"On the client side, this is the receive key; "
               b"on the server side, it is the send key.")


def master_key(password: str, nt_response: bytes) -> bytes:
    """RFC 3079 section 3.4 GetMasterKey."""
    return sha1(md4(nt_password_hash(password)) + nt_response + _KEY_MAGIC1).digest()[:16]


def asymmetric_start_key(master: bytes, is_send: bool, is_server: bool) -> bytes:
    """RFC 3079 section 3.4 GetAsymmetricStartKey, 128-bit keys."""
    magic = _KEY_MAGIC3 if is_send == is_server else _KEY_MAGIC2
    return sha1(master + b"\x00" * 40 + magic + b"\xf2" * 40).digest()[:16]


def vsa(vendor: int, vendor_type: int, value: bytes) -> tuple[int, bytes]:
    """A raw Vendor-Specific attribute as PrimaryRequest.forward holds it."""
    return codec.VENDOR_SPECIFIC, struct.pack("!LBB", vendor, vendor_type, len(value) + 2) + value


@dataclasses.dataclass
class MsChapV2:
    """One MS-CHAPv2 attempt as a NAS forwards it."""
    user_name: str
    password: str
    ident: int = 7
    authenticator_challenge: bytes = dataclasses.field(default_factory=lambda: os.urandom(16))
    peer_challenge: bytes = dataclasses.field(default_factory=lambda: os.urandom(16))

    @property
    def nt_response(self) -> bytes:
        return generate_nt_response(self.authenticator_challenge, self.peer_challenge,
                                    self.user_name, self.password)

    def forward(self) -> tuple[tuple[int, bytes], ...]:
        response = bytes((self.ident, 0)) + self.peer_challenge + b"\x00" * 8 + self.nt_response
        return (vsa(MICROSOFT, 11, self.authenticator_challenge),    # MS-CHAP-Challenge
                vsa(MICROSOFT, 25, response))                       # MS-CHAP2-Response

    def expected_success(self) -> bytes:
        return bytes((self.ident,)) + authenticator_response(
            self.password, self.nt_response, self.peer_challenge,
            self.authenticator_challenge, self.user_name).encode()


