"""`report usage --month`: the billing figures of docs/reference.md, on SQLite and PostgreSQL.

The records are built by hand around the month's edges (UTC); the enrolment
history is written through the store's own methods (add a token, remove a
user, delete app passwords …) with the store's clock set to chosen times.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sqlite3
import types
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pg import KINDS, store_schema
from radius_mfa import cli, usage
from radius_mfa.errors import UsageError
from radius_mfa.model import AppPassword, AuthRecord, Device, Pairing, Token, User
from radius_mfa.store import open_store
from radius_mfa.store import sqlite as sqlite_module
from radius_mfa.store import sqlstore

MONTH = "2026-03"
SECRET = "JBSWY3DPEHPK3PXP"


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


@pytest.fixture(params=KINDS)
def config_file(request, tmp_path, monkeypatch):
    """A config whose store is SQLite, then PostgreSQL (no sms, voice, email or push)."""
    monkeypatch.delenv(cli.CONFIG_ENV, raising=False)
    with contextlib.ExitStack() as stack:
        url = f"sqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite" else stack.enter_context(store_schema())
        path = tmp_path / "radius-mfa.yaml"
        path.write_text(
            f'server:\n  name: mfa-test\nstore: "{url}"\nstore_key_file: "{tmp_path / "store.key"}"\n'
            'clients:\n  - name: vpn\n    address: 127.0.0.1\n    secret: "testing123-testing123"\n'
        )
        yield str(path)


@pytest.fixture
def clock(monkeypatch):
    """The store's clock (what the enrolment history records), set by the test."""
    now = [ts("2026-01-01T00:00:00")]
    monkeypatch.setattr(sqlstore, "time", types.SimpleNamespace(time=lambda: now[0]))
    return now


def record(when: str, user: str | None, factor: str | None, result: str, reason: str | None = None) -> AuthRecord:
    return AuthRecord(time=ts(when), fields={
        "time": when + "Z", "server": "mfa-test", "client": "vpn", "user": user,
        "factor": factor, "result": result, "reason": reason,
    })


RECORDS = [
    record("2026-02-28T23:59:59.999", "alice", "totp", "accept"),            # the month before
    record("2026-03-01T00:00:00", "alice", "totp", "accept"),                # the first instant counts
    record("2026-03-15T12:00:00", "bob", "totp", "reject", "bad_code"),
    record("2026-03-15T12:00:30", "bob", "push", "accept"),
    record("2026-03-20T08:00:00", "carol", "none", "accept"),                # exempt: no MFA completed
    record("2026-03-20T08:00:01", "carol", "none", "accept"),
    record("2026-03-21T09:00:00", "dave", None, "reject", "bad_password"),   # no factor: counted as none
    record("2026-03-22T09:00:00", "bob", "totp", "challenge"),
    record("2026-03-31T23:59:59.5", "erin", "app_password", "accept"),       # the last half second counts
    record("2026-04-01T00:00:00", "frank", "totp", "accept"),                # the month after
]

EXPECTED_AUTHENTICATIONS = {
    "total": 8,
    "by_result": {"accept": 5, "challenge": 1, "reject": 2},
    "by_factor": {
        "app_password": {"accept": 1},
        "none": {"accept": 2, "reject": 1},
        "push": {"accept": 1},
        "totp": {"accept": 1, "challenge": 1, "reject": 1},
    },
}


def token(serial: str, user: str) -> Token:
    return Token(serial=serial, type="totp", secret=SECRET, user=user)


def app_password(ap_id: str, user: str) -> AppPassword:
    return AppPassword(id=ap_id, user=user, label=None, password_hash="$scrypt$not-a-real-hash")


