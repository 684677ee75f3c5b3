"""App passwords: one secret in place of password and factor, for clients
that cannot do MFA (a mail client, a legacy VPN profile).

An app password is made by `app-password create` (or the self-service page)
and shown once: ``<id>-<secret>``, where the id names it in `app-password
list` and the audit's ``device``, and the secret is 80 random bits. The store
keeps only a slow salted hash (the ``passwords`` scheme), so one check costs
one hash: the id picks the one hash to check, a user's other app passwords
are never tried. A text that does not have the shape of an app password, or
whose id the user does not hold, is an ordinary password.

The lockout counts app-password answers like any other (the engine takes the
attempt before the check); deleting one takes effect at the next request on
every server sharing the store, since nothing is cached.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Awaitable, Callable, ClassVar

from radius_mfa import passwords
from radius_mfa.config import PasswordsConfig
from radius_mfa.model import AppPassword, User
from radius_mfa.verdicts import Reason
from radius_mfa.verifiers.base import PAP, FactorKind, FactorResult

ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"    # no 0/o, 1/l/i: read aloud and typed by hand
ID_LENGTH = 6
SECRET_GROUPS = 4
GROUP_LENGTH = 4
SHAPE = re.compile(rf"([{ALPHABET}]{{{ID_LENGTH}}})((?:-[{ALPHABET}]{{{GROUP_LENGTH}}}){{{SECRET_GROUPS}}})")


def make_app_password() -> tuple[str, str]:
    """A new (id, whole app password)."""
    def group(n: int) -> str:
        return "".join(secrets.choice(ALPHABET) for _ in range(n))
    ident = group(ID_LENGTH)
    return ident, ident + "".join("-" + group(GROUP_LENGTH) for _ in range(SECRET_GROUPS))


def app_password_id(text: str) -> str | None:
    """The id of ``text`` when it has the shape of an app password."""
    match = SHAPE.fullmatch(text.strip().lower())
    return match.group(1) if match else None


def new_record(user: str, label: str | None, config: PasswordsConfig | None,
               now: float | None = None) -> tuple[AppPassword, str]:
    """An app password for ``user``: the record to store (hash only) and
    the password to show once."""
    ident, whole = make_app_password()
    record = AppPassword(id=ident, user=user, label=label,
                         password_hash=passwords.hash_password(whole, config),
                         created=time.time() if now is None else now)
    return record, whole


class AppPasswordFactor:
    """Checks a whole User-Password against the user's app password of its id."""

    name: ClassVar[str] = "app_password"
    words: ClassVar[frozenset[str]] = frozenset()
    methods: ClassVar[frozenset[str]] = frozenset({PAP})
    kind: ClassVar[FactorKind] = FactorKind.TYPED

    def __init__(self, store, run: Callable[..., Awaitable], clock: Callable[[], float]):
        self.store = store          # AsyncStore
        self.run = run              # the hash pool: the check never runs on the reactor
        self.clock = clock

    @staticmethod
    def candidate(text: str) -> str | None:
        """The id when ``text`` may be an app password (cheap, no store)."""
        return app_password_id(text)

    async def held(self, user: User, ident: str) -> AppPassword | None:
        for record in await self.store.list_app_passwords(user.name):
            if record.id == ident:
                return record
        return None

    async def verify(self, user: User, record: AppPassword, text: str) -> FactorResult:
        ok = await self.run(passwords.verify_password, text.strip().lower(), record.password_hash)
        if not ok:
            return FactorResult(False, self.name, record.id, Reason.BAD_PASSWORD)
        await self.store.touch_app_password(record.id, self.clock())
        return FactorResult(True, self.name, record.id)
