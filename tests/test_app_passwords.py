"""App passwords: one secret in place of password and factor, checked by the
engine before the primary, on both stores, with a fake clock; and the
commands that make, list and delete them."""

import json

import pytest

from radius_mfa.config import LockoutConfig, Mode
from radius_mfa.primary.base import PrimaryResult
from radius_mfa.store.asyncstore import immediate_runner
from radius_mfa.verdicts import Reason, Verdict
from radius_mfa.verifiers.app_password import AppPasswordFactor, app_password_id, new_record
from test_cli import config_file  # noqa: F401 - the commands' config fixture
from test_engine import PASSWORD, Harness, ScriptedBackend, proxied


def with_app_passwords(h):
    h.engine.app_passwords = AppPasswordFactor(h.store, immediate_runner, h.clock)
    return h


@pytest.fixture
def h(tmp_path, make_store):
    harness = with_app_passwords(Harness(tmp_path, store=make_store(),
                                         lockout=LockoutConfig(failures=3, minutes=15)))
    harness.add_user()
    yield harness
    harness.sync.close()


def give(h, user="alice", label="mail"):
    record, password = new_record(user, label, None, h.clock())
    h.sync.add_app_password(record)
    return record, password


@pytest.mark.parametrize("mode", [Mode.CHALLENGE, Mode.INLINE])
def test_an_app_password_alone_is_accepted_in_place_of_password_and_factor(h, mode):
    record, password = give(h)
    d = h.handle(password=password, mode=mode)
    assert (d.verdict, d.factor, d.device) == (Verdict.ACCEPT, "app_password", record.id)
    assert h.sync.list_app_passwords("alice")[0].last_used == h.clock()


def test_an_app_password_is_accepted_typed_in_capitals(h):
    _, password = give(h)
    assert h.handle(password=password.upper()).verdict is Verdict.ACCEPT


def test_an_app_password_is_not_taken_in_second_factor_only_mode(h):
    _, password = give(h)
    d = h.handle(password=password, mode=Mode.SECOND_FACTOR_ONLY)
    assert d.factor != "app_password"


def test_a_deleted_app_password_is_refused_at_once(h):
    record, password = give(h)
    h.sync.delete_app_password("alice", record.id)
    assert h.handle(password=password).verdict is not Verdict.ACCEPT


def test_delete_all_refuses_every_app_password(h):
    passwords = [give(h, label=str(i))[1] for i in range(3)]
    assert h.sync.delete_app_passwords("alice") == 3
    assert all(h.handle(password=p).verdict is not Verdict.ACCEPT for p in passwords)


def test_user_reset_removes_app_passwords(h):
    _, password = give(h)
    h.sync.reset_user("alice")
    assert h.sync.list_app_passwords("alice") == []
    assert h.handle(password=password).verdict is not Verdict.ACCEPT


def test_wrong_app_passwords_count_towards_the_lockout(h):
    record, password = give(h)
    forged = record.id + "-aaaa-bbbb-cccc-dddd"
    reasons = [h.handle(password=forged).reason for _ in range(3)]
    assert reasons == [Reason.BAD_PASSWORD] * 3
    assert h.handle(password=password).reason is Reason.LOCKED


def test_another_users_app_password_is_an_ordinary_wrong_password(h):
    h.add_user("bob", token=False)
    _, bobs = give(h, user="bob")
    d = h.handle(user="alice", password=bobs)
    assert (d.verdict, d.reason) == (Verdict.REJECT, Reason.BAD_PASSWORD)


def test_an_app_password_stands_in_for_the_primary_whatever_the_backend(tmp_path):
    backend = ScriptedBackend()                    # would fail if it were asked
    h = with_app_passwords(proxied(tmp_path, backend))
    h.add_user()
    _, password = give(h)
    assert h.handle(password=password).verdict is Verdict.ACCEPT
    assert backend.requests == []


def test_an_ordinary_password_still_reaches_the_primary(h):
    give(h)
    assert h.handle(password=PASSWORD).verdict is Verdict.CHALLENGE


def test_the_shape_names_the_id_and_nothing_else_matches():
    record, password = new_record("alice", None, None, 0.0)
    assert app_password_id(password) == record.id
    assert app_password_id("correct horse") is None
    assert app_password_id(password + "x") is None


# --- the commands -------------------------------------------------------------------


def test_app_password_commands(run, store):
    assert run("user", "add", "alice")[0] == 0
    code, out, err = run("app-password", "create", "ALICE", "--label", "mail", "--json")
    assert code == 0, err
    made = json.loads(out)
    assert set(made) == {"id", "label", "password", "created"} and made["label"] == "mail"
    assert app_password_id(made["password"]) == made["id"]
    listed = json.loads(run("app-password", "list", "alice", "--json")[1])
    assert listed == [{"id": made["id"], "label": "mail", "created": made["created"], "last_used": None}]
    assert made["password"] not in run("app-password", "list", "alice")[1]
    stored = store.list_app_passwords("alice")[0]
    assert made["password"] not in stored.password_hash
    assert run("app-password", "delete", "alice", "nosuch")[0] == 1
    assert run("app-password", "delete", "alice", made["id"])[0] == 0
    run("app-password", "create", "alice")
    run("app-password", "create", "alice")
    code, out, _ = run("app-password", "delete-all", "alice")
    assert code == 0 and "2 app password" in out
    assert run("app-password", "list", "nobody")[0] == 1