def build_history(store, clock) -> None:
    """Who held what, when (2026-03 is the month reported)."""
    def at(when: str) -> None:
        clock[0] = ts(when)

    at("2026-01-05T10:00:00")
    store.add_user(User("judy", phone="+41790000042"))      # a phone only: counts where sms is configured
    at("2026-01-10T10:00:00")
    store.add_user(User("kim"))
    store.add_app_password(app_password("ap-kim", "kim"))
    at("2026-01-15T10:00:00")
    store.add_user(User("leo"))
    store.add_token(token("T-LEO", "leo"))
    at("2026-02-27T10:00:00")
    store.reset_user("leo")                                  # lost everything before the month
    at("2026-02-01T10:00:00")
    store.add_user(User("hank"))
    store.add_token(token("T-HANK", "hank"))
    at("2026-02-20T10:00:00")
    store.remove_token("T-HANK")                             # removed before the month
    at("2026-02-10T10:00:00")
    store.add_user(User("alice"))
    store.add_token(token("T-ALICE", "alice"))               # enrolled before, still enrolled
    at("2026-03-03T10:00:00")
    store.delete_app_passwords("kim")                        # held on the 1st and 2nd of the month
    at("2026-03-05T10:00:00")
    store.add_user(User("bob"))
    store.add_app_password(app_password("ap-bob", "bob"))    # enrolled during the month
    at("2026-03-10T10:00:00")
    store.add_user(User("gina"))
    store.add_token(token("T-GINA", "gina"))
    at("2026-03-12T10:00:00")
    store.remove_user("gina")                                # enrolled then removed within the month
    at("2026-04-05T10:00:00")
    store.add_user(User("ivan"))
    store.add_token(token("T-IVAN", "ivan"))                 # only after the month
    for name in ("carol", "dave", "erin"):                   # no factor held; erin signs in with one anyway
        store.add_user(User(name))
    store.add_auth_records(RECORDS)


# --- the command, on SQLite and PostgreSQL ------------------------------------


def test_usage_figures_across_month_boundaries(run, store, clock) -> None:
    build_history(store, clock)
    code, out, err = run("report", "usage", "--month", MONTH, "--json")
    assert code == 0, err
    assert json.loads(out) == {
        "month": MONTH,
        # alice (token), kim (app password until the 3rd), bob (from the 5th),
        # gina (enrolled and removed within the month), erin (an accept by a
        # second factor proves it); not judy (no sms configured), leo, hank,
        # ivan, carol, dave
        "users_configured": 5,
        # alice, bob, erin; carol's accepts were exempt (factor none)
        "users_completed_mfa": 3,
        "authentications": EXPECTED_AUTHENTICATIONS,
    }


def test_usage_table_for_a_person(run, store, clock) -> None:
    build_history(store, clock)
    code, out, err = run("report", "usage", "--month", MONTH)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["month", MONTH, "(UTC)"]
    assert lines[1].split() == ["users", "configured", "5"]
    assert lines[2].split() == ["users", "completed", "MFA", "3"]
    assert lines[3].split() == ["authentications", "8"]
    table = {line.split()[0]: line.split()[1:] for line in lines[5:]}
    assert table["FACTOR"] == ["ACCEPT", "CHALLENGE", "REJECT", "TOTAL"]
    assert table["totp"] == ["1", "1", "1", "3"]
    assert table["none"] == ["2", "0", "1", "3"]
    assert table["total"] == ["5", "1", "2", "8"]


def test_a_month_without_records_is_all_zero(run, store) -> None:
    code, out, _ = run("report", "usage", "--month", "2025-12", "--json")
    assert code == 0
    assert json.loads(out) == {"month": "2025-12", "users_configured": 0, "users_completed_mfa": 0,
                               "authentications": {"total": 0, "by_result": {}, "by_factor": {}}}


@pytest.mark.parametrize("month", ["2026-13", "x", "2026-00", "2026-3", "26-03", "2026-03-01", ""])
def test_bad_month_is_exit_2_with_one_line(run, month: str) -> None:
    code, out, err = run("report", "usage", "--month", month)
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1 and "YYYY-MM" in err


def test_missing_month_is_bad_usage(run) -> None:
    code, _, err = run("report", "usage")
    assert code == 2 and "--month" in err


# --- the store's counts, with the kinds a configuration allows ----------------


def test_phone_and_device_count_where_their_factor_is_configured(config_file, store, clock) -> None:
    build_history(store, clock)
    clock[0] = ts("2026-03-02T10:00:00")
    store.add_user(User("nina"))
    store.add_pairing(Pairing("ab" * 32, "nina", clock[0], clock[0] + 600))
    assert store.complete_pairing("ab" * 32, Device("d-nina", "", "phone", "a2V5"), clock[0]) is not None
    start, end = usage.month_bounds(MONTH)
    plain = store.usage_counts(start, end, ("token", "app_password"))
    assert plain.users_configured == 5
    assert store.usage_counts(start, end, ("token", "app_password", "phone")).users_configured == 6    # judy
    assert store.usage_counts(start, end, ("token", "app_password", "device")).users_configured == 6   # nina
    clock[0] = ts("2026-04-02T00:00:00")
    store.remove_device("nina", "d-nina")
    store.update_user("judy", phone=None)
    april = usage.month_bounds("2026-04")
    may = usage.month_bounds("2026-05")
    kinds = ("token", "app_password", "device", "phone")
    # April: alice, bob, ivan (from the 5th), nina and judy (until the 2nd),
    # frank (an accept by TOTP); May: alice, bob and ivan
    in_april = store.usage_counts(*april, kinds).users_configured
    in_may = store.usage_counts(*may, kinds).users_configured
    assert (in_april, in_may) == (6, 3)


