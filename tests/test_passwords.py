"""Slow salted password hashes: scrypt (written) and PBKDF2-SHA256 (read)."""

from __future__ import annotations

import base64
import hashlib

import pytest

from radius_mfa import passwords
from radius_mfa.config import PasswordsConfig


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def scrypt_hash(password: bytes, salt: bytes, ln: int = 14, r: int = 8, p: int = 1) -> str:
    """A hash in our format, computed independently of the module."""
    key = hashlib.scrypt(password, salt=salt, n=2**ln, r=r, p=p, dklen=32, maxmem=64 * 2**20)
    return f"$scrypt$ln={ln},r={r},p={p}${b64(salt)}${b64(key)}"


def test_round_trip_accepts_the_password() -> None:
    encoded = passwords.hash_password("correct horse battery staple")
    assert passwords.verify_password("correct horse battery staple", encoded)
    assert passwords.verify_password(b"correct horse battery staple", encoded)


def test_wrong_password_is_refused() -> None:
    encoded = passwords.hash_password("s3cret")
    assert not passwords.verify_password("s3cret ", encoded)
    assert not passwords.verify_password("", encoded)


def test_hash_carries_its_parameters_and_a_fresh_salt() -> None:
    first, second = passwords.hash_password("same"), passwords.hash_password("same")
    assert first.startswith("$scrypt$ln=14,r=8,p=1$")
    assert first != second
    _, _, _, salt, key = first.split("$")
    assert len(base64.b64decode(salt + "==")) == 16
    assert len(base64.b64decode(key + "==")) == 32


def test_non_ascii_password_is_hashed_as_utf8() -> None:
    encoded = passwords.hash_password("pässwörd")
    assert passwords.verify_password("pässwörd".encode("utf-8"), encoded)
    assert not passwords.verify_password("pässwörd".encode("latin-1"), encoded)


def test_scrypt_known_answer() -> None:
    # RFC 7914 section 12, third vector: P="pleaseletmein", S="SodiumChloride",
    # N=16384, r=8, p=1; we keep the first 32 of its 64 bytes.
    rfc_key = bytes.fromhex(
        "7023bdcb3afd7348461c06cd81fd38ebfda8fbba904f8e3ea9b543f6545da1f2"
    )
    encoded = f"$scrypt$ln=14,r=8,p=1${b64(b'SodiumChloride')}${b64(rfc_key)}"
    assert passwords.verify_password("pleaseletmein", encoded)
    assert not passwords.verify_password("pleaseletmeout", encoded)


def test_scrypt_hash_made_elsewhere_with_other_parameters() -> None:
    encoded = scrypt_hash(b"hunter2", b"0123456789abcdef", ln=10, r=4, p=2)
    assert passwords.verify_password("hunter2", encoded)
    assert passwords.needs_rehash(encoded)


def test_pbkdf2_sha256_known_answer() -> None:
    salt = b"salt-from-elsewhere"
    key = hashlib.pbkdf2_hmac("sha256", b"imported", salt, 1000, 32)
    encoded = f"$pbkdf2-sha256$1000${b64(salt)}${b64(key)}"
    assert passwords.verify_password("imported", encoded)
    assert not passwords.verify_password("imported!", encoded)
    assert passwords.needs_rehash(encoded)


