"""Token secrets at rest: the key file, sealing, and the store that uses them."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from helpers import open_sqlite
from radius_mfa.errors import StoreError
from radius_mfa.model import Token, User
from radius_mfa.secretbox import KEY_BYTES, PREFIX, SecretBox, is_sealed
from radius_mfa.store.sqlite import MIGRATIONS, SqliteStore

SECRET = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"     # RFC 4226's "12345678901234567890"


# --- the key file ------------------------------------------------------------


def test_key_file_is_made_private_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "store.key"
    SecretBox.from_file(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(bytes.fromhex(path.read_text().strip())) == KEY_BYTES


def test_the_same_file_gives_the_same_key(tmp_path: Path) -> None:
    path = str(tmp_path / "store.key")
    sealed = SecretBox.from_file(path).seal(SECRET, "T1")
    assert SecretBox.from_file(path).open(sealed, "T1") == SECRET


def test_processes_racing_to_make_the_key_agree_on_one(tmp_path: Path) -> None:
    path = str(tmp_path / "store.key")
    boxes: list[SecretBox] = []
    threads = [threading.Thread(target=lambda: boxes.append(SecretBox.from_file(path))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({box.check_value for box in boxes}) == 1
    assert [name for name in os.listdir(tmp_path)] == ["store.key"]     # no temporary left behind


def test_a_missing_key_file_is_not_made_when_told_not_to(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        SecretBox.from_file(str(tmp_path / "none.key"), create=False)


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.key"
    SecretBox.from_file(str(path))
    path.chmod(0o644)
    with pytest.raises(StoreError, match="readable by others.*chmod 600"):
        SecretBox.from_file(str(path))


@pytest.mark.parametrize("content", ["", "abc", "zz" * 32, "00" * 31, "00" * 33])
def test_a_key_file_without_64_hex_digits_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "store.key"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(StoreError, match="64 hexadecimal digits"):
        SecretBox.from_file(str(path))


def test_a_key_made_by_openssl_rand_hex_is_read(tmp_path: Path) -> None:
    path = tmp_path / "store.key"
    path.write_text("0123456789abcdef" * 4 + "\n")
    path.chmod(0o600)
    assert SecretBox.from_file(str(path)).check_value == SecretBox(bytes.fromhex("0123456789abcdef" * 4)).check_value


def test_the_key_never_shows_in_repr(tmp_path: Path) -> None:
    path = tmp_path / "store.key"
    box = SecretBox.from_file(str(path))
    assert path.read_text().strip() not in repr(box)


# --- sealing -----------------------------------------------------------------


def test_sealed_values_hide_the_secret_and_differ_each_time() -> None:
    box = SecretBox(os.urandom(KEY_BYTES))
    first, second = box.seal(SECRET, "T1"), box.seal(SECRET, "T1")
    assert first.startswith(PREFIX) and is_sealed(first)
    assert SECRET not in first and first != second
    assert box.open(first, "T1") == box.open(second, "T1") == SECRET


def test_a_sealed_value_opens_only_for_its_own_token() -> None:
    box = SecretBox(os.urandom(KEY_BYTES))
    with pytest.raises(StoreError, match="token T2.*wrong key, or the row was altered"):
        box.open(box.seal(SECRET, "T1"), "T2")


def test_a_sealed_value_opens_only_with_its_key() -> None:
    sealed = SecretBox(os.urandom(KEY_BYTES)).seal(SECRET, "T1")
    with pytest.raises(StoreError, match="wrong key"):
        SecretBox(os.urandom(KEY_BYTES)).open(sealed, "T1")


def test_an_altered_sealed_value_is_refused() -> None:
    box = SecretBox(os.urandom(KEY_BYTES))
    sealed = box.seal(SECRET, "T1")
    altered = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(StoreError):
        box.open(altered, "T1")


# --- the store keeps secrets sealed ----------------------------------------------


def _token(serial: str, user: str | None = None) -> Token:
    return Token(serial=serial, type="totp", secret=SECRET, user=user)


def test_no_token_secret_is_in_clear_in_the_database_file(tmp_path: Path) -> None:
    store = open_sqlite(tmp_path / "s.db")
    store.add_user(User(name="alice"))
    store.add_token(_token("SOFT1", "alice"))
    store.add_tokens(_token(f"HW{i}") for i in range(50))
    store.close()
    with sqlite3.connect(tmp_path / "s.db") as raw:
        secrets = [row[0] for row in raw.execute("SELECT secret FROM tokens")]
    assert len(secrets) == 51 and all(is_sealed(s) and SECRET not in s for s in secrets)
    for name in os.listdir(tmp_path):             # nor in the WAL, nor anywhere beside
        assert SECRET.encode() not in (tmp_path / name).read_bytes()


def test_the_store_gives_back_the_secret(tmp_path: Path) -> None:
    store = open_sqlite(tmp_path / "s.db")
    store.add_token(_token("T1"))
    assert store.get_token("T1").secret == SECRET
    assert [t.secret for t in store.list_tokens()] == [SECRET]


def test_a_store_refuses_another_key_file(tmp_path: Path) -> None:
    open_sqlite(tmp_path / "s.db").close()
    with pytest.raises(StoreError, match="not the key of the store"):
        SqliteStore(str(tmp_path / "s.db"), SecretBox(os.urandom(KEY_BYTES), source="other.key"))


def test_a_secret_moved_to_another_row_does_not_open(tmp_path: Path) -> None:
    store = open_sqlite(tmp_path / "s.db")
    store.add_tokens([_token("T1"), Token(serial="T2", type="totp", secret="JBSWY3DPEHPK3PXPJBSWY3DP")])
    with sqlite3.connect(tmp_path / "s.db") as raw:
        sealed_t1 = raw.execute("SELECT secret FROM tokens WHERE serial = 'T1'").fetchone()[0]
        raw.execute("UPDATE tokens SET secret = ? WHERE serial = 'T2'", (sealed_t1,))
    with pytest.raises(StoreError, match="token T2"):
        store.get_token("T2")


def test_secrets_of_a_store_written_before_sealing_are_sealed_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as raw:          # a version-1 store, secrets in clear
        raw.execute("CREATE TABLE schema_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)")
        raw.execute("INSERT INTO schema_version VALUES (1, 1)")
        for statement in MIGRATIONS[0]:
            raw.execute(statement)
        raw.execute("INSERT INTO users (name, created) VALUES ('alice', 0)")
        raw.execute(
            "INSERT INTO tokens (serial, type, secret, user, digits, period, algorithm, counter, created)"
            " VALUES ('OLD1', 'totp', ?, 'alice', 6, 30, 'sha1', 0, 0)", (SECRET,))
    store = open_sqlite(path)
    token = store.get_token("OLD1")
    assert token.secret == SECRET and token.user == "alice" and token.drift == 0
    store.close()
    with sqlite3.connect(path) as raw:
        (stored,) = raw.execute("SELECT secret FROM tokens").fetchone()
    assert is_sealed(stored) and SECRET not in stored
    assert open_sqlite(path).get_token("OLD1").secret == SECRET     # sealed once, not twice
