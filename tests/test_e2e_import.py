"""Hardware tokens end to end: `token import`, `token assign`, `token resync`,
then a sign-in through radclient with a code computed from the known seed.

The seeds are the published ones: RFC 4226's "12345678901234567890" (HOTP,
Appendix D: counter 0 → 755224, 1 → 287082 …) and RFC 6238's SHA-1/256/512
seeds (Appendix B)."""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
import subprocess
import time

import pyotp
import pytest

import pskc_docs as docs
from e2e import Server, needs_radclient, radclient

PASSWORD = "correct horse"
RFC4226_SEED = b"12345678901234567890"
RFC4226_B32 = base64.b32encode(RFC4226_SEED).decode()
RFC4226_CODES = ["755224", "287082", "359152", "969429", "338314"]
RFC6238_SHA256_SEED = b"12345678901234567890123456789012"


def sign_in(server: Server, user: str, answer: str):
    """`password,answer` in one request (challenge clients take the inline form too)."""
    return radclient(server.port, [("User-Name", user), ("User-Password", f"{PASSWORD},{answer}"),
                                   ("Message-Authenticator", "0x00")])


def import_csv(server: Server, text: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    path = server.directory / "tokens.csv"
    path.write_text(text)
    return server.cli("token", "import", str(path), *extra, check=check)


def hand_out(server: Server, csv_line: str, user: str) -> None:
    """A fob from a one-line CSV delivery, assigned to a new user with PASSWORD."""
    import_csv(server, csv_line + "\n")
    server.cli("user", "add", user, "--password-stdin", input=PASSWORD + "\n")
    server.cli("token", "assign", csv_line.split(",", 1)[0], user)


def dump(db_path) -> str:
    """The whole store as SQL text: the `sqlite3 FILE .dump` an administrator runs."""
    if shutil.which("sqlite3"):
        return subprocess.run(["sqlite3", str(db_path), ".dump"], capture_output=True, text=True,
                              check=True, timeout=30).stdout
    with sqlite3.connect(db_path) as conn:
        return "\n".join(conn.iterdump())


@needs_radclient
def test_csv_tokens_import_unassigned_then_sign_in_once_each(tmp_path):
    server = Server(tmp_path)
    sha256_b32 = base64.b32encode(RFC6238_SHA256_SEED).decode()
    result = import_csv(server, f"""# vendor delivery 2026-11, batch 7
serial, secret_base32, period, digits, algorithm
HW-HOTP-1, {RFC4226_B32}, hotp
HW-TOTP-1, {sha256_b32.lower()}, 30, 8, SHA256   # an 8-digit SHA-256 key fob
""")
    assert "imported 2 tokens" in result.stdout
    listed = {t["serial"]: t for t in json.loads(server.cli("token", "list", "--json").stdout)}
    assert listed["HW-HOTP-1"] == {"serial": "HW-HOTP-1", "type": "hotp", "user": None, "digits": 6,
                                   "counter": 0, "algorithm": "sha1"}
    assert listed["HW-TOTP-1"]["user"] is None and listed["HW-TOTP-1"]["period"] == 30

    server.cli("user", "add", "alice", "--password-stdin", input=PASSWORD + "\n")
    server.cli("token", "assign", "HW-HOTP-1", "alice")
    server.cli("token", "assign", "HW-TOTP-1", "alice")
    server.start()
    try:
        server.mark("alice")
        assert sign_in(server, "alice", RFC4226_CODES[0]).code == "Access-Accept"
        record = server.record_since_mark("alice")
        assert (record["factor"], record["device"], record["result"]) == ("hotp", "HW-HOTP-1", "accept")

        server.mark("alice")
        assert sign_in(server, "alice", RFC4226_CODES[0]).code == "Access-Reject"     # used
        assert server.record_since_mark("alice")["reason"] == "replay"

        # the look-ahead: the button was pressed twice without signing in
        assert sign_in(server, "alice", RFC4226_CODES[3]).code == "Access-Accept"
        assert sign_in(server, "alice", RFC4226_CODES[2]).code == "Access-Reject"     # behind now

        # the other token of the same user works too
        totp = pyotp.TOTP(sha256_b32, digits=8, digest="sha256")
        server.mark("alice")
        assert sign_in(server, "alice", totp.now()).code == "Access-Accept"
        assert server.record_since_mark("alice")["device"] == "HW-TOTP-1"
    finally:
        assert server.stop() == 0
    assert json.loads(server.cli("token", "list", "alice", "--json").stdout)[0]["counter"] == 4
    # a reset gives the fobs back to the pool, counter kept, ready for the next user
    server.cli("user", "reset", "alice")
    pool = {t["serial"]: t for t in json.loads(server.cli("token", "list", "--json").stdout)}
    assert set(pool) == {"HW-HOTP-1", "HW-TOTP-1"}
    assert pool["HW-HOTP-1"]["user"] is None and pool["HW-HOTP-1"]["counter"] == 4


PSKC_FORMS = {
    "plain": (None, ()),
    "pre-shared key": (docs.PresharedKey(bytes.fromhex("12345678901234567890123456789012")),
                       ("--key", "12345678901234567890123456789012")),
    "password": (docs.Password("qwerty", iterations=1000), ("--password-stdin",)),
}


@needs_radclient
@pytest.mark.parametrize("form", list(PSKC_FORMS))
def test_pskc_tokens_import_then_sign_in(tmp_path, form):
    protection, options = PSKC_FORMS[form]
    server = Server(tmp_path)
    path = docs.write_document(tmp_path / "delivery.pskcxml", [
        docs.KeySpec(serial="987654321", secret=RFC4226_SEED, algorithm="hotp", digits=6, counter=0),
        docs.KeySpec(serial="987654322", secret=RFC6238_SHA256_SEED, algorithm="totp", digits=8,
                     suite="HMAC-SHA256", time_interval=30),
    ], protection)
    result = server.cli("token", "import", str(path), *options,
                        input="qwerty\n" if "--password-stdin" in options else None)
    assert "imported 2 tokens" in result.stdout and "pskc" in result.stdout
    listed = {t["serial"]: t for t in json.loads(server.cli("token", "list", "--json").stdout)}
    assert listed["987654322"] == {"serial": "987654322", "type": "totp", "user": None, "digits": 8,
                                   "period": 30, "algorithm": "sha256"}
    server.cli("user", "add", "alice", "--password-stdin", input=PASSWORD + "\n")
    server.cli("token", "assign", "987654321", "alice")
    server.cli("token", "assign", "987654322", "alice")
    server.start()
    try:
        assert sign_in(server, "alice", RFC4226_CODES[0]).code == "Access-Accept"
        assert sign_in(server, "alice", RFC4226_CODES[0]).code == "Access-Reject"
        totp = pyotp.TOTP(base64.b32encode(RFC6238_SHA256_SEED).decode(), digits=8, digest="sha256")
        assert sign_in(server, "alice", totp.now()).code == "Access-Accept"
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("case", ["wrong key", "wrong password", "tampered MAC", "no key given"])
def test_a_pskc_file_that_does_not_open_imports_nothing(tmp_path, case):
    server = Server(tmp_path)
    import_csv(server, f"KEEP-1,{RFC4226_B32}\n")
    key = bytes.fromhex("12345678901234567890123456789012")
    protection: docs.PresharedKey | docs.Password = docs.PresharedKey(key)
    options: tuple[str, ...] = ("--key", key.hex())
    tamper = None
    if case == "wrong key":
        options = ("--key", "00" * 16)
    elif case == "wrong password":
        protection, options = docs.Password("qwerty", iterations=1000), ("--password-stdin",)
    elif case == "tampered MAC":
        tamper = "mac"
    elif case == "no key given":
        options = ()
    path = docs.write_document(tmp_path / "delivery.pskcxml", [
        docs.KeySpec(serial="A1", secret=RFC4226_SEED),
        docs.KeySpec(serial="A2", secret=RFC4226_SEED, tamper=tamper),
    ], protection)
    result = server.cli("token", "import", str(path), *options, check=False,
                        input="not-qwerty\n" if "--password-stdin" in options else None)
    assert result.returncode == 1, result.stderr
    assert "nothing imported" in result.stderr
    expected = {"wrong key": "MAC", "wrong password": "MAC", "tampered MAC": "A2",
                "no key given": "--key"}[case]
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert [t["serial"] for t in json.loads(server.cli("token", "list", "--json").stdout)] == ["KEEP-1"]


def test_a_csv_with_bad_rows_imports_nothing_and_names_each_line(tmp_path):
    server = Server(tmp_path)
    import_csv(server, f"KEEP-1,{RFC4226_B32}\n")
    result = import_csv(server, f"""serial,secret
OK-1,{RFC4226_B32}
BAD-1,not base32!
OK-2,{RFC4226_B32},30,9
KEEP-1,{RFC4226_B32}
OK-1,{RFC4226_B32}
""", check=False)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert any(line.startswith(f"{tmp_path / 'tokens.csv'}:3:") and "base32" in line for line in lines)
    assert any(":4:" in line and "digits" in line for line in lines)
    assert any(":5:" in line and "KEEP-1" in line for line in lines)
    assert any(":6:" in line and "OK-1" in line and "line 2" in line for line in lines)
    assert "nothing imported" in lines[-1]
    assert RFC4226_B32 not in result.stderr
    assert [t["serial"] for t in json.loads(server.cli("token", "list", "--json").stdout)] == ["KEEP-1"]


@needs_radclient
def test_resync_moves_a_hotp_token_far_ahead(tmp_path):
    server = Server(tmp_path)
    hand_out(server, f"FOB-1,{RFC4226_B32},hotp", "bob")
    hotp = pyotp.HOTP(RFC4226_B32)
    refused = server.cli("token", "resync", "FOB-1", hotp.at(501), hotp.at(500), check=False)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    result = server.cli("token", "resync", "FOB-1", hotp.at(500), hotp.at(501))
    assert "next counter 502" in result.stdout
    server.start()
    try:
        assert sign_in(server, "bob", hotp.at(501)).code == "Access-Reject"
        assert sign_in(server, "bob", hotp.at(502)).code == "Access-Accept"
    finally:
        assert server.stop() == 0


@needs_radclient
def test_resync_gives_a_drifting_totp_token_its_offset(tmp_path):
    server = Server(tmp_path)
    hand_out(server, f"FOB-T,{RFC4226_B32},30", "carol")
    fob = pyotp.TOTP(RFC4226_B32)
    fob_now = time.time() + 41 * 30        # the fob's clock runs 20 minutes ahead
    # the code it showed before and the one it shows now
    result = server.cli("token", "resync", "FOB-T", fob.at(fob_now - 30), fob.at(fob_now))
    assert "+41 time steps" in result.stdout
    server.start()
    try:
        assert sign_in(server, "carol", fob.at(fob_now)).code == "Access-Reject"       # used by resync
        assert sign_in(server, "carol", fob.at(fob_now + 30)).code == "Access-Accept"
    finally:
        assert server.stop() == 0


def test_no_token_secret_is_in_clear_in_the_store(tmp_path):
    server = Server(tmp_path)
    import_csv(server, f"HW-1,{RFC4226_B32},hotp\n")
    server.cli("user", "add", "dave")
    enrolled = json.loads(server.cli("token", "add", "dave", "--type", "totp", "--json").stdout)
    text = dump(tmp_path / "radius-mfa.db")
    assert "HW-1" in text and enrolled["serial"] in text
    for secret in (RFC4226_B32, enrolled["secret"]):
        raw = base64.b32decode(secret + "=" * (-len(secret) % 8))
        for form in (secret, secret.lower(), raw.hex(), base64.b64encode(raw).decode()):
            assert form not in text
    # nor does any listing show one
    for args in (("token", "list"), ("token", "list", "--json"), ("user", "show", "dave", "--json")):
        output = server.cli(*args).stdout
        assert RFC4226_B32 not in output and enrolled["secret"] not in output


@pytest.mark.parametrize("key", ["00112233", "zz" * 16])
def test_a_bad_key_option_is_bad_usage(tmp_path, key):
    server = Server(tmp_path)
    (tmp_path / "t.xml").write_text("<x/>")
    result = server.cli("token", "import", str(tmp_path / "t.xml"), "--key", key, check=False)
    assert result.returncode == 2 and "--key" in result.stderr


@needs_radclient
def test_imported_users_sign_in_with_their_password_and_token(tmp_path):
    server = Server(tmp_path)
    from radius_mfa.passwords import hash_password

    carried = hash_password("from the old server")
    users = tmp_path / "users.csv"
    users.write_text(
        "name,display_name,email,phone,password,totp_secret\n"
        f"erin,Erin E,erin@example.org,+4915112345678,{PASSWORD},{RFC4226_B32}\n"
        f'frank,,,,"{carried}",{RFC4226_B32}\n'
        "grace,Grace G,,,,\n"
    )
    result = server.cli("user", "import", str(users))
    assert "imported 3 users" in result.stdout
    shown = json.loads(server.cli("user", "show", "erin", "--json").stdout)
    assert (shown["display_name"], shown["email"], shown["phone"]) == ("Erin E", "erin@example.org", "+4915112345678")
    server.start()
    try:
        totp = pyotp.TOTP(RFC4226_B32)
        assert sign_in(server, "erin", totp.now()).code == "Access-Accept"
        answer = radclient(server.port, [("User-Name", "frank"),
                                         ("User-Password", f"from the old server,{totp.now()}"),
                                         ("Message-Authenticator", "0x00")])
        assert answer.code == "Access-Accept"
    finally:
        assert server.stop() == 0


def test_a_user_file_with_bad_rows_imports_nothing(tmp_path):
    server = Server(tmp_path)
    users = tmp_path / "users.csv"
    users.write_text("name,email,phone\nok,ok@example.org,\nbad,not-an-address,\nworse,,0800\n")
    result = server.cli("user", "import", str(users), check=False)
    assert result.returncode == 1
    assert f"{users}:3: email" in result.stderr and f"{users}:4: phone" in result.stderr
    assert result.stderr.splitlines()[-1].endswith("nothing imported from " + str(users) + ": 2 problems")
    assert json.loads(server.cli("user", "list", "--json").stdout) == []
