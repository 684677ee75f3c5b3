"""The seam for primary credentials (the user's password).

Backends: ``local`` (the store's slow salted hashes), ``none``, ``radius`` (an
upstream RADIUS server: NPS, FreeRADIUS) and ``ldap`` (LDAP / Active
Directory). A backend never raises for a wrong password, an unknown user or
a dead upstream: those are results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from radius_mfa.model import User
from radius_mfa.verdicts import Reason

# A reply or request attribute as the codec encodes it: a dictionary name
# ("Class", "Tunnel-Type:1"), a raw type code (int) or a (vendor id, vendor
# type) pair, with the value decoded (str, int, bytes, address) for names and
# raw bytes for codes and pairs.
Attribute = tuple[object, object]


@dataclass(frozen=True)
class PrimaryRequest:
    user_name: str
    user: User | None                 # the store's record, None when the store has no such user
    password: bytes | None            # PAP password, the inline answer already split off; None for MS-CHAP
    client: str = ""                  # the NAS's client name
    # the NAS request's own attributes that a proxying backend forwards as they
    # are (MS-CHAP-Challenge, MS-CHAP2-Response, Calling-Station-Id, NAS-*, …):
    # raw (type code, bytes) pairs in wire order, User-Name, User-Password,
    # State, Message-Authenticator and Proxy-State left out
    forward: tuple[tuple[int, bytes], ...] = ()
    upstream_state: bytes | None = None   # answering an Access-Challenge of the upstream
    deadline: float | None = None     # seconds the backend may take at most (the client's timeout, less a margin)
    # when the request arrived, on the engine's clock (AuthRequest.received): a
    # backend given the same clock counts the deadline from here, so time spent
    # queued before the check counts; None: from when the backend is asked
    received: float | None = None


@dataclass(frozen=True)
class UpstreamChallenge:
    """The upstream asks for more (a new PIN, the next code): relayed to the NAS."""
    state: bytes | None
    reply_message: str | None
    attributes: tuple[Attribute, ...] = ()


@dataclass(frozen=True)
class PrimaryResult:
    ok: bool
    reason: Reason | None = None
    # reply attributes to pass through to the final Access-Accept (upstream
    # RADIUS: Class, Filter-Id, Framed-*, Session-Timeout, vendor attributes,
    # MS-CHAP2-Success and the MS-MPPE keys in plain text: the codec encrypts
    # them again for the NAS's secret)
    attributes: tuple[Attribute, ...] = ()
    # what the backend knows of the user: display_name, email, phone, and for
    # LDAP "groups" (a frozenset of lower-cased group DNs among those the
    # policy names) and "mfa_required" (False when an mfa_group is set and the
    # user is not in it)
    user_info: dict = field(default_factory=dict)
    challenge: UpstreamChallenge | None = None


class PrimaryBackend(Protocol):
    name: str                  # the audit's `primary`: local | radius | ldap | none
    supports_mschap: bool      # True: MS-CHAPv2 requests can be checked (forwarded upstream)

    async def authenticate(self, request: PrimaryRequest) -> PrimaryResult:
        """Check the credential."""

    async def equalize(self, password: bytes) -> None:
        """Spend what a check would cost without deciding anything, so that
        a request refused early (locked, disabled) takes as long as one that
        was checked. Backends whose checks reach another system do nothing
        (a bind or request for a locked user would count against it there).
        The local backend also takes keyword ``deadline`` and ``received``
        (as in PrimaryRequest) and returns False when the check waited past
        them and was dropped unrun."""
