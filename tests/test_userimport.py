"""`user import FILE`: CSV bulk onboarding, all or nothing, against a real SQLite store."""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path

import pyotp
import pytest

from radius_mfa import passwords, userimport
from radius_mfa.config import PasswordsConfig
from radius_mfa.model import Token, User
from radius_mfa.otp import otp_at
from radius_mfa.userimport import ImportFailed, Problem, import_users

# RFC 6238 Appendix B: the SHA-1 seed "12345678901234567890"; at T = 59 s the
# 8-digit code is 94287082, so the 6-digit code is its last six digits.
RFC6238_SECRET = base64.b32encode(b"12345678901234567890").decode("ascii")
RFC6238_CODE_AT_59 = "287082"
SECRET_B = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"  # 160 bits


@pytest.fixture
def store(make_store):
    """A store (SQLite, then PostgreSQL) holding one user (carol) with one
    token, so that "unchanged" is checked against something."""
    store = make_store()
    store.add_user(User(name="carol"))
    store.add_token(Token(serial="TOTPCAFE0001", type="totp", secret=SECRET_B, user="carol"))
    return store


def write(tmp_path: Path, text: str | bytes, name: str = "users.csv") -> str:
    path = tmp_path / name
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return str(path)


def counts(store) -> tuple[int, int]:
    return len(store.list_users()), len(store.list_tokens())


def failure(store, path: str, **kwargs) -> ImportFailed:
    """Run an import that must fail; check that it left the store as it was."""
    before = counts(store)
    with pytest.raises(ImportFailed) as info:
        import_users(store, path, hash_workers=1, **kwargs)
    assert counts(store) == before
    return info.value


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def cheap_scrypt_hash(password: str, salt: bytes = b"0123456789abcdef") -> str:
    """A hash in our format at the lowest cost an import accepts (N=2^10),
    computed independently of passwords.py."""
    key = hashlib.scrypt(password.encode(), salt=salt, n=2**10, r=8, p=1, dklen=32)
    return f"$scrypt$ln=10,r=8,p=1${b64(salt)}${b64(key)}"


def passlib_pbkdf2_hash(password: str, salt: bytes = b"saltsaltsalt", rounds: int = 1000) -> str:
    """The form passlib writes: adapted base64 ('.' for '+'), no padding."""
    key = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, rounds, 32)
    return f"$pbkdf2-sha256${rounds}${b64(salt).replace('+', '.')}${b64(key).replace('+', '.')}"


# --- what a good file does ------------------------------------------------------


