"""The store interface: everything the server and the commands keep.

Implementations are synchronous and thread-safe (one connection per thread);
the server never calls them on the reactor thread but through
:class:`radius_mfa.store.asyncstore.AsyncStore`, which runs each call in a
thread pool. Races between threads, processes and servers sharing a store are
closed in the database (atomic updates, unique keys), never in process memory.

Every method raises :class:`radius_mfa.errors.StoreError` when the database
fails, :class:`NotFoundError` / :class:`AlreadyExistsError` as documented.
"""

from __future__ import annotations

from typing import Iterable, Protocol, Sequence

from radius_mfa.usage import UsageCounts
from radius_mfa.model import AppPassword, Attempt, AuthRecord, Challenge, ClientSeen, Device, Pairing, Push, SentCode, Token, User
from radius_mfa.model import EnrolLink, PortalSession, SignIn


class Store(Protocol):
    # --- users -------------------------------------------------------------
    def add_user(self, user: User) -> None:
        """Create a user; AlreadyExistsError when the name is taken."""

    def get_user(self, name: str) -> User | None: ...

    def list_users(self) -> list[User]:
        """Every user, sorted by name."""

    def update_user(self, name: str, **fields) -> User:
        """Set display_name, email, phone, password_hash or disabled; returns the
        new record; NotFoundError when absent."""

    def rename_user(self, old: str, new: str) -> None:
        """Give a user another name with everything that refers to them (the
        names made canonical), in one transaction; AlreadyExistsError when
        ``new`` is taken, NotFoundError when ``old`` is absent."""

    def remove_user(self, name: str) -> None:
        """Delete the user, their software tokens, pending sent codes, devices,
        pairing links, pushes and app passwords;
        their hardware (imported) tokens go back to the pool, unassigned;
        NotFoundError."""

    def reset_user(self, name: str) -> int:
        """Remove every factor of the user (software tokens deleted, hardware
        tokens unassigned; pending sent codes, paired devices, pairing links,
        pushes and app passwords dropped); returns how many tokens the user
        lost; NotFoundError."""

    def existing_user_names(self, names: Iterable[str]) -> set[str]:
        """Which of ``names`` are users already (an import checks its whole
        file before writing anything)."""

    def add_users(self, users: Iterable[tuple[User, Sequence[Token]]]) -> int:
        """`user import`: each user with the tokens enrolled for them, all or
        nothing in one transaction, ``users`` consumed as it is written;
        AlreadyExistsError naming the first user or serial that exists;
        whatever the iterable raises rolls back and propagates. Returns the
        number of users."""

    # --- lockout -----------------------------------------------------------
    def record_failure(self, name: str, now: float, limit: int, lock_seconds: float) -> User | None:
        """Atomically count one more bad answer in a row; when the count
        reaches ``limit`` set ``locked_until = now + lock_seconds`` and start
        counting again from zero. Returns the new record (None: no such user)."""

    def take_attempt(self, name: str, now: float, limit: int, lock_seconds: float) -> Attempt | None:
        """Before an answer is checked: take one attempt and count it as a
        failure, in one atomic statement. None when the user is locked (or
        unknown): the answer must not be checked at all. The attempt that
        reaches ``limit`` locks the user until ``now + lock_seconds`` (its
        ``locked_until`` says so); a lock that ran out starts a new count.
        However many answers arrive at once, at most ``limit`` are let
        through per lockout period."""

    def begin_sign_in(self, name: str, now: float, limit: int, lock_seconds: float) -> SignIn:
        """The first round of a sign-in in one store step: the user and their
        tokens, and, for a user neither disabled nor locked at ``now``, one
        attempt taken as ``take_attempt`` takes it (None there when a lock
        came first). An unknown user: ``SignIn(None)``, nothing taken."""

    def finish_attempt(self, name: str, attempt: Attempt, success: bool) -> None:
        """The answer of ``attempt`` was not wrong: ``success`` ends the run
        of failures (count 0); otherwise the attempt is given back (count
        − 1). A lock that this attempt set is lifted; a wrong answer needs no
        call, it was counted when taken."""

    def clear_failures(self, name: str) -> None:
        """A success: the run of bad answers ends (lock untouched)."""

    def unlock(self, name: str) -> None:
        """`user unlock`: failures 0, locked_until None; NotFoundError."""

    # --- tokens ------------------------------------------------------------
    def add_token(self, token: Token) -> None:
        """AlreadyExistsError when the serial is taken."""

    def add_tokens(self, tokens: Iterable[Token]) -> int:
        """All or nothing, in one transaction; AlreadyExistsError naming the
        first serial that exists. ``tokens`` is consumed as it is written (a
        generator over a large import file is never held in memory whole);
        whatever it raises rolls the transaction back and propagates.
        Returns the count."""

    def existing_token_serials(self, serials: Iterable[str]) -> set[str]:
        """Which of ``serials`` the store holds already (an import checks its
        whole file before writing anything)."""

    def get_token(self, serial: str) -> Token | None: ...

    def list_tokens(self, user: str | None = None) -> list[Token]:
        """All tokens (user None) or the user's, sorted by serial."""

    def assign_token(self, serial: str, user: str) -> None:
        """NotFoundError for an unknown serial or user; RefusedError when the
        token belongs to another user already."""

    def remove_token(self, serial: str) -> None:
        """NotFoundError."""

    def advance_totp(self, serial: str, step: int, settle: tuple[str, Attempt] | None = None) -> bool:
        """Record that the TOTP code of time step ``step`` was used: True when
        ``step`` is later than every step used before (atomic compare-and-set);
        False when it is a replay. ``settle`` (user name, attempt): when the
        step is taken, that lockout attempt is finished as a success in the
        same transaction (``finish_attempt``), one store step for both."""

    def advance_hotp(self, serial: str, expected: int, new_counter: int) -> bool:
        """Move the HOTP counter from ``expected`` to ``new_counter``: True when
        it still was ``expected`` (atomic compare-and-set), else False."""

    def set_totp_drift(self, serial: str, drift: int, last_step: int) -> bool:
        """`token resync` of a TOTP token: its clock runs ``drift`` steps off
        ours, and ``last_step`` was just used. True when ``last_step`` is later
        than every step used before (atomic compare-and-set), else False."""

    # --- challenges (pending Access-Challenges) ---------------------------
    def put_challenge(self, challenge: Challenge, max_open: int | None = None) -> None:
        """Store a challenge; with ``max_open`` the user's oldest open
        challenges beyond that many are dropped in the same transaction."""

    def take_challenge_with_user(self, state_digest: str, now: float, name: str) -> tuple[Challenge | None, SignIn]:
        """``take_challenge``, then the user ``name`` and their tokens
        (``SignIn`` without an attempt), in one store step."""

    def take_challenge(self, state_digest: str, now: float | None = None) -> Challenge | None:
        """Mark the challenge used (at ``now``) and return it (single use: of
        two callers racing for it, exactly one gets it). Expired ones are
        returned too: the caller decides, so that the audit can say
        ``expired_state``. None for an unknown or used State."""

    def used_challenge(self, state_digest: str) -> Challenge | None:
        """The challenge of a State that was answered already (kept until it
        expires): a NAS retry of a push answer joins only its own push."""

    def purge_challenges(self, now: float) -> int:
        """Delete the challenges that expired before ``now``; returns the count."""

    def count_challenges(self, now: float) -> int:
        """How many challenges are pending (not expired at ``now``): the
        metrics' gauge, for every server sharing the store."""

    # --- sent codes (SMS, voice, email) -----------------------------------
    def sent_code_key(self) -> bytes:
        """The HMAC key for sent codes, derived from the store key: servers
        sharing the store check each other's codes; the code is never stored."""

    def put_sent_code(self, sent: SentCode) -> None:
        """Store a code about to be sent; AlreadyExistsError for a taken id."""

    def set_sent_code_provider(self, code_id: str, provider: str) -> None:
        """Record which provider delivered the code."""

    def sent_codes_for(self, user: str) -> list[SentCode]:
        """The user's codes not yet taken, expired ones too (the caller
        decides, so the audit can say ``expired``), newest first."""

    def take_sent_code(self, code_id: str) -> bool:
        """Use the code up (atomic delete): True for exactly one of racing
        callers, False when it is gone already."""

    def pending_sent_code(self, client: str, user: str, calling_station_id: str | None,
                          since: float, now: float, channel: str | None = None) -> SentCode | None:
        """The newest unexpired code sent at ``since`` or later for this
        client, user and Calling-Station-Id (None matches None), and
        ``channel`` when given: a retried login attempt joins it."""

    def remove_sent_code(self, code_id: str) -> None:
        """Forget a code that was never delivered."""

    def allow_send(self, user: str, now: float, limit: int, window_seconds: float,
                   kind: str = "code") -> bool:
        """Rate limit, atomically: True and the send recorded when fewer than
        ``limit`` sends of ``kind`` to the user fall in the last
        ``window_seconds``. Kinds count apart: ``"code"`` (SMS, voice, email)
        and ``"push"``."""

    def purge_sent_codes(self, now: float, keep_sends_seconds: float = 86400.0) -> int:
        """Delete codes expired before ``now`` and send records older than
        ``keep_sends_seconds``; returns the number of codes deleted."""

    # --- push devices and approvals ----------------------------------------
    def add_pairing(self, pairing: Pairing) -> None:
        """Remember a one-time pairing token (its digest) for a user;
        NotFoundError when the user does not exist."""

    def get_pairing(self, token_digest: str) -> Pairing | None:
        """The pairing of this token digest, expired ones too; reads only (a
        pairing attempt with a wrong token takes no write lock)."""

    def complete_pairing(self, token_digest: str, device: Device, now: float) -> Device | None:
        """In one transaction: use the pairing up (deleted whatever happens
        next) and, when it had not expired at ``now`` and its user still
        exists, store ``device`` for that user (``device.user`` is replaced by
        the pairing's). Returns the stored device; None for an unknown, used
        or expired token or a user gone meanwhile."""

    def get_device(self, device_id: str) -> Device | None: ...

    def list_devices(self, user: str | None = None) -> list[Device]:
        """All devices (user None) or the user's, oldest first."""

    def remove_device(self, user: str, device_id: str) -> None:
        """NotFoundError when the user has no such device."""

    def touch_device(self, device_id: str, now: float) -> None:
        """Record the device's last signed request."""

    def put_push(self, push: Push) -> None:
        """Store a new push; AlreadyExistsError for a taken id."""

    def get_push(self, push_id: str) -> Push | None: ...

    def pushes_by_ids(self, push_ids: Sequence[str]) -> list[Push]:
        """The pushes of these ids that exist, in any order (the waiting
        requests' poll: one query for all of them)."""

    def pending_pushes(self, user: str, now: float) -> list[Push]:
        """The user's pushes still ``pending`` and not expired at ``now``,
        oldest first (what the device lists)."""

    def joinable_push(self, client: str, user: str, calling_station_id: str | None,
                      since: float, now: float) -> Push | None:
        """The newest push created at ``since`` or later for this client, user
        and Calling-Station-Id (None matches None), not expired at ``now``,
        whose status is ``pending`` or ``approved``: a retried login attempt
        joins it instead of starting another."""

    def answer_push(self, push_id: str, status: str, device: str, now: float) -> Push | None:
        """Compare-and-set: when the push is ``pending`` and not expired at
        ``now``, set ``status`` (approved, denied, fraud or wrong_number),
        ``device`` and ``answered = now``; returns the new record. None when
        it is gone, answered already or expired (exactly one of racing
        answers wins)."""

    def use_push(self, push_id: str) -> bool:
        """Compare-and-set ``approved`` → ``used`` (an Access-Accept went out
        for it): True for the first caller only."""

    def purge_pushes(self, now: float, keep_seconds: float = 86400.0) -> int:
        """Delete pushes that expired more than ``keep_seconds`` before ``now``
        and pairings expired before ``now``; returns the pushes deleted."""

    # --- app passwords -----------------------------------------------------
    def add_app_password(self, app_password: AppPassword) -> None:
        """Store an app password (only its hash); NotFoundError when the user
        does not exist, AlreadyExistsError for a taken id."""

    def list_app_passwords(self, user: str) -> list[AppPassword]:
        """The user's app passwords, oldest first, hashes included (the
        caller never prints them)."""

    def delete_app_password(self, user: str, app_password_id: str) -> None:
        """NotFoundError when the user has no app password of this id."""

    def delete_app_passwords(self, user: str) -> int:
        """`app-password delete-all`: every one of the user's; the count."""

    def touch_app_password(self, app_password_id: str, now: float) -> None:
        """Record its last use at ``now`` (only ever later)."""

    # --- clients -----------------------------------------------------------
    def note_client_request(self, name: str, now: float, with_message_authenticator: bool, count: int = 1) -> None:
        """Count ``count`` requests from the client, seen last at ``now``."""

    def note_client_drops(self, drops: Sequence[tuple[str, str, int, float]]) -> None:
        """Count requests dropped unanswered: (client, reason, count, last time) each."""

    def list_clients_seen(self) -> list[ClientSeen]:
        """Every client that sent a request or had one dropped, by name."""

    # --- authentication log ------------------------------------------------
    def add_auth_record(self, record: AuthRecord) -> None: ...

    def add_auth_records(self, records: Sequence[AuthRecord]) -> None:
        """Append several records in one transaction."""

    def auth_records(self, since: float | None = None, user: str | None = None) -> list[AuthRecord]:
        """Oldest first."""

    def auth_log(self, since: float | None = None, user: str | None = None, limit: int | None = None,
                 after_id: int | None = None) -> list[tuple[int, AuthRecord]]:
        """(id, record) pairs, oldest first; ``limit``: only the newest that
        many; ``after_id``: only rows written after that one (`report auth
        --limit`, `--follow`)."""

    def auth_log_last_id(self) -> int:
        """The largest id in the authentication log, 0 when it is empty."""

    def usage_counts(self, start: float, end: float, kinds: Sequence[str]) -> "UsageCounts":
        """`report usage` for ``start`` ≤ time < ``end``: records by factor
        and result, users who completed MFA, users enrolled (a factor of one
        of ``kinds`` held at some moment of the period) or who completed it."""

    # --- enrolment links and self-service sessions ---------------------------
    def add_enrol_link(self, link: EnrolLink) -> None:
        """Remember a one-time enrolment link (only its token's digest);
        NotFoundError when the user does not exist."""

    def redeem_enrol_link(self, token_digest: str, now: float) -> EnrolLink | None:
        """Compare-and-set: mark the link used at ``now`` and return it, when
        it is unused and not expired; exactly one of racing callers gets it.
        None for an unknown, used or expired link."""

    def put_portal_session(self, session: PortalSession) -> None:
        """Store a signed-in session (only its cookie's digest); NotFoundError
        when the user does not exist."""

    def touch_portal_session(self, id_digest: str, now: float, idle_seconds: float) -> PortalSession | None:
        """The session when neither idle (``idle_seconds``) nor past its
        absolute expiry at ``now``, its last use set to ``now``; else None."""

    def set_portal_pending_totp(self, id_digest: str, secret: str | None) -> None:
        """Keep (sealed at rest) or forget the secret shown for enrolment."""

    def take_portal_pending_totp(self, id_digest: str) -> str | None:
        """The pending secret, forgotten in the same step (once only)."""

    def delete_portal_session(self, id_digest: str) -> None:
        """Sign-out; absent: nothing happens."""

    def purge_portal(self, now: float, idle_seconds: float) -> int:
        """Delete expired sessions and enrolment links; the sessions deleted."""

    # --- health --------------------------------------------------------------
    def ping(self) -> None:
        """One trivial round trip to the database (the health endpoint);
        StoreError when it does not answer."""

    def close(self) -> None: ...
