"""Codes sent by SMS, voice call or email: the factor picked by the words
``sms``, ``voice`` and ``email``.

Sending: one login attempt, one message. A code already on its way for the
same client, user, Calling-Station-Id and channel (a NAS retry with a new
Identifier, another server of the pool) is joined, not sent again; a new one
is counted against the per-user rate limit, drawn from the OS, stored as an
HMAC only (never the code) before it leaves, and handed to the channel's
providers with failover (radius_mfa.delivery), within the time the client
leaves us.

Checking: a code matches one of the user's pending codes (or, answering a
challenge that named where a code went, that code only), compared in
constant time; it is taken once, atomically, so it holds across servers.
Nothing here builds a RADIUS reply: results go back to the engine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Callable, ClassVar, Mapping, Protocol

import structlog

from radius_mfa.config import DeliveryFactorConfig
from radius_mfa.delivery.base import CHANNELS, Channel, DeliveryFailed, Outgoing
from radius_mfa.model import SentCode, User
from radius_mfa.prompts import mask_destination
from radius_mfa.verdicts import Reason
from radius_mfa.verifiers.base import NO_PASSWORD, PAP, FactorKind, FactorResult

log = structlog.get_logger("radius_mfa.engine")



class Sender(Protocol):
    """One channel's providers with failover (radius_mfa.delivery)."""

    async def send(self, message: Outgoing, deadline: float) -> str:
        """Deliver within ``deadline`` seconds; the provider's name, or DeliveryFailed."""


@dataclass(frozen=True)
class Sent:
    """A code on its way (``code``), or why none is (``reason``:
    rate_limited, delivery_failed)."""
    code: SentCode | None
    reason: Reason | None = None
    joined: bool = False


def destination(user: User, channel: str) -> str | None:
    return user.email if channel == Channel.EMAIL else user.phone


class SentCodeFactor:
    name: ClassVar[str] = "sent_code"          # the audit names the channel: sms, voice, email
    words: ClassVar[frozenset[str]] = frozenset(CHANNELS)
    methods: ClassVar[frozenset[str]] = frozenset({PAP, NO_PASSWORD})
    kind: ClassVar[FactorKind] = FactorKind.TYPED

    def __init__(self, store, clock: Callable[[], float],
                 delivery: Mapping[str, DeliveryFactorConfig] | None = None,
                 senders: Mapping[str, Sender] | None = None):
        """``delivery``: the configured channels and ``senders`` their
        providers; a channel is offered only when it has both."""
        self.store = store                      # AsyncStore
        self.clock = clock
        self.senders = dict(senders or {})
        self.delivery = {k: v for k, v in (delivery or {}).items() if k in self.senders}
        self._key: bytes | None = None          # fetched from the store on first use

    @property
    def configured(self) -> bool:
        return bool(self.delivery)

    def channels(self, user: User | None) -> tuple[str, ...]:
        """The channels this user can receive: configured, and a number
        (sms, voice) or an address (email) on record."""
        if user is None:
            return ()
        return tuple(c for c in CHANNELS if c in self.delivery and destination(user, c))

    async def send(self, user: User, channel: str, *, client: str, calling_station_id: str | None,
                   client_timeout: float, deadline: float) -> Sent:
        """Join the code of this login attempt, or send one."""
        config = self.delivery[channel]
        now = self.clock()
        pending = await self.store.pending_sent_code(client, user.name, calling_station_id,
                                                     now - client_timeout, now, channel=channel)
        if pending is not None:
            log.info("code.joined", user=user.name, channel=channel, client=client)
            return Sent(pending, joined=True)
        if not await self.store.allow_send(user.name, now, config.rate_limit.sends,
                                           config.rate_limit.minutes * 60.0):
            log.warning("code.rate_limited", user=user.name, channel=channel)
            return Sent(None, Reason.RATE_LIMITED)
        code = f"{secrets.randbelow(10 ** config.code_digits):0{config.code_digits}d}"
        sent = SentCode(id=secrets.token_hex(16), user=user.name, channel=channel,
                        code_mac=await self._mac(user.name, code), client=client,
                        calling_station_id=calling_station_id, created=now,
                        expires=now + config.code_ttl)
        # stored before it leaves, so a retry arriving meanwhile joins it
        await self.store.put_sent_code(sent)
        to = destination(user, channel)
        message = Outgoing(channel=channel, to=to, user=user.name, code=code,
                           text=config.message.replace("{code}", code),
                           subject=config.subject if channel == Channel.EMAIL else None)
        try:
            provider = await self.senders[channel].send(message, deadline)
        except DeliveryFailed as exc:
            await self.store.remove_sent_code(sent.id)
            log.error("code.delivery_failed", user=user.name, channel=channel,
                      to=mask_destination(channel, to), error=str(exc))
            return Sent(None, Reason.DELIVERY_FAILED)
        except BaseException:
            await self.store.remove_sent_code(sent.id)
            raise
        await self.store.set_sent_code_provider(sent.id, provider)
        log.info("code.sent", user=user.name, channel=channel, provider=provider,
                 to=mask_destination(channel, to))
        return Sent(dataclasses.replace(sent, provider=provider))

    async def check(self, user: User, code: str, code_id: str | None = None) -> FactorResult | None:
        """A typed code against the user's pending codes (only ``code_id``
        when given): the result, or None when it matches none."""
        pending = await self.store.sent_codes_for(user.name)
        if code_id is not None:
            pending = [sent for sent in pending if sent.id == code_id]
        if not pending:
            return None
        mac = await self._mac(user.name, code)
        for sent in pending:
            if hmac.compare_digest(sent.code_mac, mac):
                return await self._use(sent)
        return None

    async def _use(self, sent: SentCode) -> FactorResult:
        """The code matched: expired, or taken once (atomically) and accepted."""
        if sent.expires <= self.clock():
            await self.store.remove_sent_code(sent.id)
            return FactorResult(False, sent.channel, reason=Reason.EXPIRED, provider=sent.provider)
        if not await self.store.take_sent_code(sent.id):
            # another request (or server) used it a moment ago
            return FactorResult(False, sent.channel, reason=Reason.REPLAY, provider=sent.provider)
        return FactorResult(True, sent.channel, provider=sent.provider)

    async def _mac(self, user: str, code: str) -> str:
        """HMAC-SHA256 of (user, code): what the store keeps instead of the code."""
        if self._key is None:
            self._key = await self.store.sent_code_key()
        return hmac.new(self._key, f"{user}\0{code}".encode(), hashlib.sha256).hexdigest()
