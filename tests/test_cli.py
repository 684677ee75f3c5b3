"""The `radius-mfa` command line, driven through main() in-process and once
through the installed console script."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time

import pyotp
import pytest

import radius_mfa
from radius_mfa import cli
from radius_mfa.model import AuthRecord, Token, User
from radius_mfa.passwords import verify_password

CONFIG_TEMPLATE = """\
server:
  name: mfa-test
store: "sqlite:///{db}"
clients:
  - name: vpn
    address: 127.0.0.1
    secret: "testing123"
  - name: wifi
    address: 192.0.2.0/24
    secret: "another-secret"
    require_message_authenticator: auto
"""

# RFC 6238 appendix B: the SHA-1 seed is the ASCII string "12345678901234567890".
RFC6238_SEED = b"12345678901234567890"


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


def private_store_key(path) -> None:
    path.write_text(os.urandom(32).hex() + "\n")
    path.chmod(0o600)


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    monkeypatch.delenv(cli.CONFIG_ENV, raising=False)
    path = tmp_path / "radius-mfa.yaml"
    path.write_text(CONFIG_TEMPLATE.format(db=tmp_path / "store.db"))
    private_store_key(tmp_path / "store.key")    # made ahead: its creation notice is not under test
    return str(path)




def add_user(run, name="alice", *extra):
    code, _, err = run("user", "add", name, *extra)
    assert code == 0, err


def add_token_json(run, *extra, name="alice") -> dict:
    code, out, err = run("token", "add", name, "--type", "totp", "--json", *extra)
    assert code == 0, err
    return json.loads(out)


# --------------------------------------------------------------------------
# The console script and argument parsing
# --------------------------------------------------------------------------


def _console_script() -> list[str]:
    beside_python = os.path.join(os.path.dirname(sys.executable), "radius-mfa")
    found = beside_python if os.path.exists(beside_python) else shutil.which("radius-mfa")
    if not found:
        pytest.skip("the radius-mfa console script is not installed")
    return [found]


def test_console_script_help_exits_0_and_bad_usage_exits_2():
    script = _console_script()
    helped = subprocess.run(script + ["--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0
    assert "user" in helped.stdout and "token" in helped.stdout
    bad = subprocess.run(script + ["no-such-command"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "usage:" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_admin_commands_do_not_import_the_reactor(config_file):
    code = (
        "import sys; from radius_mfa.cli import main; "
        f"rc = main(['-c', {config_file!r}, 'user', 'list']); "
        "assert rc == 0, rc; "
        "assert 'twisted.internet.reactor' not in sys.modules, 'reactor imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_missing_subcommand_is_bad_usage(run):
    code, _, err = run("user")
    assert code == 2
    assert "usage:" in err


def test_help_of_a_subcommand_exits_0(run):
    code, out, _ = run("token", "add", "--help")
    assert code == 0
    assert "--algorithm" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["-c", "{cfg}", "user", "list"],
        ["user", "list", "-c", "{cfg}"],
        ["user", "-c", "{cfg}", "list"],
        ["user", "list", "--config", "{cfg}"],
    ],
)
def test_config_option_is_accepted_before_and_after_the_command_words(run, config_file, argv):
    add_user(run, "alice")
    code, out, err = run(*[a.format(cfg=config_file) for a in argv], config=None)
    assert code == 0, err
    assert "alice" in out


def test_config_comes_from_the_environment_when_not_given(run, config_file, monkeypatch):
    monkeypatch.setenv(cli.CONFIG_ENV, config_file)
    code, out, _ = run("check-config", config=None)
    assert code == 0
    assert out == f"{config_file}: OK\n"


def test_a_later_config_option_wins_over_the_environment(run, config_file, monkeypatch, tmp_path):
    monkeypatch.setenv(cli.CONFIG_ENV, str(tmp_path / "absent.yaml"))
    code, out, _ = run("check-config", "-c", config_file, config=None)
    assert code == 0
    assert out == f"{config_file}: OK\n"


def test_keyboard_interrupt_exits_130_quietly(run, monkeypatch):
    def interrupted(args, ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_user_list", interrupted)
    code, out, err = run("user", "list")
    assert (code, out, err) == (130, "", "")


def test_serve_hands_the_loaded_config_to_the_service(run, config_file, monkeypatch):
    seen = []
    fake = type(sys)("radius_mfa.service")
    fake.run = lambda config, debug=False: seen.append(config) or 0
    monkeypatch.setitem(sys.modules, "radius_mfa.service", fake)
    monkeypatch.setattr(radius_mfa, "service", fake, raising=False)
    code, _, err = run("serve")
    assert code == 0, err
    assert seen[0].path == config_file
    assert seen[0].server.name == "mfa-test"


# --------------------------------------------------------------------------
# check-config
# --------------------------------------------------------------------------


def test_check_config_accepts_a_good_file(run, config_file):
    code, out, err = run("check-config")
    assert (code, out) == (0, f"{config_file}: OK\n")
    # the test file's short secrets and 0644 mode are only warned about
    assert all(": warning: " in line for line in err.splitlines())


def test_check_config_lists_every_problem_and_exits_2(run, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "server:\n"
        "  name: mfa-test\n"
        "  colour: blue\n"
        "store: \"sqlite:///x.db\"\n"
        "clients:\n"
        "  - name: vpn\n"
        "    address: not-an-address\n"
        "    secret: s\n"
    )
    code, out, err = run("check-config", config=str(bad))
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) >= 2, err
    assert all(line.startswith(f"{bad}:") for line in lines), err
    assert any("server.colour" in line for line in lines), err
    assert any("clients" in line and "address" in line for line in lines), err
    assert "Traceback" not in err


def test_a_missing_config_file_exits_2_with_one_line(run, tmp_path):
    absent = tmp_path / "absent.yaml"
    code, _, err = run("user", "list", config=str(absent))
    assert code == 2
    assert len(err.splitlines()) == 1
    assert str(absent) in err


# --------------------------------------------------------------------------
# user …
# --------------------------------------------------------------------------


def test_user_add_with_password_stdin_stores_a_verifiable_hash(run, store):
    code, out, err = run("user", "add", "alice", "--password-stdin", stdin="s3cret pass\n")
    assert code == 0, err
    assert "s3cret" not in out + err
    stored = store.get_user("alice").password_hash
    assert stored and "s3cret" not in stored
    assert verify_password("s3cret pass", stored)
    assert not verify_password("s3cret pass\n", stored)


def test_password_stdin_keeps_everything_but_the_newline(run, store):
    code, _, err = run("user", "add", "bob", "--password-stdin", stdin="  padded  \n")
    assert code == 0, err
    assert verify_password("  padded  ", store.get_user("bob").password_hash)


def test_an_empty_password_is_refused(run, store):
    code, _, err = run("user", "add", "alice", "--password-stdin", stdin="\n")
    assert code == 1
    assert err.startswith("radius-mfa: ") and len(err.splitlines()) == 1
    assert store.get_user("alice") is None


def test_user_add_stores_the_details(run, store):
    add_user(run, "alice", "--display-name", "Alice A.", "--email", "alice@example.org",
             "--phone", "+4915112345678")
    user = store.get_user("alice")
    assert (user.display_name, user.email, user.phone) == ("Alice A.", "alice@example.org", "+4915112345678")
    assert user.password_hash is None


@pytest.mark.parametrize("phone", ["015112345678", "+0151123456", "+1234567", "+1234567890123456", "+49 151 1234", "+49abc45678"])
def test_a_phone_not_in_e164_form_is_refused(run, store, phone):
    code, out, err = run("user", "add", "alice", "--phone", phone)
    assert code == 1
    assert len(err.splitlines()) == 1 and "E.164" in err
    assert store.get_user("alice") is None


@pytest.mark.parametrize("email", ["alice", "alice@", "@example.org", "alice@example", "al ice@example.org"])
def test_an_implausible_email_is_refused(run, email):
    code, _, err = run("user", "add", "alice", "--email", email)
    assert code == 1
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("name", ["", "  ", "ali\x00ce", "ali\nce", "a" * 254])
def test_a_bad_user_name_is_refused(run, name):
    code, _, err = run("user", "add", name)
    assert code == 1
    assert len(err.splitlines()) == 1


def test_a_user_name_of_253_characters_is_accepted(run):
    add_user(run, "a" * 253)


def test_adding_a_user_twice_is_refused(run):
    add_user(run, "alice")
    code, _, err = run("user", "add", "alice")
    assert code == 1
    assert err == "radius-mfa: user 'alice' exists already\n"


@pytest.mark.parametrize("command", ["show", "remove", "reset", "disable", "enable", "unlock"])
def test_an_unknown_user_exits_1_with_one_line(run, command):
    code, out, err = run("user", command, "bob")
    assert (code, out, err) == (1, "", "radius-mfa: user 'bob' not found\n")


def test_user_list_shows_a_table_and_json(run):
    add_user(run, "alice", "--display-name", "Alice A.")
    add_user(run, "bob")
    add_token_json(run)
    code, out, _ = run("user", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "DISPLAY", "NAME", "TOKENS", "STATUS"]
    assert lines[1].split() == ["alice", "Alice", "A.", "1", "active"]
    assert lines[2].split() == ["bob", "-", "0", "active"]
    code, out, _ = run("user", "list", "--json")
    users = json.loads(out)
    assert [u["name"] for u in users] == ["alice", "bob"]
    assert users[0]["display_name"] == "Alice A."
    assert len(users[0]["tokens"]) == 1
    assert all("password_hash" not in u for u in users)


def test_user_show_masks_phone_and_email_but_json_has_them(run):
    add_user(run, "alice", "--email", "alice@example.org", "--phone", "+4915112345678")
    code, out, err = run("user", "add", "carol", "--password-stdin", stdin="pw\n")
    assert code == 0
    token = add_token_json(run)
    code, out, _ = run("user", "show", "alice")
    assert code == 0
    assert "a***@example.org" in out and "alice@example.org" not in out
    assert "***5678" in out and "+4915112345678" not in out
    assert token["serial"] in out and "totp" in out
    assert token["secret"] not in out
    code, out, _ = run("user", "show", "alice", "--json")
    shown = json.loads(out)
    assert shown["email"] == "alice@example.org"
    assert shown["phone"] == "+4915112345678"
    assert shown["locked"] is False and shown["disabled"] is False
    assert [t["serial"] for t in shown["tokens"]] == [token["serial"]]
    assert "password_hash" not in shown and "$scrypt$" not in out
    assert token["secret"] not in out
    code, out, _ = run("user", "show", "carol", "--json")
    assert json.loads(out)["has_password"] is True and "$scrypt$" not in out


def test_user_disable_and_enable(run, store):
    add_user(run)
    assert run("user", "disable", "alice")[0] == 0
    assert store.get_user("alice").disabled is True
    code, out, _ = run("user", "show", "alice")
    assert "disabled" in out
    assert json.loads(run("user", "list", "--json")[1])[0]["disabled"] is True
    assert run("user", "enable", "alice")[0] == 0
    assert store.get_user("alice").disabled is False
    assert "disabled" not in run("user", "show", "alice")[1]


def test_user_unlock_lifts_a_lockout(run, store):
    add_user(run)
    store.record_failure("alice", time.time(), 1, 900)
    code, out, _ = run("user", "show", "alice", "--json")
    assert json.loads(out)["locked"] is True
    assert "locked until" in run("user", "list")[1]
    code, out, err = run("user", "unlock", "alice")
    assert code == 0, err
    user = store.get_user("alice")
    assert user.locked_until is None and user.failures == 0
    assert json.loads(run("user", "show", "alice", "--json")[1])["locked"] is False


def test_user_reset_removes_every_token(run, store):
    add_user(run)
    add_token_json(run)
    add_token_json(run)
    code, out, err = run("user", "reset", "alice")
    assert code == 0, err
    assert "2" in out
    assert store.list_tokens("alice") == []
    assert store.get_user("alice") is not None


def test_user_remove_deletes_the_user_and_their_tokens(run, store):
    add_user(run)
    serial = add_token_json(run)["serial"]
    assert run("user", "remove", "alice")[0] == 0
    assert store.get_user("alice") is None
    assert store.get_token(serial) is None


# --------------------------------------------------------------------------
# token …
# --------------------------------------------------------------------------


def test_token_add_json_prints_one_object_whose_secret_matches_the_store(run, store):
    add_user(run)
    code, out, err = run("token", "add", "alice", "--type", "totp", "--json")
    assert code == 0, err
    printed = json.loads(out)          # the whole of stdout is one JSON object
    assert set(printed) == {"serial", "type", "secret", "uri"}
    assert printed["type"] == "totp"
    assert printed["serial"].startswith("TOTP") and len(printed["serial"]) == 12
    assert len(base64.b32decode(printed["secret"] + "=" * (-len(printed["secret"]) % 8))) == 20
    stored = store.get_token(printed["serial"])
    assert stored.user == "alice"
    for moment in (0, 59, 1111111109, time.time()):
        expected = pyotp.TOTP(stored.secret).at(moment)
        assert pyotp.TOTP(printed["secret"]).at(moment) == expected
        assert pyotp.parse_uri(printed["uri"]).at(moment) == expected


def test_token_add_uri_names_issuer_and_user(run):
    add_user(run)
    uri = add_token_json(run)["uri"]
    assert uri.startswith("otpauth://totp/mfa-test:alice?")
    parsed = pyotp.parse_uri(uri)
    assert parsed.issuer == "mfa-test" and parsed.name == "alice"


def test_token_add_honours_digits_period_and_algorithm(run, store):
    add_user(run)
    printed = add_token_json(run, "--digits", "8", "--period", "60", "--algorithm", "sha256")
    assert len(base64.b32decode(printed["secret"] + "=" * (-len(printed["secret"]) % 8))) == 32
    stored = store.get_token(printed["serial"])
    assert (stored.digits, stored.period, stored.algorithm) == (8, 60, "sha256")
    reference = pyotp.TOTP(printed["secret"], digits=8, interval=60, digest=hashlib.sha256)
    assert pyotp.parse_uri(printed["uri"]).at(1234567890) == reference.at(1234567890)


def test_token_add_sha512_generates_64_bytes(run):
    add_user(run)
    secret = add_token_json(run, "--algorithm", "sha512")["secret"]
    assert len(base64.b32decode(secret + "=" * (-len(secret) % 8))) == 64


def test_a_given_secret_reproduces_the_rfc6238_vectors(run, store):
    add_user(run)
    given = base64.b32encode(RFC6238_SEED).decode().lower()
    spaced = " ".join(given[i:i + 4] for i in range(0, len(given), 4))
    printed = add_token_json(run, "--secret", spaced, "--digits", "8")
    assert printed["secret"] == base64.b32encode(RFC6238_SEED).decode().rstrip("=")
    totp = pyotp.TOTP(store.get_token(printed["serial"]).secret, digits=8)
    # RFC 6238 appendix B, SHA-1 column
    assert totp.at(59) == "94287082"
    assert totp.at(1111111109) == "07081804"
    assert totp.at(2000000000) == "69279037"


def test_hotp_token_starts_at_counter_0_and_matches_rfc4226(run, store):
    add_user(run)
    secret = base64.b32encode(RFC6238_SEED).decode()
    code, out, err = run("token", "add", "alice", "--type", "hotp", "--secret", secret, "--json")
    assert code == 0, err
    printed = json.loads(out)
    assert printed["serial"].startswith("HOTP") and printed["type"] == "hotp"
    stored = store.get_token(printed["serial"])
    assert stored.counter == 0
    assert "counter=0" in printed["uri"]
    # RFC 4226 appendix D
    assert [pyotp.HOTP(stored.secret).at(i) for i in range(3)] == ["755224", "287082", "359152"]


@pytest.mark.parametrize("secret", ["not base32!", "11111111", "ABC", "A"])
def test_an_invalid_secret_is_refused(run, store, secret):
    add_user(run)
    code, out, err = run("token", "add", "alice", "--type", "totp", "--secret", secret)
    assert code == 1
    assert out == "" and len(err.splitlines()) == 1 and "base32" in err
    assert store.list_tokens("alice") == []


def test_a_secret_under_80_bits_is_refused(run, store):
    add_user(run)
    short = base64.b32encode(b"\x01" * 8).decode()          # 64 bits
    code, _, err = run("token", "add", "alice", "--type", "totp", "--secret", short)
    assert code == 1 and "too short" in err
    assert store.list_tokens("alice") == []


def test_a_secret_under_128_bits_is_accepted_with_a_warning(run, store):
    add_user(run)
    weak = base64.b32encode(b"\x01" * 10).decode()          # 80 bits
    code, out, err = run("token", "add", "alice", "--type", "totp", "--secret", weak, "--json")
    assert code == 0
    assert "warning" in err and "80 bits" in err
    assert json.loads(out)["secret"] == weak


def test_token_add_draws_a_qr_code_and_prints_the_secret_once(run):
    add_user(run)
    code, out, err = run("token", "add", "alice", "--type", "totp")
    assert code == 0, err
    assert "otpauth://totp/" in out
    secret = pyotp.parse_uri(out.split("URI: ", 1)[1].split()[0]).secret
    assert out.count(secret) == 2      # the manual-entry line and inside the URI
    assert any(ch in out for ch in "\u2580\u2584\u2588")


def test_token_add_for_an_unknown_user_is_refused(run):
    code, out, err = run("token", "add", "bob", "--type", "totp")
    assert (code, out, err) == (1, "", "radius-mfa: user 'bob' not found\n")


@pytest.mark.parametrize(
    "extra", [["--type", "sms"], ["--digits", "7"], ["--algorithm", "md5"], ["--period", "0"], []]
)
def test_token_add_bad_options_are_usage_errors(run, extra):
    add_user(run)
    code, _, err = run("token", "add", "alice", *extra)
    assert code == 2
    assert "usage:" in err


def test_token_list_json_never_shows_a_secret(run, store):
    add_user(run)
    add_user(run, "bob")
    first = add_token_json(run)
    second = add_token_json(run, "--algorithm", "sha256", name="bob")
    store.add_token(Token(serial="HW0001", type="hotp", secret="JBSWY3DPEHPK3PXP", counter=5))
    code, out, err = run("token", "list", "--json")
    assert code == 0, err
    assert first["secret"] not in out and second["secret"] not in out and "JBSWY3DPEHPK3PXP" not in out
    listed = {t["serial"]: t for t in json.loads(out)}
    assert set(listed) == {first["serial"], second["serial"], "HW0001"}
    assert listed["HW0001"] == {"serial": "HW0001", "type": "hotp", "user": None, "digits": 6,
                                "counter": 5, "algorithm": "sha1"}
    assert listed[second["serial"]] == {"serial": second["serial"], "type": "totp", "user": "bob",
                                        "digits": 6, "period": 30, "algorithm": "sha256"}
    code, out, _ = run("token", "list", "bob", "--json")
    assert [t["serial"] for t in json.loads(out)] == [second["serial"]]
    code, out, _ = run("token", "list")
    assert first["secret"] not in out and "HW0001" in out and first["serial"] in out


def test_token_list_of_an_unknown_user_is_refused(run):
    code, _, err = run("token", "list", "bob")
    assert (code, err) == (1, "radius-mfa: user 'bob' not found\n")


def test_token_assign_and_remove(run, store):
    add_user(run)
    store.add_token(Token(serial="HW0001", type="hotp", secret="JBSWY3DPEHPK3PXP"))
    assert run("token", "assign", "HW0001", "alice")[0] == 0
    assert store.get_token("HW0001").user == "alice"
    assert run("token", "assign", "HW0002", "alice")[:3:2] == (1, "radius-mfa: token 'HW0002' not found\n")
    assert run("token", "assign", "HW0001", "bob")[:3:2] == (1, "radius-mfa: user 'bob' not found\n")
    assert run("token", "remove", "HW0001")[0] == 0
    assert store.get_token("HW0001") is None
    assert run("token", "remove", "HW0001")[:3:2] == (1, "radius-mfa: token 'HW0001' not found\n")


def test_assigning_a_token_held_by_another_user_is_refused(run, store):
    add_user(run)
    add_user(run, "bob")
    serial = add_token_json(run)["serial"]
    code, _, err = run("token", "assign", serial, "bob")
    assert code == 1 and len(err.splitlines()) == 1
    assert store.get_token(serial).user == "alice"


# --------------------------------------------------------------------------
# report …
# --------------------------------------------------------------------------


def test_report_clients_lists_every_configured_client(run, store):
    t0 = 1_700_000_000.0
    store.note_client_request("vpn", t0, True)
    store.note_client_request("vpn", t0 + 60, True, count=2)
    code, out, err = run("report", "clients")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["NAME", "ADDRESS"]
    assert lines[1].split() == ["vpn", "127.0.0.1", "udp", "3", "2023-11-14T22:14:20Z", "yes", "true", "0"]
    assert lines[2].split() == ["wifi", "192.0.2.0/24", "udp", "0", "-", "unknown", "auto:", "not", "yet", "0"]
    code, out, _ = run("report", "clients", "--json")
    clients = json.loads(out)
    assert clients[0] == {
        "name": "vpn", "address": "127.0.0.1", "transport": "udp", "requests": 3,
        "last_seen": "2023-11-14T22:14:20Z", "sends_message_authenticator": "yes",
        "last_with_message_authenticator": "2023-11-14T22:14:20Z",
        "last_without_message_authenticator": None,
        "require_message_authenticator": "true",
        "requires_message_authenticator_now": True, "required_since": None,
        "dropped": {}, "last_dropped": None,
    }
    assert clients[1]["name"] == "wifi" and clients[1]["last_seen"] is None


def test_report_clients_shows_drops_of_a_client_that_was_never_answered(run, store):
    store.note_client_drops([("vpn", "missing_message_authenticator", 7, 1_700_000_000.0)])
    vpn = json.loads(run("report", "clients", "--json")[1])[0]
    assert (vpn["requests"], vpn["dropped"]) == (0, {"missing_message_authenticator": 7})
    assert vpn["last_dropped"] == "2023-11-14T22:13:20Z"
    out = run("report", "clients")[1]
    assert "missing_message_authenticator 7" in out


def test_report_clients_says_since_when_auto_requires_message_authenticator(run, store):
    store.note_client_request("wifi", 1_700_000_000.0, False)
    wifi = json.loads(run("report", "clients", "--json")[1])[1]
    assert (wifi["requires_message_authenticator_now"], wifi["required_since"]) == (False, None)
    store.note_client_request("wifi", 1_700_000_060.0, True)
    store.note_client_request("wifi", 1_700_000_120.0, True)
    wifi = json.loads(run("report", "clients", "--json")[1])[1]
    assert (wifi["requires_message_authenticator_now"], wifi["required_since"]) == \
        (True, "2023-11-14T22:14:20Z")


def test_user_update_changes_the_enrolled_destinations(run, store):
    run("user", "add", "alice", "--phone", "+4915112345678")
    code, out, err = run("user", "update", "ALICE", "--phone", "+15550001111", "--email", "a@example.org")
    assert code == 0, err
    user = store.get_user("alice")
    assert (user.phone, user.email) == ("+15550001111", "a@example.org")
    assert run("user", "update", "alice", "--email", "")[0] == 0
    assert store.get_user("alice").email is None
    assert run("user", "update", "alice")[0] == 2
    assert run("user", "update", "nobody", "--email", "x@example.org")[0] == 1
    assert run("user", "update", "alice", "--phone", "not a number")[0] == 1


def test_names_are_made_canonical_by_every_command(run, store):
    assert run("user", "add", " Alice ")[0] == 0
    assert store.get_user("alice") is not None
    assert run("user", "add", "ALICE")[0] == 1                 # the same user
    assert run("user", "show", "ALICE")[0] == 0


def test_a_store_from_before_canonical_names_is_migrated(run, store):
    store.add_user(User("Bob", created=1.0))
    store.add_token(Token(serial="T-bob", type="totp", secret="JBSWY3DPEHPK3PXP", user="Bob"))
    assert run("user", "show", "bob")[0] == 0
    assert store.get_user("Bob") is None
    assert store.get_token("T-bob").user == "bob"


def test_names_that_become_one_are_reported_not_merged(run, store):
    store.add_user(User("Carol", created=1.0))
    store.add_user(User("carol", created=1.0))
    code, _, err = run("user", "list")
    assert code == 1 and "Carol, carol → carol" in err
    assert store.get_user("Carol") is not None and store.get_user("carol") is not None


def test_report_clients_says_mixed_and_no(run, store):
    store.note_client_request("vpn", 1000.0, True)
    store.note_client_request("vpn", 2000.0, False)
    store.note_client_request("wifi", 1000.0, False)
    clients = json.loads(run("report", "clients", "--json")[1])
    assert [c["sends_message_authenticator"] for c in clients] == ["mixed", "no"]


def _audit(time_: float, user: str, result: str, **extra) -> AuthRecord:
    fields = {"time": cli.iso_time(time_), "server": "mfa-test", "client": "vpn", "user": user,
              "factor": "totp", "result": result, **extra}
    return AuthRecord(time=time_, fields=fields)


def test_report_auth_filters_and_formats(run, store):
    store.add_auth_record(_audit(1_700_000_000.0, "alice", "accept"))
    store.add_auth_record(_audit(1_700_000_100.0, "bob", "reject", reason="bad_code"))
    store.add_auth_record(_audit(1_700_086_400.0, "alice", "reject", reason="replay"))
    code, out, err = run("report", "auth")
    assert code == 0, err
    assert len(out.splitlines()) == 4 and "bad_code" in out
    records = json.loads(run("report", "auth", "--json", "--user", "alice")[1])
    assert [r["result"] for r in records] == ["accept", "reject"]
    records = json.loads(run("report", "auth", "--json", "--since", "2023-11-15")[1])
    assert [r["reason"] for r in records] == ["replay"]
    records = json.loads(run("report", "auth", "--json", "--since", "2023-11-14T23:13:20+01:00")[1])
    assert [r["user"] for r in records] == ["alice", "bob", "alice"]
    code, out, _ = run("report", "auth", "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0])[:3] == ["time", "server", "server_ip"]
    assert [r["reason"] for r in rows] == ["", "bad_code", "replay"]


def test_report_auth_rejects_a_bad_since_and_two_formats(run):
    assert run("report", "auth", "--since", "yesterday")[0] == 2
    assert run("report", "auth", "--json", "--csv")[0] == 2


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def test_table_cells_escape_control_characters():
    table = cli.format_table(("A", "B"), [("x\x1b[2Jy", None)])
    assert "\x1b" not in table
    assert table.splitlines()[1].split() == ["x\\x1b[2Jy", "-"]


def test_iso_time_is_utc_with_z():
    assert cli.iso_time(0) == "1970-01-01T00:00:00Z"
    assert cli.iso_time(None) is None


def test_user_import_takes_names_as_the_store_keeps_them(run, store, tmp_path):
    good = tmp_path / "users.csv"
    good.write_text("name,email\n Alice ,alice@example.org\n")
    assert run("user", "import", str(good))[0] == 0
    assert store.get_user("alice").email == "alice@example.org"
    twice = tmp_path / "twice.csv"
    twice.write_text("name\nbob\nBOB\n")
    code, _, err = run("user", "import", str(twice))
    assert code == 1 and store.get_user("bob") is None
    assert ":3:" in err
