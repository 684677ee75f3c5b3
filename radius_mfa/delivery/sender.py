"""Failover across one channel's providers, each attempt bounded in time.

The :class:`Sender` is what the engine talks to: it tries the configured
providers in order and returns the name of the one that delivered, so that
name can go into the audit record. An attempt that errors, answers non-2xx or
hangs is logged (one line, no traceback) and the next provider gets the time
that is left; a hung attempt is cancelled, which closes its connection.

Voice: a text-to-speech engine reads "123456" as "one hundred and twenty-three
thousand…". The Sender therefore rewrites a voice message's text so the code
is spelled digit by digit (:func:`spoken`) before any provider sees it; the
engine passes the same ``Outgoing.text`` for every channel (the configured
message with ``{code}`` filled in), and both the ``http`` and the ``twilio``
voice paths get the spoken form.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import structlog
from twisted.internet.defer import CancelledError, Deferred, TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IReactorTime

from radius_mfa.config import (FactorsConfig, HttpProviderConfig, ProviderConfig, SmtpProviderConfig,
                               TwilioProviderConfig)
from radius_mfa.delivery.base import CHANNELS, Channel, DeliveryError, DeliveryFailed, Outgoing, Provider
from radius_mfa.masking import mask_email, mask_phone

log = structlog.get_logger("radius_mfa.delivery")

_REASON_MAX = 200          # a reason is one short line, whatever an exception carried


def spoken(code: str) -> str:
    """``"123456"`` → ``"1, 2, 3, 4, 5, 6"``: digits a TTS engine reads one by one."""
    return ", ".join(code)


def for_voice(message: Outgoing) -> Outgoing:
    """The message with its code spelled out in the text (see the module docstring)."""
    if not message.code or message.code not in message.text:
        return message
    return dataclasses.replace(message, text=message.text.replace(message.code, spoken(message.code)))


def masked_destination(message: Outgoing) -> str | None:
    """The destination as it may appear in a log line."""
    return mask_email(message.to) if message.channel == Channel.EMAIL else mask_phone(message.to)


class Sender:
    """One channel's providers, in configured order, with failover."""

    def __init__(self, channel: str, providers: Sequence[Provider], *, reactor: IReactorTime):
        if channel not in CHANNELS:
            raise ValueError(f"unknown delivery channel {channel!r}")
        self.channel = channel
        self.providers = tuple(providers)
        self._reactor = reactor

    async def send(self, message: Outgoing, deadline: float) -> str:
        """Deliver ``message`` within ``deadline`` seconds from now.

        Returns the name of the provider that delivered; raises
        :class:`DeliveryFailed` with every attempt (and "no time left" for
        the providers never tried) when none did.
        """
        if self.channel == Channel.VOICE:
            message = for_voice(message)
        end = self._reactor.seconds() + deadline
        attempts: list[tuple[str, str]] = []
        for provider in self.providers:
            left = end - self._reactor.seconds()
            if left <= 0:
                attempts.append((provider.name, "skipped: no time left"))
                continue
            reason = await self._attempt(provider, message, min(provider.timeout, left))
            if reason is None:
                log.info("delivery.sent", provider=provider.name, channel=self.channel,
                         user=message.user, to=masked_destination(message))
                return provider.name
            attempts.append((provider.name, reason))
            log.warning("delivery.failed", provider=provider.name, channel=self.channel,
                        user=message.user, to=masked_destination(message), reason=reason)
        raise DeliveryFailed(tuple(attempts))

    async def _attempt(self, provider: Provider, message: Outgoing, timeout: float) -> str | None:
        """None when delivered, else why not (one line, safe to log)."""
        attempt = Deferred.fromCoroutine(provider.send(message))
        attempt.addTimeout(timeout, self._reactor)
        try:
            await attempt
        except DeliveryError as exc:
            return _safe(str(exc), message)
        except (DeferredTimeout, CancelledError):
            return f"timed out after {round(timeout, 2):g} s"
        except Exception as exc:        # a provider's bug must not stop the failover
            return _safe(f"{type(exc).__name__}: {exc}", message)
        return None


def _safe(reason: str, message: Outgoing) -> str:
    """One short line that never holds the code, the text or the destination."""
    line = (reason.splitlines() or [""])[0]
    for secret in (message.code, message.text, message.to):
        if secret:
            line = line.replace(secret, "***")
    return line[:_REASON_MAX]


def build_provider(config: ProviderConfig, *, reactor) -> Provider:
    """The provider for one configured entry, from the section of its kind
    (``type``: http | twilio | smtp)."""
    if isinstance(config, HttpProviderConfig):
        from radius_mfa.delivery.http import HttpProvider
        return HttpProvider(config, reactor)
    if isinstance(config, TwilioProviderConfig):
        from radius_mfa.delivery.twilio import TwilioProvider
        return TwilioProvider(config, reactor)
    if isinstance(config, SmtpProviderConfig):
        from radius_mfa.delivery.smtp import SmtpProvider
        return SmtpProvider(config, reactor)
    raise ValueError(f"unknown provider type {config.type!r}")


def build_senders(factors: FactorsConfig, *, reactor) -> dict[str, Sender]:
    """A Sender per configured channel (sms, voice, email); absent channels are left out."""
    senders = {}
    for channel in CHANNELS:
        section = getattr(factors, channel)
        if section is not None:
            providers = [build_provider(p, reactor=reactor) for p in section.providers]
            senders[channel] = Sender(channel, providers, reactor=reactor)
    return senders