def test_pbkdf2_in_passlib_adapted_base64() -> None:
    # passlib writes '.' where standard base64 has '+'; pick bytes that make one.
    salt = b"\xfb\xef\xbe" * 6
    key = hashlib.pbkdf2_hmac("sha256", b"pw", salt, 29000, 32)
    adapted = lambda raw: b64(raw).replace("+", ".")  # noqa: E731
    assert "." in adapted(salt)
    encoded = f"$pbkdf2-sha256$29000${adapted(salt)}${adapted(key)}"
    assert passwords.verify_password("pw", encoded)


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "plain-text-password",
        "$scrypt$",
        "$scrypt$ln=14,r=8,p=1$c2FsdA",
        "$scrypt$ln=14,r=8$c2FsdHNhbHQ$" + b64(bytes(32)),
        "$scrypt$ln=14,r=8,p=1,x=2$c2FsdHNhbHQ$" + b64(bytes(32)),
        "$scrypt$ln=fourteen,r=8,p=1$c2FsdHNhbHQ$" + b64(bytes(32)),
        "$scrypt$ln=14,r=8,p=0$c2FsdHNhbHQ$" + b64(bytes(32)),
        "$scrypt$ln=40,r=8,p=1$c2FsdHNhbHQ$" + b64(bytes(32)),          # absurd memory
        "$scrypt$ln=14,r=8,p=1$not*base64$" + b64(bytes(32)),
        "$scrypt$ln=14,r=8,p=1$$" + b64(bytes(32)),                      # empty salt
        "$scrypt$ln=14,r=8,p=1$c2FsdHNhbHQ$" + b64(bytes(4)),            # key too short
        "$pbkdf2-sha256$0$c2FsdHNhbHQ$" + b64(bytes(32)),
        "$pbkdf2-sha256$999999999999$c2FsdHNhbHQ$" + b64(bytes(32)),
        "$pbkdf2-sha256$-5$c2FsdHNhbHQ$" + b64(bytes(32)),
        "$bcrypt$12$c2FsdHNhbHQ$" + b64(bytes(32)),
        "$scrypt$ln=14,r=8,p=1$c2FsdHNhbHQ$" + b64(bytes(32)) + "$extra",
        "$scrypt$ln=14,r=8,p=1$c2FsdHNhbHQ$ÿÿÿÿ",
    ],
)
def test_malformed_hash_is_refused_without_raising(encoded: str) -> None:
    assert passwords.verify_password("anything", encoded) is False
    assert passwords.needs_rehash(encoded) is True


@pytest.mark.parametrize("encoded", [None, 42, b"$scrypt$..."])
def test_hash_that_is_not_text_is_refused(encoded) -> None:
    assert passwords.verify_password("anything", encoded) is False
    assert passwords.needs_rehash(encoded) is True


def test_password_that_is_not_text_is_refused() -> None:
    encoded = passwords.hash_password("x")
    assert passwords.verify_password(None, encoded) is False  # type: ignore[arg-type]


def test_current_hash_needs_no_rehash() -> None:
    assert not passwords.needs_rehash(passwords.hash_password("x"))


def test_weaker_scrypt_needs_rehash() -> None:
    assert passwords.needs_rehash(scrypt_hash(b"x", b"0123456789abcdef", ln=12))


def test_dummy_verification_always_fails() -> None:
    assert passwords.verify_dummy("") is False
    assert passwords.verify_dummy("password") is False
    assert passwords.verify_dummy(b"\x00\xff") is False
    assert passwords.verify_dummy(None) is False  # type: ignore[arg-type]


def test_dummy_hash_is_a_real_hash_at_current_cost() -> None:
    # So verify_dummy pays for a full scrypt run, like a known user would.
    assert passwords._parse(passwords._DUMMY_HASH) is not None
    assert not passwords.needs_rehash(passwords._DUMMY_HASH)


# --- the configured scheme --------------------------------------------------------

PBKDF2 = PasswordsConfig(scheme="pbkdf2-sha256", pbkdf2_iterations=2_000)
SCRYPT = PasswordsConfig()


def pbkdf2_hash(password: bytes, iterations: int, salt: bytes = b"0123456789abcdef") -> str:
    key = hashlib.pbkdf2_hmac("sha256", password, salt, iterations, 32)
    return f"$pbkdf2-sha256${iterations}${b64(salt)}${b64(key)}"


def test_default_configuration_hashes_with_scrypt_n_2_14() -> None:
    encoded = passwords.hash_password("pw", SCRYPT)
    assert encoded.startswith("$scrypt$ln=14,r=8,p=1$")
    assert passwords.verify_password("pw", encoded)


