"""One-time enrolment links to the self-service page.

A link is ``{portal.public_url}/enrol/{token}``: 32 random bytes, URL-safe,
valid 15 minutes and once. The store keeps only the token's SHA-256, so a copy
of the store (or of its backups) opens nothing; a link is found by that digest
with an index lookup, so no comparison ever runs over the token itself and its
timing tells nothing. Redeeming is one compare-and-set in the store (``used``
set where it was NULL and the link not expired): of two browsers, or two
servers sharing a PostgreSQL store, exactly one gets the user.

``EnrolLinks`` works over an :class:`~radius_mfa.store.asyncstore.AsyncStore`:
the engine (``policy.unenrolled: enrol``) and the page await it on the
reactor; the commands wrap their synchronous store with ``immediate_runner``
(see :func:`create_now`).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from radius_mfa.model import EnrolLink

#: How long a link stays valid, in seconds (docs/reference.md: 15 minutes).
LINK_TTL = 15 * 60.0

#: The path of a link on the page, before its token.
LINK_PATH = "/enrol/"

# What a token looks like: secrets.token_urlsafe(32) is 43 characters.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")


def new_token() -> str:
    """The secret of a link: 32 random bytes, URL-safe."""
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """What the store keeps of a link's token (hex SHA-256)."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def link_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}{LINK_PATH}{token}"


class EnrolLinks:
    """Create and redeem one-time enrolment links.

    ``store`` is an AsyncStore; ``clock()`` the time in epoch seconds;
    ``public_url`` the page's ``portal.public_url``.
    """

    def __init__(self, store, clock: Callable[[], float], public_url: str, *, ttl: float = LINK_TTL):
        self.store = store
        self.clock = clock
        self.public_url = public_url
        self.ttl = ttl

    async def create(self, user_name: str) -> tuple[str, float]:
        """A new link for the user: (url, expires as epoch seconds).
        NotFoundError (from the store) when the user does not exist."""
        token = new_token()
        now = self.clock()
        expires = now + self.ttl
        await self.store.add_enrol_link(EnrolLink(token_digest=token_digest(token), user=user_name,
                                                  created=now, expires=expires))
        return link_url(self.public_url, token), expires

    async def redeem(self, token: str) -> str | None:
        """The user name the link was made for, the first time it is used
        within its 15 minutes; None for anything else (unknown, used,
        expired, malformed)."""
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            return None
        link = await self.store.redeem_enrol_link(token_digest(token), self.clock())
        return link.user if link is not None else None


def create_now(sync_store, clock: Callable[[], float], public_url: str, user_name: str) -> tuple[str, float]:
    """`user enrol-link`: :meth:`EnrolLinks.create` over a synchronous store,
    in this thread (the commands have no reactor)."""
    from radius_mfa.store.asyncstore import AsyncStore, immediate_runner

    links = EnrolLinks(AsyncStore(sync_store, immediate_runner), clock, public_url)
    results: list = []
    Deferred.fromCoroutine(links.create(user_name)).addBoth(results.append)
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result
