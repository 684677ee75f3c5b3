"""The store, seen from the reactor: every call runs in a thread pool.

``AsyncStore(store, run)`` exposes each method of a synchronous
:class:`~radius_mfa.store.base.Store` as a method of the same name and
arguments that returns a Deferred of its result (await it in a coroutine).
``run(fn, *args)`` decides where the call runs: the server hands it to its
store threads (``radius_mfa.threads.Executor.run``; :func:`thread_runner`
does the same over a Twisted ThreadPool); :func:`immediate_runner` runs it in
place (the engine's unit tests, and the commands, which have no reactor).

``on_error(operation)``, when given, is told of every call that fails with
:class:`~radius_mfa.errors.StoreError` (the metrics count store errors by
method name); the failure still reaches the caller unchanged.

Every method is written out, typed, one per Store method (a test checks
that none is missing), so a reader can go from a call to its definition;
the contract of each is the docstring of the Store method of that name.
"""

from __future__ import annotations

import contextvars

from typing import Any, Awaitable, Callable, Iterable, Sequence

import structlog
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from radius_mfa.errors import StoreError
from radius_mfa.model import (AppPassword, Attempt, AuthRecord, Challenge, ClientSeen, Device, Pairing, Push,
                              SentCode, Token, User)
from radius_mfa.model import EnrolLink, PortalSession, SignIn
from radius_mfa.store.base import Store
from radius_mfa.usage import UsageCounts

log = structlog.get_logger("radius_mfa.store")

Runner = Callable[..., Awaitable[Any]]


