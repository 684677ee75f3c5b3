"""Plain records shared by the store, the engine and the commands.

Frozen dataclasses: the store returns them, nobody mutates them in place.
Secrets live only in ``Token.secret`` and ``User.password_hash``; neither is
ever logged or printed (``token add`` prints a secret once, at enrolment).
"""

from __future__ import annotations

import enum

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class User:
    name: str
    display_name: str | None = None
    email: str | None = None
    phone: str | None = None          # E.164, "+4915112345678"
    password_hash: str | None = field(default=None, repr=False)
    disabled: bool = False
    failures: int = 0                 # bad answers in a row
    locked_until: float | None = None  # epoch seconds; None: not locked
    created: float = 0.0

    def replace(self, **changes) -> "User":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Token:
    serial: str
    type: str                         # "totp" | "hotp"
    secret: str = field(repr=False)   # base32
    user: str | None = None           # None: unassigned
    digits: int = 6
    period: int = 30                  # totp
    algorithm: str = "sha1"           # sha1 | sha256 | sha512
    counter: int = 0                  # hotp: next counter expected
    last_step: int | None = None      # totp: last time step accepted (replay guard)
    drift: int = 0                    # totp: the token's clock offset in steps (token resync)
    hardware: bool = False            # imported key fob: back to the pool, not deleted, with its user
    created: float = 0.0

    def public(self) -> dict:
        """What `token list --json` shows: never the secret."""
        out = {
            "serial": self.serial,
            "type": self.type,
            "user": self.user,
            "digits": self.digits,
            "algorithm": self.algorithm,
        }
        if self.type == "totp":
            out["period"] = self.period
        else:
            out["counter"] = self.counter
        return out


@dataclass(frozen=True)
class Challenge:
    """A pending Access-Challenge, keyed by the digest of its State."""
    state_digest: str                 # hex sha256 of the State bytes; the State itself is not stored
    user: str
    client: str
    created: float
    expires: float
    factors: tuple[str, ...] = ()     # what the user may answer with
    data: dict = field(default_factory=dict)  # factor-specific, JSON-serialisable
    used: float | None = None         # when its State was answered (a State is honoured once)


@dataclass(frozen=True)
class SentCode:
    """A code sent by SMS, voice call or mail, waiting to be entered.

    The code itself is never stored: ``code_mac`` is an HMAC of (user, code)
    under a key derived from the store key, so a copy of the database does not
    let anyone sign in. ``client`` and ``calling_station_id`` let a retried
    login attempt join this code instead of sending another.
    """
    id: str                           # random hex, the row's key
    user: str
    channel: str                      # "sms" | "voice" | "email"
    code_mac: str = field(repr=False)
    client: str = ""
    calling_station_id: str | None = None
    provider: str | None = None       # who delivered it; None while on its way
    created: float = 0.0
    expires: float = 0.0


@dataclass(frozen=True)
class ClientSeen:
    """What the store remembers of a configured client (``report clients``)."""
    name: str
    requests: int = 0
    last_seen: float | None = None
    last_with_message_authenticator: float | None = None
    last_without_message_authenticator: float | None = None
    first_with_message_authenticator: float | None = None   # `auto` requires it from then on
    drops: tuple[tuple[str, int], ...] = ()   # (reason, count): requests dropped unanswered
    last_drop: float | None = None


@dataclass(frozen=True)
class Attempt:
    """One answer the lockout let through to be checked (``take_attempt``).

    ``failures`` counts this attempt; ``locked_until`` is set when this was
    the last attempt the period allows: the user is locked from now on unless
    this very answer turns out right."""
    failures: int
    locked_until: float | None = None


@dataclass(frozen=True)
class SignIn:
    """What the first round of a sign-in reads and takes in one store step
    (``begin_sign_in``): the user (None: the store does not know them), their
    tokens, and the lockout attempt taken for the password (None: unknown,
    disabled or locked, when none is taken)."""
    user: "User | None"
    tokens: tuple["Token", ...] = ()
    attempt: Attempt | None = None


