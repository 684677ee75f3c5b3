"""OATH one-time password maths (RFC 4226 / RFC 6238) through pyotp.

pyotp (≥ 2.10) refuses secrets shorter than 112 bits; RFC 4226 asks for 128
but hardware tokens with 80-bit seeds are still in the field, so we accept
80 bits (the commands warn below 128) through subclasses with our floor.
Every use of pyotp in the product goes through here.
"""

from __future__ import annotations

import hashlib

import pyotp

from radius_mfa.model import Token

MIN_SECRET_BITS = 80
WARN_SECRET_BITS = 128
DIGESTS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}


class _Totp(pyotp.TOTP):
    min_secret_length_bits = MIN_SECRET_BITS


class _Hotp(pyotp.HOTP):
    min_secret_length_bits = MIN_SECRET_BITS


def oath(token: Token) -> pyotp.OTP:
    """The pyotp object for a token (TOTP with its period, or HOTP)."""
    digest = DIGESTS[token.algorithm]
    if token.type == "totp":
        return _Totp(token.secret, digits=token.digits, digest=digest, interval=token.period)
    return _Hotp(token.secret, digits=token.digits, digest=digest)


def otp_at(token: Token, counter: int) -> str:
    """The code of ``token`` for a counter (HOTP) or time step (TOTP)."""
    return oath(token).generate_otp(counter)


def provisioning_uri(token: Token, issuer: str) -> str:
    """The ``otpauth://`` URI authenticator apps scan; label ``issuer:user``."""
    otp = oath(token)
    if token.type == "totp":
        return otp.provisioning_uri(name=token.user, issuer_name=issuer)
    return otp.provisioning_uri(name=token.user, issuer_name=issuer, initial_count=token.counter)