def immediate_runner(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred:
    """Run ``fn`` now, in this thread; the result as an already-fired Deferred."""
    return defer.maybeDeferred(fn, *args, **kwargs)


def thread_runner(reactor, pool) -> Runner:
    """A runner that executes each call in ``pool`` (a started ThreadPool),
    in a copy of the caller's context: what the thread logs carries the
    request's bound ``request_id`` too."""

    def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred:
        return deferToThreadPool(reactor, pool, contextvars.copy_context().run, fn, *args, **kwargs)

    return run


def _given(**optional: Any) -> dict[str, Any]:
    """The optional arguments a caller gave (None is every one's default):
    the store sees the call as it was made."""
    return {name: value for name, value in optional.items() if value is not None}


class AsyncStore:
    """Awaitable facade over a synchronous store: each method runs the Store
    method of the same name through ``run``."""

    def __init__(self, store: Store, run: Runner, *, on_error: Callable[[str], None] | None = None):
        self.sync = store
        self._run = run
        self.on_error = on_error

    def _call(self, operation: str, *args: Any, **kwargs: Any) -> Deferred:
        result = self._run(getattr(self.sync, operation), *args, **kwargs)
        if self.on_error is not None and isinstance(result, defer.Deferred):
            result.addErrback(self._report, operation)
        return result

    def _report(self, failure, operation: str):
        if failure.check(StoreError) and self.on_error is not None:
            try:
                self.on_error(operation)
            except Exception:           # counting must never change what the caller sees
                log.exception("store.on_error_failed", operation=operation)
        return failure

    # --- users -------------------------------------------------------------
    def add_user(self, user: User) -> Deferred[None]:
        return self._call("add_user", user)

    def get_user(self, name: str) -> Deferred[User | None]:
        return self._call("get_user", name)

    def list_users(self) -> Deferred[list[User]]:
        return self._call("list_users")

    def update_user(self, name: str, **fields: Any) -> Deferred[User]:
        return self._call("update_user", name, **fields)

    def rename_user(self, old: str, new: str) -> Deferred[None]:
        return self._call("rename_user", old, new)

    def remove_user(self, name: str) -> Deferred[None]:
        return self._call("remove_user", name)

    def reset_user(self, name: str) -> Deferred[int]:
        return self._call("reset_user", name)

    def existing_user_names(self, names: Iterable[str]) -> Deferred[set[str]]:
        return self._call("existing_user_names", names)

    def add_users(self, users: Iterable[tuple[User, Sequence[Token]]]) -> Deferred[int]:
        return self._call("add_users", users)


    # --- lockout -----------------------------------------------------------
    def record_failure(self, name: str, now: float, limit: int, lock_seconds: float) -> Deferred[User | None]:
        return self._call("record_failure", name, now, limit, lock_seconds)

    def take_attempt(self, name: str, now: float, limit: int, lock_seconds: float) -> Deferred[Attempt | None]:
        return self._call("take_attempt", name, now, limit, lock_seconds)

    def begin_sign_in(self, name: str, now: float, limit: int, lock_seconds: float) -> Deferred[SignIn]:
        return self._call("begin_sign_in", name, now, limit, lock_seconds)

    def finish_attempt(self, name: str, attempt: Attempt, success: bool) -> Deferred[None]:
        return self._call("finish_attempt", name, attempt, success)

    def clear_failures(self, name: str) -> Deferred[None]:
        return self._call("clear_failures", name)

    def unlock(self, name: str) -> Deferred[None]:
        return self._call("unlock", name)


    # --- tokens ------------------------------------------------------------
    def add_token(self, token: Token) -> Deferred[None]:
        return self._call("add_token", token)

    def add_tokens(self, tokens: Iterable[Token]) -> Deferred[int]:
        return self._call("add_tokens", tokens)

    def existing_token_serials(self, serials: Iterable[str]) -> Deferred[set[str]]:
        return self._call("existing_token_serials", serials)

    def get_token(self, serial: str) -> Deferred[Token | None]:
        return self._call("get_token", serial)

    def list_tokens(self, user: str | None = None) -> Deferred[list[Token]]:
        return self._call("list_tokens", **_given(user=user))

    def assign_token(self, serial: str, user: str) -> Deferred[None]:
        return self._call("assign_token", serial, user)

    def remove_token(self, serial: str) -> Deferred[None]:
        return self._call("remove_token", serial)

    def advance_totp(self, serial: str, step: int, settle: tuple[str, Attempt] | None = None) -> Deferred[bool]:
        return self._call("advance_totp", serial, step, **_given(settle=settle))

    def advance_hotp(self, serial: str, expected: int, new_counter: int) -> Deferred[bool]:
        return self._call("advance_hotp", serial, expected, new_counter)

    def set_totp_drift(self, serial: str, drift: int, last_step: int) -> Deferred[bool]:
        return self._call("set_totp_drift", serial, drift, last_step)


    # --- challenges (pending Access-Challenges) ---------------------------
    def put_challenge(self, challenge: Challenge, max_open: int | None = None) -> Deferred[None]:
        return self._call("put_challenge", challenge, **_given(max_open=max_open))

    def take_challenge_with_user(self, state_digest: str, now: float,
                                 name: str) -> Deferred[tuple[Challenge | None, SignIn]]:
        return self._call("take_challenge_with_user", state_digest, now, name)

    def take_challenge(self, state_digest: str, now: float | None = None) -> Deferred[Challenge | None]:
        return self._call("take_challenge", state_digest, **_given(now=now))

    def used_challenge(self, state_digest: str) -> Deferred[Challenge | None]:
        return self._call("used_challenge", state_digest)

    def purge_challenges(self, now: float) -> Deferred[int]:
        return self._call("purge_challenges", now)

    def count_challenges(self, now: float) -> Deferred[int]:
        return self._call("count_challenges", now)


    # --- sent codes (SMS, voice, email) -----------------------------------
    def sent_code_key(self) -> Deferred[bytes]:
        return self._call("sent_code_key")

    def put_sent_code(self, sent: SentCode) -> Deferred[None]:
        return self._call("put_sent_code", sent)

    def set_sent_code_provider(self, code_id: str, provider: str) -> Deferred[None]:
        return self._call("set_sent_code_provider", code_id, provider)

    def sent_codes_for(self, user: str) -> Deferred[list[SentCode]]:
        return self._call("sent_codes_for", user)

    def take_sent_code(self, code_id: str) -> Deferred[bool]:
        return self._call("take_sent_code", code_id)

    def pending_sent_code(self, client: str, user: str, calling_station_id: str | None, since: float, now: float,
                          channel: str | None = None) -> Deferred[SentCode | None]:
        return self._call("pending_sent_code", client, user, calling_station_id, since, now,
                          **_given(channel=channel))

    def remove_sent_code(self, code_id: str) -> Deferred[None]:
        return self._call("remove_sent_code", code_id)

    def allow_send(
            self, user: str, now: float, limit: int, window_seconds: float, kind: str = "code",
    ) -> Deferred[bool]:
        return self._call("allow_send", user, now, limit, window_seconds, kind=kind)

    def purge_sent_codes(self, now: float, keep_sends_seconds: float = 86400.0) -> Deferred[int]:
        return self._call("purge_sent_codes", now, keep_sends_seconds=keep_sends_seconds)


    # --- push devices and approvals ----------------------------------------
    def add_pairing(self, pairing: Pairing) -> Deferred[None]:
        return self._call("add_pairing", pairing)

    def get_pairing(self, token_digest: str) -> Deferred[Pairing | None]:
        return self._call("get_pairing", token_digest)

    def complete_pairing(self, token_digest: str, device: Device, now: float) -> Deferred[Device | None]:
        return self._call("complete_pairing", token_digest, device, now)

    def get_device(self, device_id: str) -> Deferred[Device | None]:
        return self._call("get_device", device_id)

    def list_devices(self, user: str | None = None) -> Deferred[list[Device]]:
        return self._call("list_devices", **_given(user=user))

    def remove_device(self, user: str, device_id: str) -> Deferred[None]:
        return self._call("remove_device", user, device_id)

    def touch_device(self, device_id: str, now: float) -> Deferred[None]:
        return self._call("touch_device", device_id, now)

    def put_push(self, push: Push) -> Deferred[None]:
        return self._call("put_push", push)

    def get_push(self, push_id: str) -> Deferred[Push | None]:
        return self._call("get_push", push_id)

    def pushes_by_ids(self, push_ids: Sequence[str]) -> Deferred[list[Push]]:
        return self._call("pushes_by_ids", push_ids)

    def pending_pushes(self, user: str, now: float) -> Deferred[list[Push]]:
        return self._call("pending_pushes", user, now)

    def joinable_push(
            self, client: str, user: str, calling_station_id: str | None, since: float, now: float,
    ) -> Deferred[Push | None]:
        return self._call("joinable_push", client, user, calling_station_id, since, now)

    def answer_push(self, push_id: str, status: str, device: str, now: float) -> Deferred[Push | None]:
        return self._call("answer_push", push_id, status, device, now)

    def use_push(self, push_id: str) -> Deferred[bool]:
        return self._call("use_push", push_id)

    def purge_pushes(self, now: float, keep_seconds: float = 86400.0) -> Deferred[int]:
        return self._call("purge_pushes", now, keep_seconds=keep_seconds)


    # --- app passwords -----------------------------------------------------
    def add_app_password(self, app_password: AppPassword) -> Deferred[None]:
        return self._call("add_app_password", app_password)

    def list_app_passwords(self, user: str) -> Deferred[list[AppPassword]]:
        return self._call("list_app_passwords", user)

    def delete_app_password(self, user: str, app_password_id: str) -> Deferred[None]:
        return self._call("delete_app_password", user, app_password_id)

    def delete_app_passwords(self, user: str) -> Deferred[int]:
        return self._call("delete_app_passwords", user)

    def touch_app_password(self, app_password_id: str, now: float) -> Deferred[None]:
        return self._call("touch_app_password", app_password_id, now)


    # --- clients -----------------------------------------------------------
    def note_client_request(
            self, name: str, now: float, with_message_authenticator: bool, count: int = 1,
    ) -> Deferred[None]:
        return self._call("note_client_request", name, now, with_message_authenticator, count=count)

    def note_client_drops(self, drops: Sequence[tuple[str, str, int, float]]) -> Deferred[None]:
        return self._call("note_client_drops", drops)

    def list_clients_seen(self) -> Deferred[list[ClientSeen]]:
        return self._call("list_clients_seen")


    # --- authentication log ------------------------------------------------
    def add_auth_record(self, record: AuthRecord) -> Deferred[None]:
        return self._call("add_auth_record", record)

    def add_auth_records(self, records: Sequence[AuthRecord]) -> Deferred[None]:
        return self._call("add_auth_records", records)

    def auth_records(self, since: float | None = None, user: str | None = None) -> Deferred[list[AuthRecord]]:
        return self._call("auth_records", **_given(since=since, user=user))

    def auth_log(self, since: float | None = None, user: str | None = None, limit: int | None = None,
                 after_id: int | None = None) -> Deferred[list[tuple[int, AuthRecord]]]:
        return self._call("auth_log", **_given(since=since, user=user, limit=limit, after_id=after_id))

    def auth_log_last_id(self) -> Deferred[int]:
        return self._call("auth_log_last_id")

    def usage_counts(self, start: float, end: float, kinds: Sequence[str]) -> Deferred[UsageCounts]:
        return self._call("usage_counts", start, end, kinds)


    # --- enrolment links and self-service sessions ---------------------------
    def add_enrol_link(self, link: EnrolLink) -> Deferred[None]:
        return self._call("add_enrol_link", link)

    def redeem_enrol_link(self, token_digest: str, now: float) -> Deferred[EnrolLink | None]:
        return self._call("redeem_enrol_link", token_digest, now)

    def put_portal_session(self, session: PortalSession) -> Deferred[None]:
        return self._call("put_portal_session", session)

    def touch_portal_session(self, id_digest: str, now: float, idle_seconds: float) -> Deferred[PortalSession | None]:
        return self._call("touch_portal_session", id_digest, now, idle_seconds)

    def set_portal_pending_totp(self, id_digest: str, secret: str | None) -> Deferred[None]:
        return self._call("set_portal_pending_totp", id_digest, secret)

    def take_portal_pending_totp(self, id_digest: str) -> Deferred[str | None]:
        return self._call("take_portal_pending_totp", id_digest)

    def delete_portal_session(self, id_digest: str) -> Deferred[None]:
        return self._call("delete_portal_session", id_digest)

    def purge_portal(self, now: float, idle_seconds: float) -> Deferred[int]:
        return self._call("purge_portal", now, idle_seconds)


    # --- health --------------------------------------------------------------
    def ping(self) -> Deferred[None]:
        return self._call("ping")

    def close(self) -> Deferred[None]:
        return self._call("close")