@dataclass(frozen=True)
class AuthRecord:
    """One finished authentication, as the audit log and `report auth` see it."""
    time: float
    fields: dict                      # the audit record of docs/reference.md, JSON-serialisable


# --- push approval -----------------------------------------------------------------

#: A push's status. ``pending`` until the device answers or it expires;
#: ``approved`` → ``used`` once an Access-Accept was sent for it (a later
#: login attempt cannot join it then); the others are final.
class PushStatus(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    USED = "used"
    DENIED = "denied"
    FRAUD = "fraud"
    WRONG_NUMBER = "wrong_number"


PUSH_STATUSES = tuple(status.value for status in PushStatus)


@dataclass(frozen=True)
class Pairing:
    """A one-time pairing link handed out by `device pair`: only the SHA-256
    of its token is kept, so a copy of the store pairs nothing."""
    token_digest: str                 # hex sha256 of the token in the pairing URL
    user: str
    created: float
    expires: float


@dataclass(frozen=True)
class Device:
    """A paired push device (a phone, or the reference authenticator)."""
    id: str                           # random, "d" + 16 hex digits
    user: str
    name: str                         # what the device called itself when pairing
    public_key: str                   # Ed25519 raw public key, 32 bytes, standard base64
    created: float = 0.0
    last_seen: float | None = None    # its last signed request

    def public(self) -> dict:
        """What `device list --json` shows."""
        return {"id": self.id, "user": self.user, "name": self.name,
                "created": self.created, "last_seen": self.last_seen}


@dataclass(frozen=True)
class Push:
    """One login attempt waiting for (or answered by) the user's device."""
    id: str                           # random hex, 32 digits
    user: str
    client: str                       # the NAS's configured name
    calling_station_id: str | None
    user_ip: str | None               # from Calling-Station-Id where it holds an address
    created: float
    expires: float                    # no answer is taken after this
    number: int | None = None         # number matching: shown at the sign-in prompt, 10–99
    status: PushStatus = PushStatus.PENDING
    device: str | None = None         # the device that answered
    answered: float | None = None

    def public(self) -> dict:
        """What the device API shows a device: never the number itself."""
        return {"id": self.id, "user": self.user, "client": self.client,
                "user_ip": self.user_ip, "created": self.created, "expires": self.expires,
                "needs_number": self.number is not None}


@dataclass(frozen=True)
class AppPassword:
    """A password for one device or program that cannot answer a second
    factor: accepted alone in place of password and factor. Only its slow
    hash is kept (as ``User.password_hash``), never printed."""
    id: str                           # random, shown by `app-password list`
    user: str
    label: str | None
    password_hash: str = field(repr=False)
    created: float = 0.0
    last_used: float | None = None


@dataclass(frozen=True)
class EnrolLink:
    """A one-time link to the self-service page (`user enrol-link`, or
    ``policy.unenrolled: enrol``): only the SHA-256 of its token is kept."""
    token_digest: str                 # hex sha256 of the token in the link
    user: str
    created: float
    expires: float
    used: float | None = None         # when it was redeemed (a link works once)


@dataclass(frozen=True)
class PortalSession:
    """A signed-in browser on the self-service page: only the SHA-256 of
    its cookie is kept. ``csrf`` is the per-session token every form
    carries; ``pending_totp`` a secret shown for enrolment and not yet
    confirmed by a code (sealed in the store like token secrets)."""
    id_digest: str                    # hex sha256 of the session cookie
    user: str
    csrf: str = field(repr=False)
    created: float = 0.0
    last_seen: float = 0.0            # idle expiry counts from here
    expires: float = 0.0              # absolute expiry
    pending_totp: str | None = field(default=None, repr=False)


def portal_seal_context(id_digest: str) -> str:
    """What a session's pending secret is sealed to (never a token serial)."""
    return f"portal:{id_digest}"