def test_enrolment_kinds_follow_the_configuration() -> None:
    def config(**factors):
        base = dict(sms=None, voice=None, email=None, push=None)
        return types.SimpleNamespace(factors=types.SimpleNamespace(**{**base, **factors}))
    assert usage.enrolment_kinds(config()) == ("token", "app_password")
    assert usage.enrolment_kinds(config(voice=object())) == ("token", "app_password", "phone")
    assert usage.enrolment_kinds(config(sms=object(), email=object(), push=object())) == (
        "token", "app_password", "device", "phone", "email")


def test_a_renamed_user_keeps_their_enrolment_history(config_file, store, clock) -> None:
    clock[0] = ts("2026-02-01T00:00:00")
    store.add_user(User("Olga"))
    store.add_token(token("T-OLGA", "Olga"))
    store.rename_user("Olga", "olga")
    clock[0] = ts("2026-03-09T00:00:00")
    store.remove_token("T-OLGA")
    counts = store.usage_counts(*usage.month_bounds(MONTH), ("token",))
    assert counts.users_configured == 1
    assert store.usage_counts(*usage.month_bounds("2026-04"), ("token",)).users_configured == 0


def test_month_bounds_are_utc() -> None:
    assert usage.month_bounds("2026-12") == (ts("2026-12-01T00:00:00"), ts("2027-01-01T00:00:00"))
    assert usage.month_bounds("2024-02") == (ts("2024-02-01T00:00:00"), ts("2024-03-01T00:00:00"))
    with pytest.raises(UsageError):
        usage.month_bounds("2026-13")


# --- an older store: the records and factors it holds are counted after the upgrade ------


def test_an_older_sqlite_store_counts_its_records_and_factors_after_the_upgrade(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ours = next(i for i, step in enumerate(sqlite_module.MIGRATIONS)
                if any("CREATE TABLE enrolments" in statement for statement in step))
    path = str(tmp_path / "old.db")
    key = tmp_path / "store.key"
    previous = sqlite_module.MIGRATIONS[:ours]
    with monkeypatch.context() as patch:
        patch.setattr(sqlite_module, "MIGRATIONS", previous)
        old = open_store(f"sqlite:///{path}", str(key))
        old.close()
    # rows as the older release wrote them: no history, no result or factor column
    with contextlib.closing(sqlite3.connect(path)) as raw, raw:
        raw.execute("INSERT INTO users (name, created) VALUES ('alice', ?)", (ts("2026-01-01T00:00:00"),))
        raw.execute("INSERT INTO tokens (serial, type, secret, user, digits, period, algorithm, created)"
                    " VALUES ('T1', 'totp', 'x', 'alice', 6, 30, 'sha1', ?)", (ts("2026-02-01T00:00:00"),))
        for r in RECORDS:
            raw.execute("INSERT INTO auth_log (time, user, fields) VALUES (?, ?, ?)",
                        (r.time, r.fields["user"], json.dumps(r.fields)))
    store = open_store(f"sqlite:///{path}", str(key))
    try:
        counts = store.usage_counts(*usage.month_bounds(MONTH), ("token", "app_password"))
        report = usage.usage_report(MONTH, counts)
        assert report["authentications"] == EXPECTED_AUTHENTICATIONS
        assert report["users_completed_mfa"] == 3
        assert report["users_configured"] == 3       # alice's token, and bob and erin by their accepts
    finally:
        store.close()


# --- the benchmark, small: right figures (speed is the benchmark's business) ----------


def _bench_module():
    spec = importlib.util.spec_from_file_location(
        "bench_usage", Path(__file__).resolve().parent.parent / "bench" / "bench_usage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_twenty_thousand_records_are_counted_right(run, store) -> None:
    bench = _bench_module()
    bench.fill(store, 20_000, 700)
    code, out, err = run("report", "usage", "--month", bench.MONTH, "--json")
    assert code == 0, err
    figures = json.loads(out)
    assert figures == bench.expected(20_000, 700)
    assert figures["authentications"]["total"] == 20_000
    assert sum(figures["authentications"]["by_result"].values()) == 20_000