def test_pbkdf2_configuration_hashes_with_its_iterations() -> None:
    encoded = passwords.hash_password("pw", PBKDF2)
    scheme, iterations, salt, key = encoded.split("$")[1:]
    assert (scheme, iterations) == ("pbkdf2-sha256", "2000")
    raw_salt = base64.b64decode(salt + "==")
    assert len(raw_salt) == 16
    # computed independently of the module
    assert base64.b64decode(key + "==") == hashlib.pbkdf2_hmac("sha256", b"pw", raw_salt, 2000, 32)
    assert passwords.verify_password("pw", encoded)
    assert not passwords.verify_password("pw!", encoded)


@pytest.mark.parametrize("config", [
    PasswordsConfig(scheme="bcrypt"),
    PasswordsConfig(scheme="pbkdf2-sha256", pbkdf2_iterations=0),
    PasswordsConfig(scheme="pbkdf2-sha256", pbkdf2_iterations=10**9),
])
def test_a_configuration_the_module_cannot_use_is_refused(config) -> None:
    with pytest.raises(ValueError, match="passwords"):
        passwords.hash_password("pw", config)


def test_another_scheme_needs_rehash() -> None:
    scrypt = passwords.hash_password("pw", SCRYPT)
    pbkdf2 = passwords.hash_password("pw", PBKDF2)
    assert passwords.needs_rehash(pbkdf2, SCRYPT) and passwords.needs_rehash(pbkdf2)
    assert passwords.needs_rehash(scrypt, PBKDF2)
    assert not passwords.needs_rehash(scrypt, SCRYPT)
    assert not passwords.needs_rehash(pbkdf2, PBKDF2)


def test_fewer_iterations_than_configured_need_rehash() -> None:
    config = PasswordsConfig(scheme="pbkdf2-sha256", pbkdf2_iterations=600_000)
    assert passwords.needs_rehash(pbkdf2_hash(b"pw", 599_999), config)
    assert not passwords.needs_rehash(pbkdf2_hash(b"pw", 600_000), config)
    assert not passwords.needs_rehash(pbkdf2_hash(b"pw", 700_000), config)


def test_a_short_salt_needs_rehash_whatever_the_cost() -> None:
    assert passwords.needs_rehash(pbkdf2_hash(b"pw", 5_000, salt=b"short"), PBKDF2)


def count_derivations(monkeypatch) -> list[tuple[str, int]]:
    """Every key derivation the module runs, as (scheme, cost)."""
    seen: list[tuple[str, int]] = []
    real = passwords._derive

    def counting(password, parsed):
        if isinstance(parsed, passwords._Scrypt):
            seen.append(("scrypt", parsed.log2_n))
        else:
            seen.append(("pbkdf2-sha256", parsed.iterations))
        return real(password, parsed)

    monkeypatch.setattr(passwords, "_derive", counting)
    return seen


def test_dummy_check_runs_the_configured_hash(monkeypatch) -> None:
    seen = count_derivations(monkeypatch)
    assert passwords.verify_dummy("pw", PBKDF2) is False
    assert passwords.verify_dummy("pw", SCRYPT) is False
    assert passwords.verify_dummy("pw") is False
    assert seen == [("pbkdf2-sha256", 2_000), ("scrypt", 14), ("scrypt", 14)]


def test_imported_hash_below_the_minimum_cost_has_a_problem() -> None:
    assert "fewer than the 1,000" in passwords.imported_hash_problem(pbkdf2_hash(b"pw", 999))
    assert passwords.imported_hash_problem(pbkdf2_hash(b"pw", 1_000)) is None
    assert "2^10" in passwords.imported_hash_problem(scrypt_hash(b"pw", b"0123456789abcdef", ln=9))
    assert passwords.imported_hash_problem(scrypt_hash(b"pw", b"0123456789abcdef", ln=10)) is None
    assert "malformed" in passwords.imported_hash_problem("$pbkdf2-sha256$0$c2FsdA$" + b64(bytes(32)))
