"""Enrolment links and self-service sessions in the store, on SQLite and
PostgreSQL alike (the ``store_kind`` fixture runs each test on both)."""

from __future__ import annotations

import pytest

from pg import StoreMaker, race, raw_rows
from radius_mfa.enrolment import EnrolLinks, create_now, token_digest
from radius_mfa.errors import NotFoundError
from radius_mfa.model import EnrolLink, PortalSession, User
from radius_mfa.store.asyncstore import AsyncStore, immediate_runner
from radius_mfa.store.base import Store

NOW = 1_700_000_000.0
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


@pytest.fixture
def store(make_store: StoreMaker) -> Store:
    s = make_store()
    s.add_user(User("alice", created=NOW))
    return s


def session(id_digest: str = "s1", **changes) -> PortalSession:
    values = dict(id_digest=id_digest, user="alice", csrf="c" * 43, created=NOW, last_seen=NOW,
                  expires=NOW + 8 * 3600)
    values.update(changes)
    return PortalSession(**values)


def redeem(store: Store, token: str, now: float) -> str | None:
    links = EnrolLinks(AsyncStore(store, immediate_runner), lambda: now, "https://mfa.example.org")
    out: list = []
    from twisted.internet.defer import Deferred

    Deferred.fromCoroutine(links.redeem(token)).addBoth(out.append)
    return out[0]


def test_enrol_link_keeps_only_the_digest_of_its_token(store: Store) -> None:
    url, expires = create_now(store, lambda: NOW, "https://mfa.example.org:8444/", "alice")
    token = url.rsplit("/", 1)[1]
    assert url == f"https://mfa.example.org:8444/enrol/{token}"
    assert expires == NOW + 900
    dumped = repr(raw_rows(store, "SELECT * FROM enrol_links"))
    assert token not in dumped and token_digest(token) in dumped


def test_enrol_link_for_unknown_user_is_refused(store: Store) -> None:
    with pytest.raises(NotFoundError):
        create_now(store, lambda: NOW, "https://mfa.example.org", "nobody")


def test_enrol_link_works_once(store: Store) -> None:
    url, _ = create_now(store, lambda: NOW, "https://mfa.example.org", "alice")
    token = url.rsplit("/", 1)[1]
    assert redeem(store, token, NOW + 1) == "alice"
    assert redeem(store, token, NOW + 2) is None


def test_enrol_link_expires_after_15_minutes(store: Store) -> None:
    url, _ = create_now(store, lambda: NOW, "https://mfa.example.org", "alice")
    token = url.rsplit("/", 1)[1]
    assert redeem(store, token, NOW + 900) is None


def test_made_up_or_malformed_link_is_refused(store: Store) -> None:
    create_now(store, lambda: NOW, "https://mfa.example.org", "alice")
    assert redeem(store, "A" * 43, NOW) is None
    assert redeem(store, "../../etc", NOW) is None


def test_enrol_link_raced_by_two_servers_is_redeemed_once(make_store: StoreMaker, store: Store) -> None:
    others = [make_store() for _ in range(3)]
    store.add_enrol_link(EnrolLink(token_digest="d" * 64, user="alice", created=NOW, expires=NOW + 900))
    results = race([lambda s=s: s.redeem_enrol_link("d" * 64, NOW + 1) for s in [store, *others] for _ in range(2)])
    assert sum(r is not None for r in results) == 1


def test_session_is_refused_after_idle_time(store: Store) -> None:
    store.put_portal_session(session())
    assert store.touch_portal_session("s1", NOW + 600, idle_seconds=900).user == "alice"
    # idle counts from the last use
    assert store.touch_portal_session("s1", NOW + 1400, idle_seconds=900) is not None
    assert store.touch_portal_session("s1", NOW + 2400, idle_seconds=900) is None


def test_session_is_refused_after_absolute_expiry(store: Store) -> None:
    store.put_portal_session(session(expires=NOW + 1000))
    assert store.touch_portal_session("s1", NOW + 800, idle_seconds=900) is not None
    assert store.touch_portal_session("s1", NOW + 1001, idle_seconds=900) is None


def test_unknown_session_is_none(store: Store) -> None:
    assert store.touch_portal_session("nope", NOW, idle_seconds=900) is None


def test_pending_totp_is_sealed_and_taken_once(store: Store) -> None:
    store.put_portal_session(session())
    store.set_portal_pending_totp("s1", SECRET)
    assert SECRET not in repr(raw_rows(store, "SELECT * FROM portal_sessions"))
    assert store.touch_portal_session("s1", NOW + 1, idle_seconds=900).pending_totp == SECRET
    assert store.take_portal_pending_totp("s1") == SECRET
    assert store.take_portal_pending_totp("s1") is None


def test_signed_out_session_is_gone(store: Store) -> None:
    store.put_portal_session(session())
    store.delete_portal_session("s1")
    assert store.touch_portal_session("s1", NOW, idle_seconds=900) is None


def test_reset_and_removal_end_sessions_and_links(store: Store) -> None:
    store.put_portal_session(session())
    store.add_enrol_link(EnrolLink(token_digest="d" * 64, user="alice", created=NOW, expires=NOW + 900))
    store.reset_user("alice")
    assert store.touch_portal_session("s1", NOW, idle_seconds=900) is None
    assert store.redeem_enrol_link("d" * 64, NOW) is None
    store.put_portal_session(session("s2"))
    store.remove_user("alice")
    assert raw_rows(store, "SELECT * FROM portal_sessions") == []


def test_renamed_user_keeps_sessions(store: Store) -> None:
    store.put_portal_session(session())
    store.rename_user("alice", "alice2")
    assert store.touch_portal_session("s1", NOW, idle_seconds=900).user == "alice2"


def test_purge_deletes_expired_sessions_and_links(store: Store) -> None:
    store.put_portal_session(session("old"))
    store.put_portal_session(session("new", last_seen=NOW + 1000))
    store.add_enrol_link(EnrolLink(token_digest="d" * 64, user="alice", created=NOW, expires=NOW + 900))
    assert store.purge_portal(NOW + 1000, idle_seconds=900) == 1
    assert raw_rows(store, "SELECT id_digest FROM portal_sessions") == [("new",)]
    assert raw_rows(store, "SELECT * FROM enrol_links") == []