def test_good_file_imports_users_passwords_and_totp_tokens(store, tmp_path: Path) -> None:
    path = write(tmp_path, (
        "name,display_name,email,phone,password,totp_secret\n"
        f"alice,Alice Liddell,alice@example.org,+4915112345678,correct horse,{RFC6238_SECRET}\n"
        "bob,,,,,\n"
        f"dave,Dave,dave@example.com,,,{SECRET_B.lower()}\n"
    ))
    summary = import_users(store, path, hash_workers=1)

    assert (summary.users, summary.passwords, summary.tokens, summary.file) == (3, 1, 2, path)
    alice = store.get_user("alice")
    assert (alice.display_name, alice.email, alice.phone) == ("Alice Liddell", "alice@example.org", "+4915112345678")
    assert alice.password_hash.startswith("$scrypt$")
    assert passwords.verify_password("correct horse", alice.password_hash)
    assert not passwords.verify_password("correct horse ", alice.password_hash)
    bob = store.get_user("bob")
    assert (bob.display_name, bob.email, bob.phone, bob.password_hash) == (None, None, None, None)
    assert store.list_tokens("bob") == []

    [token] = store.list_tokens("alice")
    assert (token.type, token.digits, token.period, token.algorithm) == ("totp", 6, 30, "sha1")
    assert token.serial.startswith("TOTP") and len(token.serial) == 12
    assert otp_at(token, 59 // 30) == RFC6238_CODE_AT_59 == pyotp.TOTP(RFC6238_SECRET).at(59)
    [dave_token] = store.list_tokens("dave")
    assert dave_token.secret == SECRET_B   # normalised to upper case
    assert otp_at(dave_token, 1_700_000_000 // 30) == pyotp.TOTP(SECRET_B).at(1_700_000_000)
    assert counts(store) == (4, 3)


def test_prehashed_passwords_are_kept_verbatim_and_verify(store, tmp_path: Path, monkeypatch) -> None:
    def no_hashing(password: str, config=None) -> str:
        raise AssertionError("a carried-over hash must not be hashed again")

    monkeypatch.setattr(passwords, "hash_password", no_hashing)
    scrypt_hash, pbkdf2_hash = cheap_scrypt_hash("alice pw"), passlib_pbkdf2_hash("bob pw")
    path = write(tmp_path, f'name,password\nalice,"{scrypt_hash}"\nbob,{pbkdf2_hash}\n')

    summary = import_users(store, path, hash_workers=4)

    assert summary.passwords == 2
    assert store.get_user("alice").password_hash == scrypt_hash
    assert store.get_user("bob").password_hash == pbkdf2_hash
    assert passwords.verify_password("alice pw", scrypt_hash)
    assert passwords.verify_password("bob pw", pbkdf2_hash)


def test_plain_passwords_are_hashed_in_a_process_pool(store, tmp_path: Path) -> None:
    rows = "".join(f"user{i},pw-{i}\n" for i in range(3))
    path = write(tmp_path, "name,password\n" + rows)

    summary = import_users(store, path, hash_workers=2)

    assert summary.passwords == 3
    for i in range(3):
        encoded = store.get_user(f"user{i}").password_hash
        assert passwords.verify_password(f"pw-{i}", encoded)
        assert not passwords.verify_password(f"pw-{(i + 1) % 3}", encoded)


def test_header_in_any_order_case_and_spacing_with_a_bom(store, tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeff Phone , EMAIL,Name\r\n+14155550123,bob@example.org,bob\r\n")

    import_users(store, path, hash_workers=1)

    bob = store.get_user("bob")
    assert (bob.name, bob.email, bob.phone) == ("bob", "bob@example.org", "+14155550123")


def test_blank_lines_and_trailing_empty_cells_are_ignored(store, tmp_path: Path) -> None:
    path = write(tmp_path, "\nname,email\n\nalice\n,\nbob,bob@example.org,,\n\n")

    assert import_users(store, path, hash_workers=1).users == 2
    assert store.get_user("alice").email is None


def test_password_cells_are_read_verbatim_other_cells_trimmed(store, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(passwords, "hash_password", lambda password, config=None: "hashed:" + password)
    path = write(tmp_path, "name, display_name, password\nalice , Alice , two words \n")

    import_users(store, path, hash_workers=1)

    alice = store.get_user("alice")
    assert (alice.display_name, alice.password_hash) == ("Alice", "hashed: two words ")


# --- what a bad file does: every problem, with its line, nothing written --------


def test_every_bad_row_is_reported_with_its_line(store, tmp_path: Path) -> None:
    path = write(tmp_path, (
        "name,email,phone,totp_secret,password\n"     # 1
        "alice,alice@example.org,+4915112345678,,\n"  # 2 fine
        "bad\x01name,,,,\n"                            # 3
        "bob,not-an-address,,,\n"                      # 4
        "eve,,004915112345678,,\n"                     # 5
        "frank,,,not base32!,\n"                       # 6
        "gina,,,JBSWY3DP,\n"                           # 7 40 bits
        "hank,bad@,12345,,\n"                          # 8 two problems
        ",,,,\n"                                        # 9 blank: skipped
        ",x@example.org,,,\n"                          # 10 no name
    ))
    error = failure(store, path)

    where = [(p.where, p.message) for p in error.problems]
    assert [w for w, _ in where] == [f"{path}:{n}" for n in (3, 4, 5, 6, 7, 8, 8, 10)]
    messages = [m for _, m in where]
    assert "control characters" in messages[0]
    assert messages[1] == "email 'not-an-address' is not a valid mail address"
    assert "E.164" in messages[2]
    assert messages[3] == "totp_secret is not valid base32 (letters A-Z and digits 2-7)"
    assert messages[4] == "totp_secret is too short: 40 bits, at least 80 needed"
    assert "email" in messages[5] and "E.164" in messages[6]
    assert messages[7] == "name is empty"
    assert error.total == 8
    assert str(error).splitlines()[0] == f"{path}:3: {messages[0]}"


def test_password_problems_never_repeat_the_cell(store, tmp_path: Path) -> None:
    broken = "$scrypt$ln=99,r=8,p=1$c2FsdHNhbHQ$" + "A" * 43      # cost out of range
    bcrypt = "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW"
    path = write(tmp_path, f'name,password\nalice,"{broken}"\nbob,{bcrypt}\ncarl,$argon2id$v=19$xyz\n')

    error = failure(store, path)

    assert [p.where for p in error.problems] == [f"{path}:2", f"{path}:3", f"{path}:4"]
    assert error.problems[0].message.startswith("password: looks like a $scrypt$ hash but is malformed")
    assert error.problems[1].message.startswith("password: looks like a $scheme$ hash that radius-mfa cannot verify")
    for secret in (broken, bcrypt, "$argon2id$", "R9h/cIPz", "$2b$"):
        assert secret not in str(error)


def test_an_imported_hash_below_the_minimum_cost_is_rejected(store, tmp_path: Path) -> None:
    # such hashes would otherwise be stored, and fall to a brute force of a
    # stolen store in moments
    weak_pbkdf2 = passlib_pbkdf2_hash("bob pw", rounds=999)
    salt = b"0123456789abcdef"
    key = hashlib.scrypt(b"carl pw", salt=salt, n=2**9, r=8, p=1, dklen=32)
    weak_scrypt = f"$scrypt$ln=9,r=8,p=1${b64(salt)}${b64(key)}"
    path = write(tmp_path, (
        f'name,password\nalice,"{cheap_scrypt_hash("alice pw")}"\nbob,{weak_pbkdf2}\n'
        f'carl,"{weak_scrypt}"\ndave,{passlib_pbkdf2_hash("dave pw", rounds=1000)}\n'))

    error = failure(store, path)

    assert [p.where for p in error.problems] == [f"{path}:3", f"{path}:4"]
    assert error.problems[0].message.startswith(
        "password: the $pbkdf2-sha256$ hash is too weak to carry over (999 iterations, "
        "fewer than the 1,000")
    assert error.problems[1].message.startswith(
        "password: the $scrypt$ hash is too weak to carry over (N=2^9, less than the 2^10")
    for secret in (weak_pbkdf2, weak_scrypt, "saltsalt", b64(key)):
        assert secret not in str(error)


def test_hashes_at_the_minimum_cost_are_carried_over(store, tmp_path: Path) -> None:
    scrypt_hash, pbkdf2_hash = cheap_scrypt_hash("alice pw"), passlib_pbkdf2_hash("bob pw", rounds=1000)
    path = write(tmp_path, f'name,password\nalice,"{scrypt_hash}"\nbob,{pbkdf2_hash}\n')
    assert import_users(store, path, hash_workers=1).passwords == 2
    assert store.get_user("bob").password_hash == pbkdf2_hash


@pytest.mark.parametrize("workers", [1, 2])
def test_plain_passwords_are_hashed_with_the_configured_scheme(store, tmp_path: Path, workers) -> None:
    config = PasswordsConfig(scheme="pbkdf2-sha256", pbkdf2_iterations=3_000)
    path = write(tmp_path, "name,password\nalice,pw-a\nbob,pw-b\n")

    import_users(store, path, hash_workers=workers, passwords_config=config)

    for name, password in (("alice", "pw-a"), ("bob", "pw-b")):
        encoded = store.get_user(name).password_hash
        assert encoded.startswith("$pbkdf2-sha256$3000$")
        assert passwords.verify_password(password, encoded)
        assert not passwords.needs_rehash(encoded, config)


def test_an_unusable_passwords_section_is_one_problem(store, tmp_path: Path) -> None:
    path = write(tmp_path, "name,password\nalice,pw-a\n")
    error = failure(store, path, passwords_config=PasswordsConfig(scheme="md5"))
    assert "passwords.scheme" in error.problems[0].message


def test_secrets_never_appear_in_messages(store, tmp_path: Path) -> None:
    path = write(tmp_path, "name,totp_secret\nalice,JBSWY3DP!SECRETPART\n")

    error = failure(store, path)

    assert "SECRETPART" not in str(error) and "JBSWY3DP" not in str(error)


def test_a_name_repeated_in_the_file_names_the_first_line(store, tmp_path: Path) -> None:
    path = write(tmp_path, "name,email\nalice,\nbob,\nalice,\nbob,bad-mail\n")

    error = failure(store, path)

    assert [str(p) for p in error.problems] == [
        f"{path}:4: user 'alice' repeats line 2",
        f"{path}:5: email 'bad-mail' is not a valid mail address",
        f"{path}:5: user 'bob' repeats line 3",
    ]


def test_a_user_in_the_store_already_is_refused(store, tmp_path: Path) -> None:
    path = write(tmp_path, "name\nalice\ncarol\nzed\n")

    error = failure(store, path)

    assert [str(p) for p in error.problems] == [f"{path}:3: user 'carol' exists already"]
    assert store.get_user("alice") is None


def test_problems_from_both_checks_come_in_line_order(store, tmp_path: Path) -> None:
    path = write(tmp_path, "name,phone\ncarol,\nbob,12\n")

    error = failure(store, path)

    assert [p.where for p in error.problems] == [f"{path}:2", f"{path}:3"]


def test_a_quoted_cell_over_two_lines_keeps_line_numbers_right(store, tmp_path: Path) -> None:
    path = write(tmp_path, 'name,display_name\nalice,"two\nlines"\nbob,\nbob,\n')

    error = failure(store, path)

    assert [str(p) for p in error.problems] == [
        f"{path}:2: display name must be at most 256 printable characters",
        f"{path}:5: user 'bob' repeats line 4",
    ]


def test_a_row_with_more_cells_than_the_header_is_refused(store, tmp_path: Path) -> None:
    path = write(tmp_path, "name,display_name\nalice,Liddell, Alice\n")

    error = failure(store, path)

    assert [str(p) for p in error.problems] == [
        f"{path}:2: 3 cells, but the header names 2 columns; a cell with a comma needs double quotes"]


def test_an_unquoted_scrypt_hash_gets_a_hint(store, tmp_path: Path) -> None:
    path = write(tmp_path, f"name,password\nalice,{cheap_scrypt_hash('pw')}\n")

    error = failure(store, path)

    assert error.problems[0].message.endswith("(every $scrypt$ hash has commas)")
    assert "$scrypt$ln" not in str(error)


def test_only_the_first_hundred_problems_are_kept_and_all_counted(store, tmp_path: Path) -> None:
    path = write(tmp_path, "name,phone\n" + "".join(f"u{i},bad\n" for i in range(250)))

    error = failure(store, path)

    assert error.total == 250 and len(error.problems) == 100
    assert error.problems[0].where == f"{path}:2" and error.problems[-1].where == f"{path}:101"
    assert str(error).splitlines()[-1] == "… and 150 more problems"


def test_an_unknown_column_is_named(store, tmp_path: Path) -> None:
    path = write(tmp_path, "name,mail,Phone\nalice,a@example.org,\n")

    error = failure(store, path)

    assert len(error.problems) == 1
    assert error.problems[0].where == f"{path}:1"
    assert error.problems[0].message.startswith("unknown column 'mail' (columns are name, display_name,")


def test_a_header_without_name_or_with_a_column_twice_is_refused(store, tmp_path: Path) -> None:
    path = write(tmp_path, "email,Email\nalice@example.org,alice@example.org\n")

    error = failure(store, path)

    assert [p.message for p in error.problems] == [
        "column email appears twice",
        "no name column: the header must name one",
    ]


@pytest.mark.parametrize("text", ["", "\n\n", "\ufeff"])
def test_an_empty_file_is_refused(store, tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)

    error = failure(store, path)

    assert error.problems[0].where == path
    assert error.problems[0].message.startswith("the file is empty: a header row")


def test_a_header_without_rows_is_refused(store, tmp_path: Path) -> None:
    path = write(tmp_path, "name,email\n\n")

    error = failure(store, path)

    assert [str(p) for p in error.problems] == [f"{path}: no users: the file has a header row but no rows after it"]


def test_a_file_that_is_not_utf8_is_refused_with_the_line(store, tmp_path: Path) -> None:
    rows = "".join(f"user{i},User {i}\n" for i in range(2000)).encode()    # past the decoder's read-ahead
    path = write(tmp_path, b"name,display_name\n" + rows + b"alice,M\xfcller\n")

    error = failure(store, path)

    assert [str(p) for p in error.problems] == [f"{path}:2002: not UTF-8 text"]


def test_blank_header_cells_are_allowed_if_their_column_is_empty(store, tmp_path: Path) -> None:
    good = write(tmp_path, "name,,email,\nalice,,a@example.org,\n")
    bad = write(tmp_path, "name,,email\nbob,oops,\n", "bad.csv")

    assert import_users(store, good, hash_workers=1).users == 1
    error = failure(store, bad)
    assert [str(p) for p in error.problems] == [f"{bad}:2: a value in a column without a name in the header"]


def test_a_missing_file_is_refused(store, tmp_path: Path) -> None:
    error = failure(store, str(tmp_path / "nope.csv"))

    assert error.problems[0].message.startswith("cannot read the file:")


def test_a_file_changed_between_the_passes_is_rolled_back(store, tmp_path: Path, monkeypatch) -> None:
    path = write(tmp_path, f"name,totp_secret\nalice,{SECRET_B}\nbob,\n")
    fresh_serials = userimport._fresh_serials

    def change_the_file_then_draw(store_, count):   # runs after pass 1, before the write
        Path(path).write_text(f"name,totp_secret\nalice,{SECRET_B}\nbob,\n#evil\n")
        return fresh_serials(store_, count)

    monkeypatch.setattr(userimport, "_fresh_serials", change_the_file_then_draw)

    error = failure(store, path)

    assert "changed while it was being imported" in str(error)
    assert store.get_user("alice") is None


# --- serials and progress -------------------------------------------------------


def test_token_serials_are_drawn_again_when_taken(store, tmp_path: Path, monkeypatch) -> None:
    draws = iter(["cafe0001", "cafe0001", "cafe0002", "cafe0003", "cafe0003", "cafe0004"])
    monkeypatch.setattr(userimport.secrets, "token_hex", lambda n: next(draws))
    path = write(tmp_path, f"name,totp_secret\nalice,{SECRET_B}\nbob,{SECRET_B}\n")

    import_users(store, path, hash_workers=1)

    assert {t.serial for t in store.list_tokens("alice") + store.list_tokens("bob")} == {"TOTPCAFE0002", "TOTPCAFE0003"}


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal(store, tmp_path: Path) -> None:
    path = write(tmp_path, "name\n" + "".join(f"u{i}\n" for i in range(20)))
    pipe, terminal = io.StringIO(), FakeTerminal()

    import_users(store, path, progress=pipe, hash_workers=1)
    path2 = write(tmp_path, "name\n" + "".join(f"v{i}\n" for i in range(20)), "more.csv")
    import_users(store, path2, progress=terminal, hash_workers=1)

    assert pipe.getvalue() == ""
    assert "checking" in terminal.getvalue() and "writing" in terminal.getvalue()
    assert "/20" in terminal.getvalue()   # the writing bar knows its total


def test_problem_formats_as_where_and_message() -> None:
    assert str(Problem("users.csv:12", "name is empty")) == "users.csv:12: name is empty"
    assert issubclass(ImportFailed, userimport.RefusedError)


def test_broken_quoting_is_refused_with_the_line(store, tmp_path: Path) -> None:
    path = write(tmp_path, 'name,display_name\nalice,Alice\nbob,"Bo"b\n')

    error = failure(store, path)

    assert error.problems[0].where == f"{path}:3"
    assert error.problems[0].message.startswith("not valid CSV:")
