"""What a directory (LDAP) reports about a user, kept in the store: the
display name in step, the destinations of sent codes pinned once enrolled."""

from __future__ import annotations

import contextlib

import structlog

from radius_mfa.challenges import DIRECTORY_FIELDS
from radius_mfa.errors import AlreadyExistsError
from radius_mfa.masking import mask_email, mask_phone
from radius_mfa.model import User

log = structlog.get_logger("radius_mfa.engine")


async def refresh_from_directory(store, user: User | None, info: dict) -> User | None:
    """Keep the store's record of the user in step with the directory:
    the display name it reports, always; a mail address or phone number
    only where none is enrolled yet. An enrolled destination is pinned:
    one the directory reports differently (a user may edit `mobile` in AD)
    is logged and not used, or codes could be moved to another phone; only
    `user update` or the self-service page changes it."""
    if user is None:
        return None
    changes = {}
    for key in DIRECTORY_FIELDS:
        value, enrolled = info.get(key), getattr(user, key)
        if not value or value == enrolled:
            continue
        if key == "display_name" or not enrolled:
            changes[key] = value
        else:
            masked = mask_email if key == "email" else mask_phone
            log.warning("user.destination_differs", user=user.name, field=key,
                        directory=masked(value), enrolled=masked(enrolled))
    if not changes:
        return user
    return await store.update_user(user.name, **changes)


def pinned(user: User | None, info: dict) -> dict:
    """The backend's facts with the enrolled destinations in place of the
    directory's (what the audit and the sent codes use)."""
    if user is None:
        return info
    return {**info, **{key: getattr(user, key) for key in ("email", "phone") if getattr(user, key)}}


async def record_directory_user(store, name: str, info: dict, now: float) -> User:
    """A store record for a user the directory knows and the store does not
    (``policy.unenrolled: enrol``: something to enrol into). The directory's
    phone and address are not taken: a factor is enrolled on the page."""
    with contextlib.suppress(AlreadyExistsError):     # another request made it meanwhile
        await store.add_user(User(name=name, display_name=info.get("display_name"), created=now))
    return await store.get_user(name)
