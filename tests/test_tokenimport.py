"""`token import`: PSKC (RFC 6030) and CSV, all or nothing, against a real SQLite store.

Vectors: RFC 4226 Appendix D (HOTP, secret "12345678901234567890"), RFC 6238
Appendix B (TOTP SHA-1/256/512, 8 digits, T=59 → step 1), RFC 6030 Figures
2, 6 and 7 (documents written by tests/pskc_docs.py, which is checked here
against the RFC's published ciphertexts and MACs).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import os
from pathlib import Path

import pytest

import pskc_docs as docs
from pskc_docs import KeySpec, Password, PresharedKey
from radius_mfa.errors import UsageError
from radius_mfa.model import Token
from radius_mfa.otp import otp_at
from radius_mfa.importing import MAX_PROBLEMS
from radius_mfa.tokenimport import (
    ImportFailed,
    ImportSummary,
    Problem,
    detect_format,
    import_tokens,
)
from radius_mfa.validate import encode_base32

RFC4226_SECRET = b"12345678901234567890"
RFC4226_CODES = ["755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871", "520489"]
RFC6238_SECRETS = {
    "sha1": b"12345678901234567890",
    "sha256": b"12345678901234567890123456789012",
    "sha512": b"1234567890123456789012345678901234567890123456789012345678901234",
}
RFC6238_AT_59 = {"sha1": "94287082", "sha256": "46119246", "sha512": "90693936"}
SUITES = {"sha1": "HMAC-SHA1", "sha256": "HMAC-SHA256", "sha512": "HMAC-SHA512"}
B32 = {name: encode_base32(secret) for name, secret in RFC6238_SECRETS.items()}
KEEP = Token(serial="KEEP01", type="totp", secret=encode_base32(os.urandom(20)))


@pytest.fixture
def store(make_store):
    """A store (SQLite, then PostgreSQL) that already holds one token, which
    no import may touch."""
    store = make_store()
    store.add_token(KEEP)
    return store


def untouched(store) -> bool:
    """Only the token that was there before the import, unchanged."""
    tokens = store.list_tokens()
    return [t.serial for t in tokens] == ["KEEP01"] and tokens[0].secret == KEEP.secret


def write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> str:
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return str(path)


def refused(store, path: str, **options) -> ImportFailed:
    """Import, expecting a refusal that left the store as it was."""
    with pytest.raises(ImportFailed) as caught:
        import_tokens(store, path, **options)
    assert untouched(store)
    return caught.value


def messages(failure: ImportFailed) -> list[str]:
    return [str(problem) for problem in failure.problems]


# --- CSV ------------------------------------------------------------------------------


def test_csv_imports_each_form_with_its_defaults(store, tmp_path):
    path = write(tmp_path, "tokens.csv", "\ufeff"
                 "# exported by the vendor\n"
                 "Serial, Secret, Period, Digits, Algorithm\n"
                 "\n"
                 f"  HW1 , {B32['sha1'].lower()}   # TOTP, all defaults\n"
                 f"HW2,{B32['sha256']},30,8,SHA256\n"
                 f"HW3,{B32['sha512']},,8,sha512\n"
                 f"HW4,{B32['sha1']},60\n"
                 f"HW5,{B32['sha1']},HOTP,6\n")
    summary = import_tokens(store, path)
    assert isinstance(summary, ImportSummary)
    assert (summary.count, summary.by_type, summary.format) == (5, {"totp": 4, "hotp": 1}, "csv")
    assert "imported 5 tokens (1 hotp, 4 totp)" in str(summary)
    got = {t.serial: t for t in store.list_tokens()}
    assert (got["HW1"].type, got["HW1"].period, got["HW1"].digits, got["HW1"].algorithm) == ("totp", 30, 6, "sha1")
    assert got["HW4"].period == 60
    assert (got["HW5"].type, got["HW5"].counter, got["HW5"].digits) == ("hotp", 0, 6)
    assert all(t.user is None for t in got.values())
    # the codes of RFC 6238 Appendix B at T=59, from what the store keeps
    assert otp_at(dataclasses.replace(got["HW1"], digits=8), 1) == RFC6238_AT_59["sha1"]
    assert otp_at(got["HW2"], 59 // 30) == RFC6238_AT_59["sha256"]
    assert otp_at(got["HW3"], 59 // 30) == RFC6238_AT_59["sha512"]
    assert otp_at(got["HW5"], 0) == RFC4226_CODES[0]


def test_csv_reports_every_bad_row_with_its_line(store, tmp_path):
    path = write(tmp_path, "tokens.csv",
                 f"OK1,{B32['sha1']}\n"
                 "BAD2,not base32!\n"                        # line 2
                 f"BAD3,{B32['sha1']},0\n"                   # line 3
                 f"BAD4,{B32['sha1']},30,9,md5\n"            # line 4
                 f"BAD5,{B32['sha1']},30,6,sha1,extra\n"     # line 5
                 "BAD6\n"                                    # line 6
                 f"bad serial,{B32['sha1']}\n"               # line 7
                 "BAD8,GEZDGNBV\n")                          # line 8: 40 bits
    failure = refused(store, path)
    assert failure.total == 7
    text = messages(failure)
    assert text[0] == f"{path}:2: the secret is not valid base32 (letters A-Z and digits 2-7)"
    assert text[1] == f"{path}:3: the period must be a number of seconds from 1 to 3600, or hotp"
    assert text[2] == f"{path}:4: digits must be 6, 7 or 8; the algorithm must be sha1, sha256 or sha512"
    assert text[3].startswith(f"{path}:5: too many fields: 6")
    assert text[4].startswith(f"{path}:6: expected serial,secret_base32")
    assert text[5] == f"{path}:7: the serial contains a blank"
    assert text[6] == f"{path}:8: the secret is too short: 40 bits, at least 80 needed"


def test_csv_messages_never_repeat_a_secret(store, tmp_path):
    secret = "GEZDGNBVGY3TQOJQ"
    path = write(tmp_path, "tokens.csv", f"{secret} {secret},{secret}\nHW2,{secret}x\nHW3,{secret[:8]}\n")
    failure = refused(store, path)
    assert failure.total == 3
    assert secret[:8] not in str(failure)


def test_csv_duplicate_serial_names_the_first_line(store, tmp_path):
    path = write(tmp_path, "tokens.csv", f"HW1,{B32['sha1']}\nHW2,{B32['sha1']}\n# c\nHW1,{B32['sha256']}\n")
    failure = refused(store, path)
    assert messages(failure) == [f"{path}:4: serial HW1 repeats line 1"]


def test_csv_serial_in_the_store_already_is_refused(store, tmp_path):
    path = write(tmp_path, "tokens.csv", f"HW1,{B32['sha1']}\nKEEP01,{B32['sha256']}\n")
    failure = refused(store, path)
    assert messages(failure) == [f"{path}:2: serial KEEP01 exists in the store already"]


def test_csv_not_utf8_line_is_named(store, tmp_path):
    path = tmp_path / "tokens.csv"
    path.write_bytes(f"HW1,{B32['sha1']}\nH\xe9,{B32['sha1']}\n".encode("latin-1"))
    failure = refused(store, str(path))
    assert messages(failure) == [f"{path}:2: the line is not UTF-8 text"]


def test_an_empty_file_is_refused(store, tmp_path):
    path = write(tmp_path, "tokens.csv", "# nothing here\n\n")
    assert messages(refused(store, path)) == [f"{path}: the file holds no tokens"]


def test_only_the_first_problems_are_kept_but_all_are_counted(store, tmp_path):
    rows = "".join(f"HW{n},short\n" for n in range(MAX_PROBLEMS + 50))
    failure = refused(store, write(tmp_path, "tokens.csv", rows))
    assert (len(failure.problems), failure.total) == (MAX_PROBLEMS, MAX_PROBLEMS + 50)
    assert failure.problems[0].where.endswith("tokens.csv:1")
    assert "… and 50 more problems" in str(failure)


def test_a_large_csv_imports_whole_and_a_bad_last_row_imports_nothing(store, tmp_path):
    rows = [f"HW{n:06d},{encode_base32(os.urandom(20))},30,6,sha1\n" for n in range(20_000)]
    path = write(tmp_path, "tokens.csv", "".join(rows) + "HWLAST,not-base32\n")
    failure = refused(store, path)
    assert messages(failure) == [f"{path}:20001: the secret is not valid base32 (letters A-Z and digits 2-7)"]

    path = write(tmp_path, "tokens.csv", "".join(rows))
    assert import_tokens(store, path).count == 20_000
    assert len(store.list_tokens()) == 20_001


def test_a_file_changed_between_the_passes_imports_nothing(store, tmp_path):
    """Pass 2 re-reads the file inside the store's transaction: a row added
    after pass 1 checked the file rolls everything back."""
    path = write(tmp_path, "tokens.csv", f"HW1,{B32['sha1']}\nHW2,{B32['sha256']}\n")

    class Meddling:
        def __init__(self, inner):
            self.inner = inner

        def existing_token_serials(self, serials):
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"HW3,{B32['sha512']}\n")
            return self.inner.existing_token_serials(serials)

        def add_tokens(self, tokens):
            return self.inner.add_tokens(tokens)

    with pytest.raises(ImportFailed, match="the file changed while it was being imported"):
        import_tokens(Meddling(store), path)
    assert untouched(store)


def test_key_options_do_not_apply_to_csv(store, tmp_path):
    path = write(tmp_path, "tokens.csv", f"HW1,{B32['sha1']}\n")
    with pytest.raises(UsageError):
        import_tokens(store, path, key=b"k" * 16)
    with pytest.raises(UsageError):
        import_tokens(store, path, format="xml")
    assert untouched(store)


def test_a_missing_file_is_refused(store, tmp_path):
    failure = refused(store, str(tmp_path / "nope.csv"), format="csv")
    assert "cannot read the file" in str(failure)


# --- format detection and progress ---------------------------------------------------


def test_format_is_told_by_content(tmp_path):
    assert detect_format(write(tmp_path, "a.txt", "\ufeff\n  <?xml version='1.0'?><KeyContainer/>")) == "pskc"
    assert detect_format(write(tmp_path, "b.xml", "# serial,secret\nHW1,GEZDGNBVGY3TQOJQ\n")) == "csv"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_progress_bar_goes_to_a_terminal_only(store, tmp_path):
    rows = "".join(f"HW{n},{B32['sha1']}\n" for n in range(50))
    terminal, pipe = Terminal(), io.StringIO()
    import_tokens(store, write(tmp_path, "a.csv", rows), progress=terminal)
    assert "checking" in terminal.getvalue() and "importing" in terminal.getvalue()
    import_tokens(store, write(tmp_path, "b.csv", rows.replace("HW", "HX")), progress=pipe)
    assert pipe.getvalue() == ""


def test_the_summary_times_with_the_clock_given(store, tmp_path):
    ticks = iter([100.0, 102.5])
    summary = import_tokens(store, write(tmp_path, "t.csv", f"HW1,{B32['sha1']}\n"), clock=lambda: next(ticks))
    assert summary.seconds == 2.5


# --- PSKC: the writer against RFC 6030 -----------------------------------------------


def test_the_writer_reproduces_rfc6030_figure6():
    doc = docs.document([KeySpec(serial="987654321", key_id="12345678", secret=RFC4226_SECRET, digits=8,
                                 counter=0)],
                        PresharedKey(docs.RFC6030_PSK),
                        ivs=iter([docs.RFC6030_FIG6_MAC_KEY_IV, docs.RFC6030_FIG6_SECRET_IV]))
    assert "ESIzRFVmd4iZABEiM0RVZgKn6WjLaTC1sbeBMSvIhRejN9vJa2BOlSaMrR7I5wSX" in doc    # MACKey
    assert "AAECAwQFBgcICQoLDA0OD+cIHItlB3Wra1DUpxVvOx2lef1VmNPCMl8jwZqIUqGv" in doc    # Secret
    assert "Su+NvtQfmvfJzF6bmQiJqoLRExc=" in doc                                        # ValueMAC


def test_the_writer_reproduces_rfc6030_figure7():
    password = Password(docs.RFC6030_PASSWORD)
    assert password.aes_key().hex() == "651e63cd57008476af1ff6422cd02e41"
    sealed_mac_key = base64.b64decode("2GTTnLwM3I4e5IO5FkufoOEiOhNj91fhKRQBtBJYluUDsPOLTfUvoU2dStyOwYZx")
    sealed_secret = base64.b64decode("oTvo+S22nsmS2Z/RtcoF8Hfh+jzMe0RkiafpoDpnoZTjPYZu6V+A4aEn032yCr4f")
    mac_key = docs.aes_cbc_decrypt(password.aes_key(), sealed_mac_key)
    doc = docs.document([KeySpec(serial="987654321", key_id="123456", secret=RFC4226_SECRET, digits=8)],
                        Password(docs.RFC6030_PASSWORD, mac_key=mac_key),
                        ivs=iter([sealed_mac_key[:16], sealed_secret[:16]]))
    assert base64.b64encode(sealed_secret).decode() in doc
    assert "LP6xMvjtypbfT9PdkJhBZ+D6O4w=" in doc


# --- PSKC: the three forms --------------------------------------------------------------


def pskc_file(tmp_path: Path, keys: list[KeySpec], protection=None, name: str = "tokens.xml") -> str:
    return str(docs.write_document(tmp_path / name, keys, protection))


def test_plain_pskc_figure2_form_imports_an_rfc4226_hotp_token(store, tmp_path):
    path = pskc_file(tmp_path, [KeySpec(serial=None, key_id="12345678", secret=RFC4226_SECRET)])
    summary = import_tokens(store, path)
    assert (summary.count, summary.by_type, summary.format) == (1, {"hotp": 1}, "pskc")
    token = store.get_token("12345678")             # no DeviceInfo: the key Id is the serial
    assert (token.type, token.digits, token.algorithm, token.counter, token.user) == ("hotp", 6, "sha1", 0, None)
    assert [otp_at(token, counter) for counter in range(10)] == RFC4226_CODES


def test_preshared_key_figure6_form_imports_with_the_key(store, tmp_path):
    path = pskc_file(tmp_path, [KeySpec(serial="987654321", secret=RFC4226_SECRET, digits=8, counter=7)],
                     PresharedKey(docs.RFC6030_PSK))
    import_tokens(store, path, key=docs.RFC6030_PSK)
    token = store.get_token("987654321")
    assert (token.type, token.digits, token.counter) == ("hotp", 8, 7)
    assert otp_at(token, 0) == "84755224" and otp_at(token, 1) == "94287082"   # RFC 4226 D, 8 digits


def test_password_figure7_form_imports_with_the_password(store, tmp_path):
    path = pskc_file(tmp_path, [KeySpec(serial="987654321", secret=RFC4226_SECRET, digits=8)],
                     Password(docs.RFC6030_PASSWORD))
    import_tokens(store, path, password=docs.RFC6030_PASSWORD)
    assert otp_at(store.get_token("987654321"), 1) == "94287082"


@pytest.mark.parametrize("protection", [None, PresharedKey(os.urandom(32)), Password("s3cret", iterations=2000)],
                         ids=["plain", "aes256-psk", "pbkdf2"])
def test_totp_tokens_match_rfc6238_in_each_form(store, tmp_path, protection):
    keys = [KeySpec(serial=f"T-{name}", algorithm="totp", secret=secret, digits=8, suite=SUITES[name],
                    time_interval=30, time=0)
            for name, secret in RFC6238_SECRETS.items()]
    keys.append(KeySpec(serial="T-60", algorithm="totp", secret=RFC6238_SECRETS["sha1"], time_interval=60,
                        time_drift=-2))
    options = {}
    if isinstance(protection, PresharedKey):
        options["key"] = protection.key
    elif isinstance(protection, Password):
        options["password"] = protection.password
    summary = import_tokens(store, pskc_file(tmp_path, keys, protection), **options)
    assert summary.by_type == {"totp": 4}
    for name in RFC6238_SECRETS:
        token = store.get_token(f"T-{name}")
        assert (token.type, token.digits, token.algorithm, token.period, token.drift) == ("totp", 8, name, 30, 0)
        assert otp_at(token, 59 // token.period) == RFC6238_AT_59[name]
    slow = store.get_token("T-60")
    assert (slow.period, slow.digits, slow.algorithm, slow.drift) == (60, 6, "sha1", -2)


# --- PSKC: keys and MACs ------------------------------------------------------------------


def two_keys(**tamper) -> list[KeySpec]:
    return [KeySpec(serial="A1", secret=os.urandom(20), tamper=tamper.get("first")),
            KeySpec(serial="A2", secret=os.urandom(20), tamper=tamper.get("second"))]


def test_a_wrong_preshared_key_is_reported_once_for_the_file(store, tmp_path):
    path = pskc_file(tmp_path, two_keys(), PresharedKey(os.urandom(16)))
    failure = refused(store, path, key=os.urandom(16))
    assert failure.total == 1
    assert "wrong key or password" in str(failure) and failure.problems[0].where == path


def test_a_wrong_password_is_reported_once_for_the_file(store, tmp_path):
    path = pskc_file(tmp_path, two_keys(), Password("right"))
    failure = refused(store, path, password="wrong")
    assert failure.total == 1 and "wrong key or password" in str(failure)


def test_every_mac_failing_alike_is_one_problem(store, tmp_path):
    """The MAC key decrypts, yet no ValueMAC matches (a MAC key swapped, or a
    wrong key whose padding happened to look right): one line, not one per key."""
    key = PresharedKey(os.urandom(16))
    path = pskc_file(tmp_path, two_keys(first="mac", second="mac"), key)
    failure = refused(store, path, key=key.key)
    assert messages(failure) == [f"{path}: the MAC does not match: wrong key or password, or the file was "
                                 "altered (every key fails to decrypt)"]


@pytest.mark.parametrize("tamper", ["mac", "ciphertext"])
def test_a_tampered_key_is_named_and_nothing_is_imported(store, tmp_path, tamper):
    key = PresharedKey(os.urandom(16))
    path = pskc_file(tmp_path, two_keys(second=tamper), key)
    failure = refused(store, path, key=key.key)
    assert messages(failure) == [f"{path}: key 2 (serial A2): the MAC does not match: wrong key or password, "
                                 "or the file was altered"]


def test_an_encrypted_secret_without_a_mac_is_refused(store, tmp_path):
    """RFC 6030 §6.1.1: with a cipher that has no integrity check (CBC), a
    MAC value MUST accompany the encrypted value."""
    key = PresharedKey(os.urandom(16))
    path = pskc_file(tmp_path, two_keys(first="no-mac"), key)
    failure = refused(store, path, key=key.key)
    assert messages(failure) == [f"{path}: key 1 (serial A1): the encrypted Secret has no ValueMAC: "
                                 "RFC 6030 (section 6.1.1) requires one with aes128-cbc"]


def test_a_cbc_file_without_a_mac_method_is_refused(store, tmp_path):
    key = PresharedKey(os.urandom(16), mac_method=False)
    failure = refused(store, pskc_file(tmp_path, two_keys(first="no-mac", second="no-mac"), key), key=key.key)
    assert failure.total == 1 and "has no MACMethod" in str(failure)


def test_an_encrypted_file_without_a_key_says_what_is_needed(store, tmp_path):
    path = pskc_file(tmp_path, two_keys(), PresharedKey(os.urandom(16)), name="psk.xml")
    assert messages(refused(store, path)) == [
        f"{path}: the file is encrypted with a pre-shared key (KeyName 'Pre-shared-key'): give --key HEX"]
    path = pskc_file(tmp_path, two_keys(), Password("pw"), name="pbkdf2.xml")
    assert messages(refused(store, path)) == [
        f"{path}: the file is encrypted with a key derived from a password "
        "(PBKDF2, MasterKeyName 'My Password 1'): give --password-stdin"]


def test_a_password_for_a_preshared_key_file_is_refused(store, tmp_path):
    path = pskc_file(tmp_path, two_keys(), PresharedKey(os.urandom(16)))
    failure = refused(store, path, password="pw")
    assert "not a password: give --key HEX" in str(failure)


def test_a_key_of_the_wrong_length_is_refused(store, tmp_path):
    path = pskc_file(tmp_path, two_keys(), PresharedKey(os.urandom(16)))
    failure = refused(store, path, key=os.urandom(20))
    assert messages(failure) == [f"{path}: the key is 20 bytes long; aes128-cbc needs 16 bytes (32 hex digits)"]


@pytest.mark.parametrize("option", ["key", "password"])
def test_a_key_or_password_for_a_plain_file_is_refused(store, tmp_path, option):
    path = pskc_file(tmp_path, two_keys())
    value = os.urandom(16) if option == "key" else "pw"
    failure = refused(store, path, **{option: value})
    flag = "--key" if option == "key" else "--password-stdin"
    assert messages(failure) == [f"{path}: the file is not encrypted: leave out {flag}"]


# --- PSKC: what the importer will not take ---------------------------------------------------


def test_unsupported_algorithm_is_refused(store, tmp_path):
    path = pskc_file(tmp_path, [KeySpec(serial="H1", secret=os.urandom(20)),
                                KeySpec(serial="O2", secret=os.urandom(20), algorithm=docs.OCRA_URI)])
    failure = refused(store, path)
    assert messages(failure) == [f"{path}: key 2 (serial O2): unsupported algorithm '{docs.OCRA_URI}': "
                                 "only HOTP and TOTP tokens can be imported"]


@pytest.mark.parametrize(("spec", "message"), [
    (KeySpec(serial="X", secret=None), "the key has no secret"),
    (KeySpec(serial="X", secret=b"1234"), "the secret is too short: 32 bits, at least 80 needed"),
    (KeySpec(serial="X", secret=RFC4226_SECRET, digits=10), "the response length is 10: 6, 7 or 8 digits are supported"),
    (KeySpec(serial="X", secret=RFC4226_SECRET, digits=6, encoding="HEXADECIMAL"),
     "the response encoding is 'HEXADECIMAL': only DECIMAL codes are supported"),
    (KeySpec(serial="X", secret=RFC4226_SECRET, suite="HMAC-MD5"),
     "unsupported hash 'HMAC-MD5': HMAC-SHA1, HMAC-SHA256 or HMAC-SHA512"),
    (KeySpec(serial="X", algorithm="totp", secret=RFC4226_SECRET, time=1234),
     "the Time element is 1234: only tokens counting from the Unix epoch (Time 0 or absent) are supported"),
    (KeySpec(serial="X", secret=RFC4226_SECRET, key_xml='<Policy><PINPolicy PINUsageMode="Prepend"/></Policy>'),
     "the key's PIN policy (PINUsageMode Prepend) puts a PIN into the codes: not supported"),
    (KeySpec(serial="X", secret=RFC4226_SECRET, key_xml="<Policy><Frobnicate/></Policy>"),
     "the key's policy has elements this importer does not know (RFC 6030 section 5: do not use the key)"),
], ids=["no-secret", "short", "digits", "encoding", "hash", "time", "pin", "policy"])
def test_keys_the_verifiers_could_not_use_are_refused(store, tmp_path, spec, message):
    path = pskc_file(tmp_path, [spec])
    assert messages(refused(store, path)) == [f"{path}: key 1 (serial X): {message}"]


def test_pskc_duplicate_serial_and_serial_in_store(store, tmp_path):
    path = pskc_file(tmp_path, [KeySpec(serial="D1", secret=os.urandom(20)),
                                KeySpec(serial="KEEP01", secret=os.urandom(20)),
                                KeySpec(serial="D1", secret=os.urandom(20))])
    assert messages(refused(store, path)) == [
        f"{path}: key 2 (serial KEEP01): serial KEEP01 exists in the store already",
        f"{path}: key 3 (serial D1): serial D1 repeats key 1",
    ]


@pytest.mark.parametrize(("text", "message"), [
    ("<KeyContainer Version='1.0' xmlns='urn:ietf:params:xml:ns:keyprov:pskc'><KeyPackage>",
     "not a PSKC document: not well-formed XML (no element found: line 1, column "),
    ("<html><body/></html>", "not a PSKC document: the root element is <html>, not <KeyContainer>"),
    ("<KeyContainer Version='2.0' xmlns='urn:ietf:params:xml:ns:keyprov:pskc'/>",
     "unsupported PSKC version '2.0' (1.0 is)"),
], ids=["truncated", "html", "version"])
def test_a_file_that_is_not_pskc_is_refused_once(store, tmp_path, text, message):
    path = write(tmp_path, "tokens.xml", text)
    failure = refused(store, path)
    assert failure.total == 1 and str(failure.problems[0]).startswith(f"{path}: {message}")


def test_problem_reads_where_then_what():
    assert str(Problem("tokens.csv:7", "the serial is empty")) == "tokens.csv:7: the serial is empty"


def test_a_key_package_the_library_cannot_read_is_named(store, tmp_path):
    path = write(tmp_path, "tokens.xml", docs.document([KeySpec(serial="N1", secret=RFC4226_SECRET, counter=1)])
                 .replace("<PlainValue>1</PlainValue>", "<PlainValue>one</PlainValue>"))
    failure = refused(store, path)
    assert failure.total == 1 and str(failure.problems[0]).startswith(f"{path}: key 1: not a valid key package: ")


def test_a_file_cannot_make_the_key_derivation_spin(store, tmp_path):
    path = write(tmp_path, "tokens.xml", docs.document(two_keys(), Password("pw"))
                 .replace("<IterationCount>1000<", "<IterationCount>2000000000<"))
    assert messages(refused(store, path, password="pw")) == [
        f"{path}: the PBKDF2 iteration count 2000000000 is above 10,000,000"]


# --- PSKC: declared encodings the parser cannot read -------------------------------------


def declared(encoding: str) -> str:
    return docs.document([KeySpec(serial="E1", secret=RFC4226_SECRET)]).replace(
        'encoding="UTF-8"', f'encoding="{encoding}"', 1)


@pytest.mark.parametrize(("encoding", "reason"), [
    ("UTF-9", "unknown encoding: UTF-9"),
    ("x-no-such-charset", "unknown encoding: x-no-such-charset"),
    ("UTF-7", "multi-byte encodings are not supported"),
    ("UTF-32", "multi-byte encodings are not supported"),
    ("Shift_JIS", "multi-byte encodings are not supported"),
    ("base64", "'base64' is not a text encoding"),
    ("rot13", "'rot13' is not a text encoding"),
])
def test_a_pskc_file_declaring_an_unreadable_encoding_is_one_problem_not_a_traceback(
        store, tmp_path, encoding, reason):
    path = write(tmp_path, "tokens.xml", declared(encoding))
    assert messages(refused(store, path)) == [
        f"{path}: not a PSKC document: cannot read its character encoding ({reason}); save it as UTF-8"]


def test_a_malformed_xml_declaration_is_one_problem(store, tmp_path):
    for n, text in enumerate([declared(""), declared("latin-1\x01"),
                              declared("UTF-8").replace('version="1.0"', 'version="1.0" standalone="maybe"')]):
        path = write(tmp_path, f"tokens{n}.xml", text, encoding="latin-1")
        [message] = messages(refused(store, path))
        assert message.startswith(f"{path}: not a PSKC document: not well-formed XML (")


def test_a_pskc_file_saved_as_utf16_with_a_bom_imports(store, tmp_path):
    path = write(tmp_path, "tokens.xml", "\ufeff" + declared("UTF-16"), encoding="utf-16-le")
    assert detect_format(path) == "pskc"
    assert import_tokens(store, path).count == 1
    assert otp_at(store.get_token("E1"), 0) == RFC4226_CODES[0]


def test_token_import_of_an_unknown_encoding_prints_one_line_and_exits_1(tmp_path, capsys):
    from radius_mfa.cli import main

    config = tmp_path / "radius-mfa.yaml"
    config.write_text(f"store: sqlite:///{tmp_path}/store.db\n")
    (tmp_path / "store.key").write_text(os.urandom(32).hex() + "\n")   # its creation notice is not under test
    (tmp_path / "store.key").chmod(0o600)
    path = write(tmp_path, "tokens.xml", declared("UTF-9"))
    assert main(["-c", str(config), "token", "import", path]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[0] == (f"{path}: not a PSKC document: cannot read its character encoding "
                                   "(unknown encoding: UTF-9); save it as UTF-8")
